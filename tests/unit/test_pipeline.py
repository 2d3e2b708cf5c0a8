"""The pipeline: the cached fast path against a plain reference parse, enrichment, drops."""

from __future__ import annotations

import random
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core import parser
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Blocklist, Enricher
from twisted_statsd.core.model import SET
from twisted_statsd.intake import pipeline as pipeline_module
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.telemetry import Telemetry

NOW = 1_000_001.0


def make(**enrich):
    telemetry = Telemetry()
    aggregator = Aggregator(histogram_aggregates=("max", "min", "median", "avg", "sum", "count"))
    enricher = Enricher(hostname=enrich.pop("hostname", "myhost"), **enrich)
    pipeline = Pipeline(aggregator, enricher, telemetry, RateLimitedReporter(telemetry, verbose=False))
    return pipeline, aggregator, telemetry


def flush(pipeline, now, *, final=False):
    """Fold what the pipeline staged, as every reader of the aggregator does, then flush."""
    pipeline.fold()
    return pipeline.aggregator.flush(now, final=final)


def flushed(aggregator):
    batch = aggregator.flush(NOW + 100, final=True)
    series = sorted((s.name, s.host, s.tags, s.type, tuple(s.points)) for s in batch.series)
    sketches = sorted(
        (
            s.name,
            s.host,
            s.tags,
            tuple((ts, k.count, k.sum, k.min, k.max, tuple(map(tuple, k.bins()))) for ts, k in s.points),
        )
        for s in batch.sketches
    )
    return series, sketches, batch.events, batch.service_checks


def reference(lines, **enrich):
    """The straightforward path: full parse and enrichment of every line, one sample at a time."""
    aggregator, _kept = reference_aggregator([(line, NOW, None) for line in lines], **enrich)
    return flushed(aggregator)


def reference_aggregator(received, **enrich):
    """:func:`reference` for (line, time received, origin) triples; also how many samples it kept."""
    aggregator = Aggregator(histogram_aggregates=("max", "min", "median", "avg", "sum", "count"))
    enricher = Enricher(hostname=enrich.pop("hostname", "myhost"), **enrich)
    kept = 0
    for line, now, origin in received:
        try:
            kind = parser.message_kind(line)
            if kind == parser.EVENT:
                aggregator.add_event(enricher.event(parser.parse_event(line), now, origin))
                continue
            if kind == parser.SERVICE_CHECK:
                aggregator.add_service_check(enricher.service_check(parser.parse_service_check(line), now, origin))
                continue
            message = parser.parse_metric(line)
        except parser.ParseError:
            continue
        target = enricher.metric_target(message, origin)
        if target is None:
            continue
        if message.timestamp:
            for v in message.values:
                if v == v and abs(v) != float("inf"):
                    kept += aggregator.add_timestamped(target.context, target.type, v, message.timestamp)
            continue
        if target.type == b"c" and target.rate == 0:
            continue
        if message.type == SET:
            aggregator.add(target.context, SET, message.set_member, 1.0, now)
            kept += 1
            continue
        for v in message.values:
            if v != v or abs(v) == float("inf"):
                continue
            aggregator.add(target.context, target.type, v, target.rate, now)
            kept += 1
            if target.copy is not None:
                aggregator.add(target.copy, b"d", v, target.rate, now)
    return aggregator, kept


