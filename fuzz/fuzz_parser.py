"""Coverage-guided fuzzing of the DogStatsD parser (see fuzz/README.md).

Each input is a packet.  It is split into lines (with or without a required
final newline, per the first byte) and every line goes through the parser its
prefix selects, and through the other two as well.  The only exception
allowed is ``ParseError`` with a documented reason; an accepted line must stay
within the size limits, and a line must parse the same inside the packet as
alone (split_lines must not change a line it keeps).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["twisted_statsd"]):
    from twisted_statsd.core import parser
    from twisted_statsd.core.parser import REASONS, ParseError

PARSERS = (parser.parse_metric, parser.parse_event, parser.parse_service_check)


def parse(parse_line, line: bytes, options: int):
    try:
        if parse_line is parser.parse_metric:
            return parse_line(line, timestamps=bool(options & 2), origin_client=bool(options & 4))
        return parse_line(line, origin_client=bool(options & 4))
    except ParseError as error:
        if error.reason not in REASONS:
            raise AssertionError(f"undocumented reason {error.reason!r}") from None
        return None


def test_one_input(data: bytes) -> None:
    options, packet = (data[0], data[1:]) if data else (0, b"")
    lines, _dropped = parser.split_lines(packet, eol_required=bool(options & 1))
    for line in lines:
        if not line or b"\n" in line:
            raise AssertionError(f"split_lines kept {line!r}")
        parser.message_kind(line)
        for parse_line in PARSERS:
            message = parse(parse_line, line, options)
            tags = getattr(message, "tags", None) or ()
            if len(tags) > parser.MAX_TAGS or any(len(tag) > parser.MAX_TAG_LENGTH for tag in tags):
                raise AssertionError(f"tags over the limits accepted from {line[:100]!r}")
            if len(getattr(message, "values", ())) > parser.MAX_VALUES:
                raise AssertionError(f"values over the limit accepted from {line[:100]!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
