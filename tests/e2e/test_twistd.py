"""``twistd -n statsd`` as a user runs it: defaults, the console table, SIGTERM's final flush."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TWISTD = Path(sys.executable).parent / "twistd"
pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="twistd is not installed next to this Python")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_text(path: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s:\n{content}")


def start(tmp_path, *args, env=None):
    log = tmp_path / "twistd.out"
    out = open(log, "wb")
    proc = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "statsd", *args],
        cwd=tmp_path,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out.close()
    return proc, log


def stop(proc, log: Path) -> None:
    """SIGTERM, then check twistd shut down cleanly (it re-raises the signal to exit)."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Main loop terminated." in log.read_text()
    assert "Traceback" not in log.read_text()


def send(port: int, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, ("127.0.0.1", port))


def test_defaults_show_a_console_table(tmp_path):
    """With no configuration, a metric sent shows up in the flush table.

    SIGTERM's final flush closes the open bucket and prints its table, as a periodic
    flush does once the 10 s bucket has ended (which a test would wait up to 10 s for).
    """
    port = free_udp_port()
    proc, log = start(tmp_path, "--port", str(port))
    try:
        wait_for_text(log, f"Listening for DogStatsD on udp 127.0.0.1:{port}")
        send(port, b"page.views:1|c|#page:home")
    finally:
        # No wait: on stop the listener reads what the kernel already holds.
        stop(proc, log)
    text = log.read_text()
    assert "ConsoleSink#info] flush: " in text, text
    # name{tags}, type, latest value (0 if the send and the stop straddled a bucket's end), @ts xN.
    (row,) = [line.split() for line in text.splitlines() if "page.views" in line]
    assert row[:2] == ["page.views{page:home}", "rate"], text


def test_sigterm_flushes_open_buckets_to_jsonl(tmp_path):
    """Nothing accepted is lost: SIGTERM runs a final flush of every bucket."""
    port = free_udp_port()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "statsd.yaml"
    config.write_text(f"dogstatsd_port: {port}\nhostname: e2e\nsinks:\n  - type: jsonl\n    path: {out}\n")
    proc, log = start(tmp_path, "--config", str(config), env={"DD_DOGSTATSD_TAGS": "env:e2e"})
    try:
        wait_for_text(log, "Listening for DogStatsD")
        from datadog.dogstatsd import DogStatsd

        statsd = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True)
        statsd.gauge("final.gauge", 42, tags=["a:b"])
        statsd.close_socket()
    finally:
        # No wait: on stop the listener reads what the kernel already holds.
        stop(proc, log)
    objects = [json.loads(line) for line in out.read_text().splitlines()]
    (gauge,) = [o for o in objects if o["metric"] == "final.gauge"]
    assert gauge["points"][0]["value"] == 42
    assert gauge["tags"] == ["a:b", "env:e2e"]
    assert gauge["resources"] == [{"type": "host", "name": "e2e"}]


def test_bad_configuration_stops_at_start_with_a_clear_message(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dogstatsd_port: many\n")
    result = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "statsd", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert f"{config}: dogstatsd_port: expected an integer, got 'many'" in result.stdout + result.stderr


MAPPING = """\
dogstatsd_port: {port}
hostname: e2e
sinks:
  - type: jsonl
    path: {out}
dogstatsd_mapper_profiles:
  - name: jobs
    prefix: "jobs."
    mappings:
      - match: "{match}"
        name: "{name}"
        tags:
          job: "$1"
"""


def test_sighup_reloads_the_mapper_and_keeps_it_when_the_file_is_bad(tmp_path):
    """Issue 4: SIGHUP swaps in valid mapper profiles; an invalid file leaves the running ones."""
    port = free_udp_port()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "statsd.yaml"
    config.write_text(MAPPING.format(port=port, out=out, match="jobs.*.duration", name="first.duration"))
    proc, log = start(tmp_path, "--config", str(config))
    try:
        wait_for_text(log, "Listening for DogStatsD")
        send(port, b"jobs.a.duration:1|g")
        config.write_text(MAPPING.format(port=port, out=out, match="jobs.*.duration", name="second.duration"))
        proc.send_signal(signal.SIGHUP)
        wait_for_text(log, "Configuration reloaded: 1 mapper profiles")
        send(port, b"jobs.b.duration:1|g")
        config.write_text(MAPPING.format(port=port, out=out, match="jobs.**", name="third.duration"))
        proc.send_signal(signal.SIGHUP)
        wait_for_text(log, "configuration not reloaded")
        send(port, b"jobs.c.duration:1|g")
    finally:
        stop(proc, log)
    objects = [json.loads(line) for line in out.read_text().splitlines()]
    mapped = sorted((o["metric"], o["tags"][0]) for o in objects if not o["metric"].startswith("twisted_statsd."))
    assert mapped == [("first.duration", "job:a"), ("second.duration", "job:b"), ("second.duration", "job:c")]


RELOADED = """\
dogstatsd_port: {port}
hostname: e2e
sinks:
  - type: jsonl
    path: {out}
"""


def test_sighup_reloads_block_list_tag_filters_limits_and_tags(tmp_path):
    """Issue 12 item 3: SIGHUP applies the block list, tag filter list, context limits and
    dogstatsd_tags of a valid file, each line aggregated under the configuration it arrived
    with; an invalid file leaves the running configuration."""
    port = free_udp_port()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "statsd.yaml"
    head = RELOADED.format(port=port, out=out)
    config.write_text(
        head + "statsd_metric_blocklist: [blocked.a]\ndogstatsd_tags: [env:one]\n"
        "dogstatsd_context_limiter: {limit: 2}\n"
        "metric_tag_filterlist: [{metric_name: f, action: exclude, tags: [user]}]\n"
    )
    proc, log = start(tmp_path, "--config", str(config))
    try:
        wait_for_text(log, "Listening for DogStatsD")
        send(port, b"blocked.a:1|c\nf:1|c|#user:1,k:a\nlim:1|c|#x:1\nlim:1|c|#x:2")
        config.write_text(
            head + "statsd_metric_blocklist: [blocked.b]\ndogstatsd_tags: [env:two]\n"
            "dogstatsd_context_limiter: {limit: 10}\n"
        )
        proc.send_signal(signal.SIGHUP)
        wait_for_text(log, "Configuration reloaded")
        send(port, b"blocked.a:1|c\nblocked.b:1|c\nf:1|c|#user:1,k:a\nlim:1|c|#x:3")
        config.write_text(head + "dogstatsd_tags: [env:three]\ndogstatsd_context_limiter: {limit: -1}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for_text(log, "configuration not reloaded, the running configuration stays")
        send(port, b"lim:1|c|#x:4\nblocked.b:1|c")
    finally:
        stop(proc, log)
    objects = [json.loads(line) for line in out.read_text().splitlines()]
    seen = {(o["metric"], tuple(sorted(o["tags"]))) for o in objects if not o["metric"].startswith("twisted_statsd.")}
    assert seen == {
        ("f", ("env:one", "k:a")),
        ("lim", ("env:one", "x:1")),
        ("lim", ("env:one", "overflow:true")),
        ("blocked.a", ("env:two",)),
        ("f", ("env:two", "k:a", "user:1")),
        ("lim", ("env:two", "x:3")),
        ("lim", ("env:two", "x:4")),
    }
