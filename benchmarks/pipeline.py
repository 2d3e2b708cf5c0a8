"""In-process throughput of the hot path, side by side with a bare-loop ceiling.

    python -m benchmarks.pipeline [--contexts 1000] [--runs 11]

Feeds the same packets (1,000 contexts with 4 tags each, types mixed c/g/ms/h/d/s,
some sampled, packed into ~1,400-byte datagrams as the datadog client packs
them) to (a) twisted_statsd's Pipeline and (b) a plain loop that splits lines
and sums a float per context, and prints metrics/s for each and their ratio.
No sockets: this measures parsing and aggregation only.  The two run
interleaved, and the ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from benchmarks.ceiling import Counter
from benchmarks.workload import shapes_of
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.intake.pipeline import Pipeline
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
    args = parser.parse_args()
    packets, lines = workload(args.contexts)
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
