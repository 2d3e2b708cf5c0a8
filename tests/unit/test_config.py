"""Tests for twisted_statsd.config: defaults, sources, precedence and validation."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import yaml

from twisted_statsd.config import (
    EPHEMERAL_PORT,
    STANDARD_STATSD_PREFIXES,
    Config,
    ConfigError,
    SinkConfig,
    load_config,
)


@pytest.fixture
def write(tmp_path):
    """Write a YAML configuration file (a mapping is dumped, a string written as is)."""

    def write(content, name="statsd.yaml"):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return str(path)

    return write


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


# -- defaults -----------------------------------------------------------------


def test_defaults():
    """With no sources at all, every key has DogStatsD's default (ours for flush_interval)."""
    config = load_config()
    assert config.dogstatsd_port == 8125
    assert config.bind_host == "127.0.0.1"
    assert config.dogstatsd_non_local_traffic is False
    assert config.udp_interface == "127.0.0.1"
    assert config.dogstatsd_buffer_size == 8192
    assert config.dogstatsd_packet_buffer_size == 32
    assert config.dogstatsd_packet_buffer_flush_timeout == pytest.approx(0.1)
    assert config.dogstatsd_so_rcvbuf == 0
    assert config.dogstatsd_eol_required == ()
    assert config.dogstatsd_tags == ()
    assert config.dogstatsd_expiry_seconds == 300
    assert config.dogstatsd_context_expiry_seconds == 20
    assert config.dogstatsd_no_aggregation_pipeline is True
    assert config.dogstatsd_origin_detection_client is False
    assert config.dogstatsd_disable_verbose_logs is False
    assert config.statsd_metric_namespace == ""
    assert config.statsd_metric_blocklist == ()
    assert config.statsd_metric_blocklist_match_prefix is False
    assert config.histogram_aggregates == ("max", "median", "avg", "count")
    assert config.histogram_percentiles == (0.95,)
    assert config.histogram_copy_to_distribution is False
    assert config.histogram_copy_to_distribution_prefix == ""
    assert config.flush_interval == 15
    assert config.sinks == ()
    assert config.warnings == ()


