"""DogStatsD's metric mapper: dotted Graphite-style names become tagged metrics (spec §5).

``MetricMapper`` is built once from ``dogstatsd_mapper_profiles`` as it comes
from YAML, validated the way DogStatsD validates it (spec §5.2), and then maps
wire-format ``bytes`` names without decoding them.  Only the first profile
whose prefix applies is tried, the first matching mapping wins, and every
answer under a profile, match or not, goes into an LRU cache, so a hot name
costs one ``startswith`` and one cache lookup (spec §5.4).

Patterns keep DogStatsD's Go RE2 semantics: a wildcard is ``^`` + pattern +
``$`` with ``.`` escaped and each ``*`` a ``([^.]*)`` group; a regex is glued
between ``^`` and ``$`` as text and *searched*, so ``a|b`` anchors only the
start of ``a`` and the end of ``b``.  Go syntax Python lacks is translated and
Python-only syntax Go rejects is rejected.  Matching is on bytes, so ``.`` and
negated classes take one byte where Go takes one UTF-8 character; what cannot
be matched faithfully on bytes (``\\p{…}``, the ``U`` flag, negated POSIX
classes, non-ASCII inside ``[…]``) is refused rather than approximated.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["MapperConfigError", "MetricMapper"]

_ALLOWED_WILDCARD = r"^[a-zA-Z0-9\-_*.]+$"  # DogStatsD's check, quoted in its error message
_is_allowed_wildcard = re.compile(r"[a-zA-Z0-9\-_*.]+").fullmatch
_ALTERNATIVES_PER_REGEX = 64  # see _wildcard_blocks; chosen with benchmarks/mapper.py
_GO_SPACE = "\\t\\n\\f\\r "  # Go's \s, which unlike Python's has no \v
_GO_NOT_SPACE = "\\x00-\\x08\\x0b\\x0e-\\x1f\\x21-\\xff"  # its complement, for use inside [...]
_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]*):\]")
_NAMED_GROUP = re.compile(r"\(\?P?<([A-Za-z0-9_]+)>")  # Go 1.22 accepts (?<name>…) too
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")
_REPEAT = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")  # any other "{" is a literal in Go
_HEX = re.compile(r"x(?:\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{2}))")


class MapperConfigError(ValueError):
    """``dogstatsd_mapper_profiles`` is invalid; DogStatsD then runs without a mapper."""


class _BadRegex(Exception):
    """A pattern Go's regexp rejects, or one that bytes matching could not honour."""


# -- Go RE2 syntax to a Python bytes pattern ------------------------------------------------


def _literal(char: str, in_class: bool = False) -> str:
    """One character as a literal; a UTF-8 sequence is grouped so that a quantifier takes it whole."""
    if char.isascii():
        return f"\\x{ord(char):02x}"
    if in_class:
        raise _BadRegex(f"non-ASCII character {char!r} inside [...] is not supported (bytes matching)")
    return "(?:" + "".join(f"\\x{b:02x}" for b in char.encode("utf-8")) + ")"


def _escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape sequence at ``pattern[i]`` (a backslash); return it and where it ends."""
    c = pattern[i + 1 : i + 2]
    if not c:
        raise _BadRegex("trailing backslash at end of expression")
    if c == "Q" and not in_class:
        end = pattern.find("\\E", i + 2) % (len(pattern) + 1)  # no \E: the rest of the pattern
        return "".join(_literal(ch) for ch in pattern[i + 2 : end]), end + 2
    if c in "sS":
        if in_class:
            return (_GO_SPACE if c == "s" else _GO_NOT_SPACE), i + 2
        return ("[" if c == "s" else "[^") + _GO_SPACE + "]", i + 2
    if c == "z" and not in_class:
        return "\\Z", i + 2
    if c in "pP":
        raise _BadRegex(f"Unicode class `\\{c}` is not supported (bytes matching)")
    if c in "01234567":  # octal, but a lone \1-\7 would be a back-reference, which RE2 lacks
        octal = re.match(r"[0-7]{1,3}", pattern[i + 1 :])
        assert octal is not None  # pattern[i + 1] is c, an octal digit
        digits = octal.group()
        if c != "0" and len(digits) == 1:
            raise _BadRegex(f"invalid escape sequence: `\\{c}`")
        return _literal(chr(int(digits, 8)), in_class), i + 1 + len(digits)
    if c == "x":
        m = _HEX.match(pattern, i + 1)
        if m is None or int(m.group(1) or m.group(2), 16) > 0x10FFFF:
            raise _BadRegex(f"invalid escape sequence: `{pattern[i : i + 4]}`")
        return _literal(chr(int(m.group(1) or m.group(2), 16)), in_class), m.end()
    if (c.isalnum() and c not in ("afnrtvdDwW" if in_class else "afnrtvdDwWAbB")) or not c.isascii():
        raise _BadRegex(f"invalid escape sequence: `\\{c}`")
    return "\\" + c, i + 2


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the bracket expression at ``pattern[i]``; a ``]`` right after ``[`` or ``[^`` is literal."""
    out, j = ["["], i + 1
    if pattern.startswith("^", j):
        out.append("^")
        j += 1
    first = True
    while j < len(pattern):
        c, posix = pattern[j], _POSIX_CLASS.match(pattern, j)
        if c == "]" and not first:
            return "".join(out) + "]", j + 1
        first = False
        if posix:
            if posix.group(2) not in _POSIX:
                raise _BadRegex(f"invalid character class range: `{posix.group()}`")
            if posix.group(1):
                raise _BadRegex(f"negated class `{posix.group()}` is not supported")
            out.append(_POSIX[posix.group(2)])
            j = posix.end()
        elif c == "\\":
            piece, j = _escape(pattern, j, in_class=True)
            out.append(piece)
        else:  # "[", "&&", "~~" and "||" would make Python warn of future set syntax
            out.append(_literal(c, in_class=True) if c in "[&~|" or not c.isascii() else c)
            j += 1
    raise _BadRegex(f"missing closing ]: `{pattern[i:]}`")


