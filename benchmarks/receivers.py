"""Receivers under test, each a separate process the benchmark starts, loads, settles and stops.

:class:`ProcessReceiver` owns the process: it starts it with its output in a
log file, waits for the line saying it listens (port, granted receive buffer),
and on stop sends SIGTERM, follows the peak RSS (VmHWM) until the process
exits, kills it if it does not exit in time, and asks the subclass what the
receiver counted.  Subclasses: :class:`TwistedStatsd` (``twistd -n statsd``,
counting from its own telemetry in the jsonl output) and :class:`Ceiling`
(:mod:`benchmarks.ceiling`); Etsy statsd is in :mod:`benchmarks.etsy`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import yaml

from benchmarks import procfs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Config keys that turn on twisted-statsd's Unix listeners, per loadgen transport.
UNIX_KEYS = {"unixgram": "dogstatsd_socket", "unixstream": "dogstatsd_stream_socket"}


def twisted_transports() -> dict[str, bool]:
    """Which transports this checkout of twisted-statsd can listen on (by its config keys)."""
    from twisted_statsd.config import Config

    keys = {f.name for f in dataclasses.fields(Config)}
    return {"udp": True, **{transport: key in keys for transport, key in UNIX_KEYS.items()}}


def twistd_path() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    found = beside if os.path.exists(beside) else shutil.which("twistd")
    if not found:
        raise RuntimeError("twistd not found next to this Python or on PATH")
    return found


class ReceiverFailed(RuntimeError):
    """The receiver did not start, or exited without a result; the message has its log's tail."""


class ProcessReceiver:
    """A receiver process; a context manager, so it is killed whatever happens."""

    name = "receiver"
    #: A regex with named groups ``port`` and ``rcvbuf`` matched against the log; None: wait for the socket file.
    ready_pattern: str | None = None
    cwd = REPO

    def __init__(self, workdir: str, transport: str):
        self.workdir = workdir
        self.transport = transport
        self.path = os.path.join(workdir, "in.sock") if transport != "udp" else None
        self.log_path = os.path.join(workdir, "receiver.log")
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.rcvbuf: int | None = None
        self._log = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def result(self) -> dict:
        """What the receiver counted: ``accepted`` metrics, ``dropped`` by reason, more as known."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> dict:
        """Where the load generator sends."""
        if self.transport == "udp":
            return {"transport": "udp", "address": ["127.0.0.1", self.port]}
        return {"transport": self.transport, "path": self.path}

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _failed(self, why: str) -> ReceiverFailed:
        tail = "\n".join(self.log_text().splitlines()[-15:])
        return ReceiverFailed(f"{self.name} ({self.transport}) {why}; log {self.log_path}:\n{tail}")

    def start(self, timeout: float = 60.0) -> None:
        command = self.command()
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failed(f"exited with {self.process.returncode} while starting")
            if self._ready():
                return
            time.sleep(0.05)
        raise self._failed(f"not ready after {timeout:.0f} s")

    def _ready(self) -> bool:
        if self.ready_pattern is None:
            try:
                listening = stat.S_ISSOCK(os.stat(self.path).st_mode)
            except FileNotFoundError:
                return False
            granted = re.search(r"receive buffer (\d+) bytes", self.log_text())
            self.rcvbuf = int(granted.group(1)) if granted else None
            return listening
        match = re.search(self.ready_pattern, self.log_text())
        if match is None:
            return False
        found = match.groupdict()
        self.port = int(found["port"]) if found.get("port") else None
        self.rcvbuf = int(found["rcvbuf"]) if found.get("rcvbuf") else None
        return True

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait until the receiver has read and processed what was sent; False on timeout."""
        return procfs.wait_quiet(self.pid, port=self.port if self.transport == "udp" else None, timeout=timeout)

    def next_flush_after(self, when: float) -> float | None:
        """Wall-clock time of the receiver's first periodic flush after ``when`` (None: it never flushes)."""
        return None

    def before_stop(self) -> None:
        """Called after the last measurement and before SIGTERM."""

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped for the receiver's UDP socket (None for other transports)."""
        state = procfs.udp_socket(self.port) if self.transport == "udp" else None
        return state["drops"] if state else None

    def stop(self, timeout: float = 180.0) -> dict:
        """SIGTERM, wait for the exit while following VmHWM, and return :meth:`result` with ``peak_rss``."""
        peak = procfs.status_bytes(self.pid, "VmHWM") or 0
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise self._failed(f"did not exit within {timeout:.0f} s of SIGTERM")
            peak = max(peak, procfs.status_bytes(self.pid, "VmHWM") or 0)
            time.sleep(0.05)
        # twistd re-raises the signal it stopped on once it has shut down cleanly.
        if self.process.returncode not in (0, -signal.SIGTERM):
            raise self._failed(f"exited with {self.process.returncode} on SIGTERM")
        result = self.result()
        result["peak_rss"] = peak
        return result

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ProcessReceiver:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()


