"""Unit tests for twisted_statsd.core.parser: the DogStatsD wire format as bytes.

The spec's test vectors (dogstatsd-spec.md §1.7, §1.9, §1.10, §1.11) are
reproduced group by group, followed by edge cases of our own and property
tests.  No reactor is involved: the parser is pure.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_statsd.core.model import (
    COUNTER,
    DISTRIBUTION,
    GAUGE,
    HISTOGRAM,
    SET,
    TIMING,
    EventMessage,
    MetricMessage,
    ServiceCheckMessage,
)
from twisted_statsd.core.parser import (
    EVENT,
    MAX_EVENT_TEXT_LENGTH,
    MAX_EVENT_TITLE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SERVICE_CHECK_MESSAGE_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_VALUES,
    METRIC,
    REASONS,
    SERVICE_CHECK,
    ParseError,
    message_kind,
    parse_event,
    parse_float,
    parse_metric,
    parse_service_check,
    parse_tags,
    parse_values,
    split_lines,
)

UNICODE_NAME = "♬†øU†øU¥ºuT0♪".encode()
CONTAINER_ID = b"2a25f7fc8fbf573d62053d7263dd2d440c07b6ab4d2b107e50b0d4df1f2ee15f"


def parse_line(line: bytes, **options):
    """Route a line the way the worker does and parse it."""
    kind = message_kind(line)
    if kind == EVENT:
        return parse_event(line, origin_client=options.get("origin_client", False))
    if kind == SERVICE_CHECK:
        return parse_service_check(line, origin_client=options.get("origin_client", False))
    return parse_metric(line, **options)


def parse_packet(packet: bytes, eol_required: bool = False) -> list:
    """Split a packet and parse every line, dropping the bad ones as the server does."""
    lines, _ = split_lines(packet, eol_required)
    parsed = []
    for line in lines:
        try:
            parsed.append(parse_line(line))
        except ParseError:
            pass
    return parsed


def samples(messages: list) -> list[tuple[bytes, float]]:
    """Expand parsed metrics into (name, value) samples, one per packed value."""
    return [(m.name, v) for m in messages if isinstance(m, MetricMessage) for v in m.values]


def same_float(a: float, b: float) -> bool:
    """Equality that also tells NaN and the sign of zero apart."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


# --- spec §1.9: metric parser vectors ----------------------------------------------

# spec §1.9: (line, type, values, set_member, tags)
METRIC_OK = [
    (b"daemon:666|g", GAUGE, (666.0,), None, []),
    (b"daemon:666:777|g", GAUGE, (666.0, 777.0), None, []),
    (b"daemon:21|c", COUNTER, (21.0,), None, []),
    (b"daemon:666:777|c", COUNTER, (666.0, 777.0), None, []),
    (b"custom_counter:1|c|#protocol:http,bench", COUNTER, (1.0,), None, [b"protocol:http", b"bench"]),
    (b"daemon:21|h", HISTOGRAM, (21.0,), None, []),
    (b"daemon:21:22|h", HISTOGRAM, (21.0, 22.0), None, []),
    (b"daemon:21|ms", TIMING, (21.0,), None, []),
    (b"daemon:21:22|ms", TIMING, (21.0, 22.0), None, []),
    (b"daemon:abc|s", SET, (), b"abc", []),
    (b"daemon:abc:def|s", SET, (), b"abc:def", []),
    (b"daemon:" + UNICODE_NAME + b"|s", SET, (), UNICODE_NAME, []),
    (b"daemon:3.5|d", DISTRIBUTION, (3.5,), None, []),
    (b"daemon:3.5:4.5|d", DISTRIBUTION, (3.5, 4.5), None, []),
    (
        b"daemon:666|g|#sometag1:somevalue1,sometag2:somevalue2",
        GAUGE,
        (666.0,),
        None,
        [b"sometag1:somevalue1", b"sometag2:somevalue2"],
    ),
    (b"daemon:666|g|#", GAUGE, (666.0,), None, []),
    (b"daemon:666|g|m:test", GAUGE, (666.0,), None, []),
]


@pytest.mark.parametrize("line, metric_type, values, set_member, tags", METRIC_OK)
def test_metric_vectors_parse(line, metric_type, values, set_member, tags):
    """Spec §1.9: valid metric lines give their type, values or set member, and tags."""
    message = parse_metric(line)
    assert message.type is metric_type
    assert message.values == values
    assert message.set_member == set_member
    assert message.tags == tags
    assert message.rate == 1.0
    assert message.timestamp == 0
    assert message.container_id is None


def test_metric_basic_fields():
    """Spec §1.9: `daemon:666|g` is gauge daemon=666, rate 1, no tags, no timestamp."""
    message = parse_metric(b"daemon:666|g")
    assert (message.name, message.type, message.values) == (b"daemon", GAUGE, (666.0,))
    assert (message.rate, message.tags, message.timestamp) == (1.0, [], 0)


def test_metric_sample_rate():
    """Spec §1.9: `@0.21` sets the sample rate."""
    assert parse_metric(b"daemon:666|g|@0.21").rate == 0.21


def test_metric_unicode_name_and_tag_kept_as_bytes():
    """Spec §1.9: unicode names and tags are kept exactly as sent."""
    tag = "intitulé:T0µ".encode()
    message = parse_metric(UNICODE_NAME + b":666|g|#" + tag)
    assert message.name == UNICODE_NAME
    assert message.tags == [tag]


# spec §1.9: error vectors, with the reason we give each one.
METRIC_ERRORS = [
    (b"daemon:666", "metric_no_pipe"),
    (b"daemon:666|", "metric_bad_type"),
    (b"daemon:|g", "metric_bad_name_value"),
    (b":666|g", "metric_bad_name_value"),
    (b"abc666|g", "metric_bad_name_value"),
    (b"daemon:abc|g", "metric_bad_value"),
    (b"daemon:666|unknown", "metric_bad_type"),
    (b"daemon:666|g|@abc", "metric_bad_rate"),
    (b"metric:1234|g|#onetag|TABCD", "metric_bad_timestamp"),
    (b"metric:1234|g|#onetag|T", "metric_bad_timestamp"),
    (b"metric:1234|g|#onetag|T-102348932", "metric_bad_timestamp"),
]


