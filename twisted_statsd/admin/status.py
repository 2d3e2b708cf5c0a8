"""``/health``, ``/ready`` and ``/status``: is the server running, may it take traffic, and how is it doing.

``/health`` is 200 while the listeners are bound and the flush loop runs, and
503 while the server starts, stops (draining its buffers, running the final
flush) or has lost its flush loop.  ``/ready`` is ``/health`` and, in
addition, 503 while the memory limiter refuses new contexts.
"""

from __future__ import annotations

import twisted_statsd
from twisted_statsd.admin._routes import respond
from twisted_statsd.telemetry import DROPPED

STARTING, RUNNING, STOPPING, DEGRADED = "starting", "running", "stopping", "degraded"


def state(admin) -> str:
    """``running``, or why not: ``starting``, ``stopping`` or ``degraded`` (a listener unbound, no flush loop)."""
    root = admin.root
    if not root.running:
        return STOPPING if admin.started_at is not None else STARTING
    if not root.flusher.looping or not all(listener.bound for listener in root.listeners):
        return DEGRADED
    return RUNNING


def health(admin, request) -> bytes:
    current = state(admin)
    return respond(request, {"status": current}, 200 if current == RUNNING else 503)


def ready(admin, request) -> bytes:
    current = state(admin)
    reasons = [] if current == RUNNING else [current]
    if admin.root.pipeline.refuse_new_contexts:
        reasons.append("memory_hard_limit")
    return respond(request, {"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)


def listeners(root) -> list[dict]:
    found = []
    if root.udp is not None and root.udp.bound:
        host = root.udp.address
        found.append(
            {"transport": "udp", "address": f"{host.host}:{host.port}", "workers": root.config.dogstatsd_workers}
        )
    if root.unixgram is not None:
        found.append({"transport": "unixgram", "address": root.unixgram.path, "bound": root.unixgram.bound})
    if root.unixstream is not None:
        found.append({"transport": "unixstream", "address": root.unixstream.path, "bound": root.unixstream.bound})
    return found


def sinks(root) -> list[dict]:
    """Per sink: what its telemetry says (sent, dropped by reason, queue gauges, writes, write errors)."""
    telemetry = root.telemetry
    found = []
    for sink in root.flusher.sinks:
        tag = "sink:" + sink.name
        dropped: dict[str, int] = {}
        for (name, tags), value in telemetry.counters.items():
            if name == "sink_dropped" and tags and tags[0] == tag:
                reason = next((t.split(":", 1)[1] for t in tags[1:] if t.startswith("reason:")), "unspecified")
                dropped[reason] = dropped.get(reason, 0) + value
        queue = {
            name.removeprefix("sink_queue").lstrip("_") or "size": value
            for (name, tags), value in telemetry.gauges.items()
            if name.startswith("sink_queue") and tags == (tag,)
        }
        found.append(
            {
                "name": sink.name,
                "sent": telemetry.get("sink_sent", tag),
                "dropped": dropped,
                "queue": queue,
                "writes": telemetry.get("sink_writes", tag),
                "write_errors": telemetry.get("sink_write_errors", tag),
            }
        )
    return found


def drops(telemetry) -> dict[str, int]:
    return {
        tags[0].removeprefix("reason:"): value
        for (name, tags), value in sorted(telemetry.counters.items())
        if name == DROPPED and tags
    }


def memory(root) -> dict:
    monitor = root.memory
    result = {"limiter_enabled": monitor is not None, "refusing_new_contexts": root.pipeline.refuse_new_contexts}
    if monitor is not None:
        result.update(level=monitor.state.level, ratio=monitor.state.ratio, read_delay=monitor.state.delay)
    return result


def status(admin, request) -> bytes:
    root = admin.root
    root.pipeline.fold()  # staged samples are contexts too
    now = admin.reactor.seconds()
    body = {
        "version": twisted_statsd.__version__,
        "state": state(admin),
        "uptime_seconds": None if admin.started_at is None else now - admin.started_at,
        "listeners": listeners(root),
        "rates": admin.rates.per_second(now, admin.totals()),
        "contexts": root.aggregator.context_count(),
        "sinks": sinks(root),
        "dropped": drops(root.telemetry),
        "memory": memory(root),
        "last_flush_seconds": root.flusher.last_duration,
        "metrics_stats_enabled": admin.stats_enabled,
    }
    return respond(request, body)
