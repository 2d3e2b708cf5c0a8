"""Parse DogStatsD wire messages (metrics, events, service checks) from bytes.

This module is pure: it imports nothing from Twisted, reads no clock and never
decodes, so names, tags, hosts and set members keep the wire's bytes (spec
§1.1).  Each ``parse_*`` function takes one line and returns a message from
``twisted_statsd.core.model`` or raises ``ParseError``, whose ``reason`` is a
stable key of ``REASONS`` for telemetry tags.  The quirks of Datadog's Go
parser are reproduced on purpose (spec §1.2, §1.5, §1.6).  Enrichment
(``host:`` tags, namespaces, dropping NaN and ±Inf) is not done here.
"""

from __future__ import annotations

import re

from twisted_statsd.core.model import (
    CHECK_STATUSES,
    METRIC_TYPES,
    SET,
    EventMessage,
    MetricMessage,
    ServiceCheckMessage,
)

__all__ = [
    "EVENT",
    "MAX_EVENT_TEXT_LENGTH",
    "MAX_EVENT_TITLE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_SERVICE_CHECK_MESSAGE_LENGTH",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_VALUES",
    "METRIC",
    "REASONS",
    "SERVICE_CHECK",
    "ParseError",
    "message_kind",
    "parse_event",
    "parse_float",
    "parse_metric",
    "parse_service_check",
    "parse_tags",
    "parse_values",
    "split_lines",
]

# Message kinds returned by message_kind().
METRIC = "metric"
EVENT = "event"
SERVICE_CHECK = "service_check"

# Size limits on what one line may hold.  A datagram or stream frame is already
# bounded by ``dogstatsd_buffer_size``; these bound what one line may cost once
# parsed (a tag is an object and a label in every sink; a packed value is a
# sample), whatever the buffer size.  Each is well above what Datadog itself
# keeps (200-character names and tags, 100-character event titles, 4,000-
# character event texts), so no client in normal use meets them.  DogStatsD has
# no such limits and no configuration keys for them, hence constants.
MAX_NAME_LENGTH = 4_096  # bytes of a metric or service check name
MAX_TAGS = 1_000  # entries of one '#' tag field, empty ones included
MAX_TAG_LENGTH = 4_096  # bytes of one tag
MAX_VALUES = 65_536  # packed values of one metric line
MAX_EVENT_TITLE_LENGTH = 4_096  # wire bytes, as the event header counts them
MAX_EVENT_TEXT_LENGTH = 65_536
MAX_SERVICE_CHECK_MESSAGE_LENGTH = 65_536

REASONS: dict[str, str] = {
    "metric_no_pipe": "metric line has no '|' field separator",
    "metric_bad_name_value": "metric name or value is missing (no ':' or an empty side)",
    "metric_bad_type": "metric type is not exactly one of g, c, h, d, s, ms",
    "metric_bad_value": "a metric value is not a Go float, or overflows to ±Inf",
    "metric_no_value": "packed metric values hold only empty pieces",
    "metric_bad_rate": "the @ sample rate is not a Go float",
    "metric_bad_timestamp": "the T timestamp is not a base-10 int64, or is below 1",
    "event_invalid": "event has no ':' between its header and body",
    "event_bad_header": "event header is too short, has no ',', or a bad length",
    "event_empty_title": "event header gives a title length of 0",
    "event_too_short": "event body is shorter than the header's lengths",
    "service_check_invalid": "service check has fewer than two '|' or 4 bytes",
    "service_check_empty_name": "service check name is empty",
    "service_check_bad_status": "service check status is not exactly 0, 1, 2 or 3",
    "name_too_long": f"a metric or service check name is longer than {MAX_NAME_LENGTH} bytes",
    "too_many_tags": f"a tag field holds more than {MAX_TAGS} tags",
    "tag_too_long": f"a tag is longer than {MAX_TAG_LENGTH} bytes",
    "too_many_values": f"a metric line packs more than {MAX_VALUES} values",
    "event_title_too_long": f"an event title is longer than {MAX_EVENT_TITLE_LENGTH} bytes",
    "event_text_too_long": f"an event text is longer than {MAX_EVENT_TEXT_LENGTH} bytes",
    "service_check_message_too_long": f"a service check message is over {MAX_SERVICE_CHECK_MESSAGE_LENGTH} bytes",
}


