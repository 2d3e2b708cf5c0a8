"""Configuration: defaults, embedder data, a YAML file, the environment and
command-line overrides merged into one frozen, validated :class:`Config`.

Key names, defaults and ``DD_*`` environment variables follow DogStatsD (spec
§10), so an agent's ``datadog.yaml`` works unchanged.  Such files carry many
settings that are not ours, so unknown keys become warnings, not errors (with the
nearest known key when one is close: a misspelling); a value of the wrong type or
out of range is an error naming the key and its source, on one line.
Every key is declared once, as a field of :class:`Config` that carries its
default and its converter.  This module imports nothing from Twisted.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import socket
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

import yaml

from twisted_statsd.core.mapper import MapperConfigError, MetricMapper
from twisted_statsd.errors import StartupError

__all__ = [
    "EPHEMERAL_PORT",
    "STANDARD_STATSD_PREFIXES",
    "Config",
    "ConfigError",
    "MemoryLimiterConfig",
    "SinkConfig",
    "SinkOption",
    "as_data",
    "key_help",
    "load_config",
]

#: ``dogstatsd_port`` value meaning "let the kernel pick a port" (``__random__``).
EPHEMERAL_PORT = -1
RANDOM_PORT = "__random__"

#: DogStatsD's default ``statsd_metric_namespace_blacklist`` (spec §6.2).
STANDARD_STATSD_PREFIXES = (
    "datadog.agent",
    "datadog.dogstatsd",
    "datadog.process",
    "datadog.trace_agent",
    "datadog.tracer",
    "activemq",
    "activemq_58",
    "airflow",
    "cassandra",
    "confluent",
    "hazelcast",
    "hive",
    "ignite",
    "jboss",
    "jvm",
    "kafka",
    "presto",
    "sidekiq",
    "solr",
    "tomcat",
    "runtime",
)
HISTOGRAM_AGGREGATES = ("max", "min", "median", "avg", "sum", "count")
EOL_TRANSPORTS = ("udp", "uds", "named_pipe")


class ConfigError(StartupError):
    """A configuration that cannot be used; the message names the key and its source."""


# Close enough to be a misspelling (dogstatsd_prot -> dogstatsd_port scores 0.93), not so
# loose that the agent's own keys get a suggestion (dogstatsd_stats_port scores 0.82).
_SIMILARITY = 0.85


def _did_you_mean(name: Any, known: Any) -> str:
    """`` (did you mean 'x'?)`` naming the known name nearest to ``name``, or '' when none is close."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=_SIMILARITY)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Invalid(Exception):
    """Raised by converters; ``where`` locates the problem inside the value (``[2].path``)."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


# A converter takes the raw value, whether strings should be parsed (true for every
# top-level key; false inside sink entries), and a warnings callback; it returns the typed value.
Warn = Callable[[str], None]
Converter = Callable[[Any, bool, Warn], Any]

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _parse_int(value: Any, textual: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if textual and isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    raise _Invalid(f"expected an integer, got {value!r}")


def _parse_float(value: Any, textual: bool) -> float:
    if (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        textual and isinstance(value, str) and _FLOAT.fullmatch(value)
    ):
        number = float(value)
        if math.isfinite(number):
            return number
    raise _Invalid(f"expected a number, got {value!r}")


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"[+-]?(?:{_DURATION_PART})+")


def _parse_duration(value: Any, textual: bool) -> float:
    """Parse a Go duration (``"100ms"``, ``"1m30s"``) into seconds, as the agent's config does."""
    if isinstance(value, str) and _DURATION.fullmatch(value):
        seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in re.findall(_DURATION_PART, value))
        return -seconds if value.startswith("-") else seconds
    problem = "a duration needs a unit" if _FLOAT.fullmatch(str(value)) else "expected a duration"
    raise _Invalid(f"{problem}, such as '100ms' or '1.5s', got {value!r}")


