"""Cardinality limits decided where a context is first resolved: tag filters and the context limiter.

Three rules, all applied once per line shape (on the intake's slow path), so
a context already resolved costs nothing more on the fast path:

* :class:`TagRules` rewrites a metric's tags before its context is built:
  ``metric_tag_filterlist`` keeps or drops tag keys per metric name, and
  ``dogstatsd_tag_value_limits`` keeps at most N distinct values of a tag key
  per metric (later values lose the tag; a value unseen for ``entry_timeout``
  frees its slot).  Lines whose tags differ only in
  what was removed land in one context, where the aggregator adds counters,
  keeps the last gauge, unites sets and merges histograms and sketches.
* :class:`ContextLimiter` counts live contexts per sender and per metric name
  against ``dogstatsd_context_limiter``; a new context beyond a budget is not
  dropped but folded into its metric's overflow context (the metric's name,
  tagged ``overflow:true``, the sender's tag and ``dogstatsd_tags``), so totals
  stay right while the number of contexts stays bounded.  Overflow contexts
  are bounded too: past ``OVERFLOW_NAMES_PER_SENDER`` of a sender's, its
  other metrics fold into its ``statsd.overflow`` context of their type, and
  past ``MAX_OVERFLOW_CONTEXTS`` in all, everyone's fold into one shared
  ``statsd.overflow`` context per type.

Pure: no clock (time comes in as ``now``), nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from heapq import nlargest

from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, HISTOGRAM, SET, TIMING, Context

OVERFLOW_TAG = b"overflow:true"

# A flood of metric names must not make one overflow context per name: a
# sender's overflow is kept apart by metric name (and host) for this many
# contexts; beyond, its other metrics go to its OVERFLOW_NAME context of their type.
OVERFLOW_NAMES_PER_SENDER = 100
# Overflow contexts of every kind in all; beyond (a flood of senders), new
# overflow goes to the one shared OVERFLOW_NAME context of its type, with no sender or host.
MAX_OVERFLOW_CONTEXTS = 10_000
OVERFLOW_NAME = b"statsd.overflow"
# The metric_type tag of a folded overflow context: one per aggregation kind,
# so a counter's total never meets a gauge's value.
_KINDS = {
    COUNTER: b"counter",
    GAUGE: b"gauge",
    HISTOGRAM: b"histogram",
    TIMING: b"histogram",
    SET: b"set",
    DISTRIBUTION: b"distribution",
}

# Rows kept in the overflow table (sender, metric name); beyond, overflows are
# summed under the sender's "other" row, so the table itself stays bounded.
MAX_OFFENDER_ROWS = 10_000
OTHER = "other"


def _tag_key(tag: bytes) -> bytes:
    return tag.partition(b":")[0]


class TagRules:
    """``metric_tag_filterlist`` and ``dogstatsd_tag_value_limits``: what a metric's tags become.

    ``filters`` maps a metric name to (keep, tag keys): keep only those keys
    (``include``), or drop them (``exclude``).  ``value_limits`` maps a metric
    name ("" for every metric) to {tag key: most distinct values}.  Values are
    remembered per metric and tag key, each with the time of the
    :meth:`expire` call before it was last seen; :meth:`expire` forgets those
    unseen for ``entry_timeout``.  ``dropped`` counts tags removed because
    their key was over its limit.

    Time moves only at :meth:`expire` (the intake calls it when its shape cache
    starts a generation, and learns every shape of a value-limited metric again
    in each generation), so lines of one generation are all seen "at its start"
    and whether a line's shape was cached makes no difference.
    """

    def __init__(
        self,
        filters: Mapping[str, tuple[bool, frozenset[bytes]]] | None = None,
        value_limits: Mapping[str, Mapping[bytes, int]] | None = None,
        entry_timeout: float = 300.0,
    ):
        self.filters = dict(filters or {})
        self.value_limits = {name: dict(limits) for name, limits in (value_limits or {}).items()}
        self.entry_timeout = entry_timeout
        # (metric name, tag key) -> {tag: the time of the expire() before it was last seen}
        self._values: dict[tuple[bytes, bytes], dict[bytes, float]] = {}
        self._now = 0.0
        self.dropped: dict[tuple[str, str], int] = {}

    def __bool__(self) -> bool:
        return bool(self.filters or self.value_limits)

    def apply(self, name: bytes, tags: list[bytes], *, learn: bool = True) -> list[bytes]:
        """The tags a metric named ``name`` keeps (``tags`` itself when nothing changes).

        ``learn`` False only answers (for ``/explain``): no value is remembered, no drop counted.
        """
        text = name.decode("utf-8", "replace")
        rule = self.filters.get(text)
        if rule is not None:
            keep, keys = rule
            tags = [tag for tag in tags if (_tag_key(tag) in keys) is keep]
        limits = self.value_limits.get(text) or self.value_limits.get("")
        if limits:
            tags = [tag for tag in tags if self._admits(name, tag, limits, learn)]
        return tags

    def limits(self, name: str) -> bool:
        """Whether tag values of the metric named ``name`` are limited."""
        return bool(self.value_limits.get(name) or self.value_limits.get(""))

    def expire(self, now: float) -> None:
        """Forget tag values unseen for ``entry_timeout`` before ``now``; lines from now on are seen at ``now``."""
        cutoff = now - self.entry_timeout
        for where, values in list(self._values.items()):
            for tag in [tag for tag, seen in values.items() if seen <= cutoff]:
                del values[tag]
            if not values:
                del self._values[where]
        self._now = now

    def _admits(self, name: bytes, tag: bytes, limits: Mapping[bytes, int], learn: bool) -> bool:
        key = _tag_key(tag)
        limit = limits.get(key)
        if limit is None:
            return True
        values = self._values.get((name, key), {})
        if tag in values or len(values) < limit:
            if learn:
                self._values.setdefault((name, key), values)[tag] = self._now
            return True
        if not learn:
            return False
        row = (name.decode("utf-8", "replace"), key.decode("utf-8", "replace"))
        self.dropped[row] = self.dropped.get(row, 0) + 1
        return False


class ContextLimiter:
    """Budgets of live contexts: global, per sender and per metric name (``dogstatsd_context_limiter``).

    A sender is the value of the ``key_tag_name`` tag when it is set and the
    context has it, else the container the packet came from (origin
    detection), else one budget shared by every sender.  ``sender_limit`` 0
    splits ``limit`` evenly among the senders with live contexts, as DogStatsD
    does.  A context counts from its admission until the aggregator reports it
    gone (:meth:`expire`).

    Invariants: ``_live`` maps every admitted live context's key to its
    (sender, metric name); ``_senders`` and ``_names`` count them, with no zero
    entries; ``_overflow`` maps where an overflow context stands (see
    :meth:`_overflow_where`) to it, ``_overflow_keys`` those contexts' keys
    back, and ``_overflow_names`` counts each sender's overflow contexts by
    metric name, with no zero entries.
    """

    def __init__(
        self,
        *,
        limit: int = 0,
        sender_limit: int = 0,
        metric_name_limit: int = 0,
        key_tag_name: str = "",
        entry_timeout: float = 300.0,
        extra_tags: Iterable[str] = (),
    ):
        self._live: dict[int, tuple[str, str]] = {}
        self._senders: dict[str, int] = {}
        self._names: dict[str, int] = {}
        self._overflow: dict[tuple, Context] = {}
        self._overflow_keys: dict[int, tuple] = {}
        self._overflow_names: dict[str, int] = {}
        # Contexts folded past the bounds on overflow contexts, by where they went ("sender", "shared").
        self.folded: dict[str, int] = {}
        # (sender, metric name) -> [contexts folded, time of the last one]
        self.offenders: dict[tuple[str, str], list] = {}
        self._reported: dict[tuple[str, str], int] = {}
        self.configure(
            limit=limit,
            sender_limit=sender_limit,
            metric_name_limit=metric_name_limit,
            key_tag_name=key_tag_name,
            entry_timeout=entry_timeout,
            extra_tags=extra_tags,
        )

    def configure(
        self,
        *,
        limit: int,
        sender_limit: int,
        metric_name_limit: int,
        key_tag_name: str,
        entry_timeout: float,
        extra_tags: Iterable[str],
    ) -> None:
        """Apply new budgets (a reload); live contexts stay counted, decisions already taken are not undone."""
        self.limit = limit
        self.sender_limit = sender_limit
        self.metric_name_limit = metric_name_limit
        self.key_tag_name = key_tag_name
        self._key_prefix = key_tag_name + ":" if key_tag_name else ""
        self.entry_timeout = entry_timeout
        self.extra_tags = tuple(t.encode() for t in extra_tags)
        self._overflow.clear()
        self._overflow_keys.clear()
        self._overflow_names.clear()

    @property
    def enabled(self) -> bool:
        return bool(self.limit or self.sender_limit or self.metric_name_limit)

    def __len__(self) -> int:
        return len(self._live)

    def knows(self, context: Context) -> bool:
        """Whether ``context`` is counted live, or is an overflow context."""
        return context.key in self._live or context.key in self._overflow_keys

    def counts(self, context: Context) -> bool:
        """Whether ``context`` is counted live (not an overflow context)."""
        return context.key in self._live

    def sender_of(self, context: Context, origin: bytes | None) -> str:
        """Whose budget ``context`` counts against: its key tag's value, else its container, else "" (shared)."""
        if self._key_prefix:
            for tag in context.tags:
                if tag.startswith(self._key_prefix):
                    return tag[len(self._key_prefix) :]
        return "" if origin is None else origin.decode("utf-8", "replace")

    def verdict(self, context: Context, origin: bytes | None) -> str | None:
        """Which budget a new ``context`` would exceed ("limit", "sender_limit", "metric_name_limit"), if any."""
        if context.key in self._live or context.key in self._overflow_keys:
            return None
        sender = self.sender_of(context, origin)
        if self.limit and len(self._live) >= self.limit:
            return "limit"
        budget = self.sender_limit
        if not budget and self.limit:
            senders = len(self._senders) + (sender not in self._senders)
            budget = max(1, self.limit // senders)
        if budget and self._senders.get(sender, 0) >= budget:
            return "sender_limit"
        if self.metric_name_limit and self._names.get(context.name, 0) >= self.metric_name_limit:
            return "metric_name_limit"
        return None

    def admit(self, context: Context, origin: bytes | None, now: float, mtype: bytes = COUNTER) -> Context:
        """The context a line of type ``mtype`` resolved to ``context`` goes to: itself, or an overflow context."""
        key = context.key
        if key in self._live or key in self._overflow_keys:
            return context
        sender = self.sender_of(context, origin)
        if self.verdict(context, origin) is None:
            self._live[key] = (sender, context.name)
            self._senders[sender] = self._senders.get(sender, 0) + 1
            self._names[context.name] = self._names.get(context.name, 0) + 1
            return context
        self._count_overflow(sender, context.name, now)
        where = self._overflow_where(context, sender, mtype)
        overflow = self._overflow.get(where)
        if where[0] != "name":
            self.folded[where[0]] = self.folded.get(where[0], 0) + 1
        if overflow is None:
            overflow = Context(*self.overflow_context(where))
            self._overflow[where] = overflow
            self._overflow_keys[overflow.key] = where
            if where[0] == "name":
                self._overflow_names[sender] = self._overflow_names.get(sender, 0) + 1
        return overflow

    def overflow_tags(self, sender: str) -> list[bytes]:
        """The tags of ``sender``'s overflow contexts: ``overflow:true``, the sender's tag, ``dogstatsd_tags``."""
        tags = [OVERFLOW_TAG, *self.extra_tags]
        if sender:
            tags.append((self._key_prefix or "container_id:").encode() + sender.encode())
        return tags

    def _overflow_where(self, context: Context, sender: str, mtype: bytes) -> tuple:
        """Which overflow context a new context beyond its budget goes to.

        ("name", metric name, host, sender): its metric's, while the sender has
        fewer than ``OVERFLOW_NAMES_PER_SENDER`` of those; else ("sender",
        kind, sender): the sender's ``statsd.overflow`` of that kind; and once
        there are ``MAX_OVERFLOW_CONTEXTS`` overflow contexts, ("shared", kind).
        """
        where: tuple = ("name", context.name, context.host, sender)
        if where in self._overflow:
            return where
        room = len(self._overflow) < MAX_OVERFLOW_CONTEXTS
        if room and self._overflow_names.get(sender, 0) < OVERFLOW_NAMES_PER_SENDER:
            return where
        kind = _KINDS.get(mtype, b"counter")
        where = ("sender", kind, sender)
        if room or where in self._overflow:
            return where
        return ("shared", kind)

    def overflow_context(self, where: tuple) -> tuple[bytes, bytes, list[bytes]]:
        """The (name, host, tags) of the overflow context at ``where``."""
        if where[0] == "name":
            _, name, host, sender = where
            return name.encode(), host.encode(), self.overflow_tags(sender)
        tags = [b"metric_type:" + where[1]]
        if where[0] == "sender":
            return OVERFLOW_NAME, b"", [*self.overflow_tags(where[2]), *tags]
        return OVERFLOW_NAME, b"", [*self.overflow_tags(""), *tags]

    def overflow_for(self, context: Context, origin: bytes | None, mtype: bytes) -> tuple[bytes, bytes, list[bytes]]:
        """The (name, host, tags) a new ``context`` beyond its budget would overflow to; nothing changes."""
        return self.overflow_context(self._overflow_where(context, self.sender_of(context, origin), mtype))

    def _count_overflow(self, sender: str, name: str, now: float) -> None:
        row = (sender, name)
        entry = self.offenders.get(row)
        if entry is None:
            if len(self.offenders) >= MAX_OFFENDER_ROWS:
                row = (sender, OTHER)
                entry = self.offenders.get(row)
            if entry is None:
                entry = self.offenders[row] = [0, now]
        entry[0] += 1
        entry[1] = now

    def expire(self, keys: Iterable[int]) -> int:
        """Contexts the aggregator no longer holds: they stop counting against their budgets.

        Returns how many of them the limiter knew (live or overflow contexts).
        """
        live, senders, names = self._live, self._senders, self._names
        released = 0
        for key in keys:
            entry = live.pop(key, None)
            if entry is None:
                where = self._overflow_keys.pop(key, None)
                if where is not None:
                    del self._overflow[where]
                    released += 1
                    if where[0] == "name":
                        sender = where[3]
                        left = self._overflow_names[sender] - 1
                        if left:
                            self._overflow_names[sender] = left
                        else:
                            del self._overflow_names[sender]
                continue
            released += 1
            sender, name = entry
            for counts, item in ((senders, sender), (names, name)):
                left = counts[item] - 1
                if left:
                    counts[item] = left
                else:
                    del counts[item]
        return released

    def top(self, n: int) -> list[tuple[str, str, int]]:
        """The ``n`` (sender, metric name) rows with the most contexts folded into overflow."""
        rows = nlargest(n, self.offenders.items(), key=lambda item: item[1][0])
        return [(sender, name, count) for (sender, name), (count, _last) in rows]

    def new_overflows(self, now: float, top: int) -> list[tuple[str, str, int]]:
        """Overflows since the previous call: the ``top`` largest rows apart, the rest summed under "other".

        Rows whose last overflow is older than ``entry_timeout`` are forgotten.
        """
        fresh = []
        for row, (count, last) in list(self.offenders.items()):
            delta = count - self._reported.get(row, 0)
            if delta:
                fresh.append((delta, row))
                self._reported[row] = count
            elif now - last > self.entry_timeout:
                del self.offenders[row]
                self._reported.pop(row, None)
        fresh.sort(reverse=True)
        report = [(sender, name, delta) for delta, (sender, name) in fresh[:top]]
        rest = sum(delta for delta, _row in fresh[top:])
        if rest:
            report.append((OTHER, OTHER, rest))
        return report

    def table(self) -> dict:
        """Everything the limiter holds, for the admin API."""
        return {
            "limit": self.limit,
            "sender_limit": self.sender_limit,
            "metric_name_limit": self.metric_name_limit,
            "key_tag_name": self.key_tag_name,
            "live_contexts": len(self._live),
            "senders": dict(sorted(self._senders.items())),
            "overflow_contexts": len(self._overflow),
            "overflows": [
                {"sender": sender, "metric_name": name, "contexts": count}
                for sender, name, count in self.top(len(self.offenders))
            ],
        }