def test_default_namespace_blacklist_is_standard_statsd_prefixes():
    """The default blacklist is DogStatsD's StandardStatsdPrefixes, in its order (spec §6.2)."""
    expected = (
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
    assert STANDARD_STATSD_PREFIXES == expected
    assert load_config().statsd_metric_namespace_blacklist == expected


def test_default_hostname_is_read_at_load_time(monkeypatch):
    """The hostname default is the machine's name when the configuration is loaded."""
    assert load_config().hostname == socket.gethostname()
    monkeypatch.setattr(socket, "gethostname", lambda: "later.example")
    assert load_config().hostname == "later.example"


def test_none_means_empty_sources():
    """Empty data, overrides and an empty file give the defaults."""
    assert load_config(data={}, overrides={}, env={}) == load_config()


def test_empty_file_gives_defaults(write):
    assert load_config(path=write("")).dogstatsd_port == 8125


# -- file values --------------------------------------------------------------


def test_yaml_file_values(write):
    """Every key given in a YAML file is read with its YAML type."""
    path = write("""
hostname: box.example
dogstatsd_port: 9125
bind_host: 0.0.0.0
dogstatsd_non_local_traffic: true
dogstatsd_buffer_size: 16384
dogstatsd_packet_buffer_size: 64
dogstatsd_packet_buffer_flush_timeout: 250ms
dogstatsd_so_rcvbuf: 4194304
dogstatsd_eol_required: [udp, uds]
dogstatsd_tags: [env:prod, app:web]
dogstatsd_expiry_seconds: 60
dogstatsd_context_expiry_seconds: 5.5
dogstatsd_no_aggregation_pipeline: false
dogstatsd_origin_detection_client: yes
dogstatsd_disable_verbose_logs: true
statsd_metric_namespace: myapp
statsd_metric_namespace_blacklist: [datadog.agent]
statsd_metric_blocklist: [custom.metric.a, custom.metric.b]
statsd_metric_blocklist_match_prefix: true
histogram_aggregates: [min, sum]
histogram_percentiles: ["0.5", 0.99]
histogram_copy_to_distribution: true
histogram_copy_to_distribution_prefix: dist.
flush_interval: 10
sinks:
  - type: console
  - type: jsonl
    path: /tmp/out.jsonl
""")
    config = load_config(path=path)
    assert config.hostname == "box.example"
    assert config.dogstatsd_port == 9125
    assert config.bind_host == "0.0.0.0"
    assert config.dogstatsd_non_local_traffic is True
    assert config.udp_interface == ""
    assert config.dogstatsd_buffer_size == 16384
    assert config.dogstatsd_packet_buffer_size == 64
    assert config.dogstatsd_packet_buffer_flush_timeout == pytest.approx(0.25)
    assert config.dogstatsd_so_rcvbuf == 4194304
    assert config.dogstatsd_eol_required == ("udp", "uds")
    assert config.dogstatsd_tags == ("app:web", "env:prod")
    assert config.dogstatsd_expiry_seconds == 60
    assert config.dogstatsd_context_expiry_seconds == 5.5
    assert config.dogstatsd_no_aggregation_pipeline is False
    assert config.dogstatsd_origin_detection_client is True
    assert config.dogstatsd_disable_verbose_logs is True
    assert config.statsd_metric_namespace == "myapp."
    assert config.statsd_metric_namespace_blacklist == ("datadog.agent",)
    assert config.statsd_metric_blocklist == ("custom.metric.a", "custom.metric.b")
    assert config.statsd_metric_blocklist_match_prefix is True
    assert config.histogram_aggregates == ("min", "sum")
    assert config.histogram_percentiles == (0.5, 0.99)
    assert config.histogram_copy_to_distribution is True
    assert config.histogram_copy_to_distribution_prefix == "dist."
    assert config.flush_interval == 10
    assert [sink.type for sink in config.sinks] == ["console", "jsonl"]
    assert config.sinks[1].options["path"] == "/tmp/out.jsonl"
    assert config.warnings == ()


def test_null_values_mean_not_given(write):
    """A key left empty in YAML, or an unset (None) override, keeps the lower value."""
    path = write("dogstatsd_port: 9000\ndogstatsd_tags:\n")
    config = load_config(path=path, overrides={"dogstatsd_port": None})
    assert config.dogstatsd_port == 9000
    assert config.dogstatsd_tags == ()


# -- precedence, key by key ---------------------------------------------------

# key, data value, file value, environment string, override value, and the
# expected result after each of those sources is added in turn.
PRECEDENCE = [
    ("dogstatsd_port", 1001, 1002, "1003", 1004, (1001, 1002, 1003, 1004)),
    ("hostname", "data", "file", "env", "cli", ("data", "file", "env", "cli")),
    ("bind_host", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")),
    ("flush_interval", 1, 2.5, "3", "4.5", (1, 2.5, 3, 4.5)),
    ("dogstatsd_non_local_traffic", True, False, "yes", False, (True, False, True, False)),
    ("dogstatsd_tags", ["a:1"], ["b:2"], "c:3 d:4", ["e:5"], (("a:1",), ("b:2",), ("c:3", "d:4"), ("e:5",))),
    ("statsd_metric_namespace", "d", "f", "e", "c", ("d.", "f.", "e.", "c.")),
    ("dogstatsd_packet_buffer_flush_timeout", "1s", "2s", "3s", "4s", (1, 2, 3, 4)),
    ("histogram_percentiles", [0.1], ["0.2"], "0.3", "0.4", ((0.1,), (0.2,), (0.3,), (0.4,))),
]


@pytest.mark.parametrize("key, data, file, env, override, expected", PRECEDENCE, ids=[row[0] for row in PRECEDENCE])
def test_precedence(write, key, data, file, env, override, expected):
    """defaults < data < file < environment < command line, for each key separately."""
    path = write({key: file})
    env = {"DD_" + key.upper(): env}
    assert getattr(load_config(), key) != expected[0], "the data value must differ from the default"
    stages = [
        load_config(data={key: data}),
        load_config(data={key: data}, path=path),
        load_config(data={key: data}, path=path, env=env),
        load_config(data={key: data}, path=path, env=env, overrides={key: override}),
    ]
    assert tuple(getattr(config, key) for config in stages) == expected


def test_precedence_is_per_key(write):
    """A higher source only replaces the keys it gives."""
    path = write({"dogstatsd_port": 2000, "hostname": "file"})
    config = load_config(
        data={"dogstatsd_port": 1000, "bind_host": "10.1.1.1", "hostname": "data"},
        path=path,
        env={"DD_HOSTNAME": "env"},
        overrides={"flush_interval": 5},
    )
    assert (config.dogstatsd_port, config.bind_host, config.hostname, config.flush_interval) == (
        2000,
        "10.1.1.1",
        "env",
        5,
    )


def test_overrides_accept_strings_and_typed_values():
    """Command-line values may come as strings or already typed."""
    as_strings = load_config(
        overrides={
            "dogstatsd_port": "9000",
            "dogstatsd_non_local_traffic": "true",
            "dogstatsd_tags": "b a",
            "flush_interval": "2.5",
        }
    )
    typed = load_config(
        overrides={
            "dogstatsd_port": 9000,
            "dogstatsd_non_local_traffic": True,
            "dogstatsd_tags": ["a", "b"],
            "flush_interval": 2.5,
        }
    )
    assert as_strings == typed


# -- environment --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("NO", False),
    ],
)
def test_env_booleans(text, expected):
    config = load_config(env={"DD_DOGSTATSD_NON_LOCAL_TRAFFIC": text})
    assert config.dogstatsd_non_local_traffic is expected