@pytest.mark.parametrize("line, reason", METRIC_ERRORS)
def test_metric_error_vectors(line, reason):
    """Spec §1.9: malformed metric lines are rejected with a stable reason."""
    with pytest.raises(ParseError) as caught:
        parse_metric(line)
    assert caught.value.reason == reason
    assert caught.value.message


def test_metric_timestamp_ignored_without_no_aggregation_pipeline():
    """Spec §1.9: with no_aggregation_pipeline off, `T` is ignored (timestamp stays 0)."""
    message = parse_metric(b"metric:1234|g|#onetag|T1657100430", timestamps=False)
    assert message.tags == [b"onetag"]
    assert message.timestamp == 0


def test_metric_bad_timestamp_ignored_without_no_aggregation_pipeline():
    """Spec §1.2: the T field is not even read when timestamps are off."""
    assert parse_metric(b"metric:1234|g|TABCD", timestamps=False).timestamp == 0


# spec §1.9: timestamped lines, with no_aggregation_pipeline on (the default).
@pytest.mark.parametrize(
    "line, tags, rate, timestamp",
    [
        (b"metric:1234|g|#onetag|T1657100430", [b"onetag"], 1.0, 1657100430),
        (b"metric:1234|g|#|T1657100430", [], 1.0, 1657100430),
        (b"metric:1234|g|@0.21|T1657100440", [], 0.21, 1657100440),
        (b"metric:1234|g|#thereisatag|@0.21|T1657100440", [b"thereisatag"], 0.21, 1657100440),
        (b"metric:1234|g|#thereisatag|T1657100540|@0.21", [b"thereisatag"], 0.21, 1657100540),
        (b"metric:1234|g|@0.21|T1657100540|#thereisatag", [b"thereisatag"], 0.21, 1657100540),
        (b"metric:1234|g|T1657100540|@0.25|#atag", [b"atag"], 0.25, 1657100540),
        (b"metric:1234|g|T1657100540|#atag|@0.25", [b"atag"], 0.25, 1657100540),
    ],
)
def test_metric_optional_fields_any_order(line, tags, rate, timestamp):
    """Spec §1.9: tags, rate and timestamp are read whatever their order."""
    message = parse_metric(line)
    assert (message.tags, message.rate, message.timestamp) == (tags, rate, timestamp)


# spec §1.9: origin fields and unknown fields.
@pytest.mark.parametrize(
    "line",
    [
        b"example.metric:2.39283|d|@1.000000|#environment:dev|c:" + CONTAINER_ID,
        b"example.metric:2.39283|d|@1.000000|#environment:dev|c:" + CONTAINER_ID + b"|T1657100540",
        b"example.metric:2.39283|d|@1.000000|#environment:dev|c:"
        + CONTAINER_ID
        + b"|T1657100540|f:wowthisisacoolfeature|f2:omgthisoneiscooler",
    ],
)
def test_metric_origin_and_unknown_fields(line):
    """Spec §1.9: `c:` is ignored by default and unknown `f:`/`f2:` fields are ignored."""
    message = parse_metric(line)
    assert message.tags == [b"environment:dev"]
    assert message.rate == 1.0
    assert message.values == (2.39283,)
    assert message.container_id is None
    assert parse_metric(line, origin_client=True).container_id == CONTAINER_ID


def test_metric_local_data_with_origin_detection_client():
    """Spec §1.9: with origin_detection_client on, `c:` gives the container id."""
    message = parse_metric(b"metric:1234|g|c:1234567890abcdef", origin_client=True)
    assert message.container_id == b"1234567890abcdef"


# spec §1.9: float list vectors.
@pytest.mark.parametrize(
    "raw, values",
    [
        (b"1.1234:21.5:13", (1.1234, 21.5, 13.0)),
        (b"1.1234", (1.1234,)),
        (b"1.1234:41:", (1.1234, 41.0)),
        (b"1.1234::41", (1.1234, 41.0)),
        (b":1.1234::41", (1.1234, 41.0)),
    ],
)
def test_float_list_vectors(raw, values):
    """Spec §1.9: packed values skip empty pieces."""
    assert parse_values(raw) == values


# spec §1.9 (empty list) plus lists with nothing but separators.
VALUES_ERRORS = [(b"", "metric_no_value"), (b":", "metric_no_value"), (b"::::", "metric_no_value")]


@pytest.mark.parametrize("raw, reason", VALUES_ERRORS)
def test_float_list_empty_is_an_error(raw, reason):
    """Spec §1.9: a list with no value left is an error."""
    with pytest.raises(ParseError) as caught:
        parse_values(raw)
    assert caught.value.reason == reason


# spec §1.9: tag vectors.
@pytest.mark.parametrize(
    "raw, tags",
    [
        (b"tag:test,mytag,good:boy", [b"tag:test", b"mytag", b"good:boy"]),
        (b"", []),
        (b"a,,b", [b"a", b"", b"b"]),  # spec §1.3: empty entries are kept
        (b" a , a ", [b" a ", b" a "]),  # spec §1.3: no trimming, no de-duplication
    ],
)
def test_tag_vectors(raw, tags):
    """Spec §1.9 and §1.3: tags split on ',' only."""
    assert parse_tags(raw) == tags


SOME_TAGS = b"#sometag1:somevalue1,sometag2:somevalue2"


# spec §1.9: packet-level vectors.
@pytest.mark.parametrize(
    "packet, expected",
    [
        (
            b"daemon:666|c\ndaemon2:1000|c|" + SOME_TAGS,
            [(b"daemon", 666.0), (b"daemon2", 1000.0)],
        ),
        (
            b"daemon:666:123|c\ndaemon2:1000|c|" + SOME_TAGS,
            [(b"daemon", 666.0), (b"daemon", 123.0), (b"daemon2", 1000.0)],
        ),
        (
            b"daemon::666::123::::|c\ndaemon2:1000|c|" + SOME_TAGS,
            [(b"daemon", 666.0), (b"daemon", 123.0), (b"daemon2", 1000.0)],
        ),
        (
            b"daemon:666|c\n\ndaemon2:1000|c|" + SOME_TAGS + b"\n",
            [(b"daemon", 666.0), (b"daemon2", 1000.0)],
        ),
        (b"daemon:666a|g\ndaemon2:1000|c|" + SOME_TAGS, [(b"daemon2", 1000.0)]),
        (b"daemon:|g\ndaemon2:1000|c|" + SOME_TAGS + b"\ndaemon3: :1:|g", [(b"daemon2", 1000.0)]),
    ],
)
def test_packet_vectors(packet, expected):
    """Spec §1.9: each line is parsed on its own; bad lines are dropped."""
    assert samples(parse_packet(packet)) == expected


