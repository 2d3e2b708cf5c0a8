"""The server's reactor-lag and flush-duration gauges (STYLE §22), measured on task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.config import load_config
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.flush import FlushService
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.service import LAG_PROBE_INTERVAL, build_service
from twisted_statsd.telemetry import ReactorLag, Telemetry


@implementer(IMetricSink)
class RecordingSink:
    name = "recording"

    def __init__(self):
        self.batches = []

    def write(self, batch):
        self.batches.append(batch)


def self_metric(batch, name: str) -> list:
    return [point for s in batch.series if s.name == "twisted_statsd." + name for point in s.points]


def test_ticks_on_time_report_no_lag_even_where_the_grid_rounds():
    telemetry = Telemetry()
    lag = ReactorLag(telemetry, 0.1)
    clock = task.Clock()
    timer = task.LoopingCall(lambda: lag.tick(clock.seconds()))
    timer.clock = clock
    timer.start(0.1, now=True)
    clock.pump([0.1] * 1000)  # sums of 0.1 land just above or below the grid points
    timer.stop()
    lag.report()
    assert telemetry.gauges[("reactor_lag", ())] == pytest.approx(0.0, abs=1e-9)


def test_a_late_tick_reports_its_lateness_and_the_report_starts_over():
    telemetry = Telemetry()
    lag = ReactorLag(telemetry, 1.0)
    for now in (10.0, 11.0, 12.25, 13.0):  # the tick due at 12 ran 0.25 s late
        lag.tick(now)
    lag.report()
    assert telemetry.gauges[("reactor_lag", ())] == pytest.approx(0.25)
    lag.tick(14.0)
    lag.report()
    assert telemetry.gauges[("reactor_lag", ())] == 0.0


def test_a_stall_longer_than_the_interval_reports_all_of_it():
    """The loop skips the ticks it missed; the one that runs is late by the whole stall (from its due time)."""
    telemetry = Telemetry()
    lag = ReactorLag(telemetry, 1.0)
    for now in (0.0, 1.0, 4.5, 5.0):  # due at 2, ran at 4.5; the next is due at 5
        lag.tick(now)
    lag.report()
    assert telemetry.gauges[("reactor_lag", ())] == pytest.approx(2.5)


def test_the_server_publishes_the_worst_reactor_lag_of_each_flush_interval():
    clock = MemoryReactorClock()
    sink = RecordingSink()
    config = load_config(data={"dogstatsd_port": 0, "flush_interval": 10, "hostname": "h"})
    service = build_service(config, clock, sinks=[sink])
    service.startService()
    clock.pump([LAG_PROBE_INTERVAL] * 20)  # on time for 2 s
    clock.advance(LAG_PROBE_INTERVAL + 0.3)  # a stall: the tick due 0.1 s after the last runs 0.3 s late
    clock.pump([LAG_PROBE_INTERVAL] * 100)  # past the first flush, at 10 s
    assert len(sink.batches) == 1
    assert service.telemetry.gauges[("reactor_lag", ())] == pytest.approx(0.3)
    clock.pump([LAG_PROBE_INTERVAL] * 100)  # the second flush carries it; this interval had no stall
    assert [value for _, value in self_metric(sink.batches[1], "reactor_lag")] == [pytest.approx(0.3)]
    assert service.telemetry.gauges[("reactor_lag", ())] == pytest.approx(0.0, abs=1e-6)
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_each_flush_records_how_long_it_took():
    clock = task.Clock()
    clock.advance(1000)
    telemetry = Telemetry()
    sink = RecordingSink()

    def slow_preparation():
        # Collecting workers' aggregates, say: done 2 s later.
        return task.deferLater(clock, 2.0, lambda: None)

    flusher = FlushService(
        clock,
        Aggregator(),
        [sink],
        telemetry,
        RateLimitedReporter(telemetry),
        interval=15.0,
        hostname="h",
        before_flush=[slow_preparation],
    )
    flusher.startService()
    clock.advance(15)
    assert ("flush_duration", ()) not in telemetry.gauges  # the flush waits for its preparation
    clock.advance(2)
    assert telemetry.gauges[("flush_duration", ())] == 2.0
    clock.advance(13)
    clock.advance(2)
    assert [value for _, value in self_metric(sink.batches[1], "flush_duration")] == [2.0]
    d = flusher.stopService()
    clock.advance(2)
    assert d.called
    assert isinstance(d, defer.Deferred)
