"""The graphite sink: line formatting (pure), and buffering, reconnecting and back-pressure on fakes.

Connections are driven by hand: a fake endpoint hands each connection attempt
to the test, which completes it with a StringTransport or fails it, and a
MemoryReactorClock stands in for time.
"""

from __future__ import annotations

import math

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_statsd.core.model import (
    SERIES_COUNT,
    SERIES_GAUGE,
    SERIES_RATE,
    Event,
    FlushBatch,
    Series,
    ServiceCheck,
    SketchSeries,
)
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks import graphite
from twisted_statsd.sinks.graphite import GraphiteSink, LineFormatter
from twisted_statsd.telemetry import Telemetry

TAGS = ("sink:graphite",)


def lines(batch, **options) -> list[str]:
    return list(LineFormatter(**options).lines(batch))


def series(name="m", value=1.0, *, type=SERIES_GAUGE, tags=(), host="", ts=1700000000):
    return Series(name, type, [(ts, value)], tags, host)


def batch_of(*items) -> FlushBatch:
    return FlushBatch(0.0, series=list(items))


def gauges(n: int, start: int = 0) -> FlushBatch:
    return batch_of(*(series(f"g{i}", float(i)) for i in range(start, start + n)))


# Line formatting --------------------------------------------------------------


def test_each_series_type_is_one_line_per_point_with_the_bucket_timestamp():
    batch = FlushBatch(
        0.0,
        series=[
            Series("c", SERIES_COUNT, [(1700000000, 3.0)], (), ""),
            Series("r", SERIES_RATE, [(1700000000, 0.5), (1700000010, 0.25)], (), ""),
            Series("g", SERIES_GAUGE, [(1700000010, 42)], (), ""),
        ],
    )
    assert lines(batch) == [
        "c 3.0 1700000000\n",
        "r 0.5 1700000000\n",
        "r 0.25 1700000010\n",
        "g 42.0 1700000010\n",
    ]


def test_values_are_written_exactly():
    assert lines(batch_of(series(value=0.1 + 0.2), series(value=1e-7), series(value=-3e20))) == [
        "m 0.30000000000000004 1700000000\n",
        "m 1e-07 1700000000\n",
        "m -3e+20 1700000000\n",
    ]


def test_tagged_series_sort_tags_and_add_the_host_as_a_tag():
    batch = batch_of(series("a.b", tags=("role:db", "env:prod"), host="web-1.example.com"))
    assert lines(batch) == ["a.b;env=prod;host=web-1.example.com;role=db 1.0 1700000000\n"]


def test_tagged_series_join_repeated_keys_and_give_bare_tags_the_value_true():
    batch = batch_of(series(tags=("env:prod", "env:dev", "canary", "empty:")))
    assert lines(batch) == ["m;canary=true;empty=true;env=dev,prod 1.0 1700000000\n"]


def test_tags_are_in_carbons_canonical_order_which_sorts_whole_segments():
    assert lines(batch_of(series(tags=("env:y", "env2:x")))) == ["m;env2=x;env=y 1.0 1700000000\n"]


def test_cached_paths_follow_each_context_across_batches():
    formatter = LineFormatter()
    first = batch_of(series("a", tags=("x:1",)))
    second = batch_of(series("a", tags=("x:2",)), series("a", tags=("x:1",), host="h"), series("a", tags=("x:1",)))
    assert list(formatter.lines(first)) == ["a;x=1 1.0 1700000000\n"]
    assert list(formatter.lines(second)) == [
        "a;x=2 1.0 1700000000\n",
        "a;host=h;x=1 1.0 1700000000\n",
        "a;x=1 1.0 1700000000\n",
    ]
    assert list(formatter.lines(first)) == ["a;x=1 1.0 1700000000\n"]


def test_a_tag_called_name_is_renamed_because_carbon_reserves_it():
    assert lines(batch_of(series(tags=("name:x",)))) == ["m;tag_name=x 1.0 1700000000\n"]


def test_folded_names_put_sorted_tags_after_the_name_as_nodes():
    batch = batch_of(series("a.b", tags=("role:db", "env:prod", "canary"), host="web-1.example.com"))
    assert lines(batch, tags="name") == ["a.b.canary.env_prod.host_web-1_example_com.role_db 1.0 1700000000\n"]


