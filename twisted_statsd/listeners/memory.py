"""Memory-based back-pressure for the Unix listeners (spec §3.4).

Unix-socket senders can be slowed down without losing data at our end: a
stream sender blocks when its socket buffer is full, and a datagram sender gets
EAGAIN when the kernel queue is full.  So when the process uses too much of
its memory limit, the Unix listeners read less often and the kernel buffers
absorb the burst.  (UDP has no such back-pressure: reading less only moves the
loss into the kernel, so UDP is never slowed.)

The parts, each testable alone:

* readings: RSS from ``/proc/self/statm``; the limit from the configured
  ``memory_limit_bytes``, else the smallest cgroup limit on the way from our
  cgroup to the root (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), never
  above the host's total memory;
* :func:`decide`: pure, from a usage ratio and the previous state to a new
  :class:`MemoryState` (a level and a read delay);
* :class:`ReadThrottle`: pauses readers for the current delay after each read;
* :class:`MemoryMonitorService`: polls on a TimerService of the injected clock.

Levels: above ``low_soft_limit`` every read is followed by a pause that starts
at 1 ms and doubles at every check up to 50 ms; above ``high_soft_limit`` the
pause grows up to 0.5 s; above ``hard_limit`` new metric contexts are also
refused (the pipeline reads :attr:`MemoryState.refuse_new_contexts`).  Readers
are never stopped for good: CPython rarely hands memory back to the system, so
waiting for RSS to fall could stop intake forever.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import MultiService
from twisted.logger import Logger, LogLevel

from twisted_statsd._twisted_helpers import deadline, periodic
from twisted_statsd.telemetry import Telemetry

OK, SOFT, HIGH, HARD = 0, 1, 2, 3
LEVEL_NAMES = ("ok", "soft", "high", "hard")

#: The first pause after a read once memory passes the low soft limit (seconds).
MIN_DELAY = 0.001
#: The longest pause between reads between the low and the high soft limit.
SOFT_MAX_DELAY = 0.05
#: The longest pause between reads above the high soft limit.
HIGH_MAX_DELAY = 0.5

# cgroup v1 reports "no limit" as a huge number (2**63 rounded down to a page).
_NO_LIMIT = 1 << 62

LEVEL_CHANGED = "Memory use {ratio:.0%} of {limit} bytes: back-pressure level {old} -> {new} (read pause {delay} s)"
CHECK_FAILED = "Could not read the process's memory use; back-pressure keeps its last state"


@dataclass(frozen=True, slots=True)
class MemoryThresholds:
    """Fractions of the memory limit; ``low_soft_limit <= high_soft_limit <= hard_limit``."""

    low_soft_limit: float = 0.7
    high_soft_limit: float = 0.8
    hard_limit: float = 0.9


@dataclass(frozen=True, slots=True)
class MemoryState:
    """What the listeners should do: ``delay`` seconds of pause after each read."""

    level: int = OK
    ratio: float = 0.0
    delay: float = 0.0

    @property
    def refuse_new_contexts(self) -> bool:
        return self.level == HARD


def decide(ratio: float, previous: MemoryState, thresholds: MemoryThresholds) -> MemoryState:
    """The back-pressure state for a usage ``ratio``; pure.

    The pause doubles at every check that stays above the low soft limit, so a
    short spike costs little and a lasting one slows intake more and more.
    """
    if ratio > thresholds.hard_limit:
        level = HARD
    elif ratio > thresholds.high_soft_limit:
        level = HIGH
    elif ratio > thresholds.low_soft_limit:
        level = SOFT
    else:
        return MemoryState(OK, ratio, 0.0)
    cap = SOFT_MAX_DELAY if level == SOFT else HIGH_MAX_DELAY
    return MemoryState(level, ratio, min(cap, max(MIN_DELAY, previous.delay * 2)))


# -- readings -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryReading:
    usage: int
    limit: int

    @property
    def ratio(self) -> float:
        return self.usage / self.limit


def parse_statm_rss(text: str, page_size: int) -> int:
    """Resident set size in bytes from ``/proc/<pid>/statm`` (its second field, in pages)."""
    return int(text.split()[1]) * page_size


def parse_cgroup_limit(text: str) -> int | None:
    """A cgroup memory limit in bytes; None for "no limit" (v2 ``max``, v1's huge number)."""
    value = text.strip()
    if value == "max":
        return None
    limit = int(value)
    return None if limit >= _NO_LIMIT or limit <= 0 else limit


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` from ``/proc/meminfo``, in bytes."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def cgroup_limit_files(self_cgroup: str, cgroup_root: str = "/sys/fs/cgroup") -> list[str]:
    """The files that may hold a memory limit for our cgroup and its ancestors.

    ``self_cgroup`` is the text of ``/proc/self/cgroup``.  A parent's limit
    binds too, so every level up to the root is listed.
    """
    files = []
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            base, name = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = cgroup_root + "/memory", "memory.limit_in_bytes"
        else:
            continue
        components = [c for c in path.strip().split("/") if c]
        for depth in range(len(components), -1, -1):
            files.append("/".join([base, *components[:depth], name]))
    return files


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, ValueError):
        return None


class MemoryProbe:
    """Reads the process's memory use and the limit it is measured against."""

    def __init__(self, *, limit_bytes: int = 0, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup"):
        self.limit_bytes = limit_bytes
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self.page_size = os.sysconf("SC_PAGE_SIZE")

    def usage(self) -> int:
        with open(f"{self.proc_root}/self/statm") as f:
            return parse_statm_rss(f.read(), self.page_size)

    def limit(self) -> int:
        """The configured limit, else the tightest of the cgroup limits and the host's memory."""
        if self.limit_bytes:
            return self.limit_bytes
        limits = []
        for path in cgroup_limit_files(_read(f"{self.proc_root}/self/cgroup") or "", self.cgroup_root):
            text = _read(path)
            if text is not None:
                try:
                    found = parse_cgroup_limit(text)
                except ValueError:
                    continue
                if found is not None:
                    limits.append(found)
        host = parse_meminfo_total(_read(f"{self.proc_root}/meminfo") or "")
        if host is None:
            host = os.sysconf("SC_PHYS_PAGES") * self.page_size
        return min([*limits, host])

    def read(self) -> MemoryReading:
        return MemoryReading(self.usage(), self.limit())


# -- acting on the state --------------------------------------------------------


class ReadThrottle:
    """Pauses readers for the current delay after a read; one timer for all of them.

    A reader is anything with ``pause_reading()`` and ``resume_reading()``: the
    datagram socket reader, or a stream connection.  Invariant: a held reader
    is in ``_held`` and ``_cancel_release`` is set (its deadline pending); releasing resumes them
    all at once, so there is never more than one timer, whatever the number of
    connections.  With ``delay`` 0 (the normal case) :meth:`hold` is never called.
    """

    def __init__(self, clock, telemetry: Telemetry):
        self.clock = clock
        self.telemetry = telemetry
        self.delay = 0.0
        self._held: set = set()
        self._cancel_release: Callable[..., object] | None = None

    def hold(self, reader) -> None:
        """Pause ``reader`` until the current pause ends."""
        reader.pause_reading()
        self._held.add(reader)
        self.telemetry.incr("uds_read_holds")
        if self._cancel_release is None:
            self._cancel_release = deadline(self.clock, self.delay, self.release)

    def forget(self, reader) -> None:
        """Never resume ``reader`` (it is closing)."""
        self._held.discard(reader)

    def release(self) -> None:
        """Resume every held reader now."""
        cancel, self._cancel_release = self._cancel_release, None
        if cancel is not None:
            cancel()
        held, self._held = self._held, set()
        for reader in held:
            reader.resume_reading()

    def set_delay(self, delay: float) -> None:
        self.delay = delay
        if not delay:
            self.release()


class MemoryMonitorService(MultiService):
    """Checks memory every ``interval`` seconds and applies the resulting state.

    The check cannot kill the loop: a failed reading is counted, logged once
    per run of failures, and the previous state stays in force.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        throttle: ReadThrottle,
        telemetry: Telemetry,
        *,
        thresholds: MemoryThresholds,
        probe: MemoryProbe,
        interval: float = 1.0,
        on_change: Callable[[MemoryState], None] = lambda state: None,
    ):
        super().__init__()
        self.clock = clock
        self.throttle = throttle
        self.telemetry = telemetry
        self.thresholds = thresholds
        self.probe = probe
        self.interval = interval
        self.on_change = on_change
        self.state = MemoryState()
        self._failing = False
        periodic(clock, interval, self.check, telemetry, "memory_check").setServiceParent(self)

    def check(self) -> MemoryState:
        try:
            reading = self.probe.read()
        except Exception:
            self.telemetry.incr("memory_check_errors")
            if not self._failing:
                self._failing = True
                self.log.failure(CHECK_FAILED, log_category="MEMORY_CHECK_FAILED")
            return self.state
        self._failing = False
        previous, state = self.state, decide(reading.ratio, self.state, self.thresholds)
        self.state = state
        gauge = self.telemetry.set_gauge
        gauge("memory_usage_bytes", reading.usage)
        gauge("memory_limit_bytes", reading.limit)
        gauge("memory_usage_ratio", reading.ratio)
        gauge("memory_pressure_level", state.level)
        gauge("uds_read_delay_seconds", state.delay)
        self.throttle.set_delay(state.delay)
        if state.level != previous.level:
            self.log.emit(
                LogLevel.info if state.level == OK else LogLevel.warn,
                LEVEL_CHANGED,
                log_category="MEMORY_LEVEL_CHANGED",
                ratio=reading.ratio,
                limit=reading.limit,
                old=LEVEL_NAMES[previous.level],
                new=LEVEL_NAMES[state.level],
                delay=state.delay,
            )
            self.on_change(state)
        return state

    def stopService(self):
        stopped = super().stopService()  # the timer: the check is synchronous, so stopped at once
        self.throttle.release()
        return stopped
