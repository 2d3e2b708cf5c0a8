"""The stream frame decoder: pure, any split of the byte stream gives the same frames."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_statsd.listeners.unixstream import FrameDecoder


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def feed_in_pieces(decoder: FrameDecoder, stream: bytes, cuts) -> list[bytes]:
    frames = []
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        frames.extend(decoder.feed(stream[start:cut]))
        start = cut
    return frames


payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


@settings(max_examples=300)
@given(payloads, st.lists(st.integers(min_value=0, max_value=7000), max_size=40))
def test_any_split_gives_the_frames_in_order(messages, cuts):
    stream = b"".join(frame(m) for m in messages)
    decoder = FrameDecoder(300)
    cuts = [c for c in cuts if c <= len(stream)]
    assert feed_in_pieces(decoder, stream, cuts) == messages
    assert decoder.error is None
    assert decoder.pending == 0


@settings(max_examples=200)
@given(
    payloads,
    st.integers(min_value=301, max_value=2**32 - 1),
    st.binary(max_size=50),
    st.lists(st.integers(min_value=0, max_value=7000), max_size=40),
)
def test_an_oversized_length_loses_nothing_framed_before_it(messages, bad_length, tail, cuts):
    """Every frame before the bad header comes out, nothing after it does, whatever the reads."""
    stream = b"".join(frame(m) for m in messages) + struct.pack("<I", bad_length) + tail
    decoder = FrameDecoder(300)
    cuts = [c for c in cuts if c <= len(stream)]
    assert feed_in_pieces(decoder, stream, cuts) == messages
    assert decoder.error is not None
    assert decoder.error.reason == "stream_frame_too_large"
    assert decoder.error.length == bad_length
    assert decoder.feed(frame(b"late:1|c")) == []


def test_byte_by_byte():
    stream = frame(b"a:1|c\nb:2|c") + frame(b"c:3|g")
    decoder = FrameDecoder(8192)
    frames = []
    for i in range(len(stream)):
        frames.extend(decoder.feed(stream[i : i + 1]))
        if i < 4 + 11 - 1:
            assert decoder.pending == i + 1
    assert frames == [b"a:1|c\nb:2|c", b"c:3|g"]


def test_many_frames_in_one_read_and_a_partial_one():
    decoder = FrameDecoder(8192)
    data = frame(b"a:1|c") * 100 + frame(b"b:1|c")[:7]
    assert decoder.feed(data) == [b"a:1|c"] * 100
    assert decoder.pending == 7
    assert decoder.feed(frame(b"b:1|c")[7:]) == [b"b:1|c"]
    assert decoder.pending == 0


def test_a_frame_of_exactly_the_maximum_is_accepted():
    decoder = FrameDecoder(10)
    assert decoder.feed(frame(b"x" * 10)) == [b"x" * 10]
    assert decoder.error is None


def test_the_header_is_refused_before_the_payload_arrives():
    """The decoder never buffers more than one permitted frame."""
    decoder = FrameDecoder(10)
    assert decoder.feed(struct.pack("<I", 11)) == []
    assert decoder.error.reason == "stream_frame_too_large"
    assert decoder.pending == 0


def test_a_zero_length_frame_is_an_error():
    decoder = FrameDecoder(8192)
    assert decoder.feed(frame(b"a:1|c") + struct.pack("<I", 0) + frame(b"b:1|c")) == [b"a:1|c"]
    assert decoder.error.reason == "stream_frame_empty"


def test_the_error_sample_starts_at_the_bad_header():
    decoder = FrameDecoder(4)
    decoder.feed(frame(b"ok") + struct.pack("<I", 1000) + b"secret payload")
    assert decoder.error.sample == struct.pack("<I", 1000) + b"secret payload"


def test_frames_are_bytes_even_when_assembled_from_pieces():
    decoder = FrameDecoder(100)
    decoder.feed(frame(b"abc")[:5])
    (out,) = decoder.feed(frame(b"abc")[5:])
    assert type(out) is bytes and out == b"abc"
