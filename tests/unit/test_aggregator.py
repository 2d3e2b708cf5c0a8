"""The aggregator against spec §6.3-§6.7: buckets, flush cut-off, per-type maths, zero-fill."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_statsd.core.aggregator import MAX_PENDING, Aggregator, Route
from twisted_statsd.core.model import (
    COUNTER,
    DISTRIBUTION,
    GAUGE,
    HISTOGRAM,
    SERIES_GAUGE,
    SERIES_RATE,
    SET,
    TIMING,
    Context,
)


def ctx(name: str, *tags: str, host: str = "h") -> Context:
    return Context(name.encode(), host.encode(), [t.encode() for t in tags])


def points(batch, name):
    """{series name: points} restricted to ``name`` and its suffixes."""
    return {s.name: s.points for s in batch.series if s.name == name or s.name.startswith(name + ".")}


def by_name(batch):
    return {s.name: s for s in batch.series}


def test_time_sampler_vector():
    """spec §6.5: the zero-fill and expiry vector (bucket 10, expiry 300)."""
    agg = Aggregator(expiry_seconds=300)
    c1, c2, g = ctx("counter1"), ctx("counter2"), ctx("gauge")
    agg.add(c1, COUNTER, 1, 1.0, 1004)
    agg.add(c2, COUNTER, 2, 1.0, 1002)
    agg.add(g, GAUGE, 2, 1.0, 1003)
    out = by_name(agg.flush(1010))
    assert out["counter1"].points == [(1000, 0.1)]
    assert out["counter1"].type == SERIES_RATE
    assert out["counter2"].points == [(1000, 0.2)]
    assert out["gauge"].points == [(1000, 2.0)]
    assert out["gauge"].type == SERIES_GAUGE

    agg.add(c2, COUNTER, 2, 1.0, 1034)
    agg.add(c1, COUNTER, 1, 1.0, 1010)
    agg.add(c2, COUNTER, 2, 1.0, 1020)
    out = by_name(agg.flush(1040))
    assert out["counter1"].points == [(1010, 0.1), (1020, 0.0), (1030, 0.0)]
    assert out["counter2"].points == [(1010, 0.0), (1020, 0.2), (1030, 0.2)]
    assert set(out) == {"counter1", "counter2"}

    assert not agg.flush(1045).series  # no new interval
    out = by_name(agg.flush(1050))
    assert (
        out
        == {
            "counter1": out["counter1"],
            "counter2": out["counter2"],
        }
        and out["counter1"].points == [(1040, 0.0)]
        and out["counter2"].points == [(1040, 0.0)]
    )
    out = by_name(agg.flush(1329))
    assert list(out) == ["counter2"]  # counter1 expired: 1010 + 300 is not > 1310
    assert out["counter2"].points == [(1310, 0.0)]
    assert not agg.flush(1800).series
    assert agg.context_count() == 0


def test_a_flush_of_several_buckets_gives_one_series_per_context_and_suffix_in_first_seen_order():
    """Points of one context from every due bucket share its series; contexts first seen in a
    later bucket come after the earlier bucket's, and a type change keeps the first series."""
    agg = Aggregator(histogram_aggregates=("max",), histogram_percentiles=())
    agg.add(ctx("g"), GAUGE, 1, 1.0, 1001)
    agg.add(ctx("h"), HISTOGRAM, 4, 1.0, 1002)
    agg.add(ctx("d"), DISTRIBUTION, 1, 1.0, 1003)
    agg.add(ctx("h"), HISTOGRAM, 5, 1.0, 1012)
    agg.add(ctx("late"), GAUGE, 3, 1.0, 1013)
    agg.add(ctx("g"), COUNTER, 20, 1.0, 1014)  # another type in the second bucket
    agg.add(ctx("d"), DISTRIBUTION, 2, 1.0, 1015)
    agg.add(ctx("d2"), DISTRIBUTION, 2, 1.0, 1016)
    batch = agg.flush(1020)
    assert [(s.name, s.points) for s in batch.series] == [
        ("g", [(1000, 1.0), (1010, 2.0)]),
        ("h.max", [(1000, 4.0), (1010, 5.0)]),
        ("late", [(1010, 3.0)]),
    ]
    assert [(s.name, [ts for ts, _ in s.points]) for s in batch.sketches] == [("d", [1000, 1010]), ("d2", [1010])]
    assert [sketch.count for _, sketch in batch.sketches[0].points] == [1, 1]


