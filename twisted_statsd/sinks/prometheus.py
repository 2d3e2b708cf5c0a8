"""The ``prometheus`` sink: the flushed aggregates as a ``/metrics`` page for Prometheus to scrape.

Flushes are DogStatsD-shaped, so they are translated.  Counters arrive as
rates (count / interval): each point adds ``value * interval`` to a cumulative
counter ``<name>_total``; negative increments would read as resets and are
dropped.  Gauges and sets are gauges, the newest point winning.  Histograms and
timers arrive reduced to ``.max``/``.median``/``.avg``/``.95percentile``
(gauges) and ``.count`` (a counter, ``x_count_total``), since their samples are
gone.  Distributions keep theirs in a sketch and become a summary (quantiles of
the latest flush that had samples; ``_sum``/``_count`` cumulative) or a
histogram (cumulative bucket counts from the sketch bins, each bin at its value
clamped to [min, max], so a sample within 1/128 of a bound may fall on either
side; scaled so that ``+Inf`` equals ``_count``).

Names: characters outside ``[a-zA-Z0-9_]`` become ``_``; a leading digit gets a
``_`` prefix.  Tags become labels: ``k:v`` gives ``k="v"``; a bare tag gives
``k="<bare_tag_value>"`` (``true``: Prometheus takes an empty value as no
label, and ``""`` leaves bare tags out); repeated keys join their sorted values
with ``,``; ``__x`` becomes ``tag__x``; ``le``/``quantile`` on a histogram or
summary become ``exported_le``/``exported_quantile``; the host becomes the
``host_label`` label.  Contexts that end up with one name and label set merge.
A name wanted by two families (a gauge and a counter ``x``, which OpenMetrics
readers both call ``x``; a gauge ``x_count`` beside the summary ``x``) stays
with the first until it expires; the other's points are dropped and counted,
so the page always parses.  Series not updated (zero points included) for
``ttl`` seconds are removed; ``0`` keeps them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import inf, isfinite

from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

from twisted_statsd import _cooperate
from twisted_statsd._cooperate import run_in_slices
from twisted_statsd._http import REQUEST_DEADLINE, CappedSite, SiteService
from twisted_statsd.config import SinkOption
from twisted_statsd.core.model import SERIES_COUNT, SERIES_RATE, FlushBatch
from twisted_statsd.core.sketch import Sketch, value_of
from twisted_statsd.interfaces import IMetricSink

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_QUANTILES", "Outcome", "PrometheusSink", "PrometheusState"]

# The Prometheus client libraries' default buckets, and the usual quantiles.
# Series folded in between two yields of a cooperative update.
UPDATE_STEP = 500
# Steps folded in at once before a Cooperator takes over (5,000 series).
INLINE_STEPS = 10
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# The name and label caches are cleared when they grow past this.
_CACHE_LIMIT = 65536
# Names whose conflicts are logged once each; later ones are only counted.
_LOGGED_CONFLICTS_LIMIT = 1000
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_RESERVED = frozenset(("le", "quantile"))
_SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
    "histogram": ("", "_bucket", "_sum", "_count"),
}


def sanitise_name(name: str) -> str:
    """A valid metric or label name: invalid characters become ``_``, a leading digit is prefixed."""
    name = _INVALID.sub("_", name)
    return "_" + name if not name or name[0].isdigit() else name


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A float as Go's ParseFloat reads it: shortest round-trip repr, ``+Inf``, ``-Inf``, ``NaN``."""
    if isfinite(value):
        return repr(float(value))
    return "NaN" if value != value else ("+Inf" if value > 0 else "-Inf")


def histogram_counts(sketch, bounds) -> list[float]:
    """Cumulative counts of the sketch's samples at or below each bound, scaled to ``sketch.count``."""
    keys, counts = sketch.bins()
    total = sum(counts)
    lo, hi = sketch.min, sketch.max
    result, seen, i = [], 0, 0
    for bound in bounds:
        while i < len(keys) and min(max(value_of(keys[i]), lo), hi) <= bound:
            seen += counts[i]
            i += 1
        result.append(sketch.count * seen / total if total else 0.0)
    return result


