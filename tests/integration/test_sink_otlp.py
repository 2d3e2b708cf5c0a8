"""The otlp sink over real HTTP to an OTLP/HTTP receiver (tests/otlp_receiver.py) that decodes with the
opentelemetry-proto classes, alone and behind the whole server fed by the datadog package's DogStatsd client."""

from __future__ import annotations

import pytest_twisted
from datadog.dogstatsd import DogStatsd
from helpers import counted, early_in_a_bucket, wait_for, with_deadline
from otlp_receiver import OtlpReceiver, Partial, data_points

from twisted_statsd import build_service, load_config
from twisted_statsd.core.model import SERIES_GAUGE, SERIES_RATE, FlushBatch, Series, SketchSeries
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.sinks.otlp import OtlpSink
from twisted_statsd.telemetry import Telemetry

TAGS = ("sink:otlp",)
NS = 1_000_000_000


def make_sink(reactor, endpoint, **options):
    telemetry = Telemetry()
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.1)
    sink = OtlpSink(reactor, telemetry, endpoint=endpoint, **options)
    sink.startService()
    return sink, telemetry


def sample_batch():
    sketch = Sketch()
    for v in (1.0, 2.0, 2.0, 100.0):
        sketch.add(v)
    return FlushBatch(
        1700000010.0,
        series=[
            Series("requests", SERIES_RATE, [(1700000000, 1.2)], ("env:test",), "web1"),
            Series("load", SERIES_GAUGE, [(1700000000, 0.5)], (), "web1"),
        ],
        sketches=[SketchSeries("latency", [(1700000000, sketch)], ("env:test",), "web1")],
    )


