"""``/stats``, ``/stats/top``, ``/stats/enable``, ``/stats/disable``: per-metric statistics and top talkers.

The table itself is :class:`twisted_statsd.core.stats.MetricStats`; the
admin service feeds it while statistics are on.
"""

from __future__ import annotations

from twisted_statsd.admin._routes import BadRequest, count_query, query, respond
from twisted_statsd.core.stats import ORDERINGS

MAX_TOP = 1000


def _summary(admin) -> dict:
    admin.merge_stats()
    stats = admin.stats
    return {
        "enabled": admin.stats_enabled,
        "since": stats.since,
        "names": len(stats.names),
        "untracked_samples": stats.untracked_samples,
    }


def everything(admin, request) -> bytes:
    body = _summary(admin)
    body["metrics"] = [admin.stats.names[name].as_dict(name) for name in sorted(admin.stats.names)]
    return respond(request, body)


def top(admin, request) -> bytes:
    by = query(request, "by", "contexts")
    if by not in ORDERINGS:
        raise BadRequest(f"by must be one of {', '.join(ORDERINGS)}")
    n = count_query(request, 20, MAX_TOP)
    body = _summary(admin)
    body.update(by=by, n=n, metrics=admin.stats.top(by, n))
    return respond(request, body)


def enable(admin, request) -> bytes:
    admin.set_stats(True)
    return respond(request, _summary(admin))


def disable(admin, request) -> bytes:
    admin.set_stats(False)
    return respond(request, _summary(admin))
