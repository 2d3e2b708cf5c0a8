"""A small OTLP/HTTP metrics receiver for tests, on twisted.web, decoding with the opentelemetry-proto classes.

The OpenTelemetry Collector cannot be installed from the package registries
this project's machines reach (it is a Go binary; Debian, PyPI and npm carry
no build of it), so the tests post to this instead.  It answers as the
OTLP/HTTP specification says: 200 with a protobuf ``ExportMetricsServiceResponse``
(optionally carrying ``partial_success``), 415 for another content type,
400 for a body that does not decode, and scripted failures (503, 429 with
``Retry-After``...) for retry tests.
"""

from __future__ import annotations

import gzip
import time

from google.protobuf.message import DecodeError
from helpers import wait_for
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

PATH = b"/v1/metrics"


class Partial:
    """A scripted 200 answer with ``partial_success``."""

    def __init__(self, rejected: int, message: str):
        self.rejected = rejected
        self.message = message


class MetricsResource(Resource):
    """Records each decoded request and answers with the next scripted outcome (200 once the script is used up).

    An outcome is a status code, (status, headers), or a :class:`Partial`.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests: list[dict] = []
        self.script: list = []

    def render_POST(self, request):
        if request.path != PATH:
            request.setResponseCode(404)
            return b""
        if request.getHeader("content-type") != "application/x-protobuf":
            request.setResponseCode(415)
            return b""
        raw = request.content.read()
        if request.getHeader("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        try:
            message = ExportMetricsServiceRequest.FromString(raw)
        except DecodeError:
            request.setResponseCode(400)
            return b""
        self.requests.append(
            {
                "at": time.monotonic(),
                "headers": {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
                "message": message,
            }
        )
        outcome = self.script.pop(0) if self.script else 200
        response = ExportMetricsServiceResponse()
        if isinstance(outcome, Partial):
            response.partial_success.rejected_data_points = outcome.rejected
            response.partial_success.error_message = outcome.message
            outcome = 200
        code, headers = outcome if isinstance(outcome, tuple) else (outcome, {})
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        if code != 200:
            return b""
        request.setHeader("content-type", "application/x-protobuf")
        return response.SerializeToString()

    def messages(self) -> list[ExportMetricsServiceRequest]:
        return [r["message"] for r in self.requests]


class OtlpReceiver:
    """The resource on an ephemeral loopback port; ``close`` waits until its connections are gone."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.resource = MetricsResource()
        site = Site(self.resource)
        site.noisy = False
        self.factory = WrappingFactory(site)
        self.port = None

    def listen(self, number: int = 0) -> int:
        self.port = self.reactor.listenTCP(number, self.factory, interface="127.0.0.1")
        return self.port.getHost().port

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/v1/metrics"

    async def close(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        await wait_for(self.reactor, lambda: not self.factory.protocols)


def data_points(messages) -> list[dict]:
    """Every data point of the messages, flattened with its resource, metric and attributes."""
    found = []
    for message in messages:
        for resource_metrics in message.resource_metrics:
            resource = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        found.append(
                            {
                                "resource": resource,
                                "scope": scope_metrics.scope.name,
                                "name": metric.name,
                                "kind": kind,
                                "temporality": getattr(data, "aggregation_temporality", None),
                                "monotonic": getattr(data, "is_monotonic", None),
                                "attributes": {a.key: a.value.string_value for a in point.attributes},
                                "point": point,
                            }
                        )
    return found
