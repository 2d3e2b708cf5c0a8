"""A flush of many contexts runs in slices: no step of it does work for every context at once."""

from __future__ import annotations

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