class ParseError(ValueError):
    """A rejected line: ``reason`` (a ``REASONS`` key) for counters, ``message`` for logs."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- numbers ---------------------------------------------------------------

# Over this alphabet Python's float() grammar and Go's ParseFloat grammar are
# the same language, so float() alone decides validity (spec §1.2).
_DECIMAL_BYTES = b"0123456789.eE+-"

_INF = float("inf")
# Go's special() accepts a sign on inf/infinity but not on nan; ParseFloat
# then demands that the whole string was consumed.
_SPECIAL_FLOATS = {
    b"inf": _INF,
    b"+inf": _INF,
    b"-inf": -_INF,
    b"infinity": _INF,
    b"+infinity": _INF,
    b"-infinity": -_INF,
    b"nan": float("nan"),
}
# Go hex float: mantissa digits with at most one point, and a mandatory binary
# exponent.  Underscores are rejected everywhere (see parse_float).
_HEX_FLOAT = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?[pP]([+-]?[0-9]+)")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _bad_value(raw: bytes, why: str) -> ParseError:
    return ParseError("metric_bad_value", f"could not parse dogstatsd metric value {raw!r}: {why}")


def parse_float(raw: bytes) -> float:
    """Parse ``raw`` as Go's ``strconv.ParseFloat(s, 64)`` would; Python's float() is laxer.

    The common case (only digits, '.', 'e', signs) is one ``float()`` call plus
    an overflow check, because Go rejects what Python turns into ±inf.  Other
    spellings (inf, nan, hex floats) take a slower path.  Underscores are
    rejected, as the project spec asks (§1.2).
    """
    if raw.strip(_DECIMAL_BYTES):
        return _parse_unusual_float(raw)
    try:
        value = float(raw)
    except ValueError:
        raise _bad_value(raw, "invalid syntax") from None
    if value - value:  # NaN only for ±inf, and no inf spelling reaches this line
        raise _bad_value(raw, "value out of range")
    return value


def _parse_unusual_float(raw: bytes) -> float:
    """Handle Go's special names and hex floats; reject everything else."""
    special = _SPECIAL_FLOATS.get(raw.lower())
    if special is not None:
        return special
    match = _HEX_FLOAT.fullmatch(raw)
    if match is None:
        raise _bad_value(raw, "invalid syntax")
    sign, whole, fraction, exponent = match.groups()
    fraction = fraction or b""
    if not whole and not fraction:
        raise _bad_value(raw, "invalid syntax")
    value = _scale_by_power_of_two(int(whole + fraction, 16), _clamped_int(exponent) - 4 * len(fraction))
    if value is None:
        raise _bad_value(raw, "value out of range")
    return -value if sign == b"-" else value


def _clamped_int(raw: bytes) -> int:
    """An exponent's value; beyond 18 digits only its size matters, and int() has a digit limit."""
    digits = raw.lstrip(b"+-").lstrip(b"0")
    magnitude = 10**18 if len(digits) > 18 else int(digits or b"0")
    return -magnitude if raw[:1] == b"-" else magnitude


def _scale_by_power_of_two(mantissa: int, exponent: int) -> float | None:
    """``mantissa * 2**exponent`` correctly rounded (int division rounds once), None on overflow."""
    if mantissa == 0:
        return 0.0
    top = mantissa.bit_length() + exponent  # the value lies in [2**(top-1), 2**top)
    if top > 1024:
        return None
    if top < -1075:  # below half the smallest subnormal: rounds to zero, as in Go
        return 0.0
    try:
        if exponent >= 0:
            return float(mantissa << exponent)
        return mantissa / (1 << -exponent)
    except OverflowError:  # rounded up to 2**1024
        return None


