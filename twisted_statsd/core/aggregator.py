"""Time-bucketed aggregation with DogStatsD's semantics (spec §6.3-§6.7).

Samples land in 10-second buckets keyed by the bucket's start.  A flush at time
``now`` closes every bucket that ended at or before ``bucket_start(now)`` and
turns it into series stamped with the bucket start; open buckets wait for a
later flush, or for the final flush on shutdown, which closes everything.

The aggregator is pure: it never reads a clock, every method takes the time as
an argument, and it imports nothing from Twisted.  It owns every DogStatsD rule
about where a sample goes (the first type in a bucket decides, the counter
registry, sample weights); the intake hands it a batch through
:meth:`Aggregator.add_runs`, runs of values per :class:`Route`.  A route
remembers the metric its context has in the open bucket, so a run of a known
context costs no dictionary probe, only one batch method call (``add_run``)
on its metric.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import accumulate, count, repeat
from operator import itemgetter, mul, truediv

from twisted_statsd.core.model import (
    COUNTER,
    DISTRIBUTION,
    GAUGE,
    SERIES_GAUGE,
    SERIES_RATE,
    SET,
    Context,
    FlushBatch,
    Series,
    SeriesStream,
    SketchSeries,
)
from twisted_statsd.core.sketch import Sketch, sketch_weight

BUCKET_SECONDS = 10

_first = itemgetter(0)
_second = itemgetter(1)

# Contexts handled between two yields of an incremental flush; a histogram
# counts as one more context per this many samples (sorting them dominates).
FLUSH_STEP = 100
HISTOGRAM_SAMPLES_PER_CONTEXT = 100

# Holds for at most this many timestamped samples, events and service checks
# between two flushes; anything beyond is refused and counted by the caller.
MAX_PENDING = 100_000
# And for at most this many bytes of event and of service check lines (as
# received): 100,000 events of 64 KB each would otherwise be 6.5 GB.
MAX_PENDING_BYTES = 32 * 1024 * 1024

# Idle counters given a zero point per flushed bucket, at most (``dogstatsd_zero_fill_limit``).
ZERO_FILL_LIMIT = 100_000

# Numbers buckets apart for the lifetime of the process, so that a route's
# remembered metric is never taken for that of a later bucket with the same start.
_bucket_serials = count(1)


class Route:
    """Where the values of a run go: a context under a metric type at a sample rate.

    ``copy`` is the distribution context that histogram values are also copied
    to (``histogram_copy_to_distribution``).  The intake keeps one route per
    line shape and hands it over with each run; ``metric`` and ``serial``
    belong to the aggregator alone: the metric of the route's type that the
    context has in the bucket numbered ``serial`` (0: none remembered), so the
    next run of the route in that bucket goes straight to it.  A route of a
    context whose bucket holds another type remembers nothing.
    """

    __slots__ = ("context", "copy", "metric", "rate", "serial", "type")

    def __init__(self, context: Context, type: bytes, rate: float, copy: Context | None = None):
        self.context = context
        self.type = type
        self.rate = rate
        self.copy = copy
        self.metric: Metric | Sketch | None = None
        self.serial = 0


# What the intake hands over: a route and its values in arrival order (floats;
# set members as bytes).
Run = tuple[Route, Sequence]


def histogram_weight(rate: float) -> float:
    """A histogram sample's weight: ``1 / rate``, and 1 for a rate that is not positive and finite."""
    return 1.0 / rate if 0.0 < rate < math.inf else 1.0


def bucket_start(now: float) -> int:
    """The start of the bucket that samples received at ``now`` belong to."""
    return int(now) - int(now) % BUCKET_SECONDS


class _Scalar:
    """A metric that holds one number, and the time of its last sample (which orders merges)."""

    __slots__ = ("context", "last", "value")

    def __init__(self, context: Context):
        self.context = context
        self.value = 0.0
        self.last = 0.0

    def samples(self):
        yield self.value, 1.0


