"""Backends failing under the sinks, over real sockets (issue 12 item 5): down at start, dying
mid-run, accepting but never reading.  Intake is unaffected, what fits the sink's bound is
delivered once the backend recovers, and what exceeds it is dropped and counted by reason.

The Prometheus sink is pulled, not pushed: its faults are slow clients
(tests/integration/test_sink_prometheus_http.py); answering errors for minutes is in
tests/unit/test_sink_faults.py, on a task.Clock.
"""

from __future__ import annotations

import socket

import pytest_twisted
from helpers import counted, wait_for, with_deadline
from integration.test_sink_datadog import TAGS as DATADOG_TAGS
from integration.test_sink_datadog import Server, gauge_batch
from integration.test_sink_datadog import make_sink as make_datadog_sink
from twisted.internet import protocol

from twisted_statsd import build_service, load_config
from twisted_statsd.core.model import SERIES_GAUGE, FlushBatch, Series
from twisted_statsd.sinks.graphite import GraphiteSink
from twisted_statsd.telemetry import Telemetry

GRAPHITE = ("sink:graphite",)


class _Peer(protocol.Protocol):
    """One accepted connection: keeps what it reads; ``stalled`` ones stop reading at once."""

    def connectionMade(self):
        self.factory.peers.append(self)
        if self.factory.stalled:
            self.transport.pauseProducing()

    def dataReceived(self, data):
        self.factory.received.append(data)

    def connectionLost(self, reason):
        self.factory.peers.remove(self)


class TcpBackend(protocol.Factory):
    """A plain TCP backend on loopback that can stall (accept, never read), resume, die and come back."""

    protocol = _Peer
    noisy = False

    def __init__(self, reactor, stalled: bool = False):
        self.reactor = reactor
        self.stalled = stalled
        self.peers: list[_Peer] = []
        self.received: list[bytes] = []
        self.port = None

    def listen(self, number: int = 0) -> int:
        self.port = self.reactor.listenTCP(number, self, interface="127.0.0.1")
        if self.stalled:
            # Accepted sockets inherit it: the kernel holds little for a backend that never reads.
            self.port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return self.port.getHost().port

    def resume(self) -> None:
        self.stalled = False
        for peer in self.peers:
            peer.transport.resumeProducing()

    def lines(self) -> list[str]:
        return b"".join(self.received).decode().splitlines()

    async def die(self) -> None:
        """Stop listening and drop every connection, as a crashed process would."""
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        for peer in list(self.peers):
            peer.transport.abortConnection()
        await wait_for(self.reactor, lambda: not self.peers)


def batch(name: str, count: int, ts: int = 1700000000) -> FlushBatch:
    return FlushBatch(
        float(ts), series=[Series(f"{name}.{i}", SERIES_GAUGE, [(ts, 1.0)], (), "h") for i in range(count)]
    )


