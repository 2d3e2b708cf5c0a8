"""The worker process of multi-process intake: ``python -m twisted_statsd.worker CONFIG INDEX COUNT UNIX``.

Started by :class:`twisted_statsd.workers.WorkerPoolService`, never by hand.
It adopts the server's UDP socket (file descriptor 3), the Unix datagram
socket (4) when UNIX is ``uds`` or ``uds+origin``, and its channels to the
other intake processes (5 and up); it aggregates the lines it owns of what it
reads or is sent, and sends the others to their owners.  Each ``ship CUTOFF``
line on stdin is answered, once every peer's barrier is in, with the buckets
due at ``CUTOFF`` and the telemetry since the last ship, framed on stdout;
``stop`` ships everything and exits.  Errors go to stderr, which the server logs.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from twisted_statsd.config import load_config


def main() -> None:
    from twisted.internet import reactor, stdio, udp
    from twisted.internet.interfaces import IReactorSocket
    from twisted.protocols.basic import LineReceiver

    from twisted_statsd.listeners.senders import SenderAllowList
    from twisted_statsd.listeners.udp import DatagramReceiver
    from twisted_statsd.service import build_intake, build_pipeline
    from twisted_statsd.shards import Peers
    from twisted_statsd.workers import FRAME_LENGTH, PEER_FD, UDP_FD

    config = load_config(data=json.loads(sys.argv[1]))
    index, count, unix = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pipeline = build_pipeline(config)
    intake = build_intake(config, reactor, pipeline)
    senders = SenderAllowList(config.dogstatsd_allowed_senders) if config.dogstatsd_allowed_senders else None
    receiver = DatagramReceiver(intake.buffer_for("udp"), config.dogstatsd_buffer_size, pipeline.reporter, senders)
    probe = socket.socket(fileno=os.dup(UDP_FD))
    family = probe.family
    probe.close()
    adopted = IReactorSocket(reactor).adoptDatagramPort(
        UDP_FD, family, receiver, max(receiver.read_size, config.dogstatsd_buffer_size + 1)
    )
    os.close(UDP_FD)  # adoptDatagramPort holds its own copy
    assert isinstance(adopted, udp.Port)  # what every POSIX reactor adopts a datagram socket as; read below
    port: udp.Port = adopted
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    unixgram = _unix_datagram_reader(reactor, config, intake, pipeline, unix) if unix != "-" else None

    def pause_reading() -> None:
        port.stopReading()
        if unixgram is not None:
            unixgram.pause_reading()

    def resume_reading() -> None:
        port.startReading()
        if unixgram is not None:
            unixgram.resume_reading()

    peers = Peers(
        reactor,
        pipeline,
        pipeline.telemetry,
        index,
        count,
        pause_reading=pause_reading,
        resume_reading=resume_reading,
    )
    for peer in range(count):
        if peer != index:
            peers.adopt(reactor, peer, PEER_FD + peer)
            os.close(PEER_FD + peer)  # adoptStreamConnection holds its own copy

    def ship(cutoff: int | None) -> defer.Deferred[None]:
        """Route what is read, wait for every peer's barrier, then export the buckets due."""
        port.doRead()  # what the sockets hold now belongs to this ship
        if unixgram is not None:
            unixgram.read(unixgram.budget)
        intake.drain()
        return peers.barrier().addCallback(lambda _: export(cutoff))

    def export(cutoff: int | None) -> None:
        pipeline.fold()
        state = {
            "aggregates": pipeline.aggregator.export(cutoff),
            "telemetry": pipeline.telemetry.deltas(),
        }
        frame = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(FRAME_LENGTH.pack(len(frame)) + frame)

    class Commands(LineReceiver):
        """Runs the server's commands one after another, each once the one before is done."""

        delimiter = b"\n"

        def __init__(self) -> None:
            self.done: defer.Deferred[None] = defer.succeed(None)

        def lineReceived(self, line: bytes) -> None:
            command, _, cutoff = line.partition(b" ")
            self.done.addCallback(lambda _: ship(int(cutoff) if cutoff else None))
            if command == b"stop":
                self.done.addCallback(lambda _: stop())
            self.done.addErrback(lambda f: f.printTraceback(sys.stderr))

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            if reactor.running:
                reactor.stop()

    def stop() -> None:
        port.stopListening()
        if unixgram is not None:
            unixgram.stop_reading()
        peers.close()
        reactor.stop()

    intake.startService()
    # Twisted's stubs see the Windows StandardIO, which has no stdout argument; the POSIX one has.
    stdio.StandardIO(Commands(), stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]
    reactor.run()


def _unix_datagram_reader(reactor, config, intake, pipeline, unix: str):
    """Read the server's Unix datagram socket too, detecting origins if the server does."""
    from twisted_statsd._twisted_helpers import periodic
    from twisted_statsd.listeners import sockets
    from twisted_statsd.listeners.origin import ORIGIN_TTL, OriginResolver
    from twisted_statsd.listeners.unixgram import DatagramSocketReader, UnixDatagramReceiver
    from twisted_statsd.workers import UNIXGRAM_FD

    origin = unix == "uds+origin"
    resolver = OriginResolver(pipeline.reporter) if origin else None
    receiver = UnixDatagramReceiver(intake, config.dogstatsd_buffer_size, pipeline.reporter, resolver)
    receiver.open()
    reader = DatagramSocketReader(
        reactor,
        socket.socket(fileno=UNIXGRAM_FD),
        receiver.datagram_received,
        pipeline.reporter,
        buffer_size=config.dogstatsd_buffer_size,
        ancillary_size=sockets.CREDENTIALS_SPACE if origin else 0,
    )
    if origin:
        expire = periodic(
            reactor, ORIGIN_TTL, lambda: receiver.expire_origins(reactor.seconds()), pipeline.telemetry, "origin_expiry"
        )
        expire.startService()
    reader.start_reading()
    return reader


if __name__ == "__main__":
    main()
