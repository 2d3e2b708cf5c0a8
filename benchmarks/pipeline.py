"""In-process throughput of the hot path, side by side with a bare-loop ceiling.

    python -m benchmarks.pipeline [--contexts 1000] [--runs 11] [--stats | --memory]

Feeds the same packets (1,000 contexts with 4 tags each, types mixed c/g/ms/h/d/s,
some sampled, packed into ~1,400-byte datagrams as the datadog client packs
them) to (a) twisted_statsd's Pipeline and (b) a plain loop that splits lines
and sums a float per context, and prints metrics/s for each and their ratio.
No sockets: this measures parsing and aggregation only.  The two run
interleaved, and the ratio is the median of the rounds' ratios.

``--memory`` measures instead the RSS growth per live 4-tag counter context
(``benchmarks.workload.counters``) in this process: ``--contexts`` of them
fed once, in one open bucket, then after that bucket is flushed.

``--stats`` times the intake's batch callback instead, three ways interleaved:
as it was before per-metric statistics existed, with them off (the intake's
observer list empty) and on; it prints the ratios to the first.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

from benchmarks import procfs
from benchmarks.ceiling import Counter
from benchmarks.workload import counters, shapes_of
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.core.stats import MetricStats, series_per_context
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.intake.service import IntakeService
from twisted_statsd.telemetry import Telemetry


def workload(contexts: int, seed: int = 1) -> tuple[list[bytes], int]:
    rng = random.Random(seed)
    shapes = shapes_of(contexts)
    packets, lines, current, size = [], 0, [], 0
    for _ in range(contexts * 20):
        name, rest = rng.choice(shapes)
        value = b"user%d" % rng.randint(0, 50) if rest.startswith(b"|s|") else b"%d" % rng.randint(0, 1000)
        line = name + value + rest
        if size + len(line) + 1 > 1400:
            packets.append(b"\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
        lines += 1
    packets.append(b"\n".join(current))
    return packets, lines


def run_pipeline(packets) -> float:
    """Steady state: the shape cache is warmed by one untimed pass first."""
    telemetry = Telemetry()
    pipeline = Pipeline(Aggregator(), Enricher(hostname="bench"), telemetry, RateLimitedReporter(telemetry))
    now = 1_000_000.0
    pipeline.process(packets, now)
    pipeline.fold()
    start = time.perf_counter()
    for i in range(0, len(packets), 32):
        pipeline.process(packets[i : i + 32], now)
    pipeline.fold()  # every staged value applied: the whole cost is timed
    return time.perf_counter() - start


class _FixedClock:
    def seconds(self) -> float:
        return 1_000_000.0


def run_intake(packets, variant: str) -> float:
    """The intake's batch callback: ``before`` (as written before observers), ``off`` or ``on``."""
    telemetry = Telemetry()
    pipeline = Pipeline(Aggregator(), Enricher(hostname="bench"), telemetry, RateLimitedReporter(telemetry))
    intake = IntakeService(_FixedClock(), pipeline, buffer_size=32, flush_timeout=0.1)
    if variant == "before":
        clock = intake.clock

        def process(batch: list[bytes]) -> None:
            pipeline.process(batch, clock.seconds(), eol_required=False, origin=None)

    else:
        process = intake.buffer_for("udp")._process
        if variant == "on":
            intake.observers.append(MetricStats(series_per_context(("max",), (0.95,))).received)
    process(packets)
    pipeline.fold()
    start = time.perf_counter()
    for i in range(0, len(packets), 32):
        process(packets[i : i + 32])
    pipeline.fold()
    return time.perf_counter() - start


def compare_stats(packets, lines: int, runs: int) -> None:
    times: dict[str, list[float]] = {"before": [], "off": [], "on": []}
    for _ in range(runs):
        for variant, found in times.items():
            found.append(run_intake(packets, variant))
    print(f"{lines} metrics in {len(packets)} packets, median of {runs} rounds, through the intake's batch callback")
    for variant, found in times.items():
        ratio = statistics.median(t / b for t, b in zip(found, times["before"], strict=True))
        label = {"before": "before (no observer hook)", "off": "stats off", "on": "stats on"}[variant]
        print(f"  {label:<30} {lines / statistics.median(found):>12,.0f} metrics/s  time ratio {ratio:.3f}")


def _rss() -> int:
    return procfs.status_bytes(os.getpid(), "VmRSS") or 0


def measure_memory(contexts: int) -> None:
    """RSS growth per live counter context, in one open bucket and after its flush."""
    telemetry = Telemetry()
    pipeline = Pipeline(Aggregator(), Enricher(hostname="bench"), telemetry, RateLimitedReporter(telemetry))
    now = 1_000_000.0
    for workload in (counters(1000, b"warm"), counters(contexts)):  # the first warms the process up
        gc.collect()
        before = _rss()
        for i in range(0, len(workload.datagrams), 32):
            pipeline.process(workload.datagrams[i : i + 32], now)
        pipeline.fold()
        now += 1
    gc.collect()
    loaded = _rss()
    pipeline.aggregator.flush(now + 30)
    gc.collect()
    flushed = _rss()
    print(f"RSS per live 4-tag counter context, {contexts:,} contexts, in-process")
    print(f"  {'in the open bucket':<30} {(loaded - before) / contexts:>8,.0f} B")
    print(f"  {'after its flush':<30} {(flushed - before) / contexts:>8,.0f} B")


def run_ceiling(packets) -> float:
    """The ceiling receiver's own loop (benchmarks.ceiling), without the socket."""
    handle = Counter().packet
    start = time.perf_counter()
    for packet in packets:
        handle(packet)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--stats", action="store_true", help="the cost of per-metric statistics, off and on")
    parser.add_argument("--memory", action="store_true", help="RSS per live counter context, in-process")
    args = parser.parse_args()
    if args.memory:
        measure_memory(args.contexts)
        return
    packets, lines = workload(args.contexts)
    if args.stats:
        compare_stats(packets, lines, args.runs)
        return
    # Interleaved, so that a machine that speeds up or slows down mid-run
    # moves both figures: the ratio is the median of the per-round ratios.
    ceiling_times, pipeline_times = [], []
    for _ in range(args.runs):
        ceiling_times.append(run_ceiling(packets))
        pipeline_times.append(run_pipeline(packets))
    ratio = statistics.median(c / p for c, p in zip(ceiling_times, pipeline_times, strict=False))
    print(f"{lines} metrics in {len(packets)} packets, {args.contexts} contexts, median of {args.runs} rounds")
    print(f"  {'ceiling (split + float sum)':<30} {lines / statistics.median(ceiling_times):>12,.0f} metrics/s")
    print(f"  {'twisted_statsd Pipeline':<30} {lines / statistics.median(pipeline_times):>12,.0f} metrics/s")
    print(f"  pipeline / ceiling            {ratio:>12.2f}")


if __name__ == "__main__":
    main()
