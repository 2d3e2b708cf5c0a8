"""Soak: run the server for minutes at half its sustained rate, with contexts coming and going.

    python -m benchmarks.soak [--minutes 10] [--rate METRICS_PER_S] [--contexts 10000]
                              [--rotate-seconds 60] [--sample-seconds 10] [--warmup-seconds S]

(from the repository root; not part of the test suite.)

A ``twistd -n statsd`` process (UDP, jsonl sink, 10 s flushes, contexts
expiring 30 s after their last sample) is loaded from this process over
loopback with counters ``soak.m<k>`` tagged ``gen:<g>``: every
``--rotate-seconds`` a new generation of ``--contexts`` contexts replaces the
previous one, which then expires, so the server keeps creating and forgetting
contexts.  Without ``--rate``, the sustained rate is first measured on a
separate server (5 s of sending as fast as this process can; accepted = sent
minus what the kernel dropped, over the time until the server is idle again)
and the soak runs at half of it.

Every ``--sample-seconds`` the server's RSS (``/proc/<pid>/status`` VmRSS) is
recorded.  At the end: the RSS series, the growth from the end of the warm-up
(when the first generation has expired) to the end of the run (medians of
three samples each; the target is under 5 %), and the metrics sent, accepted
(the server's telemetry), dropped by the kernel and by the server, and found
in the output (the sum of every ``soak.*`` counter in the jsonl file): zero
loss means sent == found.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

from benchmarks import procfs
from benchmarks.receivers import TwistedStatsd

LINES_PER_DATAGRAM = 25
RCVBUF = 8 * 1024 * 1024
CALIBRATION_SECONDS = 5.0
EXPIRY_SECONDS = 30


class SoakServer(TwistedStatsd):
    """The benchmark's twisted-statsd with 10 s flushes and contexts expiring after 30 s."""

    name = "twisted-statsd (soak)"

    def command(self) -> list[str]:
        command = super().command()
        path = command[command.index("--config") + 1]
        with open(path, "a") as f:
            f.write(f"dogstatsd_expiry_seconds: {EXPIRY_SECONDS}\ndogstatsd_context_expiry_seconds: {EXPIRY_SECONDS}\n")
        return command


def datagrams(generation: int, contexts: int) -> list[bytes]:
    """Every context of one generation once, as counters of 1, ``LINES_PER_DATAGRAM`` to a datagram."""
    lines = [f"soak.m{k}:1|c|#gen:{generation},shard:{k % 16}".encode() for k in range(contexts)]
    return [b"\n".join(lines[i : i + LINES_PER_DATAGRAM]) for i in range(0, len(lines), LINES_PER_DATAGRAM)]


def line_counts(packets: list[bytes]) -> list[int]:
    return [packet.count(b"\n") + 1 for packet in packets]


