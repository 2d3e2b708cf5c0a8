"""Per-metric-name statistics: who sends what, how many contexts it makes, and what it costs.

Two views feed one table, so the hot path is untouched while statistics are off:

* **received**, from each batch of packets before it is parsed (the intake
  calls :meth:`MetricStats.received` only while statistics are on): samples
  per name *as the client sent it*, the transports and origins (container IDs)
  it came from, and when it was last seen.  Exact, counted per line (a line
  packing several values counts once).  A batch is only counted, in C, per
  sender; :meth:`MetricStats.merge` folds the counts in, every second and
  before every read.
* **flushed**, from the aggregator's closed buckets just before each flush
  (:meth:`MetricStats.flushed`): contexts per name *as emitted* (after the
  mapper and namespace), the metric type, the container IDs in the tags, and
  an **estimate of billable series**: contexts × the series each context
  becomes (a histogram its aggregates plus percentiles, a distribution the
  ``DISTRIBUTION_SERIES`` a backend makes of it).

Without a mapper or namespace both views key the same names.  Pure: time is an
argument, and nothing here imports Twisted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import repeat
from operator import itemgetter

from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, HISTOGRAM, METRIC_TYPE_NAMES, SET, TIMING

# Datadog turns a distribution context into count, sum, min, max and avg series
# (percentiles, when enabled on a metric, add five more): the estimate counts five.
DISTRIBUTION_SERIES = 5

# Names tracked at most; lines of further names are counted under ``untracked_samples``.
MAX_NAMES = 10_000

# Senders remembered per name.
MAX_SENDERS = 16

ORDERINGS = ("contexts", "samples", "series")
_CONTAINER = "container_id:"
_first = itemgetter(0)


class NameStats:
    """What is known of one metric name; ``contexts``/``series`` are of the latest flushed interval."""

    __slots__ = ("contexts", "last_seen", "samples", "senders", "series", "transports", "type")

    def __init__(self) -> None:
        self.samples = 0
        self.contexts = 0
        self.series = 0
        self.type = ""
        self.last_seen: float | None = None
        self.senders: set[str] = set()
        self.transports: set[str] = set()

    def as_dict(self, name: str) -> dict:
        return {
            "name": name,
            "type": self.type,
            "samples": self.samples,
            "contexts": self.contexts,
            "estimated_series": self.series,
            "last_seen": self.last_seen,
            "senders": sorted(self.senders),
            "transports": sorted(self.transports),
        }


def series_per_context(histogram_aggregates: Iterable[str], histogram_percentiles: Iterable[float]) -> dict:
    """The series one context of each type becomes (the billable-series estimate's factors)."""
    per_histogram = len(tuple(histogram_aggregates)) + len(tuple(histogram_percentiles))
    return {
        COUNTER: 1,
        GAUGE: 1,
        SET: 1,
        HISTOGRAM: per_histogram,
        TIMING: per_histogram,
        DISTRIBUTION: DISTRIBUTION_SERIES,
    }


def count_names(counts: Counter, packets: list[bytes]) -> None:
    """Add the metric lines of a batch of packets to ``counts``, per name.

    C-level calls only (join, split, partition and Counter's own counting
    loop): this runs on intake while statistics are on.  Events (``_e{``)
    and service checks (``_sc|``) are counted too, and left out when merged.
    """
    counts.update(map(_first, map(bytes.partition, b"\n".join(packets).split(b"\n"), repeat(b":"))))


def _is_metric(name: bytes) -> bool:
    return bool(name) and not name.startswith((b"_e{", b"_sc|"))


class MetricStats:
    """The per-name table.  Invariant: at most ``max_names`` entries; further names are only counted."""

    def __init__(self, series_per_type: dict, *, max_names: int = MAX_NAMES):
        self.series_per_type = series_per_type
        self.max_names = max_names
        self.names: dict[str, NameStats] = {}
        self.untracked_samples = 0
        self.since: float | None = None
        # (transport, origin) -> (names counted since the last merge, [time of the latest batch])
        self._pending: dict[tuple[str, bytes | None], tuple[Counter, list[float]]] = {}

    def _entry(self, name: str) -> NameStats | None:
        entry = self.names.get(name)
        if entry is None and len(self.names) < self.max_names:
            entry = self.names[name] = NameStats()
        return entry

    def received(self, packets: list[bytes], now: float, transport: str, origin: bytes | None) -> None:
        """Count one batch of packets as it arrives from ``transport`` (and ``origin``, a container ID).

        Only counted here, per sender; :meth:`merge` folds the counts into the table.
        """
        key = (transport, origin)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = (Counter(), [now])
        count_names(pending[0], packets)
        pending[1][0] = now

    def merge(self, now: float) -> None:
        """Fold the counts received since the last merge into the table.

        A name's ``last_seen`` becomes the time of its sender's latest batch,
        so it is as precise as merges are frequent.
        """
        if self.since is None:
            self.since = now
        pending, self._pending = self._pending, {}
        for (transport, origin), (counts, latest) in pending.items():
            sender = origin.decode("utf-8", "replace") if origin else None
            for raw, count in counts.items():
                if not _is_metric(raw):
                    continue
                entry = self._entry(raw.decode("utf-8", "replace"))
                if entry is None:
                    self.untracked_samples += count
                    continue
                entry.samples += count
                if entry.last_seen is None or entry.last_seen < latest[0]:
                    entry.last_seen = latest[0]
                entry.transports.add(transport)
                if sender is not None and len(entry.senders) < MAX_SENDERS:
                    entry.senders.add(sender)

    def flushed(self, contexts: Iterable[tuple], now: float) -> None:
        """Take the contexts of the interval about to be flushed: (name, type, tags) per context.

        Replaces every name's ``contexts`` and ``series`` (names absent from the
        interval get zero).
        """
        if self.since is None:
            self.since = now
        for old in self.names.values():
            old.contexts = old.series = 0
        per_type = self.series_per_type
        for name, mtype, tags in contexts:
            entry = self._entry(name)
            if entry is None:
                continue
            entry.contexts += 1
            entry.series += per_type.get(mtype, 1)
            entry.type = METRIC_TYPE_NAMES.get(mtype, "")
            if entry.last_seen is None:  # a name renamed by the mapper or namespace is never seen received
                entry.last_seen = now
            for tag in tags:
                if tag.startswith(_CONTAINER) and len(entry.senders) < MAX_SENDERS:
                    entry.senders.add(tag[len(_CONTAINER) :])

    def top(self, by: str, n: int) -> list[dict]:
        """The ``n`` names with the most ``by`` (one of ``ORDERINGS``), ties by name."""
        if by not in ORDERINGS:
            raise ValueError(f"by must be one of {', '.join(ORDERINGS)}")
        attribute = "series" if by == "series" else by
        ranked = sorted(self.names.items(), key=lambda item: (-getattr(item[1], attribute), item[0]))
        return [entry.as_dict(name) for name, entry in ranked[: max(n, 0)]]

    def reset(self) -> None:
        self.names.clear()
        self._pending.clear()
        self.untracked_samples = 0
        self.since = None
