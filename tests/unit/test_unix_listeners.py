"""The Unix listeners with fakes: stream protocol on StringTransport, datagram reader on a socketpair."""

from __future__ import annotations

import os
import socket
import stat
import struct

import pytest
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyObject

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.listeners import sockets
from twisted_statsd.listeners.memory import ReadThrottle
from twisted_statsd.listeners.unixgram import (
    DatagramSocketReader,
    UnixDatagramListenerService,
    UnixDatagramReceiver,
)
from twisted_statsd.listeners.unixstream import FramedStreamFactory
from twisted_statsd.telemetry import Telemetry


class FakeBuffer(list):
    def __init__(self, origin):
        super().__init__()
        self.origin = origin

    append = list.append


class FakeIntake:
    """Stands in for IntakeService: hands out recording buffers and records releases."""

    def __init__(self):
        self.buffers: list[FakeBuffer] = []
        self.released: list[FakeBuffer] = []

    def buffer_for(self, transport, origin=None):
        assert transport == "uds"
        buffer = FakeBuffer(origin)
        self.buffers.append(buffer)
        return buffer

    def release(self, buffer):
        self.released.append(buffer)


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


@pytest.fixture
def telemetry():
    return Telemetry()


def stream_factory(telemetry, **kwargs):
    intake = FakeIntake()
    kwargs.setdefault("max_frame", 64)
    kwargs.setdefault("clock", MemoryReactorClock())
    factory = FramedStreamFactory(intake, RateLimitedReporter(telemetry), **kwargs)
    return factory, intake


def connect(factory):
    protocol = factory.buildProtocol(None)
    if protocol is None:
        return None, None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


# -- stream ----------------------------------------------------------------------


def test_stream_frames_split_across_reads_reach_the_connection_buffer(telemetry):
    factory, intake = stream_factory(telemetry)
    protocol, _transport = connect(factory)
    data = frame(b"a:1|c\nb:2|c") + frame(b"c:3|g")
    for i in range(0, len(data), 3):
        protocol.dataReceived(data[i : i + 3])
    (buffer,) = intake.buffers
    assert buffer == [b"a:1|c\nb:2|c", b"c:3|g"]
    assert telemetry.gauges[("uds_connections", ())] == 1
    protocol.connectionLost(None)
    assert intake.released == [buffer]
    assert telemetry.gauges[("uds_connections", ())] == 0
    assert telemetry.total_dropped() == 0


def test_an_oversized_frame_closes_the_connection_and_keeps_earlier_frames(telemetry):
    factory, intake = stream_factory(telemetry)
    protocol, transport = connect(factory)
    protocol.dataReceived(frame(b"a:1|c") + frame(b"x" * 65) + frame(b"b:1|c"))
    assert intake.buffers[0] == [b"a:1|c"]
    assert transport.disconnecting
    assert telemetry.dropped("stream_frame_too_large") == 1
    protocol.dataReceived(frame(b"late:1|c"))  # a read already under way
    protocol.connectionLost(None)
    assert intake.buffers[0] == [b"a:1|c"]
    assert telemetry.dropped("stream_frame_too_large") == 1
    assert intake.released == intake.buffers
    assert telemetry.dropped("stream_frame_truncated") == 0


def test_the_log_shows_the_refused_payload_only_when_asked(telemetry):
    from twisted.logger import globalLogPublisher

    for log_too_big, expected in [(False, struct.pack("<I", 65)), (True, struct.pack("<I", 65) + b"x" * 65)]:
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            factory, _ = stream_factory(Telemetry(), log_too_big=log_too_big)
            protocol, _ = connect(factory)
            protocol.dataReceived(frame(b"x" * 65))
        finally:
            globalLogPublisher.removeObserver(events.append)
        (event,) = [e for e in events if e.get("reason") == "stream_frame_too_large"]
        assert event["sample"] == expected
        assert "over dogstatsd_buffer_size (64)" in event["message"]


def test_a_connection_closed_mid_frame_is_counted(telemetry):
    factory, intake = stream_factory(telemetry)
    protocol, _ = connect(factory)
    protocol.dataReceived(frame(b"a:1|c") + frame(b"b:1|c")[:6])
    protocol.connectionLost(None)
    assert intake.released[0] == [b"a:1|c"]
    assert telemetry.dropped("stream_frame_truncated") == 1


def test_connections_over_the_cap_are_refused_and_counted(telemetry):
    factory, _intake = stream_factory(telemetry, max_connections=2)
    first, _ = connect(factory)
    connect(factory)
    assert connect(factory) == (None, None)
    assert telemetry.dropped("stream_connection_refused") == 1
    first.connectionLost(None)
    assert connect(factory)[0] is not None
    assert telemetry.get("uds_connections_accepted") == 3


def test_tracker_waits_for_every_connection(telemetry):
    factory, _ = stream_factory(telemetry)
    a, _ = connect(factory)
    b, _ = connect(factory)
    waiting = factory.tracker.wait_empty()
    a.connectionLost(None)
    assert not waiting.called
    b.connectionLost(None)
    assert waiting.called
    assert factory.tracker.wait_empty().called


