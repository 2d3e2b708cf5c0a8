"""The admin endpoint on a real loopback port of a real server built with build_service.

Requests go through twisted.web's Agent (and a raw socket where Agent would
not send what is tested); metrics arrive over real UDP.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from urllib.parse import urlencode

import pytest_twisted
from helpers import wait_for, with_deadline
from twisted.internet import defer, protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from twisted_statsd import build_service, load_config
from twisted_statsd.testing import MemorySink


class _Body(protocol.Protocol):
    def __init__(self, done: defer.Deferred):
        self.done, self.parts = done, []

    def dataReceived(self, data):
        self.parts.append(data)

    def connectionLost(self, reason):
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@pytest_twisted.async_yield_fixture
async def agent(reactor):
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield Agent(reactor, pool=pool)
    await with_deadline(reactor, pool.closeCachedConnections())


class Server:
    """A started server with the admin endpoint on an ephemeral port."""

    def __init__(self, reactor, agent, sinks=None, **settings):
        data = {
            "dogstatsd_port": "__random__",
            "admin_port": "__random__",
            "hostname": "testhost",
            "flush_interval": 3600,
            **settings,
        }
        self.reactor, self.agent = reactor, agent
        self.service = build_service(load_config(data=data), reactor, sinks=sinks or [MemorySink()])
        self.service.startService()
        self.base = f"http://127.0.0.1:{self.service.admin.address.port}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, *lines: bytes) -> None:
        self.sock.sendto(b"\n".join(lines), ("127.0.0.1", self.service.udp.address.port))

    async def request(self, path: str, method: bytes = b"GET", body: bytes | None = None, headers=None):
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        d = self.agent.request(method, (self.base + path).encode(), Headers(headers or {}), producer)
        response = await with_deadline(self.reactor, d)
        done = defer.Deferred()
        response.deliverBody(_Body(done))
        return response, await with_deadline(self.reactor, done)

    async def json(self, path: str, method: bytes = b"GET", expect: int = 200, **kw):
        response, body = await self.request(path, method, **kw)
        assert response.code == expect, body
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return json.loads(body)

    async def stop(self) -> None:
        self.sock.close()
        if self.service.running:
            await with_deadline(self.reactor, self.service.stopService())


@pytest_twisted.async_yield_fixture
async def server(reactor, agent):
    started = Server(reactor, agent)
    yield started
    await started.stop()


def test_admin_endpoint_is_off_by_default(reactor):
    service = build_service(load_config(data={"dogstatsd_port": "__random__"}), reactor, sinks=[MemorySink()])
    assert service.admin is None
    assert load_config(data={}).admin_host == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_health_ready_and_status_while_running(server):
    assert server.service.admin.address.host == "127.0.0.1"
    assert await server.json("/health") == {"status": "running"}
    assert await server.json("/ready") == {"ready": True, "reasons": []}
    server.send(b"page.views:1|c|#env:test", b"queue.size:3|g", b"bad line")
    await wait_for(server.reactor, lambda: server.service.telemetry.get("packets", "transport:udp") >= 1)
    await with_deadline(server.reactor, server.service.flush())
    status = await server.json("/status")
    assert set(status) == {
        "version",
        "state",
        "uptime_seconds",
        "listeners",
        "rates",
        "contexts",
        "sinks",
        "dropped",
        "memory",
        "last_flush_seconds",
        "metrics_stats_enabled",
    }
    assert status["state"] == "running"
    assert status["listeners"] == [
        {"transport": "udp", "address": f"127.0.0.1:{server.service.udp.address.port}", "workers": 1}
    ]
    assert status["dropped"] == {"metric_no_pipe": 1}
    assert status["sinks"][0]["name"] == "memory" and status["sinks"][0]["writes"] == 1
    assert status["contexts"] >= 1  # page.views stays live for zero-filling
    assert status["last_flush_seconds"] >= 0
    assert set(status["rates"]) == {"window_seconds", "packets_per_second", "metrics_per_second"}
    assert status["memory"] == {"limiter_enabled": False, "refusing_new_contexts": False}


@pytest_twisted.ensureDeferred
async def test_only_documented_paths_and_methods_are_answered(server):
    missing = await server.json("/nope", expect=404)
    assert "/health" in missing["paths"]
    await server.json("/health/", expect=404)
    response, _ = await server.request("/health", b"DELETE")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
    response, _ = await server.request("/stats/enable", b"GET")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"POST"]
    response, body = await server.request("/health", b"HEAD")
    assert (response.code, body) == (200, b"")


@pytest_twisted.ensureDeferred
async def test_request_bodies_are_refused(server, reactor):
    response, _ = await server.request("/stats/enable", b"POST", body=b"x" * 100)
    assert response.code == 413
    assert not server.service.admin.stats_enabled
    # A chunked body is refused at its header too.
    reply = await reactor_socket_exchange(
        reactor,
        server.service.admin.address.port,
        b"POST /stats/enable HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 413")
    assert not server.service.admin.stats_enabled


async def reactor_socket_exchange(reactor, port: int, request: bytes) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    done = defer.Deferred()

    class Raw(protocol.Protocol):
        def connectionMade(self):
            self.parts = []
            self.transport.write(request)

        def dataReceived(self, data):
            self.parts.append(data)

        def connectionLost(self, reason):
            done.callback(b"".join(self.parts))

    await with_deadline(reactor, connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw()))
    return await with_deadline(reactor, done)


@pytest_twisted.ensureDeferred
async def test_cross_origin_posts_are_refused(server):
    await server.json(
        "/stats/enable", b"POST", expect=403, headers={b"origin": [b"http://evil.example"], b"host": [b"x"]}
    )
    assert not server.service.admin.stats_enabled
    same = server.base.removeprefix("http://").encode()
    body = await server.json("/stats/enable", b"POST", headers={b"origin": [server.base.encode()], b"host": [same]})
    assert body["enabled"] is True


class HeldSink(MemorySink):
    """A sink whose writes wait until the test lets them finish: stopping the server waits with it."""

    name = "held"

    def __init__(self):
        super().__init__()
        self.pending: list[defer.Deferred] = []

    def write(self, batch):
        super().write(batch)
        d = defer.Deferred()
        self.pending.append(d)
        return d


@pytest_twisted.ensureDeferred
async def test_health_is_503_while_stopping(reactor, agent):
    sink = HeldSink()
    started = Server(reactor, agent, sinks=[sink])
    try:
        started.send(b"x:1|c")
        await wait_for(reactor, lambda: started.service.telemetry.get("packets", "transport:udp") >= 1)
        stopping = started.service.stopService()
        await wait_for(reactor, lambda: sink.pending)  # the final flush is being written
        assert await started.json("/health", expect=503) == {"status": "stopping"}
        ready = await started.json("/ready", expect=503)
        assert ready == {"ready": False, "reasons": ["stopping"]}
        for d in sink.pending:
            d.callback(None)
        await with_deadline(reactor, stopping)
        assert started.service.admin.address is None
    finally:
        for d in sink.pending:
            if not d.called:
                d.callback(None)
        await started.stop()


@pytest_twisted.ensureDeferred
async def test_stats_top_orders_names_by_contexts_samples_and_series(server):
    summary = await server.json("/stats/top")
    assert summary["enabled"] is False and summary["metrics"] == []
    await server.json("/stats/enable", b"POST")
    lines = [b"many.contexts:1|c|#i:%d" % i for i in range(5)]
    lines += [b"many.samples:%d|g" % i for i in range(20)]
    lines += [b"latency:%d|h|#k:%d" % (i, i % 2) for i in range(4)]
    lines += [b"_e{5,4}:title|text", b"_sc|check|0"]
    server.send(*lines)
    await wait_for(server.reactor, lambda: server.service.telemetry.get("packets", "transport:udp") >= 1)
    await with_deadline(server.reactor, server.service.flush(final=True))

    by_samples = (await server.json("/stats/top?by=samples&n=2"))["metrics"]
    assert [(m["name"], m["samples"]) for m in by_samples] == [("many.samples", 20), ("many.contexts", 5)]
    assert by_samples[0]["transports"] == ["udp"]
    by_contexts = (await server.json("/stats/top?by=contexts"))["metrics"]
    assert [(m["name"], m["contexts"], m["type"]) for m in by_contexts] == [
        ("many.contexts", 5, "counter"),
        ("latency", 2, "histogram"),
        ("many.samples", 1, "gauge"),
    ]
    by_series = (await server.json("/stats/top?by=series&n=1"))["metrics"]
    # A histogram context is 4 aggregates + 1 percentile: 2 contexts make 10 series.
    assert [(m["name"], m["estimated_series"]) for m in by_series] == [("latency", 10)]
    everything = await server.json("/stats")
    assert [m["name"] for m in everything["metrics"]] == ["latency", "many.contexts", "many.samples"]

    await server.json("/stats/top?by=color", expect=400)
    await server.json("/stats/top?n=0", expect=400)
    await server.json("/stats/top?n=x", expect=400)
    assert (await server.json("/stats/disable", b"POST"))["enabled"] is False
    assert server.service.intake.observers == []


@pytest_twisted.ensureDeferred
async def test_contexts_are_streamed_as_json_lines(server):
    for first in range(0, 300, 100):
        server.send(*[b"app.requests:1|c|#route:r%d" % i for i in range(first, first + 100)])
    server.send(b"other.metric:2|g|#x:y", b"app.size:5|d")
    await wait_for(server.reactor, lambda: server.service.telemetry.get("packets", "transport:udp") >= 4)
    server.service.intake.drain()
    response, body = await server.request("/contexts?prefix=app.")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
    records = [json.loads(line) for line in body.splitlines()]
    assert len(records) == 301
    assert {r["name"] for r in records} == {"app.requests", "app.size"}
    counter = next(r for r in records if r["tags"] == ["route:r7"])
    assert counter["type"] == "counter" and counter["host"] == "testhost" and counter["last_seen"] > 0
    assert next(r for r in records if r["name"] == "app.size")["type"] == "distribution"
    _, everything = await server.request("/contexts")
    assert len(everything.splitlines()) == 302


# -- the twisted-statsd command, run as a subprocess against the server ------------------------


async def run_cli(reactor, *args: str) -> tuple[str, str, int]:
    from twisted.internet import utils

    out, err, code = await with_deadline(
        reactor,
        utils.getProcessOutputAndValue(sys.executable, ["-m", "twisted_statsd.cli", *args], env=os.environ),
        timeout=30,
    )
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_cli_top_and_stats_print_tables(server, reactor):
    url = ["--url", server.base]
    out, err, code = await run_cli(reactor, *url, "stats", "--enable")
    assert code == 0, err
    assert "per-metric statistics: on" in out and server.service.admin.stats_enabled
    server.send(*[b"busy.metric:1|c|#i:%d" % i for i in range(3)], b"quiet.metric:1|g")
    await wait_for(reactor, lambda: server.service.telemetry.get("packets", "transport:udp") >= 1)
    await with_deadline(reactor, server.service.flush(final=True))
    out, err, code = await run_cli(reactor, *url, "top", "--by", "contexts", "-n", "5")
    assert code == 0, err
    header, first, second = out.splitlines()[1:4]
    assert header.split()[:5] == ["NAME", "TYPE", "SAMPLES", "CONTEXTS", "SERIES~"]
    assert first.split()[:5] == ["busy.metric", "counter", "3", "3", "3"]
    assert second.split()[:5] == ["quiet.metric", "gauge", "1", "1", "1"]
    assert "udp" in first
    out, err, code = await run_cli(reactor, *url, "stats")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["busy.metric", "quiet.metric"]


@pytest_twisted.ensureDeferred
async def test_cli_dump_contexts_writes_json_lines(server, reactor, tmp_path):
    server.send(b"dump.a:1|c|#x:1", b"dump.b:2|g", b"keep.out:1|c")
    await wait_for(reactor, lambda: server.service.telemetry.get("packets", "transport:udp") >= 1)
    config = tmp_path / "statsd.yaml"
    config.write_text(f"admin_port: {server.service.admin.address.port}\n")
    target = tmp_path / "contexts.jsonl"
    out, err, code = await run_cli(
        reactor, "--config", str(config), "dump-contexts", "--prefix", "dump.", "--out", str(target)
    )
    assert code == 0, err
    assert out.strip() == f"2 contexts written to {target}"
    records = sorted((json.loads(line) for line in target.read_text().splitlines()), key=lambda r: r["name"])
    assert [(r["name"], r["type"], r["tags"]) for r in records] == [
        ("dump.a", "counter", ["x:1"]),
        ("dump.b", "gauge", []),
    ]


@pytest_twisted.ensureDeferred
async def test_cli_reports_an_unreachable_endpoint_and_http_errors(server, reactor):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    _, err, code = await run_cli(reactor, "--url", f"http://127.0.0.1:{port}", "top")
    assert code == 1 and "cannot reach the admin endpoint" in err
    _, err, code = await run_cli(reactor, "--url", server.base, "top", "--by", "color")
    assert code == 1 and "HTTP 400" in err
    _, err, code = await run_cli(reactor, "--url", server.base)
    assert code == 2 and "a command is required" in err


# -- explain ----------------------------------------------------------------------------------

MAPPER = [
    {
        "name": "shop",
        "prefix": "shop.",
        "mappings": [
            {"match": "shop.dag.*.ok", "name": "shop.dag.ok", "tags": {"dag": "$1"}},
            {"match": "shop.job.*.duration", "name": "shop.job.duration", "tags": {"job": "$1"}},
        ],
    }
]


@pytest_twisted.ensureDeferred
async def test_explain_walks_mapper_namespace_blocklist_enrichment_and_emission(reactor, agent):
    started = Server(
        reactor,
        agent,
        dogstatsd_mapper_profiles=MAPPER,
        statsd_metric_namespace="app",
        statsd_metric_blocklist=["app.secret"],
        dogstatsd_tags=["env:test"],
        histogram_percentiles=[0.5, 0.99],
    )
    try:
        body = await started.json("/explain?metric=shop.job.etl.duration&type=ms")
        assert body["mapper"] == {
            "configured": True,
            "profile": "shop",
            "mapping": 1,
            "match": "shop.job.*.duration",
            "match_type": "wildcard",
            "name": "shop.job.duration",
            "tags": ["job:etl"],
        }
        assert body["namespace"] == {"namespace": "app.", "applied": True}
        assert body["context"] == {
            "name": "app.shop.job.duration",
            "host": "testhost",
            "tags": ["env:test", "job:etl"],
        }
        assert body["limiter"]["decision"] == "accepted" and body["accepted"] is True
        assert [s["name"] for s in body["emission"]["series"]] == [
            "app.shop.job.duration.max",
            "app.shop.job.duration.median",
            "app.shop.job.duration.avg",
            "app.shop.job.duration.count",
            "app.shop.job.duration.50percentile",
            "app.shop.job.duration.99percentile",
        ]
        assert body["expiry"]["counter_zero_fill_seconds"] == 0

        line = "requests:1|c|@0.5|#host:web9,route:a"
        body = await started.json("/explain?" + urlencode({"line": line}))
        assert body["parsed"]["sample_rate"] == 0.5
        assert body["mapper"] == {"configured": True, "profile": None}
        assert body["context"] == {"name": "app.requests", "host": "web9", "tags": ["env:test", "route:a"]}
        assert body["emission"]["series"][0]["type"] == "rate"
        assert body["expiry"]["counter_zero_fill_seconds"] == 300

        body = await started.json("/explain?metric=secret")
        assert (body["blocked"], body["accepted"]) == (True, False)

        started.send(b"broken:1|q", b"broken:x|c")
        await wait_for(reactor, lambda: started.service.telemetry.total_dropped() >= 2)
        body = await started.json("/explain?" + urlencode({"line": "broken:1|q"}))
        assert body["accepted"] is False and body["parse_error"]["reason"] == "metric_bad_type"
        assert [(d["reason"], d["line"]) for d in body["recent_drops"]] == [
            ("metric_bad_type", "broken:1|q"),
            ("metric_bad_value", "broken:x|c"),
        ]

        await started.json("/explain", expect=400)
        await started.json("/explain?metric=a:b", expect=400)
        await started.json("/explain?metric=a&line=a:1|c", expect=400)
    finally:
        await started.stop()


@pytest_twisted.ensureDeferred
async def test_limits_table_and_explain_show_the_context_limiter(reactor, agent):
    """Contexts over a sender's budget, sent over UDP, show in /limits and in /explain's decision."""
    started = Server(
        reactor,
        agent,
        dogstatsd_context_limiter={"sender_limit": 2, "key_tag_name": "pod"},
        metric_tag_filterlist=[{"metric_name": "api", "action": "exclude", "tags": ["user"]}],
    )
    try:
        started.send(*[b"api:1|c|#pod:a,route:%d" % i for i in range(5)])
        await wait_for(reactor, lambda: started.service.telemetry.get("metrics") >= 5)
        body = await started.json("/limits")
        assert body["context_limiter"]["live_contexts"] == 2
        assert body["context_limiter"]["senders"] == {"a": 2}
        assert body["context_limiter"]["overflows"] == [{"sender": "a", "metric_name": "api", "contexts": 3}]
        assert body["tag_filterlist_metrics"] == ["api"]

        body = await started.json("/explain?" + urlencode({"line": "api:1|c|#pod:a,route:0,user:7"}))
        assert body["context"]["tags"] == ["pod:a", "route:0"]
        assert body["context_limiter"]["decision"] == "counted: a live context"
        body = await started.json("/explain?" + urlencode({"line": "api:1|c|#pod:a,route:9"}))
        assert body["context_limiter"]["decision"].startswith("overflow: sender_limit")
        assert body["context_limiter"]["overflow_context"]["tags"] == ["overflow:true", "pod:a"]
        body = await started.json("/explain?" + urlencode({"line": "api:1|c|#pod:b,route:9"}))
        assert body["context_limiter"]["decision"] == "counted: a new context within its budgets"
    finally:
        await started.stop()


# -- capture and replay -------------------------------------------------------------------------

WORKLOAD = [
    b"shop.orders:1|c|#env:test\nshop.orders:2|c|@0.5|#env:test\nshop.basket:3|g",
    b"shop.latency:12|ms|#route:a\nshop.latency:30|ms|#route:a\nshop.latency:7|h|#route:b",
    b"shop.users:alice|s\nshop.users:bob|s\nshop.users:alice|s\nshop.size:5|d\nshop.size:9|d|#k:v",
    b"shop.basket:4|g\n_e{5,4}:title|text\nshop.orders:5|c|#env:test",
]


def aggregates(batch) -> list:
    """What a flush says about user metrics, without timestamps (the two servers ran at different times)."""
    series = sorted(
        (s.name, s.type, s.tags, s.host, tuple(v for _, v in s.points))
        for s in batch.series
        if not s.name.startswith("twisted_statsd.")
    )
    sketches = sorted(
        (s.name, s.tags, s.host, tuple((k.count, k.sum, k.min, k.max) for _, k in s.points)) for s in batch.sketches
    )
    events = sorted((e.title, e.text, e.tags) for e in batch.events)
    return [series, sketches, events]


@pytest_twisted.ensureDeferred
async def test_a_capture_replayed_into_a_fresh_server_gives_the_same_aggregates(reactor, agent, tmp_path):
    from helpers import early_in_a_bucket

    from twisted_statsd.capture import read

    source, target = Server(reactor, agent), Server(reactor, agent)
    try:
        path = tmp_path / "shop.tsdcap.gz"
        capturing = defer.ensureDeferred(
            run_cli(reactor, "--url", source.base, "capture", "--duration", "1.5", "--out", str(path))
        )
        await wait_for(reactor, lambda: source.service.admin.capture is not None)
        # Each server's samples and its final flush share one bucket (or a zero-filled point
        # of the next would differ); the source is flushed as soon as it has read the workload,
        # while the capture still runs, so only that has to fit in what is left of the bucket.
        await early_in_a_bucket(reactor, margin=1)
        for packet in WORKLOAD:
            source.send(packet)
        await wait_for(reactor, lambda: source.service.telemetry.get("packets", "transport:udp") >= len(WORKLOAD))
        expected = aggregates(await with_deadline(reactor, source.service.flush(final=True)))
        out, err, code = await capturing
        assert code == 0, err
        assert out.strip() == f"{len(WORKLOAD)} packets written to {path}; skipped: none"
        capture = read(str(path))
        assert [r.packet for r in capture.records] == WORKLOAD
        assert {r.transport for r in capture.records} == {"udp"}
        assert capture.summary == {"packets": len(WORKLOAD), "skipped": {}}

        await early_in_a_bucket(reactor, margin=4)
        out, err, code = await run_cli(
            reactor, "replay", str(path), "--to", f"udp://127.0.0.1:{target.service.udp.address.port}", "--max"
        )
        assert code == 0, err
        assert out.strip() == f"{len(WORKLOAD)} packets sent to udp://127.0.0.1:{target.service.udp.address.port}"
        await wait_for(reactor, lambda: target.service.telemetry.get("packets", "transport:udp") >= len(WORKLOAD))
        replayed = aggregates(await with_deadline(reactor, target.service.flush(final=True)))
        assert expected[0] and expected[1] and expected[2]
        assert replayed == expected
    finally:
        await source.stop()
        await target.stop()


@pytest_twisted.ensureDeferred
async def test_capture_size_cap_skips_and_counts_and_a_second_capture_is_refused(server, reactor):
    url = "/capture?duration=1&max_bytes=200"
    done = defer.ensureDeferred(server.request(url))
    await wait_for(reactor, lambda: server.service.admin.capture is not None)
    await server.json("/capture?duration=1", expect=409)
    for i in range(5):
        server.send(b"x:%d|c" % i + b"|#pad:" + b"p" * 60)
        await wait_for(reactor, lambda n=i + 1: server.service.telemetry.get("packets", "transport:udp") >= n)
        server.service.intake.drain()
    response, body = await done
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/gzip"]
    from twisted_statsd.capture import parse

    capture = parse(body)
    assert 0 < len(capture.records) < 5
    assert capture.summary["skipped"] == {"size_cap": 5 - len(capture.records)}
    assert server.service.telemetry.get("capture_skipped", "reason:size_cap") == 5 - len(capture.records)
    assert server.service.intake.observers == []
    await server.json("/capture?duration=0", expect=400)
    await server.json("/capture", expect=400)


@pytest_twisted.ensureDeferred
async def test_replay_to_unix_datagram_and_stream_sockets(reactor, agent, tmp_path, short_tmpdir):
    from twisted_statsd.capture import CaptureEncoder

    encoder = CaptureEncoder(0.0, "test")
    encoder.add(1.0, [b"uds.a:1|c", b"uds.b:2|c\nuds.b:3|c"], "udp", None)
    path = tmp_path / "c.gz"
    path.write_bytes(encoder.take() + encoder.finish(2.0, {}))
    gram, stream = f"{short_tmpdir}/g.sock", f"{short_tmpdir}/s.sock"
    started = Server(reactor, agent, dogstatsd_port=0, dogstatsd_socket=gram, dogstatsd_stream_socket=stream)
    try:
        for url in (f"unixgram://{gram}", f"unixstream://{stream}"):
            out, err, code = await run_cli(reactor, "replay", str(path), "--to", url, "--speed", "100")
            assert (code, out.strip()) == (0, f"2 packets sent to {url}"), err
        await wait_for(reactor, lambda: started.service.telemetry.get("packets", "transport:uds") >= 4)
        batch = await with_deadline(reactor, started.service.flush(final=True))
        totals = {s.name: sum(v for _, v in s.points) * s.interval for s in batch.series if s.name.startswith("uds.")}
        assert totals == {"uds.a": 2.0, "uds.b": 10.0}
    finally:
        await started.stop()


@pytest_twisted.ensureDeferred
async def test_page_files_recent_flushes_and_drops(server, reactor):
    response, body = await server.request("/")
    assert response.code == 200 and b'<script src="/app.js"' in body
    assert response.headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert b"script-src 'self'" in response.headers.getRawHeaders(b"content-security-policy")[0]
    for path, kind in (("/app.js", b"text/javascript; charset=utf-8"), ("/app.css", b"text/css; charset=utf-8")):
        response, body = await server.request(path)
        assert response.code == 200 and body and response.headers.getRawHeaders(b"content-type") == [kind]

    # Flushes are recorded only while the page is watched (a /recent request starts that).
    server.send(b"unwatched:1|g")
    await wait_for(reactor, lambda: server.service.telemetry.get("packets", "transport:udp") >= 1)
    await with_deadline(reactor, server.service.flush(final=True))
    assert (await server.json("/recent"))["series"] == []
    for sent, value in enumerate((3, 5), 2):
        server.send(b"watched.gauge:%d|g|#k:v" % value, b"_sc|db|2|m:down", b"oops")
        await wait_for(reactor, lambda n=sent: server.service.telemetry.get("packets", "transport:udp") >= n)
        await with_deadline(reactor, server.service.flush(final=True))
    await wait_for(reactor, lambda: server.service.admin.recent.rows)
    recent = await server.json("/recent?q=k:v")
    (row,) = recent["series"]
    assert (row["name"], row["type"], row["tags"], row["last"], row["history"]) == (
        "watched.gauge",
        "gauge",
        ["k:v"],
        5.0,
        [3.0, 5.0],
    )
    assert [(c["name"], c["status"], c["message"]) for c in recent["service_checks"]] == [("db", 2, "down")] * 2
    drops = await server.json("/drops")
    assert drops["dropped"] == {"metric_no_pipe": 2}
    assert drops["recent"][0]["line"] == "oops" and drops["recent"][0]["reason"] == "metric_no_pipe"
    await server.json("/recent?n=0", expect=400)
