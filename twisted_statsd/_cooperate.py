"""Cooperators with a short budget per reactor turn, for work too large to do at once.

Twisted's default Cooperator runs up to 10 ms of a task per turn; flushes of
100,000 contexts and their sink writes use these instead, so intake gets the
reactor back every few milliseconds.  The server shares one, owned by a
:class:`SharedCooperatorService` that is its root's first child, so it is
stopped last, after the sinks have finished their writes.  Objects built on
their own (a sink in a test, an embedder's) make their own with
:func:`cooperator`.
"""

from __future__ import annotations

import time
from functools import partial

from twisted.application import internet, service
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


class SharedCooperatorService(internet.CooperatorService):
    """Twisted's CooperatorService around :func:`cooperator`, marked running while started.

    (Twisted's own leaves ``running`` false, so a parent that stops only its
    running children would never stop it.)  The Cooperator runs from the
    start, so work given to it before the service starts is done too.
    """

    def __init__(self, clock):
        self.coop = cooperator(clock)

    def startService(self) -> None:
        service.Service.startService(self)
        super().startService()

    def stopService(self) -> None:
        service.Service.stopService(self)
        super().stopService()


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