def test_env_bad_boolean_names_the_variable():
    message = error_of(env={"DD_DOGSTATSD_NON_LOCAL_TRAFFIC": "maybe"})
    assert message == "environment variable DD_DOGSTATSD_NON_LOCAL_TRAFFIC: expected a boolean, got 'maybe'"


def test_env_lists_are_space_separated():
    config = load_config(
        env={
            "DD_DOGSTATSD_TAGS": "hello:world extra:tags",
            "DD_HISTOGRAM_AGGREGATES": "max  sum",
            "DD_STATSD_METRIC_NAMESPACE_BLACKLIST": "a.b c.d",
            "DD_DOGSTATSD_EOL_REQUIRED": "udp",
        }
    )
    assert config.dogstatsd_tags == ("extra:tags", "hello:world")
    assert config.histogram_aggregates == ("max", "sum")
    assert config.statsd_metric_namespace_blacklist == ("a.b", "c.d")
    assert config.dogstatsd_eol_required == ("udp",)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("100ms", 0.1),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("2m", 120.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        (".5s", 0.5),
        ("250000ns", 0.00025),
    ],
)
def test_env_durations(text, seconds):
    config = load_config(env={"DD_DOGSTATSD_PACKET_BUFFER_FLUSH_TIMEOUT": text})
    assert config.dogstatsd_packet_buffer_flush_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["100", "0.5", "1e3"])
def test_duration_without_unit_asks_for_one(text):
    message = error_of(env={"DD_DOGSTATSD_PACKET_BUFFER_FLUSH_TIMEOUT": text})
    assert message.startswith("environment variable DD_DOGSTATSD_PACKET_BUFFER_FLUSH_TIMEOUT: ")
    assert "unit" in message


def test_yaml_number_duration_asks_for_a_unit(write):
    path = write({"dogstatsd_packet_buffer_flush_timeout": 100})
    message = error_of(path=path)
    assert message.startswith(f"{path}: dogstatsd_packet_buffer_flush_timeout: ")
    assert "unit" in message


@pytest.mark.parametrize(
    "text, problem",
    [
        ("abc", "expected a duration"),
        ("1x", "expected a duration"),
        ("1 s", "expected a duration"),
        ("0s", "must be greater than 0"),
        ("-1s", "must be greater than 0"),
    ],
)
def test_bad_durations(text, problem):
    assert problem in error_of(overrides={"dogstatsd_packet_buffer_flush_timeout": text})


@pytest.mark.parametrize("text", ["x", "8125 ", " 8125", "1_000", "0x10", "81.25", ""])
def test_env_integers_are_strict(text):
    env = {"DD_DOGSTATSD_BUFFER_SIZE": text}
    if text == "":
        assert load_config(env=env).dogstatsd_buffer_size == 8192
    else:
        assert error_of(env=env) == (
            f"environment variable DD_DOGSTATSD_BUFFER_SIZE: expected an integer, got {text!r}"
        )


@pytest.mark.parametrize("text", ["abc", "1e400", "nan", "inf", "1_0", "1.0.0"])
def test_env_floats_are_strict(text):
    message = error_of(env={"DD_FLUSH_INTERVAL": text})
    assert message == f"environment variable DD_FLUSH_INTERVAL: expected a number, got {text!r}"


def test_env_port_error_names_the_variable():
    assert error_of(env={"DD_DOGSTATSD_PORT": "x"}) == (
        "environment variable DD_DOGSTATSD_PORT: expected an integer, got 'x'"
    )


def test_foreign_dd_variables_are_ignored_silently():
    """The agent reads hundreds of DD_* variables; those that are not ours are no concern here."""
    config = load_config(env={"DD_APM_ENABLED": "true", "DD_LOGS_ENABLED": "true", "PATH": "/bin"})
    assert config == load_config()
    assert config.warnings == ()


