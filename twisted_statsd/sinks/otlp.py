"""The ``otlp`` sink: posts every flush to an OpenTelemetry Collector (or any OTLP/HTTP receiver).

Each flush becomes one or more ``ExportMetricsServiceRequest`` protobufs
(:mod:`twisted_statsd.sinks._otlp_payloads` has the mapping), built in slices
through a Cooperator, gzipped and POSTed as ``application/x-protobuf`` to the
configured endpoint.  Queueing, retries, back-off and concurrency are the
Datadog sink's (:mod:`twisted_statsd.sinks._http_delivery`); what is retried
follows the OTLP/HTTP specification: 429, 502, 503 and 504, network errors and
timeouts, honouring ``Retry-After``.  A 2xx answer's ``partial_success``
counts its rejected data points as drops.

The generated classes come from the ``opentelemetry-proto`` package (the
``otlp`` extra), imported only when an otlp sink is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Unpack

from twisted.internet import defer
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from zope.interface import implementer

from twisted_statsd.config import SinkOption
from twisted_statsd.core.model import FlushBatch
from twisted_statsd.errors import StartupError
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks._http_sink import DeliveryOptions, HttpSink
from twisted_statsd.telemetry import Telemetry

__all__ = ["OtlpSink", "retryable_per_otlp"]

# OTLP/HTTP: "the client SHOULD retry" on these; every other failure status is final.
RETRYABLE = frozenset((429, 502, 503, 504))
# Partial-success answers are small; a longer body is not an ExportMetricsServiceResponse worth parsing.
RESPONSE_LIMIT = 64 * 1024
# At most one partial-success log line in this many seconds.
PARTIAL_LOG_INTERVAL = 60.0


def retryable_per_otlp(code: int) -> bool:
    return code in RETRYABLE


def _payloads():
    """The payload module, whose import needs opentelemetry-proto: a clear start error when it is missing."""
    try:
        from twisted_statsd.sinks import _otlp_payloads
    except ImportError as error:
        raise StartupError(
            f"sinks: otlp: needs the opentelemetry-proto package, which is not installed ({error}): "
            "pip install 'twisted-statsd[otlp]'"
        ) from None
    return _otlp_payloads


@implementer(IMetricSink)
class OtlpSink(HttpSink):
    """Sends flushes as OTLP/HTTP protobuf with gzip, retries and a byte-bounded queue."""

    name = kind = "otlp"
    display = "OTLP receiver"
    log = Logger()

    def __init__(
        self,
        reactor,
        telemetry: Telemetry,
        *,
        endpoint: str = "http://127.0.0.1:4318/v1/metrics",
        temporality: str = "delta",
        headers: Mapping[str, str] = MappingProxyType({}),
        resource_attributes: Mapping[str, str] = MappingProxyType({}),
        timeout: float = 10.0,
        cooperator: Cooperator | None = None,
        **delivery: Unpack[DeliveryOptions],
    ):
        payloads = _payloads()
        if temporality not in ("delta", "cumulative"):
            raise ValueError(f"otlp sink temporality must be delta or cumulative, got {temporality!r}")
        self._payloads = payloads
        self.reactor = reactor
        self.endpoint = endpoint
        self.temporality = payloads.CUMULATIVE if temporality == "cumulative" else payloads.DELTA
        self._cumulative = payloads.CumulativeSums() if temporality == "cumulative" else None
        self.resource_attributes = dict(resource_attributes)
        super().__init__(
            reactor,
            telemetry,
            base_url=endpoint,
            headers={
                b"Content-Type": b"application/x-protobuf",
                **{name.encode("latin-1"): value.encode("latin-1") for name, value in headers.items()},
            },
            timeout=timeout,
            cooperator=cooperator,
            delivery=delivery,
            retryable=retryable_per_otlp,
            on_accepted=self._accepted,
            body_limit=RESPONSE_LIMIT,
        )
        self._partial_logged: tuple[float, int] | None = None

    def write(self, batch: FlushBatch) -> defer.Deferred:
        """Queue the batch's requests; fires when each one is sent or given up (counted, not raised)."""
        steps = self._payloads.build_payloads(
            batch,
            temporality=self.temporality,
            cumulative=self._cumulative,
            resource_attributes=self.resource_attributes,
            on_drop=self.telemetry.drop,
        )
        return self._delivery.submit(steps)

    def _accepted(self, payload, body: bytes) -> None:
        """Count the data points a 2xx answer's ``partial_success`` says were rejected."""
        partial = self._payloads.partial_success(body)
        if partial is None:
            return
        rejected, message = partial
        if rejected:
            self.telemetry.drop("otlp_rejected_points", rejected)
        now = self.reactor.seconds()
        last, suppressed = self._partial_logged or (None, 0)
        if last is None or now - last >= PARTIAL_LOG_INTERVAL:
            self.log.warn(
                "OTLP receiver rejected {rejected} of {points} data points "
                "({suppressed} more partial answers since the last report): {message}",
                log_category="OTLP_PARTIAL_SUCCESS",
                rejected=rejected,
                points=payload.points,
                suppressed=suppressed,
                message=message[:400],
            )
            self._partial_logged = (now, 0)
        else:
            self._partial_logged = (last, suppressed + 1)


#: Options of a ``otlp`` entry of ``sinks``: name -> (converter, default).
OPTIONS = {
    "endpoint": (SinkOption.string, "http://127.0.0.1:4318/v1/metrics"),
    "temporality": (SinkOption.one_of("delta", "cumulative"), "delta"),
    "headers": (SinkOption.string_map, MappingProxyType({})),
    "resource_attributes": (SinkOption.string_map, MappingProxyType({})),
    "timeout": (SinkOption.positive_seconds, 10.0),
    "retry_queue_max_bytes": (SinkOption.positive_int, 15 * 1024 * 1024),
    "backoff_base": (SinkOption.positive_seconds, 2.0),
    "backoff_max": (SinkOption.positive_seconds, 64.0),
    "max_concurrent_requests": (SinkOption.positive_int, 2),
}

#: The registry's factory: the sink's constructor takes (reactor, telemetry, cooperator=..., **options).
build = OtlpSink
