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
from itertools import chain, islice

from twisted.internet import defer
from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from zope.interface import implementer

from twisted_statsd import _cooperate
from twisted_statsd._binding import BindingService
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd._twisted_helpers import Waiters
from twisted_statsd.config import SinkOption
from twisted_statsd.core.model import Event, FlushBatch, ServiceCheck
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks._json_series import SeriesFormat, series_text
from twisted_statsd.telemetry import Telemetry

# Objects serialised per cooperative step.
LINES_PER_STEP = 100

# One encoder for every line: json.dumps with an option builds a new one per call.
_encode = json.JSONEncoder(allow_nan=False).encode

# Output held for a slow reader of standard output before lines are dropped.
STDOUT_BUFFER_LIMIT = 16 * 1024 * 1024
# How long stopping waits for that reader before the rest is dropped (and counted).
STDOUT_DRAIN_SECONDS = 5.0


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


_SERIES_FORMAT = SeriesFormat(
    point='{"timestamp": %d, "value": %r}',
    separator=", ",
    series='{{"metric": {0}, "type": {1:d}, "points": [{2}], "tags": [{3}], "resources": {5}, "interval": {4:d}}}',
    resources='[{"type": "host", "name": %s}]',
    no_resources="[]",
)


def series_line(series) -> str:
    """``_encode(series_object(series))``, formatted directly: a flush writes one per context.

    Raises ValueError for a point JSON cannot carry, as the encoder does.
    """
    text = series_text(series, _SERIES_FORMAT)
    return _encode(series_object(series)) if text is None else text


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


def event_object(event: Event) -> dict:
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


def service_check_object(check: ServiceCheck) -> dict:
    """A check_run entry; ``tags`` is null when empty, as the agent sends it."""
    return {
        "check": check.name,
        "host_name": check.host,
        "timestamp": check.timestamp,
        "status": check.status,
        "message": check.message,
        "tags": list(check.tags) or None,
    }


def batch_lines(batch: FlushBatch, percentiles):
    """Every line of a flush, in output order, without its newline; None in place of
    an object JSON cannot carry (NaN or infinity, e.g. the sum of a distribution that overflowed)."""
    for series in batch.series:
        try:
            yield series_line(series)
        except ValueError:
            yield None
    objects = chain(
        chain.from_iterable(sketch_objects(s, percentiles) for s in batch.sketches),
        map(event_object, batch.events),
        map(service_check_object, batch.service_checks),
    )
    for obj in objects:
        try:
            yield _encode(obj)
        except ValueError:
            yield None


@implementer(IWriteDescriptor)
class PipeWriter:
    """Writes to a pipe or terminal without ever blocking the reactor.

    What the reader has not taken yet waits in a buffer of at most ``limit``
    bytes; lines beyond it are dropped and counted, so a stalled consumer of
    ``--jsonl -`` costs output, never intake.
    """

    def __init__(self, reactor, fd: int, limit: int, telemetry: Telemetry):
        self.reactor = reactor
        self.fd = fd
        self.limit = limit
        self.telemetry = telemetry
        self._pending = bytearray()
        self._drained = Waiters()
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        if self._pending:
            if len(self._pending) + len(data) > self.limit:
                self.telemetry.drop("jsonl_output_full", data.count(b"\n"))
                return
            self._pending += data
            return
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            self._pending += data[written:]
            self.reactor.addWriter(self)

    def doWrite(self):
        try:
            written = os.write(self.fd, self._pending)
        except BlockingIOError:
            return None
        except OSError as e:
            return e
        del self._pending[:written]
        if not self._pending:
            self.reactor.removeWriter(self)
            self._drained.fire()
        return None

    def drained(self) -> defer.Deferred:
        """Fires once the reader has taken everything written so far."""
        if not self._pending:
            return defer.succeed(None)
        return self._drained.wait()

    def fileno(self) -> int:
        return self.fd

    def connectionLost(self, reason) -> None:
        self.reactor.removeWriter(self)
        if self._pending:
            self.telemetry.drop("jsonl_output_lost", self._pending.count(b"\n"))
            self._pending.clear()

    def logPrefix(self) -> str:
        return "jsonl"

    def close(self) -> None:
        """Give up what the reader never took (counted), and close the descriptor."""
        self.connectionLost(None)
        os.close(self.fd)


