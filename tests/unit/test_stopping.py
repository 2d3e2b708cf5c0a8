"""One stop budget for the whole server (issue 12 item 5): the final flush's wait for the sinks and
every sink's own stop share it, so slow sinks together take no longer than the one budget."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.web.iweb import IAgent
from zope.interface import implementer

from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd.config import load_config
from twisted_statsd.core.model import COUNTER, SERIES_GAUGE, Context, FlushBatch, Series
from twisted_statsd.flush import SINK_STOP_TIMEOUT
from twisted_statsd.service import build_service
from twisted_statsd.sinks.datadog import DatadogSink
from twisted_statsd.telemetry import Telemetry


@implementer(IAgent)
class NeverAnswers:
    """A Datadog intake that takes every request and never answers (until cancelled)."""

    def __init__(self):
        self.requests = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests += 1
        return defer.Deferred()


def seconds_to_stop(reactor, stopped: defer.Deferred, limit: float = 200.0) -> float:
    """Advance the clock a tenth of a second at a time until ``stopped`` fires; the time it took."""
    start = reactor.seconds()
    while not stopped.called:
        assert reactor.seconds() - start < limit, "the stop never finished"
        reactor.advance(0.1)
    return reactor.seconds() - start


def test_two_hanging_sinks_take_one_budget_together(logged_errors):
    """Before: the final flush waited its 30 s, then each sink 30 s more, one after the other (90 s)."""
    reactor = MemoryReactorClock()
    agents = [NeverAnswers(), NeverAnswers()]
    telemetries = [Telemetry(), Telemetry()]
    sinks = [
        DatadogSink(reactor, telemetry, api_key="k", timeout=1000.0, _agent=agent)
        for agent, telemetry in zip(agents, telemetries, strict=True)
    ]
    root = build_service(load_config(data={"dogstatsd_port": 0}), reactor, sinks=sinks)
    root.startService()
    root.aggregator.add(Context(b"page.views", b"h", []), COUNTER, 1.0, 1.0, reactor.seconds())
    stopped = root.stopService()
    took = seconds_to_stop(reactor, stopped)
    assert SINK_STOP_TIMEOUT - 0.5 <= took <= SINK_STOP_TIMEOUT + 0.5
    assert all(agent.requests >= 1 for agent in agents)
    # What the sinks still held at the deadline is dropped and counted, by each sink.
    assert telemetries[0].dropped("datadog_shutdown") >= 1
    assert telemetries[1].dropped("datadog_shutdown") >= 1
    assert root.telemetry.get("sink_stop_timeouts") == 1
    assert len(logged_errors.expect("Gave up waiting for {count} sink writes")) == 1


def test_a_sink_stopping_after_a_slow_final_flush_gets_only_what_remains():
    """The flush wait spent 20 s of the budget: the sink's own stop is cut to the 10 s left."""
    reactor = MemoryReactorClock()
    deadline = StopDeadline(reactor, 30.0)
    deadline.start()
    reactor.advance(20.0)
    assert deadline.remaining() == 10.0
    assert deadline.remaining(cap=4.0) == 4.0
    reactor.advance(15.0)
    assert deadline.remaining() == 0.0
    deadline.start()  # a second start keeps the first
    assert deadline.remaining() == 0.0


def test_a_sink_on_its_own_keeps_its_own_stop_timeout():
    """Outside build_service (no shared deadline), a sink's stop is bounded by its own timeout."""
    reactor = MemoryReactorClock()
    telemetry = Telemetry()
    sink = DatadogSink(reactor, telemetry, api_key="k", timeout=1000.0, _agent=NeverAnswers(), _stop_timeout=12.0)
    sink.startService()
    sink.write(_batch())
    reactor.advance(0)
    took = seconds_to_stop(reactor, sink.stopService())
    assert 11.5 <= took <= 12.5
    assert telemetry.dropped("datadog_shutdown") == 1


def _batch():
    return FlushBatch(100.0, series=[Series("m", SERIES_GAUGE, [(100, 1.0)], (), "h")])
