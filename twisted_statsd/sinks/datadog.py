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

import random

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Cooperator
from twisted.web.http_headers import Headers
from zope.interface import implementer

from twisted_statsd import __version__
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd.config import SinkOption
from twisted_statsd.core.model import FlushBatch
from twisted_statsd.flush import SINK_STOP_TIMEOUT
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks._datadog_payloads import build_payloads
from twisted_statsd.sinks._http_delivery import HttpDelivery, backoff_delay, parse_retry_after
from twisted_statsd.telemetry import Telemetry

__all__ = ["DatadogSink", "backoff_delay", "parse_retry_after"]


@implementer(IMetricSink)
class DatadogSink(Service):
    """Sends flushes to Datadog's HTTP API with gzip, splitting, retries and a byte-bounded queue."""

    name = "datadog"
    # Set by build_service: the whole server's stop, whose remaining time bounds this sink's.
    stop_deadline: StopDeadline | None = None

    def __init__(
        self,
        reactor,
        telemetry: Telemetry,
        *,
        api_key: str,
        site: str = "datadoghq.com",
        url: str | None = None,
        retry_queue_max_bytes: int = 15 * 1024 * 1024,
        timeout: float = 20.0,
        backoff_base: float = 2.0,
        backoff_max: float = 64.0,
        max_concurrent_requests: int = 2,
        distribution_max_values: int = 100_000,
        cooperator: Cooperator | None = None,
        _agent=None,
        _random=random.random,
        _stop_timeout: float = SINK_STOP_TIMEOUT,
    ):
        if not api_key:
            raise ValueError("the datadog sink needs an API key (api_key or DD_API_KEY)")
        base = (url or f"https://api.{site}").rstrip("/")
        if not (isinstance(distribution_max_values, int) and distribution_max_values >= 1):
            raise ValueError(
                f"datadog sink distribution_max_values must be a positive integer, got {distribution_max_values!r}"
            )
        self._delivery = HttpDelivery(
            reactor,
            telemetry,
            sink="datadog",
            display="Datadog",
            base_url=base,
            headers=Headers(
                {
                    b"DD-API-KEY": [api_key.encode()],
                    b"Content-Type": [b"application/json"],
                    b"Content-Encoding": [b"gzip"],
                    b"User-Agent": [f"twisted-statsd/{__version__}".encode()],
                }
            ),
            retry_queue_max_bytes=retry_queue_max_bytes,
            timeout=timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_concurrent_requests=max_concurrent_requests,
            cooperator=cooperator,
            _agent=_agent,
            _random=_random,
            _stop_timeout=_stop_timeout,
        )
        self.telemetry = telemetry
        self.base_url = base
        self.distribution_max_values = distribution_max_values

    def write(self, batch: FlushBatch) -> defer.Deferred:
        """Queue the batch's payloads; fires when each one is sent or given up (counted, not raised)."""
        steps = build_payloads(batch, distribution_max_values=self.distribution_max_values, on_drop=self.telemetry.drop)
        return self._delivery.submit(steps)

    def stopService(self):
        super().stopService()
        return self._delivery.stop(self.stop_deadline)


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