def _bounded(
    parse: Callable[[Any, bool], Any], *, above: float | None = None, at_least: float | None = None
) -> Converter:
    def convert(value: Any, textual: bool, warn: Warn) -> Any:
        result = parse(value, textual)
        if above is not None and not result > above:
            raise _Invalid(f"must be greater than {above}")
        if at_least is not None and result < at_least:
            raise _Invalid(f"must be at least {at_least}")
        return result

    return convert


def _boolean(value: Any, textual: bool, warn: Warn) -> bool:
    if isinstance(value, bool):
        return value
    if textual and isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise _Invalid(f"expected a boolean, got {value!r}")


def _string(value: Any, textual: bool = False, warn: Warn | None = None) -> str:
    if isinstance(value, str):
        return value
    raise _Invalid(f"expected a string, got {value!r}")


def _port(value: Any, textual: bool, warn: Warn) -> int:
    if value == RANDOM_PORT:
        return EPHEMERAL_PORT
    port = _parse_int(value, textual)
    if not 0 <= port <= 65535:
        raise _Invalid(f"must be between 0 and 65535 (or {RANDOM_PORT!r}), got {port}")
    return port


def _namespace(value: Any, textual: bool, warn: Warn) -> str:
    """The namespace is a prefix of dotted names, so it always ends in a dot (spec §6.2)."""
    namespace = _string(value)
    return namespace + "." if namespace and not namespace.endswith(".") else namespace


def _list(value: Any, textual: bool) -> list:
    if textual and isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _Invalid(f"expected a list, got {value!r}")


def _each(items: list, convert: Callable[[Any], Any]) -> tuple:
    """Convert every item, locating an error by the item's index."""
    result = []
    for index, item in enumerate(items):
        try:
            result.append(convert(item))
        except _Invalid as error:
            raise _Invalid(str(error), f"[{index}]{error.where}") from None
    return tuple(result)


def _strings(finish: Callable[[tuple[str, ...]], tuple] = tuple) -> Converter:
    return lambda value, textual, warn: finish(_each(_list(value, textual), _string))


def _lenient(convert_item: Callable[[Any], Any], what: str) -> Converter:
    """A list whose bad items are warned about and skipped, as DogStatsD logs and skips them."""

    def convert(value: Any, textual: bool, warn: Warn) -> tuple:
        kept: list = []
        for item in _list(value, textual):
            try:
                result = convert_item(item)
            except _Invalid as error:
                warn(f"{what} {item!r} ignored: {error}")
            else:
                if result not in kept:
                    kept.append(result)
        return tuple(kept)

    return convert


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(item: Any) -> str:
        if item not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}")
        return item

    return convert


