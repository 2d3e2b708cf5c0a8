"""The otlp sink's encoding (decoded back through the opentelemetry-proto classes), the
sketch-to-exponential-histogram mapping and its accuracy, cumulative state, and delivery on a Clock."""

from __future__ import annotations

import gzip
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from otlp_receiver import data_points
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_statsd.config import ConfigError, load_config
from twisted_statsd.core.model import (
    SERIES_COUNT,
    SERIES_GAUGE,
    SERIES_RATE,
    Event,
    FlushBatch,
    Series,
    ServiceCheck,
    SketchSeries,
)
from twisted_statsd.core.sketch import BIAS, GAMMA, MIN_VALUE, Sketch, key_of, value_of
from twisted_statsd.errors import StartupError
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks import _otlp_payloads as payloads
from twisted_statsd.sinks import build_sink
from twisted_statsd.sinks.otlp import OtlpSink
from twisted_statsd.telemetry import Telemetry

NS = 1_000_000_000
DELTA, CUMULATIVE = payloads.DELTA, payloads.CUMULATIVE


def encode(batch, **options):
    """The batch's requests, decoded back with the generated classes, and the drops reported."""
    drops: list[tuple[str, int]] = []
    built = [p for p in payloads.build_payloads(batch, on_drop=lambda r, n: drops.append((r, n)), **options) if p]
    messages = [ExportMetricsServiceRequest.FromString(gzip.decompress(p.body)) for p in built]
    for p, m in zip(built, messages, strict=True):
        # Round trip: the decoded message encodes back to the very bytes sent.
        assert m.SerializeToString() == gzip.decompress(p.body)
        assert p.size == m.ByteSize()
    return messages, drops


def points(batch, **options):
    messages, _ = encode(batch, **options)
    return data_points(messages)


# -- mapping --------------------------------------------------------------------


def test_gauges_are_gauge_points_at_the_bucket_start_with_tags_as_attributes_and_the_host_as_resource():
    batch = FlushBatch(
        120.0, series=[Series("queue.size", SERIES_GAUGE, [(100, 7.5)], ("env:prod", "canary", "url:http://x"), "web1")]
    )
    (found,) = points(batch)
    assert found["name"] == "queue.size" and found["kind"] == "gauge"
    assert found["resource"] == {"host.name": "web1"}
    assert found["scope"] == "twisted-statsd"
    assert found["attributes"] == {"env": "prod", "canary": "", "url": "http://x"}
    assert found["point"].time_unix_nano == 100 * NS
    assert found["point"].as_double == 7.5


def test_repeated_tag_keys_join_their_sorted_values():
    assert dict(payloads.attributes(("env:b", "env:a", "x"))) == {
        "env": "a,b",
        "x": "",
    }


def test_series_without_a_host_get_a_resource_without_host_name_and_configured_attributes_everywhere():
    batch = FlushBatch(
        20.0,
        series=[
            Series("a", SERIES_GAUGE, [(10, 1.0)], (), ""),
            Series("b", SERIES_GAUGE, [(10, 2.0)], (), "h"),
            Series("c", SERIES_GAUGE, [(10, 3.0)], (), "h"),
        ],
    )
    messages, _ = encode(batch, resource_attributes={"service.name": "statsd", "host.name": "fallback"})
    (message,) = messages
    resources = [{a.key: a.value.string_value for a in r.resource.attributes} for r in message.resource_metrics]
    assert resources == [
        {"service.name": "statsd", "host.name": "fallback"},
        {"host.name": "h", "service.name": "statsd"},
    ], "one resource per host; a series' own host wins over a configured host.name"
    assert [m.name for m in message.resource_metrics[1].scope_metrics[0].metrics] == ["b", "c"]


