"""Pure payload building for the otlp sink: flushes as OTLP ``ExportMetricsServiceRequest`` protobufs, gzipped.

The mapping (the README's table says the same):

* gauges, sets and histogram aggregates other than ``.count`` (gauge series)
  become ``Gauge`` data points stamped at the bucket start;
* counters and the histograms' ``.count`` (rate series, count per second)
  become ``Sum`` data points holding the count of the interval ``[bucket
  start, bucket start + interval)``, with delta temporality or, through
  :class:`CumulativeSums`, cumulative.  They are monotonic, except in a flush
  where a series goes down (DogStatsD counters can be decremented): a
  monotonic sum may not decrease, so that flush sends it as non-monotonic;
* distributions become delta ``ExponentialHistogram`` data points derived from
  the sketch (:func:`exponential_buckets`);
* tags become attributes (``key:value`` splits at the first colon, a bare tag
  has the empty value, a key given several values gets them sorted and joined
  by commas); the host becomes the ``host.name`` resource attribute.

Events and service checks have no OTLP metric form: they are counted as drops.
Requests hold at most ``MAX_POINTS`` data points (a distribution's weighing
one more per 64 buckets); the work is cut into slices
(``None`` is yielded between them) for the caller's Cooperator.  Nothing here
touches Twisted or a clock.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from itertools import chain
from math import ceil, inf, log2
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    ExponentialHistogramDataPoint,
    Metric,
    ScopeMetrics,
)

from twisted_statsd import __version__
from twisted_statsd.core.model import SERIES_COUNT, SERIES_RATE, FlushBatch, Series, SketchSeries
from twisted_statsd.core.sketch import INF_KEY, MIN_VALUE, Sketch, value_of

__all__ = [
    "CUMULATIVE",
    "DELTA",
    "MAX_POINTS",
    "RELATIVE_ERROR",
    "SCALE",
    "CumulativeSums",
    "OtlpPayload",
    "attributes",
    "bucket_bounds",
    "bucket_index",
    "build_payloads",
    "exponential_buckets",
    "partial_success",
]

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

# The exponential histograms' scale: bucket i holds (2^(i/64), 2^((i+1)/64)], a
# ratio of 2^(1/64) ≈ 1.0109 between bounds.  It is the coarsest scale whose
# buckets are no wider than the sketch's bins (ratio γ = 1 + 2/128 = 1.015625;
# scale 5's 1.0219 would be wider), so each bin's count lands in the bucket of
# its value and no two bins' counts are merged.  A sample then lies within a
# factor √γ · 2^(1/64) ≈ 1.0188 of both bounds of its bucket: RELATIVE_ERROR.
SCALE = 6
_SCALE_FACTOR = float(1 << SCALE)
RELATIVE_ERROR = (1.0 + 2.0 / 128.0) ** 0.5 * 2.0 ** (1.0 / (1 << SCALE)) - 1.0

# Data points per request, a distribution's counting one more per 64 buckets:
# a request stays under about half a megabyte before gzip, far under a
# collector's default 20 MiB limit, and encoding and gzipping it is one step
# of about 10 ms on the reactor.
MAX_POINTS = 4_000
# Data points encoded between two yields (a distribution counts one per 64 buckets).
STEP_POINTS = 256
# Level 1, as the Datadog sink: this runs on the reactor thread.
GZIP_LEVEL = 1

# Cumulative state: a series with no point for this long is forgotten (its next
# point starts a new sum).  Live counters have a point in every flush (the
# aggregator zero-fills them for dogstatsd_expiry_seconds after their last
# sample), so only counters the aggregator itself forgot reach this age.
CUMULATIVE_TTL = 600.0
# ...and at most this many series are tracked; points of new series beyond it are dropped and counted.
CUMULATIVE_MAX_SERIES = 500_000

_SCOPE = InstrumentationScope(name="twisted-statsd", version=__version__)

DropCounter = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class OtlpPayload:
    """One gzipped request body for the configured endpoint, retried for as long as the queue keeps it."""

    body: bytes
    points: int
    size: int  # uncompressed bytes
    path: str = ""
    max_age: float = inf


def bucket_index(magnitude: float) -> int:
    """The index of the bucket holding ``magnitude`` > 0: bucket i is (base^i, base^(i+1)].

    ``log2`` is exact at powers of two, which are upper bounds of their bucket.
    """
    return ceil(log2(magnitude) * _SCALE_FACTOR) - 1


def bucket_bounds(index: int) -> tuple[float, float]:
    """The (lower, upper] bounds of bucket ``index``."""
    return 2.0 ** (index / _SCALE_FACTOR), 2.0 ** ((index + 1) / _SCALE_FACTOR)


# Cached: bounded by the key space (< 2**15).
@cache
def _key_index(key: int) -> int:
    """Sketch key (> 0, finite) -> bucket index of the bin's value."""
    return bucket_index(value_of(key))


