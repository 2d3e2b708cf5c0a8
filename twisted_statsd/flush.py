"""FlushService: every ``flush_interval`` closes finished buckets and hands them to the sinks.

The loop cannot die: a failing flush is counted and logged, and the next tick
runs as usual.  Sinks are written to independently, and the loop does not wait
for them, so a slow sink never holds back the others or the next flush.  On
stop the final flush closes every bucket, open ones included, and the service
reports stopped only when every sink has taken it: nothing accepted is lost.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Blocklist
from twisted_statsd.core.model import COUNTER, GAUGE, Context, FlushBatch
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.telemetry import Telemetry

SELF_METRIC_PREFIX = b"twisted_statsd."

# How long stopping waits for the sinks to take the final flush before giving up on them.
SINK_STOP_TIMEOUT = 30.0


class FlushService(Service):
    """Runs the periodic flush, reports the server's own telemetry, and runs the final flush."""

    log = Logger()

    def __init__(
        self,
        clock,
        aggregator: Aggregator,
        sinks,
        telemetry: Telemetry,
        reporter: RateLimitedReporter,
        *,
        interval: float,
        hostname: str,
        blocklist: Blocklist | None = None,
        before_flush=(),
    ):
        self.clock = clock
        self.aggregator = aggregator
        self.sinks = [IMetricSink(sink) for sink in sinks]
        self.telemetry = telemetry
        self.reporter = reporter
        self.interval = interval
        self.hostname = hostname.encode()
        self.blocklist = blocklist or Blocklist(())
        # Called before every flush: drain packet buffers, refresh telemetry.
        self.before_flush = list(before_flush)
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock
        self._writes: set[defer.Deferred] = set()

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(lambda f: self.log.failure("Flush loop died", f))

    def flush(self, final: bool = False) -> FlushBatch | None:
        """Flush now; returns the batch handed to the sinks (None if the flush failed)."""
        batch = self._close_batch(final)
        if batch is not None:
            self._deliver(batch)
        return batch

    def flush_and_wait(self, final: bool = False) -> defer.Deferred:
        """Flush now; the Deferred fires with the batch once every sink has taken it.

        ``final`` closes open buckets too.  This is the on-demand flush for
        embedders and tests; a failing sink is counted and logged as usual.
        """
        batch = self._close_batch(final)
        if batch is None:
            return defer.fail(RuntimeError("the flush failed; see the log"))
        return defer.DeferredList(self._deliver(batch)).addCallback(lambda _: batch)

    def _close_batch(self, final: bool) -> FlushBatch | None:
        try:
            for prepare in self.before_flush:
                prepare()
            now = self.clock.seconds()
            self._record_self_metrics(now)
            batch = self.aggregator.flush(now, final=final)
            if self.blocklist:
                batch.series = [s for s in batch.series if not self.blocklist.blocks(s.name)]
            self.reporter.end_interval()
        except Exception:
            self.telemetry.incr("flush_errors")
            self.log.failure("Flush failed")
            return None
        self.telemetry.incr("flushes")
        return batch

    def _deliver(self, batch: FlushBatch) -> list[defer.Deferred]:
        return [self._write(sink, batch) for sink in self.sinks]

    def _write(self, sink, batch: FlushBatch) -> defer.Deferred:
        """Hand the batch to one sink; the Deferred never fails (failures are counted)."""
        tags = ("sink:" + sink.name,)
        d = defer.maybeDeferred(sink.write, batch)
        self._writes.add(d)

        def written(_):
            self.telemetry.incr("sink_writes", 1, tags)

        def failed(failure):
            self.telemetry.incr("sink_write_errors", 1, tags)
            self.log.failure("Sink {sink} failed to write a flush", failure, sink=sink.name)

        d.addCallbacks(written, failed)
        d.addBoth(lambda _: self._writes.discard(d))
        return d

    def _record_self_metrics(self, now: float) -> None:
        """Feed the telemetry that changed since the last flush back in as metrics."""
        aggregator = self.aggregator
        dropped = aggregator.non_finite_points
        if dropped:
            aggregator.non_finite_points = 0
            self.telemetry.drop("non_finite_point", dropped)
        self.telemetry.set_gauge("contexts", aggregator.context_count())
        for name, tags, delta in self.telemetry.deltas():
            context = Context(SELF_METRIC_PREFIX + name.encode(), self.hostname, [t.encode() for t in tags])
            aggregator.add(context, COUNTER, float(delta), 1.0, now)
        for (name, tags), value in self.telemetry.gauges.items():
            context = Context(SELF_METRIC_PREFIX + name.encode(), self.hostname, [t.encode() for t in tags])
            aggregator.add(context, GAUGE, float(value), 1.0, now)

    async def _stop(self) -> None:
        self.flush(final=True)
        if not self._writes:
            return
        # Wait for the writes or the deadline, whichever comes first; the writes
        # are not cancelled, a sink may still finish while the process exits.
        outcome = defer.Deferred()
        deadline = self.clock.callLater(SINK_STOP_TIMEOUT, lambda: outcome.called or outcome.callback(False))
        defer.DeferredList(list(self._writes)).addBoth(lambda _: outcome.called or outcome.callback(True))
        if await outcome:
            deadline.cancel()
        else:
            self.telemetry.incr("sink_stop_timeouts")
            self.log.error(
                "Gave up waiting for {count} sink writes after {timeout} s at shutdown",
                count=len(self._writes),
                timeout=SINK_STOP_TIMEOUT,
            )

    def stopService(self):
        """Stop the loop and run the final flush; a service that never started flushes nothing."""
        started = self.running
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if started:
            return defer.ensureDeferred(self._stop())