CORPUS_SHAPES = [
    b"page.views:{v}|c|#env:prod,page:home",
    b"page.views:{v}|c|#page:home,env:prod",
    b"page.views:{v}|c|@0.5|#env:prod,page:home",
    b"queue.size:{v}|g|#queue:a",
    b"queue.size:{v}:{v}:{v}|g|#queue:b",
    b"latency:{v}|ms|#route:/x",
    b"latency:{v}|h|#route:/x|@0.25",
    b"payload:{v}|d|#kind:json",
    b"payload:{v}:{v}|d|@0.5",
    b"users:{v}|s",
    b"users:id{v}:x|s|#a",
    b"hosted:{v}|g|#host:web{v}",
    b"hosted:{v}|c|#host:,b",
    b"stamped:{v}|g|T1657100430",
    b"stamped:{v}|c|#x|T1657100431",
    b"stamped:{v}|h|T1657100431",
    b"internal:{v}|c|#dd.internal.entity_id:pod,keep",
    b"unicode.\xe2\x99\xac:{v}|g|#intitul\xc3\xa9:T0",
    b"zero.rate:{v}|c|@0",
    b"mixed:{v}|c",
    b"mixed:{v}|g",
    b"bad:{v}x|g",
    b"bad.type:{v}|q",
    b"no.value:|g",
    b"nan:NaN|g",
    b"inf:{v}:+Inf|c",
    b"ws: {v}|g",
    b"under:1_0{v}|g",
    b"hex:0x1p-2|g",
    b"huge:1e400|g",
    b"empty:|c",
    b"dot:.5|g",
    b"exp:1e|g",
    b"sign:+{v}|g",
    b"gauge.rate.zero:{v}|g|@0",
    b"_e{{5,4}}:title|text|#t",
    b"_sc|check.{v}|1|m:msg",
    b"_scanner.hits:{v}|c",
    b"random text {v}",
    b"",
]


def corpus(seed=7, n=3000):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        shape = rng.choice(CORPUS_SHAPES)
        v = rng.choice([b"1", b"2.5", b"-3", b"1e2", b"0", str(rng.randint(0, 9)).encode()])
        lines.append(shape.replace(b"{v}", v))
    return lines


def packets_of(lines, rng):
    packets, i = [], 0
    while i < len(lines):
        k = rng.randint(1, 20)
        packets.append(b"\n".join(lines[i : i + k]) + rng.choice([b"", b"\n", b"\r\n"]))
        i += k
    return packets


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_matches_reference_parse(seed):
    """The cached fast path aggregates exactly what a full parse of every line gives."""
    lines = corpus(seed)
    pipeline, aggregator, _ = make()
    rng = random.Random(seed)
    packets = packets_of(lines, rng)
    for i in range(0, len(packets), 32):
        pipeline.process(packets[i : i + 32], NOW)
    assert len(pipeline.shapes) > 10  # the fast path was really exercised
    pipeline.fold()
    assert flushed(aggregator) == reference(lines)


def test_fast_path_matches_reference_with_enrichment():
    settings = dict(
        extra_tags=("dc:1", "env:prod"),
        namespace="ns.",
        namespace_exclusions=("queue",),
        blocklist=Blocklist(["ns.latency"]),
        histogram_copy_prefix="dist.",
    )
    lines = corpus(11)
    pipeline, aggregator, _ = make(**settings)
    pipeline.process(packets_of(lines, random.Random(11)), NOW)
    pipeline.fold()
    assert flushed(aggregator) == reference(lines, **settings)


def test_every_dropped_line_is_counted_by_reason():
    pipeline, _aggregator, telemetry = make()
    pipeline.process([b"ok:1|c\nbad:x|g\nnan:nan|g\nzero:1|c|@0\nzero:1|c|@0\n:1|c\nh:1|h|T5\n\n", b"ok:2|c"], NOW)
    pipeline.fold()  # samples are counted as they are folded into the aggregator
    assert telemetry.get("metrics") == 2
    assert telemetry.dropped("metric_bad_value") == 1
    assert telemetry.dropped("non_finite_value") == 1
    assert telemetry.dropped("zero_sample_rate") == 2
    assert telemetry.dropped("timestamped_unsupported_type") == 1
    assert telemetry.total_dropped() == 6
    (series,) = [s for s in flush(pipeline, NOW + 20).series]
    assert series.points[0][1] == 0.3


def test_blocked_metric_is_counted_every_time():
    pipeline, _aggregator, telemetry = make(blocklist=Blocklist(["secret"]))
    pipeline.process([b"secret:1|c", b"secret:1|c\nopen:1|c"], NOW)
    assert telemetry.dropped("blocked") == 2
    assert [s.name for s in flush(pipeline, NOW + 20).series] == ["open"]


def test_eol_required_drops_the_unterminated_line():
    """spec §1.7: with EOL required, the last line without a newline is dropped and counted."""
    pipeline, _aggregator, telemetry = make()
    pipeline.process([b"daemon:666|g|#foo:bar\ndaemon:666|g|#foo:bar"], NOW, eol_required=True)
    pipeline.fold()  # samples are counted as they are folded into the aggregator
    assert telemetry.get("metrics") == 1
    assert telemetry.dropped("unterminated_line") == 1


