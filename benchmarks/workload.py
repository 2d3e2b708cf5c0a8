"""Pre-built DogStatsD workloads for the socket benchmarks.

A workload is a list of datagrams, each up to ~1,400 bytes of newline-separated
lines (as the datadog client packs them), and the number of metric lines in
each.  The sender cycles through the list, so the cycle is built once and the
send loop only calls ``send``.

``mixed`` has the line shapes of :func:`benchmarks.pipeline.workload` (same
names, 4 tags, types c/g/ms/h/d/s, every tenth counter/timer/histogram sampled
at 0.5) for any number of contexts: every context appears once, in a shuffled
order, and the rest of the cycle picks contexts at random.  ``counters`` is
one line per distinct counter context with 4 tags, for measuring memory per
live context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Metric types in the mix, by weight: counters most, then gauges, then the rest.
TYPES = [b"c", b"c", b"c", b"g", b"g", b"ms", b"h", b"d", b"s"]

DATAGRAM_BYTES = 1400


@dataclass(frozen=True)
class Workload:
    """Datagrams to cycle through and the metric lines in each."""

    name: str
    contexts: int
    datagrams: list[bytes]
    counts: list[int]

    @property
    def lines(self) -> int:
        return sum(self.counts)

    @property
    def bytes(self) -> int:
        return sum(map(len, self.datagrams))


def pack(lines, limit: int = DATAGRAM_BYTES) -> tuple[list[bytes], list[int]]:
    """Join lines into datagrams of at most ``limit`` bytes, as the datadog client buffers them."""
    datagrams, counts, current, size = [], [], [], 0
    for line in lines:
        if current and size + len(line) + 1 > limit:
            datagrams.append(b"\n".join(current))
            counts.append(len(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        datagrams.append(b"\n".join(current))
        counts.append(len(current))
    return datagrams, counts


def shapes_of(contexts: int) -> list[tuple[bytes, bytes]]:
    """(name and colon, rest of the line) per context: 4 tags each, some sampled."""
    shapes = []
    for i in range(contexts):
        mtype = TYPES[i % len(TYPES)]
        rate = b"|@0.5" if i % 10 == 0 and mtype in (b"c", b"ms", b"h") else b""
        tags = b"#env:prod,service:api%d,region:eu-west-%d,version:1.%d" % (i % 7, i % 3, i % 11)
        shapes.append((b"app.metric.%d:" % i, b"|" + mtype + rate + b"|" + tags))
    return shapes


def mixed(contexts: int, lines_per_context: int = 20, seed: int = 1) -> Workload:
    """``contexts`` mixed-type contexts, ``contexts * lines_per_context`` lines in all."""
    rng = random.Random(seed)
    shapes = shapes_of(contexts)
    order = list(range(contexts))
    rng.shuffle(order)
    order += [rng.randrange(contexts) for _ in range(contexts * (lines_per_context - 1))]

    def line(index: int) -> bytes:
        name, rest = shapes[index]
        value = b"user%d" % rng.randint(0, 50) if rest.startswith(b"|s|") else b"%d" % rng.randint(0, 1000)
        return name + value + rest

    datagrams, counts = pack(line(i) for i in order)
    return Workload(f"mixed-{contexts}", contexts, datagrams, counts)


def counters(contexts: int, prefix: bytes = b"bench.live") -> Workload:
    """One sample of each of ``contexts`` distinct counters with 4 tags."""
    lines = (
        b"%s.%d:1|c|#env:prod,service:svc%d,region:eu-west-%d,version:1.%d" % (prefix, i, i % 7, i % 3, i % 11)
        for i in range(contexts)
    )
    datagrams, counts = pack(lines)
    return Workload(f"counters-{contexts}", contexts, datagrams, counts)


def mixed_spec(contexts: int) -> dict:
    """The benchmark's mixed workload: 20 lines per context, 3 for high cardinality (~20 MB at 100k)."""
    return {"kind": "mixed", "contexts": contexts, "lines_per_context": 20 if contexts <= 10_000 else 3}


def build(spec: dict) -> Workload:
    """A workload from a picklable description: ``{"kind": "mixed"|"counters", ...}``."""
    kind = spec["kind"]
    if kind == "mixed":
        return mixed(spec["contexts"], spec.get("lines_per_context", 20), spec.get("seed", 1))
    if kind == "counters":
        return counters(spec["contexts"], spec.get("prefix", "bench.live").encode())
    raise ValueError(f"unknown workload kind {kind!r}")
