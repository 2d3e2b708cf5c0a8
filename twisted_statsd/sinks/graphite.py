"""The ``graphite`` sink: carbon's plaintext protocol over one reconnecting TCP connection.

Every point becomes one line ``<path> <value> <timestamp>\\n``, stamped with
the point's own timestamp (the start of its 10 s bucket; a service check's own
time).  Values are written as they are in the series: a DogStatsD counter is a
rate per second, as in the Datadog API.  Tags become Graphite tagged series
(``name;k=v;host=h``, the ``graphite`` scheme) or path nodes (``name.k_v.host_h``,
the ``name`` scheme).  Distributions become ``.count .sum .min .max .avg`` and
one ``.pNN`` per configured percentile; a service check becomes a
``<check>.status`` gauge (0 ok, 1 warning, 2 critical, 3 unknown); events have
no Graphite form and are counted as skipped.

Delivery is isolated from the rest of the server: ``write`` formats (in
cooperative slices when large) into a bounded line buffer and returns once the
lines are buffered, never waiting on carbon.  A ``ClientService`` keeps the
connection up with exponential back-off; while it is down, or while the
transport has paused us because carbon reads slowly, lines wait in the buffer.
When the buffer is full the oldest lines are dropped, so after an outage
carbon gets the most recent data.  Carbon never acknowledges, so "sent" means
handed to the transport; lines still in the socket buffers when a connection
breaks are lost uncounted.
"""

from __future__ import annotations

import random
import re
from collections import deque
from itertools import islice

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, tcp
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_statsd import _cooperate
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd._twisted_helpers import deadline
from twisted_statsd.config import SinkOption
from twisted_statsd.core.model import FlushBatch
from twisted_statsd.interfaces import IMetricSink

__all__ = ["GraphiteSink", "LineFormatter"]

TAG_SCHEMES = ("graphite", "name")
HOST_PLACEMENTS = ("tag", "prefix", "none")
# Lines formatted per cooperative step, and written per transport.write call.
LINES_PER_STEP = 1000
# Carbon's line receiver drops the connection on a line longer than 16384 bytes.
MAX_LINE_LENGTH = 16384
_TAGS = ("sink:graphite",)

# Conservative ASCII sets: carbon forbids whitespace, ";" in paths, ";!^=" in tag
# keys and ";" or a leading "~" in tag values, and graphite-web's query syntax
# gives "*?[]{}(),~=!^" meanings; everything outside these sets becomes "_".
_PATH_BAD = re.compile(r"[^A-Za-z0-9_\-.]")
_NODE_BAD = re.compile(r"[^A-Za-z0-9_\-]")
_VALUE_BAD = re.compile(r"[^A-Za-z0-9_\-.:]")
_DOTS = re.compile(r"\.{2,}")


def clean_path(text: str) -> str:
    """A dotted path with safe characters and no empty nodes ("_" if nothing is left)."""
    return _DOTS.sub(".", _PATH_BAD.sub("_", text)).strip(".") or "_"


def clean_node(text: str) -> str:
    """One path node: dots too become "_", so a value cannot add levels."""
    return _NODE_BAD.sub("_", text) or "_"


def clean_tag_key(key: str) -> str:
    """A tag key; ``name`` is renamed ``tag_name`` because carbon reserves it for the path."""
    key = clean_path(key)
    return "tag_name" if key == "name" else key


def clean_tag_value(value: str) -> str:
    """A tag value; an empty one (a bare DogStatsD tag) becomes ``true``."""
    return _VALUE_BAD.sub("_", value) if value else "true"


def percentile_suffix(q: float) -> str:
    """``.p50``, ``.p99``, ``.p99_9``: the percent with its dot made a "_"."""
    return ".p" + f"{q * 100:g}".replace(".", "_")