@pytest.mark.parametrize(
    "scheme, placement, expected",
    [
        ("graphite", "prefix", "stats.web_1.a;env=prod"),
        ("graphite", "none", "stats.a;env=prod"),
        ("name", "prefix", "stats.web_1.a.env_prod"),
        ("name", "none", "stats.a.env_prod"),
    ],
)
def test_host_placement_and_prefix(scheme, placement, expected):
    batch = batch_of(series("a", tags=("env:prod",), host="web.1"))
    assert lines(batch, tags=scheme, host_placement=placement, prefix="stats.") == [f"{expected} 1.0 1700000000\n"]


def test_an_empty_host_is_left_out():
    assert lines(batch_of(series(host=""))) == ["m 1.0 1700000000\n"]


def test_paths_and_tags_are_sanitised_for_carbon():
    batch = batch_of(
        series(".odd name;x=y..with~stuff!^*{a,b}é.", tags=("k;!^= :v;~ x", "t:~lead", "u:a/b=c"), host="h h")
    )
    [line] = lines(batch)
    path, _value, _ts = line.split(" ")
    assert line.count(" ") == 2
    assert path == "odd_name_x_y.with_stuff____a_b__;host=h_h;k_____=v___x;t=_lead;u=a_b_c"


def test_folded_tag_values_cannot_add_path_levels():
    [line] = lines(batch_of(series(tags=("version:1.2.3",))), tags="name")
    assert line == "m.version_1_2_3 1.0 1700000000\n"


def test_a_name_that_sanitises_to_nothing_still_gives_a_path():
    assert lines(batch_of(series("..."))) == ["_ 1.0 1700000000\n"]


def test_distributions_give_summary_statistics_and_the_configured_percentiles():
    sketch = Sketch()
    for v in (1.0, 2.0, 3.0, 4.0, 10.0):
        sketch.add(v)
    batch = FlushBatch(0.0, sketches=[SketchSeries("lat", [(1700000000, sketch)], ("env:a",), "h")])
    got = lines(batch, percentiles=(0.5, 0.999))
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in got}
    assert [line.split(" ")[2] for line in got] == ["1700000000\n"] * 7
    assert values == {
        "lat.count;env=a;host=h": 5.0,
        "lat.sum;env=a;host=h": 20.0,
        "lat.min;env=a;host=h": 1.0,
        "lat.max;env=a;host=h": 10.0,
        "lat.avg;env=a;host=h": 4.0,
        "lat.p50;env=a;host=h": sketch.quantile(0.5),
        "lat.p99_9;env=a;host=h": sketch.quantile(0.999),
    }
    assert math.isclose(values["lat.p50;env=a;host=h"], 3.0, rel_tol=1 / 128)


def test_folded_distribution_suffixes_come_before_the_tag_nodes():
    sketch = Sketch()
    sketch.add(5.0)
    batch = FlushBatch(0.0, sketches=[SketchSeries("lat", [(10, sketch)], ("env:a",), "")])
    assert [line.split(" ")[0] for line in lines(batch, tags="name", percentiles=(0.95,))] == [
        "lat.count.env_a",
        "lat.sum.env_a",
        "lat.min.env_a",
        "lat.max.env_a",
        "lat.avg.env_a",
        "lat.p95.env_a",
    ]


def test_service_checks_become_status_gauges_at_their_own_time():
    batch = FlushBatch(0.0, service_checks=[ServiceCheck("app.up", 2, 1700000003, "h", "boom", ("env:a",))])
    assert lines(batch) == ["app.up.status;env=a;host=h 2.0 1700000003\n"]


def test_non_finite_values_are_skipped_and_counted():
    formatter = LineFormatter()
    batch = batch_of(series(value=math.inf), series(value=math.nan), series(value=1.0))
    assert list(formatter.lines(batch)) == ["m 1.0 1700000000\n"]
    assert formatter.non_finite == 2


@pytest.mark.parametrize("options", [{"tags": "labels"}, {"host_placement": "suffix"}, {"percentiles": (95,)}])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        LineFormatter(**options)


# The sink on fakes ------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Records connection attempts; the test completes or fails the latest one."""

    def __init__(self):
        self.attempts: list[tuple[object, defer.Deferred]] = []

    def connect(self, factory):
        d = defer.Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self, transport=None):
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = transport if transport is not None else StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        d.callback(protocol)
        return transport

    def refuse(self):
        self.attempts[-1][1].errback(ConnectionRefusedError())


