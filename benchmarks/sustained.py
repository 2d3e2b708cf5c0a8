"""CPU per metric and memory of 1 and N intake processes under the same steady load, flushes included.

    python -m benchmarks.sustained [--workers 1,2] [--contexts 100000] [--rate 40000] [--seconds 25] [--runs 3]

The queue-drain benchmark (:mod:`benchmarks.backlog`) measures how fast the
processes read, but a flush of 100,000 contexts falls into some of its rounds
and not others.  Here every server gets the mixed workload at one fixed rate,
below what one process sustains, for long enough to close two or more
10-second buckets; the figures are the CPU time of all its processes per
metric accepted (flushes, ships and merges included), the kernel's drops,
and the resident memory of all its processes at the end (and their peaks).
Runs alternate between the process counts; medians over the runs.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import time

from benchmarks import procfs
from benchmarks.receivers import TwistedStatsd
from benchmarks.workload import build, mixed_spec

SLICE = 0.01


def send_paced(sock: socket.socket, workload, rate: float, seconds: float, start_index: int = 0) -> int:
    """Send ``rate`` metrics/s for ``seconds`` in 10 ms slices; returns the metrics sent."""
    sent, index, cycle = 0, start_index, len(workload.datagrams)
    begin = time.perf_counter()
    while (elapsed := time.perf_counter() - begin) < seconds:
        while sent < rate * (elapsed + SLICE):
            sock.send(workload.datagrams[index % cycle])
            sent += workload.counts[index % cycle]
            index += 1
        time.sleep(max(0.0, begin + elapsed + SLICE - time.perf_counter()))
    return sent


def one_run(workers: int, workload, rate: float, seconds: float, workdir: str) -> dict:
    with (
        TwistedStatsd(workdir, "udp", 8 << 20, 1.0, workers) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect(("127.0.0.1", server.port))
        send_paced(sock, workload, rate, len(workload.datagrams) / (rate / 20) + 1)  # every context known
        server.settle()
        pids = procfs.process_tree(server.pid)
        cpu = sum(map(procfs.cpu_seconds, pids))
        drops = server.kernel_drops() or 0
        sent = send_paced(sock, workload, rate, seconds, 7)
        server.settle()
        for pid in pids:
            procfs.wait_quiet(pid)
        found = {
            "cpu_per_metric": (sum(map(procfs.cpu_seconds, pids)) - cpu) / sent,
            "kernel_drops": (server.kernel_drops() or 0) - drops,
            "rss": sum(procfs.status_bytes(pid, "VmRSS") or 0 for pid in pids),
            "peak_rss": sum(procfs.status_bytes(pid, "VmHWM") or 0 for pid in pids),
            "processes": len(pids),
        }
        server.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="intake process counts to compare, comma-separated")
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=40_000, help="metrics per second sent")
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    workload = build(mixed_spec(args.contexts))
    root = tempfile.mkdtemp(prefix="tss")
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    try:
        for _ in range(args.runs):
            for n in counts:
                runs[n].append(one_run(n, workload, args.rate, args.seconds, tempfile.mkdtemp(dir=root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"sustained {args.rate:,.0f} metrics/s for {args.seconds:.0f} s, {args.contexts:,}-context mixed workload, "
        f"median of {args.runs} runs"
    )
    base = {key: statistics.median(r[key] for r in runs[counts[0]]) for key in ("cpu_per_metric", "rss", "peak_rss")}
    for n in counts:
        med = {key: statistics.median(r[key] for r in runs[n]) for key in runs[n][0]}
        print(
            f"  {n} intake process(es): CPU {med['cpu_per_metric'] * 1e6:.2f} us/metric "
            f"({med['cpu_per_metric'] / base['cpu_per_metric']:.2f}x)  "
            f"RSS {med['rss'] / 2**20:,.0f} MiB ({med['rss'] / base['rss']:.2f}x)  "
            f"peak {med['peak_rss'] / 2**20:,.0f} MiB ({med['peak_rss'] / base['peak_rss']:.2f}x)  "
            f"kernel drops {med['kernel_drops']:,.0f}"
        )


if __name__ == "__main__":
    main()