def test_counters_are_delta_monotonic_sums_of_the_intervals_count():
    # A counter's series is a rate (count / 10 s): the sum carries the count back.
    batch = FlushBatch(30.0, series=[Series("hits", SERIES_RATE, [(10, 0.3), (20, 0.1)], ("a:b",), "h")])
    found = points(batch)
    assert [(f["kind"], f["temporality"], f["monotonic"]) for f in found] == [("sum", DELTA, True)] * 2
    assert [(f["point"].start_time_unix_nano, f["point"].time_unix_nano, f["point"].as_double) for f in found] == [
        (10 * NS, 20 * NS, 3.0),
        (20 * NS, 30 * NS, 1.0),
    ]


def test_count_series_keep_their_value():
    batch = FlushBatch(30.0, series=[Series("n", SERIES_COUNT, [(10, 12.0)], (), "h")])
    (found,) = points(batch)
    assert found["kind"] == "sum" and found["point"].as_double == 12.0


def test_a_decremented_counter_is_sent_as_a_non_monotonic_sum():
    batch = FlushBatch(
        30.0,
        series=[
            Series("stock", SERIES_RATE, [(10, -0.2)], ("shop:a",), "h"),
            Series("stock", SERIES_RATE, [(10, 0.5)], ("shop:b",), "h"),
        ],
    )
    found = {f["attributes"]["shop"]: f for f in points(batch)}
    assert (found["a"]["monotonic"], found["a"]["point"].as_double) == (False, -2.0)
    assert (found["b"]["monotonic"], found["b"]["point"].as_double) == (True, 5.0)


def test_events_and_service_checks_are_counted_as_dropped():
    batch = FlushBatch(
        1.0,
        events=[Event("t", "x", 1, "normal", "info", "h", "", "", ())] * 2,
        service_checks=[ServiceCheck("c", 0, 1, "h", "", ())],
    )
    messages, drops = encode(batch)
    assert messages == []
    assert sorted(drops) == [("otlp_events_unsupported", 2), ("otlp_service_checks_unsupported", 1)]


def test_large_flushes_are_split_into_requests_of_bounded_points_with_slices_between():
    n = payloads.MAX_POINTS * 2 + 5
    batch = FlushBatch(20.0, series=[Series(f"m{i}", SERIES_GAUGE, [(10, float(i))], (), "h") for i in range(n)])
    steps = list(payloads.build_payloads(batch, on_drop=lambda r, k: None))
    built = [p for p in steps if p is not None]
    assert [p.points for p in built] == [payloads.MAX_POINTS, payloads.MAX_POINTS, 5]
    assert steps.count(None) >= n // payloads.STEP_POINTS
    names = [
        f["name"] for f in data_points(ExportMetricsServiceRequest.FromString(gzip.decompress(p.body)) for p in built)
    ]
    assert names == [f"m{i}" for i in range(n)]


def test_wide_distributions_weigh_by_their_buckets_when_requests_are_split():
    sketches = []
    for i in range(120):
        sketch = Sketch()
        sketch.add(1e-6)
        sketch.add(1e6)  # 40 octaves: about 2,550 buckets, weighing 1 + 2,550 // 64 = 40 points
        sketches.append(SketchSeries(f"d{i}", [(10, sketch)], (), "h"))
    built = [p for p in payloads.build_payloads(FlushBatch(20.0, sketches=sketches), on_drop=lambda r, n: None) if p]
    assert [p.points for p in built] == [100, 20], "100 × 40 reaches MAX_POINTS (4,000)"


# -- cumulative temporality ---------------------------------------------------------


def counter(ts, rate, tags=("a:b",)):
    return FlushBatch(float(ts + 10), series=[Series("hits", SERIES_RATE, [(ts, rate)], tags, "h")])


def test_cumulative_sums_keep_a_start_time_and_a_running_total():
    state = payloads.CumulativeSums()
    first = points(counter(10, 0.3), temporality=CUMULATIVE, cumulative=state)
    second = points(counter(20, 0.5), temporality=CUMULATIVE, cumulative=state)
    other = points(counter(20, 0.1, tags=("a:c",)), temporality=CUMULATIVE, cumulative=state)
    assert [(f["temporality"], f["monotonic"]) for f in first + second] == [(CUMULATIVE, True)] * 2
    got = [(f["point"].start_time_unix_nano, f["point"].time_unix_nano, f["point"].as_double) for f in first + second]
    assert got == [(10 * NS, 20 * NS, 3.0), (10 * NS, 30 * NS, 8.0)]
    (o,) = other
    assert (o["point"].start_time_unix_nano, o["point"].as_double) == (20 * NS, 1.0), "each series has its own sum"
    assert len(state) == 2


