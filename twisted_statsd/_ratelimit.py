"""Counted, rate-limited reporting of bad input.

Every rejection is counted in telemetry (``dropped``, or ``errors`` for problems
that lose no input, such as a failed origin lookup); only the first few of each reason per
flush interval are logged, with the offending input truncated, and the rest are
summed up in one line when the interval ends.  Logging per bad line would let a
misbehaving client flood the log and stall the reactor.
"""

from __future__ import annotations

from collections import deque

from twisted.logger import Logger, LogLevel

from twisted_statsd.telemetry import Telemetry

SAMPLE_LIMIT = 400
# The latest problems kept, with their input, for the admin endpoint's explain.
RECENT_LIMIT = 200
ERRORS = "errors"


class RateLimitedReporter:
    """Counts every rejection; logs at most ``per_interval`` of each reason per interval."""

    log = Logger()

    def __init__(self, telemetry: Telemetry, *, per_interval: int = 5, verbose: bool = True):
        self.telemetry = telemetry
        self.per_interval = per_interval
        self.level = LogLevel.warn if verbose else LogLevel.debug
        self._counts: dict[str, int] = {}
        # (reason, message, input truncated): the latest RECENT_LIMIT problems, oldest first.
        self.recent: deque[tuple[str, str, bytes]] = deque(maxlen=RECENT_LIMIT)

    def report(self, reason: str, message: str, sample: bytes = b"", *, dropped: bool = True, count: int = 1) -> None:
        """Count and maybe log one problem, which lost ``count`` lines; ``dropped=False`` for those that lose none."""
        if dropped:
            self.telemetry.drop(reason, count)
        else:
            self.telemetry.incr(ERRORS, count, ("reason:" + reason,))
        self.recent.append((reason, message, sample[:SAMPLE_LIMIT]))
        seen = self._counts.get(reason, 0) + 1
        self._counts[reason] = seen
        if seen <= self.per_interval:
            self.log.emit(
                self.level,
                "Dropped input ({reason}): {message}: {sample!r}",
                log_category="INPUT_" + reason.upper(),
                reason=reason,
                message=message,
                sample=sample[:SAMPLE_LIMIT],
            )

    def end_interval(self) -> None:
        """Log how many reports of each reason were not logged, and start a new interval."""
        for reason, seen in self._counts.items():
            if seen > self.per_interval:
                self.log.emit(
                    self.level,
                    "{suppressed} more '{reason}' errors were counted but not logged in this interval",
                    log_category="INPUT_SUPPRESSED",
                    reason=reason,
                    suppressed=seen - self.per_interval,
                )
        self._counts.clear()
