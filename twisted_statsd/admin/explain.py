"""``/explain?metric=NAME`` or ``/explain?line=LINE``: what the server does with one metric.

The answer walks the same steps as intake, with the server's own parser,
mapper, enricher and aggregator settings: parse, mapper (which profile and
which of its mappings fired, and the result), namespace, block list, host and
tags after enrichment, the memory limiter's decision, how the type is
aggregated and emitted, when the context expires, and the latest problems
reported for lines of that name, with the lines.  Nothing is ingested.
A bare ``metric`` is explained as the line ``NAME:1|TYPE``, ``TYPE`` from the
``type`` parameter, else from a live context of that name, else ``g``.
"""

from __future__ import annotations

from twisted_statsd.admin._routes import BadRequest, optional_query, respond
from twisted_statsd.admin.contexts import live_contexts
from twisted_statsd.core import parser
from twisted_statsd.core.aggregator import BUCKET_SECONDS
from twisted_statsd.core.mapper import MetricMapper
from twisted_statsd.core.model import COUNTER, GAUGE, HISTOGRAM, METRIC_TYPE_NAMES, METRIC_TYPES, SET, TIMING

MAX_INPUT = 4096


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _line(admin, request) -> bytes:
    line, name = optional_query(request, "line"), optional_query(request, "metric")
    if (line is None) == (name is None):
        raise BadRequest("give exactly one of metric=NAME or line=LINE")
    if line is not None:
        if len(line) > MAX_INPUT:
            raise BadRequest(f"the line is longer than {MAX_INPUT} characters")
        return line.encode("utf-8")
    if not name or len(name) > MAX_INPUT or any(c in name for c in ":|\n"):
        raise BadRequest("metric must be a non-empty name without ':', '|' or newlines")
    mtype = optional_query(request, "type")
    if mtype is None:
        mtype = next((kind for context, kind, _ in _named(admin, name)), "gauge")
        mtype = {"counter": "c", "gauge": "g", "set": "s", "histogram": "h", "distribution": "d"}[mtype]
    if mtype.encode() not in METRIC_TYPES:
        raise BadRequest("type must be one of c, g, s, h, ms, d")
    return f"{name}:1|{mtype}".encode()


def _named(admin, name: str):
    admin.root.pipeline.fold()
    for item in live_contexts(admin.root.aggregator, name):
        if item is not None and item[0].name == name:
            yield item


def mapper_decision(profiles, name: bytes) -> dict:
    """Which profile applies to ``name`` and which of its mappings fired (DogStatsD: the first profile
    whose prefix matches is the only one tried; its mappings in order)."""
    if not profiles:
        return {"configured": False}
    for profile in profiles:
        prefix = str(profile.get("prefix", ""))
        if name.startswith(b"" if prefix == "*" else prefix.encode()):
            for index, mapping in enumerate(profile.get("mappings") or ()):
                single = MetricMapper([{"name": profile["name"], "prefix": prefix, "mappings": [mapping]}], 0)
                result = single.map(name)
                if result is not None:
                    return {
                        "configured": True,
                        "profile": profile["name"],
                        "mapping": index,
                        "match": mapping.get("match"),
                        "match_type": mapping.get("match_type") or "wildcard",
                        "name": _text(result[0]),
                        "tags": [_text(t) for t in result[1]],
                    }
            return {"configured": True, "profile": profile["name"], "mapping": None}
    return {"configured": True, "profile": None}


def emission(config, mtype: bytes, name: str, copy) -> dict:
    """How a context of ``mtype`` is aggregated per 10 s bucket and what the flush emits."""
    if mtype == COUNTER:
        found = {
            "aggregation": "sum of the values, each divided by its sample rate",
            "series": [{"name": name, "type": "rate", "value": f"sum / {BUCKET_SECONDS} (per second)"}],
            "zero_filled_for_seconds": config.dogstatsd_expiry_seconds,
        }
    elif mtype == GAUGE:
        found = {"aggregation": "the last value received", "series": [{"name": name, "type": "gauge"}]}
    elif mtype == SET:
        found = {
            "aggregation": "the number of distinct members",
            "series": [{"name": name, "type": "gauge"}],
        }
    elif mtype in (HISTOGRAM, TIMING):
        series = []
        for aggregate in config.histogram_aggregates:
            kind = "rate" if aggregate == "count" else "gauge"
            series.append({"name": f"{name}.{aggregate}", "type": kind})
        for p in config.histogram_percentiles:
            series.append({"name": f"{name}.{int(p * 100 + 0.5)}percentile", "type": "gauge"})
        found = {
            "aggregation": "every sample kept, weighted by 1 / sample rate",
            "percentiles_method": "nearest rank over the weighted samples (DogStatsD's rule)",
            "series": series,
        }
    else:
        found = {
            "aggregation": "a sketch with 1/128 relative accuracy (the agent's), exact count, sum, min and max",
            "series": [{"name": name, "type": "sketch"}],
        }
    if copy is not None:
        found["copied_to_distribution"] = copy.name
    return found


