"""Multi-core intake without a competing sender: how fast a full socket queue drains.

    python -m benchmarks.backlog [--workers 1,2] [--rounds 15] [--datagrams 3000]

On a 2-core machine a load generator needs part of a core, so a ladder run
with two intake processes (:mod:`benchmarks.throughput` ``--workers 2``) has
less than two cores to share.  Here nothing else runs while the server reads:
for each round every server process is stopped (SIGSTOP), the UDP queue is
filled with ``--datagrams`` datagrams of the 1,000-context workload (checked
against the kernel's drop count), the processes are continued, and the time
until the queue is empty gives the drain rate.  The server is warmed up
first, so every context is known.  Medians over the rounds, for each number
of intake processes, and their ratio to one process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

from benchmarks import procfs
from benchmarks.receivers import TwistedStatsd
from benchmarks.workload import build, mixed_spec

POLL_SECONDS = 0.001


def _processes(pid: int) -> list[int]:
    """The server and its worker processes."""
    found = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        os.kill(pid, signum)


def drain_rates(workers: int, rounds: int, datagrams: int, workdir: str) -> list[float]:
    """Metrics per second at which ``workers`` intake processes emptied a full queue, per round."""
    workload = build(mixed_spec(1000))
    rates = []
    with (
        TwistedStatsd(workdir, "udp", 8 << 20, 1.0, workers) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect(("127.0.0.1", server.port))
        for datagram in workload.datagrams[:400]:  # every context once, and more
            sock.send(datagram)
            time.sleep(0.0002)
        server.settle()
        pids = _processes(server.pid)
        cycle = len(workload.datagrams)
        for round_ in range(rounds):
            drops = server.kernel_drops()
            _signal_all(pids, signal.SIGSTOP)
            try:
                metrics = 0
                for i in range(datagrams):
                    index = (round_ * datagrams + i) % cycle
                    sock.send(workload.datagrams[index])
                    metrics += workload.counts[index]
            finally:
                start = time.perf_counter()
                _signal_all(pids, signal.SIGCONT)
            while (procfs.udp_socket(server.port) or {"rx_queue": 0})["rx_queue"]:
                time.sleep(POLL_SECONDS)
            elapsed = time.perf_counter() - start
            if server.kernel_drops() != drops:
                raise RuntimeError(f"the kernel dropped datagrams while the queue filled; use fewer than {datagrams}")
            rates.append(metrics / elapsed)
            server.settle()
        server.before_stop()
        server.stop()
    return rates


def drain_medians(counts, rounds: int, datagrams: int, root: str) -> dict:
    """``{workers: {"median", "low", "high"}}`` drain rates (metrics/s) for each process count."""
    results = {}
    for n in counts:
        rates = drain_rates(n, rounds, datagrams, tempfile.mkdtemp(dir=root))
        results[n] = {"median": statistics.median(rates), "low": min(rates), "high": max(rates)}
        print(
            f"  queue drain with {n} intake process(es): median {results[n]['median']:,.0f} metrics/s",
            file=sys.stderr,
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="intake process counts to compare, comma-separated")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--datagrams", type=int, default=3000, help="datagrams queued per round (must fit the buffer)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    root = tempfile.mkdtemp(prefix="tsq")
    try:
        results = drain_medians(counts, args.rounds, args.datagrams, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results[counts[0]]["median"]
    print(f"queue drain, {args.datagrams} datagrams of the 1,000-context workload, median of {args.rounds} rounds")
    for n, found in results.items():
        print(
            f"  {n} intake process(es) {found['median']:>12,.0f} metrics/s  {found['median'] / base:5.2f}x  "
            f"(rounds {found['low']:,.0f} .. {found['high']:,.0f})"
        )


if __name__ == "__main__":
    main()
