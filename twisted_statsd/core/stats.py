"""Per-metric-name statistics: who sends what, how many contexts it makes, and what it costs.

Two views feed one table, so the hot path is untouched while statistics are off:

* **received**, from each batch of packets before it is parsed (the intake
  calls :meth:`MetricStats.received` only while statistics are on): samples
  per name *as the client sent it*, the transports and origins (container IDs)
  it came from, and when it was last seen.  Exact, counted per line (a line
  packing several values counts once).
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

from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, HISTOGRAM, SET, TIMING

# Datadog turns a distribution context into count, sum, min, max and avg series
# (percentiles, when enabled on a metric, add five more): the estimate counts five.
DISTRIBUTION_SERIES = 5

# Names tracked at most; lines of further names are counted under ``untracked_samples``.
MAX_NAMES = 10_000

# Senders remembered per name.
MAX_SENDERS = 16

ORDERINGS = ("contexts", "samples", "series")
_TYPE_NAMES = {
    COUNTER: "counter",
    GAUGE: "gauge",
    SET: "set",
    HISTOGRAM: "histogram",
    TIMING: "timing",
    DISTRIBUTION: "distribution",
}
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


def line_names(packets: list[bytes]) -> Counter:
    """Metric lines per name in a batch of packets; events (``_e{``) and service checks (``_sc|``) left out.

    C-level calls only: split, partition and a Counter over the names.
    """
    lines = b"\n".join(packets).split(b"\n")
    names = Counter(map(_first, map(bytes.partition, lines, repeat(b":"))))
    for name in [n for n in names if not n or n.startswith((b"_e{", b"_sc|"))]:
        del names[name]
    return names


class MetricStats:
    """The per-name table.  Invariant: at most ``max_names`` entries; further names are only counted."""

    def __init__(self, series_per_type: dict, *, max_names: int = MAX_NAMES):
        self.series_per_type = series_per_type
        self.max_names = max_names
        self.names: dict[str, NameStats] = {}
        self.untracked_samples = 0
        self.since: float | None = None

    def _entry(self, name: str) -> NameStats | None:
        entry = self.names.get(name)
        if entry is None and len(self.names) < self.max_names:
            entry = self.names[name] = NameStats()
        return entry

    def received(self, packets: list[bytes], now: float, transport: str, origin: bytes | None) -> None:
        """Count one batch of packets as it arrives from ``transport`` (and ``origin``, a container ID)."""
        if self.since is None:
            self.since = now
        sender = origin.decode("utf-8", "replace") if origin else None
        for raw, count in line_names(packets).items():
            entry = self._entry(raw.decode("utf-8", "replace"))
            if entry is None:
                self.untracked_samples += count
                continue
            entry.samples += count
            entry.last_seen = now
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
        for entry in self.names.values():
            entry.contexts = entry.series = 0
        per_type = self.series_per_type
        for name, mtype, tags in contexts:
            entry = self._entry(name)
            if entry is None:
                continue
            entry.contexts += 1
            entry.series += per_type.get(mtype, 1)
            entry.type = _TYPE_NAMES.get(mtype, "")
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
        self.untracked_samples = 0
        self.since = None
