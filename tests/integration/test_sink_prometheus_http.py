"""The Prometheus sink on a real loopback port: fetched with twisted.web's Agent, and scraped by a
real Prometheus server whose HTTP API must return exactly the values the sink was fed.

The Prometheus test needs the ``prometheus`` binary (Debian's ``prometheus`` package) and is
skipped where it is not installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import urlencode

import pytest
import pytest_twisted
from helpers import wait_for, with_deadline
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, error, protocol, task
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone

from twisted_statsd.core.model import SERIES_GAUGE, SERIES_RATE, FlushBatch, Series, SketchSeries
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.errors import StartupError
from twisted_statsd.sinks.prometheus import CONTENT_TYPE, PrometheusSink
from twisted_statsd.telemetry import Telemetry

PROMETHEUS = shutil.which("prometheus")


def sketch_of(values):
    sketch = Sketch()
    for v in values:
        sketch.add(float(v))
    return sketch


def first_batch() -> FlushBatch:
    return FlushBatch(
        100.0,
        series=[
            Series("page.views", SERIES_RATE, [(80, 0.5), (90, 0.2)], ("env:test", "page:home"), "web1"),
            Series("queue.size", SERIES_GAUGE, [(90, 7.0)], ("queue:a", 'note:say "hi"\\'), "web1"),
        ],
        sketches=[SketchSeries("latency", [(90, sketch_of(range(1, 101)))], ("env:test",), "web1")],
    )


def second_batch() -> FlushBatch:
    views = Series("page.views", SERIES_RATE, [(100, 0.3)], ("env:test", "page:home"), "web1")
    return FlushBatch(110.0, series=[views])


async def start_sink(reactor, **options) -> PrometheusSink:
    sink = PrometheusSink(reactor, Telemetry(), port=0, **options)
    sink.privilegedStartService()
    sink.startService()
    return sink


@pytest_twisted.async_yield_fixture
async def agent(reactor):
    """An Agent whose pooled connections are closed (and waited for) at teardown."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield Agent(reactor, pool=pool)
    await with_deadline(reactor, pool.closeCachedConnections())


class _Body(protocol.Protocol):
    """Collects a response body (readBody warns about transports without abortConnection)."""

    def __init__(self, done: defer.Deferred):
        self.done, self.parts = done, []

    def dataReceived(self, data):
        self.parts.append(data)

    def connectionLost(self, reason):
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


async def fetch(reactor, agent, url: str):
    response = await with_deadline(reactor, agent.request(b"GET", url.encode("ascii")))
    done = defer.Deferred()
    response.deliverBody(_Body(done))
    return response, await with_deadline(reactor, done)


@pytest_twisted.ensureDeferred
async def test_metrics_are_served_over_http(reactor, agent):
    sink = await start_sink(reactor)
    try:
        sink.write(first_batch())
        url = f"http://127.0.0.1:{sink.address.port}"
        response, body = await fetch(reactor, agent, url + "/metrics")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [CONTENT_TYPE]
        families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
        assert {name: f.type for name, f in families.items()} == {
            "latency": "summary",
            "page_views": "counter",
            "queue_size": "gauge",
        }
        (views,) = families["page_views"].samples
        assert (views.name, views.labels, views.value) == (
            "page_views_total",
            {"env": "test", "page": "home", "host": "web1"},
            7.0,
        )
        response, _ = await fetch(reactor, agent, url + "/")
        assert response.code == 404
        assert sink.telemetry.get("sink_scrapes", "sink:prometheus") == 1
    finally:
        # The pool still holds a connection: stopping must close it and wait for it.
        await with_deadline(reactor, sink.stopService())
    assert sink.address is None


# -- a real Prometheus server -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus_dir():
    path = tempfile.mkdtemp(prefix="prom")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class PrometheusServer:
    """A Prometheus subprocess scraping the given targets (job name -> port) every 250 ms.

    Its first scrape waits for target discovery, which Prometheus throttles to 5 s (not
    configurable); a short interval keeps the rest of the test (the first scrape's offset
    within the interval, the scrape after the second flush) well under a second.
    """

    def __init__(self, workdir: str, targets: dict[str, int]):
        self.port = free_port()
        self.log_path = f"{workdir}/prometheus.log"
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            for job, port in targets.items()
        )
        with open(f"{workdir}/prometheus.yml", "w") as f:
            f.write(f"global:\n  scrape_interval: 250ms\n  scrape_timeout: 250ms\nscrape_configs:\n{jobs}")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={workdir}/prometheus.yml",
                    f"--storage.tsdb.path={workdir}/data",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def url(self, path: str, **params) -> str:
        return f"http://127.0.0.1:{self.port}{path}" + ("?" + urlencode(params) if params else "")


