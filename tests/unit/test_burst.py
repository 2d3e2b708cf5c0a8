"""Learning many new contexts at once (issue 14) and what their idle counters cost later (issue 12, defect 4)."""

from __future__ import annotations

import gc

import pytest

from twisted_statsd.config import load_config
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.core.model import Context, MetricMessage
from twisted_statsd.intake import service as intake_module
from twisted_statsd.intake.service import IntakeService
from twisted_statsd.service import build_pipeline, report_zero_fill

NOW = 1_000_001.0


class FixedClock:
    def seconds(self) -> float:
        return NOW


def burst(contexts: int, start: int = 0) -> list[bytes]:
    """One datagram per 20 new 4-tag counter contexts."""
    lines = [
        b"burst.%d:1|c|#env:prod,service:svc%d,region:r%d,version:1.%d" % (i, i % 7, i % 3, i % 11)
        for i in range(start, start + contexts)
    ]
    return [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]


@pytest.fixture
def freezes(monkeypatch):
    """Counts the intake's gc.freeze() calls, without freezing the test process."""
    calls: list[int] = []
    monkeypatch.setattr(intake_module.gc, "freeze", lambda: calls.append(gc.get_count()[0]))
    return calls


@pytest.mark.parametrize("freeze_gc", [True, False])
def test_a_burst_of_new_contexts_freezes_the_collector_every_few_thousand_only_with_freeze_gc(freezes, freeze_gc):
    """Full collections over everything a burst learnt stalled intake (80 ms at 100,000 contexts)."""
    pipeline = build_pipeline(load_config(data={"hostname": "h"}))
    intake = IntakeService(FixedClock(), pipeline, buffer_size=8, flush_timeout=0.1, freeze_gc=freeze_gc)
    append = intake.buffer_for("udp").append
    every = intake_module.FREEZE_EVERY_SHAPES
    for datagram in burst(every * 3 - 100):
        append(datagram)
    intake.drain()
    assert pipeline.learnt == every * 3 - 100
    assert len(freezes) == (2 if freeze_gc else 0)
    for datagram in burst(every, start=10 * every):  # known shapes are not counted again
        append(datagram)
    for datagram in burst(every * 3 - 100):
        append(datagram)
    intake.drain()
    assert len(freezes) == (3 if freeze_gc else 0)


def test_tag_sets_are_shared_whatever_order_and_duplicates_a_line_gave():
    a = Context(b"m", b"h", [b"b:2", b"a", b"a"])
    b = Context(b"n", b"h", (b"a", b"b:2"))
    c = Context(b"m", b"h", [b"a", b"b:2"])
    assert a.tags == ("a", "b:2") and a.tags is b.tags is c.tags
    assert a.key == c.key != b.key
    # Pinned: the key of a context is the same as before tag sets were remembered (workers of
    # another version, and saved references, must agree on it).
    assert b.key == 1097500224465635976
    assert Context(b"app.x", b"bench", []).key == 525404007348805677


def test_a_remembered_tag_list_is_not_changed_by_what_one_line_adds_to_it():
    enricher = Enricher(hostname="h", extra_tags=["dc:1"])

    def message(tags):
        return MetricMessage(b"m", b"c", (1.0,), None, 1.0, tags, 0, None)

    first = enricher.metric_target(message([b"a", b"host:x"]), origin=b"abc")
    second = enricher.metric_target(message([b"a", b"host:x"]))
    assert first.context.tags == ("a", "container_id:abc", "dc:1") and first.context.host == "x"
    assert second.context.tags == ("a", "dc:1") and second.context.host == "x"


def test_idle_counters_left_without_a_zero_are_counted_in_telemetry_at_the_next_flush():
    pipeline = build_pipeline(load_config(data={"hostname": "h", "dogstatsd_zero_fill_limit": 2}))
    pipeline.process(burst(5), NOW)
    pipeline.fold()
    pipeline.aggregator.flush(NOW + 10)
    assert len(pipeline.aggregator.flush(NOW + 20).series) == 2
    report_zero_fill(pipeline)
    assert pipeline.telemetry.get("zero_fill_skipped") == 3
    report_zero_fill(pipeline)  # counted once
    assert pipeline.telemetry.get("zero_fill_skipped") == 3
