"""The staged path against the one-line-at-a-time reference with cardinality limits configured (issue 12).

The context limiter (small budgets, so contexts overflow; flushes in the
middle of the stream, so contexts expire and free their budget), the
``metric_tag_filterlist`` and the tag value limits decide where a line's
samples go; the pipeline decides once per line shape and caches it, the
reference decides for every line.  Both must aggregate exactly the same.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.config import load_config
from twisted_statsd.core import limits as limits_module
from twisted_statsd.core import parser
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.core.limits import ContextLimiter, TagRules
from twisted_statsd.core.model import SET
from twisted_statsd.intake import pipeline as pipeline_module
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.service import build_pipeline
from twisted_statsd.telemetry import Telemetry

NOW = 1_000_001.0
AGGREGATES = ("max", "min", "median", "avg", "sum", "count")

_NAMES = [b"a", b"a", b"b.c", b"d"]
_TYPES = [b"c", b"g", b"g", b"ms", b"d", b"s"]
_RATES = [b"", b"", b"|@0.5", b"|@0"]
_TAGS = [b"pod:p1", b"pod:p2", b"u:1", b"u:2", b"u:3", b"x", b"y:1", b"host:h2"]
_VALUES = [b"1", b"1", b"0", b"-2.5", b"3:4", b"1:x", b"", b"nan"]
_OTHER_LINES = [b"_e{1,1}:t|x|#pod:p1", b"a:1|g|#u:5|T1657100430", b"garbage", b"a:1|q"]

_metric_lines = st.builds(
    lambda name, value, mtype, rate, tags: name + b":" + value + b"|" + mtype + rate + b"|#" + b",".join(tags),
    st.sampled_from(_NAMES),
    st.sampled_from(_VALUES),
    st.sampled_from(_TYPES),
    st.sampled_from(_RATES),
    st.lists(st.sampled_from(_TAGS), max_size=2),
)
_lines = st.one_of(*[_metric_lines] * 6, st.sampled_from(_OTHER_LINES))


@st.composite
def _steps(draw):
    """Steps of a stream: seconds since the previous one, then a batch (packets, the sender's
    detected container) or a flush.  Lines are drawn from a small pool, so that shapes recur."""
    pool = st.sampled_from(draw(st.lists(_lines, min_size=1, max_size=8)))
    step = st.tuples(
        st.sampled_from([0.0, 0.0, 0.5, 3.0, 10.0]),
        st.one_of(
            st.tuples(
                st.lists(st.lists(st.one_of(pool, pool, _lines), min_size=1, max_size=8), min_size=1, max_size=4),
                st.sampled_from([None, None, b"ctr"]),
            ),
            st.just("flush"),
        ),
    )
    return draw(st.lists(step, min_size=1, max_size=14))


_limiters = st.fixed_dictionaries(
    {
        "limit": st.sampled_from([0, 0, 2, 4]),
        "sender_limit": st.sampled_from([0, 0, 1, 3]),
        "metric_name_limit": st.sampled_from([0, 0, 1, 2]),
        "key_tag_name": st.sampled_from(["", "pod"]),
        "entry_timeout": st.sampled_from([1.0, 3.0, 300.0]),
    }
)
_filters = st.sampled_from(
    [
        {},
        {"a": (False, frozenset({b"x", b"y"}))},
        {"a": (True, frozenset({b"pod", b"u"})), "d": (False, frozenset({b"u"}))},
    ]
)
_value_limits = st.sampled_from([{}, {"": {b"u": 1}}, {"": {b"u": 2}}, {"b.c": {b"u": 1, b"y": 1}, "": {b"u": 2}}])


def flushed(batches):
    """Every series and sketch of ``batches``, in a comparable form."""
    series = sorted((s.name, s.host, s.tags, s.type, tuple(s.points)) for batch in batches for s in batch.series)
    sketches = sorted(
        (
            s.name,
            s.host,
            s.tags,
            tuple((ts, k.count, k.sum, k.min, k.max, tuple(map(tuple, k.bins()))) for ts, k in s.points),
        )
        for batch in batches
        for s in batch.sketches
    )
    return series, sketches


def reference(steps, limiter, rules, expiry_seconds, context_expiry):
    """Every line parsed, enriched, limited and aggregated alone, one sample at a time; flushed at each flush.

    Tag values age every ``context_expiry`` seconds of batches, as the intake's shape cache does.
    """
    aggregator = Aggregator(histogram_aggregates=AGGREGATES, expiry_seconds=expiry_seconds, on_expired=[limiter.expire])
    enricher = Enricher(hostname="myhost", tag_rules=rules)
    batches, now, age_at = [], NOW, None
    for advance, step in steps:
        now += advance
        if step == "flush":
            batches.append(aggregator.flush(now))
            continue
        if age_at is None or now >= age_at:
            rules.expire(now)
            age_at = now + context_expiry
        packets, origin = step
        for line in (line for packet in packets for line in packet):
            try:
                if parser.message_kind(line) != parser.METRIC:
                    continue
                message = parser.parse_metric(line)
            except parser.ParseError:
                continue
            target = enricher.metric_target(message, origin)
            if target is None or (target.type == b"c" and target.rate == 0 and not message.timestamp):
                continue
            context = limiter.admit(target.context, origin, now, target.type)
            copy = None if target.copy is None else limiter.admit(target.copy, origin, now, b"d")
            if message.timestamp:
                for v in message.values:
                    if v - v == 0.0 and target.type in (b"c", b"g"):
                        aggregator.add_timestamped(context, target.type, v, message.timestamp)
                continue
            if message.type == SET:
                aggregator.add(context, SET, message.set_member, 1.0, now)
                continue
            for v in message.values:
                if v - v == 0.0:
                    aggregator.add(context, target.type, v, target.rate, now)
                    if copy is not None:
                        aggregator.add(copy, b"d", v, target.rate, now)
    batches.append(aggregator.flush(now + 100, final=True))
    return flushed(batches)


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=_steps(),
    limits=_limiters,
    filters=_filters,
    value_limits=_value_limits,
    expiry_seconds=st.sampled_from([0.0, 5.0, 300.0]),
    cache_size=st.sampled_from([2, 3, 1000]),
    context_expiry=st.sampled_from([0.5, 2.0, 1000.0]),
    few_shapes=st.sampled_from([0, 4096]),
    fold_lines=st.sampled_from([1, 65536]),
    overflow_bounds=st.sampled_from([(100, 10_000), (1, 3)]),
)
def test_staged_path_with_limits_equals_one_line_at_a_time(
    steps,
    limits,
    filters,
    value_limits,
    expiry_seconds,
    cache_size,
    context_expiry,
    few_shapes,
    fold_lines,
    overflow_bounds,
):
    """Issue 12: with budgets small enough to overflow, contexts expiring at flushes in the middle of
    the stream, tag filters and tag value limits, the cached path aggregates what the reference does."""
    telemetry = Telemetry()
    limiter = ContextLimiter(**limits)
    aggregator = Aggregator(histogram_aggregates=AGGREGATES, expiry_seconds=expiry_seconds)  # the pipeline listens
    rules = TagRules(filters, value_limits, limits["entry_timeout"])
    pipeline = Pipeline(
        aggregator,
        Enricher(hostname="myhost", tag_rules=rules),
        telemetry,
        RateLimitedReporter(telemetry, verbose=False),
        cache_size=cache_size,
        context_expiry=context_expiry,
        limiter=limiter,
    )
    batches, now = [], NOW
    with (
        mock.patch.object(pipeline_module, "FEW_SHAPES", few_shapes),
        mock.patch.object(pipeline_module, "FOLD_LINES", fold_lines),
        mock.patch.object(limits_module, "OVERFLOW_NAMES_PER_SENDER", overflow_bounds[0]),
        mock.patch.object(limits_module, "MAX_OVERFLOW_CONTEXTS", overflow_bounds[1]),
    ):
        for advance, step in steps:
            now += advance
            if step == "flush":
                pipeline.fold()  # as every reader of the aggregator does
                batches.append(aggregator.flush(now))
                continue
            packets, origin = step
            pipeline.process([b"\n".join(packet) for packet in packets], now, origin=origin)
        pipeline.fold()
        batches.append(aggregator.flush(now + 100, final=True))
        expected = reference(
            steps,
            ContextLimiter(**limits),
            TagRules(filters, value_limits, limits["entry_timeout"]),
            expiry_seconds,
            context_expiry,
        )
    assert flushed(batches) == expected


def test_a_context_let_go_at_a_flush_is_counted_again_before_the_shape_cache_rotates():
    """Found by the property test above: a gauge's context leaves the limiter when its bucket is
    flushed, but its shape stayed cached, so its next line went to it uncounted and a budget of 1
    held two live contexts.  Now its next line is decided again, and overflows."""
    pipeline = build_pipeline(load_config(data={"hostname": "h", "dogstatsd_context_limiter": {"limit": 1}}))
    pipeline.process([b"a:1|g|#u:1"], NOW)
    pipeline.fold()
    pipeline.aggregator.flush(NOW + 10)
    assert len(pipeline.limiter) == 0
    pipeline.process([b"a:2|g|#u:2", b"a:3|g|#u:1"], NOW + 10)  # within the shape cache's generation
    assert len(pipeline.limiter) == 1
    pipeline.fold()
    batch = pipeline.aggregator.flush(NOW + 100, final=True)
    assert sorted((s.tags, s.points[0][1]) for s in batch.series) == [(("overflow:true",), 3.0), (("u:2",), 2.0)]


def test_a_shape_sent_to_overflow_is_decided_again_once_budget_is_freed():
    """Found by the property test above: a context that overflowed kept going to overflow through
    its cached shape after a flush freed its sender's budget, where its next line alone is admitted."""
    pipeline = build_pipeline(
        load_config(
            data={"hostname": "h", "dogstatsd_context_limiter": {"sender_limit": 1}, "dogstatsd_expiry_seconds": 0}
        )
    )
    pipeline.process([b"b:1|g"], NOW)
    pipeline.process([b"a:1|g"], NOW + 10)  # over the budget, which b holds
    pipeline.fold()
    pipeline.aggregator.flush(NOW + 10)  # b's bucket: b is let go
    pipeline.process([b"a:2|g"], NOW + 10)
    pipeline.fold()
    batch = pipeline.aggregator.flush(NOW + 100, final=True)
    assert sorted((s.name, s.tags, s.points[0][1]) for s in batch.series) == [
        ("a", (), 2.0),
        ("a", ("overflow:true",), 1.0),
    ]