def _dense(counts: dict[int, int]) -> tuple[int, list[int]]:
    if not counts:
        return 0, []
    low, high = min(counts), max(counts)
    return low, [counts.get(i, 0) for i in range(low, high + 1)]


def exponential_buckets(sketch: Sketch) -> tuple[int, tuple[int, list[int]], tuple[int, list[int]]]:
    """The sketch's bins as (zero count, (offset, positive counts), (offset, negative counts)) at ``SCALE``.

    Each bin's count goes to the bucket holding the bin's value γ^k (mirrored
    for negative keys); the zero bin (magnitudes under ``MIN_VALUE``) is the
    zero count.  The bins beyond about 1e211 have no finite value: they go to
    the bucket of the sketch's max (min, for negative ones), the accuracy
    statement not holding there.
    """
    keys, counts = sketch.bins()
    zero = 0
    positive: dict[int, int] = {}
    negative: dict[int, int] = {}
    for k, c in zip(keys, counts, strict=True):
        if k == 0:
            zero += c
            continue
        side = positive if k > 0 else negative
        magnitude = abs(k)
        if magnitude == INF_KEY:
            index = bucket_index(abs(sketch.max if k > 0 else sketch.min))
        else:
            index = _key_index(magnitude)
        side[index] = side.get(index, 0) + c
    return zero, _dense(positive), _dense(negative)


# Tag tuple -> its attributes as (key, value) pairs.  Bounded: past the bound,
# new tag sets are converted each time instead of kept.
_ATTRIBUTES: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
ATTRIBUTES_CACHE_LIMIT = 100_000


