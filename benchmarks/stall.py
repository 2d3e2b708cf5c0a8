"""The longest intake stall while the server flushes many contexts, measured as reactor lag.

    python -m benchmarks.stall [--contexts 100000] [--json]

A server process cannot timestamp the datagrams it did not get to read, so
the stall is measured inside one: the server is embedded with
``build_service`` (UDP on an ephemeral port, a jsonl sink to a temporary
file), loaded through its own UDP protocol with one sample of each of
``--contexts`` mixed-type contexts (the :func:`benchmarks.workload.mixed`
shapes), and then ``flush(final=True)`` writes them all.  A 5 ms timer runs
throughout; the largest gap between two of its calls, minus 5 ms, is the
longest time the reactor could not run anything else, reading the socket
included.  Measured for a periodic flush with no bucket due (what every
``flush_interval`` costs) and for the final flush that writes every context;
also the lateness before any flush (the baseline), and how long each flush
took until the sink had written everything.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.workload import mixed

PROBE_INTERVAL = 0.005
BUCKET_SECONDS = 10
LOAD_WINDOW = 8.0  # seconds of a bucket the loading may take


class LagProbe:
    """Calls itself every ``interval`` seconds and keeps the largest lateness seen."""

    def __init__(self, reactor, interval: float = PROBE_INTERVAL):
        from twisted.internet.task import LoopingCall

        self.interval = interval
        self.max_lateness = 0.0
        self._last = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.max_lateness = max(self.max_lateness, now - self._last - self.interval)
        self._last = now

    def start(self) -> None:
        self._loop.start(self.interval)

    def reset(self) -> None:
        """Start a new measurement from now: what ran before is not counted."""
        self.max_lateness = 0.0
        self._last = time.perf_counter()

    def stop(self) -> None:
        self._loop.stop()


async def _measure(reactor, contexts: int, out_path: str) -> dict:
    from twisted.internet.task import deferLater

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
    workload = mixed(contexts, lines_per_context=1)
    # Load within one 10 s bucket, so that the periodic flush below has no bucket to close.
    if BUCKET_SECONDS - time.time() % BUCKET_SECONDS < LOAD_WINDOW:
        await deferLater(reactor, BUCKET_SECONDS - time.time() % BUCKET_SECONDS + 0.05, lambda: None)
    receive, sender = service.udp.protocol.datagramReceived, ("127.0.0.1", 9)
    for start in range(0, len(workload.datagrams), 256):
        for datagram in workload.datagrams[start : start + 256]:
            receive(datagram, sender)
        await deferLater(reactor, 0, lambda: None)

    probe = LagProbe(reactor)
    probe.start()
    await deferLater(reactor, 0.25, lambda: None)  # the intake timer has drained every buffer
    result = {"contexts": contexts, "baseline_max_lateness_seconds": probe.max_lateness}
    for kind, final in (("periodic", False), ("final", True)):
        # Counted outside the measured window: counting walks every context,
        # after folding what is staged, which is the flush's own work to measure.
        if kind == "final":
            service.pipeline.fold()
        live = None if kind == "periodic" else service.aggregator.context_count()
        probe.reset()
        began = time.perf_counter()
        batch = await service.flush(final=final)
        elapsed = time.perf_counter() - began
        await deferLater(reactor, 0.05, lambda: None)
        if live is None:  # no bucket was due: what is live now was live before
            live = service.aggregator.context_count()
        result[kind] = {
            "live_contexts": live,
            "series": len(batch.series),
            "sketches": len(batch.sketches),
            "flush_seconds": elapsed,
            "max_stall_seconds": probe.max_lateness,
        }
    probe.stop()
    await service.stopService()
    with open(out_path, "rb") as f:
        result["lines_written"] = sum(1 for _ in f)
    result["probe_interval_seconds"] = PROBE_INTERVAL
    return result


def measure(contexts: int) -> dict:
    """Run the measurement on the global reactor (in a process of its own)."""
    from twisted.internet import defer, reactor

    results: dict = {}
    directory = tempfile.mkdtemp(prefix="tsb-stall")
    out_path = os.path.join(directory, "out.jsonl")

    async def run():
        try:
            results.update(await _measure(reactor, contexts, out_path))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    result = measure(args.contexts)
    if args.json:
        print(json.dumps(result))
    elif "error" in result:
        raise SystemExit(result["error"])
    else:
        print(f"baseline max lateness {result['baseline_max_lateness_seconds'] * 1000:.1f} ms")
        for kind in ("periodic", "final"):
            r = result[kind]
            print(
                f"{kind} flush of {r['live_contexts']:,} live contexts ({r['series']:,} series, "
                f"{r['sketches']:,} sketches): took {r['flush_seconds'] * 1000:.0f} ms, "
                f"longest stall {r['max_stall_seconds'] * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()
