"""Per-line size limits through the whole intake: each is a counted drop, the rest of the packet goes on.

The limits themselves (exact bounds, reasons) are tested on the parser in
``test_parser.py``; here the server's own pipeline, as ``build_pipeline``
wires it, must count each refusal under ``dropped{reason:...}`` whether the
line takes the full parse or the cached fast path.
"""

from __future__ import annotations

import pytest

from twisted_statsd.config import load_config
from twisted_statsd.core.parser import (
    MAX_EVENT_TEXT_LENGTH,
    MAX_EVENT_TITLE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SERVICE_CHECK_MESSAGE_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_VALUES,
)
from twisted_statsd.service import build_pipeline

NOW = 1_000_001.0

OVER_LIMIT = [
    (b"n" * (MAX_NAME_LENGTH + 1) + b":1|c", "name_too_long"),
    (b"_sc|" + b"n" * (MAX_NAME_LENGTH + 1) + b"|0", "name_too_long"),
    (b"m:1|c|#" + b",".join(b"t%d" % i for i in range(MAX_TAGS + 1)), "too_many_tags"),
    (b"m:1|g|#" + b"k" * (MAX_TAG_LENGTH + 1), "tag_too_long"),
    (b"_sc|n|0|#" + b"k" * (MAX_TAG_LENGTH + 1), "tag_too_long"),
    (b"m:" + b"1:" * (MAX_VALUES + 1) + b"|h", "too_many_values"),
    (b"_e{%d,1}:%s|x" % (MAX_EVENT_TITLE_LENGTH + 1, b"t" * (MAX_EVENT_TITLE_LENGTH + 1)), "event_title_too_long"),
    (b"_e{1,%d}:t|%s" % (MAX_EVENT_TEXT_LENGTH + 1, b"x" * (MAX_EVENT_TEXT_LENGTH + 1)), "event_text_too_long"),
    (b"_sc|n|0|m:" + b"x" * (MAX_SERVICE_CHECK_MESSAGE_LENGTH + 1), "service_check_message_too_long"),
]


def pipeline():
    return build_pipeline(load_config(data={"hostname": "h"}))


@pytest.mark.parametrize("line, reason", OVER_LIMIT)
def test_a_line_over_a_limit_is_counted_and_its_packet_neighbours_are_kept(line, reason):
    p = pipeline()
    p.process([b"good.a:1|c\n" + line + b"\ngood.b:2|g|#x:y"], NOW)
    p.fold()
    assert p.telemetry.dropped(reason) == 1
    assert p.telemetry.total_dropped() == 1
    assert p.telemetry.get("metrics") == 2


def test_too_many_packed_values_are_refused_on_the_fast_path_too():
    """A shape learnt from a short line stages later values unparsed; the fold still applies the limit."""
    p = pipeline()
    p.process([b"h:1:2|h"], NOW)
    p.process([b"h:" + b"1:" * (MAX_VALUES + 1) + b"|h\nh:3|h"], NOW)
    p.fold()
    assert p.telemetry.dropped("too_many_values") == 1
    assert p.telemetry.get("metrics") == 3