def test_open_bucket_waits_for_a_later_flush():
    """spec §6.3: only buckets with start + 10 <= bucket_start(now) are flushed."""
    agg = Aggregator()
    agg.add(ctx("g"), GAUGE, 1, 1.0, 1015)
    assert not agg.flush(1019).series
    assert by_name(agg.flush(1020))["g"].points == [(1010, 1.0)]


def test_final_flush_closes_open_buckets():
    agg = Aggregator()
    agg.add(ctx("g"), GAUGE, 7, 1.0, 1015)
    assert by_name(agg.flush(1016, final=True))["g"].points == [(1010, 7.0)]


def test_gauge_last_value_wins_by_arrival():
    agg = Aggregator()
    for v in (3, 1, 2):
        agg.add(ctx("g"), GAUGE, v, 1.0, 1001)
    assert by_name(agg.flush(1010))["g"].points == [(1000, 2.0)]


def test_counter_scaled_by_sample_rate():
    """spec §1.4: each sample adds value / rate; reported as a rate over 10 s."""
    agg = Aggregator()
    agg.add(ctx("c"), COUNTER, 1, 0.5, 1001)
    agg.add(ctx("c"), COUNTER, 3, 1.0, 1002)
    assert by_name(agg.flush(1010))["c"].points == [(1000, 0.5)]


def test_set_counts_unique_members():
    agg = Aggregator()
    for member in (b"a", b"b", b"a", b"abc:def"):
        agg.add(ctx("s"), SET, member, 1.0, 1001)
    out = by_name(agg.flush(1010))["s"]
    assert out.points == [(1000, 3.0)] and out.type == SERIES_GAUGE


def test_histogram_worked_example():
    """spec §6.5: values 1..5 at rate 1 -> max 5, median 3, avg 3, count 0.5, 95percentile 5."""
    agg = Aggregator()
    for v in (3, 1, 5, 2, 4):
        agg.add(ctx("h"), HISTOGRAM, v, 1.0, 1001)
    out = by_name(agg.flush(1010))
    assert {name: s.points[0][1] for name, s in out.items()} == {
        "h.max": 5,
        "h.median": 3,
        "h.avg": 3,
        "h.count": 0.5,
        "h.95percentile": 5,
    }
    assert out["h.count"].type == SERIES_RATE
    assert out["h.max"].type == SERIES_GAUGE
    assert list(out) == ["h.max", "h.median", "h.avg", "h.count", "h.95percentile"]


def test_histogram_aggregates_and_percentiles_configurable():
    agg = Aggregator(histogram_aggregates=("min", "sum"), histogram_percentiles=(0.5, 0.99))
    for v in range(1, 101):
        agg.add(ctx("t"), TIMING, float(v), 1.0, 1001)
    out = {name: s.points[0][1] for name, s in by_name(agg.flush(1010)).items()}
    # rank rule: first value whose cumulative weight > (p*count - 1)/100
    assert out == {"t.min": 1.0, "t.sum": 5050.0, "t.50percentile": 50.0, "t.99percentile": 99.0}


def test_histogram_sample_rate_weights():
    """spec §1.4: weight 1/rate; count, sum and avg are weighted."""
    agg = Aggregator(histogram_aggregates=("count", "sum", "avg"))
    agg.add(ctx("h"), HISTOGRAM, 10, 0.5, 1001)
    agg.add(ctx("h"), HISTOGRAM, 40, 1.0, 1001)
    out = {name: s.points[0][1] for name, s in by_name(agg.flush(1010)).items()}
    assert out["h.count"] == pytest.approx(0.3)
    assert out["h.sum"] == 60
    assert out["h.avg"] == 20


