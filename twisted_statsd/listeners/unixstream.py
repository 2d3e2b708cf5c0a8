"""The Unix stream listener (``dogstatsd_stream_socket``): length-prefixed frames per connection.

DogStatsD clients in stream mode write each packet as a 4-byte little-endian
unsigned length followed by that many bytes (spec §2.4).  :class:`FrameDecoder`
cuts a byte stream into such frames whatever the read boundaries, and is pure.
A length of zero or above ``dogstatsd_buffer_size`` cannot be resynchronised,
so it closes the connection; every frame completed before it has already been
handed on, and the decoder never holds more than one frame's bytes.

Each connection has its own packet buffer (drained by size and by the intake
timer) and its sender's container as origin (SO_PEERCRED, read once when the
connection is made).  SO_PASSCRED is deliberately not set on the stream
socket: Twisted's Unix transport reads with ``recvmsg`` and would log every
SCM_CREDENTIALS message it does not understand.

Twisted's ``IntNStringReceiver`` (``structFormat='<I'``) was not used: it
delivers a zero-length frame instead of refusing it, and a pure decoder
returns a batch per read and can be property-tested without a transport.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet import defer, tcp, unix
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from twisted_statsd._binding import BindingService
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._twisted_helpers import Waiters
from twisted_statsd.listeners import sockets
from twisted_statsd.listeners.memory import ReadThrottle
from twisted_statsd.listeners.origin import OriginResolver
from twisted_statsd.telemetry import Telemetry

_LENGTH = struct.Struct("<I")
#: Bytes of a refused frame kept for the log when ``dogstatsd_stream_log_too_big`` is on.
SAMPLE_SIZE = 256
#: Bytes read from each connection at stop, before it is closed.
DRAIN_LIMIT = 4 * 1024 * 1024

LISTENING = "Listening for DogStatsD on unix stream socket {path} (mode {mode}, at most {cap} connections)"
CLOSED = "Closed unix stream socket {path} and {count} connections"


class FrameError(Exception):
    """A frame header that ends the connection: ``reason`` is the drop reason."""

    def __init__(self, reason: str, length: int, sample: bytes):
        super().__init__(reason, length)
        self.reason = reason
        self.length = length
        self.sample = sample


class FrameDecoder:
    """Splits a stream into frames: ``<I`` length, then that many bytes.

    :meth:`feed` returns the frames completed by the new bytes.  A length of 0
    or above ``max_length`` sets :attr:`error` and ends decoding: the frames
    before it are still returned, and nothing after it is.

    Invariant: ``_pending`` holds the start of one incomplete frame, whose
    header (once complete) has been checked, so it never exceeds
    ``4 + max_length`` bytes.
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.error: FrameError | None = None
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._pending)

    @property
    def pending_header(self) -> bytes:
        """The first bytes of the incomplete frame, for logs."""
        return bytes(self._pending[:4])

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        pending = self._pending
        if pending:
            pending += data
            buf = pending
        else:
            buf = data
        frames = []
        offset, end, limit = 0, len(buf), self.max_length
        unpack_from = _LENGTH.unpack_from
        while end - offset >= 4:
            (length,) = unpack_from(buf, offset)
            if length == 0 or length > limit:
                reason = "stream_frame_empty" if length == 0 else "stream_frame_too_large"
                self.error = FrameError(reason, length, bytes(buf[offset : offset + 4 + SAMPLE_SIZE]))
                self._pending = bytearray()
                return frames
            stop = offset + 4 + length
            if stop > end:
                break
            frame = buf[offset + 4 : stop]
            frames.append(frame if frame.__class__ is bytes else bytes(frame))
            offset = stop
        if pending:
            del pending[:offset]
        elif offset < end:
            pending += memoryview(buf)[offset:]
        return frames


