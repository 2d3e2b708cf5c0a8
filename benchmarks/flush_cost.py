"""Flush CPU per context per sink, and the memory a flush allocates per context.

    python -m benchmarks.flush_cost [--contexts 100000] [--runs 3] [--sinks jsonl,prometheus,...]
    python -m benchmarks.flush_cost --memory [--contexts 500000]

CPU: an aggregator holding ``--contexts`` counter contexts with four tags
(one bucket, as a server sees them after one busy interval) is flushed and the
batch handed to one sink, which encodes and writes it all; the process CPU
time of both, divided by the contexts, is the figure (µs per context).  It is
the steady state: the same contexts were flushed to the same sink one bucket
before (so they are live counters, and sinks' per-context caches are warm).
The sinks run in turn, ``--runs`` times each (interleaved), each on a fresh
aggregator, and the median is reported; ``flush`` alone is the aggregator's
part (its series are built as a sink walks them, so that cost is in each
sink's figure).  What each sink does: ``jsonl`` writes its lines to a file;
``prometheus`` folds the batch into its state and renders the page once (one
scrape per flush); ``graphite`` formats the carbon lines and encodes them as
its connection writes them; ``datadog`` and ``otlp`` build their gzipped
request bodies (no HTTP).  ``otlp`` needs the ``otlp`` extra and is left out
without it.  As the server runs it (``freeze_gc``), the collector is frozen
before and disabled during a flush.

``--memory``: the peak RSS a flush adds, per context (``VmHWM`` reset through
``/proc/self/clear_refs``), for the flush and a jsonl sink writing every line
to ``/dev/null``; Linux only.

:func:`measure` returns ``{sink: µs_per_context}`` for the report.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import tempfile
import time

from twisted.internet.task import Clock, Cooperator

from twisted_statsd.core.aggregator import Aggregator, Route
from twisted_statsd.core.model import COUNTER, Context, FlushBatch
from twisted_statsd.telemetry import Telemetry

START = 1_700_000_000
SINKS = ("flush", "jsonl", "prometheus", "graphite", "datadog", "otlp")


def contexts(n: int) -> list[Context]:
    """``n`` counter contexts of four tags, shaped like Kubernetes-tagged application metrics."""
    return [
        Context(
            f"app.requests{i % 200}".encode(),
            b"bench-host",
            [b"env:prod", f"service:svc{i % 50}".encode(), f"endpoint:/api/v{i % 7}".encode(), f"id:{i}".encode()],
        )
        for i in range(n)
    ]


def load(aggregator: Aggregator, held: list[Context], now: float) -> Aggregator:
    """One sample of every context in the bucket open at ``now``."""
    aggregator.add_runs(now, [(Route(context, COUNTER, 1.0), (float(i % 97),)) for i, context in enumerate(held)])
    return aggregator


def _cooperator(clock: Clock) -> Cooperator:
    """A Cooperator that runs a whole task in one turn of ``clock``: the benchmark measures CPU, not slicing."""
    return Cooperator(terminationPredicateFactory=lambda: lambda: False, scheduler=lambda f: clock.callLater(0, f))


def _drive(clock: Clock, d) -> None:
    if d is None:
        return
    done: list = []
    d.addBoth(done.append)
    while not done:
        clock.advance(0)
    if hasattr(done[0], "raiseException"):
        done[0].raiseException()


def _flush(aggregator: Aggregator, now: float) -> FlushBatch:
    batch = FlushBatch(timestamp=now)
    for _ in aggregator.flush_steps(now, batch):
        pass
    return batch


def _consumer(sink: str, directory: str):
    """A function handing a batch to a sink of kind ``sink`` and running it to the end."""
    clock, telemetry = Clock(), Telemetry()
    clock.advance(START + 10)
    coop = _cooperator(clock)
    if sink == "flush":
        return lambda batch: None
    if sink == "jsonl":
        from twisted_statsd.sinks.jsonl import JsonlSink

        jsonl = JsonlSink(clock, telemetry, os.path.join(directory, "out.jsonl"), cooperator=coop)
        jsonl.bind()
        return lambda batch: _drive(clock, jsonl.write(batch))
    if sink == "prometheus":
        from twisted_statsd.sinks.prometheus import PrometheusSink

        prometheus = PrometheusSink(clock, telemetry, cooperator=coop)

        def scrape(batch):
            _drive(clock, prometheus.write(batch))
            prometheus.state.render()

        return scrape
    if sink == "graphite":
        from twisted_statsd.sinks.graphite import LineFormatter

        formatter = LineFormatter()

        def carbon(batch):
            lines = formatter.lines(batch)
            while chunk := [line for _, line in zip(range(100), lines, strict=False)]:
                "".join(chunk).encode("utf-8")

        return carbon
    if sink == "datadog":
        from twisted_statsd.sinks import _datadog_payloads

        def datadog(batch):
            for _ in _datadog_payloads.build_payloads(batch, distribution_max_values=100_000, on_drop=telemetry.drop):
                pass

        return datadog
    if sink == "otlp":
        from twisted_statsd.sinks import _otlp_payloads

        def otlp(batch):
            for _ in _otlp_payloads.build_payloads(batch, on_drop=telemetry.drop):
                pass

        return otlp
    raise ValueError(f"unknown sink {sink!r}")


def available(sinks=SINKS) -> tuple[str, ...]:
    """The sinks that can run here (otlp needs its extra)."""
    return tuple(s for s in sinks if s != "otlp" or importlib.util.find_spec("opentelemetry") is not None)


def _one_run(sink: str, held: list[Context], directory: str) -> float:
    """CPU seconds of one flush of ``held`` into ``sink``, in the steady state: the flush
    before it had the same contexts (sinks that cache per context have them cached)."""
    consume = _consumer(sink, directory)
    aggregator = load(Aggregator(), held, START + 1)
    consume(_flush(aggregator, START + 10))
    load(aggregator, held, START + 11)
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        began = time.process_time()
        consume(_flush(aggregator, START + 20))
        return time.process_time() - began
    finally:
        gc.enable()
        gc.unfreeze()


def measure(contexts_count: int = 100_000, runs: int = 3, sinks=SINKS) -> dict[str, float]:
    """Median flush + sink CPU per context, in µs, per sink (``flush``: the aggregator alone)."""
    sinks = available(sinks)
    held = contexts(contexts_count)
    seconds: dict[str, list[float]] = {s: [] for s in sinks}
    with tempfile.TemporaryDirectory(prefix="tsb-flush") as directory:
        for _ in range(runs):
            for sink in sinks:
                seconds[sink].append(_one_run(sink, held, directory))
    return {s: statistics.median(v) / contexts_count * 1e6 for s, v in seconds.items()}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def flush_peak_bytes(contexts_count: int) -> dict[str, float]:
    """The peak RSS the flush of ``contexts_count`` counter contexts adds, to a jsonl sink writing to /dev/null."""
    from twisted_statsd.sinks.jsonl import JsonlSink

    held = contexts(contexts_count)
    aggregator = load(Aggregator(), held, START + 1)
    clock = Clock()
    sink = JsonlSink(clock, Telemetry(), os.devnull, cooperator=_cooperator(clock))
    sink.bind()
    gc.collect()
    gc.freeze()
    gc.disable()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    _drive(clock, sink.write(_flush(aggregator, START + 10)))
    peak = _status_kib("VmHWM")
    delta = (peak - before) * 1024
    return {
        "contexts": contexts_count,
        "rss_before_bytes": before * 1024,
        "flush_peak_delta_bytes": delta,
        "bytes_per_context": delta / contexts_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sinks", default=",".join(SINKS))
    parser.add_argument("--memory", action="store_true", help="measure the peak RSS a flush adds instead")
    args = parser.parse_args()
    if args.memory:
        r = flush_peak_bytes(args.contexts)
        print(
            f"flush of {r['contexts']:,} counter contexts to jsonl: "
            f"RSS before {r['rss_before_bytes'] / 2**20:.0f} MiB, "
            f"peak +{r['flush_peak_delta_bytes'] / 2**20:.0f} MiB = {r['bytes_per_context']:.0f} B per context"
        )
        return
    results = measure(args.contexts, args.runs, tuple(args.sinks.split(",")))
    for sink, us in results.items():
        print(f"{sink:10} {us:6.2f} µs per context (flush + sink, median of {args.runs})")


if __name__ == "__main__":
    main()
