"""Small helpers shared by integration tests: deadlines and polling without sleeps."""

from __future__ import annotations

import time

from twisted.internet import defer, task


async def wait_for(reactor, predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await task.deferLater(reactor, interval, lambda: None)


def counted(service, name: str = "metrics") -> int:
    """``name``'s telemetry count once what was read is folded in, as every reader of the aggregator does.

    Samples are counted when the pipeline folds them, which the intake timer does only once
    they are a second old: a test that polled the bare counter waited up to that second.
    """
    service.intake.drain()
    service.pipeline.fold()
    return service.telemetry.get(name)


async def early_in_a_bucket(reactor, margin: float = 4.0):
    """Wait until at least ``margin`` seconds are left in the current 10 s bucket.

    For tests that compare a counter's points after the final flush: a test
    that runs into the next bucket finds the counter zero-filled there too
    (spec §6.5), which is right but not what such a test checks.
    """
    await wait_for(reactor, lambda: 10 - time.time() % 10 >= margin, timeout=margin + 1, interval=0.05)


async def with_deadline(reactor, d: defer.Deferred, timeout: float = 10.0):
    """Await ``d`` but fail (cancelling it) after ``timeout`` seconds."""
    return await d.addTimeout(timeout, reactor)


def start_jsonl_server(reactor, tmp_path, name: str = "out", hostname: str = "testhost", **settings):
    """A started server on an ephemeral UDP port writing JSON lines to ``tmp_path/<name>.jsonl``."""
    from twisted_statsd import build_service, load_config

    out = tmp_path / f"{name}.jsonl"
    data = {
        "dogstatsd_port": "__random__",
        "hostname": hostname,
        "flush_interval": 3600,
        "sinks": [{"type": "jsonl", "path": str(out)}],
        **settings,
    }
    service = build_service(load_config(data=data), reactor)
    service.startService()
    return service, out
