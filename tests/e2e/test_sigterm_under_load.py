"""SIGTERM while metrics keep arriving (issue 12 item 5): every metric the server accepted is in the
output written at stop.

A sender thread sends counters at a steady rate and keeps going through the SIGTERM.  Over a Unix
datagram socket the sender knows exactly what was accepted (a send either queues the datagram or
fails, and the server refuses new ones before it drains the queue), so the output must hold exactly
what it sent.  Over UDP, datagrams can vanish unseen (in the kernel, or after the port closes), so the
output must hold exactly what the server counted as accepted, with the kernel's drops counted apart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from e2e.test_twistd import TWISTD, free_udp_port, start, wait_for_text

pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="twistd is not installed next to this Python")

LINES = 10  # counters of 1 per datagram, over 50 contexts


def datagram(i: int) -> bytes:
    return b"\n".join(b"load.c:1|c|#k:%d" % ((i * LINES + j) % 50) for j in range(LINES))


class Sender(threading.Thread):
    """Sends at ``rate`` datagrams/s until a send fails or ``halt`` is set; ``sent`` counts metrics sent."""

    def __init__(self, sock: socket.socket, rate: float):
        super().__init__(daemon=True)
        self.sock = sock
        self.rate = rate
        self.sent = 0
        self.error: OSError | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        i = 0
        while not self.halt.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while i < due:
                try:
                    self.sock.send(datagram(i))
                except OSError as e:
                    if self.sock.type == socket.SOCK_DGRAM and self.sock.family == socket.AF_INET:
                        i += 1  # UDP: an ICMP error from an earlier datagram; keep loading
                        continue
                    self.error = e
                    return
                self.sent += LINES
                i += 1
            time.sleep(0.002)


def totals(path: Path) -> tuple[float, dict[str, float]]:
    """The sum of ``load.c`` in the output, and of each ``twisted_statsd.*`` counter by name and tags."""
    load, own = 0.0, {}
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        total = sum(p["value"] for p in obj["points"]) * (obj.get("interval") or 1)
        if obj["metric"] == "load.c":
            load += total
        elif obj["metric"].startswith("twisted_statsd.") and obj["type"] != 3:
            key = obj["metric"] + "".join("|" + t for t in obj.get("tags") or ())
            own[key] = own.get(key, 0.0) + total
    return load, own


def sigterm_mid_stream(proc, log: Path, sender: Sender, min_sent: int = 10_000) -> None:
    """Start ``sender``, SIGTERM once it has sent ``min_sent`` metrics, wait for a clean exit."""
    sender.start()
    deadline = time.monotonic() + 20
    while sender.sent < min_sent:
        assert time.monotonic() < deadline and sender.is_alive(), "the sender did not get going"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text()


def test_every_metric_sent_over_a_unix_datagram_socket_until_sigterm_is_in_the_output(tmp_path, short_tmpdir):
    path = os.path.join(short_tmpdir, "in.sock")
    out = tmp_path / "out.jsonl"
    config = tmp_path / "statsd.yaml"
    config.write_text(
        f"dogstatsd_port: 0\ndogstatsd_socket: {path}\nflush_interval: 1\nhostname: e2e\n"
        f"sinks:\n  - type: jsonl\n    path: {out}\n"
    )
    proc, log = start(tmp_path, "--config", str(config))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        wait_for_text(log, "Listening for DogStatsD on unix datagram socket")
        sock.connect(path)
        # Blocking, as a client that must not lose metrics would be (the timeout is a backstop), and
        # as fast as the server reads: the queue is full when it stops, senders waiting on it.
        sock.settimeout(10)
        sender = Sender(sock, rate=1e9)
        sigterm_mid_stream(proc, log, sender)
        sender.join(10)
        assert not sender.is_alive()
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
    # The sender was still going when the server stopped: its next send was refused.
    assert sender.error is not None and not isinstance(sender.error, TimeoutError)
    found, _ = totals(out)
    assert found == sender.sent


def test_every_udp_metric_the_server_accepted_until_sigterm_is_in_the_output(tmp_path):
    port = free_udp_port()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "statsd.yaml"
    config.write_text(
        f"dogstatsd_port: {port}\nflush_interval: 1\nhostname: e2e\nsinks:\n  - type: jsonl\n    path: {out}\n"
    )
    proc, log = start(tmp_path, "--config", str(config))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = Sender(sock, rate=2000)
    try:
        wait_for_text(log, "Listening for DogStatsD on udp")
        sock.connect(("127.0.0.1", port))
        sigterm_mid_stream(proc, log, sender)
    finally:
        sender.halt.set()
        if sender.is_alive():
            sender.join(10)
        sock.close()
        if proc.poll() is None:
            proc.kill()
    found, own = totals(out)
    accepted = own["twisted_statsd.metrics"]
    kernel = own.get("twisted_statsd.dropped|reason:udp_kernel", 0.0)
    assert found == accepted > 0
    assert found + kernel * LINES <= sender.sent
