"""The shared building blocks: periodic loops that cannot die, deadlines, waiters (all on task.Clock)."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.python.failure import Failure

from twisted_statsd._twisted_helpers import LOOP_FAILED, Waiters, deadline, periodic
from twisted_statsd.telemetry import Telemetry


def test_periodic_runs_at_start_and_every_interval():
    clock, calls = task.Clock(), []
    timer = periodic(clock, 2.0, lambda: calls.append(clock.seconds()), Telemetry(), "test")
    timer.startService()
    clock.pump([1, 1, 1, 1])
    assert calls == [0.0, 2.0, 4.0]
    timer.stopService()
    assert clock.getDelayedCalls() == []


def test_a_failing_call_is_counted_logged_once_per_run_and_the_loop_goes_on(logged_errors):
    clock, telemetry = task.Clock(), Telemetry()
    outcomes = iter([ValueError("a"), ValueError("b"), None, ValueError("c")])
    ran = []

    def call():
        ran.append(clock.seconds())
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    timer = periodic(clock, 1.0, call, telemetry, "test")
    timer.startService()
    clock.pump([1, 1, 1])
    assert ran == [0.0, 1.0, 2.0, 3.0]
    assert telemetry.get("loop_errors", "loop:test") == 3
    # Two runs of failures: the first of each is logged.
    assert len(logged_errors.expect(LOOP_FAILED)) == 2
    assert timer.running
    timer.stopService()


def test_a_failed_deferred_does_not_stop_the_loop_and_stop_waits_for_the_run_in_flight(logged_errors):
    clock, telemetry = task.Clock(), Telemetry()
    pending: list[defer.Deferred] = []

    def call():
        pending.append(defer.Deferred())
        return pending[-1]

    timer = periodic(clock, 1.0, call, telemetry, "test")
    timer.startService()
    pending[0].errback(Failure(RuntimeError("late failure")))
    clock.advance(1)
    assert len(pending) == 2
    stopped = timer.stopService()
    assert not stopped.called
    pending[1].callback(None)
    assert stopped.called and not timer.running
    assert telemetry.get("loop_errors", "loop:test") == 1
    assert len(logged_errors.expect(LOOP_FAILED)) == 1


def test_deadline_runs_on_timeout_unless_cancelled():
    clock, fired = task.Clock(), []
    cancel = deadline(clock, 5.0, lambda: fired.append(clock.seconds()))
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [5.0]
    assert cancel("result") == "result"  # harmless after it ran

    cancel = deadline(clock, 5.0, lambda: fired.append("late"))
    d = defer.Deferred().addBoth(cancel)
    d.callback("done")
    assert d.result == "done"
    cancel()  # twice is harmless
    clock.advance(10)
    assert fired == [5.0]
    assert clock.getDelayedCalls() == []


def test_waiters_fire_together_and_later_waits_wait_again():
    waiters = Waiters()
    first, second = waiters.wait(), waiters.wait()
    assert len(waiters) == 2 and not first.called
    waiters.fire("x")
    assert (first.result, second.result) == ("x", "x")
    assert len(waiters) == 0
    third = waiters.wait()
    assert not third.called
    waiters.fire()
    assert third.called and third.result is None


def test_waiters_fire_a_failure_as_errbacks():
    waiters = Waiters()
    first, second = waiters.wait(), waiters.wait()
    waiters.fire(Failure(ValueError("boom")))
    for waiter in (first, second):
        failures = []
        waiter.addErrback(failures.append)
        assert failures[0].check(ValueError)


def test_stopping_a_periodic_loop_that_never_started_does_nothing():
    clock = task.Clock()
    timer = periodic(clock, 1.0, lambda: None, Telemetry(), "test")
    assert timer.stopService().called
    assert clock.getDelayedCalls() == []
