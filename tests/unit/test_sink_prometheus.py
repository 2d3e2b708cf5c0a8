"""The Prometheus sink: translation of flushes into families, the text format, expiry, and the service.

The state tests need no reactor; the service tests use MemoryReactorClock and
drive the HTTP channel over a StringTransport.  Every page is parsed back with
prometheus_client's parser, so invalid output fails here.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyObject

from twisted_statsd.core.model import SERIES_COUNT, SERIES_GAUGE, SERIES_RATE, FlushBatch, Series, SketchSeries
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.sinks.prometheus import (
    CONTENT_TYPE,
    PrometheusSink,
    PrometheusState,
    format_value,
    histogram_counts,
    sanitise_name,
)
from twisted_statsd.telemetry import Telemetry


def rate(name, value, tags=(), host="", ts=0):
    return Series(name, SERIES_RATE, [(ts, value)], tuple(tags), host)


def gauge(name, *points, tags=(), host=""):
    return Series(name, SERIES_GAUGE, list(points), tuple(tags), host)


def sketch_of(*values, n=1.0):
    sketch = Sketch()
    for v in values:
        sketch.add(v, n)
    return sketch


def dist(name, *sketches, tags=(), host=""):
    return SketchSeries(name, [(10 * i, s) for i, s in enumerate(sketches)], tuple(tags), host)


def batch(series=(), sketches=()):
    return FlushBatch(0.0, series=list(series), sketches=list(sketches))


def samples(state):
    """{(sample name, frozenset of labels): value}, parsed from the rendered page."""
    found = {}
    for family in text_string_to_metric_families(state.render().decode("utf-8")):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = s.value
    return found


def types(state):
    text = state.render().decode("utf-8")
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}


def value(state, name, **labels):
    return samples(state)[(name, frozenset(labels.items()))]


# -- names and labels -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("page.views", "page_views"),
        ("a-b/c:d é", "a_b_c_d__"),
        ("1st.metric", "_1st_metric"),
        ("ok_Name09", "ok_Name09"),
        ("", "_"),
    ],
)
def test_names_are_sanitised(name, expected):
    assert sanitise_name(name) == expected


def test_tags_become_sorted_sanitised_labels():
    state = PrometheusState()
    tags = ("env:prod", "url:http://x/y", "a.b:1", "bare", "__meta:x", "empty:", "team:b", "team:a")
    state.update(batch([gauge("g", (0, 1.0), tags=tags, host="web1")]), 0.0)
    assert samples(state) == {
        (
            "g",
            frozenset(
                {
                    ("env", "prod"),
                    ("url", "http://x/y"),
                    ("a_b", "1"),
                    ("bare", "true"),
                    ("tag__meta", "x"),
                    ("team", "a,b"),
                    ("host", "web1"),
                }
            ),
        ): 1.0,
    }
    assert b'g{a_b="1",bare="true",env="prod",host="web1",tag__meta="x",team="a,b",url="http://x/y"} 1.0\n' in (
        state.render()
    )


def test_bare_tag_value_and_host_label_are_configurable():
    state = PrometheusState(bare_tag_value="", host_label="")
    state.update(batch([gauge("g", (0, 1.0), tags=("bare", "k:v"), host="web1")]), 0.0)
    assert samples(state) == {("g", frozenset({("k", "v")})): 1.0}
    state = PrometheusState(bare_tag_value="1", host_label="instance_host")
    state.update(batch([gauge("g", (0, 1.0), tags=("bare",), host="web1")]), 0.0)
    assert samples(state) == {("g", frozenset({("bare", "1"), ("instance_host", "web1")})): 1.0}


def test_label_values_are_escaped():
    nasty = 'a"b\\c\nd}{,='
    state = PrometheusState()
    state.update(batch([gauge("g", (0, 1.0), tags=("k:" + nasty,))]), 0.0)
    assert b'g{k="a\\"b\\\\c\\nd}{,="} 1.0\n' in state.render()
    assert samples(state) == {("g", frozenset({("k", nasty)})): 1.0}


def test_values_use_go_float_syntax():
    assert [format_value(v) for v in (5.0, 0.1, 1e20, float("inf"), float("-inf"), float("nan"))] == [
        "5.0",
        "0.1",
        "1e+20",
        "+Inf",
        "-Inf",
        "NaN",
    ]


def test_an_empty_state_renders_an_empty_page():
    assert PrometheusState().render() == b""


# -- counters and gauges -------------------------------------------------------------


def test_counters_accumulate_rate_times_interval():
    state = PrometheusState()
    state.update(batch([rate("page.views", 0.5, ("page:home",))]), 0.0)
    assert value(state, "page_views_total", page="home") == 5.0
    # 0.3 * 10 is 3.0000000000000004 in floats; the sink recovers the decimal count.
    state.update(batch([Series("page.views", SERIES_RATE, [(10, 0.3), (20, 0.0)], ("page:home",), "")]), 10.0)
    assert value(state, "page_views_total", page="home") == 8.0
    state.update(batch([Series("page.views", SERIES_COUNT, [(30, 2.0)], ("page:home",), "")]), 20.0)
    assert value(state, "page_views_total", page="home") == 10.0
    assert types(state) == {"page_views_total": "counter"}


def test_a_counter_already_named_total_is_not_suffixed_twice():
    state = PrometheusState()
    state.update(batch([rate("requests.total", 0.1), rate("requests_total", 0.2)]), 0.0)
    assert samples(state) == {("requests_total", frozenset()): 3.0}


def test_the_counter_suffix_is_configurable():
    state = PrometheusState(counter_suffix="")
    state.update(batch([rate("hits", 0.1)]), 0.0)
    assert types(state) == {"hits": "counter"}


def test_negative_and_non_finite_points_are_dropped_and_counted():
    state = PrometheusState()
    out = state.update(
        batch(
            [
                Series("c", SERIES_RATE, [(0, 0.2), (10, -0.1)], (), ""),
                gauge("g", (0, float("nan"))),
            ]
        ),
        0.0,
    )
    assert out.dropped == {"negative_counter": 1, "non_finite": 1}
    assert out.accepted == 1
    assert samples(state) == {("c_total", frozenset()): 2.0}


def test_the_gauge_point_with_the_newest_timestamp_wins():
    state = PrometheusState()
    state.update(batch([gauge("q", (20, 2.0), (30, 3.0), (10, 1.0))]), 0.0)
    assert value(state, "q") == 3.0
    state.update(batch([gauge("q", (25, 9.0))]), 1.0)  # a late, older point
    assert value(state, "q") == 3.0
    state.update(batch([gauge("q", (30, 4.0)), gauge("q", (30, 5.0))]), 2.0)
    assert value(state, "q") == 5.0
    assert types(state) == {"q": "gauge"}


def test_pre_reduced_histograms_are_gauges_and_a_counter():
    state = PrometheusState()
    state.update(
        batch([gauge("req.size.max", (0, 5.0)), gauge("req.size.95percentile", (0, 5.0)), rate("req.size.count", 0.5)]),
        0.0,
    )
    assert types(state) == {
        "req_size_95percentile": "gauge",
        "req_size_count_total": "counter",
        "req_size_max": "gauge",
    }
    assert value(state, "req_size_count_total") == 5.0


def test_contexts_that_map_to_one_series_are_merged():
    state = PrometheusState(host_label="")
    state.update(batch([rate("a.b", 0.1, host="h1"), rate("a_b", 0.2, host="h2")]), 0.0)
    assert samples(state) == {("a_b_total", frozenset()): 3.0}


# -- distributions ---------------------------------------------------------------------


def test_a_distribution_is_a_summary_of_its_latest_flush():
    state = PrometheusState(quantiles=(0.5, 0.99))
    first, second = sketch_of(*range(1, 51)), sketch_of(*range(51, 101))
    state.update(batch(sketches=[dist("latency", first, second, tags=("env:a",))]), 0.0)
    merged = sketch_of(*range(1, 101))
    assert samples(state) == {
        ("latency", frozenset({("env", "a"), ("quantile", "0.5")})): merged.quantile(0.5),
        ("latency", frozenset({("env", "a"), ("quantile", "0.99")})): merged.quantile(0.99),
        ("latency_sum", frozenset({("env", "a")})): 5050.0,
        ("latency_count", frozenset({("env", "a")})): 100.0,
    }
    state.update(batch(sketches=[dist("latency", sketch_of(7.0, 7.0), tags=("env:a",))]), 10.0)
    assert value(state, "latency", env="a", quantile="0.5") == 7.0
    assert value(state, "latency_sum", env="a") == 5064.0
    assert value(state, "latency_count", env="a") == 102.0
    assert types(state) == {"latency": "summary"}


def test_a_distribution_as_histogram_has_cumulative_buckets():
    state = PrometheusState(distribution_as="histogram", buckets=(1.0, 0.5, 2.0))
    state.update(batch(sketches=[dist("size", sketch_of(0.25, 0.5, 0.5, 1.5, 3.0))]), 0.0)
    assert samples(state) == {
        ("size_bucket", frozenset({("le", "0.5")})): 3.0,
        ("size_bucket", frozenset({("le", "1.0")})): 3.0,
        ("size_bucket", frozenset({("le", "2.0")})): 4.0,
        ("size_bucket", frozenset({("le", "+Inf")})): 5.0,
        ("size_sum", frozenset()): 5.75,
        ("size_count", frozenset()): 5.0,
    }
    state.update(batch(sketches=[dist("size", sketch_of(0.1))]), 10.0)
    assert value(state, "size_bucket", le="0.5") == 4.0
    assert value(state, "size_bucket", le="+Inf") == value(state, "size_count") == 6.0
    assert types(state) == {"size": "histogram"}


def test_bucket_bounds_are_inclusive_at_the_sketch_extremes():
    """A bin's value is clamped to [min, max], so a sample equal to a bound counts in it."""
    sketch = sketch_of(0.1, 0.1)
    assert histogram_counts(sketch, (0.0999, 0.1)) == [0.0, 2.0]


