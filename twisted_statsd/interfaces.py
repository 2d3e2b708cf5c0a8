"""The seams of the server, as zope.interface interfaces.

Only the places where implementations are meant to vary get an interface:
sinks (one per backend) and packet consumers (what listeners feed).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMetricSink(Interface):
    """Receives every flush; one implementation per backend."""

    name = Attribute("A short label for logs and telemetry, e.g. 'jsonl'.")

    def write(batch):
        """
        Deliver one :class:`twisted_statsd.core.model.FlushBatch`.

        Its ``series`` are built as they are iterated (a SeriesStream): walk
        them, a slice per reactor turn when there are many, and keep only
        what the sink needs.

        @return: a Deferred that fires when the batch is written (or has failed;
            the caller counts and logs the failure and goes on).
        """


class IPacketConsumer(Interface):
    """Takes raw packets from a listener."""

    def append(packet):
        """Accept one raw packet (bytes); never raises, never blocks."""
