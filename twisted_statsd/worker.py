"""The worker process of multi-process intake: ``python -m twisted_statsd.worker CONFIG_JSON``.

Started by :class:`twisted_statsd.workers.WorkerPoolService`, never by hand.
It adopts the server's UDP socket (file descriptor 3), parses and aggregates
what it reads, and answers each ``ship`` line on stdin with its aggregates
and telemetry since the last one, framed on stdout; ``stop`` ships a last
time and exits.  Errors go to stderr, which the server logs.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from twisted_statsd.config import load_config

UDP_FD = 3


def main() -> None:
    from twisted.internet import reactor, stdio, udp
    from twisted.internet.interfaces import IReactorSocket
    from twisted.protocols.basic import LineReceiver

    from twisted_statsd.listeners.senders import SenderAllowList
    from twisted_statsd.listeners.udp import DatagramReceiver
    from twisted_statsd.service import build_intake, build_pipeline
    from twisted_statsd.workers import FRAME_LENGTH

    config = load_config(data=json.loads(sys.argv[1]))
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

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            port.doRead()  # what the socket holds now belongs to this ship
            intake.drain()
            pipeline.fold()
            state = {
                "aggregates": pipeline.aggregator.export(),
                "telemetry": pipeline.telemetry.deltas(),
            }
            frame = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            out.write(FRAME_LENGTH.pack(len(frame)) + frame)
            if line == b"stop":
                port.stopListening()
                reactor.stop()

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            if reactor.running:
                reactor.stop()

    intake.startService()
    # Twisted's stubs see the Windows StandardIO, which has no stdout argument; the POSIX one has.
    stdio.StandardIO(Commands(), stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]
    reactor.run()


if __name__ == "__main__":
    main()
