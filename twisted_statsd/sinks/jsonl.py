"""The ``jsonl`` sink: one JSON object per line for every series, sketch, event and check.

Series follow the Datadog metrics API v2 series object; events and service
checks follow the agent's events and check_run payloads; distributions are one
object per context and bucket with the sketch's summary and percentiles (the
shapes are documented in the README).  Large flushes are written through a
Cooperator in slices so they never stall intake for long.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.application.service import Service
from zope.interface import implementer

from twisted_statsd._cooperate import cooperator
from twisted_statsd.core.model import FlushBatch
from twisted_statsd.interfaces import IMetricSink

# Objects serialised per cooperative step.
LINES_PER_STEP = 100


def _resources(host: str) -> list[dict]:
    """The v2 series resources: the host, when there is one."""
    return [{"type": "host", "name": host}] if host else []


def series_object(series) -> dict:
    return {
        "metric": series.name,
        "type": series.type,
        "points": [{"timestamp": ts, "value": value} for ts, value in series.points],
        "tags": list(series.tags),
        "resources": _resources(series.host),
        "interval": series.interval,
    }


def percentile_label(q: float) -> str:
    return f"p{q * 100:g}"


def sketch_objects(sketch_series, percentiles) -> list[dict]:
    return [
        {
            "metric": sketch_series.name,
            "type": "distribution",
            "timestamp": ts,
            "interval": sketch_series.interval,
            "count": sketch.count,
            "sum": sketch.sum,
            "min": sketch.min,
            "max": sketch.max,
            "avg": sketch.avg,
            "percentiles": {percentile_label(q): sketch.quantile(q) for q in percentiles},
            "tags": list(sketch_series.tags),
            "resources": _resources(sketch_series.host),
        }
        for ts, sketch in sketch_series.points
    ]


def event_object(event) -> dict:
    """An event as the agent posts it; empty optional fields are left out, as it does."""
    obj = {"msg_title": event.title, "msg_text": event.text, "timestamp": event.timestamp}
    obj["priority"] = event.priority
    obj["host"] = event.host
    if event.tags:
        obj["tags"] = list(event.tags)
    obj["alert_type"] = event.alert_type
    if event.aggregation_key:
        obj["aggregation_key"] = event.aggregation_key
    if event.source_type:
        obj["source_type_name"] = event.source_type
    return obj


def service_check_object(check) -> dict:
    """A check_run entry; ``tags`` is null when empty, as the agent sends it."""
    return {
        "check": check.name,
        "host_name": check.host,
        "timestamp": check.timestamp,
        "status": check.status,
        "message": check.message,
        "tags": list(check.tags) or None,
    }


def batch_objects(batch: FlushBatch, percentiles):
    """Every object of a flush, in output order."""
    for series in batch.series:
        yield series_object(series)
    for sketch_series in batch.sketches:
        yield from sketch_objects(sketch_series, percentiles)
    for event in batch.events:
        yield event_object(event)
    for check in batch.service_checks:
        yield service_check_object(check)


@implementer(IMetricSink)
class JsonlSink(Service):
    """Writes each flush as JSON lines to a file (appending) or to standard output (``-``)."""

    name = "jsonl"

    def __init__(self, reactor, path: str = "-", percentiles=(0.5, 0.75, 0.9, 0.95, 0.99)):
        self.path = path
        self.percentiles = tuple(percentiles)
        self._cooperator = cooperator(reactor)
        self._file = None

    def startService(self):
        """Open the output now, so an unwritable path stops the server at start."""
        if self.path == "-":
            # twistd redirects sys.stdout into the log; write to the real descriptor.
            self._file = os.fdopen(os.dup(sys.__stdout__.fileno()), "w", encoding="utf-8")
        else:
            self._file = open(self.path, "a", encoding="utf-8")
        super().startService()

    def write(self, batch: FlushBatch):
        return self._cooperator.coiterate(self._write_steps(batch_objects(batch, self.percentiles)))

    def _write_steps(self, objects):
        out = self._file
        lines = []
        for obj in objects:
            lines.append(json.dumps(obj, allow_nan=False))
            if len(lines) >= LINES_PER_STEP:
                out.write("\n".join(lines) + "\n")
                lines = []
                yield None
        if lines:
            out.write("\n".join(lines) + "\n")
        out.flush()

    def stopService(self):
        super().stopService()
        out, self._file = self._file, None
        if out is not None:
            out.close()