def test_host_tag_sets_host_and_is_removed():
    """spec §1.3: host:<h> becomes the metric's host; an empty value sets an empty host."""
    pipeline, _aggregator, _ = make()
    pipeline.process([b"a:1|g|#host:web1,x\nb:1|g|#host:,y\nc:1|g"], NOW)
    hosts = {s.name: (s.host, s.tags) for s in flush(pipeline, NOW + 20).series}
    assert hosts == {"a": ("web1", ("x",)), "b": ("", ("y",)), "c": ("myhost", ())}


def test_namespace_and_exclusions():
    """spec §6.2: with namespace testNamespace., daemon becomes testNamespace.daemon; excluded prefixes stay."""
    pipeline, _aggregator, _ = make(namespace="testNamespace.", namespace_exclusions=("datadog.agent",))
    pipeline.process([b"daemon:21|g\ndatadog.agent.daemon:1|g"], NOW)
    assert sorted(s.name for s in flush(pipeline, NOW + 20).series) == ["datadog.agent.daemon", "testNamespace.daemon"]


def test_histogram_copy_to_distribution():
    """spec §6.2: prefix dist. turns daemon:666|h into histogram daemon plus distribution dist.daemon."""
    pipeline, _aggregator, _ = make(histogram_copy_prefix="dist.")
    pipeline.process([b"daemon:666|h\ndaemon:666|h"], NOW)
    batch = flush(pipeline, NOW + 20)
    assert {s.name for s in batch.series} >= {"daemon.max", "daemon.count"}
    assert [(s.name, s.points[0][1].count) for s in batch.sketches] == [("dist.daemon", 2)]


def test_extra_tags_appended_to_metrics_events_and_checks():
    pipeline, _aggregator, _ = make(extra_tags=("env:prod",))
    pipeline.process([b"m:1|g|#a\n_e{1,1}:t|x|#b\n_sc|c|0|#host:h2,c"], NOW)
    batch = flush(pipeline, NOW + 20)
    assert batch.series[0].tags == ("a", "env:prod")
    assert batch.events[0].tags == ("b", "env:prod")
    assert (batch.service_checks[0].tags, batch.service_checks[0].host) == (("c", "env:prod"), "h2")


def test_event_timestamp_zero_becomes_now():
    pipeline, _aggregator, _ = make()
    pipeline.process([b"_e{1,1}:t|x\n_e{1,1}:t|x|d:21"], NOW)
    assert [e.timestamp for e in flush(pipeline, NOW).events] == [int(NOW), 21]


def test_cache_is_bounded():
    pipeline, _aggregator, telemetry = make()
    pipeline.shapes.size = 10
    pipeline.process([b"\n".join(b"m%d:1|c" % i for i in range(25))], NOW)
    assert len(pipeline.shapes) <= 10
    assert telemetry.get("shape_cache_resets") == 2
    assert len(flush(pipeline, NOW + 20).series) == 25


def test_stale_shapes_expire_and_live_ones_stay():
    """Contexts unseen for dogstatsd_context_expiry_seconds leave the cache (spec §6.5)."""
    pipeline, _aggregator, _ = make()
    pipeline.context_expiry = 20
    pipeline.process([b"live:1|c\nstale:1|c"], NOW)
    for t in (15, 25, 35, 45):
        pipeline.process([b"live:1|c"], NOW + t)
    cached = pipeline.shapes.keys()
    assert cached == {b"live:|c"}
    assert flush(pipeline, NOW + 100, final=True).series  # and the samples were all aggregated


@pytest.mark.parametrize(
    "local_data, expected",
    [
        (b"abc123", b"abc123"),
        (b"ci-abc123", b"abc123"),
        (b"cid-abc123", b"abc123"),
        (b"in-12345", None),
        (b"in-12345,ci-abc123", b"abc123"),
        (b"", None),
    ],
)
def test_container_id_forms_of_the_c_field(local_data, expected):
    """spec §2.6: c: is ci-<id>, cid-<id>, a bare id, or a list of ci-/in- items."""
    from twisted_statsd.core.enrich import container_id

    assert container_id(local_data) == expected


