"""What the stream listeners (Unix stream, TCP) share: connections, their limits, and stopping.

A stream listener differs only in how it cuts bytes into packets (length
frames on the Unix socket, newlines on TCP), which its decoder does, and in
how it binds.  Everything else is here, once:

* :class:`StreamProtocol`: one connection; each read goes through the
  decoder and its packets into the connection's own packet buffer, with no
  Deferred, timer or log call per read; input the decoder refuses closes the
  connection and is counted; memory pressure pauses reading
  (:class:`~twisted_statsd.listeners.memory.ReadThrottle`).
* :class:`StreamFactory`: the connection cap and the sender allow-list,
  checked before a protocol exists, so a refused connection costs nothing;
  hooks for listeners that know who the peer is (the Unix stream listener's
  origin detection and per-user cap).
* :class:`ConnectionTracker`: the open connections, the idle timeout (one
  timer for all of them) and the wait for them all to close at stop.
* :class:`StreamListenerService`: stop accepting, read what each client sent,
  close every connection and wait for it.

A decoder has ``feed(data) -> list[bytes]``, ``error`` (a :class:`StreamError`
or None, after which it returns nothing), ``pending`` (bytes held for an
incomplete packet), ``pending_sample`` and ``TRUNCATED`` (the drop reason and
message when a connection closes with bytes pending).
"""

from __future__ import annotations

import socket
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

from twisted.internet import defer, tcp
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from twisted_statsd._binding import BindingService
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._twisted_helpers import PeriodicService, Waiters, periodic
from twisted_statsd.intake.buffer import PacketBuffer
from twisted_statsd.listeners.memory import ReadThrottle
from twisted_statsd.listeners.senders import SenderAllowList
from twisted_statsd.telemetry import Telemetry

#: Bytes read from each connection at stop, before it is closed.
DRAIN_LIMIT = 4 * 1024 * 1024
#: The idle check runs this many times per idle timeout, so an idle
#: connection is closed between 1 and 1.25 timeouts after its last packet.
IDLE_CHECKS = 4


class StreamError(Exception):
    """Input that ends a connection: ``reason`` is the drop reason, ``message`` says why.

    ``sample`` is the start of the refused input, for the log; ``length`` the
    size the input claimed or reached.
    """

    def __init__(self, reason: str, message: str, length: int, sample: bytes):
        super().__init__(reason, length)
        self.reason = reason
        self.message = message
        self.length = length
        self.sample = sample


class Decoder(TypingProtocol):
    """What a stream listener's decoder provides (see the module docstring)."""

    TRUNCATED: ClassVar[tuple[str, str]]
    error: StreamError | None

    @property
    def pending(self) -> int: ...

    @property
    def pending_sample(self) -> bytes: ...

    def feed(self, data: bytes) -> list[bytes]: ...


class ConnectionTracker:
    """The open connections, so that stopping can close them all and wait, and idle ones can be closed.

    The count is published as the ``<prefix>_connections`` gauge.  With an
    ``idle_timeout``, one periodic check (running between :meth:`start` and
    :meth:`stop`) closes connections that completed no packet for that long
    (silent, or holding a partial frame or line) and counts them in
    ``<prefix>_connections_idle_closed``.  Invariant: a connection's
    ``idle_checks`` is the number of checks since its last complete packet,
    which the protocol resets with a plain attribute store.
    """

    def __init__(self, telemetry: Telemetry, prefix: str = "uds", *, clock=None, idle_timeout: float = 0.0):
        self.telemetry = telemetry
        self.connections: set = set()
        self._gauge = prefix + "_connections"
        self._idle_counter = prefix + "_connections_idle_closed"
        self.idle_timeout = idle_timeout
        self._empty = Waiters()
        self._idle_loop: PeriodicService | None = None
        if idle_timeout:
            interval = idle_timeout / IDLE_CHECKS
            self._idle_loop = periodic(clock, interval, self.close_idle, telemetry, prefix + "_idle_check")
        telemetry.set_gauge(self._gauge, 0)

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, protocol) -> None:
        self.connections.add(protocol)
        self.telemetry.set_gauge(self._gauge, len(self.connections))

    def remove(self, protocol) -> None:
        self.connections.discard(protocol)
        self.telemetry.set_gauge(self._gauge, len(self.connections))
        if not self.connections:
            self._empty.fire()

    def start(self) -> None:
        """Start closing idle connections (when there is an idle timeout)."""
        if self._idle_loop is not None and not self._idle_loop.running:
            self._idle_loop.startService()

    def stop(self) -> None:
        if self._idle_loop is not None:
            self._idle_loop.stopService()

    def close_idle(self) -> None:
        """Close every connection that completed no packet in the last ``IDLE_CHECKS`` full check intervals."""
        for protocol in list(self.connections):
            protocol.idle_checks += 1
            # Equality: a connection still closing at the next check is not counted again.
            if protocol.idle_checks == IDLE_CHECKS + 1:
                self.telemetry.incr(self._idle_counter)
                protocol.drop_connection()

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