def _parse_int64(raw: bytes) -> int | None:
    """Go's ``strconv.ParseInt(s, 10, 64)`` (and ``Atoi``): sign, ASCII digits, int64 range."""
    digits = raw[1:] if raw[:1] in (b"+", b"-") else raw
    if not digits.isdigit():  # bytes.isdigit is ASCII-only and False when empty
        return None
    digits = digits.lstrip(b"0")
    if len(digits) > 19:
        return None
    value = int(digits or b"0")
    if raw[:1] == b"-":
        value = -value
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def parse_values(raw: bytes) -> tuple[float, ...]:
    """Parse packed values (``1:2::3``); empty pieces are skipped, one bad piece rejects all.

    More than ``MAX_VALUES`` values are refused before any is parsed.
    """
    pieces = raw.split(b":")
    if len(pieces) > MAX_VALUES and len(pieces) - pieces.count(b"") > MAX_VALUES:
        raise ParseError("too_many_values", f"more than {MAX_VALUES} packed values in {raw[:64]!r}...")
    values = tuple([parse_float(piece) for piece in pieces if piece])
    if not values:
        raise ParseError("metric_no_value", f"could not parse dogstatsd metric values {raw!r}: no value found")
    return values


def parse_tags(raw: bytes) -> list[bytes]:
    """Split a tag field on ',' only: no trimming, no de-duplication, empty entries kept (§1.3).

    A field of more than ``MAX_TAGS`` tags, or with a tag longer than
    ``MAX_TAG_LENGTH`` bytes, is refused (and with it the whole line).
    """
    if not raw:
        return []
    tags = raw.split(b",")
    if len(tags) > MAX_TAGS:
        raise ParseError("too_many_tags", f"{len(tags)} tags in one line, more than {MAX_TAGS}")
    if len(raw) > MAX_TAG_LENGTH and max(map(len, tags)) > MAX_TAG_LENGTH:
        raise ParseError("tag_too_long", f"a tag is longer than {MAX_TAG_LENGTH} bytes")
    return tags


# --- lines -----------------------------------------------------------------


def split_lines(packet: bytes, eol_required: bool = False) -> tuple[list[bytes], bool]:
    """Split a packet into non-empty lines, each without its ``\\n`` and one trailing ``\\r``.

    With ``eol_required`` a final piece that has no ``\\n`` is dropped, and the
    returned flag says so, so that the caller can count it (spec §1.7).
    """
    pieces = packet.split(b"\n")
    dropped = bool(pieces.pop()) if eol_required else False
    if b"\r" not in packet:
        return [piece for piece in pieces if piece], dropped
    lines = []
    for piece in pieces:
        if piece[-1:] == b"\r":
            piece = piece[:-1]
        if piece:
            lines.append(piece)
    return lines, dropped


def message_kind(line: bytes) -> str:
    """Route a line by its prefix alone, as DogStatsD does (so ``_scanner:1|c`` is a service check)."""
    if line.startswith(b"_e{"):
        return EVENT
    if line.startswith(b"_sc"):
        return SERVICE_CHECK
    return METRIC


# --- metrics ---------------------------------------------------------------

# Maps a wire type to the model's own constant, so types compare by identity.
_METRIC_TYPES = {metric_type: metric_type for metric_type in METRIC_TYPES}


