"""``/limits``: the context limiter's budgets, live contexts per sender, and every overflow row.

The telemetry carries only the top offenders of each interval; this is the
whole table (bounded by :data:`twisted_statsd.core.limits.MAX_OFFENDER_ROWS`).
"""

from __future__ import annotations

from twisted_statsd.admin._routes import respond


def limits(admin, request) -> bytes:
    pipeline = admin.root.pipeline
    pipeline.fold()
    body = {"context_limiter": None if pipeline.limiter is None else pipeline.limiter.table()}
    rules = pipeline.enricher.tag_rules
    body["tag_filterlist_metrics"] = sorted(rules.filters)
    body["tag_value_limits"] = {
        name or "*": {k.decode(): n for k, n in v.items()} for name, v in rules.value_limits.items()
    }
    return respond(request, body)
