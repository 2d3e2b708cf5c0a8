"""Cost of one MetricMapper.map() call, for cache hits and cache misses, by number of mappings.

    python -m benchmarks.mapper [--runs 5] [--budget 0.2]

One profile (prefix ``app.``) holds N mappings, ``app.svc<i>.*.*`` →
``app.svc<i>`` with two tags, written either as wildcards (which the mapper
compiles into one alternation per run of wildcards) or as the equivalent
regexes (tried one by one, as DogStatsD tries every mapping).  Columns:

* hit: 500 names spread over the mappings, cache warm (the steady state);
* miss first / last: cache disabled, a name matched by the first / last
  mapping, so the last one pays for scanning all N;
* miss none: cache disabled, a name under the prefix that no mapping matches;
* outside: a name under no profile prefix (never cached, as in DogStatsD).

Each cell is ns per call, the median of --runs runs, each run calling map()
over the names until --budget seconds have passed.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

from twisted_statsd.core.mapper import MetricMapper

SIZES = (10, 100, 1000)
COLUMNS = ("hit", "miss first", "miss last", "miss none", "outside")


def profiles(count: int, match_type: str) -> list:
    def match(i):
        return f"app.svc{i}.*.*" if match_type == "wildcard" else rf"app\.svc{i}\.([^.]*)\.([^.]*)"

    mappings = [
        {"match": match(i), "match_type": match_type, "name": f"app.svc{i}", "tags": {"job": "$1", "task": "$2"}}
        for i in range(count)
    ]
    return [{"name": "bench", "prefix": "app.", "mappings": mappings}]


def ns_per_call(fn, names: list[bytes], budget: float) -> float:
    """Call fn over names until budget seconds have passed; deque(maxlen=0) keeps loop overhead low."""
    calls, start = 0, time.perf_counter()
    while True:
        collections.deque(map(fn, names), maxlen=0)
        calls += len(names)
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / calls * 1e9


def measure(count: int, match_type: str, runs: int, budget: float) -> dict[str, float]:
    cached = MetricMapper(profiles(count, match_type), cache_size=1000)
    uncached = MetricMapper(profiles(count, match_type), cache_size=0)
    spread = [b"app.svc%d.job%d.task" % (i % count, i) for i in range(500)]
    for name in spread:
        assert cached.map(name) is not None
    cases = {
        "hit": (cached.map, spread),
        "miss first": (uncached.map, [b"app.svc0.job.task"] * 100),
        "miss last": (uncached.map, [b"app.svc%d.job.task" % (count - 1)] * 100),
        "miss none": (uncached.map, [b"app.other.job.task"] * 100),
        "outside": (cached.map, [b"other.svc0.job.task"] * 100),
    }
    assert uncached.map(cases["miss last"][1][0]) is not None and uncached.map(cases["miss none"][1][0]) is None
    return {
        column: statistics.median(ns_per_call(fn, names, budget) for _ in range(runs))
        for column, (fn, names) in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per run and cell")
    args = parser.parse_args()
    print(f"ns per map() call, median of {args.runs} runs")
    print(f"  {'mappings':<18}" + "".join(f"{column:>13}" for column in COLUMNS))
    for match_type in ("wildcard", "regex"):
        for count in SIZES:
            row = measure(count, match_type, args.runs, args.budget)
            label = f"{count} {match_type}"
            print(f"  {label:<18}" + "".join(f"{row[column]:>13,.0f}" for column in COLUMNS))


if __name__ == "__main__":
    main()