def test_datadog_sink_takes_api_key_site_and_url_from_the_top_level(write):
    path = write({"sinks": [{"type": "datadog"}, {"type": "datadog", "api_key": "own", "url": "http://proxy"}]})
    config = load_config(path=path, env={"DD_API_KEY": "secret", "DD_SITE": "datadoghq.eu"})
    first, second = config.sinks
    assert (first.options["api_key"], first.options["site"], first.options["url"]) == ("secret", "datadoghq.eu", None)
    assert (second.options["api_key"], second.options["url"]) == ("own", "http://proxy")
    assert "secret" not in repr(config)


def test_datadog_sink_without_an_api_key_is_refused(write):
    with pytest.raises(ConfigError, match="needs an api_key"):
        load_config(path=write({"sinks": [{"type": "datadog"}]}))


@pytest.mark.parametrize("kind", ["prometheus", "graphite"])
def test_backend_sink_defaults_are_complete(write, kind):
    (sink,) = load_config(path=write({"sinks": [{"type": kind}]})).sinks
    assert sink.type == kind and "port" in sink.options


def test_env_none_ignores_the_process_environment(monkeypatch):
    monkeypatch.setenv("DD_DOGSTATSD_PORT", "9999")
    assert load_config().dogstatsd_port == 8125
    assert load_config(env={"DD_DOGSTATSD_PORT": "9999"}).dogstatsd_port == 9999


def test_empty_env_variable_counts_as_unset(write):
    config = load_config(path=write({"hostname": "file"}), env={"DD_HOSTNAME": ""})
    assert config.hostname == "file"


def test_sinks_are_not_read_from_the_environment():
    config = load_config(env={"DD_SINKS": "[{type: jsonl}]"})
    assert config.sinks == ()
    assert config.warnings == ()


# -- individual keys ----------------------------------------------------------


@pytest.mark.parametrize("source", ["data", "file", "env", "overrides"])
def test_random_port_is_ephemeral(write, source):
    kwargs = {
        "data": {"data": {"dogstatsd_port": "__random__"}},
        "file": {"path": write({"dogstatsd_port": "__random__"})},
        "env": {"env": {"DD_DOGSTATSD_PORT": "__random__"}},
        "overrides": {"overrides": {"dogstatsd_port": "__random__"}},
    }[source]
    assert load_config(**kwargs).dogstatsd_port == EPHEMERAL_PORT == -1


def test_port_zero_turns_udp_off_and_is_valid():
    assert load_config(overrides={"dogstatsd_port": 0}).dogstatsd_port == 0


@pytest.mark.parametrize("port", [-1, 65536, 100000])
def test_port_out_of_range(port):
    message = error_of(overrides={"dogstatsd_port": port})
    assert message.startswith("command line: dogstatsd_port: must be between 0 and 65535")


def test_udp_interface_follows_non_local_traffic():
    assert load_config(data={"bind_host": "10.0.0.1"}).udp_interface == "10.0.0.1"
    config = load_config(data={"bind_host": "10.0.0.1", "dogstatsd_non_local_traffic": True})
    assert config.udp_interface == ""


@pytest.mark.parametrize(
    "given, expected",
    [
        ("myapp", "myapp."),
        ("myapp.", "myapp."),
        ("testNamespace.", "testNamespace."),
        ("", ""),
    ],
)
def test_namespace_gets_a_trailing_dot(given, expected):
    assert load_config(data={"statsd_metric_namespace": given}).statsd_metric_namespace == expected


def test_tags_are_sorted_and_deduplicated(write):
    path = write({"dogstatsd_tags": ["b:2", "a:1", "b:2", "c"]})
    assert load_config(path=path).dogstatsd_tags == ("a:1", "b:2", "c")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("flush_interval", 0, "must be greater than 0"),
        ("flush_interval", -1, "must be greater than 0"),
        ("dogstatsd_buffer_size", 0, "must be greater than 0"),
        ("dogstatsd_packet_buffer_size", 0, "must be greater than 0"),
        ("dogstatsd_so_rcvbuf", -1, "must be at least 0"),
        ("dogstatsd_expiry_seconds", -1, "must be at least 0"),
        ("dogstatsd_context_expiry_seconds", -0.5, "must be at least 0"),
    ],
)
def test_out_of_range_values(key, value, message):
    assert error_of(overrides={key: value}) == f"command line: {key}: {message}"


def test_zero_expiry_is_allowed():
    config = load_config(data={"dogstatsd_expiry_seconds": 0, "dogstatsd_so_rcvbuf": 0})
    assert config.dogstatsd_expiry_seconds == 0


# -- unknown keys and wrong types ---------------------------------------------


def test_unknown_keys_are_warnings_naming_key_and_source(write):
    path = write({"apm_config": "xyz", "dogstatsd_prot": 1})
    config = load_config(path=path, data={"use_dogstatsd": True})
    assert config.dogstatsd_port == 8125
    assert len(config.warnings) == 3
    assert any("use_dogstatsd" in w and w.startswith("configuration:") for w in config.warnings)
    assert any("apm_config" in w and w.startswith(path) for w in config.warnings)
    assert any("dogstatsd_prot" in w and w.startswith(path) for w in config.warnings)


