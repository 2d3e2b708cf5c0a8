"""Coverage-guided fuzzing of the metric mapper (see fuzz/README.md).

The input builds one profile: a match type, a pattern, a name template and a
tag template (NUL-separated text), then names to map (the remaining bytes,
split on NUL).  Building may fail only with ``MapperConfigError``; a built
mapper must map every name without raising, and its cached answer must be the
uncached one.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["twisted_statsd"]):
    from twisted_statsd.core.mapper import MapperConfigError, MetricMapper


def test_one_input(data: bytes) -> None:
    fields = data.split(b"\0", 5)
    if len(fields) < 5:
        return
    kind, pattern, name, tag, prefix = (f.decode("utf-8", "replace") for f in fields[:5])
    profiles = [
        {
            "name": "fuzz",
            "prefix": prefix or "*",
            "mappings": [
                {
                    "match_type": "regex" if kind[:1] == "r" else "wildcard",
                    "match": pattern,
                    "name": name,
                    "tags": {"k": tag, "%": tag},
                }
            ],
        }
    ]
    try:
        cached = MetricMapper(profiles, cache_size=2)
    except MapperConfigError:
        return
    uncached = MetricMapper(profiles, cache_size=0)
    names = fields[5].split(b"\0") if len(fields) > 5 else [b""]
    for metric in names + names:
        result = cached.map(metric)
        if result != uncached.map(metric):
            raise AssertionError(f"cached {result!r} differs for {metric!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