def test_packet_vector_tags_stay_with_their_line():
    """Spec §1.9: the first line has no tags, the second has two."""
    first, second = parse_packet(b"daemon:666|c\ndaemon2:1000|c|" + SOME_TAGS)
    assert first.tags == []
    assert second.tags == [b"sometag1:somevalue1", b"sometag2:somevalue2"]


@pytest.mark.parametrize(
    "line",
    [b"daemon:666|g", b"daemon:21|c", b"daemon:21|h", b"daemon:21|ms", b"daemon:abc|s"],
)
def test_packet_timestamped_lines_carry_their_timestamp(line):
    """Spec §1.9: `X|T1658328888` carries a timestamp, so it goes to the late path."""
    (message,) = parse_packet(line + b"|T1658328888\n")
    assert message.timestamp == 1658328888


# --- spec §1.10: event vectors --------------------------------------------------------


def test_event_basic():
    """Spec §1.10: title, text and every default."""
    event = parse_event(b"_e{10,9}:test title|test text")
    assert event == EventMessage(title=b"test title", text=b"test text")
    assert (event.timestamp, event.priority, event.alert_type) == (0, "normal", "info")
    assert (event.host, event.aggregation_key, event.source_type, event.tags) == (None, b"", b"", [])


@pytest.mark.parametrize(
    "line, title, text",
    [
        (b"_e{10,24}:test title|test\\line1\\nline2\\nline3", b"test title", b"test\\line1\nline2\nline3"),
        (b"_e{10,24}:test|title|test\\line1\\nline2\\nline3", b"test|title", b"test\\line1\nline2\nline3"),
        (b"_e{10,0}:test title|", b"test title", b""),
    ],
)
def test_event_title_and_text(line, title, text):
    """Spec §1.10: lengths are wire bytes, `\\n` is the only escape, the separator is unchecked."""
    event = parse_event(line)
    assert (event.title, event.text) == (title, text)


# spec §1.10: error vectors, with the reason we give each one.
EVENT_ERRORS = [
    (b"_e:title|text", "event_bad_header"),
    (b"_e{10,10}:title|text", "event_too_short"),
    (b"_e{0,0}:a|a", "event_empty_title"),
    (b"_e{0,4}:text", "event_empty_title"),
    (b"_e{0,9}:|test text", "event_empty_title"),
    (b"_e{5555:title|text", "event_bad_header"),
    (b"_e{a,1}:title|text", "event_bad_header"),
    (b"_e{1,a}:title|text", "event_bad_header"),
    (b"_e{5,}:title|text", "event_bad_header"),
    (b"_e{,4}:title|text", "event_bad_header"),
    (b"_e{}:title|text", "event_bad_header"),
    (b"_e{,}:title|text", "event_bad_header"),
    (b"_e|text", "event_invalid"),
    (b"_e:|text", "event_bad_header"),
    (b"_e{-123,-987}:", "event_bad_header"),
    (b"_e{5,-987}:title", "event_bad_header"),
    (b"_e{0001,-9876", "event_invalid"),
    (b"_e{-5,2}:abc", "event_bad_header"),
]


@pytest.mark.parametrize("line, reason", EVENT_ERRORS)
def test_event_error_vectors(line, reason):
    """Spec §1.10: malformed events are rejected with a stable reason."""
    with pytest.raises(ParseError) as caught:
        parse_event(line)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "field, warned",
    [(b"d:abc", True), (b"p:urgent", True), (b"t:test", True), (b"x:1234", False)],
)
def test_event_bad_optional_field_is_ignored(field, warned):
    """Spec §1.10: a bad `d:`/`p:`/`t:` keeps the default and warns; the event is accepted."""
    event = parse_event(b"_e{5,4}:title|text|" + field)
    assert (event.title, event.text) == (b"title", b"text")
    assert (event.timestamp, event.priority, event.alert_type) == (0, "normal", "info")
    assert bool(event.warnings) is warned


@pytest.mark.parametrize(
    "field, attribute, value",
    [
        (b"d:21", "timestamp", 21),
        (b"p:low", "priority", "low"),
        (b"h:localhost", "host", b"localhost"),
        (b"t:warning", "alert_type", "warning"),
        (b"k:some aggregation key", "aggregation_key", b"some aggregation key"),
        (b"s:this is the source", "source_type", b"this is the source"),
        (b"#tag1,tag2:test", "tags", [b"tag1", b"tag2:test"]),
    ],
)
def test_event_optional_fields(field, attribute, value):
    """Spec §1.10: each optional field sets its attribute."""
    event = parse_event(b"_e{5,4}:title|text|" + field)
    assert getattr(event, attribute) == value
    assert event.warnings == []


def test_event_every_field():
    """Spec §1.10: all optional fields in one event."""
    event = parse_event(
        b"_e{10,9}:test title|test text|t:warning|d:12345|p:low|h:some.host|k:aggKey|s:source test|#tag1,tag2:test"
    )
    assert event == EventMessage(
        title=b"test title",
        text=b"test text",
        timestamp=12345,
        priority="low",
        alert_type="warning",
        host=b"some.host",
        aggregation_key=b"aggKey",
        source_type=b"source test",
        tags=[b"tag1", b"tag2:test"],
    )


def test_event_empty_text_with_field():
    """Spec §1.10: `_e{10,0}:test title||t:warning` has empty text and alert warning."""
    event = parse_event(b"_e{10,0}:test title||t:warning")
    assert (event.text, event.alert_type) == (b"", "warning")


