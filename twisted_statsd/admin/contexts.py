"""``/contexts?prefix=...``: every live context as JSON lines, streamed a slice at a time.

The pipeline folds its staged samples first; then the held buckets and live
counters are snapshotted as lists (one reference per context) and rendered a
few hundred contexts per reactor turn through a Cooperator, so intake keeps
running during a dump of 100,000 contexts.  A context held in several buckets
is written once, with its latest sample time; distributions carry no sample
time (``last_seen`` is null).  A client that disconnects stops the dump.
"""

from __future__ import annotations

import json

from twisted.web.server import NOT_DONE_YET

from twisted_statsd.admin._routes import query
from twisted_statsd.core.aggregator import Counter, Gauge, Histogram, Set
from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, HISTOGRAM, SET

# Contexts rendered between two yields.
STEP = 200

_TYPES = {Counter: "counter", Gauge: "gauge", Set: "set", Histogram: "histogram"}
TYPE_CODES = {
    "counter": COUNTER,
    "gauge": GAUGE,
    "set": SET,
    "histogram": HISTOGRAM,
    "distribution": DISTRIBUTION,
}


def _line(context, kind: str, last) -> bytes:
    record = {"name": context.name, "type": kind, "tags": list(context.tags), "host": context.host, "last_seen": last}
    return json.dumps(record).encode("utf-8") + b"\n"


def live_contexts(aggregator, prefix: str = ""):
    """Yield (context, type, last seen) once per live context, then None after every ``STEP`` looked at.

    None marks where the caller may give the reactor back.
    """
    buckets, counters = aggregator.held()
    seen: set[object] = set()
    entries = []
    for bucket in reversed(buckets):  # newest first: its sample time is the latest
        entries.append(list(bucket.metrics.values()))
        entries.append([(context, None) for context, _sketch in bucket.sketches.values()])
    entries.append(counters)
    looked = 0
    for group in entries:
        for entry in group:
            looked += 1
            if not looked % STEP:
                yield None
            if type(entry) is tuple:
                context, kind, last = entry[0], "distribution", None
                key = ("d", context.key)
            else:
                context, kind, last = entry.context, _TYPES[type(entry)], entry.last
                key = context.key
            if key in seen or not context.name.startswith(prefix):
                continue
            seen.add(key)
            yield context, kind, last


def _steps(request, found, finished: list):
    for item in found:
        if finished:
            return
        if item is None:
            yield
        else:
            request.write(_line(*item))


def dump(admin, request):
    prefix = query(request, "prefix", "")
    admin.root.pipeline.fold()
    found = live_contexts(admin.root.aggregator, prefix)
    request.setHeader(b"Content-Type", b"application/x-ndjson")
    finished: list = []
    request.notifyFinish().addBoth(finished.append)
    done = admin.cooperator.coiterate(_steps(request, found, finished))

    def end(_):
        if not finished:
            request.finish()

    def failed(failure):
        admin.log.failure("Context dump failed", failure)
        if not finished:
            request.loseConnection()

    done.addCallbacks(end, failed)
    return NOT_DONE_YET