def test_a_misspelt_key_warns_with_the_nearest_known_key(write):
    path = write({"dogstatsd_prot": 1, "flush_intervall": 5, "use_dogstatsd": True, "dogstatsd_stats_port": 5000})
    assert set(load_config(path=path).warnings) == {
        f"{path}: unknown key 'dogstatsd_prot' ignored (did you mean 'dogstatsd_port'?)",
        f"{path}: unknown key 'flush_intervall' ignored (did you mean 'flush_interval'?)",
        # The agent's own keys are not misspellings of ours: no suggestion.
        f"{path}: unknown key 'use_dogstatsd' ignored",
        f"{path}: unknown key 'dogstatsd_stats_port' ignored",
    }


def test_misspelt_sink_types_and_options_name_the_nearest_known_one(write):
    path = write({"sinks": [{"type": "prometheus", "bindhost": "::1"}]})
    assert error_of(path=path).startswith(
        f"{path}: sinks[0]: unknown option 'bindhost' for sink type 'prometheus' (did you mean 'bind_host'?)"
    )
    path = write({"sinks": [{"type": "grahpite"}]})
    assert error_of(path=path).startswith(f"{path}: sinks[0]: unknown sink type 'grahpite' (did you mean 'graphite'?)")
    path = write({"dogstatsd_mem_based_rate_limiter": {"enabeld": True}})
    (warning,) = load_config(path=path).warnings
    assert warning.startswith(
        f"{path}: dogstatsd_mem_based_rate_limiter: unknown option 'enabeld' ignored (did you mean 'enabled'?)"
    )


def test_strings_in_a_file_are_read_as_the_agent_reads_them(write):
    """Like the agent's loader, a file may quote numbers and booleans and give lists as words."""
    config = load_config(
        path=write(
            {
                "dogstatsd_port": "8126",
                "flush_interval": "10",
                "dogstatsd_non_local_traffic": "true",
                "dogstatsd_tags": "b:2 a:1",
            }
        )
    )
    assert (config.dogstatsd_port, config.flush_interval, config.dogstatsd_non_local_traffic) == (8126, 10.0, True)
    assert config.dogstatsd_tags == ("a:1", "b:2")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("dogstatsd_port", "abc", "expected an integer, got 'abc'"),
        ("dogstatsd_buffer_size", True, "expected an integer, got True"),
        ("dogstatsd_buffer_size", 1.5, "expected an integer, got 1.5"),
        ("dogstatsd_non_local_traffic", 1, "expected a boolean, got 1"),
        ("hostname", 42, "expected a string, got 42"),
        ("histogram_percentiles", 0.5, "expected a list, got 0.5"),
        ("sinks", {"type": "console"}, "expected a list, got {'type': 'console'}"),
    ],
)
def test_wrong_types_in_file_name_key_and_file(write, key, value, expected):
    """YAML is typed, so a file value of the wrong type is an error, not parsed from text."""
    path = write({key: value})
    assert error_of(path=path) == f"{path}: {key}: {expected}"


def test_wrong_item_type_names_the_index(write):
    path = write({"dogstatsd_tags": ["a:1", 2]})
    assert error_of(path=path) == f"{path}: dogstatsd_tags[1]: expected a string, got 2"


def test_wrong_type_in_data_names_configuration():
    assert error_of(data={"dogstatsd_port": "x"}) == ("configuration: dogstatsd_port: expected an integer, got 'x'")


def test_broken_file_value_fails_even_when_overridden(write):
    path = write({"dogstatsd_port": "abc"})
    message = error_of(path=path, overrides={"dogstatsd_port": 9000})
    assert message.startswith(f"{path}: dogstatsd_port:")


# -- bad files ----------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "missing.yaml")
    message = error_of(path=path)
    assert message.startswith(f"{path}: ")
    assert "cannot read" in message


def test_invalid_yaml(write):
    path = write("dogstatsd_port: [8125\nhostname: x\n")
    # One line saying where and what: PyYAML's own text spans several lines.
    assert error_of(path=path) == (
        f"{path}, line 2, column 9: invalid YAML: while parsing a flow sequence, expected ',' or ']', but got ':'"
    )


def test_non_utf8_file(write, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"hostname: caf\xe9\n")
    assert error_of(path=str(path)).startswith(f"{path}: ")


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(write, content):
    path = write(content)
    message = error_of(path=path)
    assert message.startswith(f"{path}: expected a mapping")


