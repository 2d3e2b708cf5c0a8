"""Sinks: where flushed aggregates go.  Each sink is a Service providing IMetricSink."""

from __future__ import annotations

from twisted_statsd.sinks.console import ConsoleSink
from twisted_statsd.sinks.jsonl import JsonlSink


def build_sink(sink_config, reactor):
    """Build the sink one ``sinks`` entry describes (validated by the config loader)."""
    options = dict(sink_config.options)
    if sink_config.type == "jsonl":
        return JsonlSink(reactor, **options)
    if sink_config.type == "console":
        return ConsoleSink()
    raise ValueError(f"unknown sink type {sink_config.type!r}")