class TwistedStatsd(ProcessReceiver):
    """``twistd -n --pidfile= statsd --config <yaml>`` with a jsonl sink in the work directory."""

    name = "twisted-statsd"

    def __init__(
        self,
        workdir: str,
        transport: str,
        rcvbuf: int,
        flush_interval: float = 1.0,
        workers: int = 1,
        settings: dict | None = None,
    ):
        super().__init__(workdir, transport)
        self.workers = workers
        self.settings = settings or {}  # more config keys (the admin port for :mod:`benchmarks.million`)
        self.rcvbuf_asked = rcvbuf
        self.flush_interval = flush_interval
        self.jsonl = os.path.join(workdir, "out.jsonl")
        if transport == "udp":
            self.ready_pattern = r"udp [\d.]+:(?P<port>\d+) \(receive buffer (?P<rcvbuf>\d+) bytes\)"

    def command(self) -> list[str]:
        config = {
            "hostname": "bench",
            "dogstatsd_port": "__random__" if self.transport == "udp" else 0,
            "dogstatsd_so_rcvbuf": self.rcvbuf_asked,
            "flush_interval": self.flush_interval,
            "dogstatsd_workers": self.workers,
            "sinks": [{"type": "jsonl", "path": self.jsonl}],
            **self.settings,
        }
        if self.transport != "udp":
            config[UNIX_KEYS[self.transport]] = self.path
        path = os.path.join(self.workdir, "statsd.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return [twistd_path(), "-n", "--pidfile=", "statsd", "--config", path]

    def next_flush_after(self, when: float) -> float:
        """The middle of the flush interval in which the next 10 s bucket closes and is written."""
        boundary = (int(when) // 10 + 1) * 10
        return boundary + self.flush_interval / 2

    def before_stop(self) -> None:
        """Wait for one periodic flush: it copies the kernel's drop count into telemetry.

        (The final flush cannot: the UDP port is already closed when it runs.)
        """
        time.sleep(self.flush_interval + 0.3)

    def result(self) -> dict:
        if not os.path.exists(self.jsonl):
            raise self._failed("wrote no jsonl output")
        return read_telemetry(self.jsonl)


def read_telemetry(path: str) -> dict:
    """Totals of the server's own ``twisted_statsd.*`` series in a jsonl file.

    Counters are rate series (value = count / interval per bucket), so a total
    is the sum of value x interval over every point.
    """
    totals: dict[tuple[str, tuple], float] = {}
    gauges: dict[tuple[str, tuple], float] = {}
    with open(path, "rb") as f:
        for line in f:
            if b'"twisted_statsd.' not in line:
                continue
            obj = json.loads(line)
            name = obj.get("metric", "")
            if not name.startswith("twisted_statsd."):
                continue
            key = (name[len("twisted_statsd.") :], tuple(obj.get("tags") or ()))
            values = [p["value"] for p in obj["points"]]
            if obj["type"] == 3:
                gauges[key] = max(values + [gauges.get(key, float("-inf"))])
            else:
                scale = (obj.get("interval") or 1) if obj["type"] == 2 else 1
                totals[key] = totals.get(key, 0.0) + sum(values) * scale
    dropped = {
        tags[0].split(":", 1)[1]: round(v)
        for (name, tags), v in totals.items()
        if name == "dropped" and tags and round(v)
    }
    packets = {tags[0].split(":", 1)[1]: round(v) for (name, tags), v in totals.items() if name == "packets" and tags}
    return {
        "accepted": round(totals.get(("metrics", ()), 0.0)),
        "dropped": dropped,
        "packets": sum(packets.values()),
        "packets_by_transport": packets,
        "contexts_gauge_max": gauges.get(("contexts", ())),
        "worker_metrics": round(totals.get(("worker_metrics", ()), 0.0)),
    }


class Ceiling(ProcessReceiver):
    """:mod:`benchmarks.ceiling`: receive, split lines, sum a float per name."""

    name = "ceiling"
    ready_pattern = r"READY port (?P<port>\d+) receive buffer (?P<rcvbuf>\d+) bytes"

    def __init__(self, workdir: str, transport: str, rcvbuf: int):
        super().__init__(workdir, transport)
        self.rcvbuf_asked = rcvbuf

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "benchmarks.ceiling",
            "--transport",
            self.transport,
            "--rcvbuf",
            str(self.rcvbuf_asked),
        ]
        return command + (["--path", self.path] if self.path else [])

    def result(self) -> dict:
        match = re.search(r"RESULT (\{.*\})", self.log_text())
        if match is None:
            raise self._failed("printed no RESULT")
        result = json.loads(match.group(1))
        result["dropped"] = {}
        return result


class RecvOnly(Ceiling):
    """:mod:`benchmarks.ceiling` ``--recv-only``: receive and count lines, no parsing (the physical limit)."""

    name = "recv-only"

    def command(self) -> list[str]:
        return super().command() + ["--recv-only"]
