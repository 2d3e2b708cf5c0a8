"""Small Twisted building blocks the services share: periodic loops, deadlines, waiters.

Each replaces a pattern that was written out by hand in several services:
:func:`periodic` a LoopingCall with its clock and "loop died" errback,
:func:`deadline` a ``callLater`` and its cancellation, :class:`Waiters` a list
of Deferreds fired together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_statsd.telemetry import Telemetry

__all__ = ["PeriodicService", "Waiters", "deadline", "periodic"]

log = Logger()

LOOP_FAILED = "The {loop} loop failed; it keeps running (later failures in a row are only counted)"


def periodic(clock, interval: float, call: Callable[[], Any], telemetry: Telemetry, name: str) -> PeriodicService:
    """A TimerService on ``clock`` that runs ``call`` now and every ``interval`` seconds, and cannot die.

    TimerService stops its loop when the callable fails; here a failure is
    caught instead, counted as ``loop_errors`` tagged ``loop:<name>``, and
    logged once per run of failures, and the next tick runs as usual.  A
    Deferred returned by ``call`` holds the next tick back until it fires, and
    ``stopService`` waits for it; stopping one that never started does nothing
    (TimerService's own would raise), as a root stopping after a failed start does.
    """
    tags = ("loop:" + name,)
    failing = False

    def succeeded(result: object) -> None:
        nonlocal failing
        failing = False

    def failed(failure: Failure) -> None:
        nonlocal failing
        telemetry.incr("loop_errors", 1, tags)
        if not failing:
            failing = True
            log.failure(LOOP_FAILED, failure, loop=name, log_category="LOOP_FAILED")

    def tick() -> defer.Deferred:
        return defer.maybeDeferred(call).addCallbacks(succeeded, failed)

    service = PeriodicService(interval, tick)
    service.setName(name)
    service.clock = clock
    return service


class PeriodicService(TimerService):
    """What :func:`periodic` returns."""

    def stopService(self) -> defer.Deferred:
        if not self.running:
            return defer.succeed(None)
        return super().stopService()


def deadline(clock, seconds: float, on_timeout: Callable[[], object]) -> Callable[..., Any]:
    """Run ``on_timeout`` in ``seconds`` unless the returned ``cancel`` is called first.

    ``cancel(result)`` returns ``result``, so it can go straight into
    ``Deferred.addBoth``; calling it after the timeout ran, or twice, is harmless.
    """
    call = clock.callLater(seconds, on_timeout)

    def cancel(result: object = None) -> object:
        if call.active():
            call.cancel()
        return result

    return cancel


class Waiters:
    """Deferreds handed out by :meth:`wait` and all fired together by :meth:`fire`."""

    def __init__(self) -> None:
        self._waiting: list[defer.Deferred] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self) -> defer.Deferred:
        """A Deferred that fires at the next :meth:`fire`."""
        waiter: defer.Deferred = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def fire(self, result: object = None) -> None:
        """Fire every waiting Deferred with ``result`` (errback when it is a Failure); later waits wait again."""
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
