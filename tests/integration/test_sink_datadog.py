"""The Datadog sink over real HTTP to a local twisted.web server that records what it gets and can be told to fail."""

from __future__ import annotations

import gzip
import json
import time

import pytest_twisted
from helpers import wait_for, with_deadline
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_statsd.core.model import SERIES_COUNT, SERIES_GAUGE, Event, FlushBatch, Series, ServiceCheck, SketchSeries
from twisted_statsd.core.sketch import Sketch, key_of, value_of
from twisted_statsd.sinks.datadog import DatadogSink
from twisted_statsd.telemetry import Telemetry

TAGS = ("sink:datadog",)


class Recorder(Resource):
    """Records every POST (body un-gzipped and parsed) and answers with the next scripted outcome.

    An outcome is a status code or (status, headers, body); with the script used up it answers 202.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.script = []

    def render_POST(self, request):
        raw = request.content.read()
        if request.getHeader("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        self.requests.append(
            {
                "at": time.monotonic(),
                "path": request.path.decode(),
                "api_key": request.getHeader("dd-api-key"),
                "encoding": request.getHeader("content-encoding"),
                "type": request.getHeader("content-type"),
                "body": json.loads(raw),
            }
        )
        outcome = self.script.pop(0) if self.script else 202
        code, headers, body = (outcome, {}, b'{"status":"ok"}') if isinstance(outcome, int) else outcome
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body

    def bodies(self, path):
        return [r["body"] for r in self.requests if r["path"] == path]


class Server:
    def __init__(self, reactor):
        self.reactor = reactor
        self.recorder = Recorder()
        site = Site(self.recorder)
        site.noisy = False
        # The wrapper knows the open connections, so closing can wait for the server side to see them go.
        self.factory = WrappingFactory(site)
        self.port = None

    def listen(self, number=0):
        self.port = self.reactor.listenTCP(number, self.factory, interface="127.0.0.1")
        return self.port.getHost().port

    async def close(self):
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        await wait_for(self.reactor, lambda: not self.factory.protocols)


def make_sink(reactor, port, **options):
    telemetry = Telemetry()
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.1)
    sink = DatadogSink(reactor, telemetry, api_key="test-key", url=f"http://127.0.0.1:{port}", **options)
    sink.startService()
    return sink, telemetry


def sample_batch():
    sketch = Sketch()
    for v in (1.0, 2.0, 2.0, 100.0):
        sketch.add(v)
    return FlushBatch(
        1700000010.0,
        series=[
            Series("requests", SERIES_COUNT, [(1700000000, 12.0)], ("env:test",), "web1"),
            Series("load", SERIES_GAUGE, [(1700000000, 0.5)], (), "web1"),
        ],
        sketches=[SketchSeries("latency", [(1700000000, sketch)], ("env:test",), "web1")],
        events=[Event("Deployed", "v2 is live", 1700000005, "normal", "success", "web1", "deploy", "", ("env:test",))],
        service_checks=[ServiceCheck("db.can_connect", 0, 1700000006, "web1", "", ("db:main",))],
    )


def gauge_batch(ts):
    return FlushBatch(float(ts), series=[Series("m", SERIES_GAUGE, [(ts, float(ts))], (), "h")])


@pytest_twisted.ensureDeferred
async def test_a_flush_arrives_complete_and_exact(reactor):
    server = Server(reactor)
    sink, telemetry = make_sink(reactor, server.listen())
    try:
        await with_deadline(reactor, sink.write(sample_batch()))
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
    recorder = server.recorder
    assert sorted(r["path"] for r in recorder.requests) == [
        "/api/v1/check_run",
        "/api/v1/distribution_points",
        "/api/v1/events",
        "/api/v2/series",
    ]
    for r in recorder.requests:
        assert (r["api_key"], r["encoding"], r["type"]) == ("test-key", "gzip", "application/json")
    assert recorder.bodies("/api/v2/series") == [
        {
            "series": [
                {
                    "metric": "requests",
                    "type": 1,
                    "points": [{"timestamp": 1700000000, "value": 12.0}],
                    "tags": ["env:test"],
                    "interval": 10,
                    "resources": [{"type": "host", "name": "web1"}],
                },
                {
                    "metric": "load",
                    "type": 3,
                    "points": [{"timestamp": 1700000000, "value": 0.5}],
                    "tags": [],
                    "interval": 10,
                    "resources": [{"type": "host", "name": "web1"}],
                },
            ]
        }
    ]
    assert recorder.bodies("/api/v1/distribution_points") == [
        {
            "series": [
                {
                    "metric": "latency",
                    "type": "distribution",
                    "tags": ["env:test"],
                    "host": "web1",
                    # 1.0 and 100.0 are min and max, sent exact; the two 2.0s go as their bin's value.
                    "points": [[1700000000, [1.0, value_of(key_of(2.0)), value_of(key_of(2.0)), 100.0]]],
                }
            ]
        }
    ]
    assert recorder.bodies("/api/v1/events") == [
        {
            "title": "Deployed",
            "text": "v2 is live",
            "date_happened": 1700000005,
            "priority": "normal",
            "alert_type": "success",
            "host": "web1",
            "tags": ["env:test"],
            "aggregation_key": "deploy",
        }
    ]
    assert recorder.bodies("/api/v1/check_run") == [
        [
            {
                "check": "db.can_connect",
                "host_name": "web1",
                "timestamp": 1700000006,
                "status": 0,
                "message": "",
                "tags": ["db:main"],
            }
        ]
    ]
    assert telemetry.get("sink_sent", *TAGS) == 4
    assert telemetry.total_dropped() == 0
    assert telemetry.gauges[("sink_queue_bytes", TAGS)] == 0


@pytest_twisted.ensureDeferred
async def test_a_500_is_retried_until_it_succeeds(reactor):
    server = Server(reactor)
    server.recorder.script = [500, 503]
    sink, telemetry = make_sink(reactor, server.listen())
    try:
        batch = FlushBatch(1.0, service_checks=[ServiceCheck("c", 1, 1, "h", "m", ())])
        await with_deadline(reactor, sink.write(batch))
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
    bodies = server.recorder.bodies("/api/v1/check_run")
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]
    assert telemetry.get("sink_retries", *TAGS) == 2
    assert telemetry.get("sink_sent", *TAGS) == 1
    assert telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_a_429_is_retried_after_retry_after(reactor):
    server = Server(reactor)
    server.recorder.script = [(429, {"Retry-After": "1"}, b"rate limited")]
    # A back-off far shorter than Retry-After: the header must win.
    sink, telemetry = make_sink(reactor, server.listen(), backoff_base=0.001, backoff_max=0.001)
    try:
        await with_deadline(reactor, sink.write(gauge_batch(1)))
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
    first, second = server.recorder.requests
    assert second["at"] - first["at"] >= 0.95
    assert first["body"] == second["body"]
    assert telemetry.get("sink_sent", *TAGS) == 1


@pytest_twisted.ensureDeferred
async def test_a_403_is_not_retried_and_is_counted(reactor):
    server = Server(reactor)
    server.recorder.script = [(403, {}, b'{"errors":["Forbidden"]}')]
    sink, telemetry = make_sink(reactor, server.listen())
    try:
        await with_deadline(reactor, sink.write(gauge_batch(1)))
        # Another flush goes through: one rejection does not stop the sink.
        await with_deadline(reactor, sink.write(gauge_batch(2)))
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
    assert len(server.recorder.requests) == 2
    assert telemetry.dropped("datadog_rejected") == 1
    assert telemetry.get("sink_retries", *TAGS) == 0
    assert telemetry.get("sink_sent", *TAGS) == 1


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_down_then_up_gets_the_data(reactor):
    server = Server(reactor)
    number = server.listen()
    await server.close()
    sink, telemetry = make_sink(reactor, number)
    try:
        written = sink.write(gauge_batch(1))
        await wait_for(reactor, lambda: telemetry.get("sink_retries", *TAGS) >= 3)
        assert not written.called
        server.listen(number)
        await with_deadline(reactor, written)
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
    (only,) = server.recorder.requests
    assert only["body"]["series"][0]["metric"] == "m"
    assert telemetry.get("sink_sent", *TAGS) == 1
    assert telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_stopping_while_the_server_is_down_gives_up_and_leaves_nothing_behind(reactor):
    server = Server(reactor)
    number = server.listen()
    await server.close()
    sink, telemetry = make_sink(reactor, number, backoff_base=60.0, backoff_max=60.0)
    written = sink.write(gauge_batch(1))
    await wait_for(reactor, lambda: telemetry.get("sink_retries", *TAGS) >= 1)
    await with_deadline(reactor, sink.stopService())
    assert written.called
    assert telemetry.dropped("datadog_shutdown") == 1