def test_idle_and_half_frame_connections_are_closed_after_the_timeout(telemetry):
    """Issue 12 defect 5: a local user can no longer hold stream connections open without sending frames."""
    from twisted.internet.task import Clock

    clock = Clock()
    factory, _ = stream_factory(telemetry, clock=clock, idle_timeout=4)
    factory.tracker.start()
    silent, silent_transport = connect(factory)
    trickle, trickle_transport = connect(factory)
    busy, busy_transport = connect(factory)
    for _ in range(10):
        clock.advance(0.5)
        trickle.dataReceived(struct.pack("<I", 50) if clock.seconds() == 0.5 else b"x")  # a frame never finished
        busy.dataReceived(frame(b"a:1|c"))
    assert silent_transport.disconnecting and trickle_transport.disconnecting
    assert not busy_transport.disconnecting
    assert telemetry.get("uds_connections_idle_closed") == 2
    for protocol in (silent, trickle, busy):
        protocol.connectionLost(None)
    assert telemetry.dropped("stream_frame_truncated") == 1
    factory.tracker.stop()


def test_one_user_cannot_hold_more_than_its_share_of_connections(telemetry, monkeypatch):
    """Issue 12 defect 5: the per-user cap (peer uid from SO_PEERCRED) keeps one user from taking every slot."""
    uids = iter([1000, 1000, 1000, 2000])
    monkeypatch.setattr(sockets, "peer_credentials", lambda handle: sockets.Credentials(pid=1, uid=next(uids), gid=1))
    factory, _intake = stream_factory(telemetry, max_connections=10, max_connections_per_user=2)

    class UnixTransport(StringTransport):
        def getHandle(self):
            return None  # read by the patched peer_credentials

    def connect_unix():
        protocol = factory.buildProtocol(None)
        transport = UnixTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    first, _ = connect_unix()
    connect_unix()
    third, third_transport = connect_unix()
    assert third_transport.disconnecting
    assert telemetry.dropped("stream_connection_refused_user") == 1
    _other, other_transport = connect_unix()  # another user still gets in
    assert not other_transport.disconnecting
    third.connectionLost(None)
    first.connectionLost(None)
    assert factory._per_user == {1000: 1, 2000: 1}


def test_a_throttled_connection_is_paused_after_each_read(telemetry):
    clock = MemoryReactorClock()
    throttle = ReadThrottle(clock, telemetry)
    factory, _ = stream_factory(telemetry, throttle=throttle)
    protocol, transport = connect(factory)
    protocol.dataReceived(frame(b"a:1|c"))
    assert transport.producerState == "producing"
    throttle.set_delay(0.01)
    protocol.dataReceived(frame(b"a:1|c"))
    assert transport.producerState == "paused"
    clock.advance(0.01)
    assert transport.producerState == "producing"
    protocol.dataReceived(frame(b"a:1|c"))
    protocol.connectionLost(None)
    throttle.release()
    assert transport.producerState == "paused"  # a closed connection is not resumed


# -- datagram receiver --------------------------------------------------------------


class FakeResolver:
    def __init__(self, origins):
        self.origins = origins
        self.live = set()

    def origin(self, pid, now):
        return self.origins.get(pid)

    def expire(self, now):
        return self.live


def ucred(pid):
    return [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("=iII", pid, 0, 0))]


def test_datagrams_go_to_one_buffer_without_origin_detection(telemetry):
    intake = FakeIntake()
    receiver = UnixDatagramReceiver(intake, 100, RateLimitedReporter(telemetry))
    receiver.open()
    receiver.datagram_received(b"a:1|c", [], 0, 0.0)
    receiver.datagram_received(b"", [], 0, 0.0)
    assert intake.buffers == [[b"a:1|c"]]
    receiver.close()
    assert intake.released == intake.buffers


def test_a_truncated_datagram_keeps_its_complete_lines(telemetry):
    intake = FakeIntake()
    receiver = UnixDatagramReceiver(intake, 12, RateLimitedReporter(telemetry))
    receiver.open()
    receiver.datagram_received(b"a:1|c\nb:22|", [], socket.MSG_TRUNC, 0.0)
    receiver.datagram_received(b"aaaaaaaaaaaa", [], socket.MSG_TRUNC, 0.0)
    assert intake.buffers[0] == [b"a:1|c\n"]
    assert telemetry.dropped("datagram_truncated") == 2


def test_with_origin_detection_each_container_gets_its_buffer(telemetry):
    intake = FakeIntake()
    resolver = FakeResolver({10: b"c1", 11: b"c1", 12: b"c2"})
    receiver = UnixDatagramReceiver(intake, 100, RateLimitedReporter(telemetry), resolver)
    receiver.open()
    for pid, data in [(10, b"a:1|c"), (11, b"b:1|c"), (12, b"c:1|c"), (13, b"d:1|c")]:
        receiver.datagram_received(data, ucred(pid), 0, 0.0)
    by_origin = {b.origin: list(b) for b in intake.buffers}
    assert by_origin == {None: [b"d:1|c"], b"c1": [b"a:1|c", b"b:1|c"], b"c2": [b"c:1|c"]}
    resolver.live = {b"c2"}
    receiver.expire_origins(100.0)
    assert [b.origin for b in intake.released] == [b"c1"]
    assert set(receiver.buffers) == {None, b"c2"}