@pytest.mark.parametrize(
    "line, title, text",
    [
        (
            b"_e{10,10}:test title|test\\ntext|t:warning|d:12345|p:low|h:some.host|k:aggKey|s:source test"
            b"|#tag1,tag2:test",
            b"test title",
            b"test\ntext",
        ),
        (
            b"_e{11,15}:test titled|test\\ntextntext|t:info|d:12346|p:normal|h:some.otherhost|k:aggKeyAlt"
            b"|s:source investigation|#tag1,tag2:test,tag3:resolved",
            b"test titled",
            b"test\ntextntext",
        ),
    ],
)
def test_event_escaped_newline_counts_two_bytes(line, title, text):
    """Spec §1.10: the length counts the two-byte escape, which becomes one newline."""
    event = parse_event(line)
    assert (event.title, event.text) == (title, text)
    assert event.warnings == []


@pytest.mark.parametrize(
    "fields, host, tags",
    [
        (b"|#host:localhost", None, [b"host:localhost"]),
        (b"|#host:,other:tag", None, [b"host:", b"other:tag"]),
        (
            b"|h:some.host|#tag1,tag2:test,dd.internal.entity_id:testID",
            b"some.host",
            [b"tag1", b"tag2:test", b"dd.internal.entity_id:testID"],
        ),
    ],
)
def test_event_enrichment_vectors_keep_special_tags(fields, host, tags):
    """Spec §1.10 (enriched vectors): the parser leaves `host:` and entity tags for enrichment."""
    event = parse_event(b"_e{10,9}:test title|test text" + fields)
    assert (event.host, event.tags) == (host, tags)


# --- spec §1.11: service check vectors --------------------------------------------------


def test_service_check_basic():
    """Spec §1.11: name, status OK and every default."""
    check = parse_service_check(b"_sc|agent.up|0")
    assert check == ServiceCheckMessage(name=b"agent.up", status=0)
    assert (check.timestamp, check.host, check.message, check.tags) == (0, None, b"", [])


# spec §1.11: error vectors, with the reason we give each one.
SERVICE_CHECK_ERRORS = [
    (b"_sc|agent.up", "service_check_invalid"),
    (b"_sc|agent.up|", "service_check_bad_status"),
    (b"_sc||", "service_check_empty_name"),
    (b"_sc|", "service_check_invalid"),
    (b"_sc|agent.up|OK", "service_check_bad_status"),
    (b"_sc|agent.up|21", "service_check_bad_status"),
]


@pytest.mark.parametrize("line, reason", SERVICE_CHECK_ERRORS)
def test_service_check_error_vectors(line, reason):
    """Spec §1.11: malformed service checks are rejected with a stable reason."""
    with pytest.raises(ParseError) as caught:
        parse_service_check(line)
    assert caught.value.reason == reason


@pytest.mark.parametrize("line, warned", [(b"_sc|agent.up|0|d:some_time", True), (b"_sc|agent.up|0|u:unknown", False)])
def test_service_check_bad_or_unknown_field_is_ignored(line, warned):
    """Spec §1.11: a bad `d:` warns and an unknown field is ignored; the check is accepted."""
    check = parse_service_check(line)
    assert (check.name, check.status, check.timestamp) == (b"agent.up", 0, 0)
    assert bool(check.warnings) is warned


@pytest.mark.parametrize(
    "field, attribute, value",
    [
        (b"d:21", "timestamp", 21),
        (b"h:localhost", "host", b"localhost"),
        (b"#tag1,tag2:test,tag3", "tags", [b"tag1", b"tag2:test", b"tag3"]),
        (b"m:this is fine", "message", b"this is fine"),
    ],
)
def test_service_check_optional_fields(field, attribute, value):
    """Spec §1.11: each optional field sets its attribute."""
    assert getattr(parse_service_check(b"_sc|agent.up|0|" + field), attribute) == value


def test_service_check_every_field():
    """Spec §1.11: all optional fields in one check."""
    check = parse_service_check(b"_sc|agent.up|0|d:21|h:localhost|#tag1:test,tag2|m:this is fine")
    assert check == ServiceCheckMessage(
        name=b"agent.up",
        status=0,
        timestamp=21,
        host=b"localhost",
        message=b"this is fine",
        tags=[b"tag1:test", b"tag2"],
    )


def test_service_check_repeated_fields_last_wins():
    """Spec §1.11: `h:localhost|h:localhost2|d:22` gives localhost2 and 22."""
    check = parse_service_check(b"_sc|agent.up|0|d:21|h:localhost|h:localhost2|d:22")
    assert (check.host, check.timestamp) == (b"localhost2", 22)


def test_service_check_tags_after_message():
    """Spec §1.11: tags may follow the message."""
    check = parse_service_check(
        b"_sc|agent.up|0|d:12345|h:localhost|m:this is fine|#sometag1:somevalyyue1,sometag2:somevalue2"
    )
    assert check.message == b"this is fine"
    assert check.tags == [b"sometag1:somevalyyue1", b"sometag2:somevalue2"]


@pytest.mark.parametrize(
    "fields, tags", [(b"|#host:localhost", [b"host:localhost"]), (b"|#host:,other:tag", [b"host:", b"other:tag"])]
)
def test_service_check_enrichment_vectors_keep_host_tags(fields, tags):
    """Spec §1.11 (enriched vectors): the parser leaves `host:` tags for enrichment."""
    check = parse_service_check(b"_sc|agent.up|0" + fields)
    assert (check.host, check.tags) == (None, tags)


def test_service_check_packet_drops_only_the_bad_line():
    """Spec §1.11: `_sc|agen.down\\n` followed by a valid check keeps the valid one."""
    (check,) = parse_packet(b"_sc|agen.down\n_sc|agent.up|0|h:localhost")
    assert (check.name, check.host) == (b"agent.up", b"localhost")


# --- spec §1.7 and §1.1: line splitting --------------------------------------------------


