"""What /proc says about a receiver process and its UDP socket, read from outside.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks), time
running or runnable from ``/proc/<pid>/schedstat``, memory
from ``/proc/<pid>/status`` (VmRSS, VmHWM), and a UDP socket's receive queue
and kernel drop count from ``/proc/net/udp`` (found by its local port).
Nothing here needs psutil or privileges.
"""

from __future__ import annotations

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def busy_seconds(pid: int) -> float:
    """Time the process's main thread has run or waited to run (``/proc/<pid>/schedstat``).

    On a shared machine a busy process may get a small share of a core; its
    time waiting in the run queue still says it had work to do, where CPU time
    alone would make it look idle.  Falls back to CPU time without schedstat.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            running, waiting = f.read().split()[:2]
    except FileNotFoundError:
        return cpu_seconds(pid)
    return (int(running) + int(waiting)) / 1e9


def status_bytes(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a server and its worker processes)."""
    found, index = [pid], 0
    while index < len(found):
        parent = found[index]
        index += 1
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    found += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def tree_rss(pid: int) -> int:
    """The sum of VmRSS over ``pid``'s process tree: the memory a multi-process server holds in all."""
    return sum(status_bytes(p, "VmRSS") or 0 for p in process_tree(pid))


def udp_socket(port: int, tables=("/proc/net/udp", "/proc/net/udp6")) -> dict | None:
    """``{"rx_queue": bytes, "drops": datagrams}`` of the socket bound to local ``port``."""
    suffix = f":{port:04X}"
    for path in tables:
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) >= 13 and fields[1].endswith(suffix):
                return {"rx_queue": int(fields[4].split(":")[1], 16), "drops": int(fields[12])}
    return None


def wait_quiet(
    pid: int, *, port: int | None = None, timeout: float = 30.0, idle_share: float = 0.2, window: float = 0.15
) -> bool:
    """Wait until the receiver has read everything: its UDP queue is empty and it is nearly idle.

    Idle: it ran or waited to run (:func:`busy_seconds`) at most ``idle_share``
    of a ``window``.  Returns False if that did not happen within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = udp_socket(port) if port is not None else None
        queued = state["rx_queue"] if state else 0
        before = busy_seconds(pid)
        time.sleep(window)
        if queued == 0 and busy_seconds(pid) - before <= idle_share * window:
            return True
    return False
