"""The embedding example runs as a user would run it, under twistd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TWISTD = Path(sys.executable).parent / "twistd"
WEBAPP = Path(__file__).resolve().parents[2] / "examples" / "webapp" / "webapp.tac"
pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="twistd is not installed next to this Python")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_webapp_example_reports_its_requests(tmp_path):
    web, statsd = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    metrics = tmp_path / "metrics.jsonl"
    env = {**os.environ, "WEBAPP_PORT": str(web), "WEBAPP_STATSD_PORT": str(statsd), "WEBAPP_METRICS": str(metrics)}
    log = tmp_path / "twistd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "-y", str(WEBAPP)], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        for _ in range(3):
            assert get(f"http://127.0.0.1:{web}/hello") == b"hello from /hello\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Main loop terminated." in text and "Traceback" not in text, text
    objects = [json.loads(line) for line in metrics.read_text().splitlines()]
    (requests,) = [o for o in objects if o.get("metric") == "webapp.requests"]
    assert requests["tags"] == ["app:webapp", "path:/hello"]
    assert sum(p["value"] for p in requests["points"]) == pytest.approx(0.3)
    assert any(o.get("metric") == "webapp.latency.max" for o in objects)