@pytest.mark.parametrize(
    "packet, eol_required, lines, dropped",
    [
        # spec §1.7
        (b"foo\nbar\nbaz\nquz\nhax\n", True, [b"foo", b"bar", b"baz", b"quz", b"hax"], False),
        (b"foo\r\nbar\r\nbaz\r\nquz\r\nhax", True, [b"foo", b"bar", b"baz", b"quz"], True),
        (b"foo\r\nbar\r\nbaz\r\nquz\r\nhax", False, [b"foo", b"bar", b"baz", b"quz", b"hax"], False),
        # spec §1.1
        (b"a\n\nb\n", False, [b"a", b"b"], False),
        (b"a\r", False, [b"a"], False),
        (b"a\r\r\n", False, [b"a\r"], False),
        (b"\n\r\n\n", False, [], False),
        (b"", False, [], False),
        (b"", True, [], False),
        (b"a\n\r", True, [b"a"], True),
    ],
)
def test_split_lines(packet, eol_required, lines, dropped):
    """Spec §1.1/§1.7: split at `\\n`, drop one `\\r`, skip empties, drop an unterminated tail."""
    assert split_lines(packet, eol_required) == (lines, dropped)


@pytest.mark.parametrize("eol_required, count", [(False, 2), (True, 1)])
def test_eol_required_udp_vector(eol_required, count):
    """Spec §1.7: two gauges give 2 samples normally and 1 when a newline is required."""
    packet = b"daemon:666|g|#foo:bar\ndaemon:666|g|#foo:bar"
    assert len(samples(parse_packet(packet, eol_required))) == count


# --- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, kind",
    [
        (b"_e{1,1}:a|b", EVENT),
        (b"_sc|a|0", SERVICE_CHECK),
        (b"_scanner.hits:1|c", SERVICE_CHECK),
        (b"_e:title|text", METRIC),
        (b"page.views:1|c", METRIC),
        (b"random text", METRIC),
    ],
)
def test_message_kind(line, kind):
    """Spec §1.1: the kind comes from the prefix alone."""
    assert message_kind(line) == kind


def test_metric_named_like_a_service_check_is_rejected():
    """Spec §1.1: `_scanner.hits:1|c` goes to the service-check parser and fails there."""
    with pytest.raises(ParseError) as caught:
        parse_line(b"_scanner.hits:1|c")
    assert caught.value.reason.startswith("service_check_")


# --- Go float strictness (spec §1.2) ----------------------------------------------------

FLOAT_OK = [
    (b"1", 1.0),
    (b"12.5", 12.5),
    (b"-3e2", -300.0),
    (b"1E2", 100.0),
    (b".5", 0.5),
    (b"5.", 5.0),
    (b"+5", 5.0),
    (b"-5", -5.0),
    (b"-0", -0.0),
    (b"+.5e-1", 0.05),
    (b"1e-400", 0.0),  # underflow is not an error in Go
    (b"1.7976931348623157e308", 1.7976931348623157e308),
    (b"Inf", math.inf),
    (b"+inf", math.inf),
    (b"-Inf", -math.inf),
    (b"infinity", math.inf),
    (b"-INFINITY", -math.inf),
    (b"nan", math.nan),
    (b"NaN", math.nan),
    (b"0x1p-2", 0.25),
    (b"0x1.8p1", 3.0),
    (b"-0X1.8P+1", -3.0),
    (b"0x.8p1", 1.0),
    (b"0x1.p0", 1.0),
    (b"0xAbCp0", 2748.0),
    (b"0x1p-1074", 5e-324),
    (b"0x1p-1075", 0.0),  # exactly half the smallest subnormal: ties to even
    (b"0x1.fffffffffffff7p1023", 1.7976931348623157e308),
]


@pytest.mark.parametrize("raw, value", FLOAT_OK)
def test_parse_float_accepts_go_syntax(raw, value):
    """Go ParseFloat accepts these, including signs, specials and hex floats."""
    assert same_float(parse_float(raw), value)


FLOAT_ERRORS = [
    b"",
    b"1_000",
    b"0x1_0p0",
    b" 1",
    b"1 ",
    b"\t1",
    b"1\n",
    b"1e400",
    b"-1e400",
    b"1" * 400,
    b"0x1.8",
    b"0x1p1024",
    b"0x1.fffffffffffff8p1023",
    b"0x.p1",
    b"0xp1",
    b"0x",
    b"+nan",
    b"-nan",
    b"infin",
    b"infinityy",
    b"in",
    b"1e",
    b"1e+",
    b"e5",
    b".",
    b"-",
    b"1.2.3",
    b"--1",
    b"0b101",
    b"1f",
    b"\xff",
    "１".encode(),  # a fullwidth digit: Python's str float() would take it
]


@pytest.mark.parametrize("raw", FLOAT_ERRORS)
def test_parse_float_rejects_what_go_rejects(raw):
    """Whitespace, underscores, overflow, hex without `p`, signed NaN and junk are errors."""
    with pytest.raises(ParseError) as caught:
        parse_float(raw)
    assert caught.value.reason == "metric_bad_value"


def test_parse_float_huge_hex_exponents_saturate():
    """Exponents too long for int() still give overflow or zero, never another exception."""
    with pytest.raises(ParseError):
        parse_float(b"0x1p" + b"9" * 5000)
    assert parse_float(b"0x1p-" + b"9" * 5000) == 0.0


def test_parse_values_bad_piece_rejects_the_list():
    """Spec §1.2: one bad piece rejects every value of a packed line."""
    with pytest.raises(ParseError) as caught:
        parse_values(b"1:2:x:3")
    assert caught.value.reason == "metric_bad_value"


def test_nan_and_inf_values_are_kept_for_later():
    """Spec §1.2: NaN and ±Inf parse; they are dropped later, at aggregation."""
    message = parse_metric(b"m:nan:inf:-Infinity|g")
    assert math.isnan(message.values[0])
    assert message.values[1:] == (math.inf, -math.inf)


# --- metric edge cases -----------------------------------------------------------------


def test_metric_non_utf8_bytes_are_kept():
    """Spec §1.1: no UTF-8 check; names, tags and set members keep any bytes."""
    message = parse_metric(b"na\xffme:\xfe\xfd|s|#t\xc3\x28g,\x80")
    assert (message.name, message.set_member, message.tags) == (b"na\xffme", b"\xfe\xfd", [b"t\xc3\x28g", b"\x80"])


def test_metric_host_tag_stays_in_tags():
    """Host extraction is enrichment: the parser keeps `host:` tags."""
    assert parse_metric(b"m:1|g|#host:foo,a").tags == [b"host:foo", b"a"]


