"""The capture file format: packets as the server received them, to replay later.

A capture is one gzip stream (``zcat`` reads it), flushed in pieces so a
partial file is readable up to its last piece.  Decompressed, it holds:

* the magic ``b"TSDCAP"`` and a version byte (``1``);
* a header: a little-endian ``u32`` length and that many bytes of UTF-8 JSON
  (``{"format": "twisted-statsd capture", "version": 1, "started": <unix
  time>, "server": <server version>}``);
* records, each ``<d`` arrival time (unix seconds), ``B`` transport length,
  ``H`` origin length, ``I`` packet length, then the transport (``udp`` or
  ``uds``), the origin (the sender's container ID, empty when unknown) and the
  packet's bytes;
* an end record: transport ``end``, and as its packet the JSON summary
  ``{"packets": <records written>, "skipped": {<reason>: <packets>}}``.

A reader accepts any version-1 file, with or without its end record (a capture
cut short).  Pure: no Twisted, no clock.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

MAGIC = b"TSDCAP"
VERSION = 1
END = "end"
_RECORD = struct.Struct("<dBHI")
_LENGTH = struct.Struct("<I")
# gzip framing for zlib (wbits 16 + 15).
_GZIP = 31


class CaptureFormatError(ValueError):
    """The file is not a capture this version can read."""


@dataclass(slots=True)
class Record:
    time: float
    transport: str
    origin: bytes
    packet: bytes


@dataclass
class Capture:
    header: dict
    records: list[Record]
    summary: dict | None = None  # the end record's, None when the capture was cut short
    skipped: dict = field(default_factory=dict)


class CaptureEncoder:
    """Turns records into compressed bytes; ``take`` hands over what is ready to write."""

    def __init__(self, started: float, server: str):
        self._zip = zlib.compressobj(1, zlib.DEFLATED, _GZIP)
        header = json.dumps(
            {"format": "twisted-statsd capture", "version": VERSION, "started": started, "server": server}
        ).encode()
        self._parts = [MAGIC, bytes([VERSION]), _LENGTH.pack(len(header)), header]
        self.packets = 0
        self.raw_bytes = len(MAGIC) + 1 + _LENGTH.size + len(header)

    def add(self, now: float, packets: list[bytes], transport: str, origin: bytes | None) -> None:
        t, o = transport.encode(), origin or b""
        parts = self._parts
        for packet in packets:
            parts.append(_RECORD.pack(now, len(t), len(o), len(packet)))
            parts.append(t)
            parts.append(o)
            parts.append(packet)
            self.raw_bytes += _RECORD.size + len(t) + len(o) + len(packet)
        self.packets += len(packets)

    def take(self) -> bytes:
        """The compressed bytes of everything added since the last call, flushed so a reader gets all of it."""
        data, self._parts = b"".join(self._parts), []
        return self._zip.compress(data) + self._zip.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, now: float, skipped: dict[str, int]) -> bytes:
        """The end record and the end of the gzip stream."""
        summary = json.dumps({"packets": self.packets, "skipped": skipped}).encode()
        t = END.encode()
        self._parts += [_RECORD.pack(now, len(t), 0, len(summary)), t, summary]
        data, self._parts = b"".join(self._parts), []
        return self._zip.compress(data) + self._zip.flush(zlib.Z_FINISH)


def _decompressed(data: bytes) -> bytes:
    unzip = zlib.decompressobj(_GZIP)
    try:
        return unzip.decompress(data)
    except zlib.error as e:
        raise CaptureFormatError(f"not a gzip stream: {e}") from None


def parse(data: bytes) -> Capture:
    """Read a whole capture file's bytes."""
    raw = _decompressed(data)
    if not raw.startswith(MAGIC):
        raise CaptureFormatError("not a twisted-statsd capture (bad magic)")
    if len(raw) < len(MAGIC) + 1 + _LENGTH.size or raw[len(MAGIC)] != VERSION:
        raise CaptureFormatError(f"unsupported capture version (this reader knows {VERSION})")
    at = len(MAGIC) + 1
    (size,) = _LENGTH.unpack_from(raw, at)
    at += _LENGTH.size
    try:
        header = json.loads(raw[at : at + size])
    except ValueError:
        raise CaptureFormatError("the capture header is not JSON") from None
    records, summary = [], None
    for record in _records(raw, at + size):
        if record.transport == END:
            summary = json.loads(record.packet)
            break
        records.append(record)
    return Capture(header, records, summary, (summary or {}).get("skipped", {}))


def _records(raw: bytes, at: int) -> Iterator[Record]:
    end = len(raw)
    while at + _RECORD.size <= end:
        when, tlen, olen, plen = _RECORD.unpack_from(raw, at)
        at += _RECORD.size
        if at + tlen + olen + plen > end:
            return  # a record cut short: the capture ended mid-write
        transport = raw[at : at + tlen].decode("ascii", "replace")
        at += tlen
        origin = raw[at : at + olen]
        at += olen
        yield Record(when, transport, origin, raw[at : at + plen])
        at += plen


def read(path: str) -> Capture:
    with open(path, "rb") as f:
        return parse(f.read())