def parse_metric(line: bytes, *, timestamps: bool = True, origin_client: bool = False) -> MetricMessage:
    """Parse one metric line (spec §1.2).

    ``timestamps`` mirrors ``dogstatsd_no_aggregation_pipeline``: when false,
    ``T`` fields are ignored.  ``origin_client`` mirrors
    ``dogstatsd_origin_detection_client``: when true, the raw ``c:`` value is
    kept as ``container_id``.  Checks run in the Go parser's order, so the
    reason for a line with several faults is the one DogStatsD would report.
    """
    fields = line.split(b"|")
    if len(fields) == 1:
        raise ParseError("metric_no_pipe", f"invalid dogstatsd message format: {line!r}")
    name, _, raw_value = fields[0].partition(b":")
    if not name or not raw_value:
        raise ParseError("metric_bad_name_value", f"invalid name and value: {fields[0]!r}")
    metric_type = _METRIC_TYPES.get(fields[1])
    if metric_type is None:
        raise ParseError("metric_bad_type", f"invalid metric type: {fields[1]!r}")
    values: tuple[float, ...]
    set_member: bytes | None
    if metric_type is SET:
        values, set_member = (), raw_value
    elif b":" in raw_value:
        values, set_member = parse_values(raw_value), None
    else:
        values, set_member = (parse_float(raw_value),), None
    rate = 1.0
    tags: list[bytes] = []
    timestamp = 0
    container_id = None
    if len(fields) > 2:
        for field in fields[2:]:
            first = field[:1]
            if first == b"#":
                tags = parse_tags(field[1:])
            elif first == b"@":
                try:
                    rate = parse_float(field[1:])
                except ParseError:
                    raise ParseError("metric_bad_rate", f"could not parse dogstatsd sample rate {field!r}") from None
            elif first == b"T":
                if timestamps:
                    timestamp = _parse_metric_timestamp(field[1:])
            elif origin_client and field[:2] == b"c:":
                container_id = field[2:] or None
    if len(name) > MAX_NAME_LENGTH:
        raise ParseError("name_too_long", f"a metric name of {len(name)} bytes, more than {MAX_NAME_LENGTH}")
    return MetricMessage(name, metric_type, values, set_member, rate, tags, timestamp, container_id)


def _parse_metric_timestamp(raw: bytes) -> int:
    timestamp = _parse_int64(raw)
    if timestamp is None:
        raise ParseError("metric_bad_timestamp", f"could not parse dogstatsd timestamp {raw!r}")
    if timestamp < 1:
        raise ParseError("metric_bad_timestamp", "dogstatsd timestamp should be > 0")
    return timestamp


# --- events ----------------------------------------------------------------

_PRIORITIES = {b"normal": "normal", b"low": "low"}
_ALERT_TYPES = {b"error": "error", b"warning": "warning", b"info": "info", b"success": "success"}


def parse_event(line: bytes, *, origin_client: bool = False) -> EventMessage:
    """Parse one ``_e{title_len,text_len}:title|text|...`` line (spec §1.5).

    Lengths count wire bytes, before ``\\n`` unescaping.  The header's closing
    brace and the byte between title and text are not checked, as in Go.  A bad
    ``d:``, ``p:`` or ``t:`` value keeps the previous value and adds a warning;
    the event is still accepted.
    """
    header, colon, body = line.partition(b":")
    if not colon:
        raise ParseError("event_invalid", f"invalid event: {line!r}")
    title_length, text_length = _parse_event_header(header)
    text_start = title_length + 1
    text_end = text_start + text_length
    if len(body) < text_end:
        raise ParseError("event_too_short", f"invalid event: body shorter than its header {header!r} says")
    if title_length > MAX_EVENT_TITLE_LENGTH:
        raise ParseError(
            "event_title_too_long", f"an event title of {title_length} bytes, more than {MAX_EVENT_TITLE_LENGTH}"
        )
    if text_length > MAX_EVENT_TEXT_LENGTH:
        raise ParseError(
            "event_text_too_long", f"an event text of {text_length} bytes, more than {MAX_EVENT_TEXT_LENGTH}"
        )
    event = EventMessage(
        title=body[:title_length].replace(b"\\n", b"\n"),
        text=body[text_start:text_end].replace(b"\\n", b"\n"),
    )
    if len(body) > text_end:
        for field in body[text_end:].split(b"|"):
            _apply_event_field(event, field, origin_client)
    return event


