"""Pure payload building for the Datadog sink: public-API JSON bodies, gzipped and split at the limits.

Every flush becomes a handful of gzip payloads, one endpoint each: series as
metrics API v2 JSON, service checks as a check_run array, distributions as
distribution points, and one request per event (the public events API takes
one event per call).  Items are encoded one at a time into a streaming gzip
compressor, so a payload is closed exactly when the next item could push it
over its endpoint's compressed or uncompressed size, never after the fact.

A distribution point is the sketch's bins spelled out as raw values: each
bin's value is repeated as many times as the bin counts.  That value is the
one every other sink reports for the bin, ``value_of(key)`` (the bin's
log-midpoint, clamped to min and max in the extreme bins), written exactly.
The log-midpoint is within the sketch's accuracy (1/128) of every sample the
bin can hold; a shorter decimal that merely falls back into the bin is not
(a bin is about 1.6 % wide).  So the values keep the samples' order, the
percentiles Datadog computes are the sketch's, its count is the bins' total
(the agent's count), min and max are exact (they are among the values) and
the sum is within the accuracy.  A point whose
bins count more than ``max_values`` is scaled down to ``max_values`` values,
which moves ranks by under one value in ``max_values`` but loses the count;
the values left out are reported to ``on_drop``.  Nothing here touches
Twisted or a clock.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from math import isfinite

from twisted_statsd.core.model import Event, FlushBatch, Series, ServiceCheck, SketchSeries
from twisted_statsd.core.sketch import INF_KEY, Sketch, key_of, value_of
from twisted_statsd.sinks._json_series import SeriesFormat, series_text

__all__ = [
    "CHECKS",
    "DISTRIBUTIONS",
    "ENDPOINTS",
    "EVENTS",
    "SERIES",
    "Endpoint",
    "Payload",
    "PayloadBuilder",
    "build_payloads",
    "distribution_values",
    "event_body",
    "series_item",
    "service_check_item",
]


@dataclass(frozen=True)
class Endpoint:
    """One intake endpoint and its limits.

    ``max_age`` is how long after a payload was built Datadog would still take
    its data; retrying longer is pointless.  ``max_points`` bounds the points
    of the series in one payload (None: no bound).
    """

    kind: str
    path: str
    max_compressed: int
    max_uncompressed: int
    max_points: int | None = None
    max_items: int | None = None
    max_age: float = 3600.0


# Metrics API v2: 512 000 bytes compressed, 5 MiB uncompressed (API reference);
# the agent also caps a series payload at 10 000 points.  Points older than an
# hour are refused.
SERIES = Endpoint("series", "/api/v2/series", 512_000, 5_242_880, max_points=10_000)
# No documented size for distribution points and check runs: the agent's
# general payload limits (2.5 MiB compressed, 4 MiB uncompressed) apply.
DISTRIBUTIONS = Endpoint("distributions", "/api/v1/distribution_points", 2_621_440, 4_194_304)
# Service checks are accepted up to 10 minutes in the past.
CHECKS = Endpoint("service_checks", "/api/v1/check_run", 2_621_440, 4_194_304, max_age=600.0)
# One event per request; events up to 18 hours old are accepted.
EVENTS = Endpoint("events", "/api/v1/events", 2_621_440, 4_194_304, max_items=1, max_age=18 * 3600.0)
ENDPOINTS = (SERIES, DISTRIBUTIONS, CHECKS, EVENTS)

# Events API field limits (characters).
EVENT_TEXT_MAX = 4000
EVENT_AGGREGATION_KEY_MAX = 100

# Level 1, as the agent uses zstd level 1: 2-6x faster than 6 here for 10% bigger series payloads,
# and this runs on the reactor thread.
GZIP_LEVEL = 1
# The gzip header and trailer, and slack for the final deflate block.
_GZIP_OVERHEAD = 18 + 64
# Work done between two yields of build_payloads: bounded, so a big flush is
# sliced by the caller's Cooperator instead of stalling the reactor.
STEP_BYTES = 64 * 1024
# Input held before it is given to the compressor.
COMPRESS_BYTES = 16 * 1024
STEP_ITEMS = 64

DropCounter = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Payload:
    """One gzip request body, ready to POST to ``endpoint.path``."""

    endpoint: Endpoint
    body: bytes
    items: int
    size: int  # uncompressed bytes

    @property
    def path(self) -> str:
        return self.endpoint.path

    @property
    def max_age(self) -> float:
        return self.endpoint.max_age


def _deflate_bound(n: int) -> int:
    """An upper bound on what ``n`` not-yet-emitted input bytes can still add to deflate's output."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


