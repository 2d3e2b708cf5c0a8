"""Sending a capture's packets again, to a UDP address or a Unix socket, paced or as fast as possible.

Used by ``twisted-statsd replay``: a one-shot command, so plain blocking
sockets and ``time.sleep`` pace it.  Targets:

* ``udp://HOST:PORT``: one datagram per packet;
* ``unixgram://PATH``: one datagram per packet (a full socket queue blocks the sender, as on a live client);
* ``unixstream://PATH``: one frame per packet, a little-endian ``u32`` length before its bytes.

Pacing: packet *i* leaves ``(t_i - t_0) / speed`` seconds after the first; ``speed=None`` sends at once.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from twisted_statsd.capture import Record

_FRAME = struct.Struct("<I")
# Progress is redrawn at most this often.
PROGRESS_SECONDS = 0.5


class TargetError(ValueError):
    """A target the sender cannot use."""


def open_target(url: str) -> tuple[Callable[[bytes], object], Callable[[], None]]:
    """A ``send(packet)`` and ``close()`` for a target URL."""
    parts = urlsplit(url)
    if parts.scheme == "udp":
        if not parts.hostname or not parts.port:
            raise TargetError(f"{url}: expected udp://HOST:PORT")
        family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        address = (parts.hostname, parts.port)
        return (lambda packet: sock.sendto(packet, address)), sock.close
    path = parts.netloc + parts.path
    if parts.scheme == "unixgram" and path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        return (lambda packet: sock.sendto(packet, path)), sock.close
    if parts.scheme == "unixstream" and path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise TargetError(f"{url}: cannot connect: {e.strerror or e}") from None
        return (lambda packet: sock.sendall(_FRAME.pack(len(packet)) + packet)), sock.close
    raise TargetError(f"{url}: expected udp://HOST:PORT, unixgram://PATH or unixstream://PATH")


def progress_line(sent: int, total: int, elapsed: float, remaining: float | None) -> str:
    """``sent/total (percent), rate, ETA``: what a terminal shows while a replay runs."""
    rate = sent / elapsed if elapsed > 0 else 0.0
    eta = "-" if remaining is None else f"{remaining:.0f}s"
    percent = 100.0 * sent / total if total else 100.0
    return f"sent {sent:,}/{total:,} packets ({percent:.0f}%), {rate:,.0f} packets/s, ETA {eta}"


def replay(
    records: list[Record],
    send: Callable[[bytes], object],
    *,
    speed: float | None = 1.0,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send every record's packet, paced by ``speed`` (None: at once); returns how many were sent.

    ``progress`` is called with a :func:`progress_line` every ``PROGRESS_SECONDS`` and at the end.
    """
    total = len(records)
    if not total:
        return 0
    start, first = clock(), records[0].time
    span = (records[-1].time - first) / speed if speed else None
    shown = start
    for sent, record in enumerate(records, 1):
        if speed:
            wait = start + (record.time - first) / speed - clock()
            if wait > 0:
                sleep(wait)
        send(record.packet)
        now = clock()
        if progress is not None and (now - shown >= PROGRESS_SECONDS or sent == total):
            shown = now
            elapsed = now - start
            remaining = max(span - elapsed, 0.0) if span is not None else (total - sent) * elapsed / sent
            progress(progress_line(sent, total, elapsed, remaining))
    return total
