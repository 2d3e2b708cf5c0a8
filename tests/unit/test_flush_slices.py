"""A flush of many contexts runs in slices: no step of it does work for every context at once."""

from __future__ import annotations

import sys

from twisted_statsd.core.aggregator import FLUSH_STEP, Aggregator
from twisted_statsd.core.model import GAUGE, Context, FlushBatch

CONTEXTS = FLUSH_STEP * 10 + 7


def test_the_expired_contexts_reach_the_limiter_a_slice_at_a_time():
    """100,000 expired contexts handed over in one call held the reactor for ~150 ms (benchmarks.stall)."""
    calls: list[tuple[int, list[int]]] = []  # (steps taken so far, keys)
    aggregator = Aggregator(on_expired=[lambda keys: calls.append((steps, list(keys)))])
    keys = set()
    for i in range(CONTEXTS):
        context = Context(b"g", b"h", [f"id:{i}".encode()])
        keys.add(context.key)
        aggregator.add(context, GAUGE, 1.0, 1.0, 1000)
    steps = 0
    for _ in aggregator.flush_steps(1010, FlushBatch(timestamp=1010)):
        steps += 1
    assert {key for _, chunk in calls for key in chunk} == keys
    assert max(len(chunk) for _, chunk in calls) <= FLUSH_STEP
    taken_at = [at for at, _ in calls]
    assert len(set(taken_at)) == len(taken_at), "two slices of keys were handed over in one step"


def _calls_between(items) -> list[int]:
    """The Python and C calls made to produce each item of ``items``, and after the last one until the end:
    the work between two yields."""
    counts, calls = [], 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        for _ in items:
            counts.append(calls)
            calls = 0
    finally:
        sys.setprofile(None)
    return [*counts, calls]


def test_a_late_flush_of_two_buckets_walks_their_contexts_a_slice_at_a_time():
    """Two due buckets holding the same contexts (a late flush; zero-filled counters): the later bucket
    was walked past every context in one step, and again by the first series drawn from it (~100 ms
    at 100,000 contexts, issue 12 defect 4)."""
    aggregator = Aggregator()
    contexts = [Context(b"g", b"h", [f"id:{i}".encode()]) for i in range(FLUSH_STEP * 100)]
    for start in (1000, 1010):
        for context in contexts:
            aggregator.add(context, GAUGE, float(start), 1.0, start)
    batch = FlushBatch(timestamp=1030)
    steps = _calls_between(aggregator.flush_steps(1030, batch))
    draws = _calls_between(iter(batch.series))
    assert len(draws) == len(contexts) + 1
    assert {tuple(p for _, p in s.points) for s in batch.series} == {(1000.0, 1010.0)}
    assert max(steps) < FLUSH_STEP * 30, "one step of the flush did work for every context"
    assert max(draws) < 100, "one series took a walk over the contexts"