def _percentile(value: Any) -> float:
    """Percentiles are written as strings (``"0.95"``) or numbers in [0, 1]."""
    number = _parse_float(value, True)
    if not 0 <= number <= 1:
        raise _Invalid(f"must be between 0 and 1, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """One configured output; ``options`` is read-only and has every default filled in."""

    type: str
    options: Mapping[str, Any]

    def __repr__(self) -> str:
        # API keys and HTTP headers (which carry credentials) are not shown.
        shown = {k: ("***" if k in ("api_key", "headers") and v else v) for k, v in self.options.items()}
        return f"SinkConfig(type={self.type!r}, options={shown!r})"


def _path(value: Any) -> str:
    if not _string(value):
        raise _Invalid("must not be empty")
    return value


def _option(convert: Converter) -> Callable[[Any], Any]:
    """A top-level converter, used for one option inside a sink entry."""
    return lambda value: convert(value, True, lambda message: None)


def _numbers(value: Any) -> tuple:
    return _each(_list(value, False), lambda item: _parse_float(item, True))


def _PERCENTILES(value):
    return _each(_list(value, False), _percentile)


_SECONDS = _option(_bounded(_parse_float, at_least=0))
_POSITIVE_SECONDS = _option(_bounded(_parse_float, above=0))
_POSITIVE_INT = _option(_bounded(_parse_int, above=0))


def _tcp_port(value: Any) -> int:
    port = _parse_int(value, True)
    if not 0 <= port <= 65535:
        raise _Invalid(f"must be between 0 and 65535, got {port}")
    return port


def _string_map(value: Any) -> Mapping[str, str]:
    """A mapping of strings to strings (HTTP headers, OTLP resource attributes); numbers are taken as text."""
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping of strings, got {value!r}")
    result = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, (bool, Mapping, list, tuple)) or item is None:
            raise _Invalid(f"expected a string, got {item!r}", f".{key}")
        result[key] = str(item)
    return types.MappingProxyType(result)


class SinkOption:
    """Converters for sink options: each takes the YAML value and returns the typed one.

    Each sink module declares its options beside its class, as ``OPTIONS =
    {name: (converter, default)}`` built from these; :mod:`twisted_statsd.sinks`
    names the modules.
    """

    string = staticmethod(_string)
    path = staticmethod(_path)
    tcp_port = staticmethod(_tcp_port)
    numbers = staticmethod(_numbers)
    percentiles = staticmethod(_PERCENTILES)
    seconds = staticmethod(_SECONDS)
    positive_seconds = staticmethod(_POSITIVE_SECONDS)
    positive_int = staticmethod(_POSITIVE_INT)
    string_map = staticmethod(_string_map)

    @staticmethod
    def one_of(*choices: str) -> Callable[[Any], str]:
        return _one_of(choices)


def _sink(entry: Any) -> SinkConfig:
    if not isinstance(entry, Mapping) or "type" not in entry:
        raise _Invalid(f"expected a mapping with a 'type', got {entry!r}")
    # Imported here: the registry imports a sink's module (and Twisted) only
    # when a sink of its type is configured.
    from twisted_statsd.sinks import SINK_MODULES, sink_options

    kind = entry["type"]
    if not (isinstance(kind, str) and kind in SINK_MODULES):
        raise _Invalid(
            f"unknown sink type {kind!r}{_did_you_mean(kind, SINK_MODULES)} (known: {', '.join(SINK_MODULES)})"
        )
    options = sink_options(kind)
    for name in entry:
        if name != "type" and name not in options:
            known = ", ".join(options) or "none"
            raise _Invalid(
                f"unknown option {name!r} for sink type {kind!r}{_did_you_mean(name, options)} (known: {known})"
            )
    values = {}
    for name, (convert, default) in options.items():
        try:
            values[name] = default if entry.get(name) is None else convert(entry[name])
        except _Invalid as error:
            raise _Invalid(str(error), f".{name}{error.where}") from None
    return SinkConfig(kind, types.MappingProxyType(values))


def _sinks(value: Any, textual: bool, warn: Warn) -> tuple[SinkConfig, ...]:
    return _each(_list(value, False), _sink)


def _file_mode(value: Any, textual: bool, warn: Warn) -> int:
    """Permissions of a socket file: an octal string (``"0722"``, ``"0o722"``) or an integer."""
    if isinstance(value, str) and re.fullmatch(r"(?:0o?)?[0-7]{1,4}", value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise _Invalid(f"expected a permission mode in octal, such as '0722', got {value!r}")
    if not 0 <= mode <= 0o777:
        raise _Invalid(f"must be a permission mode between 0 and 0o777 (quote it in octal: '0722'), got {value!r}")
    return mode


def _setting(convert: Converter, default: Any) -> Any:
    """One option of a setting given as a mapping: its default, and the converter its value goes through."""
    return field(default=default, metadata={"convert": convert})


def _converters(setting: type) -> dict[str, Converter]:
    """The options of ``setting`` (a dataclass of :func:`_setting` fields) and their converters."""
    return {option.name: option.metadata["convert"] for option in fields(setting)}


_POSITIVE = _bounded(_parse_float, above=0)
_COUNT = _bounded(_parse_int, at_least=0)


@dataclass(frozen=True, slots=True)
class MemoryLimiterConfig:
    """``dogstatsd_mem_based_rate_limiter``: slow the Unix listeners down when memory runs short.

    The limits are fractions of ``memory_limit_bytes`` (0: the cgroup's limit,
    else the host's memory); ``hard_limit`` and the last two options are ours.
    """

    enabled: bool = _setting(_boolean, False)
    low_soft_limit: float = _setting(_POSITIVE, 0.7)
    high_soft_limit: float = _setting(_POSITIVE, 0.8)
    hard_limit: float = _setting(_POSITIVE, 0.9)
    memory_limit_bytes: int = _setting(_COUNT, 0)
    check_interval: float = _setting(_POSITIVE, 1.0)


# The agent's options that tune Go's runtime or its check sampling: accepted, ignored.
_AGENT_ONLY_LIMITER_OPTIONS = ("go_gc", "memory_ballast", "rate_check", "soft_limit_freeos_check")


def _memory_limiter(value: Any, textual: bool, warn: Warn) -> MemoryLimiterConfig:
    options = _option_mapping(value, textual, warn, _converters(MemoryLimiterConfig), _AGENT_ONLY_LIMITER_OPTIONS)
    limiter = MemoryLimiterConfig(**options)
    if not limiter.low_soft_limit <= limiter.high_soft_limit <= limiter.hard_limit:
        raise _Invalid(
            "low_soft_limit <= high_soft_limit <= hard_limit is required, got "
            f"{limiter.low_soft_limit}, {limiter.high_soft_limit}, {limiter.hard_limit}"
        )
    return limiter


@dataclass(frozen=True, slots=True)
class ContextLimiterConfig:
    """``dogstatsd_context_limiter``: budgets of live contexts; new contexts beyond one go to overflow.

    ``limit`` caps every live context; ``sender_limit`` (ours) is each sender's
    budget, 0 sharing ``limit`` evenly among the senders as DogStatsD does;
    ``metric_name_limit`` (ours) caps the contexts of one metric name.
    ``entry_timeout`` is how long, in seconds, a row of the overflow table
    outlives its last overflow, and a value held by ``dogstatsd_tag_value_limits``
    its last line.
    """

    limit: int = _setting(_COUNT, 0)
    sender_limit: int = _setting(_COUNT, 0)
    metric_name_limit: int = _setting(_COUNT, 0)
    key_tag_name: str = _setting(_string, "")
    entry_timeout: float = _setting(lambda value, textual, warn: _seconds(value, textual, warn), 300.0)


def _decoded(value: Any, textual: bool, what: str) -> Any:
    """``value`` decoded from JSON when it is text (``what``: what the JSON must hold), else as it is."""
    if textual and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as error:
            raise _Invalid(f"cannot be parsed as {what}: {error}") from None
    return value


def _options(value: Any, textual: bool, warn: Warn, known: Mapping[str, Converter], ignored=()) -> dict:
    """Like :func:`_option_mapping`, the mapping also accepted as JSON text."""
    return _option_mapping(_decoded(value, textual, "JSON"), textual, warn, known, ignored)


def _option_mapping(value: Any, textual: bool, warn: Warn, known: Mapping[str, Converter], ignored=()) -> dict:
    """A mapping of options converted one by one; unknown and ``ignored`` (Go-only) options are warned about."""
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping of options, got {value!r}")
    options = {}
    for name, item in value.items():
        if name in ignored:
            warn(f"option {name!r} only tunes the Go agent; ignored")
        elif name not in known:
            warn(f"unknown option {name!r} ignored{_did_you_mean(name, known)} (known: {', '.join(known)})")
        elif item is not None:
            try:
                options[name] = known[name](item, textual, warn)
            except _Invalid as error:
                raise _Invalid(str(error), f".{name}{error.where}") from None
    return options


def _context_limiter(value: Any, textual: bool, warn: Warn) -> ContextLimiterConfig:
    # The agent sizes its limit from the cgroup's memory; here the limit is given.
    options = _options(
        value, textual, warn, _converters(ContextLimiterConfig), ("cgroup_memory_ratio", "bytes_per_context")
    )
    return ContextLimiterConfig(**options)


@dataclass(frozen=True, slots=True)
class TagFilterRule:
    """One ``metric_tag_filterlist`` entry: keep (``include``) or drop (``exclude``) tag keys of a metric."""

    metric_name: str
    action: str
    tags: tuple[str, ...]


def _tag_filter_rule(item: Any) -> TagFilterRule:
    if not isinstance(item, Mapping):
        raise _Invalid(f"expected a mapping with metric_name, action and tags, got {item!r}")
    name = _string(item.get("metric_name"))
    if not name:
        raise _Invalid("metric_name is required")
    action = item.get("action", "exclude")
    if action not in ("include", "exclude"):
        raise _Invalid(f"action must be include or exclude, got {action!r}")
    tags = item.get("tags")
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise _Invalid(f"tags must be a list of tag keys, got {tags!r}")
    return TagFilterRule(name, action, tuple(tags))


def _tag_filterlist(value: Any, textual: bool, warn: Warn) -> tuple[TagFilterRule, ...]:
    value = _decoded(value, textual, "a JSON list")
    rules = _each(_list(value, False), _tag_filter_rule)
    names = [rule.metric_name for rule in rules]
    for name in sorted({n for n in names if names.count(n) > 1}):
        raise _Invalid(f"metric {name!r} has more than one rule")
    return rules


@dataclass(frozen=True, slots=True)
class TagValueLimit:
    """One ``dogstatsd_tag_value_limits`` entry: at most ``limit`` values of ``tag`` per metric."""

    tag: str
    limit: int
    metric_name: str = ""


def _tag_value_limit(item: Any) -> TagValueLimit:
    if not isinstance(item, Mapping) or "tag" not in item or "limit" not in item:
        raise _Invalid(f"expected a mapping with tag, limit and optionally metric_name, got {item!r}")
    limit = _bounded(_parse_int, above=0)(item["limit"], False, lambda _: None)
    return TagValueLimit(_string(item["tag"]), limit, _string(item.get("metric_name", "")))


def _tag_value_limits(value: Any, textual: bool, warn: Warn) -> tuple[TagValueLimit, ...]:
    value = _decoded(value, textual, "a JSON list")
    return _each(_list(value, False), _tag_value_limit)


def _frozen(value: Any) -> Any:
    """A read-only copy of nested YAML data, so a frozen Config stays frozen."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _mapper_profiles(value: Any, textual: bool, warn: Warn) -> tuple:
    """Mapper profiles, validated by building the mapper once (spec §5.2).

    A string is JSON, as ``DD_DOGSTATSD_MAPPER_PROFILES`` carries it.  Unlike
    DogStatsD, which then runs without a mapper, a bad profile stops the start.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise _Invalid(f"cannot be parsed as a JSON list: {error}") from None
    try:
        MetricMapper(value, cache_size=0)
    except MapperConfigError as error:
        raise _Invalid(str(error)) from None
    return _frozen(value)


def _seconds(value: Any, textual: bool, warn: Warn) -> float:
    """A time in seconds: a number, or a Go duration string (``"5m"``)."""
    seconds = _parse_duration(value, textual) if isinstance(value, str) and not _FLOAT.fullmatch(value) else None
    if seconds is None:
        seconds = _parse_float(value, textual)
    if seconds < 0:
        raise _Invalid(f"must not be negative, got {value!r}")
    return seconds


def _network(item: Any) -> str:
    """A CIDR range (``10.0.0.0/8``) or one address, normalised."""
    try:
        return str(ipaddress.ip_network(_string(item)))
    except ValueError as error:
        raise _Invalid(f"not a CIDR range: {error}") from None


def _networks(value: Any, textual: bool, warn: Warn) -> tuple[str, ...]:
    return _each(_list(value, textual), _network)


def _default_hostname() -> str:
    return socket.gethostname()


def _plain(value: Any) -> Any:
    """A typed value as the data it was read from: lists and mappings (JSON and YAML data)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _duration_text(seconds: float) -> str:
    return f"{seconds:.9f}s"


def _port_text(port: int) -> int | str:
    return RANDOM_PORT if port == EPHEMERAL_PORT else port


def _sinks_data(sinks: tuple[SinkConfig, ...]) -> list[dict[str, Any]]:
    return [{"type": sink.type, **_plain(sink.options)} for sink in sinks]


def _key(
    convert: Converter,
    default: Any = None,
    *,
    factory: Callable[[], Any] | None = None,
    env: bool = True,
    encode: Callable[[Any], Any] = _plain,
) -> Any:
    """Declare a configuration key: its converter, its default, whether ``DD_<KEY>`` sets it,
    and how :func:`as_data` writes a value back (where the converter does not read its own output)."""
    metadata = {"convert": convert, "env": env, "encode": encode}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration; field names are the configuration keys (spec §10)."""

    hostname: str = _key(_string, factory=_default_hostname)
    dogstatsd_port: int = _key(_port, 8125, encode=_port_text)
    bind_host: str = _key(_string, "127.0.0.1")
    dogstatsd_non_local_traffic: bool = _key(_boolean, False)
    dogstatsd_buffer_size: int = _key(_bounded(_parse_int, above=0), 8192)
    dogstatsd_packet_buffer_size: int = _key(_bounded(_parse_int, above=0), 32)
    dogstatsd_packet_buffer_flush_timeout: float = _key(_bounded(_parse_duration, above=0), 0.1, encode=_duration_text)
    dogstatsd_so_rcvbuf: int = _key(_bounded(_parse_int, at_least=0), 0)
    dogstatsd_socket: str = _key(_string, "")
    dogstatsd_stream_socket: str = _key(_string, "")
    dogstatsd_socket_mode: int = _key(_file_mode, 0o722)
    dogstatsd_stream_max_connections: int = _key(_bounded(_parse_int, at_least=0), 1024)
    dogstatsd_stream_idle_timeout: float = _key(_seconds, 300.0)
    dogstatsd_stream_max_connections_per_user: int = _key(_bounded(_parse_int, at_least=0), 0)
    dogstatsd_stream_log_too_big: bool = _key(_boolean, False)
    dogstatsd_origin_detection: bool = _key(_boolean, False)
    dogstatsd_tcp_port: int = _key(_port, 0)
    dogstatsd_tcp_max_connections: int = _key(_bounded(_parse_int, at_least=0), 1024)
    dogstatsd_tcp_idle_timeout: float = _key(_seconds, 300.0)
    dogstatsd_tls_cert: str = _key(_string, "")
    dogstatsd_tls_key: str = _key(_string, "")
    dogstatsd_tls_ca: str = _key(_string, "")
    dogstatsd_allowed_senders: tuple[str, ...] = _key(_networks, ())
    # _key returns a dataclass field; MemoryLimiterConfig is frozen.
    dogstatsd_mem_based_rate_limiter: MemoryLimiterConfig = _key(  # noqa: RUF009
        _memory_limiter, MemoryLimiterConfig(), env=False
    )
    # _key returns a dataclass field; ContextLimiterConfig is frozen.
    dogstatsd_context_limiter: ContextLimiterConfig = _key(  # noqa: RUF009
        _context_limiter, ContextLimiterConfig(), env=False
    )
    metric_tag_filterlist: tuple[TagFilterRule, ...] = _key(_tag_filterlist, ())
    dogstatsd_tag_value_limits: tuple[TagValueLimit, ...] = _key(_tag_value_limits, ())
    dogstatsd_eol_required: tuple[str, ...] = _key(_lenient(_one_of(EOL_TRANSPORTS), "transport"), ())
    dogstatsd_tags: tuple[str, ...] = _key(_strings(lambda tags: tuple(sorted(set(tags)))), ())
    dogstatsd_expiry_seconds: float = _key(_bounded(_parse_float, at_least=0), 300.0)
    dogstatsd_zero_fill_limit: int = _key(_bounded(_parse_int, at_least=0), 100_000)
    dogstatsd_context_expiry_seconds: float = _key(_bounded(_parse_float, at_least=0), 20.0)
    dogstatsd_no_aggregation_pipeline: bool = _key(_boolean, True)
    dogstatsd_origin_detection_client: bool = _key(_boolean, False)
    dogstatsd_disable_verbose_logs: bool = _key(_boolean, False)
    statsd_metric_namespace: str = _key(_namespace, "")
    statsd_metric_namespace_blacklist: tuple[str, ...] = _key(_strings(), STANDARD_STATSD_PREFIXES)
    statsd_metric_blocklist: tuple[str, ...] = _key(_strings(), ())
    statsd_metric_blocklist_match_prefix: bool = _key(_boolean, False)
    histogram_aggregates: tuple[str, ...] = _key(
        _lenient(_one_of(HISTOGRAM_AGGREGATES), "aggregate"), ("max", "median", "avg", "count")
    )
    histogram_percentiles: tuple[float, ...] = _key(_lenient(_percentile, "percentile"), (0.95,))
    histogram_copy_to_distribution: bool = _key(_boolean, False)
    histogram_copy_to_distribution_prefix: str = _key(_string, "")
    flush_interval: float = _key(_bounded(_parse_float, above=0), 15.0)
    dogstatsd_mapper_profiles: tuple = _key(_mapper_profiles, ())
    dogstatsd_mapper_cache_size: int = _key(_bounded(_parse_int, at_least=0), 1000)
    api_key: str = field(default="", repr=False, metadata={"convert": _string, "env": True, "encode": _plain})
    site: str = _key(_string, "datadoghq.com")
    dd_url: str = _key(_string, "")
    dogstatsd_workers: int = _key(_bounded(_parse_int, above=0), 1)
    statsd_forward_host: str = _key(_string, "")
    statsd_forward_port: int = _key(_port, 0, encode=_port_text)
    # The admin HTTP endpoint (README "Admin endpoint"): off while 0; loopback unless admin_host says otherwise.
    admin_port: int = _key(_port, 0, encode=_port_text)
    admin_host: str = _key(_string, "127.0.0.1")
    dogstatsd_metrics_stats_enable: bool = _key(_boolean, False)
    sinks: tuple[SinkConfig, ...] = _key(_sinks, (), env=False, encode=_sinks_data)
    warnings: tuple[str, ...] = ()

    @property
    def udp_interface(self) -> str:
        """The UDP (and TCP) bind address: every interface when non-local traffic is allowed."""
        return "" if self.dogstatsd_non_local_traffic else self.bind_host

    def __post_init__(self) -> None:
        """Checks that span several keys; each names the keys involved."""
        if self.dogstatsd_tls_cert and not self.dogstatsd_tls_key:
            raise ConfigError("dogstatsd_tls_key: required with dogstatsd_tls_cert (the certificate's private key)")
        if self.dogstatsd_tls_key and not self.dogstatsd_tls_cert:
            raise ConfigError("dogstatsd_tls_cert: required with dogstatsd_tls_key")
        if self.dogstatsd_tls_ca and not self.dogstatsd_tls_cert:
            raise ConfigError("dogstatsd_tls_cert: required with dogstatsd_tls_ca (the server's own certificate)")
        if self.dogstatsd_tls_cert and not self.dogstatsd_tcp_port:
            raise ConfigError("dogstatsd_tcp_port: TLS (dogstatsd_tls_cert) is served on the TCP port, which is off")


# Newer key names that win over a legacy field whenever they are given.
_ALIASES = {
    "metric_filterlist": "statsd_metric_blocklist",
    "metric_filterlist_match_prefix": "statsd_metric_blocklist_match_prefix",
}
_FIELDS = {f.name: f for f in fields(Config) if "convert" in f.metadata}
_KEYS: dict[str, Field] = {**_FIELDS, **{alias: _FIELDS[target] for alias, target in _ALIASES.items()}}


@dataclass(frozen=True)
class _Layer:
    """One source of values.  Any source may give a value as a string, as viper reads them."""

    source: str
    values: Mapping[Any, Any]
    env: bool = False

    def where(self, key: str) -> str:
        return f"environment variable {_env_name(key)}" if self.env else f"{self.source}: {key}"


def _env_name(key: str) -> str:
    return "DD_" + key.upper()


def key_help(key: str) -> tuple[Any, str | None]:
    """A key's default and its ``DD_*`` variable (None when the environment cannot set it), for ``--help``."""
    spec = _FIELDS[key]
    default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
    return default, _env_name(key) if spec.metadata["env"] else None


def _read_yaml(path: str) -> Mapping[Any, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            loaded = yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read the file: it is not UTF-8 text") from None
    except yaml.MarkedYAMLError as error:
        # PyYAML's own text spans several lines; one line says where and what.
        mark = error.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = ", ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(f"{path}{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(error).split())}") from None
    return _mapping(path, {} if loaded is None else loaded)


def _mapping(source: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(value).__name__}")
    return value


def load_config(
    *,
    path: str | None = None,
    data: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults < ``data`` < the file at ``path`` < ``env`` < ``overrides``.

    ``env`` is only read when given (the twistd plugin passes ``os.environ``);
    ``None`` values in any source mean "not given", so command-line options that
    were left unset can be passed through as they are.
    """
    layers = []
    if data is not None:
        layers.append(_Layer("configuration", _mapping("configuration", data)))
    if path is not None:
        layers.append(_Layer(path, _read_yaml(path)))
    if env is not None:
        from_env = {key: env.get(_env_name(key)) for key, f in _KEYS.items() if f.metadata["env"]}
        # Empty variables count as unset, as in the agent (viper without AllowEmptyEnv).
        layers.append(_Layer("environment", {k: v for k, v in from_env.items() if v}, env=True))
    if overrides is not None:
        layers.append(_Layer("command line", _mapping("command line", overrides)))

    warnings = [
        f"{layer.source}: unknown key {key!r} ignored{_did_you_mean(key, _KEYS)}"
        for layer in layers
        for key in layer.values
        if key not in _KEYS
    ]
    resolved: dict[str, Any] = {}
    for key, spec in _KEYS.items():
        # Every source is validated, so a broken file fails even when overridden;
        # only the winning source's warnings are kept.
        kept: list[str] = []
        for layer in layers:
            if layer.values.get(key) is None:
                continue
            found: list[str] = []
            try:
                resolved[key] = spec.metadata["convert"](layer.values[key], True, found.append)
            except _Invalid as error:
                raise ConfigError(f"{layer.where(key)}{error.where}: {error}") from None
            kept = [f"{layer.where(key)}: {message}" for message in found]
        warnings.extend(kept)
    for alias, target in _ALIASES.items():
        if alias in resolved:
            resolved[target] = resolved.pop(alias)
    if "sinks" in resolved:
        resolved["sinks"] = tuple(_with_datadog_defaults(resolved, sink) for sink in resolved["sinks"])
    return Config(**resolved, warnings=tuple(warnings))


def _with_datadog_defaults(resolved: Mapping[str, Any], sink: SinkConfig) -> SinkConfig:
    """Fill a datadog sink's unset api_key, site and url from the top-level keys."""
    if sink.type != "datadog":
        return sink
    options = dict(sink.options)
    top = {
        "api_key": resolved.get("api_key", ""),
        "site": resolved.get("site", "datadoghq.com"),
        "url": resolved.get("dd_url", ""),
    }
    for name, value in top.items():
        if options[name] is None:
            options[name] = value or None
    if not options["api_key"]:
        raise ConfigError("sinks: the datadog sink needs an api_key (in the sink entry, api_key, or DD_API_KEY)")
    options["site"] = options["site"] or "datadoghq.com"
    return SinkConfig(sink.type, types.MappingProxyType(options))


def as_data(config: Config, *, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every key of ``config`` but ``leave_out`` as plain data (JSON-serialisable) that
    :func:`load_config` reads back into the same values."""
    return {
        name: spec.metadata["encode"](getattr(config, name)) for name, spec in _FIELDS.items() if name not in leave_out
    }