class Sender:
    """Sends at ``rate`` metrics/s over a connected UDP socket, a new generation every ``rotate`` s."""

    def __init__(self, port: int, rate: float | None, contexts: int, rotate: float):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.rate, self.contexts, self.rotate = rate, contexts, rotate
        self.sent = 0
        self.send_errors = 0
        self._generation = -1
        self._packets: list[bytes] = []
        self._counts: list[int] = []
        self._next = 0

    def _packets_at(self, elapsed: float) -> None:
        generation = int(elapsed // self.rotate)
        if generation != self._generation:
            self._generation = generation
            self._packets = datagrams(generation, self.contexts)
            self._counts = line_counts(self._packets)
            self._next = 0

    def run(self, seconds: float, on_tick=None) -> float:
        """Send for ``seconds``; ``on_tick(elapsed)`` is called every 10 ms or so.  Returns the time taken."""
        start = time.monotonic()
        elapsed = 0.0
        while elapsed < seconds:
            self._packets_at(elapsed)
            target = self.rate * elapsed if self.rate else float("inf")
            burst = 0
            while self.sent < target and burst < 2000:
                i = self._next
                try:
                    self.sock.send(self._packets[i])
                    self.sent += self._counts[i]
                except OSError:
                    self.send_errors += 1
                self._next = (i + 1) % len(self._packets)
                burst += 1
            if on_tick is not None:
                on_tick(elapsed)
            if self.sent >= target:
                time.sleep(0.01)
            elapsed = time.monotonic() - start
        return elapsed


def soak_totals(path: str) -> float:
    """The sum of every ``soak.*`` counter in the jsonl output (value x interval per point)."""
    total = 0.0
    with open(path, "rb") as f:
        for line in f:
            if b'"soak.' not in line:
                continue
            obj = json.loads(line)
            total += sum(p["value"] for p in obj["points"]) * (obj.get("interval") or 1)
    return total


def calibrate(workdir: str, contexts: int) -> float:
    """Metrics/s the server accepts while this process sends as fast as it can.

    What it accepted (sent minus the kernel's drops) over the time until it
    had processed all of it: the sending, and the backlog read after it.
    """
    os.makedirs(workdir, exist_ok=True)
    with SoakServer(workdir, "udp", RCVBUF) as server:
        sender = Sender(server.port, None, contexts, rotate=3600)
        start = time.monotonic()
        sender.run(CALIBRATION_SECONDS)
        server.settle()
        seconds = time.monotonic() - start
        state = procfs.udp_socket(server.port) or {"drops": 0}
        lost = state["drops"] * LINES_PER_DATAGRAM
        return max(sender.sent - lost, 0) / seconds


def median_of(samples: list[tuple[float, int]], around: int) -> float:
    window = samples[max(around - 1, 0) : around + 2]
    return statistics.median(rss for _, rss in window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="metrics per second (default: half the measured sustained rate)")
    parser.add_argument("--contexts", type=int, default=10_000, help="live contexts per generation")
    parser.add_argument("--rotate-seconds", type=float, default=60.0, help="seconds between generations")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        help="RSS growth is measured after this (default: one rotation, then expiry and a flush: rotate + 40 s)",
    )
    args = parser.parse_args()
    if args.warmup_seconds is None:
        # Until then the second generation is still arriving while the first has not expired.
        args.warmup_seconds = args.rotate_seconds + EXPIRY_SECONDS + 10.0

    root = tempfile.mkdtemp(prefix="soak")
    rate = args.rate
    if rate is None:
        sustained = calibrate(os.path.join(root, "calibrate"), args.contexts)
        rate = sustained / 2
        print(f"sustained rate {sustained:,.0f} metrics/s; soaking at {rate:,.0f} metrics/s", flush=True)
    workdir = os.path.join(root, "soak")
    os.makedirs(workdir)
    samples: list[tuple[float, int]] = []
    with SoakServer(workdir, "udp", RCVBUF, flush_interval=10.0) as server:
        sender = Sender(server.port, rate, args.contexts, args.rotate_seconds)
        next_sample = 0.0

        def sample(elapsed: float) -> None:
            nonlocal next_sample
            if elapsed >= next_sample:
                rss = procfs.status_bytes(server.pid, "VmRSS") or 0
                samples.append((elapsed, rss))
                print(f"{elapsed:7.0f} s  RSS {rss / 2**20:7.1f} MiB  sent {sender.sent:,}", flush=True)
                next_sample += args.sample_seconds

        seconds = sender.run(args.minutes * 60, sample)
        sample(seconds)
        server.settle()
        kernel = (procfs.udp_socket(server.port) or {"drops": 0})["drops"]
        server.before_stop()
        result = server.stop()
        found = round(soak_totals(server.jsonl))

    after = [i for i, (t, _) in enumerate(samples) if t >= args.warmup_seconds]
    print()
    print(f"offered {sender.sent / seconds:,.0f} metrics/s for {seconds:.0f} s ({args.contexts:,} contexts,")
    print(f"  a new generation every {args.rotate_seconds:.0f} s; {sender.send_errors} send errors)")
    if len(after) >= 2:
        start, end = median_of(samples, after[0]), median_of(samples, len(samples) - 2)
        print(f"RSS after warm-up {start / 2**20:.1f} MiB, at the end {end / 2**20:.1f} MiB: ")
        print(f"  growth {100 * (end - start) / start:+.2f} % (target under 5 %)")
    print(f"peak RSS {result['peak_rss'] / 2**20:.1f} MiB")
    print(f"sent {sender.sent:,}  accepted {result['accepted']:,}  found in the output {found:,}")
    print(f"kernel drops {kernel} datagrams; server drops {result['dropped'] or 'none'}")
    print(f"loss {sender.sent - found:,} metrics ({'zero loss' if sender.sent == found else 'LOSS'})")
    print(f"work directory {root}")


if __name__ == "__main__":
    main()
