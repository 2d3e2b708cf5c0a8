"""The hot path: raw packets -> parsed lines -> enriched targets -> aggregator.

Everything a metric line says apart from its value (name, type, rate, tags,
container) decides where its samples go.  The pipeline caches that decision
keyed by the line's *shape*, the line with its value cut out, so a repeated
context costs one slice-and-join, one dictionary probe and one float parse;
only a new shape goes through the full parser and the enricher.  Lines with a
client timestamp are never cached: their shape changes with every sample.
Shapes not seen for ``context_expiry`` seconds are forgotten: the cache has a
current and a previous generation, a miss in the current one promotes from the
previous, and the generations rotate every ``context_expiry`` seconds, so a hit
costs nothing extra and a stale context leaves within two periods.
Pure: time comes in as ``now``, and nothing here touches the reactor.
"""

from __future__ import annotations

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core import parser
from twisted_statsd.core.aggregator import Aggregator, Counter, Set
from twisted_statsd.core.enrich import Enricher, Target
from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, SET, forget_shared_tag_sets
from twisted_statsd.core.parser import ParseError, parse_float, parse_values
from twisted_statsd.telemetry import Telemetry

# What a plain decimal value is made of; anything else takes parse_float's careful path.
_DECIMAL = b"0123456789.eE+-"

# Shapes remembered before the cache starts over (each entry is one context).
CACHE_SIZE = 200_000

# Verdicts on a whole line shape, cached like targets.
_REFUSALS = {
    "blocked": "metric is on the block list",
    "zero_sample_rate": "a counter with sample rate 0 has no value",
}