async def poll(reactor, agent, server: PrometheusServer, path: str, check, timeout: float = 20.0, **params):
    """GET ``path`` until ``check(data)`` returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"prometheus exited:\n{server.log()}"
        try:
            _, body = await fetch(reactor, agent, server.url(path, **params))
            last = json.loads(body)
            found = check(last["data"])
            if found is not None:
                return found
        except error.ConnectionRefusedError:
            pass  # not listening yet
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"{path} {params} not as expected within {timeout} s; last answer {last}\n{server.log()}")


def targets_up(data):
    targets = data["activeTargets"]
    return True if targets and all(t["health"] == "up" for t in targets) else None


async def query(reactor, agent, server, promql: str, expected_count: int = 1):
    """The {labels: value} answer of an instant query, once it has ``expected_count`` series."""

    def answer(data):
        result = data["result"]
        if len(result) != expected_count:
            return None
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}

    return await poll(reactor, agent, server, "/api/v1/query", answer, query=promql)


def labels(**extra):
    return frozenset({"host": "web1", "env": "test", "instance": extra.pop("instance"), **extra}.items())


@pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus binary (Debian package 'prometheus')")
@pytest_twisted.ensureDeferred
async def test_a_real_prometheus_scrapes_exact_values(reactor, agent, prometheus_dir):
    summary = await start_sink(reactor, quantiles=(0.5, 0.99))
    histogram = await start_sink(reactor, distribution_as="histogram", buckets=(10.5, 50.5, 100.0))
    server = None
    try:
        for sink in (summary, histogram):
            sink.write(first_batch())
        server = PrometheusServer(
            prometheus_dir, {"summary": summary.address.port, "histogram": histogram.address.port}
        )
        await poll(reactor, agent, server, "/api/v1/targets", targets_up)
        s_inst = f"127.0.0.1:{summary.address.port}"

        views = await query(reactor, agent, server, 'page_views_total{job="summary"}')
        assert views == {labels(__name__="page_views_total", job="summary", page="home", instance=s_inst): 7.0}
        queue = await query(reactor, agent, server, 'queue_size{job="summary"}')
        assert queue == {
            frozenset(
                {
                    "__name__": "queue_size",
                    "job": "summary",
                    "instance": s_inst,
                    "host": "web1",
                    "queue": "a",
                    "note": 'say "hi"\\',
                }.items()
            ): 7.0,
        }
        expected = sketch_of(range(1, 101))
        quantiles = await query(reactor, agent, server, 'latency{job="summary"}', expected_count=2)
        assert quantiles == {
            labels(__name__="latency", job="summary", quantile=q, instance=s_inst): expected.quantile(float(q))
            for q in ("0.5", "0.99")
        }
        totals = await query(reactor, agent, server, '{__name__=~"latency_(sum|count)",job="summary"}', 2)
        assert totals == {
            labels(__name__="latency_sum", job="summary", instance=s_inst): 5050.0,
            labels(__name__="latency_count", job="summary", instance=s_inst): 100.0,
        }
        buckets = await query(reactor, agent, server, 'latency_bucket{job="histogram"}', expected_count=4)
        # Bounds between samples: a sample within 1/128 of a bound may fall on either side of it.
        assert {float(dict(k)["le"]): v for k, v in buckets.items()} == {
            10.5: 10.0,
            50.5: 50.0,
            100.0: 100.0,
            float("inf"): 100.0,
        }

        # The next flush moves the counter on: 7 + 0.3 * 10.
        summary.write(second_batch())
        moved = await poll(
            reactor,
            agent,
            server,
            "/api/v1/query",
            lambda d: (d["result"] and float(d["result"][0]["value"][1]) == 10.0) or None,
            query='page_views_total{job="summary"}',
        )
        assert moved is True
    finally:
        if server is not None:
            server.stop()
        for sink in (summary, histogram):
            await with_deadline(reactor, sink.stopService())


@pytest_twisted.ensureDeferred
async def test_a_request_with_a_body_is_refused_at_its_headers(reactor):
    """Every input has a size limit: nothing a client sends to /metrics is spooled."""
    import socket

    from helpers import wait_for

    sink = await start_sink(reactor)
    try:
        replies = []

        def ask():
            with socket.create_connection(("127.0.0.1", sink.address.port), timeout=5) as conn:
                conn.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\nxxxx")
                replies.append(conn.recv(4096))

        from twisted.internet import threads

        await threads.deferToThread(ask)
        assert replies[0].startswith(b"HTTP/1.1 413")
        await wait_for(reactor, lambda: not sink._site.channels)
    finally:
        await sink.stopService()


@pytest_twisted.ensureDeferred
async def test_a_busy_port_fails_the_bind_synchronously(reactor):
    """The endpoint's listen has fired by the time bind returns: twistd sees the error at start."""
    taken = await start_sink(reactor)
    try:
        sink = PrometheusSink(reactor, Telemetry(), port=taken.address.port)
        with pytest.raises(StartupError, match="Address already in use") as raised:
            sink.privilegedStartService()
        assert isinstance(raised.value.__cause__, error.CannotListenError)
        assert not sink.bound
    finally:
        await taken.stopService()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