def test_cumulative_state_expires_and_the_series_restarts_with_a_new_start_time():
    state = payloads.CumulativeSums(ttl=60.0)
    points(counter(10, 0.3), temporality=CUMULATIVE, cumulative=state)
    points(counter(20, 0.3, tags=("a:c",)), temporality=CUMULATIVE, cumulative=state)
    (later,) = points(counter(80, 0.1, tags=("a:c",)), temporality=CUMULATIVE, cumulative=state)
    assert len(state) == 1, "a:b had no point for over 60 s"
    assert later["point"].as_double == 4.0
    (restarted,) = points(counter(90, 0.2), temporality=CUMULATIVE, cumulative=state)
    assert (restarted["point"].start_time_unix_nano, restarted["point"].as_double) == (90 * NS, 2.0)


def test_cumulative_state_is_bounded_and_points_beyond_it_are_counted():
    state = payloads.CumulativeSums(limit=2)
    batch = FlushBatch(20.0, series=[Series("hits", SERIES_RATE, [(10, 0.1)], (f"n:{i}",), "h") for i in range(5)])
    messages, drops = encode(batch, temporality=CUMULATIVE, cumulative=state)
    assert len(data_points(messages)) == 2
    assert drops == [("otlp_cumulative_state_full", 1)] * 3
    assert len(state) == 2


# -- distributions as exponential histograms ------------------------------------------


def histogram_of(values, weight=1.0):
    sketch = Sketch()
    for v in values:
        sketch.add(v, weight)
    batch = FlushBatch(20.0, sketches=[SketchSeries("lat", [(10, sketch)], ("env:t",), "h")])
    (found,) = points(batch)
    return sketch, found


def bin_bucket(value: float) -> int:
    """The bucket a sample's sketch bin goes to: the one holding the bin's value."""
    return payloads.bucket_index(value_of(key_of(value)))


def bucket_counts(buckets) -> dict[int, int]:
    return {buckets.offset + i: c for i, c in enumerate(buckets.bucket_counts) if c}


def test_a_distribution_is_a_delta_exponential_histogram_with_exact_statistics():
    sketch, found = histogram_of([0.0, 1e-12, 1.0, 2.0, 2.0, 100.0, 250.5])
    p = found["point"]
    assert (found["kind"], found["temporality"]) == ("exponential_histogram", DELTA)
    assert found["attributes"] == {"env": "t"} and found["resource"] == {"host.name": "h"}
    assert (p.start_time_unix_nano, p.time_unix_nano) == (10 * NS, 20 * NS)
    assert p.scale == payloads.SCALE == 6
    assert (p.zero_count, p.zero_threshold) == (2, MIN_VALUE)
    assert p.count == 7 == p.zero_count + sum(p.positive.bucket_counts)
    assert (p.sum, p.min, p.max) == (sketch.sum, 0.0, 250.5)
    assert p.negative.bucket_counts == []
    assert bucket_counts(p.positive)[bin_bucket(2.0)] == 2


def test_negative_values_go_to_the_negative_buckets_and_the_sum_is_left_out():
    _, found = histogram_of([-3.0, -3.0, 5.0])
    p = found["point"]
    assert bucket_counts(p.negative) == {bin_bucket(3.0): 2}
    assert bucket_counts(p.positive) == {bin_bucket(5.0): 1}
    assert not p.HasField("sum"), "the proto asks for no sum when negative values were recorded"
    assert (p.count, p.min, p.max) == (3, -3.0, 5.0)