def test_origin_tags_metrics_and_c_field_wins():
    """A detected origin tags the sender's metrics; a c: field in the message wins (spec §2.3)."""
    telemetry = Telemetry()
    aggregator = Aggregator()
    pipeline = Pipeline(
        aggregator, Enricher(hostname="h"), telemetry, RateLimitedReporter(telemetry), origin_client=True
    )
    pipeline.process([b"m:1|g\nn:1|g|c:ci-own"], NOW, origin=b"detected")
    pipeline.process([b"m:2|g"], NOW)  # same shape, no origin: another context
    pipeline.process([b"_sc|chk|0"], NOW, origin=b"detected")
    batch = flush(pipeline, NOW + 20)
    assert sorted((s.name, s.tags, s.points[0][1]) for s in batch.series) == [
        ("m", (), 2.0),
        ("m", ("container_id:detected",), 1.0),
        ("n", ("container_id:own",), 1.0),
    ]
    assert batch.service_checks[0].tags == ("container_id:detected",)


MAPPER_PROFILES = [
    {
        "name": "test",
        "prefix": "test.",
        "mappings": [
            {
                "match": "test.job.duration.*.*",
                "name": "test.job.duration",
                "tags": {"job_type": "$1", "job_name": "$2"},
            },
            {"match": "test.host.*", "name": "test.by_host", "tags": {"host": "$1"}},
        ],
    }
]


def test_mapper_renames_and_adds_tags_server_level_vector():
    """spec §5.5 server-level vector: mapped tags are appended to the client's own."""
    from twisted_statsd.core.mapper import MetricMapper

    pipeline, _aggregator, _ = make(mapper=MetricMapper(MAPPER_PROFILES), namespace="ns.")
    pipeline.process([b"test.job.duration.my_job_type.my_job_name:666|g|#some:tag,more:tags\nother:1|g"], NOW)
    series = {s.name: s.tags for s in flush(pipeline, NOW + 20).series}
    # mapping comes before the namespace (spec §5.4)
    assert series == {
        "ns.test.job.duration": ("job_name:my_job_name", "job_type:my_job_type", "more:tags", "some:tag"),
        "ns.other": (),
    }


def test_mapped_host_tag_sets_the_host():
    """Mapping happens before host: extraction (spec §5.4)."""
    from twisted_statsd.core.mapper import MetricMapper

    pipeline, _aggregator, _ = make(mapper=MetricMapper(MAPPER_PROFILES))
    pipeline.process([b"test.host.web7:1|g"], NOW)
    (series,) = flush(pipeline, NOW + 20).series
    assert (series.name, series.host, series.tags) == ("test.by_host", "web7", ())


def test_a_gauge_with_rate_zero_given_to_a_counter_does_not_break_the_batch():
    """First type in a bucket decides (spec §6.4); a rate-0 sample of another type adds as it is."""
    pipeline, _aggregator, telemetry = make()
    pipeline.process([b"x:1|c\nx:2|g|@0\nx:3|g|@0\ny:1|g"], NOW)
    series = {s.name: s.points[0][1] for s in flush(pipeline, NOW + 20).series}
    assert series == {"x": pytest.approx(0.6), "y": 1.0}
    pipeline.fold()  # samples are counted as they are folded into the aggregator
    assert telemetry.get("metrics") == 4


@pytest.mark.parametrize(
    "lines",
    [
        [b"lat:1e308|ms", b"lat:1e308|ms"],
        [b"lat:5|h|@1e-308", b"lat:5|h|@1e-308"],
        [b"lat:5|h|@1e-308", b"lat:-5|h|@1e-308"],
    ],
)
def test_extreme_histograms_cost_only_their_own_series(lines):
    """A histogram whose maths overflows is left out; the rest of the flush goes out."""
    pipeline, aggregator, _ = make()
    pipeline.process([b"\n".join(lines + [b"ok:1|g", b"_e{1,1}:t|x"])], NOW)
    batch = flush(pipeline, NOW + 20)
    assert [s.name for s in batch.series] == ["ok"]
    assert len(batch.events) == 1
    assert aggregator.non_finite_points >= 1