@pytest_twisted.ensureDeferred
async def test_an_ipv6_bind_host_goes_through_the_endpoint_string(reactor, agent):
    try:
        sink = await start_sink(reactor, bind_host="::1")
    except error.CannotListenError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert sink.address.host == "::1"
        response, _body = await fetch(reactor, agent, f"http://[::1]:{sink.address.port}/metrics")
        assert response.code == 200
    finally:
        await with_deadline(reactor, sink.stopService())


class _Trickler(protocol.Protocol):
    """A slow client: one byte of a request at a time, on a timer, never a complete request."""

    def __init__(self, reactor, every: float):
        self.reactor, self.every = reactor, every
        self.lost: defer.Deferred = defer.Deferred()
        self._sending = None

    def connectionMade(self):
        self._sending = task.LoopingCall(self.transport.write, b"G")
        self._sending.clock = self.reactor
        self._sending.start(self.every)

    def connectionLost(self, reason):
        if self._sending is not None and self._sending.running:
            self._sending.stop()
        self.lost.callback(None)


async def open_tricklers(reactor, port: int, count: int, every: float) -> list[_Trickler]:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return [
        await with_deadline(reactor, endpoints.connectProtocol(endpoint, _Trickler(reactor, every)))
        for _ in range(count)
    ]


async def close_all(reactor, clients) -> None:
    for client in clients:
        if not client.lost.called:
            client.transport.abortConnection()
    await with_deadline(reactor, defer.gatherResults([client.lost for client in clients]))


@pytest_twisted.ensureDeferred
async def test_slow_clients_holding_every_slot_do_not_starve_a_scrape(reactor, agent):
    """Issue 12 defect 6: 64 connections trickling a byte at a time used to hold every slot, so every
    scrape was refused; now a new connection evicts the oldest one that has no complete request."""
    from twisted_statsd.sinks.prometheus import MAX_CONNECTIONS

    sink = await start_sink(reactor)
    slow = []
    try:
        sink.write(first_batch())
        slow = await open_tricklers(reactor, sink.address.port, MAX_CONNECTIONS, every=0.2)
        await wait_for(reactor, lambda: len(sink._site.channels) == MAX_CONNECTIONS)
        started = time.monotonic()
        response, body = await fetch(reactor, agent, f"http://127.0.0.1:{sink.address.port}/metrics")
        assert response.code == 200
        assert b"page_views_total" in body
        assert time.monotonic() - started < 2.0
        assert sink.telemetry.get("sink_connections_evicted", "sink:prometheus") >= 1
        # The evicted slow client is the oldest one.
        await with_deadline(reactor, slow[0].lost)
    finally:
        await close_all(reactor, slow)
        await with_deadline(reactor, sink.stopService())


@pytest_twisted.ensureDeferred
async def test_a_trickling_client_is_cut_off_at_the_request_deadline(reactor):
    """A byte every 100 ms no longer keeps a connection: it has the deadline to finish its request."""
    sink = await start_sink(reactor, _request_deadline=0.5)
    slow = []
    try:
        started = time.monotonic()
        slow = await open_tricklers(reactor, sink.address.port, 1, every=0.1)
        await with_deadline(reactor, slow[0].lost, timeout=5.0)
        assert 0.4 < time.monotonic() - started < 3.0
        assert sink.telemetry.get("sink_request_timeouts", "sink:prometheus") == 1
    finally:
        await close_all(reactor, slow)
        await with_deadline(reactor, sink.stopService())


@pytest_twisted.ensureDeferred
async def test_a_response_the_client_does_not_read_is_abandoned_at_the_deadline(reactor):
    """A client that asks and never reads (nor asks again) keeps its connection only until the deadline."""
    sink = await start_sink(reactor, _request_deadline=0.5)
    try:
        sink.write(first_batch())
        conn = socket.create_connection(("127.0.0.1", sink.address.port), timeout=5)
        try:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_for(reactor, lambda: sink.telemetry.get("sink_scrapes", "sink:prometheus") == 1)
            assert len(sink._site.channels) == 1
            await wait_for(reactor, lambda: not sink._site.channels, timeout=5.0)
            assert sink.telemetry.get("sink_request_timeouts", "sink:prometheus") == 1
        finally:
            conn.close()
    finally:
        await with_deadline(reactor, sink.stopService())