def test_bucket_index_matches_the_upper_inclusive_bounds():
    for index in range(-200, 200, 7):
        low, high = payloads.bucket_bounds(index)
        assert payloads.bucket_index(high * (1 - 1e-12)) == index
        assert payloads.bucket_index(low * (1 + 1e-12)) == index
    # Powers of two are exact upper bounds.
    assert payloads.bucket_index(1.0) == -1 and payloads.bucket_index(2.0) == 63
    assert payloads.bucket_index(math.nextafter(2.0, 3.0)) == 64 and payloads.bucket_index(0.5) == -65


def test_the_stated_accuracy_holds_at_the_edges_of_the_bins_and_is_nearly_reached_there():
    """The worst samples are at a bin's edges when the bin's value is near its bucket's far bound."""
    worst = 0.0
    for key in range(2, BIAS + 3000):  # 1e-9 to about 1e20
        low_edge, high_edge = GAMMA ** (key - BIAS - 0.5), GAMMA ** (key - BIAS + 0.5)
        low, high = payloads.bucket_bounds(payloads.bucket_index(value_of(key)))
        for sample in (low_edge * (1 + 1e-12), high_edge * (1 - 1e-12)):
            assert key_of(sample) == key
            worst = max(worst, abs(low - sample) / sample, abs(high - sample) / sample)
    assert 0.99 * payloads.RELATIVE_ERROR < worst <= payloads.RELATIVE_ERROR
    assert 0.0187 < payloads.RELATIVE_ERROR < 0.0188


magnitudes = st.floats(min_value=MIN_VALUE * 1.0001, max_value=1e200, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(value=magnitudes, negative=st.booleans())
def test_every_sample_lies_within_the_stated_relative_error_of_its_buckets_bounds(value, negative):
    """The accuracy statement of the README, over the whole finite range of the sketch."""
    sample = -value if negative else value
    _, found = histogram_of([sample])
    p = found["point"]
    ((index, count),) = bucket_counts(p.negative if negative else p.positive).items()
    assert count == 1
    low, high = payloads.bucket_bounds(index)
    bound = payloads.RELATIVE_ERROR * (1 + 1e-12)
    assert abs(low - value) <= bound * value
    assert abs(high - value) <= bound * value


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)), min_size=1, max_size=200
    ),
    weight=st.sampled_from([1.0, 2.0, 4.0]),
)
def test_counts_and_sums_are_preserved(values, weight):
    sketch, found = histogram_of(values, weight)
    p = found["point"]
    assert p.count == p.zero_count + sum(p.positive.bucket_counts) + sum(p.negative.bucket_counts)
    assert p.count == len(values) * int(weight) == sketch.count
    assert (p.min, p.max) == (min(values), max(values))
    if min(values) >= 0:
        assert p.sum == sketch.sum
    zeros = sum(1 for v in values if abs(v) < MIN_VALUE)
    assert p.zero_count == zeros * int(weight)


def test_a_huge_magnitude_beyond_the_sketchs_last_bin_goes_to_the_bucket_of_the_max():
    _, found = histogram_of([1e250, 1.0])
    assert bucket_counts(found["point"].positive) == {bin_bucket(1.0): 1, payloads.bucket_index(1e250): 1}
    _, found = histogram_of([-1e250, 1.0])
    assert bucket_counts(found["point"].negative) == {payloads.bucket_index(1e250): 1}


# -- partial success --------------------------------------------------------------


def test_partial_success_is_read_from_the_response():
    response = ExportMetricsServiceResponse()
    assert payloads.partial_success(response.SerializeToString()) is None
    assert payloads.partial_success(b"not a protobuf \xff\xff") is None
    response.partial_success.rejected_data_points = 3
    response.partial_success.error_message = "bad names"
    assert payloads.partial_success(response.SerializeToString()) == (3, "bad names")


# -- the sink, on a Clock with a scripted agent ------------------------------------------


class FakeResponse:
    def __init__(self, code, headers=None, body=b""):
        self.code = code
        self.phrase = b"Status"
        self.headers = Headers(headers or {})
        self.body = body
        self.length = len(body)

    def deliverBody(self, protocol):
        from twisted.python.failure import Failure

        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class _Collect:
    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data


