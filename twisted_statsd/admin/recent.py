"""``/recent`` and ``/drops``: what the live page shows besides the status and the top talkers.

:class:`RecentFlushes` keeps, for the series of the latest flushes, the last
value and the values of the last ``HISTORY`` flushes (the page's sparklines),
and the latest events and service checks.  It only records while someone
watches: each ``/recent`` request keeps it on for ``WATCH_SECONDS``, so a
server whose page nobody opens pays nothing per flush.  A flush is read a
slice at a time; at most ``MAX_SERIES`` series are tracked.  Pure: time is an
argument.
"""

from __future__ import annotations

from collections import deque

from twisted_statsd.admin._routes import count_query, query, respond
from twisted_statsd.core.model import SERIES_COUNT, SERIES_GAUGE, SERIES_RATE

HISTORY = 30
MAX_SERIES = 5000
LATEST_EVENTS = 20
WATCH_SECONDS = 600.0
STEP = 500
MAX_ROWS = 1000
_KINDS = {SERIES_COUNT: "count", SERIES_RATE: "rate", SERIES_GAUGE: "gauge"}


class _Row:
    __slots__ = ("host", "kind", "last", "name", "seen", "tags", "values")

    def __init__(self, name: str, kind: str, tags, host: str):
        self.name, self.kind, self.tags, self.host = name, kind, tags, host
        self.values: deque[float] = deque(maxlen=HISTORY)
        self.last = 0.0
        self.seen = 0.0

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.kind,
            "tags": list(self.tags),
            "host": self.host,
            "last": self.last,
            "last_flush": self.seen,
            "history": list(self.values),
        }


class RecentFlushes:
    """The latest flushes as the page shows them.  Invariant: at most ``MAX_SERIES`` rows."""

    def __init__(self, max_series: int = MAX_SERIES):
        self.max_series = max_series
        self.rows: dict[tuple, _Row] = {}
        self.untracked = 0
        self.events: deque[dict] = deque(maxlen=LATEST_EVENTS)
        self.service_checks: deque[dict] = deque(maxlen=LATEST_EVENTS)
        self.watched_until = 0.0

    def watch(self, now: float) -> None:
        self.watched_until = now + WATCH_SECONDS

    def watched(self, now: float) -> bool:
        return now < self.watched_until

    def steps(self, batch):
        """Record one flush, yielding every ``STEP`` series."""
        now = batch.timestamp
        for e in batch.events:
            self.events.append(
                {"title": e.title, "text": e.text, "tags": list(e.tags), "host": e.host, "timestamp": e.timestamp}
            )
        for c in batch.service_checks:
            self.service_checks.append(
                {"name": c.name, "status": c.status, "message": c.message, "tags": list(c.tags), "host": c.host}
            )
        for done, s in enumerate(batch.series, 1):
            if not done % STEP:
                yield
            if s.points:
                self._record(s.name, _KINDS.get(s.type, "gauge"), s.tags, s.host, s.points[-1][1], now)
        for s in batch.sketches:
            if s.points:
                sketch = s.points[-1][1]
                self._record(s.name, "distribution", s.tags, s.host, sketch.sum / sketch.count, now)

    def _record(self, name: str, kind: str, tags, host: str, value: float, now: float) -> None:
        key = (name, kind, tags, host)
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= self.max_series:
                self.untracked += 1
                return
            row = self.rows[key] = _Row(name, kind, tags, host)
        row.values.append(value)
        row.last, row.seen = value, now

    def search(self, text: str, n: int) -> list[dict]:
        """Up to ``n`` rows whose name or a tag contains ``text``, by name."""
        found = [row for row in self.rows.values() if text in row.name or any(text in tag for tag in row.tags)]
        found.sort(key=lambda row: (row.name, row.tags, row.host))
        return [row.as_dict() for row in found[:n]]


def recent(admin, request) -> bytes:
    n = count_query(request, 200, MAX_ROWS)
    view = admin.recent
    view.watch(admin.reactor.seconds())
    body = {
        "series": view.search(query(request, "q", ""), n),
        "tracked": len(view.rows),
        "untracked": view.untracked,
        "events": list(view.events)[::-1],
        "service_checks": list(view.service_checks)[::-1],
    }
    return respond(request, body)


def drops(admin, request) -> bytes:
    from twisted_statsd.admin.status import drops as counted

    recent_reports = list(admin.root.pipeline.reporter.recent)[-50:][::-1]
    body = {
        "dropped": counted(admin.root.telemetry),
        "recent": [
            {"reason": reason, "message": message, "line": sample.decode("utf-8", "replace")}
            for reason, message, sample in recent_reports
        ],
    }
    return respond(request, body)
