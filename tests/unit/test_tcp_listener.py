"""The TCP listener with fakes: the line decoder alone, the protocol on StringTransport, time on a Clock."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.config import ConfigError, load_config
from twisted_statsd.interfaces import IPacketConsumer
from twisted_statsd.listeners.memory import ReadThrottle
from twisted_statsd.listeners.senders import CACHE_SIZE, SenderAllowList
from twisted_statsd.listeners.tcp import LineDecoder, LineStreamFactory, TLSError, server_tls
from twisted_statsd.listeners.udp import DatagramReceiver
from twisted_statsd.telemetry import Telemetry

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def feed_in_pieces(decoder: LineDecoder, stream: bytes, cuts) -> list[bytes]:
    packets = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        packets.extend(decoder.feed(stream[start:cut]))
        start = cut
    return packets


# -- the line decoder ------------------------------------------------------------------

lines = st.lists(st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30)


@settings(max_examples=300)
@given(
    lines,
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.lists(st.integers(0, 1500)),
    st.booleans(),
)
def test_any_split_hands_on_every_complete_line_once_in_order(complete, tail, cuts, cut_packets):
    """Split or coalesced, the packets are the complete lines; the partial last line is held."""
    stream = b"".join(line + b"\n" for line in complete) + tail
    decoder = LineDecoder(41, cut_packets=cut_packets)
    packets = feed_in_pieces(decoder, stream, [c for c in cuts if c <= len(stream)])
    assert b"".join(packets) == stream[: len(stream) - len(tail)]
    assert all(p.endswith(b"\n") and p for p in packets)
    if cut_packets:
        assert all(len(p) <= 41 for p in packets)
    assert decoder.pending == len(tail)
    assert decoder.error is None


@settings(max_examples=200)
@given(lines, st.integers(41, 200), st.lists(st.integers(0, 1500)), st.booleans())
def test_a_line_too_long_ends_decoding_after_the_lines_before_it(before, length, cuts, cut_packets):
    """A line of 41 bytes is 42 with its newline: longer than the limit of 41."""
    stream = b"".join(line + b"\n" for line in before) + b"x" * length + b"\nafter:1|c\n"
    decoder = LineDecoder(41, cut_packets=cut_packets)
    packets = feed_in_pieces(decoder, stream, [c for c in cuts if c <= len(stream)])
    assert b"".join(packets) == b"".join(line + b"\n" for line in before)
    assert decoder.error.reason == "tcp_line_too_long"
    assert decoder.error.sample.startswith(b"x")
    assert decoder.feed(b"late:1|c\n") == []


def test_many_lines_in_one_read_are_one_packet_and_the_partial_line_waits():
    decoder = LineDecoder(8192)
    assert decoder.feed(b"a:1|c\n" * 100 + b"b:1") == [b"a:1|c\n" * 100]
    assert decoder.pending == 3
    assert decoder.feed(b"|c") == []
    assert decoder.feed(b"\nc:1|c") == [b"b:1|c\n"]
    assert decoder.pending_sample == b"c:1|c"


def test_a_line_that_fills_a_packet_with_its_newline_is_accepted():
    decoder = LineDecoder(10)
    assert decoder.feed(b"x" * 9 + b"\n" + b"y" * 9) == [b"x" * 9 + b"\n"]
    assert decoder.feed(b"\n") == [b"y" * 9 + b"\n"]
    assert decoder.error is None


def test_a_line_too_long_is_refused_before_its_newline_arrives():
    """The decoder never holds more than one permitted line."""
    decoder = LineDecoder(10)
    assert decoder.feed(b"x" * 9) == []
    assert decoder.feed(b"y") == []
    assert decoder.error.reason == "tcp_line_too_long"
    assert decoder.pending == 0


def test_a_large_read_is_one_packet():
    """The parser handles one large packet faster than many small ones."""
    data = b"".join(b"m%d:1|c\n" % n for n in range(1000)) + b"partial"
    assert LineDecoder(100).feed(data) == [data[: -len(b"partial")]]


def test_when_forwarding_a_large_read_is_cut_into_packets_no_longer_than_the_maximum_at_line_ends():
    """Each packet fits in a datagram of dogstatsd_buffer_size, as the forwarder sends it."""
    decoder = LineDecoder(100, cut_packets=True)
    data = b"".join(b"m%d:1|c\n" % n for n in range(1000))
    packets = decoder.feed(data)
    assert b"".join(packets) == data
    assert all(len(p) <= 100 and p.endswith(b"\n") for p in packets)
    assert all(len(p) > 100 - 9 for p in packets[:-1])  # full but for less than one line (lines <= 9 bytes)


# -- the protocol ------------------------------------------------------------------------


class FakeIntake:
    def __init__(self):
        self.buffers: list[list] = []
        self.released: list[list] = []

    def buffer_for(self, transport, origin=None):
        assert transport == "tcp" and origin is None
        self.buffers.append([])
        return self.buffers[-1]

    def release(self, buffer):
        self.released.append(buffer)


@pytest.fixture
def telemetry():
    return Telemetry()


def tcp_factory(telemetry, **kwargs):
    kwargs.setdefault("max_frame", 64)
    kwargs.setdefault("clock", Clock())
    return LineStreamFactory(FakeIntake(), RateLimitedReporter(telemetry), **kwargs)


def connect(factory, peer=PEER):
    protocol = factory.buildProtocol(peer)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def test_split_and_coalesced_reads_reach_the_connection_buffer(telemetry):
    factory = tcp_factory(telemetry)
    protocol, _ = connect(factory)
    protocol.dataReceived(b"a:1|c\nb:")
    protocol.dataReceived(b"2|c\n")
    protocol.dataReceived(b"c:3|g\nd:4|g\ne:5|g\n")
    (buffer,) = factory.intake.buffers
    assert buffer == [b"a:1|c\n", b"b:2|c\n", b"c:3|g\nd:4|g\ne:5|g\n"]
    assert telemetry.gauges[("tcp_connections", ())] == 1
    protocol.connectionLost(None)
    assert factory.intake.released == [buffer]
    assert telemetry.gauges[("tcp_connections", ())] == 0
    assert telemetry.total_dropped() == 0


def test_a_line_too_long_closes_the_connection_and_is_counted(telemetry):
    factory = tcp_factory(telemetry)
    protocol, transport = connect(factory)
    protocol.dataReceived(b"a:1|c\n" + b"x" * 65 + b"\nb:1|c\n")
    assert factory.intake.buffers[0] == [b"a:1|c\n"]
    assert transport.disconnecting
    assert telemetry.dropped("tcp_line_too_long") == 1
    protocol.dataReceived(b"late:1|c\n")
    protocol.connectionLost(None)
    assert factory.intake.buffers[0] == [b"a:1|c\n"]
    assert telemetry.dropped("tcp_line_too_long") == 1
    assert telemetry.dropped("tcp_line_truncated") == 0


def test_a_connection_closed_after_an_unterminated_line_counts_it(telemetry):
    factory = tcp_factory(telemetry)
    protocol, _ = connect(factory)
    protocol.dataReceived(b"a:1|c\nb:1|")
    protocol.connectionLost(None)
    assert factory.intake.released == [[b"a:1|c\n"]]
    assert telemetry.dropped("tcp_line_truncated") == 1


def test_connections_over_the_cap_are_refused_and_counted(telemetry):
    factory = tcp_factory(telemetry, max_connections=2)
    first, _ = connect(factory)
    connect(factory)
    assert connect(factory) == (None, None)
    assert telemetry.dropped("tcp_connection_refused") == 1
    first.connectionLost(None)
    assert connect(factory)[0] is not None
    assert telemetry.get("tcp_connections_accepted") == 3


def test_an_idle_connection_is_closed_after_the_timeout(telemetry):
    """Checked every quarter timeout: closed between 1 and 1.25 timeouts after its last read."""
    clock = Clock()
    factory = tcp_factory(telemetry, clock=clock, idle_timeout=10)
    factory.tracker.start()
    quiet, quiet_transport = connect(factory)
    busy, busy_transport = connect(factory)
    closed_at = None
    while clock.seconds() < 20:
        clock.advance(0.5)
        busy.dataReceived(b"a:1|c\n")
        if quiet_transport.disconnecting and closed_at is None:
            closed_at = clock.seconds()
    assert 10 <= closed_at <= 12.5
    assert not busy_transport.disconnecting
    assert telemetry.get("tcp_connections_idle_closed") == 1
    quiet.connectionLost(None)
    clock.pump([0.5] * 25)
    assert busy_transport.disconnecting
    assert telemetry.get("tcp_connections_idle_closed") == 2
    busy.connectionLost(None)
    factory.tracker.stop()
    assert not clock.getDelayedCalls()


def test_an_idle_connection_is_closed_within_a_quarter_timeout_of_it(telemetry):
    clock = Clock()
    factory = tcp_factory(telemetry, clock=clock, idle_timeout=4)
    factory.tracker.start()
    clock.advance(0.5)
    protocol, transport = connect(factory)
    protocol.dataReceived(b"a:1|c\n")
    clock.pump([0.5] * 7)  # 3.5 s after the last read
    assert not transport.disconnecting
    clock.pump([0.5] * 3)  # 5 s
    assert transport.disconnecting
    factory.tracker.stop()


def test_a_connection_trickling_a_partial_line_is_idle(telemetry):
    """Bytes that complete no line do not keep a connection open."""
    clock = Clock()
    factory = tcp_factory(telemetry, clock=clock, idle_timeout=4)
    factory.tracker.start()
    protocol, transport = connect(factory)
    for _ in range(10):
        clock.advance(0.5)
        protocol.dataReceived(b"x")
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert telemetry.dropped("tcp_line_truncated") == 1
    factory.tracker.stop()


def test_a_throttled_connection_is_paused_after_each_read(telemetry):
    clock = Clock()
    throttle = ReadThrottle(clock, telemetry)
    factory = tcp_factory(telemetry, throttle=throttle)
    protocol, transport = connect(factory)
    throttle.set_delay(0.01)
    protocol.dataReceived(b"a:1|c\n")
    assert transport.producerState == "paused"
    clock.advance(0.01)
    assert transport.producerState == "producing"


def test_senders_outside_the_allow_list_are_refused_and_counted(telemetry):
    factory = tcp_factory(telemetry, senders=SenderAllowList(["10.0.0.0/8"]))
    assert connect(factory) == (None, None)
    assert telemetry.dropped("tcp_sender_refused") == 1
    assert connect(factory, IPv4Address("TCP", "10.1.2.3", 1))[0] is not None


# -- the allow-list --------------------------------------------------------------------------


def test_the_allow_list_matches_ranges_of_both_families():
    senders = SenderAllowList(["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"])
    assert senders.allows("10.200.0.1")
    assert senders.allows("::ffff:10.0.0.1")  # IPv4-mapped
    assert senders.allows("fd12::1%eth0")
    assert senders.allows("192.0.2.7")
    assert not senders.allows("192.0.2.8")
    assert not senders.allows("127.0.0.1")
    assert not senders.allows("not an address")


def test_the_allow_list_cache_is_bounded():
    senders = SenderAllowList(["10.0.0.0/8"])
    for n in range(CACHE_SIZE + 10):
        senders.allows(f"10.0.{n // 256}.{n % 256}")
    assert len(senders._answers) <= CACHE_SIZE


def test_udp_datagrams_from_outside_the_allow_list_are_dropped_and_counted(telemetry):
    @implementer(IPacketConsumer)
    class Consumer(list):
        pass

    consumer = Consumer()
    receiver = DatagramReceiver(consumer, 100, RateLimitedReporter(telemetry), SenderAllowList(["10.0.0.0/8"]))
    receiver.datagramReceived(b"a:1|c", ("127.0.0.1", 5000))
    receiver.datagramReceived(b"b:1|c", ("10.0.0.9", 5000))
    assert consumer == [b"b:1|c"]
    assert telemetry.dropped("udp_sender_refused") == 1


# -- configuration ---------------------------------------------------------------------------


def test_tcp_keys_and_defaults():
    config = load_config(data={})
    assert config.dogstatsd_tcp_port == 0
    assert config.dogstatsd_tcp_max_connections == 1024
    assert config.dogstatsd_tcp_idle_timeout == 300
    assert config.dogstatsd_allowed_senders == ()
    config = load_config(
        env={
            "DD_DOGSTATSD_TCP_PORT": "8126",
            "DD_DOGSTATSD_TCP_IDLE_TIMEOUT": "90s",
            "DD_DOGSTATSD_ALLOWED_SENDERS": "10.0.0.0/8 ::1",
        }
    )
    assert config.dogstatsd_tcp_port == 8126
    assert config.dogstatsd_tcp_idle_timeout == 90
    assert config.dogstatsd_allowed_senders == ("10.0.0.0/8", "::1/128")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dogstatsd_allowed_senders": ["10.0.0.0/33"]}, "dogstatsd_allowed_senders[0]: not a CIDR range"),
        ({"dogstatsd_allowed_senders": ["10.0.0.0/8", "nope"]}, "dogstatsd_allowed_senders[1]: not a CIDR range"),
        ({"dogstatsd_allowed_senders": ["10.0.0.1/8"]}, "host bits set"),
        ({"dogstatsd_tcp_port": 1, "dogstatsd_tls_cert": "c.pem"}, "dogstatsd_tls_key: required"),
        ({"dogstatsd_tcp_port": 1, "dogstatsd_tls_key": "k.pem"}, "dogstatsd_tls_cert: required"),
        ({"dogstatsd_tcp_port": 1, "dogstatsd_tls_ca": "ca.pem"}, "dogstatsd_tls_cert: required"),
        ({"dogstatsd_tls_cert": "c.pem", "dogstatsd_tls_key": "k.pem"}, "dogstatsd_tcp_port: TLS"),
        ({"dogstatsd_tcp_idle_timeout": "-5s"}, "dogstatsd_tcp_idle_timeout: must not be negative"),
        ({"dogstatsd_tcp_max_connections": -1}, "dogstatsd_tcp_max_connections: must be at least 0"),
    ],
)
def test_bad_tcp_and_tls_settings_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(data=data)


def test_tls_without_pyopenssl_fails_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "OpenSSL", None)
    monkeypatch.delitem(sys.modules, "twisted_statsd.listeners.tls", raising=False)
    with pytest.raises(TLSError, match=r"pip install 'twisted-statsd\[tls\]'"):
        server_tls("c.pem", "k.pem")
