"""Property tests of the parser over grammar-built, mutated and oversized lines (issue 12, item 4).

``test_parser.py`` already throws random bytes and wire-like fragments at each
``parse_*`` function.  Here the inputs are built from the grammar (spec §1.2,
§1.5, §1.6): valid lines, which must parse to what was written, and the same
lines mutated the ways clients and attackers get it wrong (odd separators,
huge or special numbers, empty and repeated tag fields, lying event lengths,
non-UTF-8, CR/LF variants, fields far over the size limits).  Whatever the
input, only a ``ParseError`` with a documented reason may come out, and in a
packet mixing good and bad lines each good line parses exactly as it does alone.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from twisted_statsd.config import load_config
from twisted_statsd.core.parser import (
    EVENT,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_VALUES,
    REASONS,
    SERVICE_CHECK,
    ParseError,
    message_kind,
    parse_event,
    parse_metric,
    parse_service_check,
    split_lines,
)
from twisted_statsd.service import build_pipeline

PARSERS = {EVENT: parse_event, SERVICE_CHECK: parse_service_check}


def parse_line(line: bytes, *, origin_client: bool = False):
    """One line as the intake routes it: by prefix, then the kind's parser."""
    kind = message_kind(line)
    if kind in PARSERS:
        return PARSERS[kind](line, origin_client=origin_client)
    return parse_metric(line, origin_client=origin_client)


def parsed_or_reason(line: bytes, **options):
    """A comparable summary of the result: the message's fields, or the error's reason."""
    try:
        message = parse_line(line, **options)
    except ParseError as error:
        assert error.reason in REASONS, error.reason
        return ("error", error.reason)
    if hasattr(message, "__slots__"):  # MetricMessage: compare floats by their bits, NaN included
        fields = [getattr(message, name) for name in message.__slots__]
        return tuple(tuple(map(float.hex, f)) if isinstance(f, tuple) else f for f in fields)
    return repr(message)


# --- the grammar ------------------------------------------------------------------------

name_bytes = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b":", b"_").replace(b"|", b"_"))
names = st.from_regex(rb"[a-z][a-z0-9_.]{0,20}", fullmatch=True) | name_bytes.map(
    lambda b: b.replace(b"\n", b"_").replace(b"\r", b"_").lstrip(b"_") or b"n"
)
finite = st.floats(allow_nan=False, allow_infinity=False)
values = st.one_of(
    finite.map(lambda v: repr(v).encode()),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda v: b"%d" % v),
    finite.map(lambda v: v.hex().encode()),
)
tag = st.from_regex(rb"[a-z0-9_.:/\-]{0,30}", fullmatch=True) | st.binary(max_size=12).map(
    lambda b: b.translate(None, b",|\n\r")
)
tags = st.lists(tag, min_size=1, max_size=8)
metric_types = st.sampled_from([b"c", b"g", b"h", b"d", b"ms", b"s"])


@st.composite
def metric_lines(draw) -> tuple[bytes, dict]:
    """A valid metric line and what it must parse to."""
    name, metric_type = draw(names), draw(metric_types)
    if metric_type == b"s":
        member = draw(st.binary(min_size=1, max_size=12).map(lambda b: b.translate(None, b"|\n\r") or b"m"))
        packed, raw = (), member
    else:
        packed = draw(st.lists(values, min_size=1, max_size=5))
        raw = b":".join(packed)
    fields, expected = [name + b":" + raw, metric_type], {"name": name, "tags": [], "rate": 1.0}
    for option in draw(st.lists(st.sampled_from(["rate", "tags", "ts"]), unique=True)):
        if option == "rate":
            rate = draw(st.floats(min_value=0.0, max_value=1.0))
            fields.append(b"@" + repr(rate).encode())
            expected["rate"] = rate
        elif option == "tags":
            drawn = draw(tags)
            fields.append(b"#" + b",".join(drawn))
            expected["tags"] = drawn if drawn != [b""] else []  # "|#" alone is no tag at all
        else:
            fields.append(b"T%d" % draw(st.integers(min_value=1, max_value=2**63 - 1)))
    expected["values"] = tuple(float.fromhex(v.decode()) if b"x" in v else float(v) for v in packed)
    return b"|".join(fields), expected


@st.composite
def event_lines(draw) -> bytes:
    title = draw(st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\n", b"\\n")))
    text = draw(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"\\n")))
    extra = draw(st.lists(st.sampled_from([b"d:12", b"h:host", b"k:key", b"p:low", b"s:src", b"t:error", b"#a,b"])))
    return b"_e{%d,%d}:%s|%s" % (len(title), len(text), title, text) + b"".join(b"|" + e for e in extra)


@st.composite
def service_check_lines(draw) -> bytes:
    name = draw(names)
    status = draw(st.sampled_from([b"0", b"1", b"2", b"3"]))
    extra = draw(st.lists(st.sampled_from([b"d:12", b"h:host", b"#a:b,c", b"m:all good"])))
    return b"_sc|" + name + b"|" + status + b"".join(b"|" + e for e in extra)


