"""Multi-process intake (issue 7): workers share the UDP socket; the flushed output is exact."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import termios
import time

import pytest_twisted
from helpers import counted, early_in_a_bucket, start_jsonl_server, wait_for, with_deadline
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


def send_all(port: int, datagrams=WORKLOAD) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


def queued(udp) -> int:
    """The size of the next datagram the kernel holds for the shared socket (0: none)."""
    return struct.unpack("i", fcntl.ioctl(udp.port.getHandle(), termios.FIONREAD, b"\0\0\0\0"))[0]


async def send_to_both(reactor, service) -> None:
    """Half the burst for this process, half for the worker, whatever else the machine runs.

    Left to the scheduler, a busy machine (a parallel test run) can let either process read
    it all, and then nothing is merged.
    """
    (worker,) = service.workers.workers
    half, port = len(WORKLOAD) // 2, service.udp.address.port
    # This process's half: sent and read while the worker is stopped.
    os.kill(worker.transport.pid, signal.SIGSTOP)
    try:
        await with_deadline(reactor, deferToThread(send_all, port, WORKLOAD[:half]), 60)
        await wait_for(reactor, lambda: counted(service) >= 5 * half, timeout=60)
    finally:
        os.kill(worker.transport.pid, signal.SIGCONT)
    # The worker's half: sent from the reactor's thread, which holds off until the worker has
    # read every datagram, so that none is read here.
    send_all(port, WORKLOAD[half:])
    deadline = time.monotonic() + 60
    while queued(service.udp) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not queued(service.udp), "the worker did not read its half"


async def run(reactor, tmp_path, name, workers):
    # A buffer that holds the whole burst: the comparison needs no kernel drops.
    service, out = start(reactor, tmp_path, name, dogstatsd_workers=workers, dogstatsd_so_rcvbuf=8 << 20)
    try:
        await with_deadline(reactor, service.flush(), 60)  # the workers are up and answering
        # The two runs are compared bucket by bucket: each sends its burst
        # early in a 10 s bucket, so that no run's burst straddles two.
        await wait_for(reactor, lambda: time.time() % 10 < 5, timeout=10, interval=0.1)
        if workers > 1:
            await send_to_both(reactor, service)
        else:
            await with_deadline(reactor, deferToThread(send_all, service.udp.address.port), 60)
        await with_deadline(reactor, service.flush(final=True), 60)
        await wait_for(reactor, lambda: service.telemetry.get("metrics") >= 5 * len(WORKLOAD))
        assert service.telemetry.get("metrics") == 5 * len(WORKLOAD)
        assert service.telemetry.dropped("udp_kernel") == 0
        if workers > 1:
            assert service.telemetry.get("worker_metrics") == 5 * (len(WORKLOAD) - len(WORKLOAD) // 2)  # both read
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


def series_by_context(path) -> dict:
    """Each user context's total count (rate series points times the interval), from the jsonl output."""
    totals: dict = {}
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if not o["metric"].startswith("twisted_statsd."):
                key = (o["metric"], tuple(o["tags"]))
                totals[key] = totals.get(key, 0.0) + sum(p["value"] for p in o["points"]) * o.get("interval", 1)
    return totals


MANY = 3000
SHARDED = 15_000


def send_many(port: int, many: int = MANY) -> None:
    """Every one of ``many`` counters twice, under two tag orders, packed as a client packs them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        lines = [b"many.c%d:1|c|#a:%d,b:x" % (i, i % 5) for i in range(many)]
        lines += [b"many.c%d:1|c|#b:x,a:%d" % (i, i % 5) for i in range(many)]
        for i in range(0, len(lines), 20):
            sock.sendto(b"\n".join(lines[i : i + 20]), ("127.0.0.1", port))


@pytest_twisted.ensureDeferred
async def test_three_processes_shard_many_contexts_and_the_totals_are_exact(reactor, tmp_path):
    """Issue 14: 15,000 contexts over 3 processes (worker to worker channels too), each sent under
    two tag orders, which may reach two owners: every count is exact once merged.  Each process
    reads ~10,000 shapes, past FEW_SHAPES, so each starts routing partway through."""
    service, out = start(reactor, tmp_path, "many", dogstatsd_workers=3, dogstatsd_so_rcvbuf=8 << 20)
    try:
        await with_deadline(reactor, service.flush(), 60)
        await early_in_a_bucket(reactor)
        await with_deadline(reactor, deferToThread(send_many, service.udp.address.port, SHARDED), 60)
        await with_deadline(reactor, service.flush(final=True), 60)
        assert service.telemetry.get("metrics") == 2 * SHARDED
        assert service.telemetry.dropped("udp_kernel") == 0
        assert service.telemetry.get("shard_forwarded") > 0  # lines went to their owners
        assert 0 < service.telemetry.get("worker_metrics") < 2 * SHARDED
    finally:
        await with_deadline(reactor, service.stopService(), 60)
    totals = series_by_context(out)
    assert len(totals) == SHARDED
    assert all(round(total, 6) == 2 for total in totals.values())


@pytest_twisted.ensureDeferred
async def test_a_worker_that_dies_is_counted_and_its_lines_stay_with_their_readers(reactor, tmp_path, logged_errors):
    service, out = start(reactor, tmp_path, "dies", dogstatsd_workers=2, dogstatsd_so_rcvbuf=8 << 20)
    try:
        await with_deadline(reactor, service.flush(), 60)  # the worker is up and answering
        worker = service.workers.workers[0]
        worker.transport.signalProcess("KILL")
        await with_deadline(reactor, worker.ended, 30)
        assert service.telemetry.get("worker_errors") == 1
        assert logged_errors.expect("An intake worker exited")
        await early_in_a_bucket(reactor)
        await with_deadline(reactor, deferToThread(send_many, service.udp.address.port), 60)
        await with_deadline(reactor, service.flush(final=True), 60)
        assert service.telemetry.get("metrics") == 2 * MANY
    finally:
        await with_deadline(reactor, service.stopService(), 60)
    assert all(round(total, 6) == 2 for total in series_by_context(out).values())
    assert len(series_by_context(out)) == MANY
