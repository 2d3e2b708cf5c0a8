"""Per-metric statistics (core/stats.py) and the admin endpoint's rate window: pure, no reactor."""

from __future__ import annotations

import pytest

from twisted_statsd.admin.service import RateWindow
from twisted_statsd.core.model import COUNTER, DISTRIBUTION, GAUGE, HISTOGRAM
from twisted_statsd.core.stats import MetricStats, series_per_context


def test_names_are_counted_per_line_without_events_and_checks():
    stats = MetricStats({})
    stats.received([b"a:1|c\na:2|c\nb:1:2:3|h", b"_e{1,1}:t|x\n_sc|c|0\n\na:5|c"], 1.0, "udp", None)
    assert stats.names == {}  # counted, not merged yet
    stats.merge(2.0)
    assert {name: entry.samples for name, entry in stats.names.items()} == {"a": 3, "b": 1}
    assert stats.names["a"].last_seen == 1.0


def test_billable_series_per_type_follow_the_histogram_configuration():
    per = series_per_context(("max", "median", "avg", "count"), (0.95, 0.99))
    assert (per[COUNTER], per[GAUGE], per[HISTOGRAM], per[DISTRIBUTION]) == (1, 1, 6, 5)


def test_received_and_flushed_views_fill_one_table():
    stats = MetricStats(series_per_context(("max", "count"), (0.5,)))
    stats.received([b"a:1|c\na:1|c", b"h:3|h"], 100.0, "udp", None)
    stats.received([b"a:1|c"], 101.0, "uds", b"cid-1")
    stats.merge(105.0)
    stats.flushed([("a", COUNTER, ("k:1", "container_id:abc")), ("a", COUNTER, ("k:2",)), ("h", HISTOGRAM, ())], 110.0)
    a, h = stats.names["a"], stats.names["h"]
    assert (a.samples, a.contexts, a.series, a.type, a.last_seen) == (3, 2, 2, "counter", 101.0)
    assert a.transports == {"udp", "uds"} and a.senders == {"cid-1", "abc"}
    assert (h.samples, h.contexts, h.series) == (1, 1, 3)
    assert [row["name"] for row in stats.top("samples", 5)] == ["a", "h"]
    assert [row["name"] for row in stats.top("series", 1)] == ["h"]
    # A later flush without "a" leaves it no live contexts.
    stats.flushed([("h", HISTOGRAM, ())], 120.0)
    assert (stats.names["a"].contexts, stats.names["a"].series) == (0, 0)
    with pytest.raises(ValueError):
        stats.top("bytes", 3)


def test_names_beyond_the_cap_are_counted_not_tracked():
    stats = MetricStats({}, max_names=2)
    stats.received([b"a:1|c\nb:1|c\nc:1|c\nc:2|c"], 1.0, "udp", None)
    stats.merge(1.0)
    assert sorted(stats.names) == ["a", "b"] and stats.untracked_samples == 2


def test_rates_are_over_the_oldest_sample_in_the_window():
    window = RateWindow(window=60.0, every=5.0)
    assert window.per_second(0.0, {"packets": 0})["packets_per_second"] is None
    for t in range(0, 100, 5):
        window.record(float(t), {"packets": t * 10})
    rates = window.per_second(100.0, {"packets": 1000})
    assert rates == {"window_seconds": 60.0, "packets_per_second": 10.0}