class Gauge(_Scalar):
    """Last value wins, by arrival order (spec §6.5)."""

    __slots__ = ()

    def add(self, value: float, rate: float, now: float) -> None:
        self.value = value
        self.last = now

    def add_run(self, values: Sequence[float], rate: float, now: float) -> None:
        self.value = values[-1]
        self.last = now

    def series(self, ts, aggregator):
        yield "", SERIES_GAUGE, self.value

    def merge(self, other) -> None:
        """Fold in another process's metric for the same context and bucket (latest gauge wins)."""
        if type(other) is Gauge:
            if other.last >= self.last:
                self.value, self.last = other.value, other.last
        else:
            _feed(self, other)


class Counter(_Scalar):
    """Sums ``value / rate`` and reports a rate over the bucket (spec §1.4, §6.5); samples are already scaled."""

    __slots__ = ()

    def add(self, value: float, rate: float, now: float) -> None:
        # Rate 0 reaches here only from another type's sample (counters with rate 0
        # are refused earlier): it adds its value as it is.
        self.value += value / rate if rate else value
        self.last = now

    def add_run(self, values: Sequence[float], rate: float, now: float) -> None:
        # Summed left to right from the current value, as ``add`` one by one would.
        self.value = sum(values if rate == 1.0 or not rate else map(truediv, values, repeat(rate)), self.value)
        self.last = now

    def series(self, ts, aggregator):
        yield "", SERIES_RATE, self.value / BUCKET_SECONDS

    def merge(self, other) -> None:
        if type(other) is Counter:
            self.value += other.value
            self.last = max(self.last, other.last)
        else:
            _feed(self, other)


class Set:
    """Counts distinct members; a numeric sample given to a set counts its value as a member."""

    __slots__ = ("context", "last", "members")

    def __init__(self, context: Context):
        self.context = context
        self.members: set = set()
        self.last = 0.0

    def add(self, member, rate: float, now: float) -> None:
        self.members.add(member)
        self.last = now

    def add_run(self, members: Sequence, rate: float, now: float) -> None:
        self.members.update(members)
        self.last = now

    def series(self, ts, aggregator):
        yield "", SERIES_GAUGE, float(len(self.members))

    def merge(self, other) -> None:
        if type(other) is Set:
            self.members |= other.members
            self.last = max(self.last, other.last)
        else:
            _feed(self, other)

    def samples(self):
        for _member in self.members:
            yield 0.0, 1.0  # a member carries no number for another type


class Histogram:
    """Keeps weighted samples; emits the configured aggregates and percentiles (spec §6.5).

    The weight of a sample is ``1 / rate`` (1 when the rate is not positive), and count,
    sum, average and the rank-based statistics all use the weights.
    """

    __slots__ = ("context", "last", "values", "weights")

    def __init__(self, context: Context):
        self.context = context
        self.values: list[float] = []
        self.weights: list[float] = []
        self.last = 0.0

    def add(self, value: float, rate: float, now: float) -> None:
        self.values.append(value)
        self.weights.append(histogram_weight(rate))
        self.last = now

    def add_run(self, values: Sequence[float], rate: float, now: float) -> None:
        self.values.extend(values)
        self.weights.extend(repeat(histogram_weight(rate), len(values)))
        self.last = now

    def merge(self, other) -> None:
        if type(other) is Histogram:
            self.values.extend(other.values)
            self.weights.extend(other.weights)
            self.last = max(self.last, other.last)
        else:
            _feed(self, other)

    def samples(self):
        for value, weight in zip(self.values, self.weights, strict=False):
            yield value, 1.0 / weight

    def series(self, ts, aggregator):
        # fsum is exactly rounded, so count and sum need no sorting; the ranks
        # walk the values in order, with a cumulative weight per value.
        values, weights = self.values, self.weights
        if weights.count(1.0) == len(weights):  # no sample rates: sums of floats, ranks by position
            count, total = float(len(values)), math.fsum(values)
            ordered, cumulative = sorted(values), None
        else:
            count, total = math.fsum(weights), math.fsum(map(mul, values, weights))
            pairs = sorted(zip(values, weights, strict=False))
            ordered, cumulative = list(map(_first, pairs)), list(accumulate(map(_second, pairs)))
        if not 0.0 < count < math.inf:
            return
        for aggregate in aggregator.histogram_aggregates:
            if aggregate == "max":
                yield ".max", SERIES_GAUGE, ordered[-1]
            elif aggregate == "min":
                yield ".min", SERIES_GAUGE, ordered[0]
            elif aggregate == "median":
                yield ".median", SERIES_GAUGE, _weighted_rank(ordered, cumulative, (count - 1) / 2)
            elif aggregate == "avg":
                yield ".avg", SERIES_GAUGE, total / count
            elif aggregate == "sum":
                yield ".sum", SERIES_GAUGE, total
            elif aggregate == "count":
                yield ".count", SERIES_RATE, count / BUCKET_SECONDS
        for percent in aggregator.percent_ranks:
            yield (
                f".{percent}percentile",
                SERIES_GAUGE,
                _weighted_rank(ordered, cumulative, (percent * count - 1) / 100),
            )


