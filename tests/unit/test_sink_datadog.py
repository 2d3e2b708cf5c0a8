"""The Datadog sink without a network: payloads checked against datadog-api-client's request models,
splitting at the limits, gzip, and the retry machinery driven by a Clock and a scripted fake IAgent."""

from __future__ import annotations

import gzip
import json
import math
import random
import sys
from email.utils import formatdate

import pytest
from datadog_api_client.configuration import Configuration
from datadog_api_client.model_utils import ModelNormal, ModelSimple, validate_and_convert_types
from datadog_api_client.v1.model.distribution_points_payload import DistributionPointsPayload
from datadog_api_client.v1.model.event_create_request import EventCreateRequest
from datadog_api_client.v1.model.service_checks import ServiceChecks
from datadog_api_client.v2.model.metric_payload import MetricPayload
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_statsd.core.model import (
    SERIES_COUNT,
    SERIES_GAUGE,
    Event,
    FlushBatch,
    Series,
    ServiceCheck,
    SketchSeries,
)
from twisted_statsd.core.sketch import BIAS, EPSILON, GAMMA, INF_KEY, MAX_KEY, MIN_VALUE, Sketch, key_of, value_of
from twisted_statsd.errors import StartupError
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks import _datadog_payloads as payloads
from twisted_statsd.sinks._datadog_payloads import Endpoint, PayloadBuilder, build_payloads, distribution_values
from twisted_statsd.sinks.datadog import DatadogSink, backoff_delay, parse_retry_after
from twisted_statsd.telemetry import Telemetry

# -- validation against the official client's request models ---------------


def strict(data, model):
    """Deserialise ``data`` as the client would and fail on anything it would not understand."""
    parsed = validate_and_convert_types(data, (model,), ["body"], True, True, Configuration())
    _check_known(parsed, "body")
    return parsed


