"""Sinks: where flushed aggregates go.  Each sink is a Service providing IMetricSink.

The registry: every sink type names the module that holds it.  That module
declares, beside its sink class, ``OPTIONS`` (``{name: (converter, default)}``,
which the config loader validates ``sinks`` entries with) and ``build``, called
as ``build(reactor, telemetry, cooperator=..., **options)`` (mostly the class).
Modules are imported only when a sink of their type is configured, so a server
that writes JSON lines never loads the HTTP client, and this package imports
no Twisted.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any

__all__ = ["SINK_MODULES", "build_sink", "sink_options"]

#: Sink type -> the module that declares it, in the order error messages list them.
SINK_MODULES = {
    "console": "twisted_statsd.sinks.console",
    "jsonl": "twisted_statsd.sinks.jsonl",
    "prometheus": "twisted_statsd.sinks.prometheus",
    "graphite": "twisted_statsd.sinks.graphite",
    "datadog": "twisted_statsd.sinks.datadog",
    "otlp": "twisted_statsd.sinks.otlp",
}


def _module(kind: str) -> ModuleType:
    return import_module(SINK_MODULES[kind])


def sink_options(kind: str) -> dict[str, tuple[Any, Any]]:
    """The option schema of a sink type: ``{name: (converter, default)}``."""
    return _module(kind).OPTIONS


def build_sink(sink_config, reactor, telemetry, cooperator=None):
    """Build the sink one ``sinks`` entry describes (validated by the config loader).

    ``cooperator`` is the server's shared one; a sink left without makes its own.
    """
    return _module(sink_config.type).build(reactor, telemetry, cooperator=cooperator, **sink_config.options)