valid_metric_lines = metric_lines().map(lambda pair: pair[0])
valid_lines = valid_metric_lines | event_lines() | service_check_lines()

# Replacements a careless or hostile client makes.
ODD_NUMBERS = [
    b"1e400",
    b"-1e400",
    b"9" * 400,
    b"0x1p99999",
    b"NaN",
    b"nan",
    b"-nan",
    b"Inf",
    b"+Infinity",
    b"infinity ",
    b"1_000",
    b" 1",
    b"1.",
    b".",
    b"0x",
    b"1e",
    b"\xef\xbc\x91",  # a full-width digit: Python's float() would take it, Go's does not
    b"\xd9\xa1",  # an Arabic-Indic digit
    b"N",
    b"Nan1",
    b"+nan",
    b"infx",
    b"0x1p",
    b"0x.p1",
    b"1e+",
    b"--1",
]
# Words made of what numbers, their special names and hex floats are spelt with.
number_like = st.text(alphabet="0123456789.eE+-xXpPnNaAiIfFtTyY_ ", max_size=8).map(str.encode)
ODD_PIECES = [
    b"|",
    b":",
    b"||",
    b"|#",
    b"#",
    b"@",
    b",",
    b"\r",
    b"\r\r",
    b"\x00",
    b"\xff\xfe",
    b"{",
    b"}",
    b"_e{",
    b"_sc",
]


@st.composite
def mutated(draw, lines=valid_lines) -> bytes:
    """A valid line with a few of the mutations above applied."""
    line = draw(lines)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(line)))
        end = draw(st.integers(min_value=at, max_value=min(len(line), at + 8)))
        how = draw(
            st.sampled_from(
                ["insert", "replace", "delete", "number", "value", "rate", "repeat_tags", "lie", "duplicate"]
            )
        )
        if how == "insert":
            line = line[:at] + draw(st.sampled_from(ODD_PIECES)) + line[at:]
        elif how == "replace":
            line = line[:at] + draw(st.sampled_from(ODD_PIECES) | st.binary(max_size=3)) + line[end:]
        elif how == "delete":
            line = line[:at] + line[end:]
        elif how == "number":
            line = line[:at] + draw(st.sampled_from(ODD_NUMBERS) | number_like) + line[end:]
        elif how == "value" and 0 <= line.find(b":") < line.find(b"|"):
            odd = draw(st.sampled_from(ODD_NUMBERS) | number_like)
            line = line[: line.index(b":") + 1] + odd + line[line.index(b"|") :]
        elif how == "rate":
            line += b"|" + draw(st.sampled_from([b"@", b"T", b"d:"])) + draw(st.sampled_from(ODD_NUMBERS) | number_like)
        elif how == "repeat_tags":
            line += b"|#" * draw(st.integers(min_value=1, max_value=4)) + draw(tag)
        elif how == "lie" and line.startswith(b"_e{") and b"}" in line:
            lengths = draw(st.sampled_from([b"0,0", b"1,-1", b"99999999,1", b"9223372036854775808,1", b"2,", b",2"]))
            line = b"_e{" + lengths + b"}" + line[line.index(b"}") + 1 :]
        elif how == "duplicate":
            line = line[:end] + line[at:]
    return line


# Over-limit and long fields: a few big inputs, built by repetition so hypothesis stays quick.
long_fields = st.one_of(
    st.integers(min_value=MAX_TAGS - 2, max_value=MAX_TAGS + 2).map(lambda n: b"m:1|c|#" + b"t," * n),
    st.integers(min_value=MAX_TAG_LENGTH - 2, max_value=MAX_TAG_LENGTH + 2).map(lambda n: b"m:1|g|#" + b"k" * n),
    st.integers(min_value=MAX_VALUES - 2, max_value=MAX_VALUES + 2).map(lambda n: b"m:" + b"1:" * n + b"|d"),
    st.integers(min_value=0, max_value=70_000).map(lambda n: b"_e{1,%d}:t|" % n + b"x" * n),
    st.integers(min_value=0, max_value=70_000).map(lambda n: b"_sc|n|0|m:" + b"x" * n),
    st.integers(min_value=0, max_value=10_000).map(lambda n: b"n" * n + b":1|c"),
)
any_input = valid_lines | mutated() | st.binary(max_size=300) | long_fields


# --- properties --------------------------------------------------------------------------


@settings(max_examples=300)
@given(metric_lines())
def test_a_valid_metric_line_parses_to_what_was_written(pair):
    line, expected = pair
    message = parse_metric(line)
    assert message.name == expected["name"]
    assert message.tags == expected["tags"]
    assert message.rate == expected["rate"] or (math.isnan(message.rate) and math.isnan(expected["rate"]))
    assert message.values == expected["values"]


