"""The ``console`` sink: the zero-configuration default, a readable table per flush.

It logs through twisted.logger, so under ``twistd -n statsd`` each flush shows
up on the terminal as one compact block: a developer who sends a metric sees
it within one flush interval.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from twisted_statsd.core.model import SERIES_COUNT, SERIES_GAUGE, SERIES_RATE, FlushBatch
from twisted_statsd.interfaces import IMetricSink

#: The ``console`` sink has no options.
OPTIONS: dict = {}

# Rows shown per flush; the rest are summarised in one line.
MAX_ROWS = 200
_TYPE_NAMES = {SERIES_COUNT: "count", SERIES_RATE: "rate", SERIES_GAUGE: "gauge"}


def format_batch(batch: FlushBatch, max_rows: int = MAX_ROWS) -> str:
    """The flush as aligned text rows: name{tags}, type, latest value and point count."""
    rows = []
    for s in sorted(batch.series, key=lambda s: (s.name, s.tags)):
        ts, value = s.points[-1]
        rows.append((_label(s.name, s.tags), _TYPE_NAMES.get(s.type, "?"), f"{value:.6g}", f"@{ts} x{len(s.points)}"))
    for d in sorted(batch.sketches, key=lambda d: (d.name, d.tags)):
        ts, sketch = d.points[-1]
        summary = f"n={sketch.count:g} p50={sketch.quantile(0.5):.6g} max={sketch.max:.6g}"
        rows.append((_label(d.name, d.tags), "dist", summary, f"@{ts} x{len(d.points)}"))
    for e in batch.events:
        rows.append((_label(e.title, e.tags), "event", e.alert_type, f"@{e.timestamp}"))
    for c in batch.service_checks:
        rows.append((_label(c.name, c.tags), "check", str(c.status), f"@{c.timestamp}"))
    header = (
        f"flush: {len(batch.series)} series, {len(batch.sketches)} distributions, "
        f"{len(batch.events)} events, {len(batch.service_checks)} service checks"
    )
    shown = rows[:max_rows]
    widths = [max((len(r[i]) for r in shown), default=0) for i in range(3)]
    lines = [header] + [f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in shown]
    if len(rows) > max_rows:
        lines.append(f"  ... and {len(rows) - max_rows} more")
    return "\n".join(lines)


def _label(name: str, tags) -> str:
    return f"{name}{{{','.join(tags)}}}" if tags else name


@implementer(IMetricSink)
class ConsoleSink(Service):
    """Logs a table of every non-empty flush at info level."""

    name = "console"
    log = Logger()

    def write(self, batch: FlushBatch) -> None:
        if batch:
            self.log.info("{table}", table=format_batch(batch), log_category="FLUSH_TABLE")


def build(reactor, telemetry, *, cooperator) -> ConsoleSink:
    """The registry's factory: the console sink needs neither the reactor nor a Cooperator."""
    return ConsoleSink()