def attributes(tags: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Tags as attribute pairs, sorted by key: ``k:v`` is k=v, a bare tag k is k="", repeated keys join values."""
    found = _ATTRIBUTES.get(tags)
    if found is None:
        values: dict[str, list[str]] = {}
        for tag in tags:
            key, _, value = tag.partition(":")
            values.setdefault(key, []).append(value)
        found = tuple((k, ",".join(sorted(values[k]))) for k in sorted(values))
        if len(_ATTRIBUTES) < ATTRIBUTES_CACHE_LIMIT:
            _ATTRIBUTES[tags] = found
    return found


def _set_attributes(repeated, pairs: tuple[tuple[str, str], ...]) -> None:
    # Built in place: cheaper than copying cached KeyValue messages in (measured).
    for key, value in pairs:
        repeated.add(key=key).value.string_value = value


class CumulativeSums:
    """Running totals of counter series, for cumulative temporality.

    Invariant: ``_sums`` maps (host, name, tags) to [start, total, time, seen],
    start and time in nanoseconds, ``seen`` the flush time of its last point;
    it is ordered by ``seen`` (an updated entry moves to the end), so expiry
    pops from the front and costs only what it expires.
    """

    def __init__(self, ttl: float = CUMULATIVE_TTL, limit: int = CUMULATIVE_MAX_SERIES):
        self.ttl = ttl
        self.limit = limit
        self._sums: dict[tuple, list] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def add(self, key: tuple, start: int, end: int, increment: float, now: float) -> tuple[int, float, int] | None:
        """Add one interval's count; (start, running total, time) to send, or None when no more series fit."""
        entry = self._sums.pop(key, None)
        if entry is None:
            if len(self._sums) >= self.limit:
                return None
            entry = [start, 0.0, end, now]
        entry[1] += increment
        entry[2] = max(entry[2], end)
        entry[3] = now
        self._sums[key] = entry
        return entry[0], entry[1], entry[2]

    def expire(self, now: float) -> None:
        """Forget the series whose last point came more than ``ttl`` seconds before ``now``."""
        sums = self._sums
        while sums:
            key = next(iter(sums))
            if sums[key][3] + self.ttl >= now:
                return
            del sums[key]


_NANOS = 1_000_000_000


def _count(series: Series, value: float) -> float:
    if series.type == SERIES_RATE:
        # Undo the division by the interval: 15 digits recover the decimal count.
        return float(f"{value * series.interval:.15g}")
    return value


class _Request:
    """One request being filled: resources by host, metrics by (host, name, kind)."""

    def __init__(self, resource_attributes: tuple[tuple[str, str], ...]):
        self.message = ExportMetricsServiceRequest()
        self.resource_attributes = resource_attributes
        self.scopes: dict[str, ScopeMetrics] = {}
        self.metrics: dict[tuple, Metric] = {}
        self.points = 0
        self.weight = 0  # points, plus one per 64 buckets of exponential histograms

    def metric(self, host: str, name: str, kind: str, monotonic: bool = False) -> Metric:
        found = self.metrics.get((host, name, kind, monotonic))
        if found is not None:
            return found
        scope = self.scopes.get(host)
        if scope is None:
            resource = self.message.resource_metrics.add()
            if host:
                resource.resource.attributes.add(key="host.name", value=AnyValue(string_value=host))
            _set_attributes(
                resource.resource.attributes,
                tuple(a for a in self.resource_attributes if not (host and a[0] == "host.name")),
            )
            scope = self.scopes[host] = resource.scope_metrics.add()
            scope.scope.CopyFrom(_SCOPE)
        found = scope.metrics.add(name=name)
        self.metrics[(host, name, kind, monotonic)] = found
        return found

    def close(self) -> OtlpPayload:
        raw = self.message.SerializeToString()
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return OtlpPayload(z.compress(raw) + z.flush(), self.points, len(raw))


def build_payloads(
    batch: FlushBatch,
    *,
    temporality: AggregationTemporality.ValueType = DELTA,
    cumulative: CumulativeSums | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    on_drop: DropCounter,
) -> Iterator[OtlpPayload | None]:
    """Yield the batch's requests as they fill up, and None between bounded slices of work.

    ``cumulative`` holds the running totals when ``temporality`` is
    ``CUMULATIVE``.  ``on_drop(reason, n)`` hears about what is not sent:
    events and service checks (``otlp_events_unsupported``,
    ``otlp_service_checks_unsupported``) and counter points of new series
    beyond the cumulative state's bound (``otlp_cumulative_state_full``).
    """
    if temporality == CUMULATIVE and cumulative is None:
        raise ValueError("cumulative temporality needs a CumulativeSums")
    extra = tuple(sorted((resource_attributes or {}).items()))
    if batch.events:
        on_drop("otlp_events_unsupported", len(batch.events))
    if batch.service_checks:
        on_drop("otlp_service_checks_unsupported", len(batch.service_checks))
    now = batch.timestamp
    if cumulative is not None:
        cumulative.expire(now)

    def fill_series(request: _Request, series: Series) -> int:
        if series.type in (SERIES_RATE, SERIES_COUNT):
            counts = [(ts, _count(series, value)) for ts, value in series.points]
            monotonic = all(c >= 0.0 for _, c in counts)
            metric = request.metric(series.host, series.name, "sum", monotonic)
            if not metric.HasField("sum"):
                metric.sum.aggregation_temporality = temporality
                metric.sum.is_monotonic = monotonic
            attrs = attributes(series.tags)
            for ts, c in sorted(counts) if cumulative is not None else counts:
                start, end = ts * _NANOS, (ts + series.interval) * _NANOS
                if cumulative is not None:
                    summed = cumulative.add((series.host, series.name, series.tags), start, end, c, now)
                    if summed is None:
                        on_drop("otlp_cumulative_state_full", 1)
                        continue
                    start, c, end = summed
                point = metric.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=end, as_double=c)
                _set_attributes(point.attributes, attrs)
        else:
            metric = request.metric(series.host, series.name, "gauge")
            attrs = attributes(series.tags)
            for ts, value in series.points:
                point = metric.gauge.data_points.add(time_unix_nano=ts * _NANOS, as_double=value)
                _set_attributes(point.attributes, attrs)
        request.points += len(series.points)
        request.weight += len(series.points)
        return len(series.points)

    # Each series (or distribution) goes whole into the current request; a
    # request is sent once it is full, and the work yields every STEP_POINTS.
    fills: Iterator[tuple[Callable[[_Request, Any], int], Any]] = chain(
        ((fill_series, series) for series in batch.series),
        ((_fill_sketches, sketch_series) for sketch_series in batch.sketches),
    )
    request = _Request(extra)
    work = 0
    for fill, item in fills:
        work += fill(request, item)
        if request.weight >= MAX_POINTS:
            yield request.close()
            request = _Request(extra)
        if work >= STEP_POINTS:
            work = 0
            yield None

    if request.points:
        yield request.close()