class AppendFile:
    """A file that each chunk of lines is appended to whole, or not at all.

    A write cut short (a full disk, a file size limit) is undone by cutting the
    file back to its size before the write, so a half line is never left to be
    glued to the next one; the chunk's lines are dropped and counted.  Writes
    are unbuffered: each chunk reaches the kernel at once, as a flush requires.
    """

    def __init__(self, path: str, telemetry: Telemetry):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.telemetry = telemetry
        # A cut-short write that could not be undone: the next chunk ends that line first.
        self._torn = False
        # The last write error, for the sink's one log line per flush.
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        fd = self.fd
        lines = data.count(b"\n")
        if self._torn:
            data = b"\n" + data
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._torn = False
        except OSError as error:
            self.error = error
            self.telemetry.drop("jsonl_write_failed", lines)
            try:
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
            except OSError:
                self._torn = True

    def close(self) -> None:
        os.close(self.fd)


@implementer(IMetricSink)
class JsonlSink(BindingService):
    """Writes each flush as JSON lines to a file (appending) or to standard output (``-``).

    The output is opened like a listener's socket, in ``privilegedStartService``
    (sinks start before listeners): a path that cannot be written stops the
    server before it listens, and a path only root may write works.
    """

    name = "jsonl"
    # Set by build_service: the whole server's stop, whose remaining time bounds this sink's.
    stop_deadline: StopDeadline | None = None
    log = Logger()

    def __init__(
        self,
        reactor,
        telemetry: Telemetry,
        path: str = "-",
        percentiles=(0.5, 0.75, 0.9, 0.95, 0.99),
        *,
        cooperator: Cooperator | None = None,
    ):
        self.reactor = reactor
        self.telemetry = telemetry
        self.path = path
        self.percentiles = tuple(percentiles)
        self._cooperator = cooperator or _cooperate.cooperator(reactor)
        self._file: PipeWriter | AppendFile | None = None

    @property
    def bound(self) -> bool:
        return self._file is not None

    def describe(self) -> tuple[str, str]:
        return f"sinks: {self.name}", f"open {self.path} for appending"

    def bind(self) -> None:
        if self.path == "-":
            # twistd redirects sys.stdout into the log; write to the real descriptor.
            if sys.__stdout__ is None:
                raise OSError("the process has no standard output")
            fd = os.dup(sys.__stdout__.fileno())
            self._file = PipeWriter(self.reactor, fd, STDOUT_BUFFER_LIMIT, self.telemetry)
        else:
            self._file = AppendFile(self.path, self.telemetry)

    def write(self, batch: FlushBatch):
        return self._cooperator.coiterate(self._write_steps(batch_lines(batch, self.percentiles)))

    def _write_steps(self, lines):
        """Write a flush's lines; an object JSON cannot carry is left out, never the whole flush."""
        out = self._file
        if out is None:
            raise RuntimeError("the jsonl sink was written to before it opened its output")
        unencodable = 0
        while chunk := list(islice(lines, LINES_PER_STEP)):
            if None in chunk:
                unencodable += chunk.count(None)
                chunk = [line for line in chunk if line is not None]
            if chunk:
                chunk.append("")
                out.write("\n".join(chunk).encode())
            yield None
        if unencodable:
            self.telemetry.drop("jsonl_unencodable", unencodable)
            self.log.warn(
                "Left {count} objects out of a flush: they hold values JSON cannot carry (NaN or infinity)",
                log_category="JSONL_UNENCODABLE",
                count=unencodable,
            )
        if isinstance(out, AppendFile) and out.error is not None:
            error, out.error = out.error, None
            self.log.error(
                "Could not write whole lines to {path} ({error}); they were dropped and counted",
                log_category="JSONL_WRITE_FAILED",
                path=self.path,
                error=error,
            )

    def stopService(self):
        """Close the output; a slow reader of standard output gets a few seconds to catch up
        (``STDOUT_DRAIN_SECONDS``, or what remains of the server's ``stop_deadline`` if less)."""
        super().stopService()
        out, self._file = self._file, None
        if isinstance(out, PipeWriter):
            d = out.drained()
            limit = STDOUT_DRAIN_SECONDS
            if self.stop_deadline is not None:
                limit = self.stop_deadline.remaining(limit)
            d.addTimeout(limit, self.reactor)
            d.addErrback(lambda failure: failure.trap(defer.TimeoutError))
            return d.addCallback(lambda _: out.close())
        if out is not None:
            out.close()


#: Options of a ``jsonl`` entry of ``sinks``: name -> (converter, default).
OPTIONS = {
    "path": (SinkOption.path, "-"),
    "percentiles": (SinkOption.percentiles, (0.5, 0.75, 0.9, 0.95, 0.99)),
}

#: The registry's factory: the sink's constructor takes (reactor, telemetry, cooperator=..., **options).
build = JsonlSink
