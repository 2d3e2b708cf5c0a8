"""Multi-process intake (``dogstatsd_workers``): more cores reading one UDP socket.

The server binds its UDP socket as usual and starts ``dogstatsd_workers - 1``
worker processes with ``spawnProcess``, handing each the same socket as file
descriptor 3 (``childFDs``); a worker adopts it with ``adoptDatagramPort``.
The kernel gives each datagram to exactly one reader, so even a single client
is spread over every process.  Each worker parses and aggregates on its own;
before every flush, and at stop, the server asks each for its partial
aggregates (``ship``), and folds them into its own with
:meth:`Aggregator.merge`, so the flushed output is what one process would
have produced.  Frames on the workers' stdout are a 4-byte little-endian
length and a pickle: the children are this program, started by this process.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from twisted_statsd._twisted_helpers import deadline
from twisted_statsd.config import Config, as_data
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.telemetry import Telemetry

# How long the server waits for a worker's aggregates before flushing without them.
SHIP_TIMEOUT = 10.0
# Frames on a worker's stdout: this length (little-endian) and then a pickle.
FRAME_LENGTH = struct.Struct("<I")


# Keys a worker is not given: the sinks are the server's, and a secret has no
# place on a command line.  Every other key goes, so a key added to Config
# reaches the workers' pipelines without being listed here.
SERVER_ONLY_KEYS = frozenset({"sinks", "api_key"})


def config_data(config: Config) -> dict:
    """The configuration a worker is started with, as plain JSON data for its command line."""
    return as_data(config, leave_out=SERVER_ONLY_KEYS)


class WorkerProtocol(ProcessProtocol):
    """The server's side of one worker: sends commands, decodes shipped aggregates."""

    log = Logger()

    def __init__(self):
        self._buffer = b""
        # One per request sent, answered in order by the frames that come back (a queue, not Waiters).
        self._waiting: list[defer.Deferred] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def request(self, command: bytes) -> defer.Deferred:
        """Send ``ship`` or ``stop``; fires with the worker's exported aggregates."""
        if self.transport is None:
            return defer.fail(RuntimeError("the worker process is not running"))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        self.transport.write(command + b"\n")
        return d

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = FRAME_LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < 4 + length:
                return
            frame, self._buffer = self._buffer[4 : 4 + length], self._buffer[4 + length :]
            if self._waiting:
                self._waiting.pop(0).callback(pickle.loads(frame))

    def errReceived(self, data: bytes) -> None:
        self.log.warn(
            "Worker {pid}: {text}",
            pid=self.transport.pid if self.transport else None,
            text=data.decode("utf-8", "replace").rstrip(),
        )

    def processEnded(self, reason) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)
        self.ended.callback(None)


class WorkerPoolService(Service):
    """Starts the workers, collects their aggregates before each flush, and stops them."""

    log = Logger()

    def __init__(self, reactor, udp, aggregator: Aggregator, telemetry: Telemetry, count: int, config: Config):
        self.reactor = reactor
        self.udp = udp
        self.aggregator = aggregator
        self.telemetry = telemetry
        self.count = count
        self.config = config
        self.workers: list[WorkerProtocol] = []

    def startService(self):
        super().startService()
        fd = self.udp.port.fileno()
        argv = [sys.executable, "-m", "twisted_statsd.worker", json.dumps(config_data(self.config))]
        for _ in range(self.count):
            protocol = WorkerProtocol()
            self.reactor.spawnProcess(
                protocol, sys.executable, argv, env=None, childFDs={0: "w", 1: "r", 2: "r", 3: fd}
            )
            self.workers.append(protocol)
        self.log.info("Started {count} intake workers sharing the UDP socket", count=self.count)

    async def collect(self, command: bytes = b"ship") -> None:
        """Fold every worker's aggregates into ours; a worker that does not answer is counted."""
        requests = [w.request(command) for w in self.workers if not w.ended.called]
        for d in requests:
            d.addTimeout(SHIP_TIMEOUT, self.reactor)
        for outcome, result in await defer.DeferredList(requests, consumeErrors=True):
            if not outcome:
                self.telemetry.incr("worker_errors")
                self.log.error("A worker did not ship its aggregates: {error}", error=result.getErrorMessage())
                continue
            self.aggregator.merge(result["aggregates"])
            for name, tags, n in result["telemetry"]:
                self.telemetry.incr(name, n, tuple(tags))
                if name == "metrics":  # how the load is shared, for operators
                    self.telemetry.incr("worker_metrics", n)

    def before_flush(self) -> defer.Deferred:
        return defer.ensureDeferred(self.collect())

    async def _stop(self) -> None:
        await self.collect(b"stop")  # each worker ships a last time, then exits
        await defer.DeferredList([w.ended for w in self.workers]).addBoth(
            deadline(self.reactor, SHIP_TIMEOUT, self._kill)
        )

    def _kill(self) -> None:
        for worker in self.workers:
            if not worker.ended.called and worker.transport is not None:
                self.log.error("A worker did not exit; killing it")
                worker.transport.signalProcess("KILL")

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())