def _go_regex(pattern: str) -> str:
    """Translate a Go RE2 pattern into an ASCII Python pattern with the same meaning on bytes.

    In Go, ``(?flags)`` applies to the rest of its group, across ``|``; Python
    3.11 only takes ``(?flags:…)`` there, so one is opened at that point and
    closed and reopened around each later ``|`` of the group.  ``scopes``
    holds, per open group, the flags opened so far in it.
    """
    out: list[str] = []
    scopes: list[list[str]] = [[]]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            piece, i = _escape(pattern, i, in_class=False)
        elif c == "[":
            piece, i = _char_class(pattern, i)
        elif c == "(" and pattern.startswith("(?", i):
            named, flags = _NAMED_GROUP.match(pattern, i), _FLAG_GROUP.match(pattern, i)
            if named:
                piece, i = f"(?P<{named.group(1)}>", named.end()
                scopes.append([])
            elif flags and not set(flags.group(1) + (flags.group(2) or "")) - set("ims") and flags.group(2) != "":
                spec = flags.group(1) + ("-" + flags.group(2) if flags.group(2) else "")
                piece, i = f"(?{spec}:", flags.end()
                if flags.group(3) == ":":
                    scopes.append([])
                elif spec:
                    scopes[-1].append(spec)
                else:
                    piece = ""  # "(?)" sets nothing
            else:  # look-arounds, comments, atomic groups, conditionals, (?P=n); or Go's U flag
                raise _BadRegex(f"invalid or unsupported Perl syntax: `{pattern[i : i + 3]}`")
        elif c == "(":
            piece, i = "(", i + 1
            scopes.append([])
        elif c == ")" and len(scopes) > 1:
            piece, i = ")" * len(scopes.pop()) + ")", i + 1
        elif c == "|":
            piece, i = ")" * len(scopes[-1]) + "|" + "".join(f"(?{f}:" for f in scopes[-1]), i + 1
        elif c == "{" and (repeat := _REPEAT.match(pattern, i)):
            low, high = int(repeat.group(1)), repeat.group(3) if repeat.group(2) else repeat.group(1)
            if low > 1000 or (high and not low <= int(high) <= 1000):
                raise _BadRegex(f"invalid repeat count: `{repeat.group()}`")
            piece, i = repeat.group(), repeat.end()
        elif c in "{}" or not c.isascii():
            piece, i = _literal(c), i + 1
        else:
            piece, i = c, i + 1
        if piece[-1:] in ("*", "+", "?", "}") and pattern.startswith("+", i) and not piece.startswith("\\"):
            raise _BadRegex(f"invalid nested repetition operator: `{piece[-1]}+`")  # possessive in Python
        out.append(piece)
    return "".join(out) + ")" * len(scopes[0])


# -- templates: Go's Regexp.Expand ---------------------------------------------------------


def _template_ref(template: str, i: int) -> tuple[str, int] | None:
    """The name after a ``$`` (at ``i - 1``) and where it ends, or None if malformed.

    A name is the longest run of letters, digits and ``_``, so ``$1_x`` names ``1_x``.
    """
    brace = template.startswith("{", i)
    start = end = i + brace
    while end < len(template) and (template[end].isalpha() or template[end].isdecimal() or template[end] == "_"):
        end += 1
    if end == start or (brace and not template.startswith("}", end)):
        return None
    return template[start:end], end + brace


