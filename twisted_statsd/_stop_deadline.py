"""StopDeadline: one time by which a whole stop is over, shared by every service that waits at stop.

Stopping waits for slow things: the sinks taking the final flush, then each
sink sending what it still holds.  Each wait used to have its own budget, so
two slow sinks behind the final flush took three budgets.  The root starts one
deadline when it begins to stop, and each wait is bounded by what remains of it.
"""

from __future__ import annotations

__all__ = ["StopDeadline"]


class StopDeadline:
    """``seconds`` from :meth:`start` on ``clock``; before it starts, all of them remain."""

    def __init__(self, clock, seconds: float):
        self.clock = clock
        self.seconds = seconds
        self.at: float | None = None

    def start(self) -> None:
        """Start counting (a second call keeps the first start)."""
        if self.at is None:
            self.at = self.clock.seconds() + self.seconds

    def remaining(self, cap: float | None = None) -> float:
        """Seconds left (never negative), at most ``cap``."""
        left = self.seconds if self.at is None else max(0.0, self.at - self.clock.seconds())
        return left if cap is None else min(cap, left)
