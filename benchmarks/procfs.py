"""What /proc says about a receiver process and its UDP socket, read from outside.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks), memory
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

    Returns False if that did not happen within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = udp_socket(port) if port is not None else None
        queued = state["rx_queue"] if state else 0
        before = cpu_seconds(pid)
        time.sleep(window)
        if queued == 0 and cpu_seconds(pid) - before <= idle_share * window:
            return True
    return False