@settings(max_examples=200)
@given(event_lines() | service_check_lines())
def test_valid_events_and_service_checks_parse(line):
    assert parse_line(line) is not None


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(any_input, st.booleans())
def test_nothing_but_a_documented_parse_error_escapes(line, origin_client):
    """Valid, mutated, random or oversized, each line gives a message or a ParseError with a known reason."""
    parsed_or_reason(line, origin_client=origin_client)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(valid_metric_lines))
def test_a_mutated_line_that_still_parses_gives_finite_sizes(line):
    """Whatever a mutation produced, an accepted line holds no more than the limits allow."""
    try:
        message = parse_metric(line)
    except ParseError:
        return
    assert len(message.tags) <= MAX_TAGS and all(len(t) <= MAX_TAG_LENGTH for t in message.tags)
    assert 1 <= len(message.values) <= MAX_VALUES or message.set_member


# A "\r" before the line end belongs to the line end (spec §1.7), so a line ending in one would change.
good_lines = valid_lines.filter(lambda line: not line.endswith(b"\r"))
bad_lines = (mutated() | st.binary(min_size=1, max_size=60)).filter(
    lambda line: b"\n" not in line and not line.endswith(b"\r") and line.strip(b"\r")
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    st.lists(st.tuples(st.booleans(), good_lines, bad_lines), min_size=1, max_size=12),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_good_lines_in_a_packet_parse_as_they_do_alone(choices, separator, trailing):
    """A packet of good and bad lines: each good line's result is its result alone; each bad line one error."""
    lines = [good if pick_good else bad for pick_good, good, bad in choices]
    bad = [line for pick_good, _, line in choices if not pick_good]
    assume(all(parsed_or_reason(line)[0] == "error" for line in bad))
    packet = separator.join(lines) + (separator if trailing else b"")
    got, dropped = split_lines(packet)
    assert not dropped
    assert [parsed_or_reason(line) for line in got] == [parsed_or_reason(line) for line in lines]


# --- through the server's intake ----------------------------------------------------------

simple_metric_lines = st.builds(
    lambda name, kind, values, rate, tagged: (
        name + b":" + b":".join(values) + b"|" + kind + rate + (b"|#" + b",".join(tagged) if tagged else b""),
        1 if kind == b"s" else len(values),
    ),
    st.from_regex(rb"[a-z][a-z0-9_.]{0,10}", fullmatch=True),
    st.sampled_from([b"c", b"g", b"h", b"d", b"ms", b"s"]),
    st.lists(st.integers(min_value=-1000, max_value=1000).map(lambda v: b"%d" % v), min_size=1, max_size=3),
    st.sampled_from([b"", b"|@0.5", b"|@1"]),
    st.lists(st.from_regex(rb"[a-z]{1,5}:[a-z0-9]{0,5}", fullmatch=True), max_size=3),
)


def with_value(line: bytes, value: bytes) -> bytes:
    name, _, rest = line.partition(b":")
    return name + b":" + value + b"|" + rest.partition(b"|")[2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    st.lists(simple_metric_lines, min_size=1, max_size=6),
    st.lists(
        st.tuples(
            st.sampled_from(["good", "bad value", "bad"]),
            st.integers(min_value=0, max_value=5),
            st.sampled_from(ODD_NUMBERS) | number_like,
            bad_lines,
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 4),
)
def test_the_intake_counts_every_good_sample_and_drops_each_bad_line_once(goods, choices, packets):
    """build_pipeline as the server wires it: good lines beside bad ones are all aggregated, in any packet split.

    A "bad value" line has the shape of a good line (name, type, tags), so once
    that shape is cached it takes the staged fast path and fails only at the fold.
    """
    lines, samples, bad = [], 0, []
    for how, index, odd, other in choices:
        good, count = goods[index % len(goods)]
        if how == "good":
            lines.append(good)
            samples += count
        else:
            line = with_value(good, odd) if how == "bad value" else other
            lines.append(line)
            bad.append(line)
    assume(all(parsed_or_reason(line)[0] == "error" for line in bad))
    pipeline = build_pipeline(load_config(data={"hostname": "h"}))
    step = -(-len(lines) // packets)
    for _ in range(2):  # the second time round, shapes are cached and good lines take the fast path
        pipeline.process([b"\n".join(lines[i : i + step]) for i in range(0, len(lines), step)], 1_000_000.0)
    pipeline.fold()
    assert pipeline.telemetry.get("metrics") == 2 * samples
    assert pipeline.telemetry.total_dropped() == 2 * len(bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(valid_lines | mutated() | st.binary(max_size=100), max_size=6).map(b"\n".join), max_size=4))
def test_nothing_escapes_the_intake(packets):
    """Whatever the packets hold, processing them (twice, so that shapes are cached) raises nothing."""
    pipeline = build_pipeline(load_config(data={"hostname": "h"}))
    pipeline.process(packets, 1_000_000.0)
    pipeline.process(packets, 1_000_000.5)
    pipeline.fold()