def _group_number(name: str) -> int:
    """Go's digit parse: a group number, or -1 for a name (not ASCII digits, over 9 digits, a leading 0)."""
    number = name.isascii() and name.isdigit() and len(name) <= 9 and (name == "0" or name[0] != "0")
    return int(name) if number else -1


class _Template(NamedTuple):
    """A template as ``fmt % match.group(*groups)``: one C call for the groups and one for the text."""

    fmt: bytes
    groups: tuple[int, ...]

    def expand(self, match: re.Match) -> bytes:
        """The slow path, for a regex group that took no part (None): Go expands it to nothing.

        A template without references is plain text (its ``%`` not doubled), as in :meth:`_Rule.result`.
        """
        if not self.groups:
            return self.fmt
        return self.fmt % tuple(match.group(g) or b"" for g in self.groups)


def _template(template: str, prefix: str, groups: int, names: Mapping[str, int], offset: int) -> _Template:
    """Compile ``prefix`` + template; ``offset`` moves $1… to a mapping's groups in a combined regex.

    References to unknown or out-of-range groups expand to nothing in Go, so they are dropped.
    """
    fmt, refs, i = [prefix.replace("%", "%%")], [], 0
    while (dollar := template.find("$", i)) >= 0:
        fmt.append(template[i:dollar].replace("%", "%%"))
        i = dollar + 1
        ref = None if template.startswith("$", i) else _template_ref(template, i)
        if ref is None:  # "$$", or a malformed reference: a literal "$"
            fmt.append("$")
            i += template.startswith("$", i)
            continue
        name, i = ref
        num = _group_number(name)
        group = num if 0 <= num <= groups else names.get(name) if num < 0 else None
        if group is not None:
            fmt.append("%b")
            refs.append(group + offset if group else 0)
    text = ("".join(fmt) + template[i:].replace("%", "%%")).encode("utf-8")
    return _Template(text if refs else text.replace(b"%%", b"%"), tuple(refs))


class _Rule(NamedTuple):
    name: _Template
    tags: tuple[_Template, ...]  # each renders a whole b"key:value"

    def result(self, match: re.Match) -> tuple[bytes, tuple[bytes, ...]]:
        name = self.name
        try:
            return (
                name.fmt % match.group(*name.groups) if name.groups else name.fmt,
                tuple([fmt % match.group(*groups) if groups else fmt for fmt, groups in self.tags]),
            )
        except TypeError:  # None from an optional group
            return name.expand(match), tuple([tag.expand(match) for tag in self.tags])


def _rule(mapping: Mapping, groups: int, names: Mapping[str, int], offset: int) -> _Rule:
    tags = (mapping.get("tags") or {}).items()
    return _Rule(
        _template(mapping["name"], "", groups, names, offset),
        tuple(_template(value or "", f"{key}:", groups, names, offset) for key, value in tags),
    )


# -- compiled mappings: (match function, rule or {lastindex: rule}) --------------------------


def _regex_block(pattern: str, mapping: Mapping, where: str) -> tuple:
    """DogStatsD compiles ``"^" + match + "$"`` and uses ``FindStringSubmatchIndex``: a search."""
    try:
        regex = re.compile(b"^" + _go_regex(pattern).encode("ascii") + b"\\Z")
    except (_BadRegex, re.error) as e:
        raise MapperConfigError(f"{where}: invalid match `{pattern}`. cannot compile regex: {e}") from None
    return regex.search, _rule(mapping, regex.groups, regex.groupindex, 0)


def _wildcard_blocks(run: list[tuple[str, Mapping]]) -> list[tuple]:
    """Consecutive wildcard mappings as alternations ``^(?:A1\\Z()|A2\\Z()|…)``: first match wins, in C.

    A mapping's stars are groups g…, then its empty marker group, the last
    one set, tells through ``lastindex`` which mapping matched.  The marker
    goes last because sre clears the group slots below each one it sets: a
    group opening every alternative made a scan quadratic.  A match copies
    all of its regex's groups, hence at most _ALTERNATIVES_PER_REGEX a regex.
    """
    blocks = []
    for start in range(0, len(run), _ALTERNATIVES_PER_REGEX):
        alternatives, rules, group = [], {}, 1
        for pattern, mapping in run[start : start + _ALTERNATIVES_PER_REGEX]:
            stars = pattern.count("*")
            alternatives.append(pattern.replace(".", "\\.").replace("*", "([^.]*)") + "\\Z()")
            rules[group + stars] = _rule(mapping, stars, {}, group - 1)
            group += stars + 1
        regex = re.compile(("^(?:" + "|".join(alternatives) + ")").encode("ascii"))
        blocks.append((regex.match, rules if len(rules) > 1 else rules[group - 1]))
    return blocks


