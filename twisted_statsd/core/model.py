"""The values that flow through the pure core: parsed messages and flushed output.

Parsed messages keep the wire's bytes (names, tags, set members) so that the hot
path never decodes; only what is emitted at flush time is decoded, once per
context.  Flush output is plain data that every sink can serialise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

# Metric types, named by their wire letters (spec §1.2).
GAUGE = b"g"
COUNTER = b"c"
HISTOGRAM = b"h"
TIMING = b"ms"
SET = b"s"
DISTRIBUTION = b"d"
METRIC_TYPES = frozenset((GAUGE, COUNTER, HISTOGRAM, TIMING, SET, DISTRIBUTION))
# Their names, as the admin endpoint shows them.
METRIC_TYPE_NAMES = {
    COUNTER: "counter",
    GAUGE: "gauge",
    SET: "set",
    HISTOGRAM: "histogram",
    TIMING: "timing",
    DISTRIBUTION: "distribution",
}

# Series types as the Datadog metrics API v2 numbers them.
SERIES_UNSPECIFIED = 0
SERIES_COUNT = 1
SERIES_RATE = 2
SERIES_GAUGE = 3

# Service check statuses (spec §1.6).
CHECK_STATUSES = {b"0": 0, b"1": 1, b"2": 2, b"3": 3}


class MetricMessage:
    """One parsed metric line (spec §1.2), before enrichment.

    ``values`` holds the numeric values of a packed line; a set carries its one
    member in ``set_member`` instead.  ``timestamp`` is 0 for an on-time sample.
    """

    __slots__ = ("container_id", "name", "rate", "set_member", "tags", "timestamp", "type", "values")

    def __init__(self, name, type, values, set_member, rate, tags, timestamp, container_id):
        self.name: bytes = name
        self.type: bytes = type
        self.values: tuple[float, ...] = values
        self.set_member: bytes | None = set_member
        self.rate: float = rate
        self.tags: list[bytes] = tags
        self.timestamp: int = timestamp
        self.container_id: bytes | None = container_id

    def __repr__(self):
        return (
            f"MetricMessage(name={self.name!r}, type={self.type!r}, values={self.values!r}, "
            f"set_member={self.set_member!r}, rate={self.rate!r}, tags={self.tags!r}, "
            f"timestamp={self.timestamp!r}, container_id={self.container_id!r})"
        )


@dataclass
class EventMessage:
    """One parsed event (spec §1.5). ``warnings`` names fields that were ignored as invalid."""

    title: bytes
    text: bytes
    timestamp: int = 0
    priority: str = "normal"
    alert_type: str = "info"
    host: bytes | None = None
    aggregation_key: bytes = b""
    source_type: bytes = b""
    tags: list[bytes] = field(default_factory=list)
    container_id: bytes | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ServiceCheckMessage:
    """One parsed service check (spec §1.6). ``warnings`` names fields that were ignored as invalid."""

    name: bytes
    status: int
    timestamp: int = 0
    host: bytes | None = None
    message: bytes = b""
    tags: list[bytes] = field(default_factory=list)
    container_id: bytes | None = None
    warnings: list[str] = field(default_factory=list)


# Tag sets shared between contexts: most contexts repeat a few hosts and tag
# combinations, so each is stored once.  Keyed by the tags as a line gave
# them (order and duplicates included): their rendering in the context key
# and their decoded, sorted and de-duplicated tuple, so that learning a new
# context whose tag set was seen before sorts, renders and decodes nothing.
# Bounded; past the bound, new sets are simply not shared.
_SHARED_TAG_SETS: dict[tuple[bytes, ...], tuple[bytes, tuple[str, ...]]] = {}
# Decoded tuples by sorted unique tags, so two orders of one set share one tuple.
_DECODED_TAG_SETS: dict[tuple[bytes, ...], tuple[str, ...]] = {}
SHARED_TAG_SETS_LIMIT = 100_000


def forget_shared_tag_sets() -> None:
    """Start sharing afresh, so tag sets of contexts gone since are not kept alive."""
    _SHARED_TAG_SETS.clear()
    _DECODED_TAG_SETS.clear()
    _HOSTS.clear()


def _text(raw: bytes) -> str:
    return sys.intern(raw.decode("utf-8", "replace"))


# Hosts decoded, by their bytes: nearly every context has one of a few hosts.
_HOSTS: dict[bytes, str] = {}


def _host(raw: bytes) -> str:
    host = _HOSTS.get(raw)
    if host is None:
        host = _text(raw)
        if len(_HOSTS) < SHARED_TAG_SETS_LIMIT:
            _HOSTS[raw] = host
    return host


def _tag_set(tags: tuple[bytes, ...]) -> tuple[bytes, tuple[str, ...]]:
    """The key rendering and the decoded tuple of a tag set, shared while the bound allows."""
    shared = _SHARED_TAG_SETS.get(tags)
    if shared is not None:
        return shared
    unique = tuple(sorted(set(tags)))
    # Each tag length-prefixed: tags may hold any byte, so no separator is safe.
    rendering = b"".join([b"%d:%s" % (len(tag), tag) for tag in unique])
    decoded = _DECODED_TAG_SETS.get(unique)
    if decoded is None:
        decoded = tuple(_text(t) for t in unique)
        if len(_DECODED_TAG_SETS) < SHARED_TAG_SETS_LIMIT:
            _DECODED_TAG_SETS[unique] = decoded
    shared = rendering, decoded
    if len(_SHARED_TAG_SETS) < SHARED_TAG_SETS_LIMIT:
        _SHARED_TAG_SETS[tags] = shared
    return shared


class Context:
    """What identifies an aggregated series: name, host and a set of tags (spec §6.4).

    ``key`` is a 60-bit integer digest of a canonical rendering of the three,
    as the agent keys contexts by a 64-bit hash: four maps are keyed by
    context, and an integer below 2**60 is a 32-byte object (a 16-byte digest
    as bytes takes 64), whose hash costs nothing to compute.  Two of a
    million contexts collide with a probability of about 4e-7.
    ``name``, ``host`` and ``tags`` are decoded once, here, because only
    emitted data is decoded; hosts, tags and whole tag sets are shared between
    contexts to save memory.
    """

    __slots__ = ("host", "key", "name", "tags")

    def __init__(self, name: bytes, host: bytes, tags):
        tag_rendering, decoded = _tag_set(tuple(tags))
        # Each part length-prefixed: names and tags may hold any byte, so no separator is safe.
        rendering = b"%d:%s%d:%s%s" % (len(name), name, len(host), host, tag_rendering)
        self.key: int = int.from_bytes(blake2b(rendering, digest_size=8).digest()) >> 4
        self.name: str = name.decode("utf-8", "replace")
        self.host: str = _host(host)
        self.tags: tuple[str, ...] = decoded

    def __repr__(self):
        return f"Context({self.name!r}, host={self.host!r}, tags={self.tags!r})"


@dataclass(slots=True)
class Series:
    """One flushed series, shaped after the Datadog metrics API v2 series object."""

    name: str
    type: int
    points: list[tuple[int, float]]
    tags: tuple[str, ...]
    host: str
    interval: int = 10


class SeriesStream(Sequence[Series]):
    """The series of a flush, built afresh each time they are iterated.

    A flush of a million contexts would hold a million Series (about 250 B
    each, with their point lists) from the flush until the slowest sink is
    done; built from the closed buckets as each sink walks them, a flush holds
    only what each sink has in hand.  ``produce`` must give the same series
    every time: the aggregator builds them from buckets nothing changes any
    more.  Indexing and ``len`` build them all (for inspection and tests).
    """

    __slots__ = ("_produce",)

    def __init__(self, produce: Callable[[], Iterator[Series]]):
        self._produce = produce

    def __iter__(self) -> Iterator[Series]:
        return self._produce()

    def __len__(self) -> int:
        return sum(1 for _ in self._produce())

    def __bool__(self) -> bool:
        return next(self._produce(), None) is not None

    def __getitem__(self, index):
        return list(self._produce())[index]

    def __reversed__(self) -> Iterator[Series]:
        # Sequence's own would build every series once per item.
        return reversed(list(self._produce()))

    def __eq__(self, other) -> bool:
        if isinstance(other, SeriesStream | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SeriesStream({list(self)!r})"


@dataclass(slots=True)
class SketchSeries:
    """The distribution sketches of one context, one per flushed bucket."""

    name: str
    points: list  # [(bucket_timestamp, Sketch)]
    tags: tuple[str, ...]
    host: str
    interval: int = 10


@dataclass(slots=True)
class Event:
    """An event ready for output: decoded, host resolved, tags sorted and de-duplicated."""

    title: str
    text: str
    timestamp: int
    priority: str
    alert_type: str
    host: str
    aggregation_key: str
    source_type: str
    tags: tuple[str, ...]


@dataclass(slots=True)
class ServiceCheck:
    """A service check ready for output: decoded, host resolved, tags sorted and de-duplicated."""

    name: str
    status: int
    timestamp: int
    host: str
    message: str
    tags: tuple[str, ...]


@dataclass(slots=True)
class FlushBatch:
    """Everything one flush hands to the sinks."""

    timestamp: float
    # A SeriesStream from the aggregator; a list where a batch is built by hand.
    series: Sequence[Series] = field(default_factory=list)
    sketches: list[SketchSeries] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)

    def __bool__(self):
        return bool(self.series or self.sketches or self.events or self.service_checks)