def test_a_histogram_rate_outside_zero_to_infinity_counts_once():
    pipeline, _aggregator, _ = make()
    pipeline.process([b"lat:1|h|@inf\nlat:1|h|@-2"], NOW)
    series = {s.name: s.points[0][1] for s in flush(pipeline, NOW + 20).series}
    assert series["lat.count"] == pytest.approx(0.2)


def test_a_tiny_distribution_rate_is_capped():
    from twisted_statsd.core.sketch import MAX_BIN_COUNT

    pipeline, _aggregator, _ = make()
    pipeline.process([b"x:1|d|@1e-300"], NOW)
    (sketch_series,) = flush(pipeline, NOW + 20).sketches
    sketch = sketch_series.points[0][1]
    _keys, counts = sketch.bins()
    assert counts == [MAX_BIN_COUNT] and sketch.count == MAX_BIN_COUNT


@pytest.mark.parametrize(
    "lines",
    [
        [b"m:1|c|#a,b", b"m:5|c|#a\x00b"],
        [b"m:1|g|#host:h,t", b"m\x00h:5|g|#host:t"],
    ],
)
def test_contexts_never_collide_through_odd_bytes(lines):
    """spec §6.4: (name, host, tags) identify a context, whatever bytes they hold."""
    pipeline, _aggregator, _ = make()
    pipeline.process([b"\n".join(lines)], NOW)
    assert len(flush(pipeline, NOW + 20).series) == 2


def test_timestamped_counter_ignores_a_zero_sample_rate():
    """spec §1.4: the sample rate does not apply to timestamped samples."""
    pipeline, _aggregator, _telemetry = make()
    pipeline.process([b"x:5|c|@0|T1657100430"], NOW)
    (series,) = flush(pipeline, NOW + 20).series
    assert series.points == [(1657100430, 0.5)]


def test_memory_hard_limit_refuses_only_contexts_not_yet_known():
    pipeline, _aggregator, telemetry = make()
    pipeline.shapes.size = 2
    pipeline.process([b"a:1|c\nb:1|c\nc:1|c"], NOW)  # the cache has forgotten some shapes
    pipeline.refuse_new_contexts = True
    pipeline.process([b"a:1|c\nb:1|c\nc:1|c\nnew:1|c\nc:1|c|#other"], NOW)
    assert telemetry.dropped("memory_hard_limit") == 2
    assert {s.name: s.points[0][1] for s in flush(pipeline, NOW + 20).series} == {"a": 0.2, "b": 0.2, "c": 0.2}


# -- staging: values wait in their shape's slot until a fold -------------------------


def test_gauge_shapes_of_one_context_keep_arrival_order():
    """Tag order does not make another context (spec §6.4), and the last gauge wins across shapes."""
    pipeline, _aggregator, _ = make()
    pipeline.process([b"g:1|g|#a,b\ng:2|g|#b,a\ng:3|g|#a,b"], NOW)
    (series,) = flush(pipeline, NOW + 20).series
    assert series.points[0][1] == 3.0


def test_first_type_in_each_bucket_decides_for_a_context_seen_under_two_types():
    """spec §6.4, bucket by bucket: a counter first, then a gauge first in the next bucket."""
    pipeline, _aggregator, _ = make()
    pipeline.process([b"m:1|c\nm:5|g"], NOW)
    pipeline.process([b"m:7|g\nm:2|c\nm:9|g"], NOW + 10)
    batch = flush(pipeline, NOW + 30)
    (series,) = batch.series
    assert [(ts - int(NOW) + int(NOW) % 10, value) for ts, value in series.points][:2] == [(0, 0.6), (10, 9.0)]