def _line(name: str, labels: str, extra: str, value: float) -> str:
    """One sample line; ``extra`` is a label pair added after the series' own."""
    inner = f"{labels},{extra}" if labels and extra else labels or extra
    return f"{name}{{{inner}}} {format_value(value)}\n" if inner else f"{name} {format_value(value)}\n"


@dataclass
class Outcome:
    """What one :meth:`PrometheusState.update` did: points taken, dropped by reason, new conflicts."""

    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)  # (name, kind, holder's kind)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


class _Series:
    """One labelled series: ``value`` for counters and gauges (``ts`` orders gauge points),
    ``count``/``sum``/``values`` (quantiles or bucket counts) for summaries and histograms."""

    __slots__ = ("count", "labels", "seen", "sum", "ts", "value", "values")

    def __init__(self, labels: str, size: int):
        self.labels, self.values, self.ts = labels, [0.0] * size, -inf
        self.value = self.count = self.sum = self.seen = 0.0


class _Family:
    __slots__ = ("help", "kind", "name", "series")

    def __init__(self, name: str, kind: str, help: str):
        self.name, self.kind, self.help = name, kind, help
        self.series: dict[tuple, _Series] = {}


class PrometheusState:
    """The metric families built from flushes, and their text exposition.  Pure: time is passed in.

    Invariants: ``_claims`` maps every sample name a family renders (and the
    family's own name) to that family's name, so no two families share one;
    ``_recent`` holds every series once, keyed (family name, labels), in order
    of last update, so expiry stops at the first live one; ``_page`` caches the
    rendering and is reset by every change.
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        buckets=DEFAULT_BUCKETS,
        quantiles=DEFAULT_QUANTILES,
        distribution_as: str = "summary",
        bare_tag_value: str = "true",
        host_label: str = "host",
        counter_suffix: str = "_total",
    ):
        if distribution_as not in ("summary", "histogram"):
            raise ValueError(f"distribution_as must be 'summary' or 'histogram', not {distribution_as!r}")
        buckets = tuple(sorted({float(b) for b in buckets if b != inf}))
        quantiles = tuple(sorted({float(q) for q in quantiles}))
        if any(b != b for b in buckets) or not all(0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError("buckets must be numbers and quantiles must be in [0, 1]")
        if (host_label and sanitise_name(host_label) != host_label) or _INVALID.search(counter_suffix):
            raise ValueError("host_label must be a valid label name and counter_suffix valid in a name")
        if not ttl >= 0:
            raise ValueError("ttl must be a number of seconds >= 0")
        self.ttl = float(ttl)
        self.buckets, self.quantiles = buckets, quantiles
        self.distribution_as = distribution_as
        self.bare_tag_value, self.host_label, self.counter_suffix = bare_tag_value, host_label, counter_suffix
        self._families: dict[str, _Family] = {}
        self._claims: dict[str, str] = {}
        self._recent: dict[tuple[str, tuple], _Series] = {}
        self._names: dict[tuple[str, str], str] = {}
        self._labels: dict[tuple, tuple] = {}
        # (kind, name, tags, host) -> (family name, labels), the key of ``_recent``: for the
        # contexts of the current update and those of the previous one, so a steady set of
        # contexts is looked up once per flush, whatever its size.
        self._keys: dict[tuple, tuple[str, tuple]] = {}
        self._previous_keys: dict[tuple, tuple[str, tuple]] = {}
        self._logged_conflicts: set[str] = set()
        self._page: bytes | None = None

    def __len__(self) -> int:
        return len(self._recent)

    # -- update -----------------------------------------------------------------

    def update(self, batch: FlushBatch, now: float) -> Outcome:
        """Fold one flush into the families, at once."""
        out = Outcome()
        for _ in self.update_steps(batch, now, out):
            pass
        return out

    def update_steps(self, batch: FlushBatch, now: float, out: Outcome, step: int = UPDATE_STEP):
        """Fold one flush in, yielding every ``step`` series so a Cooperator can slice it."""
        self._previous_keys, self._keys = self._keys, {}
        for done, s in enumerate(batch.series, 1):
            if not done % step:
                yield
            points = s.points
            if len(points) == 1 and s.type == SERIES_RATE:  # a counter of one bucket: nearly every series
                value = points[0][1]
                increment = float(f"{value * s.interval:.15g}") if isfinite(value) else 0.0
                if not isfinite(value):
                    out.drop("non_finite", 1)
                elif increment < 0.0:
                    out.drop("negative_counter", 1)
                else:
                    series = self._series("counter", s.name, s.tags, s.host, now, out, 1)
                    if series:
                        series.value += increment
                continue
            values = [(ts, v) for ts, v in points if isfinite(v)]
            if len(values) < len(s.points):
                out.drop("non_finite", len(s.points) - len(values))
            if s.type in (SERIES_RATE, SERIES_COUNT):
                scale = s.interval if s.type == SERIES_RATE else 1
                # Undo the division by the interval: 15 digits recover the decimal count.
                increments = [float(f"{v * scale:.15g}") for _, v in values]
                good = [v for v in increments if v >= 0.0]
                if len(good) < len(increments):
                    out.drop("negative_counter", len(increments) - len(good))
                series = good and self._series("counter", s.name, s.tags, s.host, now, out, len(good))
                if series:
                    series.value += sum(good)
            elif values:
                series = self._series("gauge", s.name, s.tags, s.host, now, out, len(values))
                if series:
                    ts, value = max(reversed(values), key=lambda p: p[0])  # the last of equals
                    if ts >= series.ts:
                        series.ts, series.value = ts, value
        merged: dict[int, tuple[_Series, Sketch]] = {}
        for sketches in batch.sketches:
            if not sketches.points:
                continue
            target = self._series(
                self.distribution_as, sketches.name, sketches.tags, sketches.host, now, out, len(sketches.points)
            )
            if not target:
                continue
            for _, sketch in sketches.points:
                entry = merged.get(id(target))
                if entry is None:
                    merged[id(target)] = (target, sketch.copy())
                else:
                    entry[1].merge(sketch)
        for series, sketch in merged.values():
            series.count += sketch.count
            series.sum += sketch.sum
            if self.distribution_as == "summary":
                series.values = [sketch.quantile(q) for q in self.quantiles]
            else:
                series.values = [
                    a + b for a, b in zip(series.values, histogram_counts(sketch, self.buckets), strict=False)
                ]

    def _series(self, kind: str, name: str, tags, host: str, now: float, out: Outcome, points: int):
        """The series a context's points go to, created if new and marked as updated at ``now``;
        None (the points counted as dropped) when its name belongs to another family."""
        context = (kind, name, tags, host)
        key = self._keys.get(context)
        if key is None:
            key = self._previous_keys.get(context)
            if key is None:
                key = (self._family_name(kind, name), self._label_pairs(tags, host, kind in ("summary", "histogram")))
            self._keys[context] = key
        family_name, labels = key
        family = self._families.get(family_name)
        if family is None or family.kind != kind:
            holder = self._claim(family_name, kind)
            if holder is not None:
                out.drop("name_conflict", points)
                if family_name not in self._logged_conflicts and len(self._logged_conflicts) < _LOGGED_CONFLICTS_LIMIT:
                    self._logged_conflicts.add(family_name)
                    out.conflicts.append((family_name, kind, holder))
                return None
            family = self._families[family_name] = _Family(family_name, kind, f"DogStatsD {name}")
        series = self._recent.pop(key, None)
        if series is None:
            size = len(self.quantiles) if kind == "summary" else len(self.buckets)
            text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
            series = family.series[labels] = _Series(text, size)
        self._recent[key] = series
        series.seen = now
        out.accepted += points
        self._page = None
        return series

    def _family_name(self, kind: str, name: str) -> str:
        found = self._names.get((kind, name))
        if found is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            found = sanitise_name(name)
            if kind == "counter" and not found.endswith(self.counter_suffix):
                found += self.counter_suffix
            self._names[(kind, name)] = found
        return found

    def _claim(self, family_name: str, kind: str) -> str | None:
        """Claim every sample name of a new family; return the kind of the family in the way, if any."""
        names = self._sample_names(family_name, kind)
        for n in names:
            holder = self._claims.get(n)
            if holder is not None:
                return self._families[holder].kind
        for n in names:
            self._claims[n] = family_name
        return None

    def _sample_names(self, family_name: str, kind: str) -> list[str]:
        """The names a family holds: its samples', and a counter's name without the suffix too,
        since OpenMetrics readers take that as the family name."""
        names = [family_name + suffix for suffix in _SUFFIXES[kind]]
        suffix = self.counter_suffix
        if kind == "counter" and suffix and family_name.endswith(suffix) and family_name != suffix:
            names.append(family_name[: -len(suffix)])
        return names

    def _label_pairs(self, tags, host: str, reserved: bool) -> tuple:
        key = (tags, host, reserved)
        found = self._labels.get(key)
        if found is not None:
            return found
        if len(self._labels) >= _CACHE_LIMIT:
            self._labels.clear()
        values: dict[str, set[str]] = {}
        pairs = [tag.partition(":")[::2] if ":" in tag else (tag, self.bare_tag_value) for tag in tags]
        if host and self.host_label:
            pairs.append((self.host_label, host))
        for name, value in pairs:
            if not value:
                continue
            name = sanitise_name(name)
            if name.startswith("__"):
                name = "tag" + name
            elif reserved and name in _RESERVED:
                name = "exported_" + name
            values.setdefault(name, set()).add(value)
        found = self._labels[key] = tuple((k, ",".join(sorted(values[k]))) for k in sorted(values))
        return found

    # -- expiry and rendering -----------------------------------------------------

    def expire(self, now: float) -> int:
        """Remove the series not updated for ``ttl`` seconds (none when ``ttl`` is 0); return how many."""
        if self.ttl <= 0.0:
            return 0
        stale = []
        for key, series in self._recent.items():
            if now - series.seen < self.ttl:
                break
            stale.append(key)
        for key in stale:
            del self._recent[key]
            family = self._families[key[0]]
            del family.series[key[1]]
            if not family.series:
                del self._families[family.name]
                for name in self._sample_names(family.name, family.kind):
                    del self._claims[name]
        if stale:
            self._page = None
        return len(stale)

    def render(self) -> bytes:
        """The text exposition format (version 0.0.4), families and series in sorted order."""
        if self._page is not None:
            return self._page
        lines = []
        for family_name in sorted(self._families):
            family = self._families[family_name]
            name, kind = family.name, family.kind
            lines += [f"# HELP {name} {escape_help(family.help)} ({kind})\n", f"# TYPE {name} {kind}\n"]
            for labels in sorted(family.series):
                s = family.series[labels]
                if kind in ("counter", "gauge"):
                    lines.append(_line(name, s.labels, "", s.value))
                    continue
                if kind == "summary":
                    lines += [
                        _line(name, s.labels, f'quantile="{format_value(q)}"', v)
                        for q, v in zip(self.quantiles, s.values, strict=False)
                    ]
                else:
                    lines += [
                        _line(name + "_bucket", s.labels, f'le="{format_value(b)}"', v)
                        for b, v in zip((*self.buckets, inf), (*s.values, s.count), strict=False)
                    ]
                lines += [_line(name + "_sum", s.labels, "", s.sum), _line(name + "_count", s.labels, "", s.count)]
        self._page = "".join(lines).encode("utf-8")
        return self._page


# Scrape connections open at once; a scraper needs one.  Slow clients cannot
# hold them: see _http.py for the request deadline and the eviction.
MAX_CONNECTIONS = 64


class _MetricsResource(Resource):
    """Serves the page at ``/metrics``, and 404 everywhere else."""

    isLeaf = True

    def __init__(self, scrape):
        super().__init__()
        self._scrape = scrape

    def render_GET(self, request):
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not found: the metrics are at /metrics\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return self._scrape()


@implementer(IMetricSink)
class PrometheusSink(SiteService):
    """Keeps a :class:`PrometheusState` from the flushes and serves it at ``/metrics`` over HTTP."""

    name = "prometheus"
    log = Logger()

    def __init__(
        self,
        reactor,
        telemetry,
        *,
        port: int = 9102,
        bind_host: str = "127.0.0.1",
        cooperator: Cooperator | None = None,
        _request_deadline: float = REQUEST_DEADLINE,
        **options,
    ):
        """``options`` are :class:`PrometheusState`'s: ttl, buckets, quantiles, distribution_as,
        bare_tag_value, host_label, counter_suffix."""
        self.reactor, self.telemetry = reactor, telemetry
        self._request_deadline = _request_deadline
        self.port, self.bind_host = port, bind_host
        self.state = PrometheusState(**options)
        self._cooperator = cooperator or _cooperate.cooperator(reactor)
        self._tags = ("sink:" + self.name,)

    def describe(self) -> tuple[str, str]:
        return f"sinks: {self.name}", f"listen on http {self.bind_host}:{self.port}"

    def bind(self) -> None:
        """Listen on the endpoint ``tcp:<port>:interface=<bind_host>``.

        A TCP endpoint listens at once, so its Deferred has fired by now and a
        failure (CannotListenError) is raised here, synchronously, as twistd
        expects of a bind.
        """
        self._site = CappedSite(
            _MetricsResource(self.scrape),
            self.reactor,
            MAX_CONNECTIONS,
            count=self._count,
            request_deadline=self._request_deadline,
        )
        description = f"tcp:{self.port}:interface={quoteStringArgument(self.bind_host)}"
        listened: list = []
        serverFromString(self.reactor, description).listen(self._site).addBoth(listened.append)
        if isinstance(listened[0], Failure):
            listened[0].raiseException()
        self._listening = listened[0]
        self.telemetry.set_gauge("sink_queue_size", 0, self._tags)

    def write(self, batch: FlushBatch) -> defer.Deferred | None:
        """Fold a flush into the state: a small one at once, a large one a slice per reactor turn."""
        now = self.reactor.seconds()
        outcome = Outcome()
        d = run_in_slices(self._cooperator, self.state.update_steps(batch, now, outcome), INLINE_STEPS)
        if d is None:
            self._report(outcome, now)
            return None
        return d.addCallback(lambda _: self._report(outcome, now))

    def _count(self, name: str) -> None:
        self.telemetry.incr("sink_" + name, 1, self._tags)

    def _report(self, outcome: Outcome, now: float) -> None:
        self.telemetry.incr("sink_sent", outcome.accepted, self._tags)
        for reason, n in outcome.dropped.items():
            self.telemetry.incr("sink_dropped", n, self._tags + ("reason:" + reason,))
        for name, kind, holder in outcome.conflicts:
            self.log.warn(
                "Prometheus name {name} is already a {holder}; dropping its {kind} points while it lasts",
                name=name,
                kind=kind,
                holder=holder,
                log_category="PROMETHEUS_NAME_CONFLICT",
            )
        self._expire(now)

    def scrape(self) -> bytes:
        """The page for one scrape, after expiring stale series."""
        self._expire(self.reactor.seconds())
        self.telemetry.incr("sink_scrapes", 1, self._tags)
        return self.state.render()

    def _expire(self, now: float) -> None:
        expired = self.state.expire(now)
        if expired:
            self.telemetry.incr("sink_series_expired", expired, self._tags)
        self.telemetry.set_gauge("sink_series", len(self.state), self._tags)

    def stopService(self):
        """Stop listening and close open scrape connections; fires when both are done."""
        super().stopService()
        return self._close_site()


#: Options of a ``prometheus`` entry of ``sinks``: name -> (converter, default).
OPTIONS = {
    "port": (SinkOption.tcp_port, 9102),
    "bind_host": (SinkOption.string, "127.0.0.1"),
    "ttl": (SinkOption.seconds, 300.0),
    "buckets": (SinkOption.numbers, DEFAULT_BUCKETS),
    "quantiles": (SinkOption.percentiles, DEFAULT_QUANTILES),
    "distribution_as": (SinkOption.one_of("summary", "histogram"), "summary"),
    "bare_tag_value": (SinkOption.string, "true"),
    "host_label": (SinkOption.string, "host"),
    "counter_suffix": (SinkOption.string, "_total"),
}

#: The registry's factory: the sink's constructor takes (reactor, telemetry, cooperator=..., **options).
build = PrometheusSink