def test_histogram_rate_zero_counts_once():
    agg = Aggregator(histogram_aggregates=("count",), histogram_percentiles=())
    agg.add(ctx("h"), HISTOGRAM, 10, 0.0, 1001)
    assert by_name(agg.flush(1010))["h.count"].points == [(1000, 0.1)]


def test_a_route_never_adds_to_a_metric_its_aggregator_no_longer_holds():
    """Issue 14: a route remembers its metric in the open bucket; after an export (a worker's
    hand-over) and after a final flush, a bucket with the same start is a new one, and the
    route's next runs land there, not in the metric handed over."""
    agg = Aggregator()
    counter, gauge, dist = (
        Route(ctx("c"), COUNTER, 1.0),
        Route(ctx("g"), GAUGE, 1.0),
        Route(ctx("d"), DISTRIBUTION, 1.0),
    )
    agg.add_runs(1001, [(counter, (1.0, 2.0)), (gauge, (5.0,)), (dist, (3.0,))])
    first = agg.export()
    agg.add_runs(1002, [(counter, (4.0,)), (gauge, (6.0,)), (dist, (7.0,))])
    second = agg.export()
    shipped = [
        {m.context.name: m.value for m in metrics.values()} | {c.name: s.count for c, s in sketches.values()}
        for state in (first, second)
        for _start, metrics, sketches in state["buckets"]
    ]
    assert shipped == [{"c": 3.0, "g": 5.0, "d": 1.0}, {"c": 4.0, "g": 6.0, "d": 1.0}]
    agg.add_runs(1003, [(counter, (1.0,))])
    assert points(agg.flush(1003, final=True), "c") == {"c": [(1000, 0.1)]}
    agg.add_runs(1004, [(counter, (2.0,))])
    assert points(agg.flush(1004, final=True), "c") == {"c": [(1000, 0.2)]}


def test_points_of_one_context_merge_into_one_series():
    """spec §6.3: one flush over two buckets gives one series with two points."""
    agg = Aggregator()
    agg.add(ctx("g"), GAUGE, 1, 1.0, 1001)
    agg.add(ctx("g"), GAUGE, 2, 1.0, 1011)
    assert [s.points for s in agg.flush(1020).series] == [[(1000, 1.0), (1010, 2.0)]]


def test_context_ignores_tag_order_and_duplicates():
    """spec §6.4: a context is (name, host, set of tags)."""
    agg = Aggregator()
    agg.add(ctx("g", "b", "a"), GAUGE, 1, 1.0, 1001)
    agg.add(ctx("g", "a", "b", "a"), GAUGE, 2, 1.0, 1002)
    agg.add(ctx("g", "a", "b", host="other"), GAUGE, 3, 1.0, 1002)
    series = agg.flush(1010).series
    assert sorted((s.host, s.tags, s.points[0][1]) for s in series) == [
        ("h", ("a", "b"), 2.0),
        ("other", ("a", "b"), 3.0),
    ]


def test_first_type_in_a_bucket_decides():
    """spec §6.4: a gauge sample given to a counter context adds to the counter."""
    agg = Aggregator()
    agg.add(ctx("x"), COUNTER, 10, 1.0, 1001)
    agg.add(ctx("x"), GAUGE, 10, 1.0, 1002)
    agg.add(ctx("x"), SET, b"member", 1.0, 1003)
    assert by_name(agg.flush(1010))["x"].points == [(1000, 2.0)]


