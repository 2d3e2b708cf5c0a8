"""The channels between intake processes: lines to their owner, and the barrier before each ship.

Every pair of intake processes shares a stream socket pair, made by the
server before it starts the workers (:mod:`twisted_statsd.workers`).  On it go
length-prefixed messages: ``L`` and a frame of lines the receiver owns
(:mod:`twisted_statsd.intake.shard`), which it aggregates at once, and ``B``,
a barrier.  Before each ship every process routes what it has read, then sends
a barrier to every peer; a stream keeps order, so once a process has the
barrier of this round from every peer it holds every line routed to it before
the ship, and exports.

Writes never block: Twisted buffers them.  When a peer's buffer passes
``SEND_BUFFER``, this process stops reading its datagram socket until the
peer has caught up (the kernel then queues, and counts what it drops), so a
slow owner slows its senders instead of growing their memory.  A peer that is
gone satisfies every barrier, and the lines it owned are kept by whoever
read them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorSocket
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_statsd.intake.pipeline import FEW_SHAPES, Pipeline
from twisted_statsd.intake.shard import Router, decode
from twisted_statsd.telemetry import Telemetry

LINES = b"L"
BARRIER = b"B"
# Bytes a channel buffers before its sender stops reading: Twisted pauses a
# producer past the transport's ``bufferSize`` (64 KiB by default, and the most
# it reads at once).  A flush of 100,000 contexts keeps a process away from its
# channels for seconds, while its peers forward it about 1 MB/s at 40,000
# lines/s: with 64 KiB they would stop reading as soon as it flushes.
SEND_BUFFER = 8 << 20
# The largest message a peer accepts: the lines of one batch, well above the packet buffer's.
MAX_MESSAGE = 64 << 20


class PeerChannel(Int32StringReceiver):
    """One end of the channel to process ``peer``."""

    MAX_LENGTH = MAX_MESSAGE

    def __init__(self, peers: Peers, peer: int):
        self.peers = peers
        self.peer = peer

    def connectionMade(self) -> None:
        self.transport.bufferSize = SEND_BUFFER  # type: ignore[union-attr]  # a FileDescriptor's, public
        IConsumer(self.transport).registerProducer(_Pause(self.peers, self.peer), True)

    def stringReceived(self, message: bytes) -> None:
        kind, body = message[:1], message[1:]
        if kind == LINES:
            origin, lines = decode(body)
            self.peers.pipeline.process([lines], self.peers.clock.seconds(), origin=origin, owned=True)
        elif kind == BARRIER:
            self.peers.barrier_from(self.peer)

    def lengthLimitExceeded(self, length: int) -> None:
        self.peers.telemetry.incr("shard_errors")
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.peers.lost(self.peer)


class _Adopting(ServerFactory):
    """Hands the one channel built beforehand to the adopted connection."""

    def __init__(self, channel: PeerChannel):
        self.channel = channel

    def buildProtocol(self, addr) -> PeerChannel:
        return self.channel


@implementer(IPushProducer)
class _Pause:
    """Told by a channel's transport when its buffer is full, and when it has drained."""

    def __init__(self, peers: Peers, peer: int):
        self.peers = peers
        self.peer = peer

    def pauseProducing(self) -> None:
        self.peers.pause(self.peer)

    def resumeProducing(self) -> None:
        self.peers.resume(self.peer)

    def stopProducing(self) -> None:
        self.peers.resume(self.peer)


class Peers:
    """This process's channels to the other intake processes, and its router.

    The router starts routing once the pipeline caches more than ``FEW_SHAPES``
    shapes (``_route_after_shapes``, for tests).

    ``pause_reading`` and ``resume_reading`` stop and restart this process's
    datagram socket.  Invariant: ``_paused`` holds the peers whose channel
    buffer is full; reading is stopped exactly while it is not empty.
    """

    def __init__(
        self,
        clock,
        pipeline: Pipeline,
        telemetry: Telemetry,
        index: int,
        count: int,
        pause_reading: Callable[[], None] = lambda: None,
        resume_reading: Callable[[], None] = lambda: None,
        _route_after_shapes: int = FEW_SHAPES,
    ):
        self.clock = clock
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.router = Router(index, count, self.send, _route_after_shapes)
        pipeline.router = self.router
        self.pause_reading = pause_reading
        self.resume_reading = resume_reading
        self.channels: dict[int, PeerChannel] = {}
        self._barriers = dict.fromkeys((p for p in range(count) if p != index), 0)
        self._round = 0
        self._waiting: list[tuple[int, defer.Deferred[None]]] = []
        self._paused: set[int] = set()

    def adopt(self, reactor, peer: int, fd: int) -> None:
        """Take the connected stream socket ``fd`` as the channel to ``peer`` (the caller closes ``fd``)."""
        channel = PeerChannel(self, peer)
        IReactorSocket(reactor).adoptStreamConnection(fd, socket.AF_UNIX, _Adopting(channel))
        self.channels[peer] = channel

    def send(self, peer: int, frame: bytes) -> None:
        self.channels[peer].sendString(LINES + frame)

    def barrier(self) -> defer.Deferred[None]:
        """Send this round's barrier to every peer; fires once every live peer's has arrived."""
        self._round += 1
        for channel in self.channels.values():
            channel.sendString(BARRIER)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((self._round, d))
        self._release()
        return d

    def barrier_from(self, peer: int) -> None:
        self._barriers[peer] += 1
        self._release()

    def lost(self, peer: int) -> None:
        """``peer`` is gone: its lines stay with their readers, and it holds no barrier back."""
        self.router.lost.add(peer)
        self.channels.pop(peer, None)
        self._barriers[peer] = 1 << 62
        self.resume(peer)
        self._release()

    def _release(self) -> None:
        reached = min(self._barriers.values(), default=self._round)
        ready = [d for round_, d in self._waiting if round_ <= reached]
        self._waiting = [(round_, d) for round_, d in self._waiting if round_ > reached]
        for d in ready:
            d.callback(None)

    def pause(self, peer: int) -> None:
        if not self._paused:
            self.pause_reading()
        self._paused.add(peer)
        self.telemetry.incr("shard_pauses")

    def resume(self, peer: int) -> None:
        if peer in self._paused:
            self._paused.discard(peer)
            if not self._paused:
                self.resume_reading()

    def close(self) -> None:
        """Close every channel (at stop)."""
        for channel in list(self.channels.values()):
            channel.close()
