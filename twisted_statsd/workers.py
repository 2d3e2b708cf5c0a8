"""Multi-process intake (``dogstatsd_workers``): more cores reading one UDP socket, contexts sharded.

The server binds its UDP socket as usual and starts ``dogstatsd_workers - 1``
worker processes with ``spawnProcess``, handing each the same socket as file
descriptor 3 (``childFDs``); a worker adopts it with ``adoptDatagramPort``.
The kernel gives each datagram to exactly one reader, so even a single client
is spread over every process.  Each context is owned by one process
(:mod:`twisted_statsd.intake.shard`): a process aggregates the lines it owns
and sends the others to their owner over a stream socket pair (file
descriptors 4 and up, one per peer: :mod:`twisted_statsd.shards`), so no
context is held twice.  Before every flush the server asks each worker for
the buckets due (``ship CUTOFF``), and at stop for everything (``stop``), and
folds them into its own with :meth:`Aggregator.merge`, which is exact even
for a context two owners hold, so the flushed output is what one process
would have produced.  Frames on the workers' stdout are a 4-byte
little-endian length and a pickle: the children are this program, started by
this process.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct
import sys

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from twisted_statsd._twisted_helpers import deadline
from twisted_statsd.config import Config, as_data
from twisted_statsd.core.aggregator import bucket_start
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.shards import Peers
from twisted_statsd.telemetry import Telemetry

# How long the server waits for a worker's aggregates before flushing without them.
SHIP_TIMEOUT = 10.0
# Frames on a worker's stdout: this length (little-endian) and then a pickle.
FRAME_LENGTH = struct.Struct("<I")
# A worker's datagram socket; its channel to process k (0 the server) is PEER_FD + k.
UDP_FD = 3
PEER_FD = 4


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
    """Starts the workers and the channels between all intake processes, collects their
    aggregates before each flush, and stops them.

    The server is intake process 0, worker ``i`` process ``i``.  ``drain``
    hands the server's own buffered packets to its pipeline, which routes
    them, before each barrier.
    """

    log = Logger()

    def __init__(self, reactor, udp, pipeline: Pipeline, count: int, config: Config, drain=lambda: None, flusher=None):
        self.reactor = reactor
        self.udp = udp
        self.pipeline = pipeline
        self.aggregator = pipeline.aggregator
        self.telemetry: Telemetry = pipeline.telemetry
        self.count = count
        self.config = config
        self.drain = drain
        self.flusher = flusher  # a final flush (``closing_all``) asks for every bucket
        self.workers: list[WorkerProtocol] = []
        self.peers: Peers | None = None

    def startService(self):
        super().startService()
        processes = self.count + 1
        self.peers = Peers(
            self.reactor,
            self.pipeline,
            self.telemetry,
            0,
            processes,
            pause_reading=lambda: self.udp.port and self.udp.port.stopReading(),
            resume_reading=lambda: self.udp.port and self.udp.port.startReading(),
        )
        # ends[i][k]: process i's end of its socket pair with process k.
        ends: dict[int, dict[int, socket.socket]] = {i: {} for i in range(processes)}
        for i in range(processes):
            for k in range(i + 1, processes):
                ends[i][k], ends[k][i] = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = self.udp.port.fileno()
        config = json.dumps(config_data(self.config))
        try:
            for i in range(1, processes):
                argv = [sys.executable, "-m", "twisted_statsd.worker", config, str(i), str(processes)]
                child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", UDP_FD: fd}
                child_fds.update({PEER_FD + k: end.fileno() for k, end in ends[i].items()})
                protocol = WorkerProtocol()
                self.reactor.spawnProcess(protocol, sys.executable, argv, env=None, childFDs=child_fds)
                protocol.ended.addCallback(self._ended, protocol)
                self.workers.append(protocol)
            for k, end in ends[0].items():
                self.peers.adopt(self.reactor, k, end.fileno())
        finally:
            for row in ends.values():
                for end in row.values():
                    end.close()  # each process (and adoptStreamConnection) holds its own copy
        self.log.info(
            "Started {count} intake workers sharing the UDP socket, contexts sharded over {processes} processes",
            count=self.count,
            processes=processes,
        )

    def _ended(self, _: None, worker: WorkerProtocol) -> None:
        if self.running:
            self.telemetry.incr("worker_errors")
            self.log.error("An intake worker exited; the lines it owned are now kept by their readers")

    async def collect(self, command: bytes = b"ship") -> None:
        """Fold every worker's aggregates into ours; a worker that does not answer is counted.

        A ship is for the buckets due at this moment's cutoff, and the flush
        that asks takes no later time, so it closes no bucket a worker still holds.
        A final flush's ship is for every bucket.
        """
        if command == b"ship" and not (self.flusher is not None and self.flusher.closing_all):
            asked_at = self.reactor.seconds()
            command += b" %d" % bucket_start(asked_at)
            if self.flusher is not None:
                self.flusher.now_at_most = asked_at
        self.drain()  # routed before the barrier, so the owners have it before they export
        assert self.peers is not None  # started
        barrier = self.peers.barrier()
        requests = [w.request(command) for w in self.workers if not w.ended.called]
        for d in [barrier, *requests]:
            d.addTimeout(SHIP_TIMEOUT, self.reactor)
        results = await defer.DeferredList([barrier, *requests], consumeErrors=True)
        if not results[0][0]:
            self.telemetry.incr("worker_errors")
            self.log.error("The other intake processes did not all send their barrier in time")
        for outcome, result in results[1:]:
            if not outcome:
                self.telemetry.incr("worker_errors")
                self.log.error("A worker did not ship its aggregates: {error}", error=result.getErrorMessage())
                continue
            self.aggregator.merge(result["aggregates"])
            for name, tags, n in result["telemetry"]:
                self.telemetry.incr(name, n, tuple(tags))
                if name == "metrics":  # how the load is shared, for operators
                    self.telemetry.incr("worker_metrics", n)
        self.telemetry.incr("shard_forwarded", self.peers.router.forwarded)
        self.peers.router.forwarded = 0

    def before_flush(self) -> defer.Deferred:
        return defer.ensureDeferred(self.collect())

    async def _stop(self) -> None:
        await self.collect(b"stop")  # each worker ships a last time, then exits
        await defer.DeferredList([w.ended for w in self.workers]).addBoth(
            deadline(self.reactor, SHIP_TIMEOUT, self._kill)
        )
        if self.peers is not None:
            self.peers.close()

    def _kill(self) -> None:
        for worker in self.workers:
            if not worker.ended.called and worker.transport is not None:
                self.log.error("A worker did not exit; killing it")
                worker.transport.signalProcess("KILL")

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())