def _text(value, what: str) -> str:
    """A YAML string field; a missing or null one is empty, like Go's zero value."""
    if value is None or isinstance(value, str):
        return value or ""
    raise MapperConfigError(f"{what} must be a string, not {type(value).__name__}")


def _profile(index: int, profile) -> tuple[bytes, list]:
    """Validate one profile in DogStatsD's order of checks (spec §5.2) and compile it."""
    if not isinstance(profile, Mapping):
        raise MapperConfigError(
            f"profile {index}: must be a mapping of name, prefix and mappings, not {type(profile).__name__}"
        )
    name = _text(profile.get("name"), f"profile {index}: name")
    if not name:
        raise MapperConfigError(f"missing profile name {index}")
    prefix = _text(profile.get("prefix"), f"profile: {name}: prefix")
    if not prefix:
        raise MapperConfigError(f"missing prefix for profile: {name}")
    mappings = profile.get("mappings") or []
    if not isinstance(mappings, (list, tuple)):
        raise MapperConfigError(f"profile: {name}: mappings must be a list, not {type(mappings).__name__}")
    blocks: list = []
    run: list[tuple[str, Mapping]] = []  # consecutive wildcard mappings, compiled together
    for i, mapping in enumerate(mappings):
        where = f"profile: {name}, mapping num {i}"
        if not isinstance(mapping, Mapping):
            raise MapperConfigError(f"{where}: must be a mapping, not {type(mapping).__name__}")
        if (_text(mapping.get("match_type"), f"{where}: match_type") or "wildcard") not in ("wildcard", "regex"):
            raise MapperConfigError(f"{where}: invalid match type, must be `wildcard` or `regex`")
        if not _text(mapping.get("name"), f"{where}: name"):
            raise MapperConfigError(f"{where}: name is required")
        pattern = _text(mapping.get("match"), f"{where}: match")
        if not pattern:
            raise MapperConfigError(f"{where}: match is required")
        tags = mapping.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise MapperConfigError(f"{where}: tags must be a mapping of tag name to value template")
        for key, value in tags.items():
            if not isinstance(key, str):
                raise MapperConfigError(f"{where}: tag name {key!r} must be a string, not {type(key).__name__}")
            _text(value, f"{where}: tag {key!r}")
        if mapping.get("match_type") == "regex":
            blocks += _wildcard_blocks(run) + [_regex_block(pattern, mapping, where)]
            run = []
            continue
        if not _is_allowed_wildcard(pattern):
            raise MapperConfigError(
                f"{where}: invalid wildcard match pattern `{pattern}`, "
                f"it does not match allowed match regex `{_ALLOWED_WILDCARD}`"
            )
        if "**" in pattern:
            raise MapperConfigError(
                f"{where}: invalid wildcard match pattern `{pattern}`, it should not contain consecutive `*`"
            )
        run.append((pattern, mapping))
    return (b"" if prefix == "*" else prefix.encode("utf-8")), blocks + _wildcard_blocks(run)


class MetricMapper:
    """Maps metric names through ``dogstatsd_mapper_profiles`` (spec §5.4); see the module docstring."""

    def __init__(self, profiles, cache_size: int = 1000):
        if not isinstance(profiles, (list, tuple)):
            raise MapperConfigError(
                f"dogstatsd_mapper_profiles must be a list of profiles, not {type(profiles).__name__}"
            )
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise MapperConfigError(f"dogstatsd_mapper_cache_size must be a non-negative integer, not {cache_size!r}")
        self._profiles = [_profile(i, p) for i, p in enumerate(profiles)]
        self._prefixes = tuple(prefix for prefix, _ in self._profiles)  # b"" for "*": every name
        # Only names under some profile reach the cache, as in DogStatsD.  functools'
        # LRU is the C version of an OrderedDict with move_to_end, at half the cost.
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup)

    def map(self, name: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        """The mapped name and the mapping's tags (``b"key:value"``, in declared order), or None."""
        if name.startswith(self._prefixes):
            return self._cached(name)
        return None

    def cache_info(self):
        """``(hits, misses, maxsize, currsize)`` of the LRU cache, for telemetry."""
        return self._cached.cache_info()

    def _lookup(self, name: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        for prefix, blocks in self._profiles:
            if name.startswith(prefix):
                for matcher, rules in blocks:
                    match = matcher(name)
                    if match is not None:
                        return (rules if rules.__class__ is _Rule else rules[match.lastindex]).result(match)
                return None  # later profiles are not tried, even when their prefix applies
        return None