def test_data_must_be_a_mapping():
    assert error_of(data=["dogstatsd_port"]).startswith("configuration: expected a mapping")


# -- lists that skip bad items ------------------------------------------------


def test_bad_percentiles_are_skipped_with_warnings(write):
    path = write({"histogram_percentiles": ["0.5", 0.99, "abc", 1.5, -0.1, "0.5", True]})
    config = load_config(path=path)
    assert config.histogram_percentiles == (0.5, 0.99)
    assert len(config.warnings) == 4
    assert all(w.startswith(f"{path}: histogram_percentiles:") for w in config.warnings)
    assert any("'abc'" in w for w in config.warnings)
    assert any("1.5" in w for w in config.warnings)


def test_bad_percentiles_from_env_are_skipped():
    config = load_config(env={"DD_HISTOGRAM_PERCENTILES": "0.5 nope 0.99"})
    assert config.histogram_percentiles == (0.5, 0.99)
    assert config.warnings == (
        "environment variable DD_HISTOGRAM_PERCENTILES: percentile 'nope' ignored: expected a number, got 'nope'",
    )


def test_unknown_aggregates_are_skipped_with_warnings(write):
    path = write({"histogram_aggregates": ["max", "p99", "sum", "max"]})
    config = load_config(path=path)
    assert config.histogram_aggregates == ("max", "sum")
    (warning,) = config.warnings
    assert warning.startswith(f"{path}: histogram_aggregates:")
    assert "'p99'" in warning


def test_unknown_eol_transports_are_skipped_with_warnings(write):
    path = write({"dogstatsd_eol_required": ["udp", "tcp"]})
    config = load_config(path=path)
    assert config.dogstatsd_eol_required == ("udp",)
    (warning,) = config.warnings
    assert warning.startswith(f"{path}: dogstatsd_eol_required:")
    assert "'tcp'" in warning


def test_only_the_winning_source_warns(write):
    path = write({"histogram_aggregates": ["p99"]})
    config = load_config(path=path, overrides={"histogram_aggregates": ["max"]})
    assert config.histogram_aggregates == ("max",)
    assert config.warnings == ()


# -- metric_filterlist --------------------------------------------------------


def test_legacy_blocklist_alone(write):
    path = write({"statsd_metric_blocklist": ["a"], "statsd_metric_blocklist_match_prefix": True})
    config = load_config(path=path)
    assert config.statsd_metric_blocklist == ("a",)
    assert config.statsd_metric_blocklist_match_prefix is True


def test_filterlist_wins_over_legacy_names(write):
    path = write(
        {
            "statsd_metric_blocklist": ["legacy"],
            "statsd_metric_blocklist_match_prefix": False,
            "metric_filterlist": ["new.a", "new.b"],
            "metric_filterlist_match_prefix": True,
        }
    )
    config = load_config(path=path)
    assert config.statsd_metric_blocklist == ("new.a", "new.b")
    assert config.statsd_metric_blocklist_match_prefix is True
    assert config.warnings == ()


def test_filterlist_wins_even_from_a_lower_source(write):
    """The newer name wins whenever it is given, as in the agent."""
    path = write({"metric_filterlist": ["new"]})
    config = load_config(path=path, env={"DD_STATSD_METRIC_BLOCKLIST": "legacy"})
    assert config.statsd_metric_blocklist == ("new",)


def test_filterlist_from_env():
    config = load_config(env={"DD_METRIC_FILTERLIST": "a.b c.d", "DD_METRIC_FILTERLIST_MATCH_PREFIX": "true"})
    assert config.statsd_metric_blocklist == ("a.b", "c.d")
    assert config.statsd_metric_blocklist_match_prefix is True


def test_filterlist_errors_use_its_own_name(write):
    path = write({"metric_filterlist": 42})
    assert error_of(path=path) == f"{path}: metric_filterlist: expected a list, got 42"


# -- sinks --------------------------------------------------------------------


def test_jsonl_sink_defaults(write):
    config = load_config(path=write({"sinks": [{"type": "jsonl"}, {"type": "console"}]}))
    jsonl, console = config.sinks
    assert jsonl == SinkConfig("jsonl", {"path": "-", "percentiles": (0.5, 0.75, 0.9, 0.95, 0.99)})
    assert dict(console.options) == {}


def test_jsonl_sink_options(write):
    path = write({"sinks": [{"type": "jsonl", "path": "/var/log/m.jsonl", "percentiles": [0.5, "0.999"]}]})
    (sink,) = load_config(path=path).sinks
    assert dict(sink.options) == {"path": "/var/log/m.jsonl", "percentiles": (0.5, 0.999)}