def test_metric_tags_replaced_not_merged():
    """Spec §1.2: a second `#` field replaces the first."""
    assert parse_metric(b"m:1|g|#a,b|#c").tags == [b"c"]
    assert parse_metric(b"m:1|g|#a,b|#").tags == []


def test_metric_last_rate_and_timestamp_win():
    """Spec §1.2: the last occurrence of a field wins."""
    message = parse_metric(b"m:1|c|@0.5|T10|@0.25|T20")
    assert (message.rate, message.timestamp) == (0.25, 20)


def test_metric_any_capital_t_field_is_a_timestamp():
    """Spec §1.2: an unknown field starting with `T` is read as a timestamp and fails."""
    with pytest.raises(ParseError) as caught:
        parse_metric(b"m:1|g|Tfuture:1")
    assert caught.value.reason == "metric_bad_timestamp"


@pytest.mark.parametrize(
    "field, timestamp",
    [(b"T1", 1), (b"T+5", 5), (b"T0001657100430", 1657100430), (b"T9223372036854775807", 2**63 - 1)],
)
def test_metric_timestamp_follows_go_parseint(field, timestamp):
    """Go ParseInt base 10 accepts a `+` sign and leading zeros."""
    assert parse_metric(b"m:1|g|" + field).timestamp == timestamp


# Our own metric error cases, beyond the spec's table.
METRIC_EDGE_ERRORS = [
    (b"m:1|g|T0", "metric_bad_timestamp"),
    (b"m:1|g|T9223372036854775808", "metric_bad_timestamp"),
    (b"m:1|g|T1_000", "metric_bad_timestamp"),
    (b"m:1|g|T 1", "metric_bad_timestamp"),
    (b"m:1|g|@", "metric_bad_rate"),
    (b"m:1|g|@ 0.5", "metric_bad_rate"),
    (b"m:1|G", "metric_bad_type"),
    (b"m:1|gauge", "metric_bad_type"),
    (b"m:1| g", "metric_bad_type"),
    (b"m:abc|unknown", "metric_bad_type"),  # the type is checked before the value, as in Go
    (b"m::|c", "metric_no_value"),
    (b"m:1::x|c", "metric_bad_value"),
    (b"m: 1|c", "metric_bad_value"),
    (b"m:1e400|g", "metric_bad_value"),
    (b"|", "metric_bad_name_value"),
    (b"", "metric_no_pipe"),
]


@pytest.mark.parametrize("line, reason", METRIC_EDGE_ERRORS)
def test_metric_edge_errors(line, reason):
    """Strict fields and Go's check order decide the reason."""
    with pytest.raises(ParseError) as caught:
        parse_metric(line)
    assert caught.value.reason == reason


def test_metric_origin_fields_ignored_by_default():
    """Spec §2.6: `c:`, `e:` and `card:` are ignored unless origin detection is on."""
    message = parse_metric(b"m:1|g|c:abc|e:it-false,cn-x|card:high")
    assert message.container_id is None
    assert parse_metric(b"m:1|g|c:abc|e:it-false|card:high", origin_client=True).container_id == b"abc"


def test_metric_rate_is_not_range_checked():
    """Spec §1.2: the parser accepts any float rate."""
    assert parse_metric(b"m:1|c|@0").rate == 0.0
    assert parse_metric(b"m:1|c|@5").rate == 5.0


def test_set_member_is_not_parsed_as_a_float():
    """Spec §1.2: a set keeps its raw value, even one that is not a float."""
    message = parse_metric(b"users:1e400|s|T5")
    assert (message.set_member, message.values, message.timestamp) == (b"1e400", (), 5)


# --- event and service check edge cases --------------------------------------------


def test_event_header_closing_brace_not_checked():
    """Spec §1.5: the last byte of the header is dropped, whatever it is."""
    assert parse_event(b"_e{5,4):title|text").title == b"title"
    assert parse_event(b"_e{5,4x:title|text").title == b"title"


def test_event_lengths_accept_a_plus_sign():
    """Spec §1.5: lengths use Go Atoi, which accepts a leading sign."""
    assert parse_event(b"_e{+5,+4}:title|text").text == b"text"


def test_event_lengths_count_bytes():
    """Spec §1.1: `é` is two bytes, so a title of 2 characters has length 3."""
    title = "é!".encode()
    assert parse_event(b"_e{3,1}:" + title + b"|x").title == title


def test_event_bad_field_keeps_the_previous_value():
    """Spec §1.5: an invalid value leaves the field at its previous value."""
    event = parse_event(b"_e{5,4}:title|text|p:low|p:urgent|d:5|d:x|t:error|t:bad")
    assert (event.priority, event.timestamp, event.alert_type) == ("low", 5, "error")
    assert len(event.warnings) == 3


def test_event_empty_host_field_means_no_host():
    """Go treats an empty `h:` as unset, so a `host:` tag or the default applies."""
    assert parse_event(b"_e{5,4}:title|text|h:a|h:").host is None


def test_event_origin_field():
    """Spec §2.6: `c:` is read on events only with origin detection on."""
    line = b"_e{5,4}:title|text|c:abc"
    assert parse_event(line).container_id is None
    assert parse_event(line, origin_client=True).container_id == b"abc"


def test_event_bytes_after_text_start_the_first_field():
    """Spec §1.5: what follows the text is split on `|`; its first piece is a field too."""
    assert parse_event(b"_e{5,4}:title|textk:key").aggregation_key == b"key"


EVENT_EDGE_ERRORS = [
    (b"_e{99999999999999999999,1}:a|b", "event_bad_header"),
    (b"_e{1,99999999999999999999}:a|b", "event_bad_header"),
    (b"_e{1, 1}:a|b", "event_bad_header"),
    (b"_e{1,1}:a", "event_too_short"),
    (b"_e{1,9223372036854775807}:a|b", "event_too_short"),
    (b"", "event_invalid"),
]


@pytest.mark.parametrize("line, reason", EVENT_EDGE_ERRORS)
def test_event_edge_errors(line, reason):
    """Lengths outside int64 or with spaces are header errors, as with Go Atoi."""
    with pytest.raises(ParseError) as caught:
        parse_event(line)
    assert caught.value.reason == reason


