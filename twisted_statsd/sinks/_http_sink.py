"""HttpSink: what the sinks that post to an HTTP API (datadog, otlp) share.

Each builds its payloads its own way; delivering them (gzipped bodies, the
byte-bounded queue, retries with back-off, concurrency) is one
:class:`~twisted_statsd.sinks._http_delivery.HttpDelivery`, whose tuning both
take as the same keyword arguments (:class:`DeliveryOptions`; ``timeout``,
whose default differs, and ``cooperator``, which the sink registry passes, are
named in each sink's signature), and stopping waits for it within the
server's stop deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from twisted.application.service import Service
from twisted.internet.task import Cooperator
from twisted.web.http_headers import Headers

from twisted_statsd import __version__
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd.sinks._http_delivery import BODY_LOG_LIMIT, HttpDelivery, Payload, retryable_like_datadog
from twisted_statsd.telemetry import Telemetry

__all__ = ["DeliveryOptions", "HttpSink"]


class DeliveryOptions(TypedDict, total=False):
    """The delivery tuning an HTTP sink takes as keyword arguments (HttpDelivery says what each does)."""

    retry_queue_max_bytes: int
    backoff_base: float
    backoff_max: float
    max_concurrent_requests: int
    _agent: Any
    _random: Callable[[], float]
    _stop_timeout: float


# The defaults of DeliveryOptions, the same for every HTTP sink.
DELIVERY_DEFAULTS: DeliveryOptions = {
    "retry_queue_max_bytes": 15 * 1024 * 1024,
    "backoff_base": 2.0,
    "backoff_max": 64.0,
    "max_concurrent_requests": 2,
}


class HttpSink(Service):
    """A sink whose payloads go through one HttpDelivery; stopping waits for it.

    Subclasses name themselves (``kind``: the prefix of their drop reasons
    and log categories, unlike ``name``, which build_service may suffix;
    ``display``: the receiver's name in log lines) and provide
    ``IMetricSink.write``, which hands ``self._delivery`` its payloads.
    """

    kind: str
    display: str

    # Set by build_service: the whole server's stop, whose remaining time bounds this sink's.
    stop_deadline: StopDeadline | None = None

    def __init__(
        self,
        reactor,
        telemetry: Telemetry,
        *,
        base_url: str,
        headers: Mapping[bytes, bytes],
        timeout: float,
        cooperator: Cooperator | None,
        delivery: DeliveryOptions,
        retryable: Callable[[int], bool] = retryable_like_datadog,
        on_accepted: Callable[[Payload, bytes], None] | None = None,
        body_limit: int = BODY_LOG_LIMIT,
    ):
        """``headers`` go with every request, after gzip and User-Agent (a same-named one replaces them)."""
        self.telemetry = telemetry
        sent = {b"Content-Encoding": b"gzip", b"User-Agent": f"twisted-statsd/{__version__}".encode(), **headers}
        self._delivery = HttpDelivery(
            reactor,
            telemetry,
            sink=self.kind,
            display=self.display,
            base_url=base_url,
            headers=Headers({name: [value] for name, value in sent.items()}),
            retryable=retryable,
            on_accepted=on_accepted,
            body_limit=body_limit,
            timeout=timeout,
            cooperator=cooperator,
            **(DELIVERY_DEFAULTS | delivery),
        )

    def stopService(self):
        super().stopService()
        return self._delivery.stop(self.stop_deadline)