def test_unknown_sink_type(write):
    path = write({"sinks": [{"type": "console"}, {"type": "foo"}]})
    assert error_of(path=path) == (
        f"{path}: sinks[1]: unknown sink type 'foo' (known: console, jsonl, prometheus, graphite, datadog, otlp)"
    )


def test_unknown_sink_option_is_an_error(write):
    path = write({"sinks": [{"type": "jsonl", "pth": "/tmp/x"}]})
    message = error_of(path=path)
    assert message.startswith(f"{path}: sinks[0]: unknown option 'pth' for sink type 'jsonl'")
    assert "path, percentiles" in message


def test_console_sink_takes_no_options(write):
    path = write({"sinks": [{"type": "console", "path": "/tmp/x"}]})
    assert error_of(path=path).startswith(f"{path}: sinks[0]: unknown option 'path'")


@pytest.mark.parametrize(
    "value, expected",
    [
        (3, "expected a string, got 3"),
        ("", "must not be empty"),
    ],
)
def test_bad_sink_path(write, value, expected):
    path = write({"sinks": [{"type": "jsonl", "path": value}]})
    assert error_of(path=path) == f"{path}: sinks[0].path: {expected}"


def test_bad_sink_percentile_is_an_error(write):
    path = write({"sinks": [{"type": "jsonl", "percentiles": [0.5, 2]}]})
    assert error_of(path=path) == f"{path}: sinks[0].percentiles[1]: must be between 0 and 1, got 2"


@pytest.mark.parametrize("entry", ["console", {"path": "-"}, {"type": 3}])
def test_sink_entry_needs_a_type(write, entry):
    path = write({"sinks": [entry]})
    assert error_of(path=path).startswith(f"{path}: sinks[0]: ")


def test_sinks_from_overrides():
    config = load_config(overrides={"sinks": [{"type": "jsonl", "path": "out.jsonl"}]})
    assert config.sinks[0].options["path"] == "out.jsonl"


def test_sink_options_are_read_only():
    (sink,) = load_config(data={"sinks": [{"type": "jsonl"}]}).sinks
    with pytest.raises(TypeError):
        sink.options["path"] = "elsewhere"
    with pytest.raises(dataclasses.FrozenInstanceError):
        sink.type = "console"


# -- the Config object --------------------------------------------------------


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dogstatsd_port = 1
    with pytest.raises((AttributeError, TypeError)):
        config.new_attribute = 1
    assert not hasattr(config, "__dict__")


def test_config_replace_keeps_derived_property():
    config = dataclasses.replace(load_config(), dogstatsd_non_local_traffic=True)
    assert config.udp_interface == ""


def test_every_config_field_is_a_known_key():
    """Each field but ``warnings`` can be given in a file without an unknown-key warning."""
    names = [f.name for f in dataclasses.fields(Config) if f.name != "warnings"]
    config = load_config(data={name: None for name in names})
    assert config.warnings == ()


# -- Unix sockets ---------------------------------------------------------------


def test_unix_socket_defaults():
    """Both Unix listeners are off by default (ours: the agent defaults to /var/run/datadog/dsd.socket)."""
    config = load_config()
    assert config.dogstatsd_socket == ""
    assert config.dogstatsd_stream_socket == ""
    assert config.dogstatsd_socket_mode == 0o722
    assert config.dogstatsd_stream_max_connections == 1024
    assert config.dogstatsd_stream_log_too_big is False
    assert config.dogstatsd_origin_detection is False
    limiter = config.dogstatsd_mem_based_rate_limiter
    assert (limiter.enabled, limiter.low_soft_limit, limiter.high_soft_limit, limiter.hard_limit) == (
        False,
        0.7,
        0.8,
        0.9,
    )
    assert (limiter.memory_limit_bytes, limiter.check_interval) == (0, 1.0)


@pytest.mark.parametrize("given, expected", [("0722", 0o722), ("0o700", 0o700), ("660", 0o660), (0o720, 0o720), (0, 0)])
def test_socket_mode_is_octal(given, expected):
    assert load_config(data={"dogstatsd_socket_mode": given}).dogstatsd_socket_mode == expected


def test_socket_mode_from_yaml_and_environment(write):
    path = write("dogstatsd_socket_mode: 0720\n")  # YAML 1.1 reads a leading 0 as octal
    assert load_config(path=path).dogstatsd_socket_mode == 0o720
    assert load_config(env={"DD_DOGSTATSD_SOCKET_MODE": "0700"}).dogstatsd_socket_mode == 0o700
    assert load_config(env={"DD_DOGSTATSD_SOCKET": "/run/dsd.socket"}).dogstatsd_socket == "/run/dsd.socket"