def test_distribution_kept_apart_as_sketch():
    """spec §6.6: one sketch per context and bucket, separate from other types."""
    agg = Aggregator()
    for v in range(1, 101):
        agg.add(ctx("d"), DISTRIBUTION, float(v), 1.0, 1001)
    agg.add(ctx("d"), GAUGE, 5, 1.0, 1001)
    agg.add(ctx("d"), DISTRIBUTION, 1.0, 1.0, 1011)
    batch = agg.flush(1020)
    assert by_name(batch)["d"].points == [(1000, 5.0)]
    (sketches,) = batch.sketches
    assert [ts for ts, _ in sketches.points] == [1000, 1010]
    sketch = sketches.points[0][1]
    assert (sketch.count, sketch.min, sketch.max, sketch.sum) == (100, 1.0, 100.0, 5050.0)
    # the median rank lies between 50 and 51; the sketch is within 1/128 of it
    assert 50 * (1 - 1 / 128) <= sketch.quantile(0.5) <= 51 * (1 + 1 / 128)


def test_distribution_sample_rate():
    """spec §1.4: the sketch counts a value 1/r times; r outside (0, 1] counts as 1."""
    agg = Aggregator()
    agg.add(ctx("d"), DISTRIBUTION, 2.0, 0.25, 1001)
    agg.add(ctx("e"), DISTRIBUTION, 2.0, 0.0, 1001)
    agg.add(ctx("e"), DISTRIBUTION, 2.0, 5.0, 1001)
    counts = {s.name: s.points[0][1].count for s in agg.flush(1010).sketches}
    assert counts == {"d": 4, "e": 2}


def test_timestamped_gauge_and_counter_pass_through():
    """spec §6.7: counters become value/10 rates, gauges gauges, at the client's timestamp."""
    agg = Aggregator()
    assert agg.add_timestamped(ctx("c"), COUNTER, 50, 1657100430)
    assert agg.add_timestamped(ctx("g"), GAUGE, 3, 1657100431)
    assert not agg.add_timestamped(ctx("h"), HISTOGRAM, 3, 1657100431)
    out = by_name(agg.flush(2000))
    assert out["c"].points == [(1657100430, 5.0)] and out["c"].type == SERIES_RATE
    assert out["g"].points == [(1657100431, 3.0)] and out["g"].type == SERIES_GAUGE
    assert not agg.flush(2010).series


def test_pending_limits():
    agg = Aggregator()
    for _ in range(MAX_PENDING):
        assert agg.add_event(object())
    assert not agg.add_event(object())
    assert len(agg.flush(1000).events) == MAX_PENDING
    assert agg.add_event(object())


def test_non_finite_points_left_out_and_counted():
    agg = Aggregator()
    agg.add(ctx("c"), COUNTER, 1e308, 1e-300, 1001)
    assert not agg.flush(1010).series
    assert agg.non_finite_points == 1