def test_every_shape_of_a_context_goes_one_at_a_time_once_it_is_seen_under_two_types():
    """spec §6.4 with two tag orders: a counter shape learnt before the gauge came still keeps
    its place in line order in the next bucket, so the counter comes first there too."""
    pipeline, _aggregator, _ = make()
    pipeline.process([b"m:1|c|#a,b\nm:1|c|#b,a"], NOW)
    pipeline.process([b"m:5|g|#a,b"], NOW)  # the context is now seen under two types
    pipeline.process([b"m:2|c|#b,a\nm:7|g|#b,a"], NOW + 10)
    (series,) = flush(pipeline, NOW + 30).series
    assert [(ts - int(NOW) + int(NOW) % 10, value) for ts, value in series.points][:2] == [(0, 0.7), (10, 0.9)]


def test_a_bad_value_in_a_learnt_shape_is_reported_when_folded():
    pipeline, _aggregator, telemetry = make()
    pipeline.process([b"x:1|c\nx:abc|c\nx:1_0|c\nx:2|c"], NOW)
    assert telemetry.dropped("metric_bad_value") == 0  # still staged
    pipeline.fold()
    assert telemetry.dropped("metric_bad_value") == 2
    assert telemetry.get("metrics") == 2
    (series,) = flush(pipeline, NOW + 20).series
    assert series.points[0][1] == 0.3


@pytest.mark.parametrize(
    "value",
    [b" 1", b"1_0", b"nan", b"+Inf", b"1e400", b"1e308", b"", b"3:4", b"0x10", b"1.5", b"-2e2"],
)
def test_many_shapes_lines_of_learnt_shapes_with_any_value_equal_the_reference(value):
    """Issue 14: past FEW_SHAPES, lines of learnt shapes are converted with C-level calls; any value
    that path cannot take (float accepts spaces, underscores, nan, inf; sums overflow) sends the
    batch the careful way, so the result and the samples counted are the reference's."""
    pipeline, aggregator, telemetry = make()
    first = [b"m:1|c", b"g:1|g|#a", b"u:x|s", b"h:1|h|@0.5"]
    second = [
        b"m:%s|c" % value,
        b"g:%s|g|#a" % value,
        b"u:x|s",
        b"u:%s|s" % value,
        b"h:%s|h|@0.5" % value,
        b"m:1e308|c",
        b"m:2|c",
    ]
    with mock.patch.object(pipeline_module, "FEW_SHAPES", 0):
        pipeline.process([b"\n".join(first)], NOW)
        pipeline.process([b"\n".join(second)], NOW)
    pipeline.fold()
    expected, kept = reference_aggregator([(line, NOW, None) for line in first + second])
    assert flushed(aggregator) == flushed(expected)
    assert telemetry.get("metrics") == kept


def test_staged_values_land_in_the_bucket_they_arrived_in():
    pipeline, _aggregator, _ = make()
    start = NOW - NOW % 10
    pipeline.process([b"x:1|c"], start + 9.5)
    pipeline.process([b"x:2|c"], start + 10.5)  # a new bucket: the first one is folded first
    (series,) = flush(pipeline, start + 30).series
    assert series.points == [(int(start), 0.1), (int(start) + 10, 0.2)]


@pytest.mark.parametrize(
    "cache_size, packets, gauge",
    [
        # the cache starts over while the counter line is learnt, and forgot that x was a gauge first
        (3, [b"f3:1|c\nf1:1|c\nf4:1|c\nx:5|g", b"x:1|c\nf0:1|c\nf2:1|c\nx:5|g"], 5.0),
        # a reset while the batch is looked up again after x turned mixed (it used to loop forever)
        (2, [b"f2:1|c\nf0:1|c\nf1:1|c\nx:0|g\nx:1|c"], 1.0),
    ],
)
def test_a_context_under_two_types_keeps_its_last_gauge_across_a_shape_cache_reset(cache_size, packets, gauge):
    """Issue 12: a context sent as a gauge, then as a counter and a gauge around a shape-cache
    reset: the gauge came first in the bucket (spec §6.4) and takes the values in arrival order."""
    pipeline, _aggregator, telemetry = make()
    pipeline.shapes.size = cache_size
    for packet in packets:
        pipeline.process([packet], NOW)
    assert telemetry.get("shape_cache_resets") >= 1
    pipeline.fold()
    series, _sketches, _events, _checks = ours = flushed(pipeline.aggregator)
    assert [(name, points) for name, _host, _tags, _type, points in series if name == "x"] == [
        ("x", ((int(NOW) - int(NOW) % 10, gauge),))
    ]
    assert ours == reference(b"\n".join(packets).split(b"\n"))


