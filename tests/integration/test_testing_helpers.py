"""twisted_statsd.testing, the statsd_server fixture and the trial mixin, used as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from datadog.dogstatsd import DogStatsd

from twisted_statsd.testing import CapturingServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def client(server) -> DogStatsd:
    return DogStatsd(host=server.host, port=server.port, disable_telemetry=True)


@pytest_twisted.ensureDeferred
async def test_fixture_captures_lines_samples_series_events_and_checks(statsd_server):
    statsd = client(statsd_server)
    statsd.increment("jobs.done", 3, tags=["queue:high"])
    statsd.gauge("jobs.waiting", 7)
    statsd.distribution("jobs.seconds", 1.5)
    statsd.event("Job failed", "boom", alert_type="error")
    statsd.service_check("jobs.up", DogStatsd.WARNING, message="slow")
    statsd.close_socket()

    batch = await statsd_server.flush()
    assert batch.series  # the flush itself returns the batch

    assert statsd_server.lines[:2] == [b"jobs.done:3|c|#queue:high", b"jobs.waiting:7|g"]
    assert [(s.name, s.values) for s in statsd_server.samples] == [
        (b"jobs.done", (3.0,)),
        (b"jobs.waiting", (7.0,)),
        (b"jobs.seconds", (1.5,)),
    ]
    statsd_server.assert_metric("jobs.done", value=0.3, tags=["queue:high"], type="rate")
    statsd_server.assert_metric("jobs.waiting", value=7, type="gauge")
    assert [d.name for d in statsd_server.distributions] == ["jobs.seconds"]
    assert [(e.title, e.alert_type) for e in statsd_server.events] == [("Job failed", "error")]
    assert [(c.name, c.status, c.message) for c in statsd_server.service_checks] == [("jobs.up", 1, "slow")]


def test_fixture_works_in_a_plain_test_with_flush_now(statsd_server):
    statsd = client(statsd_server)
    statsd.gauge("plain", 1)
    statsd.close_socket()
    batch = statsd_server.flush_now()
    assert [s.name for s in batch.series if s.name == "plain"] == ["plain"]
    statsd_server.assert_metric("plain", value=1)


@pytest_twisted.ensureDeferred
async def test_assert_metric_failure_lists_what_arrived(statsd_server):
    statsd = client(statsd_server)
    statsd.gauge("temperature", 21, tags=["room:a"])
    statsd.close_socket()
    await statsd_server.flush()
    with pytest.raises(AssertionError) as failure:
        statsd_server.assert_metric("temperature", value=22, tags=["room:a"])
    message = str(failure.value)
    assert "no series matched temperature value=22" in message
    assert "temperature gauge [21.0] tags=['room:a']" in message


@pytest_twisted.ensureDeferred
async def test_flushes_do_not_repeat_counters_and_reset_forgets(reactor):
    server = CapturingServer(reactor).start()
    try:
        statsd = client(server)
        statsd.increment("once")
        await server.flush()
        await server.flush()
        assert [s.name for s in server.series] == ["once"]
        server.reset()
        statsd.increment("twice")
        statsd.close_socket()
        await server.flush()
        assert [s.name for s in server.series] == ["twice"]
    finally:
        await server.stop()


def test_trial_mixin_example_passes_without_a_dirty_reactor(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "twisted.trial", str(EXAMPLES / "test_with_trial.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "PASSED (successes=1)" in result.stdout, result.stdout + result.stderr
    assert "DirtyReactor" not in result.stdout


@pytest_twisted.ensureDeferred
async def test_capturing_server_on_a_unix_socket(reactor):
    server = CapturingServer(reactor, unix_socket=True).start()
    path = server.socket_path
    try:
        statsd = DogStatsd(socket_path=path, disable_telemetry=True)
        statsd.gauge("over.uds", 5, tags=["via:unix"])
        statsd.close_socket()
        await server.flush()
        server.assert_metric("over.uds", value=5, tags=["via:unix"], type="gauge")
        assert server.lines == [b"over.uds:5|g|#via:unix"]
    finally:
        await server.stop()
    import os

    assert not os.path.exists(os.path.dirname(path))


def test_flush_now_with_many_contexts(statsd_server):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for start in range(0, 3000, 100):
            sock.sendto(
                b"\n".join(b"many.%d:1|c" % i for i in range(start, start + 100)),
                (statsd_server.host, statsd_server.port),
            )
    statsd_server.flush_now()
    assert len([s for s in statsd_server.series if s.name.startswith("many.")]) == 3000