def context_limiter_decision(limiter, context, mtype: bytes) -> dict:
    """What the context limiter does with ``context`` from a sender with no detected container."""
    if limiter is None or not limiter.enabled:
        return {"enabled": False, "decision": "counted: no budget is set"}
    found: dict = {"enabled": True, "sender": limiter.sender_of(context, None), "live_contexts": len(limiter)}
    if limiter.knows(context):
        found["decision"] = "counted: a live context"
        return found
    exceeded = limiter.verdict(context, None)
    if exceeded is None:
        found["decision"] = "counted: a new context within its budgets"
    else:
        found["decision"] = f"overflow: {exceeded} reached; samples go to the overflow context"
        name, host, tags = limiter.overflow_for(context, None, mtype)
        found["overflow_context"] = {
            "name": _text(name),
            "host": _text(host),
            "tags": sorted(tag.decode("utf-8", "replace") for tag in tags),
        }
    return found


def explain(admin, request) -> bytes:
    root = admin.root
    enricher, config = root.enricher, root.config
    line = _line(admin, request)
    body: dict = {"line": _text(line)}
    raw_name = line.partition(b":")[0]
    body["recent_drops"] = [
        {"reason": reason, "message": message, "line": _text(sample)}
        for reason, message, sample in root.pipeline.reporter.recent
        if sample.partition(b":")[0] == raw_name
    ][-10:]
    try:
        message = parser.parse_metric(line, timestamps=config.dogstatsd_no_aggregation_pipeline)
    except parser.ParseError as e:
        body.update(accepted=False, parse_error={"reason": e.reason, "message": e.message})
        return respond(request, body)
    body["parsed"] = {
        "name": _text(message.name),
        "type": METRIC_TYPE_NAMES[message.type],
        "sample_rate": message.rate,
        "tags": [_text(t) for t in message.tags],
        "timestamp": message.timestamp,
    }
    mapped = mapper_decision(root.mapper_profiles, message.name)
    body["mapper"] = mapped
    name = mapped.get("name", _text(message.name))
    body["namespace"] = {
        "namespace": _text(enricher.namespace),
        "applied": bool(enricher.namespace) and not name.encode().startswith(enricher.namespace_exclusions),
    }
    target = enricher.metric_target(message, learn=False)
    if target is None:
        body.update(accepted=False, blocked=True)
        return respond(request, body)
    context = target.context
    body["blocked"] = False
    body["context"] = {"name": context.name, "host": context.host, "tags": list(context.tags)}
    root.pipeline.fold()
    known = root.aggregator.knows(context, admin.reactor.seconds())
    refusing = root.pipeline.refuse_new_contexts
    body["limiter"] = {
        "refusing_new_contexts": refusing,
        "context_live": known,
        "decision": "refused: memory hard limit, new context" if refusing and not known else "accepted",
    }
    body["accepted"] = not (refusing and not known)
    body["context_limiter"] = context_limiter_decision(root.pipeline.limiter, context, target.type)
    if message.timestamp and config.dogstatsd_no_aggregation_pipeline:
        body["emission"] = {
            "aggregation": "none: a timestamped sample is passed through as it is (counters and gauges only)",
            "series": [{"name": context.name, "type": "count" if target.type == COUNTER else "gauge"}],
        }
    else:
        body["emission"] = emission(config, target.type, context.name, target.copy)
    body["expiry"] = {
        "bucket_seconds": BUCKET_SECONDS,
        "counter_zero_fill_seconds": config.dogstatsd_expiry_seconds if target.type == COUNTER else 0,
        "shape_cache_seconds": config.dogstatsd_context_expiry_seconds,
    }
    return respond(request, body)
