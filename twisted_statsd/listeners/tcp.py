"""The TCP listener (``dogstatsd_tcp_port``): newline-framed lines, optionally over TLS.

A client writes metric lines each ending in a newline, any number per
connection.  :class:`LineDecoder` hands on the complete lines of each read as
one packet (cut into packets of at most ``dogstatsd_buffer_size`` when they
are forwarded), and keeps the partial last line until the next read; it is
pure.  A line longer than ``dogstatsd_buffer_size`` (with its newline) cannot
be told apart from a client that never sends a newline, so it closes the
connection (counted as ``tcp_line_too_long``); the lines before it have been
handed on, and the decoder never holds more than one permitted line.  A connection that closes
after an unterminated line loses that line (``tcp_line_truncated``): it may
have been cut short.

Connections, their cap, idle timeout, sender allow-list, memory back-pressure
and stopping are shared with the Unix stream listener
(:mod:`twisted_statsd.listeners.streams`).  TLS wraps the same factory in
Twisted's ``TLSMemoryBIOFactory`` (:mod:`twisted_statsd.listeners.tls`), bound
with ``listenTCP`` as ``listenSSL`` does, because binding must be synchronous.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address

from twisted_statsd.errors import StartupError
from twisted_statsd.listeners.streams import StreamError, StreamFactory, StreamListenerService, StreamProtocol

#: Bytes of a refused or truncated line kept for the log.
SAMPLE_SIZE = 256

#: How to install what TLS needs (pyOpenSSL), for the error when it is missing.
TLS_EXTRA = "pip install 'twisted-statsd[tls]'"

LISTENING = "Listening for DogStatsD on {kind} {host}:{port} (at most {cap} connections, idle timeout {idle})"
CLOSED = "Closed {kind} port {port} and {count} connections"


class TLSError(StartupError):
    """TLS is configured but cannot be set up; the message names the key, file or package."""


def server_tls(cert: str, key: str, ca: str = ""):
    """The TLS settings for the listener; fails now, naming the extra, when pyOpenSSL is missing."""
    try:
        from twisted_statsd.listeners.tls import ServerTLS
    except ImportError as error:
        raise TLSError(
            f"dogstatsd_tls_cert: TLS on the TCP port needs pyOpenSSL, which is not installed ({error}): {TLS_EXTRA}"
        ) from None
    return ServerTLS(cert, key, ca)


class LineDecoder:
    """Splits a stream into packets of complete lines; each line with its newline is at most ``max_length`` bytes.

    :meth:`feed` returns the packets completed by the new bytes: one packet of
    every complete line (newlines included), which the parser handles faster
    than many small ones; or, with ``cut_packets``, packets cut at line ends
    so that none is longer than ``max_length``, as a datagram of
    ``dogstatsd_buffer_size`` at most, because the forwarder sends each packet
    as one datagram.  A line that does not fit in ``max_length`` with its
    newline sets :attr:`error` and ends decoding; the lines before it are
    still returned.  Invariant: ``_pending`` holds the start of one line,
    shorter than ``max_length``, with no newline.  Lines are checked with one
    ``rfind`` per ``max_length`` bytes, never one call per line: a window of
    ``max_length`` bytes with no newline starts with a line too long.
    """

    TRUNCATED = ("tcp_line_truncated", "the connection closed after a line with no newline; the line is dropped")

    def __init__(self, max_length: int, *, cut_packets: bool = False):
        self.max_length = max_length
        self.cut_packets = cut_packets
        self.error: StreamError | None = None
        self._pending = b""

    @property
    def pending(self) -> int:
        """Bytes held for a line that has no newline yet."""
        return len(self._pending)

    @property
    def pending_sample(self) -> bytes:
        return self._pending[:SAMPLE_SIZE]

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        buf = self._pending + data if self._pending else data
        end, limit, cut = len(buf), self.max_length, self.cut_packets
        packets: list[bytes] = []
        first = 0  # the first byte not handed on yet
        start = 0  # the start of the first line not checked yet
        rfind = buf.rfind
        while end - start > limit:
            newline = rfind(b"\n", start, start + limit)
            if newline < 0:
                return self._refuse(packets, buf, first, start)
            start = newline + 1
            if cut:
                packets.append(buf[first:start])
                first = start
        newline = rfind(b"\n", start)
        if newline >= 0:
            start = newline + 1
        elif end - start == limit:  # its newline would make it longer than the limit
            return self._refuse(packets, buf, first, start)
        if start > first:
            packets.append(buf if first == 0 and start == end else buf[first:start])
        self._pending = buf[start:] if start < end else b""
        return packets

    def _refuse(self, packets: list[bytes], buf: bytes, first: int, start: int) -> list[bytes]:
        """End decoding at the line starting at ``start``; the lines from ``first`` to it are handed on."""
        if start > first:
            packets.append(buf[first:start])
        self._pending = b""
        self.error = StreamError(
            "tcp_line_too_long",
            f"a line longer than dogstatsd_buffer_size ({self.max_length} bytes with its newline); "
            "the connection is closed",
            len(buf) - start,
            buf[start : start + SAMPLE_SIZE],
        )
        return packets


class LineProtocol(StreamProtocol):
    """One TCP (or TLS) connection: newline-framed lines."""


class LineStreamFactory(StreamFactory):
    """TCP connections: lines of at most ``max_frame`` bytes, tagged ``transport:tcp``.

    ``cut_packets`` (when forwarding is on) keeps every packet within
    ``max_frame``, so each forwarded datagram is one a DogStatsD server accepts.
    """

    protocol = LineProtocol
    transport_name = "tcp"
    refused_reason = "tcp_connection_refused"
    cap_key = "dogstatsd_tcp_max_connections"

    def __init__(self, intake, reporter, *, cut_packets: bool = False, **options):
        super().__init__(intake, reporter, **options)
        self.cut_packets = cut_packets

    def new_decoder(self) -> LineDecoder:
        return LineDecoder(self.max_frame, cut_packets=self.cut_packets)


class TCPListenerService(StreamListenerService):
    """Binds the TCP port in ``privilegedStartService``; on stop reads and closes every connection.

    ``tls``, when given, is a :class:`twisted_statsd.listeners.tls.ServerTLS`:
    the certificate files are read at bind time, before twistd drops
    privileges, so they may be readable by root only.
    """

    def __init__(
        self,
        reactor,
        factory: LineStreamFactory,
        port: int,
        interface: str,
        *,
        tls=None,
        backlog: int = socket.SOMAXCONN,
    ):
        super().__init__(reactor, factory, backlog)
        self.port_number = port
        self.interface = interface
        self.tls = tls
        self.port = None
        self.bound_port = port

    def describe(self) -> tuple[str, str]:
        return "dogstatsd_tcp_port", f"listen on {self.kind} {self.interface or '0.0.0.0'}:{self.port_number}"

    @property
    def kind(self) -> str:
        return "tcp+tls" if self.tls is not None else "tcp"

    def bind(self) -> None:
        factory = self.factory if self.tls is None else self.tls.wrap(self.factory, self.reactor)
        port: tcp.Port = self.reactor.listenTCP(
            self.port_number, factory, backlog=self.backlog, interface=self.interface
        )
        self.port = port
        host: IPv4Address | IPv6Address = port.getHost()
        self.bound_port = host.port
        self.log.info(
            LISTENING,
            kind=self.kind,
            host=host.host,
            port=host.port,
            cap=self.factory.max_connections or "any number of",
            idle=f"{self.tracker.idle_timeout:g} s" if self.tracker.idle_timeout else "none",
            log_category="TCP_LISTENING",
        )

    @property
    def address(self) -> IPv4Address | IPv6Address | None:
        """The bound address, e.g. to learn an ephemeral port; None when not listening."""
        return self.port.getHost() if self.port is not None else None

    def log_closed(self, count: int) -> None:
        self.log.info(CLOSED, kind=self.kind, port=self.bound_port, count=count, log_category="TCP_CLOSED")