# -- datagram socket reader ------------------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def reader_for(sock, telemetry, **kwargs):
    reactor = MemoryReactorClock()
    got = []
    reader = DatagramSocketReader(
        reactor, sock, lambda *args: got.append(args), RateLimitedReporter(telemetry), buffer_size=100, **kwargs
    )
    return reader, reactor, got


def test_reader_provides_ireaddescriptor(pair, telemetry):
    reader, reactor, _ = reader_for(pair[0], telemetry)
    verifyObject(IReadDescriptor, reader)
    reader.start_reading()
    assert reactor.getReaders() == [reader]
    reader.close()
    assert reactor.getReaders() == [] and pair[0].fileno() == -1


def test_reader_reads_until_the_queue_is_empty(pair, telemetry):
    receiver, sender = pair
    reader, reactor, got = reader_for(receiver, telemetry)
    for i in range(8):
        sender.send(b"m:%d|c" % i)
    reactor.advance(5.0)
    assert reader.doRead() is None
    assert [g[0] for g in got] == [b"m:%d|c" % i for i in range(8)]
    assert all(g[3] == 5.0 for g in got)  # one clock reading per round
    assert reader.doRead() is None  # nothing left: EAGAIN ends the round quietly


def test_reader_stops_at_its_byte_budget(pair, telemetry):
    receiver, sender = pair
    reader, _, got = reader_for(receiver, telemetry, budget=250)
    for _ in range(8):
        sender.send(b"x" * 100)
    reader.doRead()
    assert len(got) == 3
    reader.doRead()
    assert len(got) == 6


def test_reader_reports_truncation_flag_and_credentials(pair, telemetry):
    receiver, sender = pair
    sockets.enable_passcred(receiver)
    reader, _, got = reader_for(receiver, telemetry, ancillary_size=sockets.CREDENTIALS_SPACE)
    sender.send(b"y" * 150)
    reader.doRead()
    ((data, ancdata, flags, _),) = got
    assert len(data) == 100 and flags & socket.MSG_TRUNC
    assert sockets.credentials_from_ancillary(ancdata).pid == os.getpid()


def test_a_throttled_reader_leaves_the_reactor_for_the_pause(pair, telemetry):
    receiver, _sender = pair
    reactor = MemoryReactorClock()
    throttle = ReadThrottle(reactor, telemetry)
    reader = DatagramSocketReader(
        reactor, receiver, lambda *a: None, RateLimitedReporter(telemetry), buffer_size=100, throttle=throttle
    )
    reader.start_reading()
    throttle.set_delay(0.5)
    reader.doRead()
    assert reactor.getReaders() == []
    reactor.advance(0.5)
    assert reactor.getReaders() == [reader]
    reader.doRead()
    reader.close()
    reactor.advance(0.5)
    assert reactor.getReaders() == []  # a closed reader is not resumed


def test_datagram_service_binds_reads_and_cleans_up(short_tmpdir, telemetry):
    path = os.path.join(short_tmpdir, "g.sock")
    reactor = MemoryReactorClock()
    intake = FakeIntake()
    receiver = UnixDatagramReceiver(intake, 100, RateLimitedReporter(telemetry))
    service = UnixDatagramListenerService(reactor, receiver, path, mode=0o720)
    service.privilegedStartService()
    service.startService()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o720
    assert reactor.getReaders() == [service.reader]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"before:1|c", path)
        service.read_pending()
        client.sendto(b"queued:1|c", path)
    d = service.stopService()
    assert d.called
    assert intake.buffers[0] == [b"before:1|c", b"queued:1|c"]
    assert intake.released == intake.buffers
    assert reactor.getReaders() == [] and not os.path.exists(path)


def test_a_failing_receiver_does_not_stop_the_reader(pair, telemetry, logged_errors):
    receiver, sender = pair
    calls = []

    def receive(data, *rest):
        calls.append(data)
        raise ValueError("bug")

    reader = DatagramSocketReader(
        MemoryReactorClock(), receiver, receive, RateLimitedReporter(telemetry), buffer_size=100
    )
    for _ in range(3):
        sender.send(b"a:1|c")
    reader.doRead()
    assert len(calls) == 3
    assert telemetry.dropped("internal_error") == 3
    assert len(logged_errors.expect("Handling a datagram failed")) == 1


def test_stop_survives_a_socket_file_it_may_not_remove(short_tmpdir, telemetry, monkeypatch):
    """After twistd drops privileges the directory may be read-only to us: closing still happens."""
    path = os.path.join(short_tmpdir, "g.sock")
    reactor = MemoryReactorClock()
    service = UnixDatagramListenerService(
        reactor, UnixDatagramReceiver(FakeIntake(), 100, RateLimitedReporter(telemetry)), path
    )
    service.startService()
    reader = service.reader

    def unlink(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "unlink", unlink)
    assert service.stopService().called
    assert reactor.getReaders() == [] and reader.closed
    monkeypatch.undo()
    os.unlink(path)