def _check_known(value, where):
    if isinstance(value, ModelSimple):
        return
    if isinstance(value, ModelNormal):
        assert not value._unparsed, f"{where}: not understood by {type(value).__name__}"
        for key, child in value._data_store.items():
            assert key in type(value).attribute_map, f"{where}: unknown field {key!r} for {type(value).__name__}"
            _check_known(child, f"{where}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _check_known(child, f"{where}[{i}]")
    elif hasattr(value, "_unparsed"):
        assert not value._unparsed, f"{where}: not understood"
        if hasattr(value, "value"):
            _check_known(value.value, where)


def test_the_strict_check_catches_unknown_and_bad_fields():
    with pytest.raises(AssertionError, match="unknown field 'bogus'"):
        strict({"series": [{"metric": "m", "bogus": 1, "points": []}]}, MetricPayload)
    with pytest.raises(AssertionError, match="not understood"):
        strict({"series": [{"metric": "m", "type": 7, "points": []}]}, MetricPayload)


# -- payload building ------------------------------------------------------


def build(batch, max_values=100_000):
    drops = []
    steps = build_payloads(batch, distribution_max_values=max_values, on_drop=lambda r, n: drops.append((r, n)))
    out = [p for p in steps if p]
    return out, drops


def body(payload):
    return json.loads(gzip.decompress(payload.body))


def one(payloads_, kind):
    found = [p for p in payloads_ if p.endpoint.kind == kind]
    assert len(found) == 1, found
    return body(found[0])


def test_series_are_metrics_api_v2_json():
    batch = FlushBatch(
        100.0,
        series=[
            Series("page.views", SERIES_COUNT, [(90, 3.0), (100, 4.0)], ("env:prod", "page:home"), "web1"),
            Series("queue.depth", SERIES_GAUGE, [(100, 7.5)], (), ""),
        ],
    )
    out, drops = build(batch)
    data = one(out, "series")
    assert data == {
        "series": [
            {
                "metric": "page.views",
                "type": 1,
                "points": [{"timestamp": 90, "value": 3.0}, {"timestamp": 100, "value": 4.0}],
                "tags": ["env:prod", "page:home"],
                "interval": 10,
                "resources": [{"type": "host", "name": "web1"}],
            },
            # No host: no host resource, rather than a host named "".
            {
                "metric": "queue.depth",
                "type": 3,
                "points": [{"timestamp": 100, "value": 7.5}],
                "tags": [],
                "interval": 10,
            },
        ]
    }
    strict(data, MetricPayload)
    assert drops == []
    assert [p.endpoint.path for p in out] == ["/api/v2/series"]


def test_events_are_events_api_requests_cut_to_its_limits():
    events = [
        Event("Deploy", "x" * 5000, 1700000000, "low", "success", "web1", "k" * 150, "jenkins", ("env:prod",)),
        Event("Bare", "", 0, "normal", "info", "", "", "", ()),
    ]
    out, _ = build(FlushBatch(1.0, events=events))
    assert [p.endpoint.path for p in out] == ["/api/v1/events", "/api/v1/events"]
    full, bare = (body(p) for p in out)
    assert full == {
        "title": "Deploy",
        "text": "x" * 4000,
        "date_happened": 1700000000,
        "priority": "low",
        "alert_type": "success",
        "host": "web1",
        "tags": ["env:prod"],
        "aggregation_key": "k" * 100,
        "source_type_name": "jenkins",
    }
    assert bare == {"title": "Bare", "text": "", "priority": "normal", "alert_type": "info"}
    strict(full, EventCreateRequest)
    strict(bare, EventCreateRequest)


def test_service_checks_are_one_check_run_array():
    checks = [
        ServiceCheck("db.up", 2, 1700000000, "db1", "connection refused", ("env:prod",)),
        ServiceCheck("cache.up", 0, 1700000001, "", "", ()),
    ]
    out, _ = build(FlushBatch(1.0, service_checks=checks))
    data = one(out, "service_checks")
    assert data == [
        {
            "check": "db.up",
            "host_name": "db1",
            "timestamp": 1700000000,
            "status": 2,
            "message": "connection refused",
            "tags": ["env:prod"],
        },
        # The public API documents tags as a list: empty, not null.
        {"check": "cache.up", "host_name": "", "timestamp": 1700000001, "status": 0, "message": "", "tags": []},
    ]
    strict(data, ServiceChecks)
    assert out[0].endpoint.path == "/api/v1/check_run"


def sketch_of(values, rate=1.0):
    sketch = Sketch()
    for v in values:
        sketch.add(v, 1.0 / rate)
    return sketch


def rebuilt(values):
    """The sketch Datadog would build from the raw values we send."""
    return sketch_of(values)


QUANTILES = [i / 200 for i in range(1, 200)]


def test_distribution_points_rebuild_the_same_bins_and_percentiles():
    rng = random.Random(5)
    samples = [rng.lognormvariate(3, 2) for _ in range(3000)] + [0.0, -2.5, -1e-3]
    samples += [rng.uniform(-50, 50) for _ in range(500)]
    sketch = Sketch()
    for v in samples:
        # Some samples arrive with a sample rate, so their bins count more than once.
        sketch.add(v, rng.choice([1.0, 1.0, 4.0]))
    series = SketchSeries("latency", [(100, sketch)], ("env:prod",), "web1")
    out, drops = build(FlushBatch(100.0, sketches=[series]))
    data = one(out, "distributions")
    strict(data, DistributionPointsPayload)
    (entry,) = data["series"]
    assert {k: v for k, v in entry.items() if k != "points"} == {
        "metric": "latency",
        "type": "distribution",
        "tags": ["env:prod"],
        "host": "web1",
    }
    ((ts, values),) = entry["points"]
    assert ts == 100 and drops == []
    again = rebuilt(values)
    assert again.bins() == sketch.bins()
    assert [again.quantile(q) for q in QUANTILES] == [sketch.quantile(q) for q in QUANTILES]
    # The count is the bins' total, as the agent's; min and max are exact; the sum is within the accuracy.
    assert len(values) == sum(sketch.bins()[1])
    assert min(values) == sketch.min and max(values) == sketch.max
    # Each value is within the accuracy of the samples it stands for, so the sum is too.
    assert abs(sum(values) - sketch.sum) <= EPSILON * sum(abs(v) for v in values)


def test_distribution_sum_and_extremes_stay_within_the_accuracy():
    rng = random.Random(9)
    samples = [rng.uniform(1, 1000) for _ in range(2000)]
    sketch = sketch_of(samples)
    values, left_out = distribution_values(sketch, 100_000)
    values = json.loads("[" + values + "]")
    assert left_out == 0 and len(values) == len(samples)
    assert min(values) == min(samples) and max(values) == max(samples)
    assert sum(values) == pytest.approx(sum(samples), rel=EPSILON)
    for q in QUANTILES:
        exact = sorted(samples)[round(q * (len(samples) - 1))]
        assert rebuilt(values).quantile(q) == pytest.approx(exact, rel=EPSILON)


def test_a_heavy_distribution_is_scaled_down_keeping_its_percentiles():
    rng = random.Random(1)
    samples = [rng.expovariate(0.01) for _ in range(5000)]
    # Sampled at 1 %: every sample weighs 100, so the bins count 500 000 values.
    sketch = sketch_of(samples, rate=0.01)
    cap = 10_000
    series = SketchSeries("heavy", [(100, sketch)], (), "h")
    out, drops = build(FlushBatch(100.0, sketches=[series]), max_values=cap)
    ((_, values),) = one(out, "distributions")["series"][0]["points"]
    assert cap <= len(values) <= cap + 2
    assert drops == [("datadog_distribution_downsampled", 500_000 - len(values))]
    again = rebuilt(values)
    slack = 2 / cap
    for q in QUANTILES:
        assert sketch.quantile(max(0.0, q - slack)) <= again.quantile(q) <= sketch.quantile(min(1.0, q + slack))
    assert min(values) == sketch.min and max(values) == sketch.max


def _bin_edges(key):
    """The smallest and largest float magnitudes that ``key_of`` puts in bin ``key`` (> 0)."""

    def first_above(target):
        # The smallest float whose key is at least ``target``, walked to from an estimate one ulp at a time.
        x = max(MIN_VALUE, GAMMA ** (target - BIAS - 0.5))
        while key_of(x) < target:
            x = math.nextafter(x, math.inf)
        while x > MIN_VALUE and key_of(math.nextafter(x, 0.0)) >= target:
            x = math.nextafter(x, 0.0)
        return x

    low = first_above(key)
    high = math.nextafter(first_above(key + 1), 0.0) if key < MAX_KEY else math.nextafter(first_above(INF_KEY), 0.0)
    assert key_of(low) == key == key_of(high)
    return low, high


def test_every_bin_is_sent_as_its_value_within_the_accuracy_of_all_it_can_hold():
    """Over the whole key range, each bin's value is sent exactly as value_of(key), the value the
    other sinks report, and that value is within 1/128 of the smallest and the largest magnitude
    the bin holds, hence of every sample in it (the error grows towards both edges)."""
    for key in range(1, MAX_KEY + 1):
        low, high = _bin_edges(key)
        for sign in (1, -1):
            text = payloads._bin_text(sign * key)
            value = float(text)
            assert value == value_of(sign * key) and key_of(value) == sign * key, (key, text)
            for edge in (sign * low, sign * high):
                assert abs(value - edge) <= EPSILON * abs(edge), (key, text, edge)
    # The zero bin holds magnitudes below about 1e-9 and reads 0 everywhere, as in the agent.
    assert float(payloads._bin_text(0)) == 0.0 == value_of(0)


def test_lognormal_samples_are_each_sent_within_the_accuracy():
    """The issue's measurement: 1,000 lognormal samples, every value sent within 1/128 of the sample
    it stands for (the shortest in-bin decimal missed 189 of them by up to 1.5 %)."""
    rng = random.Random(1)
    samples = sorted(rng.lognormvariate(5, 1) for _ in range(1000))
    values, _ = distribution_values(sketch_of(samples), 100_000)
    values = json.loads("[" + values + "]")
    assert len(values) == len(samples)
    assert [v for v, x in zip(values, samples, strict=True) if abs(v - x) > EPSILON * x] == []
    # The values sent are the ones the jsonl and Prometheus sinks report: the bins' value_of, clamped.
    sketch = sketch_of(samples)
    assert set(values) == {min(max(value_of(k), sketch.min), sketch.max) for k in sketch.bins()[0]} | {
        sketch.min,
        sketch.max,
    }


def test_extreme_distribution_values_stay_finite_and_exact_at_the_ends():
    sketch = sketch_of([0.0, 1e-12, -1e-12, 1e300, -1e300, 5.0])
    values, _ = distribution_values(sketch, 100)
    values = json.loads("[" + values + "]")
    assert sorted(values) == values and len(values) == 6
    assert values[0] == -1e300 and values[-1] == 1e300
    # Magnitudes below about 1e-9 share the zero bin.
    assert values[1:4] == [0, 0, 0]
    assert rebuilt(values).bins() == sketch.bins()


def test_empty_sketches_and_empty_batches_make_no_payload():
    out, drops = build(FlushBatch(1.0, sketches=[SketchSeries("d", [(10, Sketch())], (), "h")]))
    assert out == [] and drops == []


def test_non_finite_values_are_counted_not_sent():
    batch = FlushBatch(
        1.0,
        series=[
            Series("bad", SERIES_GAUGE, [(1, float("nan"))], (), "h"),
            Series("good", SERIES_GAUGE, [(1, 1.0)], (), "h"),
        ],
    )
    out, drops = build(batch)
    assert [s["metric"] for s in one(out, "series")["series"]] == ["good"]
    assert drops == [("datadog_unencodable", 1)]


# -- splitting -------------------------------------------------------------


def fill(endpoint, items, points=1):
    builder = PayloadBuilder(endpoint, b"[", b"]")
    out, refused = [], 0
    for item in items:
        closed, taken = builder.add(item, points)
        refused += not taken
        if closed:
            out.append(closed)
    last = builder.finish()
    if last:
        out.append(last)
    return out, refused


def test_payloads_split_at_the_uncompressed_limit_and_keep_every_item_in_order():
    endpoint = Endpoint("t", "/t", max_compressed=10**9, max_uncompressed=10_000)
    items = [json.dumps({"n": i, "pad": "a" * (i % 50)}).encode() for i in range(3000)]
    out, refused = fill(endpoint, items)
    assert refused == 0 and len(out) > 10
    decoded = []
    for p in out:
        raw = gzip.decompress(p.body)
        assert len(raw) == p.size <= 10_000
        decoded.extend(json.loads(raw))
        if len(decoded) < len(items):
            # Tight: the next item would not have fitted.
            assert p.size + 1 + len(items[len(decoded)]) > 10_000
    assert decoded == [json.loads(i) for i in items]


def test_payloads_split_at_the_compressed_limit_when_the_data_does_not_compress():
    rng = random.Random(3)
    endpoint = Endpoint("t", "/t", max_compressed=20_000, max_uncompressed=10**9)
    items = [json.dumps(rng.randbytes(300).hex()).encode() for _ in range(1000)]
    out, refused = fill(endpoint, items)
    assert refused == 0 and len(out) > 5
    for p in out:
        assert len(p.body) <= 20_000
    for p in out[:-1]:
        assert len(p.body) > 0.95 * 20_000, "payloads should be closed near the limit"
    assert sum(len(json.loads(gzip.decompress(p.body))) for p in out) == 1000


def test_series_payloads_respect_the_points_limit():
    endpoint = Endpoint("t", "/t", max_compressed=10**9, max_uncompressed=10**9, max_points=100)
    out, _ = fill(endpoint, [b"1"] * 250, points=3)
    assert [p.items for p in out] == [33, 33, 33, 33, 33, 33, 33, 19]


def test_an_item_too_big_for_any_payload_is_refused():
    endpoint = Endpoint("t", "/t", max_compressed=10**9, max_uncompressed=100)
    out, refused = fill(endpoint, [b"1", b"2" * 200, b"3"])
    assert refused == 1 and [json.loads(gzip.decompress(p.body)) for p in out] == [[1, 3]]


def test_a_big_flush_fits_the_real_series_limits():
    rng = random.Random(4)
    series = [
        Series(
            f"app.metric.{rng.randbytes(6).hex()}",
            SERIES_GAUGE,
            [(100, rng.random())],
            (f"id:{rng.randbytes(8).hex()}", "env:prod"),
            "host-1",
        )
        for _ in range(30_000)
    ]
    out, drops = build(FlushBatch(100.0, series=series))
    assert drops == [] and len(out) >= 2
    for p in out:
        assert p.endpoint.path == "/api/v2/series"
        assert len(p.body) <= 512_000
        assert p.size <= 5_242_880
        assert p.items <= 10_000
    assert sum(len(body(p)["series"]) for p in out) == 30_000


def test_payloads_are_gzip():
    out, _ = build(FlushBatch(1.0, series=[Series("m", SERIES_GAUGE, [(1, 1.0)], (), "h")]))
    assert out[0].body[:2] == b"\x1f\x8b"


# -- back-off and Retry-After ----------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    assert [backoff_delay(n, 2.0, 64.0, lambda: 1.0) for n in range(1, 9)] == [2, 4, 8, 16, 32, 64, 64, 64]
    assert [backoff_delay(n, 2.0, 64.0, lambda: 0.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 32, 32]
    rng = random.Random(2)
    for n in range(1, 12):
        ceiling = min(64.0, 2.0 * 2 ** (n - 1))
        for _ in range(50):
            assert ceiling / 2 <= backoff_delay(n, 2.0, 64.0, rng.random) <= ceiling
    assert backoff_delay(10_000, 2.0, 64.0, lambda: 1.0) == 64.0


def test_retry_after_is_seconds_or_an_http_date():
    assert parse_retry_after(b"7", 1000.0) == 7.0
    assert parse_retry_after(formatdate(1030.0, usegmt=True).encode(), 1000.0) == 30.0
    assert parse_retry_after(formatdate(900.0, usegmt=True).encode(), 1000.0) == 0.0
    assert parse_retry_after(b"99999999", 0.0) == 3600.0
    assert parse_retry_after(b"soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


# -- the sink on a Clock with a scripted agent ------------------------------


class FakeResponse:
    def __init__(self, code, headers=None, body=b""):
        self.code = code
        self.phrase = b"Status"
        self.headers = Headers(headers or {})
        self.body = body
        self.length = len(body)

    def deliverBody(self, protocol):
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class _Collect:
    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data


@implementer(IAgent)
class FakeAgent:
    """Answers each request with the next scripted outcome: a status, (status, headers, body), an
    exception, or "hang" (never answers until cancelled).  With the script used up, it answers 202."""

    def __init__(self, clock, script=()):
        self.clock = clock
        self.script = list(script)
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        sink = _Collect()
        bodyProducer.startProducing(sink)
        self.requests.append((self.clock.seconds(), method, uri, headers, sink.data))
        outcome = self.script.pop(0) if self.script else 202
        if outcome == "hang":
            return defer.Deferred()
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        if isinstance(outcome, int):
            outcome = (outcome, {}, b"")
        return defer.succeed(FakeResponse(*outcome))

    def times(self):
        return [r[0] for r in self.requests]


def make(clock, script=(), **options):
    telemetry = Telemetry()
    agent = FakeAgent(clock, script)
    options.setdefault("api_key", "secret")
    sink = DatadogSink(clock, telemetry, _agent=agent, **options)
    return sink, agent, telemetry


def run(clock):
    """Let the Cooperator finish encoding (its ticks are callLater(0) on the clock)."""
    for _ in range(1000):
        if not any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            return
        clock.advance(0)


def series_batch(n=1, name="m"):
    return FlushBatch(100.0, series=[Series(f"{name}{i}", SERIES_GAUGE, [(100, float(i))], (), "h") for i in range(n)])


def check_batch():
    return FlushBatch(100.0, service_checks=[ServiceCheck("c", 0, 100, "h", "", ())])


def test_the_sink_provides_imetricsink():
    sink, _, _ = make(Clock())
    assert verifyObject(IMetricSink, sink)
    assert sink.name == "datadog"


def test_requests_carry_the_key_gzip_and_go_to_the_sites_api_host():
    clock = Clock()
    sink, agent, telemetry = make(clock, site="datadoghq.eu")
    d = sink.write(series_batch())
    run(clock)
    assert d.called and d.result is None
    ((_, method, uri, headers, data),) = agent.requests
    assert (method, uri) == (b"POST", b"https://api.datadoghq.eu/api/v2/series")
    assert headers.getRawHeaders(b"dd-api-key") == [b"secret"]
    assert headers.getRawHeaders(b"content-encoding") == [b"gzip"]
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(gzip.decompress(data))["series"][0]["metric"] == "m0"
    assert telemetry.get("sink_sent", "sink:datadog") == 1
    assert telemetry.gauges[("sink_queue_bytes", ("sink:datadog",))] == 0


def test_dd_url_overrides_the_site():
    clock = Clock()
    sink, agent, _ = make(clock, site="datadoghq.eu", url="http://127.0.0.1:9/base/")
    sink.write(check_batch())
    run(clock)
    assert agent.requests[0][2] == b"http://127.0.0.1:9/base/api/v1/check_run"


def test_5xx_and_network_errors_are_retried_with_growing_backoff():
    clock = Clock()
    script = [500, ConnectionRefusedError(), 503, 502, 500, 500, 500, 500]
    sink, agent, telemetry = make(clock, script, backoff_base=2.0, backoff_max=16.0, _random=lambda: 1.0)
    d = sink.write(series_batch())
    run(clock)
    for _ in range(200):
        clock.advance(1)
    assert d.called
    gaps = [b - a for a, b in zip(agent.times(), agent.times()[1:], strict=False)]
    assert gaps == [2, 4, 8, 16, 16, 16, 16, 16]
    assert telemetry.get("sink_retries", "sink:datadog") == 8
    assert telemetry.get("sink_sent", "sink:datadog") == 1
    assert telemetry.total_dropped() == 0


def test_jittered_backoff_stays_within_its_bounds_on_the_clock():
    clock = Clock()
    sink, agent, _ = make(clock, [500] * 6, backoff_base=1.0, backoff_max=8.0, _random=random.Random(7).random)
    sink.write(series_batch())
    run(clock)
    for _ in range(1000):
        clock.advance(0.125)
    gaps = [b - a for a, b in zip(agent.times(), agent.times()[1:], strict=False)]
    assert len(gaps) == 6
    for n, gap in enumerate(gaps, start=1):
        ceiling = min(8.0, 2.0 ** (n - 1))
        assert ceiling / 2 - 0.125 <= gap <= ceiling + 0.125


def test_429_waits_as_long_as_retry_after_says():
    clock = Clock()
    sink, agent, telemetry = make(clock, [(429, {b"Retry-After": [b"7"]}, b"slow down")], _random=lambda: 0.0)
    d = sink.write(series_batch())
    run(clock)
    clock.advance(6.9)
    assert len(agent.requests) == 1 and not d.called
    clock.advance(0.1)
    assert agent.times() == [0, 7]
    assert d.called and telemetry.get("sink_sent", "sink:datadog") == 1


def test_4xx_is_not_retried_and_is_logged_with_the_body_cut_short():
    clock = Clock()
    sink, agent, telemetry = make(clock, [(403, {}, b"Forbidden " + b"x" * 1000)])
    with capturedLogs() as events:
        d = sink.write(series_batch())
        run(clock)
        clock.advance(100)
    assert d.called and d.result is None
    assert len(agent.requests) == 1
    assert telemetry.dropped("datadog_rejected") == 1
    assert telemetry.get("sink_sent", "sink:datadog") == 0
    (logged,) = [e for e in events if e.get("log_category") == "DATADOG_REJECTED"]
    assert logged["code"] == 403 and logged["body"].startswith("Forbidden") and len(logged["body"]) == 400


def test_the_queue_is_bounded_in_bytes_dropping_the_oldest():
    clock = Clock()
    sink, agent, telemetry = make(clock, [500] * 100, retry_queue_max_bytes=2000, backoff_base=100.0)
    first = sink.write(series_batch(name="first"))
    run(clock)
    later = []
    for i in range(30):
        later.append(sink.write(series_batch(name=f"b{i}.")))
        run(clock)
        assert telemetry.gauges[("sink_queue_bytes", ("sink:datadog",))] <= 2000
    dropped = telemetry.dropped("datadog_retry_queue_full")
    assert dropped > 0
    assert first.called, "the oldest payload goes first"
    assert [d.called for d in later[-3:]] == [False] * 3
    assert telemetry.gauges[("sink_queue_payloads", ("sink:datadog",))] == 31 - dropped
    # Once Datadog answers again, what was kept is sent.
    agent.script = []
    clock.advance(100)
    assert all(d.called for d in later)
    assert telemetry.get("sink_sent", "sink:datadog") == 31 - dropped


def test_a_payload_too_old_for_datadog_is_given_up():
    clock = Clock()
    sink, agent, telemetry = make(clock, [500] * 1000, backoff_base=1.0, backoff_max=60.0)
    d = sink.write(check_batch())
    run(clock)
    for _ in range(700):
        clock.advance(1)
    assert d.called
    assert telemetry.dropped("datadog_retry_expired") == 1
    assert agent.times()[-1] <= 600


def test_timeouts_are_retried():
    clock = Clock()
    sink, agent, telemetry = make(clock, ["hang"], timeout=5.0, backoff_base=1.0, _random=lambda: 1.0)
    d = sink.write(series_batch())
    run(clock)
    clock.advance(5)
    clock.advance(1)
    assert agent.times() == [0, 6]
    assert d.called and telemetry.get("sink_retries", "sink:datadog") == 1


def test_stop_gives_queued_payloads_one_more_try_then_gives_up():
    clock = Clock()
    sink, agent, telemetry = make(clock, [500, 500], backoff_base=30.0)
    sink.startService()
    d = sink.write(series_batch())
    run(clock)
    assert len(agent.requests) == 1
    stopped = sink.stopService()
    run(clock)
    assert stopped.called and d.called
    assert len(agent.requests) == 2, "stopping skips the back-off and tries once more"
    assert telemetry.dropped("datadog_shutdown") == 1
    assert clock.getDelayedCalls() == []


def test_stop_sends_what_is_queued_when_datadog_is_back():
    clock = Clock()
    sink, _agent, telemetry = make(clock, [500], backoff_base=30.0)
    sink.startService()
    sink.write(series_batch())
    run(clock)
    sink.write(check_batch())
    run(clock)
    stopped = sink.stopService()
    run(clock)
    assert stopped.called
    assert telemetry.get("sink_sent", "sink:datadog") == 2 and telemetry.total_dropped() == 0


def test_stop_gives_up_on_requests_still_hanging_at_the_deadline():
    clock = Clock()
    sink, _agent, telemetry = make(clock, ["hang"], timeout=1000.0, _stop_timeout=30.0)
    sink.startService()
    d = sink.write(series_batch())
    run(clock)
    stopped = sink.stopService()
    run(clock)
    assert not stopped.called
    clock.advance(30)
    assert stopped.called and d.called
    assert telemetry.dropped("datadog_shutdown") == 1
    assert clock.getDelayedCalls() == []


def test_writes_after_stop_are_counted_as_dropped():
    clock = Clock()
    sink, agent, telemetry = make(clock)
    stopped = sink.stopService()
    run(clock)
    assert stopped.called
    d = sink.write(series_batch())
    assert d.called and agent.requests == []
    assert telemetry.dropped("datadog_shutdown") == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"api_key": ""}, "API key"),
        ({"api_key": "k", "url": "ftp://x"}, "http"),
        ({"api_key": "k", "url": "http://x", "timeout": 0}, "timeout"),
        ({"api_key": "k", "url": "http://x", "retry_queue_max_bytes": 0}, "retry_queue_max_bytes"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        DatadogSink(Clock(), Telemetry(), **options)


def test_https_needs_tls_support_known_at_construction(monkeypatch):
    """TLS is an extra: without it an https sink is a start-up error naming the extra, not a failure per request."""
    DatadogSink(Clock(), Telemetry(), api_key="k")  # the test extra installs it
    monkeypatch.setitem(sys.modules, "service_identity", None)  # import now raises ImportError
    with pytest.raises(StartupError, match=r"^sinks: datadog: https needs TLS.*twisted-statsd\[tls\]"):
        DatadogSink(Clock(), Telemetry(), api_key="k")
    DatadogSink(Clock(), Telemetry(), api_key="k", url="http://127.0.0.1:1")  # plain http needs none
