"""The load generator: a separate process that sends a pre-built workload at a paced rate.

The parent talks to it over a pipe (:class:`LoadGenerator`), so the workload
is built once per process and only the send loop runs during a step.  The loop
sends a chunk of datagrams, then checks the clock: it stops at the deadline or
the metric limit, and sleeps when it is ahead of ``rate``.  It reports what it
actually achieved, and the share of its own CPU it used, so a step where the
generator itself was the bottleneck can be told apart from one where the
receiver was.

Transports: ``udp`` (a connected socket, blocking, as the datadog client),
``unixgram`` (blocking with a 100 ms send timeout, as datadog-go's default
write timeout: a full queue slows the sender down, a datagram that times out is
lost at the sender and counted; with ``net.unix.max_dgram_qlen`` = 10 a
non-blocking sender, as the Python client, loses bursts however fast the
receiver is), and ``unixstream`` (each datagram
framed with a 4-byte little-endian length, sent with ``sendall`` with a
timeout: the receiver's back-pressure slows the sender down, nothing is lost).
"""

from __future__ import annotations

import multiprocessing
import socket
import struct
import time

from benchmarks.workload import Workload, build

CHUNK = 16  # datagrams between clock checks
STREAM_TIMEOUT = 5.0
DGRAM_TIMEOUT_US = 100_000


def _chunks(workload: Workload, transport: str) -> list[tuple]:
    """(payloads, counts, metric total) per chunk; a stream chunk is one framed buffer."""
    chunks = []
    for i in range(0, len(workload.datagrams), CHUNK):
        payloads = workload.datagrams[i : i + CHUNK]
        counts = workload.counts[i : i + CHUNK]
        if transport == "unixstream":
            payloads = [b"".join(struct.pack("<I", len(p)) + p for p in payloads)]
        chunks.append((payloads, counts, sum(counts)))
    return chunks


def _connect(target: dict) -> socket.socket:
    transport = target["transport"]
    if transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(tuple(target["address"]))
    elif transport == "unixgram":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(target["path"])
        # Blocking, so no poll() before every send, with a kernel-side timeout (struct timeval).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, DGRAM_TIMEOUT_US))
    elif transport == "unixstream":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(STREAM_TIMEOUT)
        sock.connect(target["path"])
    else:
        raise ValueError(f"unknown transport {transport!r}")
    return sock


def send_paced(sock: socket.socket, transport: str, chunks, rate: float, seconds: float, limit: int) -> dict:
    """Send chunks in a cycle at ``rate`` metrics/s until ``seconds`` pass or ``limit`` metrics are offered."""
    send = sock.sendall if transport == "unixstream" else sock.send
    lossy = transport == "unixgram"
    offered = lost = errors = datagrams = 0
    cycle, index = len(chunks), 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while offered < limit:
        now = time.perf_counter()
        if now >= deadline:
            break
        ahead = offered / rate - (now - start)
        if ahead > 0:
            time.sleep(ahead)
        payloads, counts, total = chunks[index]
        index = index + 1 if index + 1 < cycle else 0
        try:
            if lossy:
                for payload, count in zip(payloads, counts, strict=False):
                    try:
                        send(payload)
                    except BlockingIOError:
                        lost += count
            else:
                for payload in payloads:
                    send(payload)
        except OSError:
            # The receiver went away or stopped reading: count the chunk and let the deadline end us.
            errors += 1
            lost += total
        offered += total
        datagrams += len(counts)
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {
        "offered_metrics": offered,
        "lost_at_sender": lost,
        "sent_metrics": offered - lost,
        "datagrams": datagrams,
        "send_errors": errors,
        "elapsed": elapsed,
        "achieved_rate": offered / elapsed,
        "sender_cpu_share": (time.process_time() - cpu_start) / elapsed,
    }


def _serve(conn) -> None:
    """The generator process: build workloads on demand, run send commands, reply with results."""
    cache: dict[str, tuple[Workload, dict]] = {}
    while True:
        command = conn.recv()
        if command["op"] == "stop":
            return
        try:
            spec, transport = command["workload"], command["target"]["transport"]
            key = repr(sorted(spec.items()))
            if key not in cache:
                cache.clear()  # hold one workload at a time: the 100k-context one is ~20 MB
                cache[key] = (build(spec), {})
            workload, by_transport = cache[key]
            if transport not in by_transport:
                by_transport[transport] = _chunks(workload, transport)
            if command["op"] == "describe":
                conn.send({"lines": workload.lines, "datagrams": len(workload.datagrams), "bytes": workload.bytes})
                continue
            limit = command.get("limit") or int(command["rate"] * command["seconds"]) + workload.lines
            with _connect(command["target"]) as sock:
                result = send_paced(
                    sock, transport, by_transport[transport], command["rate"], command["seconds"], limit
                )
            conn.send(result)
        except Exception as error:  # reported to the parent, which raises it
            conn.send({"error": f"{type(error).__name__}: {error}"})


class LoadGenerator:
    """Controls the generator process; use as a context manager so it is always stopped."""

    def __init__(self):
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="statsd-loadgen", daemon=True)

    def __enter__(self) -> LoadGenerator:
        self._process.start()
        return self

    @property
    def pid(self) -> int:
        return self._process.pid

    def _call(self, command: dict, timeout: float) -> dict:
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise TimeoutError(f"load generator did not answer {command['op']!r} within {timeout:.0f} s")
        result = self._conn.recv()
        if "error" in result:
            raise RuntimeError(f"load generator: {result['error']}")
        return result

    def describe(self, workload: dict, transport: str = "udp") -> dict:
        """Build (and cache) a workload; returns its size."""
        return self._call({"op": "describe", "workload": workload, "target": {"transport": transport}}, 300)

    def send(self, target: dict, workload: dict, rate: float, seconds: float, limit: int | None = None) -> dict:
        command = {
            "op": "send",
            "target": target,
            "workload": workload,
            "rate": rate,
            "seconds": seconds,
            "limit": limit,
        }
        return self._call(command, seconds + STREAM_TIMEOUT + 300)

    def __exit__(self, *exc) -> None:
        try:
            self._conn.send({"op": "stop"})
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
