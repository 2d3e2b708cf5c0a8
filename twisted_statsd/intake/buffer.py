"""Packet buffers: batch raw packets so that per-packet costs are paid per batch.

A listener appends each packet it reads; the buffer hands the batch to the
pipeline when it holds ``size`` packets, and the intake service's timer drains
it every ``dogstatsd_packet_buffer_flush_timeout`` so a quiet listener's
packets are not held back (spec §3.2).  With forwarding on, each packet is
also handed to the forwarder as it arrives, before any parsing (spec §4).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from twisted_statsd.interfaces import IPacketConsumer
from twisted_statsd.telemetry import Telemetry


@implementer(IPacketConsumer)
class PacketBuffer:
    """Holds packets for one listener until a batch is full or the timer drains it."""

    log = Logger()

    def __init__(
        self,
        process: Callable[[list[bytes]], None],
        size: int,
        telemetry: Telemetry,
        transport: str,
        forward: Callable[[bytes], None] | None = None,
    ):
        self._process = process
        self._forward = forward
        self.size = size
        self.telemetry = telemetry
        self._tags = ("transport:" + transport,)
        self.packets: list[bytes] = []

    def append(self, packet: bytes) -> None:
        if self._forward is not None:
            self._forward(packet)
        packets = self.packets
        packets.append(packet)
        if len(packets) >= self.size:
            self.flush()

    def flush(self) -> None:
        """Hand every held packet to the pipeline; a failure is counted, never raised."""
        batch = self.packets
        if not batch:
            return
        self.packets = []
        self.telemetry.incr("packets", len(batch), self._tags)
        self.telemetry.incr("bytes", sum(map(len, batch)), self._tags)
        try:
            self._process(batch)
        except Exception:
            self.telemetry.drop("internal_error", len(batch))
            self.log.failure("Pipeline failed on a batch of {count} packets", count=len(batch))
