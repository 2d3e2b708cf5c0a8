"""Test hygiene for the whole suite.

pytest-twisted has no dirty-reactor or logged-error checks, so they are here:
every test must leave no new delayed calls, readers or writers behind, and
must log no errors it did not expect.  The reactor is never imported at module
scope (pytest-twisted installs it in pytest_configure).
"""

from __future__ import annotations

import gc
import shutil
import tempfile

import pytest
from twisted.logger import LogLevel, globalLogPublisher


@pytest.fixture(scope="session")
def reactor():
    from twisted.internet import reactor as the_reactor

    return the_reactor


def _reactor_state():
    from twisted.internet import reactor

    return (
        {id(c): c for c in reactor.getDelayedCalls() if c.active()},
        set(reactor.getReaders()),
        set(reactor.getWriters()),
    )


@pytest.fixture(autouse=True)
def clean_reactor():
    """Fail a test that leaves timers, readers or writers it created on the reactor."""
    calls, readers, writers = _reactor_state()
    yield
    after_calls, after_readers, after_writers = _reactor_state()
    left = [c for key, c in after_calls.items() if key not in calls]
    # The waker and other long-lived reactor internals existed before the test.
    new_readers = [r for r in after_readers - readers if "Waker" not in type(r).__name__]
    new_writers = list(after_writers - writers)
    for call in left:
        call.cancel()
    assert not (left or new_readers or new_writers), (
        f"dirty reactor: delayed calls {left}, readers {new_readers}, writers {new_writers}"
    )


class LoggedErrors(list):
    """The error events logged during a test; a test that expects some calls :meth:`expect`."""

    def expect(self, text: str) -> list:
        found = [e for e in self if text in str(e.get("log_format", "")) or text in repr(e.get("log_failure"))]
        for event in found:
            self.remove(event)
        return found


@pytest.fixture(autouse=True)
def logged_errors():
    """Fail a test that logs a failure or an error-level event it did not claim with ``expect``."""
    errors = LoggedErrors()

    def observer(event):
        level = event.get("log_level")
        if event.get("log_failure") is not None or event.get("isError") or level in (LogLevel.error, LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    # Failures of unreferenced Deferreds are logged when they are collected.  Freezing what
    # existed before the test confines the collection below to what the test created (a
    # full collection of the whole heap after every test was most of the suite's time).
    gc.freeze()
    try:
        yield errors
        gc.collect()
    finally:
        gc.unfreeze()
        globalLogPublisher.removeObserver(observer)
    assert not errors, f"unexpected errors logged: {[e.get('log_format') for e in errors]} {errors}"


@pytest.fixture
def short_tmpdir():
    """A short temporary directory, since AF_UNIX paths are limited to about 108 bytes."""
    path = tempfile.mkdtemp(prefix="ts")
    yield path
    shutil.rmtree(path, ignore_errors=True)
