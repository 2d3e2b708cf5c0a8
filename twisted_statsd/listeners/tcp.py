"""The TCP listener (``dogstatsd_tcp_port``): newline-framed lines, optionally over TLS.

A client writes metric lines each ending in a newline, any number per
connection.  :class:`LineDecoder` hands on, per read, one packet holding every
complete line, and keeps the partial last line until the next read; it is
pure.  A line longer than ``dogstatsd_buffer_size`` cannot be told apart from
a client that never sends a newline, so it closes the connection (counted as
``tcp_line_too_long``); the lines before it have been handed on, and the
decoder never holds more than one permitted line.  A connection that closes
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

from twisted.internet.interfaces import IAddress

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
    """Splits a stream into packets of complete lines, each at most ``max_length`` bytes before its newline.

    :meth:`feed` returns ``[packet]`` (the complete lines, newlines included)
    or ``[]``.  Invariant: ``_pending`` holds the start of one line, at most
    ``max_length`` bytes, with no newline.  Lines are checked with one
    ``rfind`` per ``max_length`` bytes, never one call per line: a window of
    ``max_length + 1`` bytes with no newline holds the start of a line too long.
    """

    TRUNCATED = ("tcp_line_truncated", "the connection closed after a line with no newline; the line is dropped")

    def __init__(self, max_length: int):
        self.max_length = max_length
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
        end, limit = len(buf), self.max_length
        start = 0  # the start of the first line not known to be complete
        rfind = buf.rfind
        while end - start > limit:
            newline = rfind(b"\n", start, start + limit + 1)
            if newline < 0:
                self._pending = b""
                self.error = StreamError(
                    "tcp_line_too_long",
                    f"a line longer than dogstatsd_buffer_size ({limit} bytes); the connection is closed",
                    end - start,
                    buf[start : start + SAMPLE_SIZE],
                )
                return [buf[:start]] if start else []
            start = newline + 1
        cut = rfind(b"\n", start) + 1 or start
        self._pending = buf[cut:]
        if not cut:
            return []
        return [buf if cut == end else buf[:cut]]


class LineProtocol(StreamProtocol):
    """One TCP (or TLS) connection: newline-framed lines."""


class LineStreamFactory(StreamFactory):
    """TCP connections: lines of at most ``max_frame`` bytes, tagged ``transport:tcp``."""

    protocol = LineProtocol
    transport_name = "tcp"
    refused_reason = "tcp_connection_refused"
    cap_key = "dogstatsd_tcp_max_connections"

    def new_decoder(self) -> LineDecoder:
        return LineDecoder(self.max_frame)


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
        self.reactor = reactor
        self.factory = factory
        self.port_number = port
        self.interface = interface
        self.tls = tls
        self.backlog = backlog
        self.port = None
        self.bound_port = port

    def describe(self) -> tuple[str, str]:
        return "dogstatsd_tcp_port", f"listen on {self.kind} {self.interface or '0.0.0.0'}:{self.port_number}"

    @property
    def kind(self) -> str:
        return "tcp+tls" if self.tls is not None else "tcp"

    def bind(self) -> None:
        factory = self.factory if self.tls is None else self.tls.wrap(self.factory, self.reactor)
        self.port = self.reactor.listenTCP(self.port_number, factory, backlog=self.backlog, interface=self.interface)
        host = self.address
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
    def address(self) -> IAddress:
        """The bound address, e.g. to learn an ephemeral port."""
        return self.port.getHost()

    def log_closed(self, count: int) -> None:
        self.log.info(CLOSED, kind=self.kind, port=self.bound_port, count=count, log_category="TCP_CLOSED")