class PayloadBuilder:
    """Packs encoded JSON items into gzip payloads of ``prefix item,item,... suffix``.

    The uncompressed size is tracked exactly.  The compressed size is the
    compressor's output so far plus a worst-case bound for the input it still
    holds; when that bound says the next item may not fit, the compressor is
    sync-flushed, which makes the size exact again, before giving up on the
    payload.  So a payload never exceeds its limit, and it is closed within a
    few bytes of the limit that binds.
    """

    def __init__(self, endpoint: Endpoint, prefix: bytes, suffix: bytes):
        self.endpoint = endpoint
        self.prefix = prefix
        self.suffix = suffix
        self._start()

    # Invariant: _out_len is the length of everything in _out; _pending counts
    # the input since the compressor's last sync flush, given to it or still
    # held in _held (an upper bound on what is not in _out yet); _size is the
    # exact uncompressed length.  Items are held and given to the compressor
    # COMPRESS_BYTES at a time: one call per item costs more than the deflating.
    def _start(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        first = self._z.compress(self.prefix)
        self._out = [first]
        self._out_len = len(first)
        self._held: list[bytes] = []
        self._held_len = 0
        self._pending = len(self.prefix)
        self._size = len(self.prefix)
        self._items = 0
        self._points = 0

    def _compress_held(self) -> None:
        if self._held:
            chunk = self._z.compress(b"".join(self._held))
            self._held.clear()
            self._held_len = 0
            if chunk:
                self._out.append(chunk)
                self._out_len += len(chunk)

    def _fits(self, length: int, points: int) -> bool:
        endpoint = self.endpoint
        added = length + (1 if self._items else 0)
        if self._size + added + len(self.suffix) > endpoint.max_uncompressed:
            return False
        if endpoint.max_items is not None and self._items + 1 > endpoint.max_items:
            return False
        if endpoint.max_points is not None and self._points + points > endpoint.max_points and self._items:
            return False
        limit = endpoint.max_compressed - _GZIP_OVERHEAD
        if self._out_len + _deflate_bound(self._pending + added + len(self.suffix)) <= limit:
            return True
        if self._pending:
            self._compress_held()
            synced = self._z.flush(zlib.Z_SYNC_FLUSH)
            self._out.append(synced)
            self._out_len += len(synced)
            self._pending = 0
        return self._out_len + _deflate_bound(added + len(self.suffix)) <= limit

    def _fits_alone(self, length: int) -> bool:
        size = len(self.prefix) + length + len(self.suffix)
        endpoint = self.endpoint
        return size <= endpoint.max_uncompressed and _deflate_bound(size) <= endpoint.max_compressed - _GZIP_OVERHEAD

    def add(self, item: bytes, points: int = 1) -> tuple[Payload | None, bool]:
        """Add one item; return (the payload it closed, or None; whether the item was taken).

        An item too big for an empty payload is refused.
        """
        closed = None
        if not self._fits(len(item), points):
            if not self._items or not self._fits_alone(len(item)):
                return None, False
            closed = self.finish()
            if not self._fits(len(item), points):
                return closed, False
        if self._items:
            self._held.append(b",")
        self._held.append(item)
        length = len(item) + (1 if self._items else 0)
        self._held_len += length
        if self._held_len >= COMPRESS_BYTES:
            self._compress_held()
        self._pending += length
        self._size += length
        self._items += 1
        self._points += points
        return closed, True

    def finish(self) -> Payload | None:
        """Close the current payload (None when it has no item) and start a new one."""
        if not self._items:
            return None
        self._compress_held()
        self._out.append(self._z.compress(self.suffix))
        self._out.append(self._z.flush())
        payload = Payload(self.endpoint, b"".join(self._out), self._items, self._size + len(self.suffix))
        self._start()
        return payload


# One encoder for every item: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _dumps(obj) -> bytes:
    return _encode(obj).encode()


def series_object(series: Series) -> dict:
    """A metrics API v2 series; the host resource is left out when there is no host."""
    obj = {
        "metric": series.name,
        "type": series.type,
        "points": [{"timestamp": int(ts), "value": value} for ts, value in series.points],
        "tags": list(series.tags),
        "interval": series.interval,
    }
    if series.host:
        obj["resources"] = [{"type": "host", "name": series.host}]
    return obj


_SERIES_FORMAT = SeriesFormat(
    point='{"timestamp":%d,"value":%r}',
    separator=",",
    series='{{"metric":{0},"type":{1:d},"points":[{2}],"tags":[{3}],"interval":{4:d}{5}}}',
    resources=',"resources":[{"type":"host","name":%s}]',
    no_resources="",
)


def series_item(series: Series) -> bytes:
    """``_dumps(series_object(series))``, formatted directly: a flush encodes one per context.

    Raises ValueError for a point JSON cannot carry, as the encoder does.
    """
    text = series_text(series, _SERIES_FORMAT)
    return _dumps(series_object(series)) if text is None else text.encode()


def service_check_item(check: ServiceCheck) -> bytes:
    """A check_run entry; the public API wants ``tags`` as a list, so an empty one is ``[]``."""
    return _dumps(
        {
            "check": check.name,
            "host_name": check.host,
            "timestamp": check.timestamp,
            "status": check.status,
            "message": check.message,
            "tags": list(check.tags),
        }
    )


def event_body(event: Event) -> bytes:
    """An events API request; empty optional fields are left out, long fields cut to the API's limits."""
    obj: dict = {"title": event.title, "text": event.text[:EVENT_TEXT_MAX]}
    if event.timestamp:
        obj["date_happened"] = int(event.timestamp)
    obj["priority"] = event.priority
    obj["alert_type"] = event.alert_type
    if event.host:
        obj["host"] = event.host
    if event.tags:
        obj["tags"] = list(event.tags)
    if event.aggregation_key:
        obj["aggregation_key"] = event.aggregation_key[:EVENT_AGGREGATION_KEY_MAX]
    if event.source_type:
        obj["source_type_name"] = event.source_type
    return _dumps(obj)


# Cached: the key space is bounded (|key| < 2**15), so is the cache.
@cache
def _bin_text(key: int) -> str:
    """The exact decimal text of ``value_of(key)``, the value every sink reports for bin ``key``."""
    return repr(value_of(key))


def _scale(counts: list[int], total: int, target: int) -> list[int]:
    """Scale ``counts`` to sum to ``target``, rounding cumulatively so every rank moves by under one value."""
    scaled = []
    previous = 0
    running = 0
    for c in counts:
        running += c
        cumulative = (2 * running * target + total) // (2 * total)
        scaled.append(cumulative - previous)
        previous = cumulative
    # Keep the extreme bins, which carry min and max.
    scaled[0] = max(scaled[0], 1)
    scaled[-1] = max(scaled[-1], 1)
    return scaled


def distribution_values(sketch: Sketch, max_values: int) -> tuple[str, int]:
    """The sketch as the JSON text of a list of raw values, and how many values were left out.

    Each bin's value is repeated ``count`` times (``max_values`` at most,
    scaled down as a whole), so Datadog rebuilds the same bins.  The
    exact min and max replace values of the lowest and highest bins when they
    belong to them (the agent's collapsing of the lowest bins past 4096 can
    move the min below the lowest bin).
    """
    keys, counts = sketch.bins()
    total = sum(counts)
    left_out = 0
    if total > max_values:
        counts = _scale(counts, total, max_values)
        left_out = max(0, total - sum(counts))
    runs: list[tuple[str, int]] = []
    for k, c in zip(keys, counts, strict=True):
        if c <= 0:
            continue
        if k == INF_KEY or k == -INF_KEY:
            # Beyond about 1e211 a bin has no finite value: use the extreme seen.
            text = repr(float(sketch.max if k > 0 else sketch.min))
        else:
            text = _bin_text(k)
        runs.append((text, c))
    # The extreme bins' text may lie beyond min or max (a bin is about 1.6 %
    # wide): then min (max) stands for the whole bin, else for one value of it.
    lo, hi = float(sketch.min), float(sketch.max)
    if isfinite(lo) and key_of(lo) == keys[0]:
        text, count = runs[0]
        if float(text) < lo:
            runs[0] = (repr(lo), count)
        else:
            runs[0:1] = [(repr(lo), 1), (text, count - 1)]
    if isfinite(hi) and key_of(hi) == keys[-1] and sum(c for _, c in runs) > 1:
        while not runs[-1][1]:
            runs.pop()
        text, count = runs[-1]
        if float(text) > hi:
            runs[-1] = (repr(hi), count)
        else:
            runs[-1:] = [(text, count - 1), (repr(hi), 1)]
    text = "".join((t + ",") * c for t, c in runs if c > 0)
    return text[:-1], left_out


def distribution_item(series: SketchSeries, ts: int, sketch: Sketch, max_values: int) -> tuple[bytes, int]:
    """One distribution-points series holding one point; also the values left out."""
    values, left_out = distribution_values(sketch, max_values)
    head = {"metric": series.name, "type": "distribution", "tags": list(series.tags)}
    if series.host:
        head["host"] = series.host
    text = _dumps(head)[:-1] + b',"points":[[' + str(int(ts)).encode() + b",[" + values.encode() + b"]]]}"
    return text, left_out


def build_payloads(
    batch: FlushBatch, *, distribution_max_values: int, on_drop: DropCounter
) -> Iterator[Payload | None]:
    """Yield the batch's payloads as they fill up, and None between bounded slices of work.

    ``on_drop(reason, n)`` hears about what cannot be sent: items too big for
    any payload (``datadog_payload_too_large``), values that JSON cannot
    carry (``datadog_unencodable``), and distribution values left out by
    scaling (``datadog_distribution_downsampled``).
    """
    work = 0
    items = 0

    def step(length: int):
        nonlocal work, items
        work += length
        items += 1
        if work >= STEP_BYTES or items >= STEP_ITEMS:
            work = items = 0
            return True
        return False

    def add(builder: PayloadBuilder, item: bytes, points: int = 1):
        closed, taken = builder.add(item, points)
        if not taken:
            on_drop("datadog_payload_too_large", 1)
        return closed

    def encode(encoder, thing):
        try:
            return encoder(thing)
        except (ValueError, TypeError):
            on_drop("datadog_unencodable", 1)
            return None

    def payloads(builder: PayloadBuilder, things, encoder, points=lambda thing: 1):
        """Encode ``things`` into ``builder``'s payloads, yielding each closed one (and None to pause)."""
        for thing in things:
            item = encode(encoder, thing)
            if item is None:
                continue
            closed = add(builder, item, points(thing))
            if closed is not None:
                yield closed
            if step(len(item)):
                yield None
        yield builder.finish()

    yield from payloads(
        PayloadBuilder(SERIES, b'{"series":[', b"]}"), batch.series, series_item, lambda s: max(1, len(s.points))
    )

    builder = PayloadBuilder(DISTRIBUTIONS, b'{"series":[', b"]}")
    for sketch_series in batch.sketches:
        for ts, sketch in sketch_series.points:
            if sketch.empty:
                continue
            item, left_out = distribution_item(sketch_series, ts, sketch, distribution_max_values)
            if left_out:
                on_drop("datadog_distribution_downsampled", left_out)
            closed = add(builder, item)
            if closed is not None:
                yield closed
            if step(len(item)):
                yield None
    yield builder.finish()

    yield from payloads(PayloadBuilder(CHECKS, b"[", b"]"), batch.service_checks, service_check_item)
    yield from payloads(PayloadBuilder(EVENTS, b"", b""), batch.events, event_body)
