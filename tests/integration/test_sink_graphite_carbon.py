"""The graphite sink against a real carbon-cache, read back from its whisper files.

carbon runs as a subprocess from its own environment, because it pins its own
dependencies: set ``TWISTED_STATSD_CARBON_CACHE`` to its ``carbon-cache.py``
(or put ``carbon-cache.py`` or Debian's ``carbon-cache`` on PATH), for example::

    python3 -m venv /tmp/carbonvenv && /tmp/carbonvenv/bin/pip install carbon whisper
    export TWISTED_STATSD_CARBON_CACHE=/tmp/carbonvenv/bin/carbon-cache.py

The tests read the whisper files with the ``whisper`` package, which must be
importable here.  carbon's tag database lives in graphite-web, which is not
run: tags are disabled in carbon, which still stores tagged series under
``_tagged/``, so both naming schemes are checked end to end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from helpers import wait_for, with_deadline

from twisted_statsd.core.model import SERIES_GAUGE, SERIES_RATE, FlushBatch, Series, ServiceCheck, SketchSeries
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.sinks.graphite import GraphiteSink
from twisted_statsd.telemetry import Telemetry

whisper = pytest.importorskip("whisper", reason="the whisper package is needed to read carbon's files")

TAGS = ("sink:graphite",)


def carbon_script() -> str | None:
    return (
        os.environ.get("TWISTED_STATSD_CARBON_CACHE") or shutil.which("carbon-cache.py") or shutil.which("carbon-cache")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Carbon:
    """A carbon-cache subprocess with its own config and storage under ``root``."""

    def __init__(self, script: str, root: Path):
        self.script = script
        self.root = root
        self.port = free_port()
        self.data = root / "whisper"
        self.process: subprocess.Popen | None = None
        conf = root / "conf"
        conf.mkdir()
        self.config = conf / "carbon.conf"
        self.config.write_text(
            "[cache]\n"
            f"STORAGE_DIR = {root}\n"
            f"LOCAL_DATA_DIR = {self.data}\n"
            f"LOG_DIR = {root / 'log'}\n"
            f"PID_DIR = {root}\n"
            "LINE_RECEIVER_INTERFACE = 127.0.0.1\n"
            f"LINE_RECEIVER_PORT = {self.port}\n"
            "ENABLE_UDP_LISTENER = False\n"
            # Port 0 turns the pickle receiver off; the cache query port takes any free port.
            "PICKLE_RECEIVER_PORT = 0\n"
            "CACHE_QUERY_INTERFACE = 127.0.0.1\n"
            "CACHE_QUERY_PORT = 0\n"
            "MAX_CREATES_PER_MINUTE = inf\n"
            "MAX_UPDATES_PER_SECOND = inf\n"
            "ENABLE_TAGS = False\n"
            "CARBON_METRIC_INTERVAL = 0\n"
        )
        (conf / "storage-schemas.conf").write_text("[all]\npattern = .*\nretentions = 10s:1d\n")

    def start(self) -> None:
        log = open(self.root / "carbon.out", "ab")
        self.process = subprocess.Popen(
            [self.script, f"--config={self.config}", "--debug", "start"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop carbon; SIGTERM lets it shut down as in production, which takes it about a second."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def output(self) -> str:
        path = self.root / "carbon.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def file(self, path: str) -> Path:
        """Where carbon stores a path: dots are directories; tagged series go by hash (TAG_HASH_FILENAMES)."""
        if ";" in path:
            digest = hashlib.sha256(path.encode()).hexdigest()
            return self.data / "_tagged" / digest[:3] / digest[3:6] / f"{digest}.wsp"
        return self.data.joinpath(*path.split(".")).with_suffix(".wsp")

    def values(self, path: str) -> dict[int, float]:
        """The stored points of a path by timestamp; empty while carbon has not written it."""
        file = self.file(path)
        if not file.exists():
            return {}
        (start, _, step), points = whisper.fetch(str(file), time.time() - 3600)
        return {start + i * step: v for i, v in enumerate(points) if v is not None}


@pytest.fixture
def carbon(tmp_path):
    script = carbon_script()
    if not script:
        pytest.skip(
            "carbon-cache not found: pip install carbon whisper into a separate venv and "
            "set TWISTED_STATSD_CARBON_CACHE to its bin/carbon-cache.py"
        )
    server = Carbon(script, tmp_path)
    yield server
    # The test has read what it needs from the whisper files: nothing to wait for.
    server.stop(signal.SIGKILL)


@pytest_twisted.async_yield_fixture
async def make_sink(reactor, carbon):
    sinks = []

    def make(**options):
        sink = GraphiteSink(
            reactor,
            Telemetry(),
            port=carbon.port,
            reconnect_initial_delay=0.1,
            reconnect_max_delay=0.5,
            _jitter=lambda: 0.0,
            **options,
        )
        sink.startService()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        if sink.running:
            await with_deadline(reactor, sink.stopService(), 20)


def bucket(offset: int = 0) -> int:
    """A bucket start a little in the past, inside the 1-day retention."""
    now = int(time.time())
    return now - now % 10 - 30 + offset


async def until_stored(reactor, carbon, expected: dict[str, dict[int, float]], timeout: float = 30.0):
    def stored():
        return all(carbon.values(path).items() >= points.items() for path, points in expected.items())

    try:
        await wait_for(reactor, stored, timeout=timeout, interval=0.1)
    except AssertionError:
        got = {path: carbon.values(path) for path in expected}
        raise AssertionError(f"carbon did not store {expected}; it has {got}\n{carbon.output()}") from None


@pytest_twisted.ensureDeferred
async def test_folded_names_reach_whisper(reactor, carbon, make_sink):
    carbon.start()
    sink = make_sink(tags="name", prefix="ts")
    await wait_for(reactor, lambda: sink.connected, timeout=30, interval=0.05)
    t0, t1 = bucket(), bucket(10)
    sketch = Sketch()
    for v in (1.0, 2.0, 3.0, 4.0, 10.0):
        sketch.add(v)
    sink.write(
        FlushBatch(
            float(t1),
            series=[
                Series("app.queue", SERIES_GAUGE, [(t0, 12.5)], ("env:prod",), "web-1"),
                Series("app.hits", SERIES_RATE, [(t0, 0.3), (t1, 0.5)], ("env:prod", "page:home"), "web-1"),
            ],
            sketches=[SketchSeries("app.latency", [(t1, sketch)], (), "web-1")],
            service_checks=[ServiceCheck("app.up", 1, t1 + 3, "web-1", "", ())],
        )
    )
    await until_stored(
        reactor,
        carbon,
        {
            "ts.app.queue.env_prod.host_web-1": {t0: 12.5},
            "ts.app.hits.env_prod.host_web-1.page_home": {t0: 0.3, t1: 0.5},
            "ts.app.latency.count.host_web-1": {t1: 5.0},
            "ts.app.latency.sum.host_web-1": {t1: 20.0},
            "ts.app.latency.max.host_web-1": {t1: 10.0},
            "ts.app.latency.p50.host_web-1": {t1: sketch.quantile(0.5)},
            # Whisper files the point under its 10 s slot.
            "ts.app.up.status.host_web-1": {t1: 1.0},
        },
    )
    assert sink.telemetry.get("sink_sent", *TAGS) == 3 + 8 + 1


@pytest_twisted.ensureDeferred
async def test_tagged_series_reach_whisper(reactor, carbon, make_sink):
    carbon.start()
    sink = make_sink(tags="graphite")
    await wait_for(reactor, lambda: sink.connected, timeout=30, interval=0.05)
    t0 = bucket()
    queue = Series("app.queue", SERIES_GAUGE, [(t0, 7.0)], ("role:db", "env:prod"), "h1")
    sink.write(FlushBatch(float(t0), series=[queue]))
    await until_stored(reactor, carbon, {"app.queue;env=prod;host=h1;role=db": {t0: 7.0}})


@pytest_twisted.ensureDeferred
async def test_lines_buffered_before_carbon_starts_arrive_when_it_does(reactor, carbon, make_sink):
    sink = make_sink(tags="name")
    t0 = bucket()
    sink.write(FlushBatch(float(t0), series=[Series("early", SERIES_GAUGE, [(t0, 1.0)], (), "")]))
    assert sink.buffered == 1 and not sink.connected
    carbon.start()
    await wait_for(reactor, lambda: sink.connected, timeout=30, interval=0.05)
    assert sink.buffered == 0
    await until_stored(reactor, carbon, {"early": {t0: 1.0}})


@pytest_twisted.ensureDeferred
async def test_the_sink_reconnects_after_carbon_restarts(reactor, carbon, make_sink):
    carbon.start()
    sink = make_sink(tags="name")
    await wait_for(reactor, lambda: sink.connected, timeout=30, interval=0.05)
    t0, t1 = bucket(), bucket(10)
    sink.write(FlushBatch(float(t0), series=[Series("before", SERIES_GAUGE, [(t0, 1.0)], (), "")]))
    await until_stored(reactor, carbon, {"before": {t0: 1.0}})
    carbon.stop()
    await wait_for(reactor, lambda: not sink.connected, timeout=10, interval=0.05)
    sink.write(FlushBatch(float(t1), series=[Series("after", SERIES_GAUGE, [(t1, 2.0)], (), "")]))
    assert sink.buffered == 1
    carbon.start()
    await wait_for(reactor, lambda: sink.buffered == 0, timeout=30, interval=0.05)
    await until_stored(reactor, carbon, {"after": {t1: 2.0}})
    assert sink.telemetry.get("sink_connects", *TAGS) == 2
