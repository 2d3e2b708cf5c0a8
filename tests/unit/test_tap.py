"""The twistd plugin and its options, without a running reactor."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceMaker, Service
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage

from twisted_statsd.config import EPHEMERAL_PORT
from twisted_statsd.errors import StartupError
from twisted_statsd.service import StatsdService
from twisted_statsd.tap import ExitOnStartupError, Options, StartupExit, makeService


def test_plugin_is_found_with_tapname_statsd():
    """Once: twisted/plugins is shared between packages, so the module is named after ours
    (twisted_statsd_plugin), and a stale statsd_plugin.py would show up here as a second one."""
    from twisted.plugins import twisted_statsd_plugin

    (maker,) = [p for p in getPlugins(IServiceMaker) if p.tapname == "statsd"]
    assert maker is twisted_statsd_plugin.statsd
    assert maker.options is Options


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


def test_bad_configuration_is_one_stderr_line_and_exit_status_1(tmp_path, capsys):
    """Not a UsageError: twistd would print its usage text before the message."""
    path = tmp_path / "bad.yaml"
    path.write_text("dogstatsd_port: lots\n")
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(path)])
    assert info.value.code == 1 and not isinstance(info.value, usage.UsageError)
    assert capsys.readouterr().err == f"twistd statsd: {path}: dogstatsd_port: expected an integer, got 'lots'\n"


def test_jsonl_option_replaces_the_console_sink(tmp_path):
    options = Options()
    options.parseOptions(["--port", "0", "--jsonl", str(tmp_path / "out.jsonl")])
    service = makeService(options)
    assert isinstance(service, ExitOnStartupError)
    (root,) = service
    assert isinstance(root, StatsdService) and root is service.getServiceNamed("statsd")
    assert [s.name for s in root.flusher.sinks] == ["jsonl"]


class Failing(Service):
    def __init__(self, error):
        self.error = error

    def privilegedStartService(self):
        raise self.error


def test_a_startup_error_under_twistd_is_one_critical_line_and_exit_status_1(logged_errors):
    """twistd's runner catches Exception (pid file, daemon status pipe) and the interpreter exits
    quietly on SystemExit: the exit raised is both, with status 1."""
    guard = ExitOnStartupError()
    Failing(
        StartupError("dogstatsd_port: cannot listen on udp 127.0.0.1:8125: Address already in use")
    ).setServiceParent(guard)
    with capturedLogs() as events, pytest.raises(SystemExit) as info:
        guard.privilegedStartService()
    assert isinstance(info.value, StartupExit) and isinstance(info.value, Exception) and info.value.code == 1
    assert str(info.value) == "dogstatsd_port: cannot listen on udp 127.0.0.1:8125: Address already in use"
    (event,) = events
    assert logged_errors.expect("Cannot start") == [event]
    assert event["log_level"] == LogLevel.critical and event["log_category"] == "STARTUP_FAILED"
    assert (
        formatEvent(event)
        == "Cannot start: dogstatsd_port: cannot listen on udp 127.0.0.1:8125: Address already in use"
    )


def test_other_exceptions_at_start_keep_their_traceback():
    """Anything but a StartupError is a bug: it is not turned into a quiet exit."""
    guard = ExitOnStartupError()
    Failing(KeyError("bug")).setServiceParent(guard)
    with capturedLogs() as events, pytest.raises(KeyError):
        guard.privilegedStartService()
    assert events == []


def test_non_local_traffic_flag_binds_all_interfaces():
    options = Options()
    options.parseOptions(["--non-local-traffic"])
    assert options.config.udp_interface == ""


def test_socket_options_set_the_unix_listeners():
    options = Options()
    options.parseOptions(["--socket", "/tmp/a.sock", "--stream-socket", "/tmp/b.sock"])
    assert (options.config.dogstatsd_socket, options.config.dogstatsd_stream_socket) == ("/tmp/a.sock", "/tmp/b.sock")