def test_after_a_rotation_the_type_already_in_the_bucket_still_decides():
    """The shape cache forgets which type came first when it rotates; the bucket does not (spec
    §6.4): counters at two rates sent after a gauge are given to the gauge in arrival order."""
    pipeline, _aggregator, _ = make()
    pipeline.context_expiry = 2
    start = NOW - NOW % 10
    pipeline.process([b"x:5|g"], start)
    pipeline.process([b"x:1|c\nx:2|c|@0.5\nx:3|c"], start + 3)  # a new generation
    (series,) = flush(pipeline, start + 20).series
    assert series.points == [(int(start), 3.0)]


# -- the staged path against the one-line-at-a-time reference, over generated streams ---

_NAMES = [b"a", b"b.c"]
_TYPES = [b"c", b"g", b"ms", b"h", b"d", b"s"]
_RATES = [b"", b"|@0.5", b"|@0", b"|@1"]
_TAGS = [b"", b"|#x,y", b"|#y,x", b"|#x,x,y", b"|#host:h2,x"]
_VALUES = [b"1", b"0", b"-2.5", b"1e2", b"3:4", b"1:x", b"u7", b"", b"nan", b"+Inf", b"1e400", b"1_0", b".5", b" 1"]
_OTHER_LINES = [
    b"_e{1,1}:t|x|#x",
    b"_sc|chk|0",
    b"a:1|g|T1657100430",
    b"b.c:2:3|c|@0|T1657100431",
    b"a:1|h|T1657100431",
    b"a:1|q",
    b"garbage",
    b"a:1|c|#dd.internal.entity_id:p,y",
]

_metric_lines = st.builds(
    lambda name, value, mtype, rate, tags: name + b":" + value + b"|" + mtype + rate + tags,
    st.sampled_from(_NAMES),
    st.sampled_from(_VALUES),
    st.sampled_from(_TYPES),
    st.sampled_from(_RATES),
    st.sampled_from(_TAGS),
)
_lines = st.one_of(_metric_lines, _metric_lines, _metric_lines, st.sampled_from(_OTHER_LINES))
# Each batch: seconds since the previous one, its packets, and the sender's detected container.
_batches = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.5, 3.0, 10.0]),
        st.lists(st.lists(_lines, min_size=1, max_size=8), min_size=1, max_size=4),
        st.sampled_from([None, None, b"ctr"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=_batches,
    cache_size=st.sampled_from([2, 3, 5, 1000]),
    context_expiry=st.sampled_from([2.0, 5.0, 1000.0]),
    few_shapes=st.sampled_from([0, 4, 4096]),
    fold_lines=st.sampled_from([1, 7, 65536]),
)
def test_staged_path_equals_one_line_at_a_time(batches, cache_size, context_expiry, few_shapes, fold_lines):
    """Issue 12: over random and adversarial streams (contexts under two types, gauge order across
    tag orders, packed values, sample rates, bad values, and shape-cache resets, generation
    rotations, mode switches and folds in the middle of them), nothing escapes as an exception,
    the pipeline aggregates exactly what the reference does, and counts every sample it keeps."""
    telemetry = Telemetry()
    aggregator = Aggregator(histogram_aggregates=("max", "min", "median", "avg", "sum", "count"))
    pipeline = Pipeline(
        aggregator,
        Enricher(hostname="myhost"),
        telemetry,
        RateLimitedReporter(telemetry, verbose=False),
        cache_size=cache_size,
        context_expiry=context_expiry,
    )
    received, now = [], NOW
    with (
        mock.patch.object(pipeline_module, "FEW_SHAPES", few_shapes),
        mock.patch.object(pipeline_module, "FOLD_LINES", fold_lines),
    ):
        for advance, packets, origin in batches:
            now += advance
            pipeline.process([b"\n".join(packet) for packet in packets], now, origin=origin)
            received += [(line, now, origin) for packet in packets for line in packet]
        pipeline.fold()
    expected, kept = reference_aggregator(received)
    assert flushed(aggregator) == flushed(expected)
    assert telemetry.get("metrics") == kept
