"""Property tests of the stream decoders over hostile byte streams (issue 12, item 4).

``test_unix_framing.py`` covers well-formed streams and one oversized header.
Here a Unix stream is any mixture of good frames, zero and huge length
headers, truncated frames and garbage, cut into reads anywhere.  The decoder
must give what a one-shot reference reading of the whole stream gives, never
hold more than one frame, and the connection protocol must never raise, close
the connection exactly when the stream turns bad, and count that as one drop.
The TCP listener's newline decoder is held to the same one-shot reference.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.listeners.tcp import LineDecoder
from twisted_statsd.listeners.unixstream import FrameDecoder, FramedStreamFactory
from twisted_statsd.telemetry import Telemetry

MAX = 64
HEADER = struct.Struct("<I")


def reference(stream: bytes, max_length: int) -> tuple[list[bytes], str | None, int]:
    """Frames, error reason and bytes left over, reading the whole stream at once."""
    frames, offset = [], 0
    while len(stream) - offset >= 4:
        (length,) = HEADER.unpack_from(stream, offset)
        if length == 0:
            return frames, "stream_frame_empty", 0
        if length > max_length:
            return frames, "stream_frame_too_large", 0
        if offset + 4 + length > len(stream):
            break
        frames.append(stream[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return frames, None, len(stream) - offset


good_frame = st.binary(min_size=1, max_size=MAX).map(lambda p: HEADER.pack(len(p)) + p)
bad_header = st.one_of(
    st.just(HEADER.pack(0)),
    st.integers(min_value=MAX + 1, max_value=2**32 - 1).map(HEADER.pack),
)
truncated = good_frame.flatmap(lambda f: st.integers(min_value=1, max_value=len(f) - 1).map(lambda n: f[:n]))
pieces = st.one_of(good_frame, good_frame, good_frame, bad_header, truncated, st.binary(max_size=12))
streams = st.lists(pieces, max_size=15).map(b"".join)
cut_points = st.lists(st.integers(min_value=0, max_value=2000), max_size=30)


def reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c for c in cuts if c <= len(stream)}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=500)
@given(streams, cut_points)
def test_any_stream_cut_anywhere_decodes_as_the_reference_reads_it(stream, cuts):
    frames, reason, left = reference(stream, MAX)
    decoder = FrameDecoder(MAX)
    got = []
    for data in reads(stream, cuts):
        got += decoder.feed(data)
        assert decoder.pending <= 4 + MAX  # never more than one frame held
    assert got == frames
    assert (decoder.error.reason if decoder.error else None) == reason
    assert decoder.pending == left
    if reason is not None:
        assert decoder.feed(HEADER.pack(1) + b"x") == []  # nothing is read after a bad header


class _Intake:
    def __init__(self):
        self.buffer: list[bytes] = []

    def buffer_for(self, transport, origin=None):
        return self.buffer

    def release(self, buffer):
        pass


@settings(max_examples=300)
@given(streams, cut_points)
def test_the_connection_never_raises_and_counts_a_bad_stream_once(stream, cuts):
    frames, reason, left = reference(stream, MAX)
    telemetry = Telemetry()
    intake = _Intake()
    factory = FramedStreamFactory(intake, RateLimitedReporter(telemetry), clock=MemoryReactorClock(), max_frame=MAX)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    for data in reads(stream, cuts):
        protocol.dataReceived(data)
    protocol.connectionLost(None)
    assert intake.buffer == frames
    assert transport.disconnecting == (reason is not None)
    expected = {reason: 1} if reason else {}
    if left:
        expected["stream_frame_truncated"] = 1
    assert {r: telemetry.dropped(r) for r in expected} == expected
    assert telemetry.total_dropped() == sum(expected.values())


# --- the TCP listener's newline decoder ----------------------------------------------------


def line_reference(stream: bytes, max_length: int) -> tuple[bytes, str | None, int]:
    """Complete lines handed on, error reason and bytes left over, reading the whole stream at once."""
    taken = 0
    for line in stream.split(b"\n")[:-1]:
        if len(line) + 1 > max_length:
            return stream[:taken], "tcp_line_too_long", 0
        taken += len(line) + 1
    if len(stream) - taken >= max_length:  # a partial line whose newline would not fit
        return stream[:taken], "tcp_line_too_long", 0
    return stream[:taken], None, len(stream) - taken


line_streams = st.lists(
    st.one_of(
        st.binary(max_size=MAX + 8),
        st.sampled_from([b"\n", b"\n\n", b"a:1|c\n", b"\r\n"]),
        st.integers(min_value=MAX - 2, max_value=MAX + 1).map(lambda n: b"x" * n + b"\n"),
        st.integers(min_value=MAX - 1, max_value=MAX + 1).map(lambda n: b"\n" + b"y" * n),  # a long last line
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=500)
@given(line_streams, cut_points, st.booleans())
def test_any_line_stream_cut_anywhere_decodes_as_the_reference_reads_it(stream, cuts, cut_packets):
    """The TCP decoder hands on exactly the complete lines before a too-long one, whatever the reads."""
    taken, reason, left = line_reference(stream, MAX)
    decoder = LineDecoder(MAX, cut_packets=cut_packets)
    packets = []
    for data in reads(stream, cuts):
        packets += decoder.feed(data)
        assert decoder.pending < MAX  # never more than one short partial line held
    assert b"".join(packets) == taken
    assert all(packet.endswith(b"\n") for packet in packets)
    if cut_packets:
        assert all(len(packet) <= MAX for packet in packets)
    assert (decoder.error.reason if decoder.error else None) == reason
    assert decoder.pending == left
