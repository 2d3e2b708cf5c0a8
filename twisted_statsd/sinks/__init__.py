"""Sinks: where flushed aggregates go.  Each sink is a Service providing IMetricSink."""

from __future__ import annotations

from twisted_statsd.sinks.console import ConsoleSink
from twisted_statsd.sinks.jsonl import JsonlSink


def build_sink(sink_config, reactor, telemetry, cooperator=None):
    """Build the sink one ``sinks`` entry describes (validated by the config loader).

    Backends are imported only when configured, so a server that writes JSON
    lines never loads the HTTP client or the Prometheus renderer.
    """
    options = dict(sink_config.options)
    kind = sink_config.type
    if kind == "console":
        return ConsoleSink()
    if kind == "jsonl":
        return JsonlSink(reactor, telemetry, cooperator=cooperator, **options)
    if kind == "prometheus":
        from twisted_statsd.sinks.prometheus import PrometheusSink

        return PrometheusSink(reactor, telemetry, cooperator=cooperator, **options)
    if kind == "graphite":
        from twisted_statsd.sinks.graphite import GraphiteSink

        return GraphiteSink(reactor, telemetry, cooperator=cooperator, **options)
    if kind == "datadog":
        from twisted_statsd.sinks.datadog import DatadogSink

        return DatadogSink(reactor, telemetry, cooperator=cooperator, **options)
    if kind == "otlp":
        from twisted_statsd.sinks.otlp import OtlpSink

        return OtlpSink(reactor, telemetry, cooperator=cooperator, **options)
    raise ValueError(f"unknown sink type {kind!r}")
