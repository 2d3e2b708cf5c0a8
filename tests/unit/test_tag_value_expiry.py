"""dogstatsd_tag_value_limits forget values unseen for the context limiter's entry_timeout (issue 12)."""

from __future__ import annotations

from twisted_statsd.config import load_config
from twisted_statsd.core.limits import TagRules
from twisted_statsd.service import build_pipeline

NOW = 1_000_001.0


def test_a_value_unseen_for_entry_timeout_frees_its_slot():
    rules = TagRules(value_limits={"m": {b"u": 1}}, entry_timeout=300)
    rules.expire(0)
    assert rules.apply(b"m", [b"u:1"]) == [b"u:1"]
    rules.expire(200)
    assert rules.apply(b"m", [b"u:2"]) == []  # u:1 holds the only slot
    rules.expire(299)
    assert rules.apply(b"m", [b"u:2"]) == []
    rules.expire(300)  # u:1 last seen 300 s ago
    assert rules.apply(b"m", [b"u:2"]) == [b"u:2"]
    assert rules.apply(b"m", [b"u:1"]) == []
    assert rules.dropped == {("m", "u"): 3}


def test_a_value_seen_again_keeps_its_slot():
    rules = TagRules(value_limits={"": {b"u": 1}}, entry_timeout=300)
    rules.expire(0)
    rules.apply(b"m", [b"u:1"])
    rules.expire(200)
    rules.apply(b"m", [b"u:1"])  # seen at 200
    rules.expire(450)
    assert rules.apply(b"m", [b"u:2"]) == []
    rules.expire(500)
    assert rules.apply(b"m", [b"u:2"]) == [b"u:2"]


def tags_of(pipeline, now):
    pipeline.fold()
    return sorted(s.tags for s in pipeline.aggregator.flush(now, final=True).series)


def test_a_value_sent_through_a_cached_shape_is_seen_and_keeps_its_slot():
    """The intake caches a line's shape; a value-limited shape is still seen in every generation."""
    pipeline = build_pipeline(
        load_config(
            data={
                "hostname": "h",
                "dogstatsd_tag_value_limits": [{"tag": "u", "limit": 1}],
                "dogstatsd_context_limiter": {"entry_timeout": 30},
                "dogstatsd_context_expiry_seconds": 10,
            }
        )
    )
    for t in range(0, 100, 5):  # u:1 every 5 s, through its cached shape; new values never get its slot
        pipeline.process([b"m:1|c|#u:1", b"m:1|c|#u:new%d" % t], NOW + t)
    assert tags_of(pipeline, NOW + 200) == [(), ("u:1",)]


def test_a_value_no_longer_sent_frees_its_slot_in_the_intake():
    pipeline = build_pipeline(
        load_config(
            data={
                "hostname": "h",
                "dogstatsd_tag_value_limits": [{"metric_name": "m", "tag": "u", "limit": 1}],
                "dogstatsd_context_limiter": {"entry_timeout": 30},
                "dogstatsd_context_expiry_seconds": 10,
            }
        )
    )
    pipeline.process([b"m:1|g|#u:1"], NOW)
    pipeline.process([b"m:1|g|#u:2"], NOW + 20)
    assert tags_of(pipeline, NOW + 25) == [(), ("u:1",)]
    pipeline.process([b"m:1|g|#u:2"], NOW + 40)  # u:1 unseen for 40 s
    assert tags_of(pipeline, NOW + 45) == [("u:2",)]
