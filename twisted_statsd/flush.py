"""FlushService: every ``flush_interval`` closes finished buckets and hands them to the sinks.

The loop cannot die: a failing flush is counted and logged, and the next tick
runs as usual.  A large flush is computed a slice at a time through a
Cooperator, so intake keeps reading while 100,000 contexts are closed.

With ``freeze_gc`` (the twistd server sets it), the cyclic garbage collector
is paused during a flush and everything alive afterwards is moved out of its
reach with ``gc.freeze()``: a full collection over 100,000 live contexts
stalls the reactor for about 400 ms, which is what used to dominate flush
stalls.  Cyclic garbage caught in a freeze is released by a full collection
every ``THAW_EVERY`` flushes, the one stall left; the server's own state is
acyclic and freed by reference counting.  Embedding applications opt in,
since it affects their whole process.  Sinks are written to independently, and the loop does not wait
for them, so a slow sink never holds back the others or the next flush.  On
stop the final flush closes every bucket, open ones included, and the service
reports stopped only when every sink has taken it: nothing accepted is lost.

The loop is a LoopingCall rather than a TimerService (which the other
periodic loops use, see :mod:`twisted_statsd._twisted_helpers`): a
TimerService always runs at start, and a flush at start would hand every sink
an empty batch and count a flush that closed nothing; the first flush is due
one interval after the start.

Each flush sets the gauge ``flush_duration``: seconds from the flush's start
until its batch is complete (buffers drained, workers collected, buckets
closed, blocklist applied); the sink writes that follow are not included.
"""

from __future__ import annotations

import gc
from functools import partial

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Cooperator, LoopingCall
from twisted.logger import Logger

from twisted_statsd import _cooperate
from twisted_statsd._cooperate import SLICE_SECONDS, run_in_slices
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd._twisted_helpers import deadline
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Blocklist
from twisted_statsd.core.model import COUNTER, GAUGE, Context, FlushBatch, SeriesStream
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.telemetry import Telemetry

SELF_METRIC_PREFIX = b"twisted_statsd."

# Slices of a flush (of FLUSH_STEP contexts each) run at once, within one
# slice's time, before the rest is handed to a Cooperator: small flushes finish
# synchronously, big ones in turns.
INLINE_STEPS = 50

# With freeze_gc: flushes between two full collections (an hour at the default 15 s).
THAW_EVERY = 240

# How long a whole stop may take: the sinks taking the final flush, then sending what they hold
# (one budget shared by every wait, see _stop_deadline.py).
SINK_STOP_TIMEOUT = 30.0


