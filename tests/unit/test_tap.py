"""The twistd plugin and its options, without a running reactor."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from twisted_statsd.config import EPHEMERAL_PORT
from twisted_statsd.service import StatsdService
from twisted_statsd.tap import Options, makeService


def test_plugin_is_found_with_tapname_statsd():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "statsd" in makers
    assert makers["statsd"].options is Options


def test_command_line_overrides_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "statsd.yaml"
    path.write_text("dogstatsd_port: 9000\nhostname: from-file\nflush_interval: 5\n")
    monkeypatch.setenv("DD_HOSTNAME", "from-env")
    monkeypatch.setenv("DD_FLUSH_INTERVAL", "7")
    options = Options()
    options.parseOptions(["--config", str(path), "--port", "__random__", "--flush-interval", "2"])
    config = options.config
    assert config.dogstatsd_port == EPHEMERAL_PORT
    assert config.hostname == "from-env"
    assert config.flush_interval == 2.0


def test_bad_configuration_is_a_usage_error_naming_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dogstatsd_port: lots\n")
    with pytest.raises(usage.UsageError, match=rf"{path}: dogstatsd_port"):
        Options().parseOptions(["--config", str(path)])


def test_jsonl_option_replaces_the_console_sink(tmp_path):
    options = Options()
    options.parseOptions(["--port", "0", "--jsonl", str(tmp_path / "out.jsonl")])
    service = makeService(options)
    assert isinstance(service, StatsdService)
    assert next(type(s).__name__ for s in service) == "JsonlSink"


def test_non_local_traffic_flag_binds_all_interfaces():
    options = Options()
    options.parseOptions(["--non-local-traffic"])
    assert options.config.udp_interface == ""


def test_socket_options_set_the_unix_listeners():
    options = Options()
    options.parseOptions(["--socket", "/tmp/a.sock", "--stream-socket", "/tmp/b.sock"])
    assert (options.config.dogstatsd_socket, options.config.dogstatsd_stream_socket) == ("/tmp/a.sock", "/tmp/b.sock")
