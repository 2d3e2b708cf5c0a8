"""The hot path: raw packets -> line shapes -> staged samples -> aggregator.

Everything a metric line says apart from its value (name, type, rate, tags,
container) decides where its samples go, so the pipeline learns that once per
line *shape*, the line with its value cut out, and keeps it in the shape cache
(:mod:`twisted_statsd.intake.shapes`).  A batch of packets is cut into lines,
shape keys and raw values with C-level calls (split, partition, concatenate).

What happens next depends on how many shapes are cached, from measurements
(``python -m benchmarks.pipeline``, see the README's Performance section):

* few (at most ``FEW_SHAPES``): a batch whose every line has a learnt shape is
  staged (:mod:`twisted_statsd.intake.staging`) with no Python bytecode per
  line, and every ``FOLD_LINES`` lines :meth:`Pipeline.fold` converts each
  shape's values at once and hands them to the aggregator in one batch: a
  repeated context costs a few C calls per line plus a share of one fold.
* many: each shape would hold about one value per fold, where staging costs
  more than it saves; the values of a batch of learnt shapes are converted at
  once, with C-level calls too, into one run per line (:meth:`Pipeline._convert_all`),
  and the batch is handed over at its end, in arrival order.  This lasts until
  the shape cache's next generation (its ``in_order``).

Lines that cannot take the bulk path go one at a time, in order, through the
full parser: new shapes, events, service checks, client-timestamped lines,
errors, refusals, and every line of a context seen under two metric types
(whose first type in a bucket decides, spec §6.4, so their order matters).

With several intake processes, a ``router`` (:mod:`twisted_statsd.intake.shard`)
first sends the lines another process owns to it, by their shape keys, and
only the rest go on here: once more than ``FEW_SHAPES`` shapes are cached.

Staged samples are handed over before the bucket changes, before the shape
cache rotates or starts over, once they are a second old (on the intake
timer), and by whoever reads the aggregator, which calls :meth:`Pipeline.fold`
first: the flush, a worker's export, the memory limit's check of known
contexts.  A sample is counted in the ``metrics`` telemetry when it is handed
over.  Pure: time comes in as ``now``, and nothing here touches the reactor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import compress, repeat
from operator import attrgetter, call, itemgetter
from typing import cast

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core import parser
from twisted_statsd.core.aggregator import Aggregator, bucket_start
from twisted_statsd.core.enrich import Enricher, Target
from twisted_statsd.core.limits import ContextLimiter
from twisted_statsd.core.model import (
    COUNTER,
    DISTRIBUTION,
    GAUGE,
    HISTOGRAM,
    SET,
    TIMING,
    Context,
    forget_shared_tag_sets,
)
from twisted_statsd.core.parser import ParseError, parse_values
from twisted_statsd.intake.shapes import Shape, ShapeCache
from twisted_statsd.intake.shard import Router
from twisted_statsd.intake.staging import Staging
from twisted_statsd.telemetry import Telemetry

# What a plain decimal value is made of; anything else takes parse_values' careful path.
_DECIMAL = b"0123456789.eE+-"

# Shape keys remembered before the cache starts over (each bulk shape is one context).
CACHE_SIZE = 200_000

# Up to this many cached shapes, batches are staged: at 1,000 contexts that is
# 1.2-1.3 times as fast as converting line by line, at 100,000 it is 15-25 %
# slower (benchmarks.pipeline).
FEW_SHAPES = 4_096

# Staged lines that trigger a fold: with at most FEW_SHAPES shapes, each folds
# a dozen values or more, and a fold holds the reactor for a few milliseconds.
FOLD_LINES = 65_536

# Verdicts on a whole line shape, remembered in the shape cache.
_REFUSALS = {
    "blocked": "metric is on the block list",
    "zero_sample_rate": "a counter with sample rate 0 has no value",
    "memory_hard_limit": "memory use is above the hard limit; new contexts are refused",
}

# How the value of a line of each type is converted on the C-level path (a set member stays bytes).
_CONVERTERS = {COUNTER: float, GAUGE: float, HISTOGRAM: float, TIMING: float, DISTRIBUTION: float, SET: bytes}

# The prefixes parser.message_kind routes away from metrics.
_NOT_METRICS = (b"_e{", b"_sc")

_first = itemgetter(0)
_type = attrgetter("type")
_third = itemgetter(2)
_partition = bytes.partition
_concat = bytes.__add__
_key = b":|".join


class Pipeline:
    """Parses, enriches, stages and aggregates batches of packets.

    Invariant: every line either becomes samples in the aggregator (at once or
    at the next fold) or is counted under a named drop reason (reported
    through ``reporter``).  Staged samples all belong to the bucket starting
    at ``_bucket_start``: the pipeline folds before it stages into another.
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
        limiter: ContextLimiter | None = None,
    ):
        self.aggregator = aggregator
        self.enricher = enricher
        self.telemetry = telemetry
        self.reporter = reporter
        self.shapes = ShapeCache(cache_size, telemetry, self.fold, self._class_held)
        # Decides, once per new context, whether it is counted or folded into overflow.
        self.limiter = limiter
        self.staging = Staging()
        self.timestamps = timestamps
        self.origin_client = origin_client
        self.context_expiry = context_expiry
        if limiter is not None:
            aggregator.on_expired.append(self._contexts_expired)
        self._bucket_start: int | None = None
        self._rotate_at: float | None = None
        # The limiter let contexts go since the last batch: shapes to check (see _contexts_expired).
        self._released = False
        # Set by the memory monitor above its hard limit: lines of shapes not
        # seen yet (new contexts) are refused; known shapes still aggregate.
        self.refuse_new_contexts = False
        # Shapes learnt so far: the intake freezes the garbage collector's view on it during bursts.
        self.learnt = 0
        # With several intake processes: sends the lines another process owns to it.
        self.router: Router | None = None

    def process(
        self,
        packets: list[bytes],
        now: float,
        *,
        eol_required: bool = False,
        origin: bytes | None = None,
        owned: bool = False,
    ) -> None:
        """Aggregate every line of ``packets`` as received at ``now``.

        ``origin`` is the sender's container ID when the listener detected it;
        the shapes of such packets are cached apart, keyed with the origin.
        With a ``router``, lines another process owns are sent to it, unless
        ``owned`` says they were routed here already.
        """
        self._advance(now)
        if eol_required:
            packets = [self._terminated(packet) for packet in packets]
        data = b"\n".join(packets)
        if b"\r" in data:  # one \r before each line end is part of the line end
            data = data.replace(b"\r\n", b"\n").removesuffix(b"\r")
        lines = data.split(b"\n")
        if b"" in lines:
            lines = list(filter(None, lines))
        # The key of a line is its name, ":|" and what follows its value.  A
        # line can be learnt only if its name ends at a ":" followed by the
        # value and a "|", and then its key's first ":" is followed by "|";
        # any other line's key differs from every learnt one, so a key found
        # in the cache means the same shape.
        heads = list(map(_partition, lines, repeat(b":")))
        tails = list(map(_partition, map(_third, heads), repeat(b"|")))
        keys = list(map(_key, zip(map(_first, heads), map(_third, tails), strict=False)))
        if origin is not None:
            keys = list(map(_concat, repeat(b"\n" + origin + b"\n"), keys))
        router = self.router
        if router is not None and not owned and (router.active or len(self.shapes) > router.after_shapes):
            router.active = True
            kept = router.route(keys, lines, origin)
            if kept is not None:
                lines, keys = list(compress(lines, kept)), list(compress(keys, kept))
                tails = list(compress(tails, kept))
                if not lines:
                    return
        staging = self.staging
        if self.shapes.in_order or len(self.shapes) > FEW_SHAPES:
            if staging:  # staged while there were few shapes: those samples come first
                self.fold()
            self.shapes.in_order = True  # no staging until the next generation
            staging.note(len(lines), now)
            raws = list(map(_first, tails))
            shapes = self.shapes.lookup(keys)
            cut = shapes.index(None) if None in shapes else len(shapes)  # no None before the cut
            if cut and self._convert_all(cast("list[Shape]", shapes[:cut]), raws[:cut]):
                lines, keys, raws = lines[cut:], keys[cut:], raws[cut:]
            if lines:
                self._each(lines, keys, raws, now, origin, stage=False)
            self.fold()
            return
        staging.note(len(lines), now)
        shapes = self.shapes.lookup(keys)
        if None in shapes:
            cut = shapes.index(None)
            raws = list(map(_first, tails))
            staging.stage(cast("list[Shape]", shapes[:cut]), raws[:cut])  # no None before the cut
            self._each(lines[cut:], keys[cut:], raws[cut:], now, origin, stage=True)
        else:
            staging.stage(cast("list[Shape]", shapes), map(_first, tails))  # no None at all
        if staging.lines >= FOLD_LINES:
            self.fold()

    def fold(self) -> None:
        """Hand every staged sample to the aggregator: runs first, then each shape's values at once."""
        staging = self.staging
        if not staging:
            return
        add_run, values_of = staging.add_run, self._values_of
        for shape, raws in staging.values.items():
            add_run(shape, values_of(shape, raws))
        runs, kept = staging.take()
        if runs:  # an empty batch would open a bucket, which zero-filled counters would then fill
            self.aggregator.add_runs(staging.latest, runs)
        self.telemetry.incr("metrics", kept)

    def fold_if_older(self, now: float, age: float) -> None:
        """Fold if the oldest staged sample arrived ``age`` seconds before ``now`` or earlier."""
        if self.staging and now - self.staging.opened >= age:
            self.fold()

    def forget_shapes(self) -> None:
        """Drop every cached line shape, e.g. after the enricher's mapper was replaced.

        The next batch starts a generation, which sets new tag rules' clock.
        """
        self.shapes.clear()
        self._rotate_at = None

    # -- batches ------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Fold before staging into another bucket; rotate the shape cache when it is due, or drop
        the shapes of contexts the limiter let go."""
        start = bucket_start(now)
        if start != self._bucket_start:
            self.fold()
            self._bucket_start = start
        if self._rotate_at is None or now >= self._rotate_at:
            self.shapes.rotate()
            forget_shared_tag_sets()
            self.enricher.tag_rules.expire(now)
            self._rotate_at = now + self.context_expiry
        if self._released:
            self._released = False
            self.shapes.forget(lambda shape: not self._counted(shape))

    def _terminated(self, packet: bytes) -> bytes:
        """The packet up to its last newline; a final unterminated line is dropped (spec §1.7)."""
        end = packet.rfind(b"\n") + 1
        if end < len(packet):
            self.reporter.report("unterminated_line", "packet does not end with a newline", packet)
        return packet[:end]

    def _each(
        self, lines: list[bytes], keys: list[bytes], raws: list[bytes], now: float, origin, *, stage: bool
    ) -> None:
        """Take lines one by one, in order: stage or convert those of learnt shapes, learn new shapes.

        Shapes are looked up line by line, since learning one may take others
        of its context off the bulk path.
        """
        get = self.shapes.get
        staging = self.staging
        values, runs = staging.values, staging.runs  # emptied in place by a fold meanwhile
        append = runs.append
        for line, key, raw in zip(lines, keys, raws, strict=True):
            shape = get(key)
            if shape is None:
                shape = self._learn(line, key, now, origin)
                if shape is None:
                    self._alone(line, key, raw, now, origin)
                    continue
            if stage:
                values[shape].append(raw)
                continue
            # _convert, inlined for the common case: one plain decimal value.
            if shape.type != SET and not raw.strip(_DECIMAL):
                try:
                    value = float(raw)
                except ValueError:
                    value = math.nan
                if value - value == 0.0:
                    append((shape, (value,)))
                    staging.kept += 1
                    continue
            self._convert(shape, raw)

    def _learn(self, line: bytes, key: bytes, now: float, origin) -> Shape | None:
        """The bulk shape for a new key, or None for a line that goes alone.

        Reports nothing: what is wrong with the line is reported when it is
        handled alone.
        """
        cache = self.shapes
        if cache.known(key):
            return None
        # A shape of a context the limiter has let go is learnt again, so the context is counted again.
        shape = cache.promote(key, self._still_valid)
        if shape is not None or cache.known(key):
            return shape
        if line.startswith(_NOT_METRICS):  # an event or service check (parser.message_kind)
            return None
        try:
            message = parser.parse_metric(line, timestamps=self.timestamps, origin_client=self.origin_client)
        except ParseError:
            return None
        if message.timestamp:
            return None
        target = self.enricher.metric_target(message, origin)
        if target is None:
            cache.refuse(key, "blocked")
            return None
        if target.type == COUNTER and target.rate == 0.0:
            cache.refuse(key, "zero_sample_rate")
            return None
        renew = self.enricher.tag_rules.limits(target.context.name)
        if self.refuse_new_contexts and self._new_within_budget(target, origin, now):
            return None
        if self.limiter is not None:
            target = self._limited(target, origin, now)
        if self.refuse_new_contexts and not self._known(target.context, now):
            return None  # over its budget, and its overflow context is new too
        self.learnt += 1
        return cache.add(key, Shape(target, key, renew=renew))

    def _limited(self, target: Target, origin: bytes | None, now: float) -> Target:
        """``target`` with its contexts admitted by the limiter, or replaced by their overflow contexts."""
        limiter = self.limiter
        assert limiter is not None  # called only when a limiter is configured
        context = limiter.admit(target.context, origin, now, target.type)
        if context is not target.context:
            self.telemetry.incr("context_overflows")
        copy = target.copy
        if copy is not None:
            copy = limiter.admit(copy, origin, now, DISTRIBUTION)
        return target._replace(context=context, copy=copy)

    def _still_valid(self, shape: Shape) -> bool:
        """Whether ``shape``, cached in the previous generation, may be taken back as it is.

        Not if its tag values are limited (the tag rules decide again, and so
        see the value, see :class:`TagRules`), nor if the limiter does not
        count its contexts as live: they expired, or went to overflow, which
        is decided again at least once a generation, as a line alone would be.
        """
        return not shape.renew and (self.limiter is None or self._counted(shape))

    def _counted(self, shape: Shape) -> bool:
        counts = cast("ContextLimiter", self.limiter).counts
        return counts(shape.context) and (shape.copy is None or counts(shape.copy))

    def _contexts_expired(self, keys: list[int]) -> None:
        """The aggregator let go of contexts: they stop counting against their budgets.

        While budgets are set, this generation's shapes of those contexts are
        dropped (they would send lines to them uncounted), and so are those
        that went to overflow: the budget freed may now admit them, as it
        would admit their next line alone.
        """
        limiter = cast("ContextLimiter", self.limiter)
        if limiter.expire(keys) and limiter.enabled:
            # Done before the next batch: a flush reports its contexts a step at a time.
            self._released = True

    def _class_held(self, context: Context) -> type | None:
        return self.aggregator.metric_class(context, self.staging.latest)

    def _known(self, context, now: float) -> bool:
        self.fold()
        return self.aggregator.knows(context, now)

    def _new_within_budget(self, target: Target, origin: bytes | None, now: float) -> bool:
        """Whether ``target``'s context is new and the context limiter would count it live, not fold it.

        Above the memory hard limit such a context is refused before the
        limiter records it: admitted first, it kept a budget entry (and the
        memory for it) though it never reached a bucket.  An over-budget one
        goes on to its overflow context, which may be known.
        """
        if self._known(target.context, now):
            return False
        return self.limiter is None or self.limiter.verdict(target.context, origin) is None

    # -- values -----------------------------------------------------------------------

    def _convert_all(self, shapes: list[Shape], raws: list[bytes]) -> bool:
        """Queue one run per line of learnt shapes, with C-level calls only; False (nothing queued) if any
        value needs the careful path.

        Each value is converted by its type's converter (``float``, or
        ``bytes`` for a set member, which returns the member itself); the
        numeric ones must be plain decimals, all finite, as in :meth:`_values_of`.
        """
        types = list(map(_type, shapes))
        if SET in types:
            if b"" in raws:  # an empty set member is an error to report
                return False
            numeric = list(map(SET.__ne__, types))
            digits = b"".join(compress(raws, numeric))
        else:
            numeric, digits = None, b"".join(raws)
        if digits.strip(_DECIMAL):
            return False
        try:
            values = list(map(call, map(_CONVERTERS.__getitem__, types), raws))
        except ValueError:
            return False
        total = sum(values if numeric is None else compress(values, numeric))
        if total - total != 0.0:  # an infinite value, or finite ones whose sum overflows
            return False
        self.staging.add_singles(shapes, values)
        return True

    def _convert(self, shape: Shape, raw: bytes) -> None:
        """Stage the value(s) of one line of a learnt shape as a run."""
        values: Sequence[bytes | float]
        if shape.type == SET:
            values = (raw,) if raw else self._parse(shape, raw)
        elif raw.strip(_DECIMAL):
            values = self._parse(shape, raw)
        else:
            try:
                value = float(raw)
            except ValueError:
                values = self._parse(shape, raw)
            else:
                values = (value,) if value - value == 0.0 else self._parse(shape, raw)
        self.staging.add_run(shape, values)

    def _values_of(self, shape: Shape, raws: list[bytes]) -> Sequence:
        """The samples in a shape's staged raw values; bad ones are reported and left out.

        Plain decimal values are converted with one ``map(float, ...)``; anything
        else (packed values, inf, hex, errors) is parsed value by value.
        """
        if shape.type == SET:
            if b"" not in raws:
                return raws
        elif not (joined := b"".join(raws)).strip(_DECIMAL):
            try:
                values = list(map(float, raws))
            except ValueError:
                pass
            else:
                # Only an exponent or over 308 digits make a plain decimal infinite (Go refuses it).
                if len(joined) <= 308 and b"e" not in joined and b"E" not in joined:
                    return values
                total = sum(values)
                if total - total == 0.0:  # else an infinite value, or finite ones whose sum overflows
                    return values
        return [value for raw in raws for value in self._parse(shape, raw)]

    def _parse(self, shape: Shape, raw: bytes) -> list:
        """The samples of one raw value of a learnt shape, parsed strictly; reports what it drops."""
        line = shape.line(raw)
        if shape.type == SET and raw:
            return [raw]
        try:
            if not raw:
                parser.parse_metric(line)  # names the error, as for a line never seen
            values = parse_values(raw)
        except ParseError as e:
            self.reporter.report(e.reason, e.message, line)
            return []
        return self._finite(values, line)

    def _finite(self, values: Sequence[float], line: bytes) -> list[float]:
        """``values`` without NaN and infinities, each reported."""
        kept = []
        for value in values:
            if value - value == 0.0:
                kept.append(value)
            else:
                self.reporter.report("non_finite_value", "NaN and infinite values are dropped", line)
        return kept

    # -- one line at a time ---------------------------------------------------------

    def _alone(self, line: bytes, key: bytes, raw: bytes, now: float, origin) -> None:
        """Handle a line off the bulk path: a mixed context's, a refused shape's, or any other in full."""
        cache = self.shapes
        shape = cache.mixed(key)
        if shape is not None:
            self._convert(shape, raw)
            return
        reason = cache.refusal(key)
        if reason is not None:
            self.reporter.report(reason, _REFUSALS[reason], line)
            return
        self._slow(line, now, origin)

    def _slow(self, line: bytes, now: float, origin: bytes | None) -> None:
        """Parse and handle a line in full: events, checks, timestamped lines, errors, refusals."""
        try:
            kind = parser.message_kind(line)
            if kind == parser.EVENT:
                self._event(line, now, origin)
                return
            if kind == parser.SERVICE_CHECK:
                self._service_check(line, now, origin)
                return
            message = parser.parse_metric(line, timestamps=self.timestamps, origin_client=self.origin_client)
        except ParseError as e:
            self.reporter.report(e.reason, e.message, line)
            return
        target = self.enricher.metric_target(message, origin)
        if target is None:
            self.reporter.report("blocked", _REFUSALS["blocked"], line)
            return
        if target.type == COUNTER and target.rate == 0.0 and not message.timestamp:
            self.reporter.report("zero_sample_rate", _REFUSALS["zero_sample_rate"], line)
            return
        if self.refuse_new_contexts and not message.timestamp and self._new_within_budget(target, origin, now):
            self.reporter.report("memory_hard_limit", _REFUSALS["memory_hard_limit"], line)
            return
        if self.limiter is not None:
            target = self._limited(target, origin, now)
        if message.timestamp:  # the sample rate does not apply here (spec §1.4)
            self.telemetry.incr("metrics", self._timestamped(target, message, line))
            return
        if self.refuse_new_contexts and not self._known(target.context, now):
            self.reporter.report("memory_hard_limit", _REFUSALS["memory_hard_limit"], line)
            return
        if target.type == SET:
            self.staging.add_target_run(target, (message.set_member,))
        else:
            self.staging.add_target_run(target, self._finite(message.values, line))

    def _timestamped(self, target: Target, message, line: bytes) -> int:
        """Send a client-timestamped line down the no-aggregation path (spec §6.7)."""
        if target.type not in (COUNTER, GAUGE):
            self.reporter.report("timestamped_unsupported_type", "only gauges and counters may carry a timestamp", line)
            return 0
        kept = 0
        for value in self._finite(message.values, line):
            if self.aggregator.add_timestamped(target.context, target.type, value, message.timestamp):
                kept += 1
            else:
                self.reporter.report("pending_overflow", "too many timestamped samples waiting for the flush", line)
        return kept

    def _event(self, line: bytes, now: float, origin: bytes | None) -> None:
        message = parser.parse_event(line, origin_client=self.origin_client)
        held = self.aggregator.add_event(self.enricher.event(message, now, origin), len(line))
        self._count_held(held, "events", line)

    def _service_check(self, line: bytes, now: float, origin: bytes | None) -> None:
        message = parser.parse_service_check(line, origin_client=self.origin_client)
        held = self.aggregator.add_service_check(self.enricher.service_check(message, now, origin), len(line))
        self._count_held(held, "service_checks", line)

    def _count_held(self, held: bool, counter: str, line: bytes) -> None:
        """Count an event or service check the aggregator took, or report it dropped: its queue was full
        (``pending_overflow``) or held too many bytes (``pending_bytes_overflow``)."""
        if held:
            self.telemetry.incr(counter)
        else:
            what = counter.replace("_", " ")
            reason = self.aggregator.refusal(counter, len(line)) or "pending_overflow"
            self.reporter.report(reason, f"too many {what} (or bytes of them) waiting for the flush", line)