class Pipeline:
    """Parses, enriches and aggregates batches of packets.

    Invariant: every line either becomes samples in the aggregator or is
    counted under a named drop reason (reported through ``reporter``).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        enricher: Enricher,
        telemetry: Telemetry,
        reporter: RateLimitedReporter,
        *,
        timestamps: bool = True,
        origin_client: bool = False,
        cache_size: int = CACHE_SIZE,
        context_expiry: float = 20.0,
    ):
        self.aggregator = aggregator
        self.enricher = enricher
        self.telemetry = telemetry
        self.reporter = reporter
        self.timestamps = timestamps
        self.origin_client = origin_client
        self.cache_size = cache_size
        self.context_expiry = context_expiry
        # Keys are line shapes, or (origin, shape) for packets with a detected origin.
        self._cache: dict = {}
        self._previous: dict = {}
        self._rotate_at: float | None = None
        # Set by the memory monitor above its hard limit: lines of shapes not
        # seen yet (new contexts) are refused; known shapes still aggregate.
        self.refuse_new_contexts = False

    def process(
        self, packets: list[bytes], now: float, *, eol_required: bool = False, origin: bytes | None = None
    ) -> None:
        """Aggregate every line of ``packets`` as received at ``now``.

        ``origin`` is the sender's container ID when the listener detected it;
        the shapes of such packets are cached apart, keyed with the origin.
        """
        if self._rotate_at is None or now >= self._rotate_at:
            self._rotate(now)
        aggregator = self.aggregator
        bucket = aggregator.bucket(now)
        metrics = bucket.metrics
        cache = self._cache
        report = self.reporter.report
        samples = 0
        for packet in packets:
            if eol_required:
                lines, unterminated = parser.split_lines(packet, True)
                if unterminated:
                    report("unterminated_line", "packet does not end with a newline", packet)
            else:
                lines = packet.split(b"\n")
                if b"\r" in packet:
                    lines = [line[:-1] if line[-1:] == b"\r" else line for line in lines]
            for line in lines:
                if not line:
                    continue
                bar = line.find(b"|")
                colon = line.find(b":", 0, bar)
                if colon <= 0:
                    samples += self._slow(line, None, now, origin)
                    continue
                shape = line[:colon] + line[bar:]
                if origin is not None:
                    shape = (origin, shape)
                target = cache.get(shape)
                if target is None:
                    target = self._previous.pop(shape, None)
                    if target is None:
                        samples += self._slow(line, shape, now, origin)
                        continue
                    self._remember(shape, target)
                if target.__class__ is str:
                    report(target, _REFUSALS[target], line)
                    continue
                mtype, context, rate, copy = target
                raw = line[colon + 1 : bar]
                if mtype == SET:
                    if not raw:
                        samples += self._slow(line, None, now, origin)  # the parser names the error
                        continue
                    value = raw
                elif raw.strip(_DECIMAL):  # not plain decimal: packed values, inf, hex, or an error
                    try:
                        if b":" in raw:
                            samples += self._values(target, parse_values(raw), now)
                            continue
                        value = parse_float(raw)
                    except ParseError as e:
                        report(e.reason, e.message, line)
                        continue
                    if value - value:
                        report("non_finite_value", "NaN and infinite values are dropped", line)
                        continue
                else:
                    # Plain decimal: Python's float() and Go's ParseFloat agree, but
                    # for the empty string and overflow, which parse_float reports.
                    try:
                        value = float(raw)
                    except ValueError:
                        value = None
                    if value is None or value - value:
                        try:
                            parse_float(raw) if raw else self._slow(line, None, now, origin)
                        except ParseError as e:
                            report(e.reason, e.message, line)
                        continue
                if mtype == DISTRIBUTION:
                    aggregator.add_distribution(bucket, context, value, rate)
                else:
                    metric = metrics.get(context.key)
                    if metric is None:
                        metric = aggregator.new_metric(bucket, context, mtype, now)
                    if metric.__class__ is Counter:  # Counter.add, inlined: the commonest case
                        if value.__class__ is not float:
                            value = 0.0  # a set member carries no number
                        metric.value += value / rate if rate else value
                        metric.last = now
                    else:
                        if mtype == SET and metric.__class__ is not Set:
                            value = 0.0
                        metric.add(value, rate, now)
                    if copy is not None:
                        aggregator.add_distribution(bucket, copy, value, rate)
                samples += 1
        self.telemetry.incr("metrics", samples)

    def _remember(self, shape, verdict) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
            self._previous.clear()
            self.telemetry.incr("shape_cache_resets")
        self._cache[shape] = verdict

    def forget_shapes(self) -> None:
        """Drop every cached line shape, e.g. after the enricher's mapper was replaced."""
        self._cache.clear()
        self._previous.clear()

    def _rotate(self, now: float) -> None:
        """Start a new cache generation; shapes unseen since the last rotation are dropped."""
        self._previous = self._cache
        self._cache = {}
        forget_shared_tag_sets()
        self._rotate_at = now + self.context_expiry

    def _values(self, target: Target, values, now: float) -> int:
        """Aggregate several on-time values of one line; returns how many were kept."""
        kept = 0
        for value in values:
            if value - value:
                self.reporter.report("non_finite_value", "NaN and infinite values are dropped", repr(value).encode())
                continue
            self.aggregator.add(target.context, target.type, value, target.rate, now)
            if target.copy is not None:
                self.aggregator.add(target.copy, DISTRIBUTION, value, target.rate, now)
            kept += 1
        return kept

    def _slow(self, line: bytes, shape, now: float, origin: bytes | None) -> int:
        """Parse a line in full; remember the target of a new metric shape."""
        try:
            kind = parser.message_kind(line)
            if kind == parser.EVENT:
                self._event(line, now, origin)
                return 0
            if kind == parser.SERVICE_CHECK:
                self._service_check(line, now, origin)
                return 0
            message = parser.parse_metric(line, timestamps=self.timestamps, origin_client=self.origin_client)
        except ParseError as e:
            self.reporter.report(e.reason, e.message, line)
            return 0
        target = self.enricher.metric_target(message, origin)
        if target is None:
            self.reporter.report("blocked", _REFUSALS["blocked"], line)
            if shape is not None and not message.timestamp:
                self._remember(shape, "blocked")
            return 0
        if message.timestamp:  # the sample rate does not apply here (spec §1.4)
            return self._timestamped(target, message, line)
        if (
            self.refuse_new_contexts
            and not self.aggregator.knows(target.context, now)
        ):
            self.reporter.report("memory_hard_limit", "memory use is above the hard limit; new contexts are refused", line)
            return 0
        verdict = "zero_sample_rate" if target.type == COUNTER and target.rate == 0.0 else target
        if verdict.__class__ is str:
            self.reporter.report(verdict, _REFUSALS[verdict], line)
        if shape is not None:
            self._remember(shape, verdict)
        if verdict.__class__ is str:
            return 0
        if target.type == SET:
            self.aggregator.add(target.context, SET, message.set_member, 1.0, now)
            return 1
        return self._values(target, message.values, now)

    def _timestamped(self, target: Target, message, line: bytes) -> int:
        """Send a client-timestamped line down the no-aggregation path (spec §6.7)."""
        if target.type not in (COUNTER, GAUGE):
            self.reporter.report("timestamped_unsupported_type", "only gauges and counters may carry a timestamp", line)
            return 0
        kept = 0
        for value in message.values:
            if value - value:
                self.reporter.report("non_finite_value", "NaN and infinite values are dropped", line)
            elif self.aggregator.add_timestamped(target.context, target.type, value, message.timestamp):
                kept += 1
            else:
                self.reporter.report("pending_overflow", "too many timestamped samples waiting for the flush", line)
        return kept

    def _event(self, line: bytes, now: float, origin: bytes | None) -> None:
        message = parser.parse_event(line, origin_client=self.origin_client)
        if self.aggregator.add_event(self.enricher.event(message, now, origin)):
            self.telemetry.incr("events")
        else:
            self.reporter.report("pending_overflow", "too many events waiting for the flush", line)

    def _service_check(self, line: bytes, now: float, origin: bytes | None) -> None:
        message = parser.parse_service_check(line, origin_client=self.origin_client)
        if self.aggregator.add_service_check(self.enricher.service_check(message, now, origin)):
            self.telemetry.incr("service_checks")
        else:
            self.reporter.report("pending_overflow", "too many service checks waiting for the flush", line)