@pytest_twisted.ensureDeferred
async def test_a_flush_arrives_decoded_and_exact(reactor):
    receiver = OtlpReceiver(reactor)
    receiver.listen()
    sink, telemetry = make_sink(reactor, receiver.endpoint(), headers={"Authorization": "Bearer t"})
    try:
        await with_deadline(reactor, sink.write(sample_batch()))
    finally:
        await with_deadline(reactor, sink.stopService())
        await receiver.close()
    (request,) = receiver.resource.requests
    assert request["headers"]["authorization"] == "Bearer t"
    assert request["headers"]["content-encoding"] == "gzip"
    found = {f["name"]: f for f in data_points(receiver.resource.messages())}
    assert {f["resource"]["host.name"] for f in found.values()} == {"web1"}
    requests = found["requests"]
    assert (requests["kind"], requests["monotonic"], requests["attributes"]) == ("sum", True, {"env": "test"})
    assert requests["point"].as_double == 12.0
    assert found["load"]["point"].as_double == 0.5
    latency = found["latency"]["point"]
    assert (latency.count, latency.sum, latency.min, latency.max) == (4, 105.0, 1.0, 100.0)
    assert telemetry.get("sink_sent", *TAGS) == 1
    assert telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_503_and_429_are_retried_until_accepted(reactor):
    receiver = OtlpReceiver(reactor)
    receiver.resource.script = [503, (429, {"Retry-After": "1"})]
    receiver.listen()
    sink, telemetry = make_sink(reactor, receiver.endpoint(), backoff_base=0.001, backoff_max=0.001)
    try:
        await with_deadline(reactor, sink.write(sample_batch()))
    finally:
        await with_deadline(reactor, sink.stopService())
        await receiver.close()
    first, second, third = receiver.resource.requests
    assert third["at"] - second["at"] >= 0.95, "Retry-After wins over a shorter back-off"
    assert first["message"] == second["message"] == third["message"]
    assert telemetry.get("sink_retries", *TAGS) == 2
    assert telemetry.get("sink_sent", *TAGS) == 1
    assert telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_a_400_is_final_and_partial_success_is_counted(reactor):
    receiver = OtlpReceiver(reactor)
    receiver.resource.script = [400, Partial(2, "names not allowed")]
    receiver.listen()
    sink, telemetry = make_sink(reactor, receiver.endpoint())
    try:
        await with_deadline(reactor, sink.write(sample_batch()))
        await with_deadline(reactor, sink.write(sample_batch()))
    finally:
        await with_deadline(reactor, sink.stopService())
        await receiver.close()
    assert len(receiver.resource.requests) == 2
    assert telemetry.dropped("otlp_rejected") == 1
    assert telemetry.dropped("otlp_rejected_points") == 2
    assert telemetry.get("sink_sent", *TAGS) == 1


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_is_down_then_up_gets_the_data(reactor):
    receiver = OtlpReceiver(reactor)
    number = receiver.listen()
    endpoint = receiver.endpoint()
    await receiver.close()
    sink, telemetry = make_sink(reactor, endpoint)
    try:
        written = sink.write(sample_batch())
        await wait_for(reactor, lambda: telemetry.get("sink_retries", *TAGS) >= 3)
        assert not written.called
        receiver.listen(number)
        await with_deadline(reactor, written)
    finally:
        await with_deadline(reactor, sink.stopService())
        await receiver.close()
    assert len(receiver.resource.requests) == 1
    assert telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_the_server_sends_what_a_dogstatsd_client_sent_to_the_receiver(reactor):
    """End to end: DogStatsd client -> UDP -> aggregation -> final flush -> OTLP/HTTP -> decoded."""
    await early_in_a_bucket(reactor)  # one point per series: the final flush comes in the same bucket
    receiver = OtlpReceiver(reactor)
    receiver.listen()
    config = load_config(
        data={
            "dogstatsd_port": "__random__",
            "hostname": "testhost",
            "flush_interval": 3600,
            "histogram_aggregates": ["max", "count"],
            "histogram_percentiles": [],
            "sinks": [
                {
                    "type": "otlp",
                    "endpoint": receiver.endpoint(),
                    "resource_attributes": {"service.name": "statsd-test"},
                }
            ],
        }
    )
    service = build_service(config, reactor)
    service.startService()
    try:
        statsd = DogStatsd(
            host="127.0.0.1", port=service.udp.address.port, disable_telemetry=True, constant_tags=["env:test"]
        )
        statsd.increment("page.views", 3, tags=["page:home"])
        statsd.increment("page.views", 2, tags=["page:home"])
        statsd.decrement("stock", 4)
        statsd.gauge("queue.size", 7, tags=["queue:a"])
        statsd.set("users.unique", "alice")
        statsd.set("users.unique", "bob")
        for v in (1, 2, 3):
            statsd.histogram("request.size", v)
        for v in (0.25, 0.5, 0.5, 2000.0):
            statsd.distribution("latency", v, tags=["bare"])
        statsd.close_socket()
        await wait_for(reactor, lambda: counted(service) >= 13)
    finally:
        await with_deadline(reactor, service.stopService())
        await receiver.close()

    found = {
        (f["name"], f["kind"]): f
        for f in data_points(receiver.resource.messages())
        if not f["name"].startswith("twisted_statsd.")
    }
    assert set(found) == {
        ("page.views", "sum"),
        ("stock", "sum"),
        ("queue.size", "gauge"),
        ("users.unique", "gauge"),
        ("request.size.max", "gauge"),
        ("request.size.count", "sum"),
        ("latency", "exponential_histogram"),
    }
    for f in found.values():
        assert f["resource"] == {"host.name": "testhost", "service.name": "statsd-test"}
        assert f["attributes"]["env"] == "test"
    views = found[("page.views", "sum")]
    assert (views["monotonic"], views["attributes"], views["point"].as_double) == (
        True,
        {"env": "test", "page": "home"},
        5.0,
    )
    assert views["point"].time_unix_nano - views["point"].start_time_unix_nano == 10 * NS
    assert views["point"].start_time_unix_nano % (10 * NS) == 0
    stock = found[("stock", "sum")]
    assert (stock["monotonic"], stock["point"].as_double) == (False, -4.0)
    assert found[("queue.size", "gauge")]["point"].as_double == 7.0
    assert found[("users.unique", "gauge")]["point"].as_double == 2.0
    assert found[("request.size.max", "gauge")]["point"].as_double == 3.0
    assert found[("request.size.count", "sum")]["point"].as_double == 3.0
    latency = found[("latency", "exponential_histogram")]
    assert latency["attributes"] == {"env": "test", "bare": ""}
    p = latency["point"]
    assert (p.count, p.sum, p.min, p.max, p.scale) == (4, 2001.25, 0.25, 2000.0, 6)
    assert sum(p.positive.bucket_counts) == 4
