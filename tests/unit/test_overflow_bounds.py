"""Overflow contexts are bounded too: a flood of metric names or of senders folds into a few contexts."""

from __future__ import annotations

from twisted_statsd.config import load_config
from twisted_statsd.core import limits
from twisted_statsd.service import build_pipeline, report_limits

NOW = 1_000_001.0


def pipeline_for(**data):
    return build_pipeline(load_config(data={"hostname": "h", **data}))


def flushed(pipeline):
    pipeline.fold()
    batch = pipeline.aggregator.flush(NOW + 100, final=True)
    return {(s.name, s.tags): s.points[0][1] for s in batch.series}


def test_a_flood_of_metric_names_from_one_sender_folds_into_its_overflow_context_per_type():
    pipeline = pipeline_for(dogstatsd_context_limiter={"sender_limit": 5, "key_tag_name": "pod"})
    lines = [b"n%d:2|c|#pod:a,u:%d" % (i, i) for i in range(5_000)] + [b"g%d:%d|g|#pod:a" % (i, i) for i in range(300)]
    for start in range(0, len(lines), 500):
        pipeline.process([b"\n".join(lines[start : start + 500])], NOW)
    series = flushed(pipeline)
    # 5 admitted, 100 overflow contexts by metric name, then one per type for the rest.
    assert len(series) == 5 + limits.OVERFLOW_NAMES_PER_SENDER + 2
    assert series[("statsd.overflow", ("metric_type:counter", "overflow:true", "pod:a"))] * 10 == 2 * (5_000 - 105)
    assert series[("statsd.overflow", ("metric_type:gauge", "overflow:true", "pod:a"))] == 299.0  # the last gauge
    counted = sum(v for (name, _tags), v in series.items() if name.startswith("n") or "metric_type:counter" in _tags)
    assert round(counted * 10) == 2 * 5_000  # every counter sample, kept or in an overflow context
    assert len(pipeline.limiter) == 5


def test_a_flood_of_senders_folds_into_one_shared_overflow_context_per_type(monkeypatch):
    monkeypatch.setattr(limits, "MAX_OVERFLOW_CONTEXTS", 20)
    monkeypatch.setattr(limits, "OVERFLOW_NAMES_PER_SENDER", 2)
    pipeline = pipeline_for(dogstatsd_context_limiter={"limit": 1, "key_tag_name": "pod"}, dogstatsd_tags=["dc:1"])
    lines = [b"m%d:1|c|#pod:p%d" % (i % 4, i) for i in range(2_000)]
    pipeline.process([b"\n".join(lines)], NOW)
    report_limits(pipeline, NOW)
    series = flushed(pipeline)
    assert len(series) <= 1 + 20 + 1
    assert series[("statsd.overflow", ("dc:1", "metric_type:counter", "overflow:true"))] * 10 == 2_000 - 1 - 20
    assert round(sum(series.values()) * 10) == 2_000
    telemetry = pipeline.telemetry
    assert telemetry.get("context_overflows_folded", "into:shared") == 2_000 - 1 - 20
    assert telemetry.get("context_overflows") == 2_000 - 1


def test_expired_overflow_contexts_free_their_sender_slots(monkeypatch):
    monkeypatch.setattr(limits, "OVERFLOW_NAMES_PER_SENDER", 1)
    pipeline = pipeline_for(dogstatsd_context_limiter={"limit": 1}, dogstatsd_expiry_seconds=0)
    pipeline.process([b"a:1|g\nb:1|g\nc:1|g"], NOW)  # a counted, b by name, c folded
    pipeline.fold()
    names = {s.name for s in pipeline.aggregator.flush(NOW + 10).series}
    assert names == {"a", "b", "statsd.overflow"}
    assert pipeline.limiter.table()["overflow_contexts"] == 0
    pipeline.process([b"x:1|g\nc:1|g"], NOW + 10)  # x counted; c has the sender's name slot again
    assert {name for name, _tags in flushed(pipeline)} == {"x", "c"}
