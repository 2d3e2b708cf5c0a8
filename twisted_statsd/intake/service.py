"""IntakeService: owns the packet buffers and drains them on a short timer."""

from __future__ import annotations

import gc

from twisted.application.service import MultiService

from twisted_statsd._twisted_helpers import periodic
from twisted_statsd.intake.buffer import PacketBuffer
from twisted_statsd.intake.pipeline import Pipeline

FOLD_AGE = 1.0

# With ``freeze_gc``: new shapes (about as many new contexts, each a handful of
# objects the collector tracks) between two ``gc.freeze()`` during a burst.
# Without it a burst of new contexts triggers full collections over everything
# learnt since the last flush's freeze: 80 ms at 100,000 new contexts, 170 ms
# at 300,000, holding intake off.  A freeze is a constant-time list splice.
FREEZE_EVERY_SHAPES = 5_000


class IntakeService(MultiService):
    """Creates one packet buffer per listener and drains them all every ``flush_timeout``.

    The timer is a :func:`periodic` TimerService, a child service (a failing
    drain is counted and logged, and the next tick runs).  On stop the timer stops and every
    buffer is drained once more, so packets
    that were read are aggregated before the final flush.  A drain also folds
    the pipeline's staged values once the oldest is ``FOLD_AGE`` seconds old:
    readers of the aggregator fold anyway, so this only bounds how long the
    ``metrics`` telemetry lags, while a longer window folds more values per
    context at once.
    """

    def __init__(
        self,
        clock,
        pipeline: Pipeline,
        *,
        buffer_size: int,
        flush_timeout: float,
        eol_required=(),
        forward=None,
        freeze_gc: bool = False,
    ):
        super().__init__()
        self.clock = clock
        self.pipeline = pipeline
        self.buffer_size = buffer_size
        self.flush_timeout = flush_timeout
        self.eol_required = frozenset(eol_required)
        self.forward = forward  # called with every packet as it arrives, when forwarding is on
        self.buffers: list[PacketBuffer] = []
        # Called with (packets, now, transport, origin) for every batch before it is parsed, while
        # per-metric statistics or a capture want them; empty otherwise, so a batch pays one truth test.
        self.observers: list = []
        self.freeze_gc = freeze_gc
        self._freeze_at = FREEZE_EVERY_SHAPES
        periodic(clock, flush_timeout, self.drain, pipeline.telemetry, "drain").setServiceParent(self)

    def buffer_for(self, transport: str, origin: bytes | None = None) -> PacketBuffer:
        """A new buffer for one listener, connection or sender.

        ``transport`` (``udp``, ``uds``) selects ``dogstatsd_eol_required`` and
        tags the packet counters; ``origin`` is the sender's container ID, when
        a Unix listener detected one, and tags every metric of the buffer.
        """
        eol = transport in self.eol_required
        pipeline, clock, observers = self.pipeline, self.clock, self.observers

        def process(packets: list[bytes]) -> None:
            now = clock.seconds()
            if observers:
                for observe in observers:
                    observe(packets, now, transport, origin)
            pipeline.process(packets, now, eol_required=eol, origin=origin)
            if pipeline.learnt >= self._freeze_at:
                self._burst()

        buffer = PacketBuffer(process, self.buffer_size, pipeline.telemetry, transport, self.forward)
        self.buffers.append(buffer)
        return buffer

    def _burst(self) -> None:
        """Many contexts were learnt since the last check: keep them out of the collector's scans.

        Like the flush's freeze (:mod:`twisted_statsd.flush`): what is frozen is
        still freed by reference counting; cyclic garbage caught in it waits
        for the flush's periodic full collection.
        """
        self._freeze_at = self.pipeline.learnt + FREEZE_EVERY_SHAPES
        if self.freeze_gc and gc.isenabled():
            gc.freeze()

    def release(self, buffer: PacketBuffer) -> None:
        """Drain a buffer whose connection has closed and stop draining it on the timer."""
        buffer.flush()
        if buffer in self.buffers:
            self.buffers.remove(buffer)

    def drain(self) -> None:
        """Hand every buffer to the pipeline, and fold what it staged once that is a second old."""
        for buffer in self.buffers:
            buffer.flush()
        self.pipeline.fold_if_older(self.clock.seconds(), FOLD_AGE)

    def stopService(self):
        stopped = super().stopService()  # the timer: the drain is synchronous, so stopped at once
        self.drain()
        self.pipeline.fold()
        return stopped