def test_weighted_samples_scale_buckets_to_the_count():
    """A 0.4 sample rate weighs each sample 2.5; bins hold 2, the buckets are scaled to 2.5."""
    sketch = sketch_of(1.0, n=2.5)
    assert (sketch.count, histogram_counts(sketch, (0.5, 1.0))) == (2.5, [0.0, 2.5])


def test_reserved_labels_of_summaries_and_histograms_are_renamed():
    state = PrometheusState(distribution_as="histogram", buckets=(1.0,))
    state.update(batch([gauge("g", (0, 1.0), tags=("le:x",))], [dist("h", sketch_of(1.0), tags=("le:x",))]), 0.0)
    assert value(state, "g", le="x") == 1.0
    assert value(state, "h_bucket", exported_le="x", le="1.0") == 1.0


# -- collisions and expiry ----------------------------------------------------------------


def test_a_name_used_as_gauge_and_counter_keeps_its_first_type():
    state = PrometheusState()
    out = state.update(batch([gauge("x", (0, 1.0)), rate("x", 0.1), rate("x", 0.2, ("k:v",))]), 0.0)
    assert out.dropped == {"name_conflict": 2}
    assert out.conflicts == [("x_total", "counter", "gauge")]
    assert samples(state) == {("x", frozenset()): 1.0}
    # Reported once, counted every time.
    out = state.update(batch([rate("x", 0.1)]), 1.0)
    assert (out.dropped, out.conflicts) == ({"name_conflict": 1}, [])