def _parse_event_header(header: bytes) -> tuple[int, int]:
    """Read ``_e{a,b}``: bytes 3 up to the last one hold the lengths, whatever that last byte is."""
    if len(header) < 7:
        raise ParseError("event_bad_header", f"invalid event header: {header!r}")
    raw_title, comma, raw_text = header[3:-1].partition(b",")
    if not comma:
        raise ParseError("event_bad_header", f"invalid event header: {header!r}")
    title_length = _parse_int64(raw_title)
    if title_length is None or title_length < 0:
        raise ParseError("event_bad_header", f"invalid event header: {header!r}")
    if title_length == 0:
        raise ParseError("event_empty_title", "invalid event: empty title")
    text_length = _parse_int64(raw_text)
    if text_length is None or text_length < 0:
        raise ParseError("event_bad_header", f"invalid event header: {header!r}")
    return title_length, text_length


def _apply_shared_field(message, field: bytes, origin_client: bool, what: str) -> bool:
    """Apply a field events and service checks share (``d:``, ``h:``, ``#``, ``c:``); False if it is not one.

    The last occurrence wins; a bad ``d:`` adds a warning naming ``what``.
    """
    prefix, value = field[:2], field[2:]
    if prefix == b"d:":
        timestamp = _parse_int64(value)
        if timestamp is None:
            message.warnings.append(f"invalid {what} timestamp: {value!r}")
        else:
            message.timestamp = timestamp
    elif prefix == b"h:":
        message.host = value or None  # Go treats an empty h: as no host at all
    elif field[:1] == b"#":
        message.tags = parse_tags(field[1:])
    elif origin_client and prefix == b"c:":
        message.container_id = value or None
    else:
        return False
    return True


# Event fields besides the shared ones: prefix -> (attribute, the values it
# takes (None: any), what a warning about a value it does not take calls it).
_EVENT_FIELDS = {
    b"k:": ("aggregation_key", None, ""),
    b"p:": ("priority", _PRIORITIES, "event priority"),
    b"s:": ("source_type", None, ""),
    b"t:": ("alert_type", _ALERT_TYPES, "alert type"),
}


def _apply_event_field(event: EventMessage, field: bytes, origin_client: bool) -> None:
    """Apply one optional field; the last occurrence wins and unknown fields are ignored."""
    if _apply_shared_field(event, field, origin_client, "event"):
        return
    spec = _EVENT_FIELDS.get(field[:2])
    if spec is None:
        return
    attribute, choices, what = spec
    value = field[2:] if choices is None else choices.get(field[2:])
    if value is None:
        event.warnings.append(f"invalid {what}: {field[2:]!r}")
    else:
        setattr(event, attribute, value)


# --- service checks --------------------------------------------------------


def parse_service_check(line: bytes, *, origin_client: bool = False) -> ServiceCheckMessage:
    """Parse one ``_sc|name|status|...`` line (spec §1.6).

    The first 4 bytes are dropped unchecked, as in Go.  ``m:`` runs to the next
    ``|`` and is not unescaped.  A bad ``d:`` adds a warning and is ignored.
    """
    if len(line) < 4 or line.count(b"|") < 2:
        raise ParseError("service_check_invalid", f"invalid dogstatsd service check format: {line!r}")
    fields = line[4:].split(b"|")
    name = fields[0]
    if not name:
        raise ParseError("service_check_empty_name", "invalid dogstatsd service check name: empty name")
    # Only a line that does not start with "_sc" can have its pipes all in the dropped bytes.
    raw_status = fields[1] if len(fields) > 1 else b""
    status = CHECK_STATUSES.get(raw_status)
    if status is None:
        raise ParseError("service_check_bad_status", f"invalid dogstatsd service check status: {raw_status!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ParseError("name_too_long", f"a service check name of {len(name)} bytes, more than {MAX_NAME_LENGTH}")
    check = ServiceCheckMessage(name=name, status=status)
    for field in fields[2:]:
        if _apply_shared_field(check, field, origin_client, "service check") or field[:2] != b"m:":
            continue
        if len(field) - 2 > MAX_SERVICE_CHECK_MESSAGE_LENGTH:
            raise ParseError(
                "service_check_message_too_long",
                f"a service check message of {len(field) - 2} bytes, more than {MAX_SERVICE_CHECK_MESSAGE_LENGTH}",
            )
        check.message = field[2:]
    return check