def _feed(metric, other) -> None:
    """Give ``other``'s samples to a metric of another type: the first type in a bucket decides (§6.4)."""
    for value, rate in other.samples():
        metric.add(value, rate, other.last)


def _one_point(metric) -> tuple[int, float] | None:
    """The (series type, value) of a counter's, gauge's or set's one point, as their ``series``
    give it; None for a histogram (its ``series`` gives several)."""
    cls = metric.__class__
    if cls is Counter:
        return SERIES_RATE, metric.value / BUCKET_SECONDS
    if cls is Gauge:
        return SERIES_GAUGE, metric.value
    if cls is Set:
        return SERIES_GAUGE, float(len(metric.members))
    return None


def _weighted_rank(ordered: list[float], cumulative: list[float] | None, target: float) -> float:
    """The first value whose cumulative weight exceeds ``target``, else the last (DogStatsD's rank rule).

    ``cumulative`` None means every weight is 1: the value at index i has
    cumulative weight i + 1, so the first to exceed ``target`` is at floor(target).
    """
    if cumulative is None:
        index = max(0, math.floor(target))
    else:
        index = bisect_right(cumulative, target)
    return ordered[min(index, len(ordered) - 1)]


Metric = Gauge | Counter | Set | Histogram
METRIC_CLASSES: dict[bytes, type[Metric]] = {
    GAUGE: Gauge,
    COUNTER: Counter,
    SET: Set,
    b"h": Histogram,
    b"ms": Histogram,
}


class Bucket:
    """The samples of one 10-second interval: metrics by context key, and sketches apart.

    Distributions live in their own map, as in DogStatsD, so a distribution and
    another type under the same context never share an object.
    """

    __slots__ = ("metrics", "serial", "sketches", "start")

    def __init__(self, start: int):
        self.start = start
        self.serial = next(_bucket_serials)
        self.metrics: dict[int, Metric] = {}
        self.sketches: dict[int, tuple[Context, Sketch]] = {}