def test_a_gauge_cannot_take_a_summary_sample_name():
    state = PrometheusState()
    state.update(batch(sketches=[dist("lat", sketch_of(1.0))]), 0.0)
    out = state.update(batch([gauge("lat.count", (0, 3.0)), gauge("lat.sum", (0, 3.0))]), 0.0)
    assert out.dropped == {"name_conflict": 2}
    assert types(state) == {"lat": "summary"}


def test_series_not_updated_for_the_ttl_expire():
    state = PrometheusState(ttl=300.0)
    state.update(batch([rate("c", 0.1), gauge("g", (0, 1.0))]), 100.0)
    state.update(batch([gauge("g", (10, 2.0))]), 200.0)
    assert state.expire(399.9) == 0
    assert state.expire(400.0) == 1
    assert samples(state) == {("g", frozenset()): 2.0}
    assert len(state) == 1
    # The name is free again, and a new counter starts from zero.
    state.update(batch([gauge("c_total", (0, 5.0))]), 401.0)
    assert state.expire(500.0) == 1
    assert samples(state) == {("c_total", frozenset()): 5.0}


def test_an_expired_counter_restarts_from_zero():
    state = PrometheusState(ttl=10.0)
    state.update(batch([rate("c", 0.5)]), 0.0)
    state.expire(10.0)
    state.update(batch([rate("c", 0.1)]), 11.0)
    assert value(state, "c_total") == 1.0


def test_a_zero_ttl_never_expires():
    state = PrometheusState(ttl=0)
    state.update(batch([gauge("g", (0, 1.0))]), 0.0)
    assert state.expire(1e12) == 0


def test_the_page_is_cached_until_something_changes():
    state = PrometheusState(ttl=10.0)
    state.update(batch([gauge("g", (0, 1.0))]), 0.0)
    page = state.render()
    assert state.render() is page
    state.update(batch([gauge("g", (1, 2.0))]), 1.0)
    assert state.render() is not page
    page = state.render()
    state.expire(5.0)
    assert state.render() is page


