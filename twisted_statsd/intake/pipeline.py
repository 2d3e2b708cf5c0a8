"""The hot path: raw packets -> line shapes -> staged raw values -> aggregator.

Everything a metric line says apart from its value (name, type, rate, tags,
container) decides where its samples go, so the pipeline learns that decision
once per line *shape* (the line with its value cut out) and keeps it in a
:class:`Slot`.  A batch of packets is then taken apart with C-level calls
only (split, partition, concatenate, dictionary lookup, append), with no
Python bytecode per line: each line's raw value bytes are appended to its
slot.  :meth:`Pipeline.fold` later applies each slot's values to the
aggregator in one go (a counter is one ``sum``, a gauge its last value), so a
repeated context costs a handful of C calls per line plus a share of one fold.

Lines that cannot be staged go one at a time, in order, through the full
parser: new shapes, events, service checks, client-timestamped lines, errors,
refusals, and every line of a context seen under two metric types (whose
first type in a bucket decides, spec §6.4, so their order matters).  Gauges
keep arrival order because every shape of a gauge context shares one slot.

Staged values are folded when enough lines have been staged (see
``FOLD_LINES``), before the bucket changes, before the cache rotates, once
they are a second old (on the intake timer), and before
anything reads the aggregator (it calls :meth:`Pipeline.fold` first), so
nothing outside the pipeline sees the staging.  A sample is counted in the
``metrics`` telemetry when it is folded in.

Shapes not seen for ``context_expiry`` seconds are forgotten: the cache has a
current and a previous generation, a miss in the current one promotes from the
previous, and the generations rotate every ``context_expiry`` seconds.
Pure: time comes in as ``now``, and nothing here touches the reactor.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import chain, repeat
from operator import itemgetter, truediv

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core import parser
from twisted_statsd.core.aggregator import METRIC_CLASSES, Aggregator, Counter, Gauge, Set
from twisted_statsd.core.enrich import Enricher, Target
from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, SET, forget_shared_tag_sets
from twisted_statsd.core.parser import ParseError, parse_values
from twisted_statsd.telemetry import Telemetry

# What a plain decimal value is made of; anything else takes parse_values' careful path.
_DECIMAL = b"0123456789.eE+-"

# Shapes remembered before the cache starts over (each entry is one context).
CACHE_SIZE = 200_000

# Staged lines that trigger a fold.  A fold costs a few microseconds per slot
# it touches plus a little per value, so the window is long while few shapes
# are cached (each slot then folds many values at once) and short when many
# are: then each slot holds about one value per fold whatever the window, and
# a fold of about 2,000 slots holds the reactor for under 10 ms.
FOLD_LINES = 2_048
FOLD_LINES_FEW_SHAPES = 65_536
FEW_SHAPES = 4_096

# Verdicts on a whole line shape, remembered like slots.
_REFUSALS = {
    "blocked": "metric is on the block list",
    "zero_sample_rate": "a counter with sample rate 0 has no value",
}

# Registry marker for a context seen under two metric types: its lines go one at a time.
_MIXED = "mixed"

_first = itemgetter(0)
_third = itemgetter(2)
_append = list.append
_partition = bytes.partition
_concat = bytes.__add__
_key = b":|".join


class Slot(list):
    """The raw values of one line shape waiting to be folded, and where they go.

    A list, so that a batch appends to it with C-level calls.  ``shape`` is the
    cache key it was learnt under, kept to rebuild a line for error reports.
    """

    __slots__ = ("context", "copy", "rate", "shape", "type")

    def __init__(self, target, shape: bytes):
        super().__init__()
        self.type = target.type
        self.context = target.context
        self.rate = target.rate
        self.copy = target.copy
        self.shape = shape

    def line(self, raw: bytes) -> bytes:
        """The line this value arrived in (the shape without a detected origin's prefix)."""
        shape = self.shape[self.shape.rfind(b"\n") + 1 :]
        return shape.replace(b":|", b":" + raw + b"|", 1)

    def shares(self, target) -> bool:
        """Whether ``target``'s values may go into this slot: same type, and same rate where it matters."""
        return target.type == self.type and (self.type in (GAUGE, SET) or target.rate == self.rate)


class Pipeline:
    """Parses, enriches, stages and aggregates batches of packets.

    Invariant: every line either becomes samples in the aggregator (at once or
    at the next fold) or is counted under a named drop reason (reported
    through ``reporter``).  Staged values all belong to ``_bucket``: the
    pipeline folds before it stages into another bucket.
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
        # Line shape (prefixed with "\n<origin>\n" for packets with a detected origin) -> Slot.
        self._cache: dict[bytes, Slot] = {}
        self._previous: dict[bytes, Slot] = {}
        # Shapes whose lines go one at a time: a refusal reason, or the slot of a mixed-type context.
        self._others: dict[bytes, str | Slot] = {}
        # Context key -> its (first) non-distribution slot, or _MIXED; how gauge
        # shapes find their shared slot and how a second metric type is noticed.
        self._by_context: dict[int, Slot | str] = {}
        # Context key -> its other shape keys (all but its first slot's own
        # ``shape``), kept only for contexts with several shapes: what leaves
        # the cache when the context turns out mixed, found without a scan.
        self._more_shapes: dict[int, list[bytes]] = {}
        # Slots dropped from the cache while they may still hold staged values.
        self._orphans: list[Slot] = []
        # The slots list of every batch staged since the last fold.
        self._touched: list[list] = []
        # Where the lines of a batch that cannot be staged are marked (and their values discarded).
        self._one_at_a_time: list[bytes] = []
        self._staged = 0
        self._bucket = None
        self._staged_at = 0.0  # when the latest staged line arrived
        self._window_opened = 0.0  # when the first line staged since the last fold arrived
        self._rotate_at: float | None = None
        self._evicted = False
        # Set by the memory monitor above its hard limit: lines of shapes not
        # seen yet (new contexts) are refused; known shapes still aggregate.
        self.refuse_new_contexts = False
        aggregator.before_read.append(self.fold)

    def process(
        self, packets: list[bytes], now: float, *, eol_required: bool = False, origin: bytes | None = None
    ) -> None:
        """Aggregate every line of ``packets`` as received at ``now``.

        ``origin`` is the sender's container ID when the listener detected it;
        the shapes of such packets are cached apart, keyed with the origin.
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
        slots = list(map(self._cache.get, keys))
        if None in slots:
            slots = self._resolve(slots, lines, keys, now, origin)
        deque(map(_append, slots, map(_first, tails)), 0)
        self._touched.append(slots)
        if not self._staged:
            self._window_opened = now
        self._staged += len(lines)
        marked = self._one_at_a_time
        if marked:
            marked.clear()
            kept = 0
            for line, key, slot in zip(lines, keys, slots, strict=False):
                if slot is marked:
                    kept += self._line(line, key, now, origin)
            self.telemetry.incr("metrics", kept)
        if self._staged >= (FOLD_LINES_FEW_SHAPES if len(self._cache) <= FEW_SHAPES else FOLD_LINES):
            self.fold()

    def fold(self) -> None:
        """Apply every staged value to the aggregator, slot by slot."""
        if not self._staged:
            return
        bucket, now = self._bucket, self._staged_at
        if self._staged < len(self._cache):  # many shapes, few lines: look only at the lines' slots
            slots = list(filter(None, chain.from_iterable(self._touched)))
        else:
            slots = [*filter(None, self._orphans), *filter(None, self._cache.values())]
        self._staged = 0
        self._orphans = []
        self._touched = []
        kept = 0
        for slot in slots:
            if slot:  # a slot may be listed more than once (shared by shapes, or touched by several lines)
                kept += self._fold_slot(slot, bucket, now)
                slot.clear()
        self.telemetry.incr("metrics", kept)

    def fold_if_older(self, now: float, age: float) -> None:
        """Fold if the oldest staged value arrived ``age`` seconds before ``now`` or earlier."""
        if self._staged and now - self._window_opened >= age:
            self.fold()

    def forget_shapes(self) -> None:
        """Drop every cached line shape, e.g. after the enricher's mapper was replaced."""
        self.fold()
        self._cache.clear()
        self._previous.clear()
        self._others.clear()
        self._by_context.clear()
        self._more_shapes.clear()

    # -- batches ------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Fold before staging into another bucket or rotating the cache."""
        bucket = self.aggregator.bucket(now)
        if bucket is not self._bucket:
            self.fold()
            self._bucket = bucket
        if self._rotate_at is None or now >= self._rotate_at:
            self.fold()
            self._rotate(now)
        self._staged_at = now

    def _terminated(self, packet: bytes) -> bytes:
        """The packet up to its last newline; a final unterminated line is dropped (spec §1.7)."""
        end = packet.rfind(b"\n") + 1
        if end < len(packet):
            self.reporter.report("unterminated_line", "packet does not end with a newline", packet)
        return packet[:end]

    def _resolve(self, slots: list, lines: list[bytes], keys: list[bytes], now: float, origin) -> list:
        """Fill in the slots of lines whose shape was not cached; mark the rest for one at a time.

        Learning a shape can find its context under a second metric type; the
        context's shapes then leave the cache, and the batch is looked up anew.
        """
        while True:
            cache, marked = self._cache, self._one_at_a_time
            self._evicted = False
            for i in [i for i, slot in enumerate(slots) if slot is None]:
                key = keys[i]
                slot = cache.get(key)
                if slot is None:
                    slot = self._learn(lines[i], key, now, origin)
                    if self._evicted:
                        break
                    if slot is None:
                        slot = marked
                slots[i] = slot
            if not self._evicted:
                return slots
            slots = list(map(self._cache.get, keys))

    def _learn(self, line: bytes, key: bytes, now: float, origin) -> Slot | None:
        """The slot for a new shape, or None for a line that goes one at a time.

        Reports nothing: whatever is wrong with the line is reported when it is
        handled one at a time, so looking a batch up again never counts twice.
        """
        if key in self._others:
            return None
        slot = self._previous.pop(key, None)
        if slot is not None:
            return self._attach(key, slot)
        if parser.message_kind(line) != parser.METRIC:
            return None
        try:
            message = parser.parse_metric(line, timestamps=self.timestamps, origin_client=self.origin_client)
        except ParseError:
            return None
        if message.timestamp:
            return None
        target = self.enricher.metric_target(message, origin)
        if target is None:
            self._others[key] = "blocked"
            return None
        if target.type == COUNTER and target.rate == 0.0:
            self._others[key] = "zero_sample_rate"
            return None
        if self.refuse_new_contexts and not self._known(target.context, now):
            return None
        return self._attach(key, Slot(target, key))

    def _attach(self, key: bytes, slot: Slot) -> Slot | None:
        """Cache ``slot`` for ``key``, or the slot its gauge context already has, or mark a mixed context."""
        if slot.type != DISTRIBUTION:  # distributions never share an object with another type (spec §6.4)
            context_key = slot.context.key
            first = self._by_context.get(context_key)
            if first is None:
                self._by_context[context_key] = slot
                if key != slot.shape:  # a slot brought back from the previous generation under another shape
                    self._more_shapes.setdefault(context_key, []).append(key)
            elif first is _MIXED:
                self._others[key] = slot
                return None
            elif METRIC_CLASSES[first.type] is not METRIC_CLASSES[slot.type]:
                self._mix(context_key)
                self._others[key] = slot
                return None
            else:
                self._more_shapes.setdefault(context_key, []).append(key)
                if first.shares(slot):
                    slot = first
        self._remember(key, slot)
        return slot

    def _mix(self, context_key: int) -> None:
        """A context arrived under a second metric type: from now on its lines go one at a time, in order."""
        self.fold()
        first = self._by_context[context_key]
        self._by_context[context_key] = _MIXED
        for key in [first.shape, *self._more_shapes.pop(context_key, ())]:
            slot = self._cache.pop(key, None)
            if slot is not None:
                self._others[key] = slot
        self._evicted = True

    def _remember(self, key: bytes, slot: Slot) -> None:
        cache = self._cache
        if len(cache) >= self.cache_size:
            # Slots looked up for the batch in flight may still receive values.
            self._orphans.extend(cache.values())
            cache.clear()
            self._previous.clear()
            self._others.clear()
            self._by_context.clear()
            self._more_shapes.clear()
            self.telemetry.incr("shape_cache_resets")
        cache[key] = slot

    def _rotate(self, now: float) -> None:
        """Start a new cache generation; shapes unseen since the last rotation are dropped."""
        self._previous = self._cache
        self._cache = {}
        self._others = {}
        self._by_context = {}
        self._more_shapes = {}
        forget_shared_tag_sets()
        self._rotate_at = now + self.context_expiry

    def _known(self, context, now: float) -> bool:
        self.fold()
        return self.aggregator.knows(context, now)

    # -- folding --------------------------------------------------------------------

    def _fold_slot(self, slot: Slot, bucket, now: float) -> int:
        """Apply one slot's raw values; returns how many samples were kept.

        Plain decimal values are converted with one ``map(float, ...)``; a slot
        holding anything else (packed values, inf, hex, errors) is folded one
        value at a time by :meth:`_fold_each`, which reports the bad ones.
        """
        mtype, context, rate = slot.type, slot.context, slot.rate
        if mtype == SET:
            if b"" in slot:
                return self._fold_each(slot, now)
            metric = bucket.metrics.get(context.key) or self.aggregator.new_metric(bucket, context, SET, now)
            if metric.__class__ is not Set:
                return self._fold_each(slot, now)
            metric.members.update(slot)
            metric.last = now
            return len(slot)
        if b"".join(slot).strip(_DECIMAL):
            return self._fold_each(slot, now)
        if mtype == COUNTER:
            metric = bucket.metrics.get(context.key) or self.aggregator.new_metric(bucket, context, COUNTER, now)
            if metric.__class__ is Counter:
                values = map(float, slot)
                try:
                    total = sum(values if rate == 1.0 else map(truediv, values, repeat(rate)), metric.value)
                except ValueError:
                    return self._fold_each(slot, now)
                if total - total:  # a value beyond float range (Go refuses it), or an overflow
                    return self._fold_each(slot, now)
                metric.value = total
                metric.last = now
                return len(slot)
        try:
            values = list(map(float, slot))
        except ValueError:
            return self._fold_each(slot, now)
        total = sum(values)
        if total - total:  # a value beyond float range (Go refuses it) or a sum that overflowed
            return self._fold_each(slot, now)
        if mtype == DISTRIBUTION:
            self.aggregator.add_distributions(bucket, context, values, rate)
            return len(values)
        metric = bucket.metrics.get(context.key) or self.aggregator.new_metric(bucket, context, mtype, now)
        kind = metric.__class__
        if kind is not METRIC_CLASSES[mtype]:  # another type came first in this bucket (spec §6.4)
            for value in values:
                metric.add(value, rate, now)
        elif kind is Gauge:
            metric.value = values[-1]
        else:
            metric.values.extend(values)
            metric.weights.extend(repeat(1.0 / rate if 0.0 < rate < math.inf else 1.0, len(values)))
        metric.last = now
        if slot.copy is not None:
            self.aggregator.add_distributions(bucket, slot.copy, values, rate)
        return len(values)

    def _fold_each(self, slot: Slot, now: float) -> int:
        """Fold a slot value by value, as one-at-a-time lines are aggregated."""
        kept = 0
        for raw in slot:
            kept += self._aggregate(slot, raw, slot.line(raw), now)
        return kept

    # -- one line at a time ---------------------------------------------------------

    def _line(self, line: bytes, key: bytes, now: float, origin) -> int:
        """Handle a line that cannot be staged; returns how many samples were kept."""
        known = self._others.get(key)
        if known is None:
            return self._slow(line, now, origin)
        if known.__class__ is str:
            self.reporter.report(known, _REFUSALS[known], line)
            return 0
        return self._aggregate(known, line.partition(b":")[2].partition(b"|")[0], line, now)

    def _aggregate(self, target, raw: bytes, line: bytes, now: float) -> int:
        """Aggregate the raw value of one line of a known shape at once."""
        if target.type == SET and raw:
            self.aggregator.add(target.context, SET, raw, 1.0, now)
            return 1
        try:
            if not raw:
                parser.parse_metric(line)  # names the error, as for a line never seen
            values = parse_values(raw)
        except ParseError as e:
            self.reporter.report(e.reason, e.message, line)
            return 0
        return self._values(target, values, now)

    def _values(self, target, values, now: float) -> int:
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

    def _slow(self, line: bytes, now: float, origin: bytes | None) -> int:
        """Parse and handle a line in full: events, checks, timestamped lines, errors, refusals."""
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
            return 0
        if message.timestamp:  # the sample rate does not apply here (spec §1.4)
            return self._timestamped(target, message, line)
        if target.type == COUNTER and target.rate == 0.0:
            self.reporter.report("zero_sample_rate", _REFUSALS["zero_sample_rate"], line)
            return 0
        if self.refuse_new_contexts and not self._known(target.context, now):
            self.reporter.report(
                "memory_hard_limit", "memory use is above the hard limit; new contexts are refused", line
            )
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
