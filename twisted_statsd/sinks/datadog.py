"""The ``datadog`` sink: posts every flush to Datadog's public HTTP API.

Series go to the metrics API v2, distributions to the distribution-points
API, service checks to check_run and events, one by one, to the events API
(see :mod:`twisted_statsd.sinks._datadog_payloads` for the shapes and the
limits).  Payloads are built in bounded slices through a Cooperator, gzipped,
and queued; up to ``max_concurrent_requests`` are in flight at once through
one persistent HTTP connection pool.

Network errors, timeouts, 408, 429 and 5xx answers are retried: the whole
sink backs off exponentially with jitter (or for as long as ``Retry-After``
says), the failed payload going back to the head of the queue.  Other answers
(4xx, 3xx) reject the payload for good, logged with the start of the response
body.  The queue is bounded in bytes, as the agent's
``forwarder_retry_queue_payloads_max_size``: when it is full the oldest queued
payloads are dropped.  A payload is also dropped once Datadog would refuse its
data as too old.  Every outcome is counted in telemetry.  The queue, retries
and back-off are :mod:`twisted_statsd.sinks._http_delivery`, shared with the
otlp sink.
"""

from __future__ import annotations

from typing import Unpack

from twisted.internet import defer
from twisted.internet.task import Cooperator
from zope.interface import implementer

from twisted_statsd.config import SinkOption
from twisted_statsd.core.model import FlushBatch
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks._datadog_payloads import build_payloads
from twisted_statsd.sinks._http_delivery import backoff_delay, parse_retry_after
from twisted_statsd.sinks._http_sink import DeliveryOptions, HttpSink
from twisted_statsd.telemetry import Telemetry

__all__ = ["DatadogSink", "backoff_delay", "parse_retry_after"]


@implementer(IMetricSink)
class DatadogSink(HttpSink):
    """Sends flushes to Datadog's HTTP API with gzip, splitting, retries and a byte-bounded queue."""

    name = kind = "datadog"
    display = "Datadog"

    def __init__(
        self,
        reactor,
        telemetry: Telemetry,
        *,
        api_key: str,
        site: str = "datadoghq.com",
        url: str | None = None,
        timeout: float = 20.0,
        distribution_max_values: int = 100_000,
        cooperator: Cooperator | None = None,
        **delivery: Unpack[DeliveryOptions],
    ):
        if not api_key:
            raise ValueError("the datadog sink needs an API key (api_key or DD_API_KEY)")
        base = (url or f"https://api.{site}").rstrip("/")
        if not (isinstance(distribution_max_values, int) and distribution_max_values >= 1):
            raise ValueError(
                f"datadog sink distribution_max_values must be a positive integer, got {distribution_max_values!r}"
            )
        super().__init__(
            reactor,
            telemetry,
            base_url=base,
            headers={b"DD-API-KEY": api_key.encode(), b"Content-Type": b"application/json"},
            timeout=timeout,
            cooperator=cooperator,
            delivery=delivery,
        )
        self.base_url = base
        self.distribution_max_values = distribution_max_values

    def write(self, batch: FlushBatch) -> defer.Deferred:
        """Queue the batch's payloads; fires when each one is sent or given up (counted, not raised)."""
        steps = build_payloads(batch, distribution_max_values=self.distribution_max_values, on_drop=self.telemetry.drop)
        return self._delivery.submit(steps)


#: Options of a ``datadog`` entry of ``sinks``: name -> (converter, default).
# The None defaults are filled from the top-level keys api_key, site and dd_url
# (DD_API_KEY...) by the config loader, as in the agent.
OPTIONS = {
    "api_key": (SinkOption.string, None),
    "site": (SinkOption.string, None),
    "url": (SinkOption.string, None),
    "retry_queue_max_bytes": (SinkOption.positive_int, 15 * 1024 * 1024),
    "timeout": (SinkOption.positive_seconds, 20.0),
    "backoff_base": (SinkOption.positive_seconds, 2.0),
    "backoff_max": (SinkOption.positive_seconds, 64.0),
    "max_concurrent_requests": (SinkOption.positive_int, 2),
    "distribution_max_values": (SinkOption.positive_int, 100_000),
}

#: The registry's factory: the sink's constructor takes (reactor, telemetry, cooperator=..., **options).
build = DatadogSink
