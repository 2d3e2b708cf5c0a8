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

from twisted.internet import tcp, unix

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.listeners import sockets
from twisted_statsd.listeners.origin import OriginResolver
from twisted_statsd.listeners.streams import StreamError, StreamFactory, StreamListenerService, StreamProtocol

_LENGTH = struct.Struct("<I")
#: Bytes of a refused frame kept for the log when ``dogstatsd_stream_log_too_big`` is on.
SAMPLE_SIZE = 256

LISTENING = "Listening for DogStatsD on unix stream socket {path} (mode {mode}, at most {cap} connections)"
CLOSED = "Closed unix stream socket {path} and {count} connections"


class FrameDecoder:
    """Splits a stream into frames: ``<I`` length, then that many bytes.

    :meth:`feed` returns the frames completed by the new bytes.  A length of 0
    or above ``max_length`` sets :attr:`error` and ends decoding: the frames
    before it are still returned, and nothing after it is.

    Invariant: ``_pending`` holds the start of one incomplete frame, whose
    header (once complete) has been checked, so it never exceeds
    ``4 + max_length`` bytes.
    """

    TRUNCATED = ("stream_frame_truncated", "the connection closed in the middle of a frame")

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.error: StreamError | None = None
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._pending)

    @property
    def pending_sample(self) -> bytes:
        """The header of the incomplete frame, for logs."""
        return bytes(self._pending[:4])

    def _refusal(self, length: int, sample: bytes) -> StreamError:
        if length == 0:
            return StreamError("stream_frame_empty", "a frame of length 0; the connection is closed", length, sample)
        return StreamError(
            "stream_frame_too_large",
            f"a frame of {length} bytes, over dogstatsd_buffer_size ({self.max_length}); the connection is closed",
            length,
            sample,
        )

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        pending = self._pending
        buf: bytes | bytearray
        if pending:
            pending += data
            buf = pending
        else:
            buf = data
        frames: list[bytes] = []
        offset, end, limit = 0, len(buf), self.max_length
        unpack_from = _LENGTH.unpack_from
        while end - offset >= 4:
            (length,) = unpack_from(buf, offset)
            if length == 0 or length > limit:
                self.error = self._refusal(length, bytes(buf[offset : offset + 4 + SAMPLE_SIZE]))
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


class FramedStreamProtocol(StreamProtocol):
    """One Unix stream connection: length-prefixed frames."""

    #: The peer's uid, once admitted under the per-user cap.
    user: int | None = None


class FramedStreamFactory(StreamFactory):
    """Unix stream connections: frames of at most ``max_frame`` bytes, tagged with the sender's container.

    With ``max_connections_per_user``, one local user (the peer's uid from
    SO_PEERCRED) cannot hold more than that many connections, so cannot take
    every connection the cap allows.  Invariant: ``_per_user`` counts the open
    connections admitted for each uid; an admitted protocol's ``user`` is its
    uid, and only those are counted down when they close.
    """

    protocol = FramedStreamProtocol

    def __init__(
        self,
        intake,
        reporter: RateLimitedReporter,
        *,
        resolver: OriginResolver | None = None,
        log_too_big: bool = False,
        max_connections_per_user: int = 0,
        **options,
    ):
        super().__init__(intake, reporter, **options)
        self.resolver = resolver
        self.log_refused_input = log_too_big
        self.max_connections_per_user = max_connections_per_user
        self._per_user: dict[int, int] = {}

    def new_decoder(self) -> FrameDecoder:
        return FrameDecoder(self.max_frame)

    def peer_of(self, transport) -> sockets.Credentials | None:
        """The process at the other end (SO_PEERCRED), when origin detection or the per-user cap needs it."""
        if self.resolver is None and not self.max_connections_per_user:
            return None
        try:
            return sockets.peer_credentials(transport.getHandle())
        except OSError as e:
            self.reporter.report("origin_detection_failed", f"SO_PEERCRED failed: {e.strerror or e}", dropped=False)
            return None

    def origin_of(self, peer: sockets.Credentials | None) -> bytes | None:
        """The container of the process at the other end, when origin detection is on."""
        if self.resolver is None or peer is None:
            return None
        return self.resolver.origin(peer.pid, self.clock.seconds())

    def admit_peer(self, protocol: StreamProtocol) -> bool:
        assert isinstance(protocol, FramedStreamProtocol)  # the only protocol this factory builds
        peer = protocol.peer
        if not self.max_connections_per_user or peer is None:
            return True
        count = self._per_user.get(peer.uid, 0)
        if count >= self.max_connections_per_user:
            self.reporter.report(
                "stream_connection_refused_user",
                f"user {peer.uid} has {count} connections open, the dogstatsd_stream_max_connections_per_user limit",
            )
            return False
        self._per_user[peer.uid] = count + 1
        protocol.user = peer.uid
        return True

    def forget_peer(self, protocol: StreamProtocol) -> None:
        assert isinstance(protocol, FramedStreamProtocol)  # the only protocol this factory builds
        uid = protocol.user
        if uid is not None:
            protocol.user = None
            left = self._per_user[uid] - 1
            if left:
                self._per_user[uid] = left
            else:
                del self._per_user[uid]


class _StreamPort(unix.Port):
    """``listenUNIX``'s port, except for the socket file when it closes.

    Twisted's port unlinks its path unconditionally when it closes, and if the
    file is already gone the unlink raises before the socket is closed, so
    ``stopListening`` fails and the descriptor leaks.  This one removes the file
    only if it is still the one it bound, and always closes the socket.
    """

    identity: tuple[int, int] | None = None

    def __init__(self, path: str, factory, backlog: int, mode: int, reactor):
        # Twisted annotates the path as bytes; listenUNIX passes the str it is given, as here.
        super().__init__(path, factory, backlog, mode, reactor)  # type: ignore[arg-type]
        self.port_path = path

    def connectionLost(self, reason):
        sockets.remove_socket_file(self.port_path, self.identity)
        tcp.Port.connectionLost(self, reason)


class UnixStreamListenerService(StreamListenerService):
    """Binds the stream socket in ``privilegedStartService``; on stop closes every connection.

    Stopping (see :class:`StreamListenerService`) also removes the socket
    file.  ``lockfile``-style PID locking (``listenUNIX``'s ``wantPID``) is
    not used: it leaves a second file behind and only recognises stale sockets
    of processes that also locked; :func:`sockets.prepare_path` probes the
    socket itself.
    """

    def __init__(
        self,
        reactor,
        factory: FramedStreamFactory,
        path: str,
        *,
        mode: int = sockets.DEFAULT_SOCKET_MODE,
        backlog: int = socket.SOMAXCONN,
    ):
        super().__init__(reactor, factory, backlog)
        self.path = path
        self.mode = mode
        self.port: _StreamPort | None = None

    def describe(self) -> tuple[str, str]:
        return "dogstatsd_stream_socket", f"listen on unix stream socket {self.path}"

    def bind(self) -> None:
        sockets.prepare_path(self.path)
        port = _StreamPort(self.path, self.factory, self.backlog, self.mode, self.reactor)
        with sockets.created_with_mode(self.mode):  # Twisted's chmod after bind then changes nothing
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

    def log_closed(self, count: int) -> None:
        self.log.info(CLOSED, path=self.path, count=count, log_category="UDS_STREAM_CLOSED")