class ConnectionTracker:
    """The open stream connections, so that stopping can close them all and wait.

    The count is published as the ``uds_connections`` gauge.
    """

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry
        self.connections: set = set()
        self._empty = Waiters()
        telemetry.set_gauge("uds_connections", 0)

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, protocol) -> None:
        self.connections.add(protocol)
        self.telemetry.set_gauge("uds_connections", len(self.connections))

    def remove(self, protocol) -> None:
        self.connections.discard(protocol)
        self.telemetry.set_gauge("uds_connections", len(self.connections))
        if not self.connections:
            self._empty.fire()

    def wait_empty(self) -> defer.Deferred:
        """A Deferred that fires once no connection is open."""
        if not self.connections:
            return defer.succeed(None)
        return self._empty.wait()

    def close_all(self) -> defer.Deferred:
        """Read what each connection has queued, close them all, and wait until they are gone."""
        for protocol in list(self.connections):
            protocol.close()
        return self.wait_empty()


class FramedStreamProtocol(Protocol):
    """One client connection: frames go to the connection's packet buffer; never raises."""

    factory: FramedStreamFactory
    decoder: FrameDecoder | None = None
    buffer = None
    refused = False

    def connectionMade(self):
        factory = self.factory
        self.decoder = FrameDecoder(factory.max_frame)
        self.buffer = factory.intake.buffer_for("uds", factory.origin_of(self.transport))
        factory.tracker.add(self)

    def dataReceived(self, data: bytes):
        decoder = self.decoder
        frames = decoder.feed(data)
        if frames:
            append = self.buffer.append
            for frame in frames:
                append(frame)
        if decoder.error is not None:
            if not self.refused:
                self.refused = True
                self._refuse(decoder.error)
            return
        throttle = self.factory.throttle
        if throttle is not None and throttle.delay:
            throttle.hold(self)

    def _refuse(self, error: FrameError) -> None:
        factory = self.factory
        if error.reason == "stream_frame_empty":
            message = "a frame of length 0; the connection is closed"
        else:
            message = (
                f"a frame of {error.length} bytes, over dogstatsd_buffer_size ({factory.max_frame}); "
                "the connection is closed"
            )
        factory.reporter.report(error.reason, message, error.sample if factory.log_too_big else error.sample[:4])
        self.transport.loseConnection()

    def connectionLost(self, reason):
        factory = self.factory
        if self.decoder is not None and self.decoder.pending:
            factory.reporter.report(
                "stream_frame_truncated", "the connection closed in the middle of a frame", self.decoder.pending_header
            )
        factory.tracker.remove(self)
        if factory.throttle is not None:
            factory.throttle.forget(self)
        if self.buffer is not None:
            factory.intake.release(self.buffer)
            self.buffer = None

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def read_available(self, limit: int) -> None:
        """Read what the kernel already holds for this connection, up to ``limit`` bytes.

        Reading through the handle is synchronous and bypasses a pause, which
        is what stopping and on-demand flushes want.  End of file is left for
        the transport to notice.
        """
        transport = self.transport
        if transport.disconnecting or not transport.connected:
            return
        handle = transport.getHandle()
        while limit > 0 and self.decoder.error is None:
            try:
                data = handle.recv(min(limit, 65536), socket.MSG_DONTWAIT)
            except OSError:
                return
            if not data:
                return
            limit -= len(data)
            self.dataReceived(data)

    def close(self) -> None:
        """Read what the client already sent, then close the connection."""
        self.read_available(DRAIN_LIMIT)
        self.transport.loseConnection()