def _unblocked(series, blocks):
    """The series whose names ``blocks`` lets through, as the sinks walk them."""
    return (s for s in series if not blocks(s.name))


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
        freeze_gc: bool = False,
        cooperator: Cooperator | None = None,
        stop_deadline: StopDeadline | None = None,
    ):
        self.clock = clock
        self.aggregator = aggregator
        self.sinks = [IMetricSink(sink) for sink in sinks]
        self.telemetry = telemetry
        self.reporter = reporter
        self.interval = interval
        self.hostname = hostname.encode()
        self.blocklist = blocklist or Blocklist(())
        # Called before every flush (may return Deferreds): drain packet buffers,
        # collect the workers' aggregates, refresh telemetry.
        self.before_flush = list(before_flush)
        # Called with every batch once it is built, before the sinks get it (the admin page's view).
        self.after_flush: list = []
        # Whether the flush in progress closes open buckets too (read by preparations that ship buckets).
        self.closing_all = False
        # Set by a preparation that collected the buckets due at that time (the workers'): the
        # flush then closes no later bucket, which they may still hold.
        self.now_at_most: float | None = None
        self.freeze_gc = freeze_gc
        # Waiting for the sinks at stop takes what remains of the whole stop's budget.
        self.stop_deadline = stop_deadline or StopDeadline(clock, SINK_STOP_TIMEOUT)
        self._flushes_since_thaw = 0
        # Slices run at once, and for how long, before the Cooperator takes over
        # (tests may make both unbounded).
        self.inline_steps = INLINE_STEPS
        self.inline_seconds = SLICE_SECONDS
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock
        self._lock = defer.DeferredLock()
        # The server's shared Cooperator; one of its own when built alone.
        self._cooperator = cooperator or _cooperate.cooperator(clock)
        self._writes: set[defer.Deferred] = set()
        # Seconds the latest flush took to compute its batch (sink writes not included), for the admin status.
        self.last_duration: float | None = None

    @property
    def looping(self) -> bool:
        """Whether the periodic flush is scheduled (false before start, after stop, or if the loop died)."""
        return self._loop.running

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(lambda f: self.log.failure("Flush loop died", f))

    def flush(self, final: bool = False) -> defer.Deferred:
        """Flush now; fires with the batch handed to the sinks (None if the flush failed).

        Flushes never overlap: one asked for while another runs waits its turn.
        """
        return self._lock.run(self._flush, final).addCallback(lambda outcome: outcome[0])

    async def _flush_and_wait(self, final: bool) -> FlushBatch:
        batch, writes = await self._lock.run(self._flush, final)
        if batch is None:
            raise RuntimeError("the flush failed; see the log")
        await defer.DeferredList(writes)  # outside the lock: a slow sink holds up no other flush
        return batch

    def flush_and_wait(self, final: bool = False) -> defer.Deferred:
        """Flush now; the Deferred fires with the batch once every sink has taken it.

        ``final`` closes open buckets too.  This is the on-demand flush for
        embedders and tests; a failing sink is counted and logged as usual.
        """
        return defer.ensureDeferred(self._flush_and_wait(final))

    async def _flush(self, final: bool) -> tuple[FlushBatch | None, list[defer.Deferred]]:
        collecting = self.freeze_gc and gc.isenabled()
        if collecting:
            gc.disable()
        try:
            return await self._flush_batch(final)
        finally:
            if collecting:
                self._freeze()
                gc.enable()

    def _freeze(self) -> None:
        """Move what lives now (contexts, caches, this batch) out of the collector's scans.

        It is still freed by reference counting; only cyclic garbage caught in
        a freeze would stay, so every ``THAW_EVERY`` flushes everything is
        unfrozen and collected once (one full collection's stall per period).
        """
        self._flushes_since_thaw += 1
        if self._flushes_since_thaw >= THAW_EVERY:
            self._flushes_since_thaw = 0
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    async def _flush_batch(self, final: bool) -> tuple[FlushBatch | None, list[defer.Deferred]]:
        started = self.clock.seconds()
        self.closing_all, self.now_at_most = final, None  # a failed flush's cap does not carry over
        try:
            for prepare in self.before_flush:
                await defer.maybeDeferred(prepare)
            now = self.clock.seconds()
            if self.now_at_most is not None:
                now, self.now_at_most = min(now, self.now_at_most), None
            # The server's own counters go into the open bucket once the due
            # buckets are closed: recorded before, they would be zero-filled
            # into a bucket that ended before they were counted.  The final
            # flush closes every bucket, so it records them first.
            if final:
                self._record_self_metrics(now)
            batch = FlushBatch(timestamp=now)
            await self._run(self.aggregator.flush_steps(now, batch, final=final))
            if self.blocklist:
                blocks = self.blocklist.blocks
                batch.series = SeriesStream(partial(_unblocked, batch.series, blocks))
            self.telemetry.set_gauge("flush_duration", self.clock.seconds() - started)
            if final:
                # No later flush records them: counted now, they are logged at stop.
                self._count_non_finite()
            else:
                self._record_self_metrics(now)
            self.reporter.end_interval()
        except Exception:
            # The buckets this flush had closed are gone with it: counted as a loss.
            self.telemetry.incr("flush_errors")
            self.telemetry.drop("flush_failed")
            self.log.failure("Flush failed; the buckets it had closed are lost")
            return None, []
        self.telemetry.incr("flushes")
        self.last_duration = self.clock.seconds() - started
        for observe in self.after_flush:
            try:
                observe(batch)
            except Exception:
                self.log.failure("A flush observer failed")
        self.telemetry.set_gauge("flushed_contexts", self.aggregator.flushed_contexts)
        return batch, self._deliver(batch)

    def _run(self, steps) -> defer.Deferred:
        """Drive a flush generator: small flushes at once, large ones a slice per reactor turn."""
        return run_in_slices(self._cooperator, steps, self.inline_steps, self.inline_seconds) or defer.succeed(None)

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

    def _count_non_finite(self) -> None:
        """Count the points the aggregator left out of flushes as NaN or infinite as drops."""
        dropped = self.aggregator.non_finite_points
        if dropped:
            self.aggregator.non_finite_points = 0
            self.telemetry.drop("non_finite_point", dropped)

    def _record_self_metrics(self, now: float) -> None:
        """Feed the telemetry that changed since the last flush back in as metrics."""
        aggregator = self.aggregator
        self._count_non_finite()
        for name, tags, delta in self.telemetry.deltas():
            context = Context(SELF_METRIC_PREFIX + name.encode(), self.hostname, [t.encode() for t in tags])
            aggregator.add(context, COUNTER, float(delta), 1.0, now)
        for (name, tags), value in self.telemetry.gauges.items():
            context = Context(SELF_METRIC_PREFIX + name.encode(), self.hostname, [t.encode() for t in tags])
            aggregator.add(context, GAUGE, float(value), 1.0, now)

    async def _stop(self) -> None:
        await self.flush(final=True)
        if not self._writes:
            return
        # Wait for the writes or the deadline, whichever comes first; the writes
        # are not cancelled, a sink may still finish while the process exits.
        timeout = self.stop_deadline.remaining()
        outcome: defer.Deferred[bool] = defer.Deferred()

        def settle(written: bool) -> None:
            if not outcome.called:
                outcome.callback(written)

        cancel = deadline(self.clock, timeout, lambda: settle(False))
        defer.DeferredList(list(self._writes)).addBoth(lambda _: settle(True))
        if not await outcome.addBoth(cancel):
            self.telemetry.incr("sink_stop_timeouts")
            self.log.error(
                "Gave up waiting for {count} sink writes after {timeout} s at shutdown",
                count=len(self._writes),
                timeout=timeout,
            )

    def stopService(self):
        """Stop the loop and run the final flush; a service that never started flushes nothing."""
        started = self.running
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if started:
            return defer.ensureDeferred(self._stop())
