"""Pending events and service checks are bounded in bytes too, not only in count (issue 12 item 6)."""

from __future__ import annotations

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core import aggregator as aggregator_module
from twisted_statsd.core.aggregator import MAX_PENDING_BYTES, Aggregator
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.telemetry import Telemetry

NOW = 1_000_001.0


def test_events_beyond_the_byte_bound_are_refused_until_the_flush():
    agg = Aggregator()
    size = 1024 * 1024
    accepted = sum(agg.add_event(object(), size) for _ in range(MAX_PENDING_BYTES // size + 5))
    assert accepted == MAX_PENDING_BYTES // size
    assert agg.refusal("events", size) == "pending_bytes_overflow"
    assert agg.refusal("service_checks", size) is None  # each kind has its own bound
    assert len(agg.flush(NOW).events) == accepted
    assert agg.add_event(object(), size)


def test_the_pipeline_counts_events_and_checks_over_the_byte_bound(monkeypatch):
    monkeypatch.setattr(aggregator_module, "MAX_PENDING_BYTES", 100_000)
    telemetry = Telemetry()
    pipeline = Pipeline(Aggregator(), Enricher(hostname="h"), telemetry, RateLimitedReporter(telemetry, verbose=False))
    text = b"x" * 30_000
    event = b"_e{1,%d}:t|%s" % (len(text), text)
    check = b"_sc|chk|0|m:" + text
    pipeline.process([event] * 5 + [check] * 5 + [b"ok:1|c"], NOW)
    assert telemetry.get("events") == 3 and telemetry.get("service_checks") == 3
    assert telemetry.dropped("pending_bytes_overflow") == 4
    pipeline.fold()
    batch = pipeline.aggregator.flush(NOW + 20)
    assert (len(batch.events), len(batch.service_checks), len(batch.series)) == (3, 3, 1)
    pipeline.process([event], NOW + 20)  # the flush emptied the queue
    assert telemetry.get("events") == 4
