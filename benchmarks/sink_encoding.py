"""Encoding cost of the HTTP sinks' payload builders on one large flush, side by side and interleaved.

    python -m benchmarks.sink_encoding [--series 100000] [--distributions 2000] [--runs 3]

Builds one flush (``--series`` gauges and counters with three tags, one a
unique id, over 20 hosts; ``--distributions`` sketches of 200 log-normal
samples each) and runs the otlp and datadog payload builders over it in turn,
``--runs`` times each.  Reported per builder, as medians: the total time, the
longest step between two yields (what one Cooperator slice can hold the
reactor for), and the gzipped bytes.  Needs the ``otlp`` extra.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from twisted_statsd.core.model import SERIES_GAUGE, SERIES_RATE, FlushBatch, Series, SketchSeries
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.sinks import _datadog_payloads, _otlp_payloads


def flush(series: int, distributions: int) -> FlushBatch:
    rng = random.Random(1)
    batch = FlushBatch(1700000010.0)
    for i in range(series):
        kind = SERIES_RATE if i % 2 else SERIES_GAUGE
        tags = ("env:prod", f"shard:{i % 97}", f"id:{i}")
        batch.series.append(Series(f"app.metric{i % 500}", kind, [(1700000000, rng.random())], tags, f"host{i % 20}"))
    for i in range(distributions):
        sketch = Sketch()
        sketch.add_many([rng.lognormvariate(0, 2) for _ in range(200)])
        batch.sketches.append(
            SketchSeries(f"latency{i % 50}", [(1700000000, sketch)], ("env:prod", f"id:{i}"), f"host{i % 20}")
        )
    return batch


def measure(steps) -> tuple[float, float, int]:
    start = last = time.perf_counter()
    longest = 0.0
    size = 0
    for payload in steps:
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
        if payload is not None:
            size += len(payload.body)
    return time.perf_counter() - start, longest, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--distributions", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    batch = flush(args.series, args.distributions)
    builders = {
        "otlp": lambda: _otlp_payloads.build_payloads(batch, on_drop=lambda reason, n: None),
        "datadog": lambda: _datadog_payloads.build_payloads(
            batch, distribution_max_values=100_000, on_drop=lambda reason, n: None
        ),
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in builders}
    for _ in range(args.runs):
        for name, build in builders.items():
            results[name].append(measure(build()))
    for name, runs in results.items():
        total = statistics.median(r[0] for r in runs)
        longest = statistics.median(r[1] for r in runs)
        print(f"{name:8} total {total:.3f} s  longest step {longest * 1000:.1f} ms  gzipped {runs[0][2]:,} bytes")


if __name__ == "__main__":
    main()
