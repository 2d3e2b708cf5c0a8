"""The "ceiling" receiver: the least work a Python StatsD server could do, as a process.

    python -m benchmarks.ceiling --transport udp|unixgram|unixstream [--path P] [--rcvbuf BYTES] [--recv-only]

``--recv-only`` skips the parsing too (receive, count lines, nothing else): the
physical limit of one Python process, to which every other rate is a ratio.

A plain blocking socket loop: receive a datagram (or a length-prefixed frame on
a stream), split it into lines, and sum a float per metric name, counting
lines; the same work as the ceiling in :mod:`benchmarks.pipeline`.  No
aggregation semantics, no timers, no flush.  It prints ``READY port N receive
buffer M bytes`` once it listens (M as the kernel granted it) and, on
SIGTERM, ``RESULT {json}`` with what it counted, then exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys


class _Stop(Exception):
    """Raised by the SIGTERM handler to leave the blocking receive loop."""


class Counter:
    """Sums a float per metric name; ``lines`` counts every non-empty line seen."""

    def __init__(self):
        self.sums: dict[bytes, float] = {}
        self.lines = 0
        self.packets = 0

    def packet(self, data: bytes) -> None:
        sums = self.sums
        lines = 0
        for line in data.split(b"\n"):
            if not line:
                continue
            lines += 1
            name, _, rest = line.partition(b":")
            value, _, _ = rest.partition(b"|")
            try:
                sums[name] = sums.get(name, 0.0) + float(value)
            except ValueError:
                sums[name] = sums.get(name, 0.0) + 1.0
        self.lines += lines
        self.packets += 1


class RecvOnly(Counter):
    """Counts datagrams and their lines without parsing: the physical limit of one Python process."""

    def packet(self, data: bytes) -> None:
        self.lines += data.count(b"\n") + (not data.endswith(b"\n"))
        self.packets += 1


def _receive_datagrams(sock: socket.socket, counter: Counter) -> None:
    recv, packet = sock.recv, counter.packet
    while True:
        packet(recv(65536))


def _receive_stream(sock: socket.socket, counter: Counter) -> None:
    """Accept connections one after another; each carries 4-byte little-endian length-prefixed frames."""
    header = struct.Struct("<I")
    while True:
        conn, _ = sock.accept()
        with conn:
            pending = b""
            while True:
                data = conn.recv(262144)
                if not data:
                    break
                pending += data
                offset = 0
                while len(pending) - offset >= 4:
                    (size,) = header.unpack_from(pending, offset)
                    if len(pending) - offset - 4 < size:
                        break
                    counter.packet(pending[offset + 4 : offset + 4 + size])
                    offset += 4 + size
                pending = pending[offset:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=("udp", "unixgram", "unixstream"), default="udp")
    parser.add_argument("--path", help="socket path for the Unix transports")
    parser.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF to ask for (0: system default)")
    parser.add_argument("--recv-only", action="store_true", help="receive and count lines, no parsing")
    args = parser.parse_args()

    if args.transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = ("127.0.0.1", 0)
    else:
        kind = socket.SOCK_DGRAM if args.transport == "unixgram" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_UNIX, kind)
        address = args.path
    if args.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    sock.bind(address)
    if args.transport == "unixstream":
        sock.listen(16)

    def stop(signum, frame):
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    port = sock.getsockname()[1] if args.transport == "udp" else 0
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    print(f"READY port {port} receive buffer {rcvbuf} bytes", flush=True)

    counter = RecvOnly() if args.recv_only else Counter()
    try:
        if args.transport == "unixstream":
            _receive_stream(sock, counter)
        else:
            _receive_datagrams(sock, counter)
    except _Stop:
        pass
    finally:
        sock.close()
        if args.transport != "udp" and args.path and os.path.exists(args.path):
            os.unlink(args.path)
    result = {"accepted": counter.lines, "packets": counter.packets, "contexts": len(counter.sums)}
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
