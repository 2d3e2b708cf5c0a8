"""The sink registry: each sink module declares its options beside its class, and validating a
configuration imports only the configured sinks' modules."""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib import import_module

import pytest

from twisted_statsd.sinks import SINK_MODULES, sink_options
from twisted_statsd.sinks._http_sink import DELIVERY_DEFAULTS


@pytest.mark.parametrize("kind", list(SINK_MODULES))
def test_each_sink_module_declares_options_and_a_builder(kind):
    module = import_module(SINK_MODULES[kind])
    assert isinstance(module.OPTIONS, dict)
    parameters = inspect.signature(module.build).parameters
    assert list(parameters)[:2] == ["reactor", "telemetry"]
    assert parameters["cooperator"].kind is inspect.Parameter.KEYWORD_ONLY


# Where a sink hands options on: the Prometheus sink's go to its state.
_OPTIONS_HANDED_TO = {"prometheus": "PrometheusState"}


@pytest.mark.parametrize("kind", [k for k in SINK_MODULES if sink_options(k)])
def test_the_schema_defaults_are_the_sinks_own(kind):
    """Built alone (tests, embedders) a sink has the defaults a configured one gets."""
    module = import_module(SINK_MODULES[kind])
    defaults = {}
    for cls in (module.build, getattr(module, _OPTIONS_HANDED_TO.get(kind, "build"))):
        for option, parameter in inspect.signature(cls).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:  # an HTTP sink's delivery tuning
                for name, value in DELIVERY_DEFAULTS.items():
                    defaults.setdefault(name, value)
            defaults.setdefault(option, parameter.default)
    for option, (_convert, default) in sink_options(kind).items():
        if default is not None:  # None: left to the sink (datadog fills it from the top-level keys)
            assert defaults[option] == default, option


def _imported_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_validating_a_config_imports_only_the_configured_sinks():
    modules = _imported_after(
        "from twisted_statsd.config import load_config\nload_config(data={'sinks': [{'type': 'jsonl'}]})"
    )
    assert "twisted_statsd.sinks.jsonl" in modules
    assert not {"twisted_statsd.sinks.datadog", "twisted_statsd.sinks.prometheus", "twisted.web.client"} & modules