def test_merging_partial_aggregates_equals_one_aggregator():
    """Issue 7: workers' partial aggregates merge exactly into what one process would have.

    Every context of every type has samples in several parts, in the same
    bucket, so each type's ``merge`` runs; times only grow, as a clock's do,
    so the latest gauge of the parts is the last one sent.
    """
    import pickle
    import random
    from collections import defaultdict

    rng = random.Random(5)
    samples = []
    for i in range(2000):
        kind = rng.choice([COUNTER, GAUGE, SET, HISTOGRAM, TIMING, DISTRIBUTION])
        value = b"m%d" % rng.randint(0, 5) if kind == SET else float(rng.randint(-5, 50))
        samples.append(
            (ctx(f"{kind.decode()}.{i % 7}", f"t:{i % 2}"), kind, value, rng.choice([1.0, 0.5]), 1000 + i * 0.0125)
        )
    whole = Aggregator()
    parts = [Aggregator(), Aggregator(), Aggregator()]
    held_by = defaultdict(set)
    for n, (context, kind, value, rate, now) in enumerate(samples):
        whole.add(context, kind, value, rate, now)
        parts[n % 3].add(context, kind, value, rate, now)
        held_by[kind, context.key, int(now) // 10].add(n % 3)
    merged_kinds = {kind for (kind, _key, _bucket), held in held_by.items() if len(held) > 1}
    assert merged_kinds == {COUNTER, GAUGE, SET, HISTOGRAM, TIMING, DISTRIBUTION}
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(pickle.loads(pickle.dumps(part.export())))

    def summary(batch):
        series = sorted((s.name, s.tags, [(ts, round(v, 9)) for ts, v in s.points]) for s in batch.series)
        sketches = sorted(
            (s.name, s.tags, [(ts, k.count, k.sum, k.bins()) for ts, k in s.points]) for s in batch.sketches
        )
        return series, sketches

    assert summary(merged.flush(1100, final=True)) == summary(whole.flush(1100, final=True))


@pytest.mark.parametrize(
    "held, shipped, expected",
    [
        # the counter came first: the gauge's value is added to it
        ([(COUNTER, 3.0, 1.0)], [(GAUGE, 7.0, 1.0)], {"m": 1.0}),
        # the gauge came first: the counter's total (scaled by its rate) is its next value
        ([(GAUGE, 2.0, 1.0)], [(COUNTER, 5.0, 0.5)], {"m": 10.0}),
        # a histogram takes each set member as 0
        (
            [(HISTOGRAM, 1.0, 1.0), (HISTOGRAM, 2.0, 1.0)],
            [(SET, b"a", 1.0), (SET, b"b", 1.0)],
            {"m.max": 2.0, "m.median": 0.0, "m.avg": 0.75, "m.count": 0.4, "m.95percentile": 2.0},
        ),
        # a set takes each histogram sample as a member
        ([(SET, b"a", 1.0)], [(TIMING, 5.0, 1.0), (TIMING, 6.0, 1.0)], {"m": 3.0}),
        # a histogram takes another histogram's weights along with its samples
        ([(HISTOGRAM, 1.0, 1.0)], [(HISTOGRAM, 3.0, 0.5)], {"m.max": 3.0, "m.count": 0.3}),
    ],
)
def test_merging_a_context_held_under_another_type_feeds_the_first_type(held, shipped, expected):
    """spec §6.4 across processes: the metric the flushing process holds decides the type,
    and the shipped metric's samples are given to it."""
    mine, other = Aggregator(), Aggregator()
    for kind, value, rate in held:
        mine.add(ctx("m"), kind, value, rate, 1001)
    for kind, value, rate in shipped:
        other.add(ctx("m"), kind, value, rate, 1002)
    mine.merge(other.export())
    series = {s.name: s.points[0][1] for s in mine.flush(1010).series}
    assert {name: series[name] for name in expected} == pytest.approx(expected)


def _reference_histogram_series(values, weights, aggregates, percent_ranks):
    """Spec §6.5 written out plainly: sort (value, weight) pairs, walk cumulative weights."""
    import math

    pairs = sorted(zip(values, weights, strict=False))
    count = math.fsum(w for _, w in pairs)
    total = math.fsum(v * w for v, w in pairs)

    def rank(target):
        cumulative = 0.0
        for value, weight in pairs:
            cumulative += weight
            if cumulative > target:
                return value
        return pairs[-1][0]

    out = {
        "max": pairs[-1][0],
        "min": pairs[0][0],
        "median": rank((count - 1) / 2),
        "avg": total / count,
        "sum": total,
        "count": count / 10,
    }
    return [out[a] for a in aggregates] + [rank((p * count - 1) / 100) for p in percent_ranks]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([1.0, 1.0, 0.5, 0.1, 0.3])),
        min_size=1,
        max_size=60,
    ),
    st.lists(st.sampled_from([0.5, 0.75, 0.9, 0.95, 0.99, 0.01, 1.0]), max_size=3, unique=True),
)
def test_histogram_statistics_match_a_plain_sorted_walk(samples, percentiles):
    """The flush's histogram maths (fsum, one-weight shortcut, bisect on cumulative weights)
    gives exactly the values of the plain algorithm, with and without sample rates."""
    aggregates = ("max", "min", "median", "avg", "sum", "count")
    agg = Aggregator(histogram_aggregates=aggregates, histogram_percentiles=percentiles)
    for value, rate in samples:
        agg.add(ctx("h"), HISTOGRAM, value, rate, 1001)
    got = [s.points[0][1] for s in agg.flush(1010).series]
    weights = [1.0 / rate for _, rate in samples]
    assert got == _reference_histogram_series([v for v, _ in samples], weights, aggregates, agg.percent_ranks)


