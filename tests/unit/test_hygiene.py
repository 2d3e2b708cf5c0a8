"""The suite's own hygiene checks (tests/conftest.py) catch what they promise to catch.

They run in a pytest of their own with the real conftest, since a failing check fails
the test that tripped it.
"""

from __future__ import annotations

from pathlib import Path

CONFTEST = (Path(__file__).parent.parent / "conftest.py").read_text()


def run(pytester, source: str):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(source)
    return pytester.runpytest_subprocess("-p", "no:randomly", "-q")


def test_an_unhandled_deferred_failure_fails_the_test_that_dropped_it(pytester):
    """Its failure is logged only when it is collected: the check collects what the test made."""
    result = run(
        pytester,
        """
from twisted.internet import defer

class Holder:
    pass

def test_drops_a_failed_deferred_in_a_cycle():
    holder = Holder()
    holder.d = defer.fail(ValueError("dropped"))
    holder.d.holder = holder

def test_clean():
    defer.succeed(None)
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*unexpected errors logged*ValueError*dropped*"])


def test_a_left_over_delayed_call_fails_the_test(pytester):
    result = run(
        pytester,
        """
def test_leaves_a_timer():
    from twisted.internet import reactor
    reactor.callLater(60, lambda: None)
""",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*dirty reactor*"])
