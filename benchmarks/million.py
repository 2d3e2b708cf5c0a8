"""A million live contexts in the real server: does it run, how much memory, how long the longest stall.

    python -m benchmarks.million [--contexts 1000000] [--memory-limit BYTES] [--json]

A ``twistd -n statsd`` process (UDP, ``flush_interval`` 1 s, the admin
endpoint on a free loopback port, a jsonl sink writing to ``/dev/null``: every
series is encoded and written, the disk is not measured) is sent one sample
of each of ``--contexts`` distinct counters with 4 tags
(:func:`benchmarks.workload.counters`), as fast as it takes them without loss:
this process sends while the server's UDP queue holds less than
``benchmarks.backlog.QUEUE_HIGH`` bytes and waits while it holds more.  Counters stay live for
``dogstatsd_expiry_seconds`` (300 s) after their last sample, so once every
context is loaded, every 10 s bucket flush writes all of them.  After the
load the benchmark waits for the next bucket to close and for the flush that
writes it (until the server is idle again), so one full flush of every
context is measured.

Throughout, a thread asks ``GET /health`` on the admin endpoint every
``PROBE_INTERVAL`` seconds over one kept-alive connection: the server answers
it on its reactor, the same thread that reads the UDP socket, so the longest
response time is the longest time the intake could not read (the stall),
measured from outside, to the probe's resolution.  The server's own
``reactor_lag`` gauge is not used: its 100 ms timer can under-read a stall by
up to 100 ms, the size of the target.

While loading as fast as the server takes new contexts, the server reads
what one ``doRead`` of the socket returns (up to 256 KiB) and learns every
new context in it before it answers anything else, so the probe's longest
answer during the load is the cost of learning one such read: reported
(``max_stall_load_seconds``), but the stall that counts
(``max_stall_seconds``) is the longest during the flush that writes every
live context, from the bucket's close until the server is idle again.

Reported: whether every context is live (``/status`` counts them) and nothing
was dropped (``/status`` drops, the kernel's included), RSS once loaded and the
peak (VmHWM), the longest stall during the load and during the flush, the
time the load and the flush took.  The server is killed at the end: its final
flush is not part of the measurement.

With ``--memory-limit`` the server runs ``dogstatsd_mem_based_rate_limiter``
with that ``memory_limit_bytes``: past its hard limit (90 %) new contexts are
refused and counted (``memory_hard_limit``), and the peak RSS says whether the
limit bounded memory through the load and the flush (issue 12, defect 7).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

from benchmarks import procfs
from benchmarks.backlog import send_without_loss
from benchmarks.receivers import TwistedStatsd
from benchmarks.workload import counters

PROBE_INTERVAL = 0.02
BUCKET_SECONDS = 10
FLUSH_INTERVAL = 1.0
RCVBUF = 8 << 20


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StallProbe:
    """A thread timing ``GET /health`` on the admin endpoint; the longest answer per phase is the stall."""

    def __init__(self, port: int, interval: float = PROBE_INTERVAL):
        self.port = port
        self.interval = interval
        self.phase = "idle"
        self.longest: dict[str, float] = {}
        self.answered = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-probe", daemon=True)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self._stop.is_set():
            phase = self.phase
            began = time.perf_counter()
            try:
                connection.request("GET", "/health")
                connection.getresponse().read()
            except (OSError, http.client.HTTPException):
                self.failures += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self._stop.wait(self.interval)
                continue
            took = time.perf_counter() - began
            self.answered += 1
            self.longest[phase] = max(self.longest.get(phase, 0.0), took)
            self._stop.wait(max(0.0, self.interval - took))
        connection.close()

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)


def admin_status(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("GET", "/status")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def measure(root: str, contexts: int = 1_000_000, rcvbuf: int = RCVBUF, memory_limit: int = 0) -> dict:
    """Load ``contexts`` counters into a real server and flush them once; see the module docstring."""
    workload = counters(contexts, prefix=b"bench.million")
    workdir = tempfile.mkdtemp(dir=root, prefix="m")
    admin = free_tcp_port()
    settings: dict = {"admin_port": admin}
    if memory_limit:
        settings["dogstatsd_mem_based_rate_limiter"] = {"enabled": True, "memory_limit_bytes": memory_limit}
    server = TwistedStatsd(workdir, "udp", rcvbuf, FLUSH_INTERVAL, settings=settings)
    server.jsonl = os.devnull
    try:
        with server:
            with StallProbe(admin) as probe, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(("127.0.0.1", server.port))
                rss_start = procfs.status_bytes(server.pid, "VmRSS") or 0
                time.sleep(0.5)
                probe.phase = "load"
                began = time.monotonic()
                send_without_loss(sock, server.port, workload.datagrams)
                settled = server.settle(timeout=600)
                load_seconds = time.monotonic() - began
                rss_loaded = procfs.status_bytes(server.pid, "VmRSS") or 0
                # The next bucket to close holds every context (counters are live for 300 s).
                probe.phase = "flush"
                boundary = (int(time.time()) // BUCKET_SECONDS + 1) * BUCKET_SECONDS
                time.sleep(boundary + FLUSH_INTERVAL + 0.2 - time.time())
                flushed = server.settle(timeout=600)
                flush_seconds = time.time() - boundary
                probe.phase = "after"
                peak = procfs.status_bytes(server.pid, "VmHWM") or 0
                rss_flushed = procfs.status_bytes(server.pid, "VmRSS") or 0
            status = admin_status(admin)  # after the probe: /status walks every context
            kernel_drops = server.kernel_drops()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    dropped = {reason: n for reason, n in status["dropped"].items() if n}
    # With a memory limit, the contexts past its hard limit are refused (and counted): expected.
    unexpected = {reason: n for reason, n in dropped.items() if not (memory_limit and reason == "memory_hard_limit")}
    live_wanted = contexts - dropped.get("memory_hard_limit", 0) if memory_limit else contexts
    return {
        "contexts": contexts,
        "memory_limit": memory_limit,
        "sent_metrics": workload.lines,
        "live_contexts": status["contexts"],
        "dropped": dropped,
        "kernel_drops": kernel_drops,
        "runs": settled and flushed and status["contexts"] >= live_wanted and not unexpected and not kernel_drops,
        "load_seconds": load_seconds,
        "load_rate": workload.lines / load_seconds,
        "flush_seconds": flush_seconds,
        "last_flush_seconds": status["last_flush_seconds"],
        "rss_start": rss_start,
        "rss_loaded": rss_loaded,
        "rss_flushed": rss_flushed,
        "peak_rss": peak,
        "max_stall_seconds": probe.longest.get("flush"),
        "max_stall_load_seconds": probe.longest.get("load"),
        "probe_interval_seconds": PROBE_INTERVAL,
        "probes": probe.answered,
        "probe_failures": probe.failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=1_000_000)
    parser.add_argument(
        "--memory-limit",
        type=int,
        default=0,
        metavar="BYTES",
        help="enable dogstatsd_mem_based_rate_limiter with this memory_limit_bytes (issue 12, defect 7)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="tsm")
    try:
        result = measure(root, args.contexts, memory_limit=args.memory_limit)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    mib = 2**20
    print(
        f"{result['live_contexts']:,} of {args.contexts:,} contexts live, dropped {result['dropped'] or 'nothing'}\n"
        f"load {result['load_seconds']:.1f} s ({result['load_rate']:,.0f} new contexts/s), "
        f"flush of the full bucket {result['flush_seconds']:.1f} s after it closed\n"
        f"RSS {result['rss_start'] / mib:.0f} MiB at start, {result['rss_loaded'] / mib:.0f} MiB loaded, "
        f"peak {result['peak_rss'] / mib:.0f} MiB"
        + (f" (limit {args.memory_limit / mib:.0f} MiB)" if args.memory_limit else "")
        + "\n"
        f"longest stall {result['max_stall_load_seconds'] * 1000:.0f} ms loading, "
        f"{result['max_stall_seconds'] * 1000:.0f} ms flushing ({result['probes']:,} probes)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
