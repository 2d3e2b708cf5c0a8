"""Issue 12 defect 7: a flush must not hold every series of a big bucket at once.

The aggregator hands the sinks a SeriesStream, built from the closed buckets
as each sink walks it, so what a flush holds is what a sink has in hand.
"""

from __future__ import annotations

import gc

from twisted.internet.task import Clock
from zope.interface import implementer

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Blocklist
from twisted_statsd.core.model import COUNTER, GAUGE, HISTOGRAM, SERIES_RATE, Context, FlushBatch, Series
from twisted_statsd.flush import FlushService
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.telemetry import Telemetry

CONTEXTS = 2_000
SLICE = 100


def live_series() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Series)


def loaded(contexts: int = CONTEXTS) -> Aggregator:
    aggregator = Aggregator()
    for i in range(contexts):
        aggregator.add(Context(b"c", b"h", [f"id:{i}".encode()]), COUNTER, 1.0, 1.0, 1000)
    return aggregator


@implementer(IMetricSink)
class SlicedSink:
    """Walks each batch's series a slice at a time, as the real sinks do, keeping none of them,
    and records the most Series objects alive at any slice."""

    name = "sliced"

    def __init__(self):
        self.most_alive = 0
        self.walked = 0

    def write(self, batch: FlushBatch) -> None:
        for done, _series in enumerate(batch.series, 1):
            if not done % SLICE:
                self.most_alive = max(self.most_alive, live_series())
            self.walked += 1


def test_a_flush_holds_no_more_than_a_slice_of_series():
    gc.collect()
    assert live_series() == 0
    sink = SlicedSink()
    clock = Clock()
    clock.advance(1010)
    aggregator = loaded()
    aggregator.add(Context(b"h", b"h", []), HISTOGRAM, 1.0, 1.0, 1000)  # built at the flush: a few series
    service = FlushService(
        clock, aggregator, [sink], Telemetry(), RateLimitedReporter(clock), interval=10, hostname="h"
    )
    service.inline_steps, service.inline_seconds = 10**9, float("inf")
    service.flush()
    assert sink.walked >= CONTEXTS
    # The histogram's series, the one in hand, and those of the server's own telemetry.
    assert sink.most_alive <= 20, sink.most_alive


def test_the_series_are_built_again_the_same_for_every_sink():
    batch = loaded(10).flush(1010)
    first, second = list(batch.series), list(batch.series)
    assert first == second and first is not second and first[0] is not second[0]
    assert len(batch.series) == 10 and batch.series and batch.series == first
    assert batch.series[3] == first[3] and list(reversed(batch.series)) == first[::-1]
    assert {s.tags for s in batch.series} == {(f"id:{i}",) for i in range(10)}
    assert all(s.type == SERIES_RATE and s.points == [(1000, 0.1)] for s in batch.series)


def test_a_non_finite_point_is_counted_once_however_often_the_series_are_walked():
    aggregator = Aggregator()
    aggregator.add(Context(b"big", b"h", []), COUNTER, 1e308, 1.0, 1000)
    aggregator.add(Context(b"big", b"h", []), COUNTER, 1e308, 1.0, 1000)
    aggregator.add(Context(b"g", b"h", []), GAUGE, 2.0, 1.0, 1000)
    batch = aggregator.flush(1010)
    assert aggregator.non_finite_points == 1
    assert [s.name for s in batch.series] == ["g"] == [s.name for s in batch.series]
    assert aggregator.non_finite_points == 1


def test_the_blocklist_applies_as_the_sinks_walk_the_series():
    clock = Clock()
    clock.advance(1010)
    aggregator = loaded(0)
    for name in (b"keep", b"drop.me"):
        aggregator.add(Context(name, b"h", []), GAUGE, 1.0, 1.0, 1000)
    sink = SlicedSink()
    service = FlushService(
        clock,
        aggregator,
        [sink],
        Telemetry(),
        RateLimitedReporter(clock),
        interval=10,
        hostname="h",
        blocklist=Blocklist(["drop.me"]),
    )
    batches: list = []
    service.flush().addCallback(batches.append)
    names = {s.name for s in batches[0].series}
    assert "keep" in names and "drop.me" not in names
