"""Coverage-guided fuzzing of the Unix stream frame decoder (see fuzz/README.md).

The input's first two bytes choose the largest frame (1 to 512 bytes) and
the read size; the rest is the byte stream.  Fed in reads of that size, the
decoder must give exactly what a one-shot reading of the whole stream gives,
never hold more than one frame, and read nothing after a bad header.
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports(include=["twisted_statsd"]):
    from twisted_statsd.listeners.unixstream import FrameDecoder

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


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    max_length, step, stream = data[0] * 2 + 1, data[1] % 64 + 1, data[2:]
    decoder = FrameDecoder(max_length)
    frames = []
    for start in range(0, len(stream), step):
        frames += decoder.feed(stream[start : start + step])
        if decoder.pending > 4 + max_length:
            raise AssertionError(f"{decoder.pending} bytes held for frames of at most {max_length}")
    expected, reason, left = reference(stream, max_length)
    got = (frames, decoder.error.reason if decoder.error else None, decoder.pending)
    if got != (expected, reason, left):
        raise AssertionError(f"decoded {got!r}, expected {(expected, reason, left)!r}")
    if reason is not None and decoder.feed(HEADER.pack(1) + b"x"):
        raise AssertionError("a frame was read after a bad header")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
