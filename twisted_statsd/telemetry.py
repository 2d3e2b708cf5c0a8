"""The server's own counters: packets, bytes, samples, every drop by reason, and the reactor's lag.

Counters are cumulative and cheap to bump; :meth:`Telemetry.deltas` hands the
flush loop what changed since its previous call, so the server can report on
itself through the same pipeline as user metrics.  Pure: no clock, no Twisted.
"""

from __future__ import annotations

DROPPED = "dropped"


class Telemetry:
    """Named counters and gauges, each with an optional tuple of ``key:value`` tags."""

    def __init__(self):
        self.counters: dict[tuple[str, tuple[str, ...]], int] = {}
        self.gauges: dict[tuple[str, tuple[str, ...]], float] = {}
        self._reported: dict[tuple[str, tuple[str, ...]], int] = {}

    def incr(self, name: str, n: int = 1, tags: tuple[str, ...] = ()) -> None:
        key = (name, tags)
        self.counters[key] = self.counters.get(key, 0) + n

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` units of input that were refused or lost, by reason."""
        self.incr(DROPPED, n, ("reason:" + reason,))

    def set_gauge(self, name: str, value: float, tags: tuple[str, ...] = ()) -> None:
        self.gauges[(name, tags)] = value

    def get(self, name: str, *tags: str) -> int:
        """A counter's cumulative value (0 when it never moved)."""
        return self.counters.get((name, tags), 0)

    def dropped(self, reason: str) -> int:
        return self.get(DROPPED, "reason:" + reason)

    def total_dropped(self) -> int:
        return sum(v for (name, _), v in self.counters.items() if name == DROPPED)

    def deltas(self) -> list[tuple[str, tuple[str, ...], int]]:
        """What each counter gained since the previous call; unchanged counters are left out."""
        changed = []
        for key, value in self.counters.items():
            delta = value - self._reported.get(key, 0)
            if delta:
                changed.append((key[0], key[1], delta))
                self._reported[key] = value
        return changed


class ReactorLag:
    """How late a periodic tick runs: the reactor's lag, the worst since the last report, in seconds.

    :meth:`tick` is called by a loop that runs every ``interval`` seconds on the
    grid of its first tick, as a LoopingCall (and so a TimerService) does; a
    tick that comes late comes late because the reactor was busy, so its
    lateness is how long anything else waiting for the reactor (a read, a
    timer) waited too.  :meth:`report` publishes the worst lateness seen since
    the previous report as the gauge ``reactor_lag`` and starts over.  Pure:
    the time comes as an argument.
    """

    def __init__(self, telemetry: Telemetry, interval: float):
        self.telemetry = telemetry
        self.interval = interval
        self.worst = 0.0
        self._origin: float | None = None
        self._due = 0.0

    def tick(self, now: float) -> None:
        if self._origin is None:
            self._origin = now
        else:
            self.worst = max(self.worst, now - self._due)
        # The next tick is due at the first grid point after now (after a long
        # stall the loop skips the points it missed).
        due = self._origin + (int((now - self._origin) / self.interval) + 1) * self.interval
        if due - now < self.interval * 1e-6:  # now was on a grid point, rounded down
            due += self.interval
        self._due = due

    def report(self) -> None:
        self.telemetry.set_gauge("reactor_lag", self.worst)
        self.worst = 0.0
