"""Start-up failures under a real ``twistd -n statsd``: one line naming the key, path or address, exit status 1.

No traceback, and no usage text after a configuration error (only ``--help`` prints it).
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from e2e.test_twistd import TWISTD, free_udp_port, start, stop, wait_for_text

import twisted_statsd

pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="twistd is not installed next to this Python")


def run(tmp_path, *args):
    """twistd -n statsd ARGS, expected to exit on its own; returns (status, stdout, stderr)."""
    result = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "statsd", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


def only_critical_line(out: str) -> str:
    """The single critical line of a twistd log; nothing else is an error and nothing is a traceback."""
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "#critical]" in line or "#error]" in line]
    assert len(lines) == 1, out
    return lines[0].split("] ", 1)[1]


def test_a_udp_port_in_use_names_the_key_and_address(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        status, out, err = run(tmp_path, "--port", str(port))
    assert status == 1 and err == ""
    assert only_critical_line(out) == (
        f"Cannot start: dogstatsd_port: cannot listen on udp 127.0.0.1:{port}: Address already in use"
    )


def test_a_prometheus_port_in_use_names_the_sink_and_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "statsd.yaml"
        config.write_text(f"dogstatsd_port: 0\nsinks:\n  - type: prometheus\n    port: {port}\n")
        status, out, err = run(tmp_path, "--config", str(config))
    assert status == 1 and err == ""
    assert only_critical_line(out) == (
        f"Cannot start: sinks: prometheus: cannot listen on http 127.0.0.1:{port}: Address already in use"
    )


def test_a_tcp_port_in_use_names_the_key_and_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "statsd.yaml"
        config.write_text(f"dogstatsd_port: 0\ndogstatsd_tcp_port: {port}\n")
        status, out, err = run(tmp_path, "--config", str(config))
    assert status == 1 and err == ""
    assert only_critical_line(out) == (
        f"Cannot start: dogstatsd_tcp_port: cannot listen on tcp 127.0.0.1:{port}: Address already in use"
    )


def test_an_unreadable_tls_certificate_names_the_key_and_path(tmp_path):
    config = tmp_path / "statsd.yaml"
    missing = tmp_path / "missing.crt"
    config.write_text(
        f"dogstatsd_port: 0\ndogstatsd_tcp_port: __random__\n"
        f"dogstatsd_tls_cert: {missing}\ndogstatsd_tls_key: {missing}\n"
    )
    status, out, err = run(tmp_path, "--config", str(config))
    assert status == 1 and err == ""
    assert only_critical_line(out) == (
        f"Cannot start: dogstatsd_tls_cert: cannot read {missing}: No such file or directory"
    )
    assert "Listening" not in out


@pytest.mark.parametrize(
    "where, reason",
    [("missing/out.jsonl", "No such file or directory"), (".", "Is a directory")],
)
def test_a_jsonl_path_that_cannot_be_opened_names_the_path(tmp_path, where, reason):
    path = tmp_path / where
    status, out, err = run(tmp_path, "--port", "0", "--jsonl", str(path))
    assert status == 1 and err == ""
    assert only_critical_line(out) == f"Cannot start: sinks: jsonl: cannot open {path} for appending: {reason}"
    # The output is opened before any socket is bound.
    assert "Listening" not in out


def test_a_unix_socket_in_a_missing_directory_names_the_key_and_path(short_tmpdir):
    path = f"{short_tmpdir}/missing/statsd.sock"  # AF_UNIX paths are short
    status, out, err = run(short_tmpdir, "--port", "0", "--socket", path)
    assert status == 1 and err == ""
    assert only_critical_line(out) == (
        f"Cannot start: dogstatsd_socket: cannot listen on unix datagram socket {path}: "
        f"the directory {short_tmpdir}/missing does not exist"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("dogstatsd_port: many\n", "{path}: dogstatsd_port: expected an integer, got 'many'"),
        (
            "dogstatsd_port: 1\n  hostname: [x\n",
            "{path}, line 2, column 11: invalid YAML: mapping values are not allowed here",
        ),
        (
            "sinks:\n  - type: jsonl\n    pth: x.jsonl\n",
            "{path}: sinks[0]: unknown option 'pth' for sink type 'jsonl' (did you mean 'path'?) "
            "(known: path, percentiles)",
        ),
    ],
    ids=["bad value", "bad YAML", "misspelt sink option"],
)
def test_a_configuration_error_is_one_stderr_line_without_usage_text(tmp_path, content, message):
    path = tmp_path / "statsd.yaml"
    path.write_text(content)
    status, out, err = run(tmp_path, "--config", str(path))
    assert status == 1 and out == ""
    assert err == f"twistd statsd: {message.format(path=path)}\n"


def test_a_misspelt_key_warns_with_the_nearest_known_key(tmp_path):
    port = free_udp_port()
    config = tmp_path / "statsd.yaml"
    config.write_text(f"dogstatsd_port: {port}\nflush_intervall: 5\n")
    proc, log = start(tmp_path, "--config", str(config))
    try:
        text = wait_for_text(log, "Listening for DogStatsD")
    finally:
        stop(proc, log)
    assert f"{config}: unknown key 'flush_intervall' ignored (did you mean 'flush_interval'?)" in text


def test_version_prints_twisted_statsds_version(tmp_path):
    status, out, err = run(tmp_path, "--version")
    assert (status, err) == (0, "")
    assert out.startswith(f"twisted-statsd {twisted_statsd.__version__} (Twisted ")


def test_help_shows_each_options_key_variable_and_default(tmp_path):
    status, out, err = run(tmp_path, "--help")
    assert (status, err) == (0, "")
    text = " ".join(out.split())  # options' help is wrapped across lines
    assert "[dogstatsd_port, DD_DOGSTATSD_PORT; default: 8125]" in text
    assert "[flush_interval, DD_FLUSH_INTERVAL; default: 15.0]" in text
    assert "[dogstatsd_non_local_traffic, DD_DOGSTATSD_NON_LOCAL_TRAFFIC; default: off]" in text
