"""The README keeps up with the code: every configuration key and every sink option is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from twisted_statsd.config import _ALIASES, _FIELDS
from twisted_statsd.sinks import SINK_MODULES, sink_options

README = (Path(__file__).parents[2] / "README.md").read_text()


def documented_names(text: str) -> set[str]:
    """Names written as `code` or as YAML keys (``name:``, ``- name:``)."""
    return set(re.findall(r"`([a-z_]+)`", text)) | set(re.findall(r"^\s*(?:- )?([a-z_]+):", text, re.M))


def sink_section(kind: str) -> str:
    """The README text about one sink type: its own heading's section (console and jsonl share 'Sinks')."""
    heading = "### Sinks" if kind in ("console", "jsonl") else f"#### `{kind}`"
    start = README.index(heading)
    end = README.index("\n#", start + len(heading))
    return README[start:end]


def test_every_configuration_key_is_documented():
    names = documented_names(README) | {"histogram_copy_to_distribution_prefix"}  # written `…` / `_prefix`
    assert sorted((set(_FIELDS) | set(_ALIASES)) - names) == []


@pytest.mark.parametrize("kind", sorted(SINK_MODULES))
def test_every_sink_option_is_documented_in_its_section(kind):
    assert sorted(set(sink_options(kind)) - documented_names(sink_section(kind))) == []