class LineFormatter:
    """Turns a FlushBatch into carbon plaintext lines.  Pure: no I/O, no clock.

    ``non_finite`` counts values skipped because carbon cannot store NaN or
    infinity (a sketch sum can overflow); the sink collects it.  Sanitised
    paths are cached per context for one batch after they were last used, so
    a steady set of contexts is sanitised once and an expired one is forgotten.
    """

    def __init__(self, *, tags: str = "graphite", host_placement: str = "tag", prefix: str = "", percentiles=()):
        if tags not in TAG_SCHEMES:
            raise ValueError(f"tags must be one of {TAG_SCHEMES}, not {tags!r}")
        if host_placement not in HOST_PLACEMENTS:
            raise ValueError(f"host_placement must be one of {HOST_PLACEMENTS}, not {host_placement!r}")
        if not all(0.0 <= q <= 1.0 for q in percentiles):
            raise ValueError(f"percentiles must be within [0, 1], not {percentiles!r}")
        self.tagged = tags == "graphite"
        self.host_placement = host_placement
        self.prefix = clean_path(prefix) + "." if prefix.strip(".") else ""
        self.sketch_stats = [(s, s[1:]) for s in (".count", ".sum", ".min", ".max", ".avg")]
        self.percentiles = [(percentile_suffix(q), q) for q in percentiles]
        self.non_finite = 0
        self._paths: dict = {}
        self._previous_paths: dict = {}

    def _parts(self, name: str, tags, host: str) -> tuple[str, str]:
        key = (name, tags, host)
        parts = self._paths.get(key)
        if parts is None:
            parts = self._previous_paths.get(key) or self.path_parts(name, tags, host)
            self._paths[key] = parts
        return parts

    def path_parts(self, name: str, tags, host: str) -> tuple[str, str]:
        """The path around a suffix: ``head + suffix + tail`` is the full path."""
        pairs = []
        for tag in tags:
            key, _, value = tag.partition(":")
            pairs.append((key, value))
        head = self.prefix
        if host and self.host_placement == "prefix":
            head += clean_node(host) + "."
        elif host and self.host_placement == "tag":
            pairs.append(("host", host))
        head += clean_path(name)
        if self.tagged:
            grouped: dict[str, set[str]] = {}
            for key, value in pairs:
                grouped.setdefault(clean_tag_key(key), set()).add(clean_tag_value(value))
            # Carbon keeps one value per key, so repeated keys are joined with ",";
            # sorted as carbon sorts them, this is its canonical form of the path.
            tail = "".join(sorted(f";{k}={','.join(sorted(values))}" for k, values in grouped.items()))
        else:
            nodes = {clean_node(k) + ("_" + clean_node(v) if v else "") for k, v in pairs}
            tail = "".join("." + node for node in sorted(nodes))
        return head, tail

    def lines(self, batch: FlushBatch):
        """Every line of the batch, in the order series, distributions, service checks."""
        self._previous_paths, self._paths = self._paths, {}
        parts = self._parts
        for series in batch.series:
            head, tail = parts(series.name, series.tags, series.host)
            path = head + tail
            for ts, value in series.points:
                if value - value:  # NaN or infinite
                    self.non_finite += 1
                    continue
                yield f"{path} {float(value)!r} {int(ts)}\n"
        for sketches in batch.sketches:
            head, tail = parts(sketches.name, sketches.tags, sketches.host)
            for ts, sketch in sketches.points:
                ts = int(ts)
                values = [(suffix, getattr(sketch, stat)) for suffix, stat in self.sketch_stats]
                values += [(suffix, sketch.quantile(q)) for suffix, q in self.percentiles]
                for suffix, value in values:
                    if value - value:
                        self.non_finite += 1
                        continue
                    yield f"{head}{suffix}{tail} {float(value)!r} {ts}\n"
        for check in batch.service_checks:
            head, tail = parts(check.name, check.tags, check.host)
            yield f"{head}.status{tail} {float(check.status)!r} {int(check.timestamp)}\n"