# -- graphite -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_graphite_down_at_start_then_dying_mid_run_loses_nothing_within_the_buffer(reactor):
    backend = TcpBackend(reactor)
    number = backend.listen()
    await backend.die()  # down at start
    telemetry = Telemetry()
    sink = GraphiteSink(
        reactor, telemetry, port=number, tags="name", host_placement="none",
        reconnect_initial_delay=0.05, reconnect_max_delay=0.2,
    )  # fmt: skip
    sink.startService()
    try:
        sink.write(batch("before", 100))
        assert sink.buffered == 100 and not sink.connected
        backend.listen(number)
        await wait_for(reactor, lambda: len(backend.lines()) == 100)
        await backend.die()  # mid-run
        await wait_for(reactor, lambda: not sink.connected)
        sink.write(batch("during", 100))
        assert sink.buffered == 100
        backend.listen(number)
        await wait_for(reactor, lambda: len(backend.lines()) == 200)
    finally:
        await with_deadline(reactor, sink.stopService())
        await backend.die()
    names = [line.split()[0] for line in backend.lines()]
    assert names == [f"before.{i}" for i in range(100)] + [f"during.{i}" for i in range(100)]
    assert telemetry.get("sink_connects", *GRAPHITE) == 2
    assert telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_graphite_that_never_reads_costs_old_lines_not_intake(reactor):
    """Carbon accepts and stops reading: the socket buffers fill, the sink pauses, its bounded buffer
    drops the oldest lines (counted as graphite_buffer_full) while every packet is still read and
    aggregated; once carbon reads again, the newest lines arrive."""
    backend = TcpBackend(reactor, stalled=True)
    number = backend.listen()
    config = {
        "dogstatsd_port": "__random__",
        "dogstatsd_so_rcvbuf": 4 * 1024 * 1024,
        "hostname": "h",
        "flush_interval": 3600,
        "sinks": [{"type": "graphite", "port": number, "tags": "name", "max_buffered_lines": 5000}],
    }
    server = build_service(load_config(data=config), reactor)
    server.startService()
    (sink,) = [s for s in server if isinstance(s, GraphiteSink)]
    telemetry = server.telemetry
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await wait_for(reactor, lambda: sink.connected)
        sent = produced = 0
        pad = "x" * 150
        for round_ in range(8):  # 8 flushes of 10,000 lines of 180 bytes: more than the kernel buffers hold
            for first in range(0, 10_000, 20):
                lines = [f"r{round_}.{pad}.m{i}:1|g" for i in range(first, first + 20)]
                sender.sendto("\n".join(lines).encode(), ("127.0.0.1", server.udp.address.port))
                sent += 20
                if first % 2000 == 0:
                    server.udp.read_pending()
            # final: every bucket, open ones included, goes to the sink now.
            flushed = await with_deadline(reactor, server.flush(final=True))
            produced += sum(1 for _ in sink.formatter.lines(flushed))
            # Intake is unaffected: every metric sent so far was read and counted.
            assert counted(server) == sent
        dropped = telemetry.dropped("graphite_buffer_full")
        assert dropped > 0
        assert sink.buffered == 5000
        backend.resume()
        await wait_for(reactor, lambda: sink.buffered == 0)
        handed = telemetry.get("sink_sent", *GRAPHITE)
        await wait_for(reactor, lambda: len(backend.lines()) == handed)
        received = backend.lines()
    finally:
        sender.close()
        backend.resume()
        await with_deadline(reactor, server.stopService())
        await backend.die()
    assert telemetry.dropped("udp_kernel") == 0
    # Every line is either delivered or dropped and counted, and the newest are the ones kept.
    assert len(received) + dropped == produced
    assert received[-1] == list(sink.formatter.lines(flushed))[-1].rstrip("\n")


# -- the HTTP sinks (datadog here; otlp shares the delivery) --------------------


@pytest_twisted.ensureDeferred
async def test_datadog_that_accepts_but_never_answers_is_retried_after_timeouts_until_it_recovers(reactor):
    stalled = TcpBackend(reactor, stalled=True)
    number = stalled.listen()
    sink, telemetry = make_datadog_sink(reactor, number, timeout=0.3)
    server = Server(reactor)
    try:
        written = sink.write(gauge_batch(1))
        await wait_for(reactor, lambda: telemetry.get("sink_retries", *DATADOG_TAGS) >= 2)
        assert not written.called
        await stalled.die()
        server.listen(number)
        await with_deadline(reactor, written)
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
        await stalled.die()
    (only,) = server.recorder.requests
    assert only["body"]["series"][0]["metric"] == "m"
    assert telemetry.get("sink_sent", *DATADOG_TAGS) == 1
    assert telemetry.total_dropped() == 0


async def kill(server: Server) -> None:
    """Stop listening and drop the open (pooled) connections, as a crashed process would."""
    for wrapper in list(server.factory.protocols):
        wrapper.transport.abortConnection()
    await server.close()


@pytest_twisted.ensureDeferred
async def test_datadog_dying_mid_run_gets_the_next_flush_once_it_is_back(reactor):
    """The pooled connection dies with the server: the next flush is retried until it is back."""
    server = Server(reactor)
    number = server.listen()
    sink, telemetry = make_datadog_sink(reactor, number)
    try:
        await with_deadline(reactor, sink.write(gauge_batch(1)))
        await kill(server)
        written = sink.write(gauge_batch(2))
        await wait_for(reactor, lambda: telemetry.get("sink_retries", *DATADOG_TAGS) >= 2)
        server.listen(number)
        await with_deadline(reactor, written)
    finally:
        await with_deadline(reactor, sink.stopService())
        await server.close()
    assert [r["body"]["series"][0]["points"][0]["value"] for r in server.recorder.requests] == [1.0, 2.0]
    assert telemetry.get("sink_sent", *DATADOG_TAGS) == 2
    assert telemetry.total_dropped() == 0