@pytest.mark.parametrize(
    "options",
    [{"distribution_as": "native"}, {"quantiles": (1.5,)}, {"buckets": (float("nan"),)}, {"host_label": "bad-label"}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        PrometheusState(**options)


# -- the service -------------------------------------------------------------------------


def make_sink(**options):
    reactor = MemoryReactorClock()
    telemetry = Telemetry()
    return PrometheusSink(reactor, telemetry, **options), reactor, telemetry


def get(sink, reactor, path=b"/metrics"):
    """Send one request through the site's HTTP channel; return the raw response and the channel."""
    site = reactor.tcpServers[-1][1]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return transport.value(), channel


def test_the_sink_provides_imetricsink():
    sink, _, _ = make_sink()
    assert verifyObject(IMetricSink, sink)
    assert sink.name == "prometheus"


def test_the_sink_binds_loopback_in_privileged_start():
    sink, reactor, _ = make_sink(port=9999)
    sink.privilegedStartService()
    sink.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(9999, "127.0.0.1")]
    sink.stopService()


def test_start_binds_when_privileged_start_did_not():
    sink, reactor, _ = make_sink(bind_host="::1")
    sink.startService()
    assert sink.address.port == 9102
    assert [interface for _, _, _, interface in reactor.tcpServers] == ["::1"]
    sink.stopService()


def test_a_scrape_serves_the_page_and_counts():
    sink, reactor, telemetry = make_sink()
    sink.startService()
    assert sink.write(batch([gauge("g", (0, 1.0), tags=("k:v",), host="h")])) is None
    response, _channel = get(sink, reactor)
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: " + CONTENT_TYPE in head
    assert body.endswith(b'g{host="h",k="v"} 1.0\n')
    assert telemetry.get("sink_scrapes", "sink:prometheus") == 1
    assert telemetry.get("sink_sent", "sink:prometheus") == 1
    assert telemetry.gauges[("sink_series", ("sink:prometheus",))] == 1
    assert telemetry.gauges[("sink_queue_size", ("sink:prometheus",))] == 0
    assert get(sink, reactor, b"/")[0].startswith(b"HTTP/1.1 404 ")
    # Stopping closes the open connections and waits for them.
    stopped = sink.stopService()
    assert not stopped.called
    for open_channel in list(reactor.tcpServers[-1][1].channels):
        open_channel.connectionLost(None)
    assert stopped.called and stopped.result is None


def test_expiry_follows_the_reactor_clock_at_scrape_time():
    sink, reactor, telemetry = make_sink(ttl=30.0)
    sink.startService()
    sink.write(batch([gauge("g", (0, 1.0))]))
    reactor.advance(29)
    assert sink.scrape().startswith(b"# HELP g ")
    reactor.advance(1)
    assert sink.scrape() == b""
    assert telemetry.get("sink_series_expired", "sink:prometheus") == 1
    assert telemetry.gauges[("sink_series", ("sink:prometheus",))] == 0
    sink.stopService()


def test_drops_are_counted_by_reason_and_conflicts_logged_once():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        sink, _, telemetry = make_sink()
        sink.write(batch([gauge("x", (0, 1.0)), rate("x", 0.1), rate("y", -0.1)]))
        sink.write(batch([rate("x", 0.1)]))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert telemetry.get("sink_dropped", "sink:prometheus", "reason:name_conflict") == 2
    assert telemetry.get("sink_dropped", "sink:prometheus", "reason:negative_counter") == 1
    assert [e["name"] for e in events if e.get("log_category") == "PROMETHEUS_NAME_CONFLICT"] == ["x_total"]


def test_a_real_aggregator_flush_translates():
    from twisted_statsd.core.aggregator import Aggregator
    from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, HISTOGRAM, SET, Context

    def ctx(name):
        return Context(name, b"web1", [b"env:prod"])

    aggregator = Aggregator()
    for v in (3.0, 2.0):
        aggregator.add(ctx(b"hits"), COUNTER, v, 1.0, 100.0)
    aggregator.add(ctx(b"temp"), GAUGE, 21.5, 1.0, 100.0)
    aggregator.add(ctx(b"users"), SET, b"alice", 1.0, 100.0)
    for v in (1.0, 2.0, 3.0):
        aggregator.add(ctx(b"req.size"), HISTOGRAM, v, 1.0, 100.0)
        aggregator.add(ctx(b"latency"), DISTRIBUTION, v, 1.0, 100.0)
    state = PrometheusState()
    state.update(aggregator.flush(125.0), 125.0)
    labels = frozenset({("env", "prod"), ("host", "web1")})
    found = samples(state)
    assert found[("hits_total", labels)] == 5.0
    assert found[("temp", labels)] == 21.5
    assert found[("users", labels)] == 1.0
    assert found[("req_size_max", labels)] == 3.0
    assert found[("req_size_count_total", labels)] == 3.0
    assert found[("latency_sum", labels)] == 6.0
    assert found[("latency_count", labels)] == 3.0
    # The next flush has only the counter's zero point: the total stays.
    state.update(aggregator.flush(135.0), 135.0)
    assert samples(state)[("hits_total", labels)] == 5.0
