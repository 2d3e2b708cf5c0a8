"""Cooperators with a short budget per reactor turn, for work too large to do at once.

Twisted's default Cooperator runs up to 10 ms of a task per turn; flushes of
100,000 contexts and their sink writes use these instead, so intake gets the
reactor back every few milliseconds.
"""

from __future__ import annotations

import time
from functools import partial

from twisted.internet.task import Cooperator

# Work per reactor turn; intake runs in between.
SLICE_SECONDS = 0.004


class _Deadline:
    """True once ``seconds`` have passed since it was made: one turn's budget."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def __call__(self) -> bool:
        return time.monotonic() >= self.end


def cooperator(clock) -> Cooperator:
    """A Cooperator scheduling its turns on ``clock`` (a reactor, or a Clock in tests)."""
    return Cooperator(
        terminationPredicateFactory=partial(_Deadline, SLICE_SECONDS), scheduler=partial(clock.callLater, 0)
    )


def run_in_slices(cooperator_: Cooperator, steps, inline_steps: int, inline_seconds: float = SLICE_SECONDS):
    """Run steps of a generator now, up to ``inline_steps`` of them and ``inline_seconds``
    of time; hand the rest to the Cooperator.

    Returns None when it finished at once (small work stays synchronous: work
    without a yield is one step), or the Cooperator's Deferred.
    """
    out_of_time = _Deadline(inline_seconds)
    for _ in range(inline_steps):
        try:
            next(steps)
        except StopIteration:
            return None
        if out_of_time():
            break
    return cooperator_.coiterate(steps)
