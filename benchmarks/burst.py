"""A burst of new contexts: what learning one costs, and how long it holds intake off.

    python -m benchmarks.burst [--contexts 100000] [--rate 40000] [--runs 5] [--json]

Two measurements (issue 14's "learning a new context" row), with the
:func:`benchmarks.workload.counters` workload: one line per distinct counter
context with 4 tags, packed into ~1,400-byte datagrams.

1. In process: the datagrams go through the intake's own packet buffer (32
   packets a batch, the default ``dogstatsd_packet_buffer_size``) into a fresh
   ``Pipeline`` every run, with the garbage collector as the twistd server
   runs it (``freeze_gc``, everything older frozen as after a flush).  Wall
   and CPU microseconds per new line, and the longest single batch, median
   of ``--runs``.
2. Against the server: the service tree twistd runs (``build_service`` with
   ``freeze_gc``, UDP on an ephemeral port with the default receive buffer, a
   jsonl sink, no flush during the window) takes the same contexts from a
   load generator process over real UDP at ``--rate`` lines/s.  A 5 ms timer
   (:class:`benchmarks.stall.LagProbe`) gives the longest reactor stall while
   the burst arrives and is learnt, in wall time and in the process's CPU
   time (which leaves out time the process waited for a core on a shared
   machine); the kernel's drop count of the socket (``/proc/net/udp``) the
   datagrams lost meanwhile.

:func:`measure` returns the figures as a dict (``learn_us_per_line``,
``learn_cpu_us_per_line``, ``max_stall_ms``, ``kernel_drops`` and more) for
the report.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time

from benchmarks import procfs
from benchmarks.loadgen import LoadGenerator
from benchmarks.stall import PROBE_INTERVAL, LagProbe
from benchmarks.workload import counters
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.core.model import forget_shared_tag_sets
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.intake.service import IntakeService
from twisted_statsd.telemetry import Telemetry

BATCH_PACKETS = 32
BUCKET_SECONDS = 10
NOW = 1_000_000.0


class BusyProbe(LagProbe):
    """A :class:`LagProbe` that also keeps the most CPU the process used between two of its calls.

    On a shared machine a stall in wall time includes the time the process
    was not scheduled; the CPU time between two ticks is the work the reactor
    did without coming back to its timers, whatever else ran on the machine.
    """

    def __init__(self, reactor, interval: float = PROBE_INTERVAL):
        super().__init__(reactor, interval)
        self.max_busy = 0.0
        self._cpu = time.process_time()

    def _tick(self) -> None:
        super()._tick()
        cpu = time.process_time()
        self.max_busy = max(self.max_busy, cpu - self._cpu)
        self._cpu = cpu

    def reset(self) -> None:
        super().reset()
        self.max_busy = 0.0
        self._cpu = time.process_time()


class _FixedClock:
    def seconds(self) -> float:
        return NOW


def learn_once(datagrams: list[bytes], lines: int) -> dict:
    """Feed ``datagrams`` (all new contexts) through a fresh intake; times per line and the worst batch."""
    telemetry = Telemetry()
    pipeline = Pipeline(Aggregator(), Enricher(hostname="bench"), telemetry, RateLimitedReporter(telemetry))
    intake = IntakeService(_FixedClock(), pipeline, buffer_size=BATCH_PACKETS, flush_timeout=0.1, freeze_gc=True)
    append = intake.buffer_for("udp").append
    forget_shared_tag_sets()
    gc.collect()
    gc.freeze()  # as after a flush: what lived before the burst is out of the collector's scans
    worst = 0.0
    began, cpu_began = time.perf_counter(), time.process_time()
    for datagram in datagrams:
        before = time.perf_counter()
        append(datagram)
        worst = max(worst, time.perf_counter() - before)
    intake.drain()
    pipeline.fold()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    gc.unfreeze()
    if telemetry.get("metrics") != lines or pipeline.learnt != lines:
        raise RuntimeError(f"{telemetry.get('metrics')} metrics and {pipeline.learnt} shapes for {lines} lines")
    return {"us_per_line": wall / lines * 1e6, "cpu_us_per_line": cpu / lines * 1e6, "worst_batch_ms": worst * 1e3}


def learn(contexts: int, runs: int) -> dict:
    """Median of ``runs`` in-process bursts of ``contexts`` new contexts each."""
    results = []
    for run in range(runs):
        workload = counters(contexts, prefix=b"burst.run%d" % run)
        results.append(learn_once(workload.datagrams, workload.lines))
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


async def _serve_burst(reactor, generator: LoadGenerator, spec: dict, rate: float, out_path: str) -> dict:
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    from twisted_statsd import build_service, load_config

    config = load_config(
        data={
            "hostname": "bench",
            "dogstatsd_port": "__random__",
            "flush_interval": 3600,
            "sinks": [{"type": "jsonl", "path": out_path}],
        }
    )
    service = build_service(config, reactor, freeze_gc=True)  # as twistd runs it
    service.privilegedStartService()
    service.startService()
    port = service.udp.address.port
    probe = BusyProbe(reactor)
    probe.start()
    await deferLater(reactor, 0.25, lambda: None)
    gc.collect()
    gc.freeze()  # as after a flush
    drops_before = procfs.udp_socket(port)["drops"]
    probe.reset()
    target = {"transport": "udp", "address": ["127.0.0.1", port]}
    sent = await deferToThread(generator.send, target, spec, rate, 600.0, spec["contexts"])
    # Until the socket's queue is empty and the intake timer has handed everything over.
    deadline = time.monotonic() + 30
    while procfs.udp_socket(port)["rx_queue"] and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    await deferLater(reactor, 0.3, lambda: None)
    stall, busy = probe.max_lateness, probe.max_busy
    probe.stop()
    drops = procfs.udp_socket(port)["drops"] - drops_before
    service.pipeline.fold()
    result = {
        "sent_lines": sent["sent_metrics"],
        "achieved_rate": sent["achieved_rate"],
        "learnt_contexts": service.pipeline.learnt,
        "accepted_lines": service.telemetry.get("metrics"),
        "max_stall_ms": stall * 1e3,
        "max_busy_cpu_ms": busy * 1e3,
        "kernel_drops": drops,
        "rcvbuf_bytes": service.udp.port.getHandle().getsockopt(1, 8),  # SOL_SOCKET, SO_RCVBUF
    }
    await service.stopService()
    return result


def server_burst(contexts: int, rate: float) -> dict:
    """Run the server measurement on the global reactor (in a process of its own)."""
    from twisted.internet import defer, reactor

    spec = {"kind": "counters", "contexts": contexts, "prefix": "burst.server"}
    results: dict = {}
    directory = tempfile.mkdtemp(prefix="tsb-burst")
    out_path = os.path.join(directory, "out.jsonl")
    with LoadGenerator() as generator:  # forked before the reactor runs
        generator.describe(spec)

        async def run():
            try:
                results.update(await _serve_burst(reactor, generator, spec, rate, out_path))
            except Exception as error:
                results["error"] = f"{type(error).__name__}: {error}"
            finally:
                reactor.stop()

        reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()))
        reactor.run()
    if os.path.exists(out_path):
        os.unlink(out_path)
    os.rmdir(directory)
    return results


async def _flush_under_load(reactor, generator: LoadGenerator, burst: int, spec: dict, rate: float, out: str) -> dict:
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    from twisted_statsd import build_service, load_config

    config = load_config(
        data={
            "hostname": "bench",
            "dogstatsd_port": "__random__",
            "flush_interval": 2,
            "sinks": [{"type": "jsonl", "path": out}],
        }
    )
    service = build_service(config, reactor, freeze_gc=True)
    service.privilegedStartService()
    service.startService()
    port = service.udp.address.port
    # The burst early in a bucket, straight into the listener's protocol (its own loss is not measured here).
    await deferLater(reactor, BUCKET_SECONDS - time.time() % BUCKET_SECONDS + 0.05, lambda: None)
    receive, sender = service.udp.protocol.datagramReceived, ("127.0.0.1", 9)
    datagrams = counters(burst, prefix=b"burst.flushed").datagrams
    for start in range(0, len(datagrams), 64):
        for datagram in datagrams[start : start + 64]:
            receive(datagram, sender)
        await deferLater(reactor, 0, lambda: None)
    probe = BusyProbe(reactor)
    probe.start()
    drops_before = procfs.udp_socket(port)["drops"]
    # Steady load through the flush of the burst's bucket and of the next one (zero-filled counters).
    seconds = 2 * BUCKET_SECONDS - time.time() % BUCKET_SECONDS + 2 * config.flush_interval + 1
    target = {"transport": "udp", "address": ["127.0.0.1", port]}
    sent = await deferToThread(generator.send, target, spec, rate, seconds, None)
    await deferLater(reactor, 0.5, lambda: None)
    drops = procfs.udp_socket(port)["drops"] - drops_before
    probe.stop()
    await service.stopService()
    burst_series: dict[int, int] = {}
    with open(out, "rb") as f:
        for line in f:
            if b'"burst.flushed.' in line[:64]:
                for point_ts in {point["timestamp"] for point in json.loads(line)["points"]}:
                    burst_series[point_ts] = burst_series.get(point_ts, 0) + 1
    return {
        "burst_contexts": burst,
        "steady_sent_lines": sent["sent_metrics"],
        "steady_datagrams": sent["datagrams"],
        "steady_rate": sent["achieved_rate"],
        "kernel_drops": drops,
        "max_stall_ms": probe.max_lateness * 1e3,
        "max_busy_cpu_ms": probe.max_busy * 1e3,
        "burst_series_by_bucket": dict(sorted(burst_series.items())),
    }


def flush_under_load(burst: int = 300_000, rate: float = 30_000) -> dict:
    """Kernel drops of a steady stream while a burst's bucket, then its idle counters, are flushed (issue 12, 4).

    Runs the global reactor: once per process.
    """
    from twisted.internet import defer, reactor

    spec = {"kind": "mixed", "contexts": 1_000, "lines_per_context": 20}
    results: dict = {}
    directory = tempfile.mkdtemp(prefix="tsb-burst")
    out_path = os.path.join(directory, "out.jsonl")
    with LoadGenerator() as generator:
        generator.describe(spec)

        async def run():
            try:
                results.update(await _flush_under_load(reactor, generator, burst, spec, rate, out_path))
            except Exception as error:
                results["error"] = f"{type(error).__name__}: {error}"
            finally:
                reactor.stop()

        reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()))
        reactor.run()
    if os.path.exists(out_path):
        os.unlink(out_path)
    os.rmdir(directory)
    return results


def measure(contexts: int = 100_000, rate: float = 40_000, runs: int = 5) -> dict:
    """Both measurements; runs the global reactor, so call it once per process."""
    learnt = learn(contexts, runs)
    server = server_burst(contexts, rate)
    return {
        "contexts": contexts,
        "learn_us_per_line": learnt["us_per_line"],
        "learn_cpu_us_per_line": learnt["cpu_us_per_line"],
        "learn_worst_batch_ms": learnt["worst_batch_ms"],
        "rate": rate,
        "max_stall_ms": server.get("max_stall_ms"),
        "max_busy_cpu_ms": server.get("max_busy_cpu_ms"),
        "kernel_drops": server.get("kernel_drops"),
        "server": server,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=40_000, help="lines/s the load generator sends")
    parser.add_argument("--runs", type=int, default=5, help="in-process runs (median)")
    parser.add_argument("--in-process", action="store_true", help="only the in-process measurement")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument(
        "--flush-under-load",
        type=int,
        metavar="CONTEXTS",
        help="instead: kernel drops of a steady --rate stream while a burst of CONTEXTS counters is flushed",
    )
    args = parser.parse_args()
    if args.flush_under_load:
        print(json.dumps(flush_under_load(args.flush_under_load, args.rate)))
        return
    if args.in_process:
        result = {"contexts": args.contexts, **{f"learn_{k}": v for k, v in learn(args.contexts, args.runs).items()}}
    else:
        result = measure(args.contexts, args.rate, args.runs)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"learning {args.contexts:,} new contexts in process: {result['learn_us_per_line']:.2f} us/line "
        f"({result['learn_cpu_us_per_line']:.2f} us CPU), longest batch {result['learn_worst_batch_ms']:.1f} ms"
    )
    if args.in_process:
        return
    server = result["server"]
    if "error" in server:
        raise SystemExit(server["error"])
    print(
        f"server, {server['sent_lines']:,} new contexts at {server['achieved_rate']:,.0f} lines/s: "
        f"longest stall {server['max_stall_ms']:.1f} ms ({server['max_busy_cpu_ms']:.1f} ms CPU), "
        f"kernel drops {server['kernel_drops']:,} datagrams, "
        f"{server['accepted_lines']:,} lines accepted (receive buffer {server['rcvbuf_bytes']:,} bytes)"
    )


if __name__ == "__main__":
    main()