def _fill_sketches(request: _Request, sketch_series: SketchSeries) -> int:
    """Add a context's distribution points (one exponential histogram each); returns their weight."""
    metric = request.metric(sketch_series.host, sketch_series.name, "exponential_histogram")
    if not metric.HasField("exponential_histogram"):
        metric.exponential_histogram.aggregation_temporality = DELTA
    attrs = attributes(sketch_series.tags)
    added = 0
    for ts, sketch in sketch_series.points:
        if sketch.empty:
            continue
        point = metric.exponential_histogram.data_points.add()
        _fill_histogram_point(point, sketch, ts * _NANOS, (ts + sketch_series.interval) * _NANOS)
        _set_attributes(point.attributes, attrs)
        weight = 1 + (len(point.positive.bucket_counts) + len(point.negative.bucket_counts)) // 64
        request.points += 1
        request.weight += weight
        added += weight
    return added


def _fill_histogram_point(point: ExponentialHistogramDataPoint, sketch: Sketch, start: int, end: int) -> None:
    """The sketch as one data point: buckets at ``SCALE``, count the bins' total, exact min, max and sum.

    The sum is left out when a value is negative, as the OTLP proto asks (for
    OpenMetrics compatibility).
    """
    zero, (positive_offset, positive), (negative_offset, negative) = exponential_buckets(sketch)
    point.start_time_unix_nano = start
    point.time_unix_nano = end
    point.scale = SCALE
    point.zero_count = zero
    point.zero_threshold = MIN_VALUE
    point.count = zero + sum(positive) + sum(negative)
    if positive:
        point.positive.offset = positive_offset
        point.positive.bucket_counts.extend(positive)
    if negative:
        point.negative.offset = negative_offset
        point.negative.bucket_counts.extend(negative)
    point.min = sketch.min
    point.max = sketch.max
    if sketch.min >= 0.0:
        point.sum = sketch.sum


def partial_success(body: bytes) -> tuple[int, str] | None:
    """(rejected data points, error message) of an ``ExportMetricsServiceResponse``; None when all was taken.

    A body that is not such a response (some receivers answer an empty or
    JSON body) says nothing was rejected.
    """
    response = ExportMetricsServiceResponse()
    try:
        response.ParseFromString(body)
    except DecodeError:
        return None
    partial = response.partial_success
    if not partial.rejected_data_points and not partial.error_message:
        return None
    return partial.rejected_data_points, partial.error_message