class FramedStreamFactory(Factory):
    """Builds connection protocols; refuses connections over ``max_connections`` (0: no cap)."""

    noisy = False
    protocol = FramedStreamProtocol

    def __init__(
        self,
        intake,
        reporter: RateLimitedReporter,
        *,
        clock,
        max_frame: int,
        max_connections: int = 0,
        resolver: OriginResolver | None = None,
        log_too_big: bool = False,
        throttle: ReadThrottle | None = None,
    ):
        self.intake = intake
        self.reporter = reporter
        self.clock = clock
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.resolver = resolver
        self.log_too_big = log_too_big
        self.throttle = throttle
        self.tracker = ConnectionTracker(reporter.telemetry)

    def buildProtocol(self, addr):
        if self.max_connections and len(self.tracker) >= self.max_connections:
            self.reporter.report(
                "stream_connection_refused",
                f"{len(self.tracker)} connections are open, the dogstatsd_stream_max_connections limit",
            )
            return None
        self.reporter.telemetry.incr("uds_connections_accepted")
        protocol = self.protocol()
        protocol.factory = self
        return protocol

    def origin_of(self, transport) -> bytes | None:
        """The container of the process at the other end (SO_PEERCRED), when origin detection is on."""
        if self.resolver is None:
            return None
        try:
            credentials = sockets.peer_credentials(transport.getHandle())
        except OSError as e:
            self.reporter.report("origin_detection_failed", f"SO_PEERCRED failed: {e.strerror or e}", dropped=False)
            return None
        return self.resolver.origin(credentials.pid, self.clock.seconds())


class _StreamPort(unix.Port):
    """``listenUNIX``'s port, except for the socket file when it closes.

    Twisted's port unlinks its path unconditionally when it closes, and if the
    file is already gone the unlink raises before the socket is closed, so
    ``stopListening`` fails and the descriptor leaks.  This one removes the file
    only if it is still the one it bound, and always closes the socket.
    """

    identity: tuple[int, int] | None = None

    def __init__(self, path: str, factory, backlog: int, mode: int, reactor):
        super().__init__(path, factory, backlog, mode, reactor)
        self.port_path = path

    def connectionLost(self, reason):
        sockets.remove_socket_file(self.port_path, self.identity)
        tcp.Port.connectionLost(self, reason)


class UnixStreamListenerService(BindingService):
    """Binds the stream socket in ``privilegedStartService``; on stop closes every connection.

    ``stopService`` returns a Deferred that fires only after accepting has
    stopped, the socket file is gone, every connection has been read, closed
    and its buffer handed to the pipeline.  ``lockfile``-style PID locking
    (``listenUNIX``'s ``wantPID``) is not used: it leaves a second file behind
    and only recognises stale sockets of processes that also locked;
    :func:`sockets.prepare_path` probes the socket itself.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        factory: FramedStreamFactory,
        path: str,
        *,
        mode: int = sockets.DEFAULT_SOCKET_MODE,
        backlog: int = socket.SOMAXCONN,
    ):
        self.reactor = reactor
        self.factory = factory
        self.path = path
        self.mode = mode
        self.backlog = backlog
        self.port: _StreamPort | None = None

    @property
    def tracker(self) -> ConnectionTracker:
        return self.factory.tracker

    @property
    def bound(self) -> bool:
        return self.port is not None

    def describe(self) -> tuple[str, str]:
        return "dogstatsd_stream_socket", f"listen on unix stream socket {self.path}"

    def bind(self) -> None:
        sockets.prepare_path(self.path)
        port = _StreamPort(self.path, self.factory, self.backlog, self.mode, self.reactor)
        port.startListening()
        port.identity = sockets.file_identity(self.path)
        self.port = port
        self.log.info(
            LISTENING,
            path=self.path,
            mode=oct(self.mode),
            cap=self.factory.max_connections or "any number of",
            log_category="UDS_STREAM_LISTENING",
        )

    def read_pending(self) -> None:
        """Accept waiting connections, then read what the kernel holds for each (one round each)."""
        if self.port is not None:
            self.port.doRead()
        for protocol in list(self.tracker.connections):
            protocol.read_available(65536)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        return defer.ensureDeferred(self._stop(port))

    async def _stop(self, port) -> None:
        if port is None:
            return
        await port.stopListening()
        count = len(self.tracker)
        await self.tracker.close_all()
        self.log.info(CLOSED, path=self.path, count=count, log_category="UDS_STREAM_CLOSED")
