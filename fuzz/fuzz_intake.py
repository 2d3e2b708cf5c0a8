"""Coverage-guided fuzzing of the whole intake: packets into the server's own pipeline (see fuzz/README.md).

One pipeline is built with ``build_pipeline`` from a configuration close to a
real one (a mapper profile, a namespace, a block list, extra tags) and lives
across inputs, so shapes cached by one input meet the lines of the next.  The
input is split into packets on NUL; the first byte picks the transport's
end-of-line rule.  Nothing may escape ``process``, ``fold`` or ``flush``, and
the drop counters may only grow.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["twisted_statsd"]):
    from twisted_statsd.config import load_config
    from twisted_statsd.service import build_pipeline

CONFIG = {
    "hostname": "fuzz",
    "dogstatsd_tags": ["env:fuzz"],
    "statsd_metric_namespace": "ns",
    "statsd_metric_blocklist": ["ns.blocked"],
    "histogram_copy_to_distribution": True,
    "dogstatsd_mapper_profiles": [
        {
            "name": "fuzz",
            "prefix": "ns.app.",
            "mappings": [
                {"match": "ns.app.*.*", "name": "ns.app.$1", "tags": {"part": "$2"}},
                {"match_type": "regex", "match": r"ns\.app\.(\w+)?-(.*)", "name": "ns.re", "tags": {"a": "$1"}},
            ],
        }
    ],
}
pipeline = build_pipeline(load_config(data=CONFIG))
state = {"now": 1_000_000.0, "inputs": 0, "dropped": 0}


def test_one_input(data: bytes) -> None:
    eol_required = bool(data[:1]) and data[0] & 1 == 1
    state["now"] += 0.25
    state["inputs"] += 1
    pipeline.process(data[1:].split(b"\0"), state["now"], eol_required=eol_required)
    if state["inputs"] % 512 == 0:  # read as the flush does, and keep memory bounded
        pipeline.fold()
        pipeline.aggregator.flush(state["now"] + 30)
    dropped = pipeline.telemetry.total_dropped()
    if dropped < state["dropped"]:
        raise AssertionError("the drop counter went down")
    state["dropped"] = dropped


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