def test_a_flush_yields_more_often_for_histograms_with_many_samples():
    """A histogram's sort dominates its flush: thousands of samples count as many contexts of work."""
    from twisted_statsd.core.aggregator import FLUSH_STEP
    from twisted_statsd.core.model import FlushBatch

    agg = Aggregator()
    for i in range(4):
        for v in range(FLUSH_STEP * 100):
            agg.add(ctx(f"h{i}"), HISTOGRAM, v, 1.0, 1001)
    steps = list(agg.flush_steps(1010, FlushBatch(timestamp=1010)))
    assert len(steps) >= 3  # a yield after every big histogram, though there are fewer than FLUSH_STEP contexts


def test_zero_fill_is_bounded_and_keeps_the_most_recently_active_counters():
    """Past ``zero_fill_limit`` idle counters, the most recently active get the zero point (README)."""
    agg = Aggregator(expiry_seconds=300, zero_fill_limit=1)
    early, late = ctx("early"), ctx("late")
    agg.add(early, COUNTER, 1, 1.0, 1001)  # registered first
    agg.add(late, COUNTER, 1, 1.0, 1002)
    agg.flush(1010)
    agg.add(early, COUNTER, 1, 1.0, 1011)  # active again, ``late`` idle: ``late`` gets its zero
    out = by_name(agg.flush(1020))
    assert out["early"].points == [(1010, 0.1)]
    assert out["late"].points == [(1010, 0.0)]
    assert agg.zero_fill_skipped == 0
    out = by_name(agg.flush(1030))  # both idle now, room for one: the one seen last
    assert list(out) == ["early"]
    assert out["early"].points == [(1020, 0.0)]
    assert agg.zero_fill_skipped == 1


def test_a_flush_of_two_buckets_zero_fills_a_counter_only_after_it_was_first_seen():
    """Spec §6.5: an idle counter gets a zero point; a counter first seen in the later of two due
    buckets (the first flush with flush_interval 15 s) got one in the earlier bucket too."""
    agg = Aggregator(expiry_seconds=300)
    old, new = ctx("old"), ctx("new")
    agg.add(old, COUNTER, 1, 1.0, 991)
    agg.flush(1000)
    agg.add(ctx("other"), GAUGE, 1, 1.0, 1005)  # bucket 1000 exists (the server's own gauges, say)
    agg.add(old, COUNTER, 1, 1.0, 1012)
    agg.add(new, COUNTER, 1, 1.0, 1012)
    out = by_name(agg.flush(1021))  # buckets 1000 and 1010 are due
    assert out["new"].points == [(1010, 0.1)]
    assert out["old"].points == [(1000, 0.0), (1010, 0.1)]


def test_zero_fill_limit_counts_every_counter_left_out_and_0_lifts_it():
    bounded, unbounded = Aggregator(zero_fill_limit=3), Aggregator(zero_fill_limit=0)
    for agg in (bounded, unbounded):
        for i in range(10):
            agg.add(ctx(f"c{i}"), COUNTER, 1, 1.0, 1001)
        agg.flush(1010)
    assert len(bounded.flush(1020).series) == 3
    assert bounded.zero_fill_skipped == 7
    assert len(unbounded.flush(1020).series) == 10
    assert unbounded.zero_fill_skipped == 0