@implementer(IPushProducer)
class _CarbonProtocol(Protocol):
    """One connection to carbon; a streaming producer the transport pauses when its buffer fills."""

    #: A TCP connection (the sink's endpoint is a TCP one).
    transport: tcp.Connection

    def __init__(self, sink: GraphiteSink):
        self.sink = sink
        self.paused = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.sink._connection_made(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.paused = True
        self.sink._connection_lost(self, reason)

    def dataReceived(self, data):
        """Carbon's line receiver never answers; anything received is ignored."""

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.sink._send()

    def stopProducing(self):
        self.paused = True


class _CarbonFactory(Factory):
    noisy = False

    def __init__(self, sink: GraphiteSink):
        self.sink = sink

    def buildProtocol(self, addr):
        return _CarbonProtocol(self.sink)


@implementer(IMetricSink)
class GraphiteSink(Service):
    """Sends every flush to carbon over TCP, buffering up to ``max_buffered_lines`` lines."""

    name = "graphite"
    # Set by build_service: the whole server's stop, whose remaining time bounds this sink's.
    stop_deadline: StopDeadline | None = None
    log = Logger()

    def __init__(
        self,
        reactor,
        telemetry,
        *,
        host: str = "127.0.0.1",
        port: int = 2003,
        tags: str = "graphite",
        host_placement: str = "tag",
        prefix: str = "",
        max_buffered_lines: int = 100_000,
        percentiles=(0.5, 0.95, 0.99),
        reconnect_initial_delay: float = 1.0,
        reconnect_max_delay: float = 60.0,
        stop_timeout: float = 10.0,
        cooperator: Cooperator | None = None,
        _endpoint=None,
        _jitter=None,
    ):
        if max_buffered_lines < 1:
            raise ValueError("max_buffered_lines must be at least 1")
        self.clock = reactor
        self.telemetry = telemetry
        self.address = f"{host}:{port}"
        self.formatter = LineFormatter(
            tags=tags, host_placement=host_placement, prefix=prefix, percentiles=tuple(percentiles)
        )
        self.stop_timeout = stop_timeout
        endpoint = _endpoint if _endpoint is not None else HostnameEndpoint(reactor, host, port, timeout=10)
        policy = backoffPolicy(reconnect_initial_delay, reconnect_max_delay, jitter=_jitter or random.random)
        self._client = ClientService(endpoint, _CarbonFactory(self), retryPolicy=policy, clock=reactor)
        self._cooperator = cooperator or _cooperate.cooperator(reactor)
        # Invariant: the buffer is empty whenever a connection is up and not
        # paused; lines wait only for a connection or for the transport to resume.
        self.max_buffered_lines = max_buffered_lines
        self._buffer: deque[str] = deque(maxlen=max_buffered_lines)
        # A slice never exceeds the buffer, so a healthy connection never drops.
        self._step = min(LINES_PER_STEP, max_buffered_lines)
        self._protocol: _CarbonProtocol | None = None
        self._formatting: set[defer.Deferred] = set()
        self._overflowing = False
        telemetry.set_gauge("sink_queue", 0, _TAGS)
        telemetry.set_gauge("sink_connected", 0, _TAGS)

    @property
    def buffered(self) -> int:
        """How many lines wait for carbon."""
        return len(self._buffer)

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def startService(self):
        super().startService()
        self._client.startService()

    def write(self, batch: FlushBatch):
        """Buffer the batch's lines, never waiting on carbon.

        A small batch is buffered at once (returns None); a large one is
        formatted in cooperative slices, and the Deferred fires once every
        line is buffered.
        """
        if batch.events:
            self.telemetry.incr("sink_skipped", len(batch.events), (*_TAGS, "kind:event"))
        lines = self.formatter.lines(batch)
        if self._take(lines):
            return None
        d = self._cooperator.coiterate(self._steps(lines))
        self._formatting.add(d)
        d.addBoth(self._formatted, d)
        return d

    def _formatted(self, result, d):
        self._formatting.discard(d)
        return result

    def _steps(self, lines):
        while not self._take(lines):
            yield None

    def _take(self, lines) -> bool:
        """Buffer the next slice of ``lines``; True once they are exhausted."""
        chunk = list(islice(lines, self._step))
        exhausted = len(chunk) < self._step
        formatter = self.formatter
        if formatter.non_finite:
            self.telemetry.drop("graphite_non_finite", formatter.non_finite)
            formatter.non_finite = 0
        long_lines = [line for line in chunk if len(line) > MAX_LINE_LENGTH]
        if long_lines:
            self.telemetry.drop("graphite_line_too_long", len(long_lines))
            chunk = [line for line in chunk if len(line) <= MAX_LINE_LENGTH]
        buffer = self._buffer
        overflow = len(buffer) + len(chunk) - self.max_buffered_lines
        if overflow > 0:
            # The deque's maxlen drops the oldest lines as the new ones go in.
            self.telemetry.drop("graphite_buffer_full", overflow)
            if not self._overflowing:
                self._overflowing = True
                self._warn(
                    "GRAPHITE_BUFFER_FULL",
                    "Graphite buffer full ({size} lines); dropping the oldest until carbon at {address} takes more",
                    size=self.max_buffered_lines,
                )
        buffer.extend(chunk)
        self._send()
        return exhausted

    def _send(self, force: bool = False) -> None:
        """Move buffered lines to the transport until it pauses us (or all of them when ``force``)."""
        protocol = self._protocol
        buffer = self._buffer
        sent = 0
        while buffer and protocol is self._protocol and protocol is not None and (force or not protocol.paused):
            chunk = [buffer.popleft() for _ in range(min(len(buffer), LINES_PER_STEP))]
            protocol.transport.write("".join(chunk).encode("utf-8"))
            sent += len(chunk)
        if sent:
            self.telemetry.incr("sink_sent", sent, _TAGS)
        if not buffer:
            self._overflowing = False
        self.telemetry.set_gauge("sink_queue", len(buffer), _TAGS)

    def _connection_made(self, protocol: _CarbonProtocol) -> None:
        self._protocol = protocol
        self.telemetry.incr("sink_connects", 1, _TAGS)
        self.telemetry.set_gauge("sink_connected", 1, _TAGS)
        self.log.info(
            "Connected to carbon at {address}; {count} buffered lines to send",
            address=self.address,
            count=len(self._buffer),
            log_category="GRAPHITE_CONNECTED",
        )
        self._send()

    def _connection_lost(self, protocol: _CarbonProtocol, reason) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.telemetry.set_gauge("sink_connected", 0, _TAGS)
        if self.running:
            self._warn(
                "GRAPHITE_DISCONNECTED",
                "Lost the connection to carbon at {address}: {reason}; buffering until it is back",
                reason=reason.getErrorMessage(),
            )

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Finish formatting, hand everything buffered to the transport, then close.

        Bounded by ``stop_timeout``, or by what remains of the server's ``stop_deadline`` if that is less.
        """
        if self._formatting:
            await defer.DeferredList(list(self._formatting))
        self._send(force=True)
        unsent = len(self._buffer)
        if unsent:
            self._buffer.clear()
            self.telemetry.drop("graphite_unsent_at_stop", unsent)
            self.telemetry.set_gauge("sink_queue", 0, _TAGS)
            self._warn(
                "GRAPHITE_UNSENT",
                "Not connected to carbon at {address} at shutdown; dropped {count} buffered lines",
                count=unsent,
            )
        timeout = self.stop_timeout if self.stop_deadline is None else self.stop_deadline.remaining(self.stop_timeout)
        await self._client.stopService().addBoth(deadline(self.clock, timeout, lambda: self._abort(timeout)))

    def _abort(self, timeout: float) -> None:
        protocol = self._protocol
        if protocol is not None:
            self.telemetry.incr("sink_stop_timeouts", 1, _TAGS)
            self._warn(
                "GRAPHITE_STOP_TIMEOUT",
                "Carbon at {address} did not take the last lines within {timeout} s; closing anyway",
                timeout=timeout,
            )
            protocol.transport.abortConnection()

    def _warn(self, category: str, format: str, **fields) -> None:
        """Log a warning under ``category``; every one names the carbon ``{address}``."""
        self.log.warn(format, address=self.address, log_category=category, **fields)


#: Options of a ``graphite`` entry of ``sinks``: name -> (converter, default).
OPTIONS = {
    "host": (SinkOption.string, "127.0.0.1"),
    "port": (SinkOption.tcp_port, 2003),
    "tags": (SinkOption.one_of(*TAG_SCHEMES), "graphite"),
    "host_placement": (SinkOption.one_of(*HOST_PLACEMENTS), "tag"),
    "prefix": (SinkOption.string, ""),
    "max_buffered_lines": (SinkOption.positive_int, 100_000),
    "percentiles": (SinkOption.percentiles, (0.5, 0.95, 0.99)),
    "reconnect_initial_delay": (SinkOption.positive_seconds, 1.0),
    "reconnect_max_delay": (SinkOption.positive_seconds, 60.0),
    "stop_timeout": (SinkOption.positive_seconds, 10.0),
}

#: The registry's factory: the sink's constructor takes (reactor, telemetry, cooperator=..., **options).
build = GraphiteSink
