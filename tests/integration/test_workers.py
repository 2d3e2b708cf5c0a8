"""Multi-process intake (issue 7): workers share the UDP socket; the flushed output is exact."""

from __future__ import annotations

import json
import socket
import time

import pytest_twisted
from helpers import start_jsonl_server, wait_for, with_deadline
from twisted.internet.threads import deferToThread


def start(reactor, tmp_path, name, **settings):
    return start_jsonl_server(reactor, tmp_path, name, hostname="w", **settings)


def user_series(path):
    with open(path) as f:
        objects = [json.loads(line) for line in f]
    return sorted(
        (o["metric"], o["tags"], round(sum(p["value"] for p in o.get("points", [])), 9), o.get("count"))
        for o in objects
        if not o["metric"].startswith("twisted_statsd.")
    )


WORKLOAD = [
    b"\n".join(
        [
            b"w.count:%d|c|#k:%d" % (i % 7, i % 3),
            b"w.set:%d|s" % (i % 50),
            b"w.hist:%d|h" % (i % 100),
            b"w.dist:%d|d" % (i % 30),
            b"w.gauge:5|g",
        ]
    )
    for i in range(1000)
]


def send_all(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for datagram in WORKLOAD:
            sock.sendto(datagram, ("127.0.0.1", port))


async def run(reactor, tmp_path, name, workers):
    # A buffer that holds the whole burst: the comparison needs no kernel drops.
    service, out = start(reactor, tmp_path, name, dogstatsd_workers=workers, dogstatsd_so_rcvbuf=8 << 20)
    try:
        await with_deadline(reactor, service.flush(), 60)  # the workers are up and answering
        # The two runs are compared bucket by bucket: each sends its burst
        # early in a 10 s bucket, so that no run's burst straddles two.
        await wait_for(reactor, lambda: time.time() % 10 < 5, timeout=10, interval=0.1)
        # Sent from a thread, so that this process's reactor reads while the
        # worker does: sent from the reactor's own thread, the burst would all
        # go to the worker.
        await with_deadline(reactor, deferToThread(send_all, service.udp.address.port), 60)
        await with_deadline(reactor, service.flush(final=True), 60)
        await wait_for(reactor, lambda: service.telemetry.get("metrics") >= 5 * len(WORKLOAD))
        assert service.telemetry.get("metrics") == 5 * len(WORKLOAD)
        assert service.telemetry.dropped("udp_kernel") == 0
        if workers > 1:
            assert 0 < service.telemetry.get("worker_metrics") < 5 * len(WORKLOAD)  # both read
    finally:
        await with_deadline(reactor, service.stopService(), 60)
    if workers > 1:
        assert all(w.ended.called for w in service.workers.workers)
    return user_series(out)


@pytest_twisted.ensureDeferred
async def test_two_workers_produce_what_one_process_produces(reactor, tmp_path):
    single = await run(reactor, tmp_path, "one", 1)
    double = await run(reactor, tmp_path, "two", 2)
    assert double == single