class Aggregator:
    """Buckets on-time samples, passes timestamped ones through, and flushes both.

    Invariants: ``_buckets`` holds only buckets with samples; ``_counters`` maps
    the key of every counter context seen within ``expiry_seconds`` to its
    latest Counter, whose context and time of last sample drive zero-filling.
    With more of them than ``zero_fill_limit``, each flush moves the counters it
    saw samples of to the end of ``_counters``, which is then ordered by the
    last flushed bucket with a sample, oldest first: zero-filling beyond the
    limit keeps the most recently active.
    """

    def __init__(
        self,
        *,
        histogram_aggregates=("max", "median", "avg", "count"),
        histogram_percentiles=(0.95,),
        expiry_seconds: float = 300.0,
        zero_fill_limit: int = ZERO_FILL_LIMIT,
        on_expired: Iterable[Callable[[list[int]], None]] = (),
    ):
        self.histogram_aggregates = tuple(histogram_aggregates)
        self.percent_ranks = tuple(int(p * 100 + 0.5) for p in histogram_percentiles)
        self.expiry_seconds = expiry_seconds
        # 0: no bound (DogStatsD's behaviour).
        self.zero_fill_limit = zero_fill_limit
        # Idle counters left without their zero point because of the bound (reported in telemetry).
        self.zero_fill_skipped = 0
        self._buckets: dict[int, Bucket] = {}
        # key -> the context's latest Counter (its context and the time of its
        # last sample); usually the very object in the open bucket, so a live
        # counter costs no extra object here.
        self._counters: dict[int, Counter] = {}
        self._last_cutoff = 0
        self._timestamped: list[Series] = []
        self._events: list = []
        self._service_checks: list = []
        # Bytes of the lines of the pending events and service checks.
        self._pending_bytes = {"events": 0, "service_checks": 0}
        # Points left out of flushes because they were not finite (reported in telemetry).
        self.non_finite_points = 0
        # Contexts (per bucket) in the last flush, for telemetry.
        self.flushed_contexts = 0
        # Called at the end of each flush with the keys of the contexts it left
        # unheld (no open bucket, no live counter), a slice of them per call:
        # the context limiter's count.
        self.on_expired = list(on_expired)

    # -- intake ---------------------------------------------------------------

    def _bucket(self, now: float) -> Bucket:
        """The bucket that on-time samples received at ``now`` belong to."""
        start = bucket_start(now)
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = Bucket(start)
        return bucket

    def _new_metric(self, bucket: Bucket, context: Context, mtype: bytes) -> Metric:
        """Create the metric object for a context's first sample in ``bucket``; its type stays (spec §6.4)."""
        metric = bucket.metrics[context.key] = METRIC_CLASSES[mtype](context)
        if isinstance(metric, Counter) and context.key not in self._counters:
            # Registered now (the registry says which counters are live); a registered one is
            # renewed by the flush, bucket by bucket, so zero-fill can tell when it was last seen.
            self._counters[context.key] = metric
        return metric

    def knows(self, context: Context, now: float) -> bool:
        """Whether the context already has samples in the open bucket or is a live counter.

        Samples the intake still holds are not looked at: the caller hands them over first.
        """
        key = context.key
        bucket = self._buckets.get(bucket_start(now))
        if bucket is not None and (key in bucket.metrics or key in bucket.sketches):
            return True
        return key in self._counters

    def metric_class(self, context: Context, now: float) -> type | None:
        """The class of the metric ``context`` has in the bucket open at ``now`` (distributions aside), if any."""
        start = int(now)
        bucket = self._buckets.get(start - start % BUCKET_SECONDS)  # bucket_start, inlined: once per new shape
        metric = None if bucket is None else bucket.metrics.get(context.key)
        return None if metric is None else type(metric)

    def add(self, context: Context, mtype: bytes, value, rate: float, now: float) -> None:
        """Add one on-time sample; the readable path, used outside the hot loop."""
        self.add_runs(now, [(Route(context, mtype, rate), (value,))])

    def add_runs(self, now: float, runs: Iterable[Run]) -> None:
        """Add on-time samples received at ``now``, run by run, in the order given.

        A route that remembers its metric in this bucket gives it the values at
        once; any other run takes :meth:`_add_run`.
        """
        bucket = self._bucket(now)
        serial = bucket.serial
        for route, values in runs:
            if route.serial == serial:
                route.metric.add_run(values, route.rate, now)  # type: ignore[union-attr]  # set with the serial
            else:
                self._add_run(bucket, route, values, now)
            if route.copy is not None:
                self._sketch(bucket, route.copy).add_many(values, sketch_weight(route.rate))

    def _add_run(self, bucket: Bucket, route: Route, values: Sequence, now: float) -> None:
        """Add a run whose route remembers no metric in ``bucket``; remember it when its type matches.

        The first type a context gets in a bucket decides its metric (spec
        §6.4): a run of another type is given to that metric value by value,
        a set member as 0 at rate 1.  Distributions live apart, in sketches.
        """
        mtype, context, rate = route.type, route.context, route.rate
        if mtype == DISTRIBUTION:
            sketch = self._sketch(bucket, context)
            route.metric, route.serial = sketch, bucket.serial
            sketch.add_run(values, rate, now)
            return
        metric = bucket.metrics.get(context.key)
        if metric is None:
            metric = self._new_metric(bucket, context, mtype)
        if metric.__class__ is METRIC_CLASSES[mtype]:
            route.metric, route.serial = metric, bucket.serial
            metric.add_run(values, rate, now)
            return
        if mtype == SET:  # a member carries no number, nor a sample rate, for another type
            for _ in values:
                metric.add(0.0, 1.0, now)
            return
        for value in values:
            metric.add(value, rate, now)

    @staticmethod
    def _sketch(bucket: Bucket, context: Context) -> Sketch:
        entry = bucket.sketches.get(context.key)
        if entry is None:
            entry = bucket.sketches[context.key] = (context, Sketch())
        return entry[1]

    def add_timestamped(self, context: Context, mtype: bytes, value: float, timestamp: int) -> bool:
        """Pass a client-timestamped gauge or counter straight to the next flush (spec §6.7).

        Returns False when the sample is refused: another type, or too many pending.
        """
        if len(self._timestamped) >= MAX_PENDING:
            return False
        if mtype == GAUGE:
            kind, value = SERIES_GAUGE, value
        elif mtype == COUNTER:
            kind, value = SERIES_RATE, value / BUCKET_SECONDS
        else:
            return False
        self._timestamped.append(
            Series(context.name, kind, [(timestamp, value)], context.tags, context.host, BUCKET_SECONDS)
        )
        return True

    def add_event(self, event, size: int = 0) -> bool:
        """Queue an event (from a line of ``size`` bytes) for the next flush; False when refused (:meth:`refusal`)."""
        return self._queue("events", self._events, event, size)

    def add_service_check(self, check, size: int = 0) -> bool:
        """Queue a service check (from a line of ``size`` bytes) for the next flush; False when refused."""
        return self._queue("service_checks", self._service_checks, check, size)

    def _queue(self, kind: str, pending: list, item, size: int) -> bool:
        if self.refusal(kind, size) is not None:
            return False
        pending.append(item)
        self._pending_bytes[kind] += size
        return True

    def refusal(self, kind: str, size: int) -> str | None:
        """Why one more of ``kind`` ("events", "service_checks") of ``size`` bytes would be refused, if it would.

        "pending_overflow": ``MAX_PENDING`` are waiting for the flush;
        "pending_bytes_overflow": it would take them over ``MAX_PENDING_BYTES``.
        """
        pending = self._events if kind == "events" else self._service_checks
        if len(pending) >= MAX_PENDING:
            return "pending_overflow"
        if self._pending_bytes[kind] + size > MAX_PENDING_BYTES:
            return "pending_bytes_overflow"
        return None

    # -- flush ----------------------------------------------------------------

    def flush(self, now: float, *, final: bool = False) -> FlushBatch:
        """Close the finished buckets (all of them when ``final``) into one batch, at once."""
        batch = FlushBatch(timestamp=now)
        for _ in self.flush_steps(now, batch, final=final):
            pass
        return batch

    def flush_steps(self, now: float, batch: FlushBatch, *, final: bool = False, step: int = FLUSH_STEP):
        """Fill ``batch`` with the finished buckets, yielding after every ``step`` contexts.

        A caller drives this generator a slice at a time (a Cooperator), so a
        flush of many contexts never holds the reactor for long.  Samples that
        arrive meanwhile land in open buckets, which this flush does not touch;
        the counter registry is iterated through snapshots for the same reason.

        ``batch.series`` is a SeriesStream over the closed buckets: the series
        are built as each sink walks them, so a flush never holds them all.

        Counters seen within ``expiry_seconds`` before a flushed bucket get a
        zero point in it; when no bucket is due but a whole interval has passed
        since the previous flush, live counters get a zero point at
        ``cutoff - 10`` (spec §6.5).
        """
        cutoff = bucket_start(now)
        due = [self._buckets.pop(start) for start in sorted(self._buckets) if final or start + BUCKET_SECONDS <= cutoff]
        if not due and cutoff - self._last_cutoff >= BUCKET_SECONDS and self._last_cutoff:
            due = [Bucket(cutoff - BUCKET_SECONDS)]
        self._last_cutoff = max(cutoff, self._last_cutoff)
        timestamped, self._timestamped = self._timestamped, []
        batch.events, self._events = self._events, []
        batch.service_checks, self._service_checks = self._service_checks, []
        self._pending_bytes = {"events": 0, "service_checks": 0}
        for bucket in due:  # in time order: a counter first seen in a later bucket is not zero-filled in this one
            yield from self._note_counter_activity(bucket, step)
            yield from self._zero_fill(bucket, step)
        prepared: dict[int, list[Series]] = {}
        yield from self._prepare(due, prepared, step)
        batch.series = SeriesStream(partial(self._series_of, due, prepared, timestamped))
        batch.sketches = []
        yield from self._emit_sketches(due, batch.sketches, step)
        expired: list[int] = []
        yield from self._expire_counters(now, step, expired)
        if self.on_expired:
            yield from self._unheld(due, expired, step)
            # A step's worth at a time: the limiter's count of 100,000 expired
            # contexts held the reactor for about 150 ms in one call.
            for start in range(0, len(expired), step):
                unheld = expired[start : start + step]
                for callback in self.on_expired:
                    callback(unheld)
                yield
        self.flushed_contexts = sum(len(b.metrics) + len(b.sketches) for b in due)

    # Due buckets are out of ``_buckets``: intake cannot touch them, so they are
    # iterated as they are.  The counter registry is iterated through a snapshot
    # of its keys (intake renews it meanwhile); a snapshot of its items would
    # allocate a tuple per counter in one step.

    def _note_counter_activity(self, bucket: Bucket, step: int):
        """Fold the latest sample time of the bucket's counters into ``_counters``.

        With more live counters than ``zero_fill_limit``, they are also moved
        to its end, so that the most recently active are zero-filled first.
        Only then: a key moved leaves a hole that a later insertion pays for
        with a resize of the whole map, a stall at hundreds of thousands.
        """
        counters = self._counters
        ordered = 0 < self.zero_fill_limit < len(counters)
        for done, (key, metric) in enumerate(bucket.metrics.items(), 1):
            if type(metric) is Counter:
                if ordered:
                    seen = counters.pop(key, None)
                    counters[key] = metric if seen is None or metric.last > seen.last else seen
                else:
                    seen = counters.get(key)
                    if seen is None or metric.last > seen.last:
                        counters[key] = metric
            if not done % step:
                yield

    def _zero_fill(self, bucket: Bucket, step: int):
        """Give a zero point in ``bucket`` to live counters without a sample in it (spec §6.5).

        Bounded: at most ``zero_fill_limit`` per bucket, the most recently
        active first (the end of ``_counters``); a flush of a burst of a
        million counters would otherwise write a million zero series every
        interval until they expire.  Those left out are counted.
        """
        counters, metrics, expiry = self._counters, bucket.metrics, self.expiry_seconds
        end = bucket.start + BUCKET_SECONDS  # a counter first seen after this bucket has no zero in it
        room = self.zero_fill_limit or len(counters)
        for done, key in enumerate(reversed(list(counters)), 1):
            seen = counters.get(key)
            if seen is not None and bucket.start - expiry < seen.last < end and key not in metrics:
                if room:
                    metrics[key] = Counter(seen.context)
                    room -= 1
                else:
                    self.zero_fill_skipped += 1
            if not done % step:
                yield

    # The series of a flush are built by _series_of each time a sink walks
    # them; the flush itself only checks the points (non-finite ones are
    # counted once, here) and builds the series that take more than one
    # point's arithmetic: a histogram's aggregates, or a context with points in
    # several due buckets (a late flush, or the final one).  A context's points
    # from every due bucket are gathered when its first bucket is reached, and
    # taken out of the later ones: otherwise every later bucket was walked past
    # each such context with no work counted (a late flush of two buckets of
    # 100,000 zero-filled counters held the reactor over 100 ms in one step).

    def _prepare(self, due: list[Bucket], prepared: dict[int, list[Series]], step: int):
        """Count the non-finite points of ``due``; build into ``prepared`` the series of its
        histograms and of the contexts in several buckets."""
        for i, bucket in enumerate(due):
            later = due[i + 1 :]
            budget = step
            for key, metric in bucket.metrics.items():
                budget -= 1
                if budget <= 0:
                    budget = step
                    yield
                if not later or not any(key in b.metrics for b in later):
                    point = _one_point(metric)
                    if point is not None:
                        if point[1] - point[1]:  # NaN or infinite, e.g. a counter that overflowed
                            self.non_finite_points += 1
                        continue
                by_suffix: dict[str, Series] = {}
                budget -= self._add_points(metric, bucket.start, by_suffix)
                for b in later:
                    other = b.metrics.pop(key, None)
                    if other is not None:
                        budget -= self._add_points(other, b.start, by_suffix)
                prepared[key] = list(by_suffix.values())

    @staticmethod
    def _series_of(due: list[Bucket], prepared: dict[int, list[Series]], timestamped: list[Series]):
        """The series of a flush, in order: what :meth:`_prepare` left to build, built now."""
        for bucket in due:
            ts = bucket.start
            for key, metric in bucket.metrics.items():
                if prepared:
                    found = prepared.get(key)
                    if found is not None:
                        yield from found
                        continue
                kind, value = _one_point(metric)  # type: ignore[misc]
                if value - value:
                    continue
                context = metric.context
                yield Series(context.name, kind, [(ts, value)], context.tags, context.host, BUCKET_SECONDS)
        yield from timestamped

    def _emit_sketches(self, due: list[Bucket], sketches: list, step: int):
        """Append the sketch series of ``due`` to the list, one per context."""
        for i, bucket in enumerate(due):
            earlier = due[:i]
            for done, (key, (context, _sketch)) in enumerate(bucket.sketches.items(), 1):
                if not done % step:
                    yield
                if earlier and any(key in b.sketches for b in earlier):
                    continue
                points = [(b.start, b.sketches[key][1]) for b in due[i:] if key in b.sketches]
                sketches.append(SketchSeries(context.name, points, context.tags, context.host, BUCKET_SECONDS))

    def _add_points(self, metric, ts: int, by_suffix: dict) -> int:
        """Add a metric's points for the bucket starting at ``ts`` to its context's series.

        Returns the work it took, in contexts' worth: a histogram sorts its
        samples, so one with thousands of them counts as dozens of contexts.
        """
        context = metric.context
        work = 1 + len(metric.values) // HISTOGRAM_SAMPLES_PER_CONTEXT if type(metric) is Histogram else 1
        try:
            points = list(metric.series(ts, self))
        except (ArithmeticError, ValueError):  # e.g. fsum overflowing on extreme weights
            self.non_finite_points += 1
            return work
        for suffix, kind, value in points:
            if value - value:  # NaN or infinite, e.g. a counter that overflowed
                self.non_finite_points += 1
                continue
            found = by_suffix.get(suffix)
            if found is None:
                by_suffix[suffix] = Series(
                    context.name + suffix, kind, [(ts, value)], context.tags, context.host, BUCKET_SECONDS
                )
            else:
                found.points.append((ts, value))
        return work

    def _expire_counters(self, now: float, step: int, expired: list[int]):
        counters, expiry = self._counters, self.expiry_seconds
        for done, key in enumerate(list(counters), 1):
            seen = counters.get(key)  # read now: intake may have renewed it since the snapshot
            if seen is not None and seen.last + expiry < now:
                del counters[key]
                expired.append(key)
            if not done % step:
                yield

    def _unheld(self, due: list[Bucket], expired: list[int], step: int):
        """Turn ``expired`` (counters just expired) into every context the flush left unheld.

        That is those of the due buckets and the expired counters that are in
        no open bucket and are not live counters.
        """
        counters, open_buckets = self._counters, list(self._buckets.values())
        candidates = set(expired)
        for bucket in due:
            candidates.update(bucket.metrics)
            candidates.update(bucket.sketches)
        expired.clear()
        for done, key in enumerate(candidates, 1):
            if key not in counters and not any(key in b.metrics or key in b.sketches for b in open_buckets):
                expired.append(key)
            if not done % step:
                yield

    # -- several processes ------------------------------------------------------

    def export(self, cutoff: int | None = None) -> dict:
        """Hand over the buckets that end by ``cutoff`` (all of them when None), and what is pending.

        A worker process ships this to the process that flushes, which folds it
        in with :meth:`merge`; the counter registry stays, for zero-filling.
        The flushing process asks with the cutoff of its flush or a later one:
        a bucket it does not close yet is merged into its own and waits there.
        Buckets still open stay, so a worker ships each context once per bucket.
        """
        shipped = [
            self._buckets.pop(start)
            for start in sorted(self._buckets)
            if cutoff is None or start + BUCKET_SECONDS <= cutoff
        ]
        state = {
            "buckets": [(b.start, b.metrics, b.sketches) for b in shipped],
            "timestamped": self._timestamped,
            "events": self._events,
            "service_checks": self._service_checks,
        }
        self._timestamped, self._events, self._service_checks = [], [], []
        self._pending_bytes = {"events": 0, "service_checks": 0}
        return state

    def merge(self, state: dict) -> None:
        """Fold in another aggregator's :meth:`export`: counts add, the latest gauge wins,
        sets unite, histogram samples and sketches combine."""
        for start, metrics, sketches in state["buckets"]:
            bucket = self._buckets.get(start)
            if bucket is None:
                bucket = self._buckets[start] = Bucket(start)
            mine = bucket.metrics
            for key, metric in metrics.items():
                existing = mine.get(key)
                if existing is None:
                    mine[key] = existing = metric
                else:
                    existing.merge(metric)
                if type(existing) is Counter:
                    seen = self._counters.get(key)
                    if seen is None or existing.last > seen.last:
                        self._counters[key] = existing
            for key, (context, sketch) in sketches.items():
                held = bucket.sketches.get(key)
                if held is None:
                    bucket.sketches[key] = (context, sketch)
                else:
                    held[1].merge(sketch)
        self._timestamped.extend(state["timestamped"])
        self._events.extend(state["events"])
        self._service_checks.extend(state["service_checks"])

    # -- introspection ----------------------------------------------------------

    def context_count(self) -> int:
        """Contexts with samples in open buckets, plus live counters (walks them all: for inspection)."""
        keys = set(self._counters)
        for bucket in self._buckets.values():
            keys.update(bucket.metrics)
            keys.update(bucket.sketches)
        return len(keys)

    def held(self) -> tuple[list[Bucket], list[Counter]]:
        """The buckets held, oldest first, and each live counter's latest object: for inspection.

        Lists, so a reader can walk them a slice at a time while intake goes on.
        Staged samples are not in them: the caller folds them in first.
        """
        return [self._buckets[start] for start in sorted(self._buckets)], list(self._counters.values())
