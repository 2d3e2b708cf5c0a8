"""Multi-core intake without a competing sender: how fast a full socket queue drains.

    python -m benchmarks.backlog [--workers 1,2] [--rounds 15] [--datagrams 3000] [--contexts 1000]

On a 2-core machine a load generator needs part of a core, so a ladder run
with two intake processes (:mod:`benchmarks.throughput` ``--workers 2``) has
less than two cores to share.  Here nothing else runs while the server reads:
for each round every server process is stopped (SIGSTOP), the UDP queue is
filled with ``--datagrams`` datagrams of the ``--contexts`` mixed workload
(:func:`benchmarks.workload.mixed_spec`; checked against the kernel's drop
count), the processes are continued, and the time until the queue is empty
gives the drain rate.  The server is warmed up first with the whole workload
cycle, twice, sent as fast as it is read without loss: every context is
known, and with several processes each has seen nearly every context (each
datagram goes to one of them).  Medians over the rounds, for each number of
intake processes, and their ratio to one process; and the memory the server
holds in all once the rounds are done: the sum of VmRSS over its process tree
(the workers included), as each process holds the contexts it has seen.
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
QUEUE_HIGH = 2 << 20  # bytes in the server's UDP queue above which a lossless sender waits
WARMUP_PASSES = 2


def send_without_loss(sock: socket.socket, port: int, datagrams: list[bytes]) -> None:
    """Send every datagram, waiting whenever the receiver's UDP queue holds more than QUEUE_HIGH bytes."""
    for start in range(0, len(datagrams), 64):
        while (procfs.udp_socket(port) or {"rx_queue": 0})["rx_queue"] > QUEUE_HIGH:
            time.sleep(0.005)
        for datagram in datagrams[start : start + 64]:
            sock.send(datagram)


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        os.kill(pid, signum)


def drain_rates(workers: int, rounds: int, datagrams: int, workdir: str, contexts: int = 1000) -> dict:
    """``{"rates": metrics/s per round, "rss_total", "rss"}`` for ``workers`` intake processes.

    ``rates``: how fast they emptied a full queue in each round; ``rss_total``:
    the sum of VmRSS over the server's process tree after the rounds, and
    ``rss`` that of each process.
    """
    workload = build(mixed_spec(contexts))
    rates = []
    with (
        TwistedStatsd(workdir, "udp", 8 << 20, 1.0, workers) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect(("127.0.0.1", server.port))
        for _ in range(WARMUP_PASSES):
            send_without_loss(sock, server.port, workload.datagrams)
        server.settle(timeout=300)
        pids = procfs.process_tree(server.pid)
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
        rss = [procfs.status_bytes(pid, "VmRSS") or 0 for pid in procfs.process_tree(server.pid)]
        server.before_stop()
        server.stop()
    return {"rates": rates, "rss_total": sum(rss), "rss": rss}


def drain_medians(counts, rounds: int, datagrams: int, root: str, contexts: int = 1000) -> dict:
    """``{workers: {"median", "low", "high", "rss_total", "rss"}}`` for each process count.

    Drain rates in metrics/s, memory in bytes (see :func:`drain_rates`).
    """
    results = {}
    for n in counts:
        found = drain_rates(n, rounds, datagrams, tempfile.mkdtemp(dir=root), contexts)
        rates = found["rates"]
        results[n] = {
            "median": statistics.median(rates),
            "low": min(rates),
            "high": max(rates),
            "rss_total": found["rss_total"],
            "rss": found["rss"],
        }
        print(
            f"  queue drain with {n} intake process(es), {contexts:,} contexts: median "
            f"{results[n]['median']:,.0f} metrics/s, RSS {found['rss_total'] / 2**20:.0f} MiB in all",
            file=sys.stderr,
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="intake process counts to compare, comma-separated")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--datagrams", type=int, default=3000, help="datagrams queued per round (must fit the buffer)")
    parser.add_argument("--contexts", type=int, default=1000, help="contexts in the workload")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    root = tempfile.mkdtemp(prefix="tsq")
    try:
        results = drain_medians(counts, args.rounds, args.datagrams, root, args.contexts)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base, base_rss = results[counts[0]]["median"], results[counts[0]]["rss_total"]
    print(
        f"queue drain, {args.datagrams} datagrams of the {args.contexts:,}-context workload, "
        f"median of {args.rounds} rounds"
    )
    for n, found in results.items():
        print(
            f"  {n} intake process(es) {found['median']:>12,.0f} metrics/s  {found['median'] / base:5.2f}x  "
            f"(rounds {found['low']:,.0f} .. {found['high']:,.0f}); RSS {found['rss_total'] / 2**20:.0f} MiB "
            f"in all, {found['rss_total'] / base_rss:.2f}x"
        )


if __name__ == "__main__":
    main()