def test_service_check_message_is_not_unescaped():
    """Spec §1.6: `m:` arrives as sent, backslashes and all."""
    assert parse_service_check(b"_sc|a|2|m:line1\\nm\\: x").message == b"line1\\nm\\: x"


def test_service_check_all_statuses_and_origin():
    """Spec §1.6: statuses 0..3; `c:` only with origin detection on."""
    assert [parse_service_check(b"_sc|a|%d" % s).status for s in range(4)] == [0, 1, 2, 3]
    assert parse_service_check(b"_sc|a|0|c:abc", origin_client=True).container_id == b"abc"
    assert parse_service_check(b"_sc|a|0|c:abc").container_id is None


SERVICE_CHECK_EDGE_ERRORS = [
    (b"||", "service_check_invalid"),
    (b"||||", "service_check_empty_name"),
    (b"||abname", "service_check_bad_status"),  # both pipes sat in the 4 dropped bytes
    (b"_sc|a| 0", "service_check_bad_status"),
]


@pytest.mark.parametrize("line, reason", SERVICE_CHECK_EDGE_ERRORS)
def test_service_check_edge_errors(line, reason):
    """Short lines and padded statuses are rejected."""
    with pytest.raises(ParseError) as caught:
        parse_service_check(line)
    assert caught.value.reason == reason


# --- size limits (README "Limits") ----------------------------------------------------


def event(title: bytes, text: bytes, rest: bytes = b"") -> bytes:
    return b"_e{%d,%d}:%s|%s%s" % (len(title), len(text), title, text, rest)


def many_tags(count: int) -> bytes:
    return b",".join(b"t%d" % i for i in range(count))


# (parser, a line exactly at a limit, the same line one over it, the drop reason)
LIMITS = [
    (parse_metric, b"n" * MAX_NAME_LENGTH + b":1|c", b"n" * (MAX_NAME_LENGTH + 1) + b":1|c", "name_too_long"),
    (
        parse_service_check,
        b"_sc|" + b"n" * MAX_NAME_LENGTH + b"|0",
        b"_sc|" + b"n" * (MAX_NAME_LENGTH + 1) + b"|0",
        "name_too_long",
    ),
    (parse_metric, b"m:1|c|#" + many_tags(MAX_TAGS), b"m:1|c|#" + many_tags(MAX_TAGS + 1), "too_many_tags"),
    (parse_metric, b"m:1|c|#" + b"," * (MAX_TAGS - 1), b"m:1|c|#" + b"," * MAX_TAGS, "too_many_tags"),
    (
        parse_metric,
        b"m:1|c|#a," + b"k" * MAX_TAG_LENGTH + b",b",
        b"m:1|c|#a," + b"k" * (MAX_TAG_LENGTH + 1) + b",b",
        "tag_too_long",
    ),
    (
        parse_event,
        event(b"t", b"x", b"|#" + many_tags(MAX_TAGS)),
        event(b"t", b"x", b"|#" + many_tags(MAX_TAGS + 1)),
        "too_many_tags",
    ),
    (
        parse_service_check,
        b"_sc|n|0|#" + b"k" * MAX_TAG_LENGTH,
        b"_sc|n|0|#" + b"k" * (MAX_TAG_LENGTH + 1),
        "tag_too_long",
    ),
    (parse_metric, b"m:" + b"1:" * MAX_VALUES + b"|h", b"m:" + b"1:" * (MAX_VALUES + 1) + b"|h", "too_many_values"),
    (parse_metric, b"m:" + b"1::" * MAX_VALUES + b"|d", b"m:" + b"1::" * (MAX_VALUES + 1) + b"|d", "too_many_values"),
    (
        parse_event,
        event(b"t" * MAX_EVENT_TITLE_LENGTH, b"x"),
        event(b"t" * (MAX_EVENT_TITLE_LENGTH + 1), b"x"),
        "event_title_too_long",
    ),
    (
        parse_event,
        event(b"t", b"x" * MAX_EVENT_TEXT_LENGTH),
        event(b"t", b"x" * (MAX_EVENT_TEXT_LENGTH + 1)),
        "event_text_too_long",
    ),
    (
        parse_service_check,
        b"_sc|n|0|m:" + b"x" * MAX_SERVICE_CHECK_MESSAGE_LENGTH,
        b"_sc|n|0|m:" + b"x" * (MAX_SERVICE_CHECK_MESSAGE_LENGTH + 1),
        "service_check_message_too_long",
    ),
]
LIMIT_ERRORS = [(parse, over) for parse, _at, over, _reason in LIMITS]


@pytest.mark.parametrize("parse, at_limit, over_limit, reason", LIMITS)
def test_a_field_at_its_size_limit_is_accepted_and_one_byte_more_is_refused(parse, at_limit, over_limit, reason):
    """Each limit is inclusive, and going over it is the named drop reason."""
    parse(at_limit)
    with pytest.raises(ParseError) as caught:
        parse(over_limit)
    assert caught.value.reason == reason
    assert len(caught.value.message) < 200  # the log line does not carry the huge field


def test_packed_values_are_counted_after_skipping_empty_pieces():
    """``1::2`` is two values, so empty pieces never push a line over MAX_VALUES."""
    assert len(parse_values(b":" * (2 * MAX_VALUES) + b"1")) == 1


