"""An HTTP backend answering 503 for many minutes, on a task.Clock (issue 12 item 5): the sink takes
every flush at once, keeps what its bounds allow (bytes: retry_queue_max_bytes; age: the payload's
max_age), drops and counts the rest by reason, and delivers what it kept within one back-off of the
recovery.  The same outage over real sockets, shorter, is in tests/integration/test_sink_datadog.py
and test_sink_faults.py."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.iweb import IAgent
from unit.test_sink_datadog import FakeResponse, run
from zope.interface import implementer

from twisted_statsd.core.model import SERIES_GAUGE, FlushBatch, Series, ServiceCheck
from twisted_statsd.sinks.datadog import DatadogSink
from twisted_statsd.sinks.otlp import OtlpSink
from twisted_statsd.telemetry import Telemetry

FLUSH = 10.0
BACKOFF_MAX = 64.0


@implementer(IAgent)
class DownUntil:
    """Answers 503 to every request before ``recovery`` (clock time), 2xx after; records the answers."""

    def __init__(self, clock: Clock, recovery: float, ok: int = 202):
        self.clock, self.recovery, self.ok = clock, recovery, ok
        self.answers: list[tuple[float, str, int]] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        code = 503 if self.clock.seconds() < self.recovery else self.ok
        self.answers.append((self.clock.seconds(), uri.decode(), code))
        return defer.succeed(FakeResponse(code, body=b"{}"))

    def delivered(self) -> list[str]:
        return [uri for _, uri, code in self.answers if code != 503]


def flush_batch(i: int, checks: bool) -> FlushBatch:
    """One flush: a gauge series (a metrics payload) and, with ``checks``, a service check (a check_run payload)."""
    ts = int(i * FLUSH)
    return FlushBatch(
        float(ts),
        series=[Series(f"flush{i}.gauge", SERIES_GAUGE, [(ts, float(i))], (), "h")],
        service_checks=[ServiceCheck("db.ok", 0, ts, "h", "", ())] if checks else [],
    )


def outage(clock, sink, agent, minutes: float, flushes: int, checks: bool = False):
    """A flush every 10 s through an outage of ``minutes``; then run until one back-off after recovery."""
    writes = []
    for i in range(flushes):
        d = sink.write(flush_batch(i, checks))
        writes.append(d)
        run(clock)
        clock.advance(FLUSH)
    while clock.seconds() < minutes * 60 + BACKOFF_MAX + FLUSH:
        clock.advance(1.0)
    return writes


def test_datadog_answering_503_for_15_minutes_keeps_what_fits_and_counts_the_rest():
    clock = Clock()
    telemetry = Telemetry()
    agent = DownUntil(clock, recovery=15 * 60)
    sink = DatadogSink(
        clock,
        telemetry,
        api_key="k",
        backoff_max=BACKOFF_MAX,
        retry_queue_max_bytes=16_000,
        _agent=agent,
        _random=lambda: 1.0,
    )
    flushes = 90  # every 10 s for the whole outage
    writes = outage(clock, sink, agent, 15, flushes, checks=True)
    # Everything was settled within one back-off (plus a flush) of the recovery: sent or dropped.
    assert all(d.called for d in writes)
    assert telemetry.gauges[("sink_queue_payloads", ("sink:datadog",))] == 0
    sent = telemetry.get("sink_sent", "sink:datadog")
    full = telemetry.dropped("datadog_retry_queue_full")
    expired = telemetry.dropped("datadog_retry_expired")
    assert sent + full + expired == 2 * flushes
    assert sent == len(agent.delivered())
    # Service checks are worth 10 minutes to Datadog: the older ones expired in the queue.
    assert expired > 0
    # The queue holds 16 kB (about 70 flushes): the oldest payloads made room for the newest.
    assert full > 0
    # The newest flush's payloads were kept and delivered.
    assert {"https://api.datadoghq.com/api/v2/series", "https://api.datadoghq.com/api/v1/check_run"} <= set(
        agent.delivered()[-2:]
    )
    # Retries backed off to the cap, not a request per second for 15 minutes.
    assert len(agent.answers) < 2 * flushes + 15 * 60 / (BACKOFF_MAX / 2) + 10


@pytest.mark.parametrize("minutes", [3, 12])
def test_otlp_answering_503_for_minutes_delivers_everything_that_fits(minutes):
    """OTLP payloads do not expire; with a queue that holds the whole outage, nothing is lost."""
    clock = Clock()
    telemetry = Telemetry()
    agent = DownUntil(clock, recovery=minutes * 60, ok=200)
    sink = OtlpSink(clock, telemetry, backoff_max=BACKOFF_MAX, _agent=agent, _random=lambda: 1.0)
    flushes = int(minutes * 60 / FLUSH)
    writes = outage(clock, sink, agent, minutes, flushes)
    assert all(d.called for d in writes)
    assert telemetry.total_dropped() == 0
    assert telemetry.get("sink_sent", "sink:otlp") == len(agent.delivered()) == flushes