@pytest.mark.parametrize("given", ["0789", "rw-r--r--", 722, -1, True])
def test_bad_socket_modes_name_the_key(given):
    assert "dogstatsd_socket_mode" in error_of(data={"dogstatsd_socket_mode": given})


def test_memory_limiter_section_as_in_datadog_yaml(write):
    path = write(
        "dogstatsd_mem_based_rate_limiter:\n"
        "  enabled: true\n"
        "  low_soft_limit: 0.5\n"
        "  high_soft_limit: '0.6'\n"
        "  memory_limit_bytes: 1073741824\n"
        "  go_gc: 1\n"
        "  rate_check: {min: 0.01}\n"
        "  colour: blue\n"
    )
    config = load_config(path=path)
    limiter = config.dogstatsd_mem_based_rate_limiter
    assert (limiter.enabled, limiter.low_soft_limit, limiter.high_soft_limit, limiter.hard_limit) == (
        True,
        0.5,
        0.6,
        0.9,
    )
    assert limiter.memory_limit_bytes == 1 << 30
    assert config.warnings == (
        f"{path}: dogstatsd_mem_based_rate_limiter: option 'go_gc' only tunes the Go agent; ignored",
        f"{path}: dogstatsd_mem_based_rate_limiter: option 'rate_check' only tunes the Go agent; ignored",
        f"{path}: dogstatsd_mem_based_rate_limiter: unknown option 'colour' ignored "
        "(known: enabled, low_soft_limit, high_soft_limit, hard_limit, memory_limit_bytes, check_interval)",
    )


@pytest.mark.parametrize(
    "section, where",
    [
        ({"low_soft_limit": 0.9}, "low_soft_limit <= high_soft_limit <= hard_limit"),
        ({"hard_limit": 0.75}, "low_soft_limit <= high_soft_limit <= hard_limit"),
        ({"low_soft_limit": 0}, "dogstatsd_mem_based_rate_limiter.low_soft_limit: must be greater than 0"),
        ({"enabled": "perhaps"}, "dogstatsd_mem_based_rate_limiter.enabled: expected a boolean"),
        ({"memory_limit_bytes": -1}, "dogstatsd_mem_based_rate_limiter.memory_limit_bytes: must be at least 0"),
        (True, "dogstatsd_mem_based_rate_limiter: expected a mapping of options"),
    ],
)
def test_bad_memory_limiter_settings(section, where):
    assert where in error_of(data={"dogstatsd_mem_based_rate_limiter": section})


def test_stream_max_connections_is_a_count():
    assert load_config(data={"dogstatsd_stream_max_connections": "0"}).dogstatsd_stream_max_connections == 0
    assert "dogstatsd_stream_max_connections" in error_of(data={"dogstatsd_stream_max_connections": -5})


MAPPER = [{"name": "p", "prefix": "a.", "mappings": [{"match": "a.*", "name": "a", "tags": {"x": "$1"}}]}]


def test_mapper_profiles_are_validated_at_load_naming_key_and_file(write):
    """A bad mapper config stops the start (on purpose unlike DogStatsD, which runs without one)."""
    bad = [{"name": "p", "prefix": "a.", "mappings": [{"match": "a.**", "name": "a"}]}]
    path = write({"dogstatsd_mapper_profiles": bad})
    message = error_of(path=path)
    assert message.startswith(f"{path}: dogstatsd_mapper_profiles: ")
    assert "it should not contain consecutive `*`" in message


def test_mapper_profiles_from_yaml_and_from_json_in_the_environment(write):
    import json

    config = load_config(path=write({"dogstatsd_mapper_profiles": MAPPER}))
    assert config.dogstatsd_mapper_profiles[0]["mappings"][0]["name"] == "a"
    from_env = load_config(env={"DD_DOGSTATSD_MAPPER_PROFILES": json.dumps(MAPPER)})
    assert from_env.dogstatsd_mapper_profiles == config.dogstatsd_mapper_profiles
    with pytest.raises(ConfigError, match=r"DD_DOGSTATSD_MAPPER_PROFILES.*JSON"):
        load_config(env={"DD_DOGSTATSD_MAPPER_PROFILES": "[not json"})


def test_zero_fill_limit_defaults_to_100_000_and_refuses_negatives():
    assert load_config(data={}).dogstatsd_zero_fill_limit == 100_000
    assert load_config(data={"dogstatsd_zero_fill_limit": 0}).dogstatsd_zero_fill_limit == 0
    with pytest.raises(ConfigError, match="at least 0"):
        load_config(data={"dogstatsd_zero_fill_limit": -1})