def test_the_limits_are_documented_in_the_readme():
    """README's Limits table names every limit's value and drop reason."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("## Limits") :]
    for value, reason in [
        (MAX_NAME_LENGTH, "name_too_long"),
        (MAX_TAGS, "too_many_tags"),
        (MAX_TAG_LENGTH, "tag_too_long"),
        (MAX_VALUES, "too_many_values"),
        (MAX_EVENT_TITLE_LENGTH, "event_title_too_long"),
        (MAX_EVENT_TEXT_LENGTH, "event_text_too_long"),
        (MAX_SERVICE_CHECK_MESSAGE_LENGTH, "service_check_message_too_long"),
    ]:
        assert f"{value:,}" in table and f"`{reason}`" in table, reason


# --- reasons -------------------------------------------------------------------------


def test_every_raised_reason_is_documented_and_every_reason_is_raised():
    """Each reason raised by the inputs above is a REASONS key, and each key is reachable."""
    cases = (
        [(parse_metric, line) for line, _ in METRIC_ERRORS + METRIC_EDGE_ERRORS]
        + [(parse_event, line) for line, _ in EVENT_ERRORS + EVENT_EDGE_ERRORS]
        + [(parse_service_check, line) for line, _ in SERVICE_CHECK_ERRORS + SERVICE_CHECK_EDGE_ERRORS]
        + [(parse_values, raw) for raw, _ in VALUES_ERRORS]
        + [(parse_float, raw) for raw in FLOAT_ERRORS]
        + LIMIT_ERRORS
    )
    raised = set()
    for parse, line in cases:
        with pytest.raises(ParseError) as caught:
            parse(line)
        raised.add(caught.value.reason)
    assert raised <= REASONS.keys()
    assert raised == REASONS.keys()


def test_reason_keys_are_snake_case_with_descriptions():
    """Reasons become telemetry tags, so they must be stable snake_case words."""
    for key, description in REASONS.items():
        assert key.replace("_", "").isalpha() and key.islower()
        assert description and "\n" not in description


def test_parse_error_carries_reason_and_message():
    """ParseError is a ValueError whose str() is the human-readable message."""
    error = ParseError("metric_no_pipe", "invalid dogstatsd message format")
    assert isinstance(error, ValueError)
    assert (error.reason, error.message) == ("metric_no_pipe", "invalid dogstatsd message format")
    assert str(error) == "invalid dogstatsd message format"


# --- properties ----------------------------------------------------------------------


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_repr_of_finite_float_round_trips(value):
    """Python's shortest repr of any finite float is valid Go syntax and parses back exactly."""
    assert same_float(parse_float(repr(value).encode()), value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_hex_of_finite_float_round_trips(value):
    """float.hex() output is a Go hex float and parses back exactly."""
    assert same_float(parse_float(value.hex().encode()), value)


@given(st.from_regex(r"[+-]?0[xX][0-9a-fA-F]{0,20}\.?[0-9a-fA-F]{0,20}[pP][+-]?[0-9]{1,4}", fullmatch=True))
def test_hex_floats_round_like_float_fromhex(text):
    """Go hex floats are correctly rounded, so they agree with float.fromhex, overflow included."""
    try:
        expected = float.fromhex(text)
    except (OverflowError, ValueError):
        with pytest.raises(ParseError):
            parse_float(text.encode())
    else:
        assert same_float(parse_float(text.encode()), expected)


FRAGMENTS = [
    b"|",
    b":",
    b"#",
    b",",
    b"@",
    b"T",
    b"_e{",
    b"_sc|",
    b"}",
    b"1",
    b"0",
    b"-",
    b"\\n",
    b"\n",
    b"\r",
    b"d:",
    b"h:",
    b"m:",
    b"p:",
    b"t:",
    b"c:",
    b"g",
    b"c",
    b"s",
    b"ms",
    b"inf",
    b"0x1p",
    b".",
    b"\xff",
]
wire_like = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=4), max_size=30).map(b"".join)
any_line = st.binary(max_size=200) | wire_like


@settings(max_examples=500)
@given(any_line, st.booleans(), st.booleans())
def test_parse_metric_never_raises_anything_else(line, timestamps, origin_client):
    """Arbitrary bytes give a MetricMessage or a documented ParseError, nothing else."""
    try:
        message = parse_metric(line, timestamps=timestamps, origin_client=origin_client)
    except ParseError as error:
        assert error.reason in REASONS
    else:
        assert isinstance(message, MetricMessage)


@settings(max_examples=500)
@given(any_line | wire_like.map(lambda rest: b"_e{" + rest), st.booleans())
def test_parse_event_never_raises_anything_else(line, origin_client):
    """Arbitrary bytes give an EventMessage or a documented ParseError, nothing else."""
    try:
        event = parse_event(line, origin_client=origin_client)
    except ParseError as error:
        assert error.reason in REASONS
    else:
        assert isinstance(event, EventMessage)


@settings(max_examples=500)
@given(any_line | wire_like.map(lambda rest: b"_sc|" + rest), st.booleans())
def test_parse_service_check_never_raises_anything_else(line, origin_client):
    """Arbitrary bytes give a ServiceCheckMessage or a documented ParseError, nothing else."""
    try:
        check = parse_service_check(line, origin_client=origin_client)
    except ParseError as error:
        assert error.reason in REASONS
    else:
        assert isinstance(check, ServiceCheckMessage)


@given(st.binary(max_size=200), st.booleans())
def test_split_lines_properties(packet, eol_required):
    """Lines are never empty and never hold `\\n`; only a non-empty unterminated tail is flagged."""
    lines, dropped = split_lines(packet, eol_required)
    assert all(line and b"\n" not in line for line in lines)
    assert dropped == (eol_required and not packet.endswith(b"\n") and packet != b"")
    if not eol_required and b"\r" not in packet:
        assert lines == [piece for piece in packet.split(b"\n") if piece]


def test_event_and_service_check_fields_apply_or_warn():
    """Spec §1.5/§1.6: unknown values of p: and t: and a bad d: are warned about and ignored."""
    from twisted_statsd.core.parser import parse_event, parse_service_check

    event = parse_event(b"_e{1,1}:a|b|p:bad|t:error|k:key|s:src|d:x|h:web|#t:1|c:ci|t:nope")
    assert (event.priority, event.alert_type, event.aggregation_key, event.source_type) == (
        "normal",
        "error",
        b"key",
        b"src",
    )
    assert (event.host, event.tags, event.container_id) == (b"web", [b"t:1"], None)
    assert event.warnings == [
        "invalid event priority: b'bad'",
        "invalid event timestamp: b'x'",
        "invalid alert type: b'nope'",
    ]
    check = parse_service_check(b"_sc|n|0|m:msg|d:12|d:bad|h:|#a|c:ci", origin_client=True)
    assert (check.message, check.timestamp, check.host, check.tags, check.container_id) == (
        b"msg",
        12,
        None,
        [b"a"],
        b"ci",
    )
    assert check.warnings == ["invalid service check timestamp: b'bad'"]
