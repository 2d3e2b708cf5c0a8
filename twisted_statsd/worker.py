"""The worker process of multi-process intake: ``python -m twisted_statsd.worker CONFIG_JSON INDEX COUNT``.

Started by :class:`twisted_statsd.workers.WorkerPoolService`, never by hand.
It adopts the server's UDP socket (file descriptor 3) and its channels to the
other intake processes (4 and up), aggregates the lines it owns of what it
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
    index, count = int(sys.argv[2]), int(sys.argv[3])
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
    peers = Peers(
        reactor,
        pipeline,
        pipeline.telemetry,
        index,
        count,
        pause_reading=port.stopReading,
        resume_reading=port.startReading,
    )
    for peer in range(count):
        if peer != index:
            peers.adopt(reactor, peer, PEER_FD + peer)
            os.close(PEER_FD + peer)  # adoptStreamConnection holds its own copy

    def ship(cutoff: int | None) -> defer.Deferred[None]:
        """Route what is read, wait for every peer's barrier, then export the buckets due."""
        port.doRead()  # what the socket holds now belongs to this ship
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
        peers.close()
        reactor.stop()

    intake.startService()
    # Twisted's stubs see the Windows StandardIO, which has no stdout argument; the POSIX one has.
    stdio.StandardIO(Commands(), stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]
    reactor.run()


if __name__ == "__main__":
    main()