@implementer(IAgent)
class FakeAgent:
    """Answers each request with the next scripted (status, headers, body) or status; 200 once used up."""

    def __init__(self, clock, script=()):
        self.clock = clock
        self.script = list(script)
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        body = _Collect()
        bodyProducer.startProducing(body)
        self.requests.append((self.clock.seconds(), method, uri, headers, body.data))
        outcome = self.script.pop(0) if self.script else 200
        if isinstance(outcome, int):
            outcome = (outcome, {}, ExportMetricsServiceResponse().SerializeToString())
        return defer.succeed(FakeResponse(*outcome))


def make(clock, script=(), **options):
    telemetry = Telemetry()
    agent = FakeAgent(clock, script)
    sink = OtlpSink(clock, telemetry, _agent=agent, **options)
    return sink, agent, telemetry


def run(clock):
    for _ in range(1000):
        if not any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            return
        clock.advance(0)


def gauge_batch():
    return FlushBatch(20.0, series=[Series("m", SERIES_GAUGE, [(10, 1.0)], (), "h")])


def test_the_sink_provides_imetricsink():
    sink, _, _ = make(Clock())
    assert verifyObject(IMetricSink, sink)
    assert sink.name == "otlp"


def test_requests_are_gzipped_protobuf_with_the_configured_headers_to_the_endpoint():
    clock = Clock()
    sink, agent, telemetry = make(
        clock, endpoint="http://127.0.0.1:9/otlp/v1/metrics", headers={"Authorization": "Bearer t"}
    )
    d = sink.write(gauge_batch())
    run(clock)
    assert d.called
    ((_, method, uri, headers, body),) = agent.requests
    assert (method, uri) == (b"POST", b"http://127.0.0.1:9/otlp/v1/metrics")
    assert headers.getRawHeaders(b"content-type") == [b"application/x-protobuf"]
    assert headers.getRawHeaders(b"content-encoding") == [b"gzip"]
    assert headers.getRawHeaders(b"authorization") == [b"Bearer t"]
    assert ExportMetricsServiceRequest.FromString(gzip.decompress(body)).resource_metrics[0].scope_metrics
    assert telemetry.get("sink_sent", "sink:otlp") == 1


@pytest.mark.parametrize("code", [429, 502, 503, 504])
def test_the_otlp_retryable_statuses_are_retried_with_back_off(code):
    clock = Clock()
    sink, agent, telemetry = make(clock, [code, code], backoff_base=2.0, _random=lambda: 1.0)
    d = sink.write(gauge_batch())
    run(clock)
    for _ in range(10):
        clock.advance(1)
    assert [r[0] for r in agent.requests] == [0, 2, 6]
    assert d.called and telemetry.get("sink_retries", "sink:otlp") == 2
    assert telemetry.get("sink_sent", "sink:otlp") == 1


@pytest.mark.parametrize("code", [400, 401, 404, 413, 500])
def test_other_failures_are_final_and_counted(code):
    clock = Clock()
    sink, agent, telemetry = make(clock, [(code, {}, b"no")])
    d = sink.write(gauge_batch())
    run(clock)
    clock.advance(100)
    assert d.called and len(agent.requests) == 1
    assert telemetry.dropped("otlp_rejected") == 1


def test_partial_success_counts_the_rejected_points_and_is_logged():
    from twisted.logger import capturedLogs

    response = ExportMetricsServiceResponse()
    response.partial_success.rejected_data_points = 2
    response.partial_success.error_message = "unsupported"
    clock = Clock()
    sink, _, telemetry = make(clock, [(200, {}, response.SerializeToString())])
    with capturedLogs() as events:
        sink.write(gauge_batch())
        run(clock)
    assert telemetry.dropped("otlp_rejected_points") == 2
    assert telemetry.get("sink_sent", "sink:otlp") == 1
    (logged,) = [e for e in events if e.get("log_category") == "OTLP_PARTIAL_SUCCESS"]
    assert (logged["rejected"], logged["message"]) == (2, "unsupported")