class StreamProtocol(Protocol):
    """One client connection: packets go to the connection's packet buffer; never raises."""

    factory: StreamFactory
    #: tcp.Server, unix.Server, or the TLS layer over one: no interface of
    #: Twisted's declares what is used here (pause/resumeProducing, connected,
    #: disconnecting, getHandle) together.
    transport: Any
    # Both set in connectionMade; the buffer is handed back in connectionLost.
    decoder: Decoder | None = None
    buffer: PacketBuffer | None = None
    refused = False
    idle_checks = 0
    #: Who is at the other end, for listeners that can tell (SO_PEERCRED on Unix sockets).
    peer = None

    def connectionMade(self):
        factory = self.factory
        self.peer = factory.peer_of(self.transport)
        self.decoder = factory.new_decoder()
        self.buffer = factory.intake.buffer_for(factory.transport_name, factory.origin_of(self.peer))
        factory.tracker.add(self)
        if not factory.admit_peer(self):
            self.refused = True
            self.drop_connection()

    def dataReceived(self, data: bytes):
        decoder, buffer = self.decoder, self.buffer
        if decoder is None or buffer is None:  # not connected (yet, or any more)
            return
        packets = decoder.feed(data)
        if packets:
            # Only a complete packet counts as activity: trickling a frame or a line byte by byte does not.
            self.idle_checks = 0
            append = buffer.append
            for packet in packets:
                append(packet)
        if decoder.error is not None:
            if not self.refused:
                self.refused = True
                error = decoder.error
                sample = error.sample if self.factory.log_refused_input else error.sample[:4]
                self.factory.reporter.report(error.reason, error.message, sample)
                self.drop_connection()
            return
        throttle = self.factory.throttle
        if throttle is not None and throttle.delay:
            throttle.hold(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        factory = self.factory
        decoder = self.decoder
        if decoder is not None and decoder.pending:
            truncated, message = decoder.TRUNCATED
            factory.reporter.report(truncated, message, decoder.pending_sample)
        factory.tracker.remove(self)
        factory.forget_peer(self)
        if factory.throttle is not None:
            factory.throttle.forget(self)
        if self.buffer is not None:
            factory.intake.release(self.buffer)
            self.buffer = None

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def _socket_layer(self):
        """The transport that owns the socket, and the protocol its bytes go to.

        Over TLS our transport is the TLS layer: raw bytes must go through it
        to be decrypted, and only the TCP transport under it can close the
        socket without waiting for the client's TLS close alert.
        """
        transport = self.transport
        if isinstance(transport, ProtocolWrapper):
            return transport.transport, transport
        return transport, self

    def read_available(self, limit: int) -> None:
        """Read what the kernel already holds for this connection, up to ``limit`` bytes.

        Reading through the handle is synchronous and bypasses a pause, which
        is what stopping and on-demand flushes want.  End of file is left for
        the transport to notice.
        """
        transport, receiver = self._socket_layer()
        handle = transport.getHandle()
        while limit > 0 and self.decoder is not None and self.decoder.error is None:
            if self.transport.disconnecting or not self.transport.connected or transport.disconnecting:
                return
            try:
                data = handle.recv(min(limit, 65536), socket.MSG_DONTWAIT)
            except OSError:
                return
            if not data:
                return
            limit -= len(data)
            receiver.dataReceived(data)

    def drop_connection(self) -> None:
        """Close now; we never write, so nothing waits to be sent but a TLS close alert."""
        transport, _ = self._socket_layer()
        if transport is not self.transport:
            self.transport.loseConnection()
        transport.loseConnection()

    def close(self) -> None:
        """Read what the client already sent, then close the connection."""
        self.read_available(DRAIN_LIMIT)
        self.drop_connection()


class StreamFactory(Factory):
    """Builds connection protocols; refuses senders outside the allow-list and connections over the cap.

    A subclass names its transport (``transport_name``: the packet counters'
    tag and the telemetry prefix), the drop reason of a connection over the
    cap and the configuration key that sets it, and :meth:`new_decoder`.
    """

    noisy = False
    protocol: type[StreamProtocol] = StreamProtocol  # type: ignore[assignment]  # Twisted's Factory types it by a TypeVar of its own
    transport_name = "uds"
    refused_reason = "stream_connection_refused"
    cap_key = "dogstatsd_stream_max_connections"
    log_refused_input = True

    def __init__(
        self,
        intake,
        reporter: RateLimitedReporter,
        *,
        clock,
        max_frame: int,
        max_connections: int = 0,
        idle_timeout: float = 0.0,
        throttle: ReadThrottle | None = None,
        senders: SenderAllowList | None = None,
    ):
        self.intake = intake
        self.reporter = reporter
        self.clock = clock
        self.tracker = ConnectionTracker(
            reporter.telemetry, self.transport_name, clock=clock, idle_timeout=idle_timeout
        )
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.throttle = throttle
        self.senders = senders

    def new_decoder(self):
        raise NotImplementedError

    def peer_of(self, transport):
        """Who is at the other end, for listeners that can tell; read once per connection."""
        return None

    def origin_of(self, peer) -> bytes | None:
        """The sender's container ID, for listeners that can tell it."""
        return None

    def admit_peer(self, protocol: StreamProtocol) -> bool:
        """Whether a connection, once its peer is known, may stay; a refusal is counted."""
        return True

    def forget_peer(self, protocol: StreamProtocol) -> None:
        """A connection admitted by :meth:`admit_peer` has closed."""

    def admit(self, addr) -> bool:
        """Whether to accept a connection from ``addr``; a refusal is counted and the socket closed."""
        if self.senders is not None and not self.senders.allows(addr.host):
            self.reporter.report(
                self.transport_name + "_sender_refused", f"{addr.host} is not in dogstatsd_allowed_senders"
            )
            return False
        if self.max_connections and len(self.tracker) >= self.max_connections:
            self.reporter.report(
                self.refused_reason, f"{len(self.tracker)} connections are open, the {self.cap_key} limit"
            )
            return False
        self.reporter.telemetry.incr(self.transport_name + "_connections_accepted")
        return True

    def make_protocol(self) -> StreamProtocol:
        protocol = self.protocol()
        protocol.factory = self
        return protocol

    def buildProtocol(self, addr):
        return self.make_protocol() if self.admit(addr) else None


class StreamListenerService(BindingService):
    """A stream listener's port: bound in ``privilegedStartService``; on stop every connection is closed.

    ``stopService`` returns a Deferred that fires only after accepting has
    stopped, and every connection has been read, closed and its buffer handed
    to the pipeline.  Subclasses bind ``self.port`` and say what they closed.
    """

    log = Logger()
    factory: StreamFactory
    #: The listening port (a Unix stream port is a tcp.Port subclass too).
    port: tcp.Port | None = None

    def __init__(self, reactor, factory: StreamFactory, backlog: int):
        self.reactor = reactor
        self.factory = factory
        self.backlog = backlog

    @property
    def tracker(self) -> ConnectionTracker:
        return self.factory.tracker

    @property
    def bound(self) -> bool:
        return self.port is not None

    def read_pending(self) -> None:
        """Accept waiting connections, then read what the kernel holds for each (one round each)."""
        if self.port is not None:
            self.port.doRead()
        for protocol in list(self.tracker.connections):
            protocol.read_available(65536)

    def startService(self):
        super().startService()
        self.tracker.start()

    def stopService(self):
        super().stopService()
        self.tracker.stop()
        port, self.port = self.port, None
        return defer.ensureDeferred(self._stop(port))

    async def _stop(self, port) -> None:
        if port is None:
            return
        await port.stopListening()
        count = len(self.tracker)
        await self.tracker.close_all()
        self.log_closed(count)

    def log_closed(self, count: int) -> None:
        raise NotImplementedError