class PausingTransport(StringTransportWithDisconnection):
    """Pauses its producer once it holds more than ``limit`` bytes, as a TCP transport does."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def write(self, data):
        super().write(data)
        if len(self.value()) > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        self.producer.resumeProducing()
        return data


@pytest.fixture
def clock():
    return MemoryReactorClock()


@pytest.fixture
def endpoint():
    return FakeEndpoint()


@pytest.fixture
def telemetry():
    return Telemetry()


@pytest.fixture
def make_sink(clock, endpoint, telemetry):
    started = []

    def make(**options):
        sink = GraphiteSink(clock, telemetry, _endpoint=endpoint, _jitter=lambda: 0.0, **options)
        sink.startService()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        if sink.running:
            d = sink.stopService()
            for _ in range(10):
                clock.advance(0)
            if not d.called and sink.connected:
                sink._protocol.transport.loseConnection()
    assert not clock.getDelayedCalls()


def sent_lines(transport) -> list[str]:
    return transport.value().decode().splitlines()


def test_the_sink_provides_imetricsink(clock, telemetry):
    verifyObject(IMetricSink, GraphiteSink(clock, telemetry))


def test_the_default_endpoint_connects_to_the_configured_address(clock, telemetry):
    sink = GraphiteSink(clock, telemetry, host="127.0.0.1", port=2103)
    sink.startService()
    clock.advance(0)
    assert [(host, port) for host, port, *_ in clock.tcpClients] == [("127.0.0.1", 2103)]
    sink.stopService()
    clock.advance(60)
    assert not clock.getDelayedCalls()


def test_lines_written_while_connected_go_straight_to_the_transport(make_sink, endpoint, telemetry):
    sink = make_sink()
    transport = endpoint.accept()
    assert sink.write(gauges(3)) is None
    assert sent_lines(transport) == ["g0 0.0 1700000000", "g1 1.0 1700000000", "g2 2.0 1700000000"]
    assert telemetry.get("sink_sent", *TAGS) == 3
    assert telemetry.gauges[("sink_queue", TAGS)] == 0
    assert telemetry.gauges[("sink_connected", TAGS)] == 1
    assert telemetry.get("sink_connects", *TAGS) == 1


def test_lines_are_buffered_until_the_connection_is_made(make_sink, endpoint, telemetry):
    sink = make_sink()
    sink.write(gauges(2))
    sink.write(gauges(2, start=2))
    assert sink.buffered == 4
    assert telemetry.gauges[("sink_queue", TAGS)] == 4
    assert telemetry.gauges[("sink_connected", TAGS)] == 0
    transport = endpoint.accept()
    assert [line.split()[0] for line in sent_lines(transport)] == ["g0", "g1", "g2", "g3"]
    assert sink.buffered == 0
    assert telemetry.get("sink_sent", *TAGS) == 4


def test_a_full_buffer_drops_the_oldest_lines_and_counts_them(make_sink, endpoint, telemetry):
    sink = make_sink(max_buffered_lines=5)
    sink.write(gauges(3))
    sink.write(gauges(5, start=3))
    assert sink.buffered == 5
    assert telemetry.dropped("graphite_buffer_full") == 3
    transport = endpoint.accept()
    assert [line.split()[0] for line in sent_lines(transport)] == ["g3", "g4", "g5", "g6", "g7"]


def test_a_small_buffer_never_drops_while_carbon_keeps_up(make_sink, clock, endpoint, telemetry):
    sink = make_sink(max_buffered_lines=2)
    transport = endpoint.accept()
    d = sink.write(gauges(7))
    while not d.called:
        clock.advance(0)
    assert len(sent_lines(transport)) == 7
    assert telemetry.dropped("graphite_buffer_full") == 0


def test_events_are_skipped_and_counted(make_sink, telemetry):
    sink = make_sink()
    event = Event("t", "x", 1, "normal", "info", "h", "", "", ())
    sink.write(FlushBatch(0.0, events=[event, event]))
    assert sink.buffered == 0
    assert telemetry.get("sink_skipped", *TAGS, "kind:event") == 2


def test_lines_carbon_would_refuse_as_too_long_are_dropped_and_counted(make_sink, telemetry):
    sink = make_sink()
    sink.write(batch_of(series("x" * 20000), series("ok")))
    assert sink.buffered == 1
    assert telemetry.dropped("graphite_line_too_long") == 1


def test_non_finite_values_are_counted_as_drops(make_sink, telemetry):
    sink = make_sink()
    sink.write(batch_of(series(value=math.nan)))
    assert telemetry.dropped("graphite_non_finite") == 1


def test_a_lost_connection_buffers_again_and_reconnects_after_a_delay(make_sink, clock, endpoint, telemetry):
    sink = make_sink()
    first = endpoint.accept()
    first.loseConnection()
    assert not sink.connected
    assert telemetry.gauges[("sink_connected", TAGS)] == 0
    sink.write(gauges(2))
    assert sink.buffered == 2
    clock.advance(1.4)
    assert len(endpoint.attempts) == 1
    clock.advance(0.1)  # initial delay 1.0 times the factor 1.5, no jitter
    assert len(endpoint.attempts) == 2
    second = endpoint.accept()
    assert [line.split()[0] for line in sent_lines(second)] == ["g0", "g1"]
    assert first.value() == b""
    assert telemetry.get("sink_connects", *TAGS) == 2


def test_failed_attempts_back_off_exponentially_up_to_the_maximum(make_sink, clock, endpoint):
    make_sink(reconnect_initial_delay=1.0, reconnect_max_delay=5.0)
    delays = []
    for _ in range(6):
        endpoint.refuse()
        [call] = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1.5, 2.25, 3.375, 5.0, 5.0, 5.0]
    assert len(endpoint.attempts) == 7


def test_the_transport_pausing_the_sink_keeps_lines_in_the_bounded_buffer(make_sink, clock, endpoint, telemetry):
    sink = make_sink(max_buffered_lines=3000)
    transport = endpoint.accept(PausingTransport(limit=100))
    d = sink.write(gauges(2500))
    clock.advance(0)
    assert d.called
    # One slice went out before the transport said stop; the rest waits here.
    assert len(sent_lines(transport)) == graphite.LINES_PER_STEP
    assert sink.buffered == 1500
    assert telemetry.gauges[("sink_queue", TAGS)] == 1500
    received = transport.drain() + transport.drain()
    assert sink.buffered == 0
    received += transport.value()
    assert len(received.decode().splitlines()) == 2500
    assert telemetry.get("sink_sent", *TAGS) == 2500


def test_a_paused_sink_resumes_only_when_the_transport_says_so(make_sink, endpoint):
    sink = make_sink()
    transport = endpoint.accept()
    transport.producer.pauseProducing()
    sink.write(gauges(2))
    assert transport.value() == b""
    transport.producer.resumeProducing()
    assert len(sent_lines(transport)) == 2
    assert sink.buffered == 0


def test_large_batches_are_formatted_in_slices(make_sink, clock, endpoint):
    sink = make_sink()
    transport = endpoint.accept()
    d = sink.write(gauges(2 * graphite.LINES_PER_STEP + 1))
    assert not d.called
    assert len(sent_lines(transport)) == graphite.LINES_PER_STEP
    clock.advance(0)
    clock.advance(0)
    assert d.called
    assert len(sent_lines(transport)) == 2 * graphite.LINES_PER_STEP + 1


def test_stopping_hands_buffered_lines_to_the_transport_and_closes(make_sink, endpoint):
    sink = make_sink()
    transport = endpoint.accept()
    transport.producer.pauseProducing()
    sink.write(gauges(3))
    d = sink.stopService()
    assert d.called
    assert len(sent_lines(transport)) == 3
    assert not transport.connected


def test_stopping_waits_for_a_batch_being_formatted(make_sink, clock, endpoint):
    sink = make_sink()
    transport = endpoint.accept()
    sink.write(gauges(graphite.LINES_PER_STEP + 5))
    d = sink.stopService()
    assert not d.called
    clock.advance(0)
    assert d.called
    assert len(sent_lines(transport)) == graphite.LINES_PER_STEP + 5


def test_stopping_while_disconnected_drops_the_buffer_and_counts_it(make_sink, clock, endpoint, telemetry):
    sink = make_sink()
    sink.write(gauges(4))
    d = sink.stopService()
    assert d.called
    assert telemetry.dropped("graphite_unsent_at_stop") == 4
    assert telemetry.gauges[("sink_queue", TAGS)] == 0
    clock.advance(120)
    assert len(endpoint.attempts) == 1


def test_stopping_gives_up_on_a_carbon_that_does_not_take_the_data(make_sink, clock, endpoint, telemetry):
    sink = make_sink(stop_timeout=5.0)
    transport = endpoint.accept(StringTransport())
    d = sink.stopService()
    assert transport.disconnecting and not d.called
    clock.advance(5.0)
    assert transport.disconnected
    assert telemetry.get("sink_stop_timeouts", *TAGS) == 1
    # The aborted transport reports the loss, as a real one does.
    transport.protocol.connectionLost(Failure(ConnectionDone()))
    assert d.called