def test_cumulative_temporality_is_carried_across_writes():
    clock = Clock()
    sink, agent, _ = make(clock, temporality="cumulative")
    sink.write(counter(10, 0.3))
    sink.write(counter(20, 0.2))
    run(clock)
    found = data_points(ExportMetricsServiceRequest.FromString(gzip.decompress(r[4])) for r in agent.requests)
    assert [(f["temporality"], f["point"].as_double) for f in found] == [(CUMULATIVE, 3.0), (CUMULATIVE, 5.0)]


def test_stop_gives_up_what_cannot_be_sent_and_counts_it():
    clock = Clock()
    sink, agent, telemetry = make(clock, [503, 503], backoff_base=30.0)
    sink.startService()
    d = sink.write(gauge_batch())
    run(clock)
    stopped = sink.stopService()
    run(clock)
    assert stopped.called and d.called and len(agent.requests) == 2
    assert telemetry.dropped("otlp_shutdown") == 1
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"endpoint": "ftp://x/v1/metrics"}, "http"),
        ({"temporality": "sometimes"}, "temporality"),
        ({"timeout": 0}, "timeout"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        OtlpSink(Clock(), Telemetry(), **options)


def test_https_needs_tls_support_known_at_construction(monkeypatch):
    OtlpSink(Clock(), Telemetry(), endpoint="https://collector:4318/v1/metrics")  # the test extra installs it
    monkeypatch.setitem(sys.modules, "service_identity", None)  # import now raises ImportError
    with pytest.raises(StartupError, match=r"^sinks: otlp: https needs TLS.*twisted-statsd\[tls\]"):
        OtlpSink(Clock(), Telemetry(), endpoint="https://collector:4318/v1/metrics")


def test_without_opentelemetry_proto_the_sink_fails_to_start_with_a_clear_error(monkeypatch):
    import twisted_statsd.sinks

    monkeypatch.delitem(sys.modules, "twisted_statsd.sinks._otlp_payloads")
    monkeypatch.delattr(twisted_statsd.sinks, "_otlp_payloads")
    monkeypatch.setitem(sys.modules, "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2", None)
    with pytest.raises(StartupError, match=r"^sinks: otlp: needs the opentelemetry-proto.*twisted-statsd\[otlp\]"):
        OtlpSink(Clock(), Telemetry())


# -- configuration ------------------------------------------------------------------


def test_the_config_declares_every_option_with_its_default():
    (sink,) = load_config(data={"sinks": [{"type": "otlp"}]}).sinks
    assert dict(sink.options) == {
        "endpoint": "http://127.0.0.1:4318/v1/metrics",
        "temporality": "delta",
        "headers": {},
        "resource_attributes": {},
        "timeout": 10.0,
        "retry_queue_max_bytes": 15 * 1024 * 1024,
        "backoff_base": 2.0,
        "backoff_max": 64.0,
        "max_concurrent_requests": 2,
    }
    built = build_sink(sink, Clock(), Telemetry())
    assert isinstance(built, OtlpSink)


def test_headers_and_resource_attributes_are_string_mappings_and_headers_are_not_shown():
    (sink,) = load_config(
        data={
            "sinks": [
                {
                    "type": "otlp",
                    "temporality": "cumulative",
                    "headers": {"Authorization": "Bearer secret"},
                    "resource_attributes": {"service.name": "statsd", "deployment.version": 3},
                }
            ]
        }
    ).sinks
    assert dict(sink.options["headers"]) == {"Authorization": "Bearer secret"}
    assert dict(sink.options["resource_attributes"]) == {"service.name": "statsd", "deployment.version": "3"}
    assert "secret" not in repr(sink)
    with pytest.raises(ConfigError, match=r"headers\.x"):
        load_config(data={"sinks": [{"type": "otlp", "headers": {"x": ["a"]}}]})
    with pytest.raises(ConfigError, match="temporality"):
        load_config(data={"sinks": [{"type": "otlp", "temporality": "both"}]})
