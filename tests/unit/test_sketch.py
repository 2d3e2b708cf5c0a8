"""Unit tests for the distribution sketch (spec §1.4, §6.6).

Key vectors come from the Datadog agent's own tests (pkg/util/quantile,
config_test.go and agent_test.go).  The exact quantile the sketch is held to is
the agent's nearest rank: the sorted value at ``round_half_even(q * (N - 1))``.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_statsd.core.sketch import (
    BIAS,
    BIN_LIMIT,
    EPSILON,
    GAMMA,
    INF_KEY,
    LN_GAMMA,
    MAX_BIN_COUNT,
    MAX_KEY,
    MIN_VALUE,
    Sketch,
    key_of,
    value_of,
)

QUANTILES = [i / 100 for i in range(101)] + [0.125, 0.375, 0.995, 0.999]


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def within_accuracy(estimate: float, exact: float) -> bool:
    """Relative error at most 1/128; magnitudes in the zero bin may be off by MIN_VALUE."""
    slack = MIN_VALUE if abs(exact) < MIN_VALUE else 0.0
    return abs(estimate - exact) <= EPSILON * abs(exact) + slack


def sketch_of(values, n: float = 1.0) -> Sketch:
    s = Sketch()
    for v in values:
        s.add(v, n)
    return s


def assert_accurate(s: Sketch, values: list[float]) -> None:
    for q in QUANTILES:
        estimate, exact = s.quantile(q), exact_quantile(values, q)
        assert within_accuracy(estimate, exact), (q, estimate, exact)


# --- constants and keys -----------------------------------------------------------


def test_constants_match_the_agent():
    """ε = 1/128, γ = 1 + 2ε, ln γ by log1p, 4096 bins, int16 keys."""
    assert EPSILON == 1 / 128
    assert GAMMA == 1.015625
    assert LN_GAMMA == math.log1p(1 / 64)
    assert BIAS == 1338  # 1 - floor(log_γ(1e-9)) = 1 - (-1337)
    assert BIN_LIMIT == 4096
    assert (MAX_KEY, INF_KEY) == (32766, 32767)
    assert MAX_BIN_COUNT == 2**32 - 1


def test_key_of_one_is_the_bias():
    assert key_of(1.0) == BIAS == 1338
    assert value_of(BIAS) == 1.0


def test_keys_match_agent_vectors():
    """Keys the agent's tests expect for 10, -10 and 1000."""
    assert key_of(10.0) == 1487
    assert key_of(-10.0) == -1487
    assert key_of(1000.0) == 1784


def test_magnitudes_below_min_value_have_the_zero_key():
    """The zero bin holds every magnitude below γ^-1337 ≈ 9.94e-10, of either sign."""
    assert 9.9e-10 < MIN_VALUE <= 1e-9
    for v in (0.0, -0.0, 1e-10, -1e-10, 5e-324, math.nextafter(MIN_VALUE, 0.0)):
        assert key_of(v) == 0
    assert value_of(0) == 0.0


def test_smallest_keys_match_agent_vectors():
    """From the agent's config_test: key(min) = key(min + 1ulp) = 1, key(min·γ) = 2."""
    assert key_of(MIN_VALUE) == 1
    assert key_of(math.nextafter(MIN_VALUE, 1.0)) == 1
    assert key_of(MIN_VALUE * GAMMA) == 2
    assert key_of(-MIN_VALUE) == -1


def test_largest_keys_saturate_at_inf_key():
    assert key_of(value_of(MAX_KEY)) == MAX_KEY
    assert key_of(1e300) == INF_KEY
    assert key_of(-1e300) == -INF_KEY
    assert value_of(INF_KEY) == math.inf
    assert value_of(-INF_KEY) == -math.inf


def test_key_of_value_of_round_trips_every_key():
    """round-half-even makes every bin's own value land in that bin."""
    assert all(key_of(value_of(k)) == k for k in range(-MAX_KEY, MAX_KEY + 1))


def test_negative_values_mirror_positive_keys():
    for v in (1e-9, 0.5, 1.0, 3.7, 1e6, 1e200):
        assert key_of(-v) == -key_of(v)


@pytest.mark.parametrize("bad, error", [(math.nan, ValueError), (math.inf, OverflowError), (-math.inf, OverflowError)])
def test_non_finite_values_raise_and_leave_the_sketch_unchanged(bad, error):
    s = sketch_of([1.0, 2.0])
    before = (s.count, s.sum, s.min, s.max, s.bins())
    with pytest.raises(error):
        s.add(bad)
    assert (s.count, s.sum, s.min, s.max, s.bins()) == before


# --- basic stats --------------------------------------------------------------------


def test_basic_stats_are_exact():
    s = sketch_of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.count, s.sum, s.min, s.max, s.avg) == (5.0, 15.0, 1.0, 5.0, 3.0)
    assert not s.empty


def test_empty_sketch():
    """Like the agent: zeros everywhere, and the aggregator can skip it."""
    s = Sketch()
    assert s.empty
    assert (s.count, s.sum, s.min, s.max, s.avg) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.quantile(0.5) == 0.0
    assert s.bins() == ([], [])


def test_min_and_max_of_negative_values():
    s = sketch_of([-3.0, -1.0, -2.0])
    assert (s.min, s.max, s.sum) == (-3.0, -1.0, -6.0)


# --- quantiles ----------------------------------------------------------------------


def test_quantile_extremes_are_min_and_max():
    s = sketch_of([3.3, 1.1, 2.2])
    assert s.quantile(0.0) == 1.1
    assert s.quantile(1.0) == 3.3


def test_quantile_picks_the_agents_rank_with_half_even_rounding():
    """Rank round_half_even(q·(N-1)): q=0.125 → rank 0.5 → 0, q=0.375 → rank 1.5 → 2."""
    s = sketch_of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.quantile(0.125) == 1.0
    assert s.quantile(0.25) == value_of(key_of(2.0))
    assert s.quantile(0.375) == value_of(key_of(3.0))
    assert s.quantile(0.5) == value_of(key_of(3.0))


def test_quantile_is_clamped_to_min_and_max():
    """The bin's value may lie outside the data; it is clamped."""
    v = 1.007  # its bin's value, 1.0, is below it
    assert value_of(key_of(v)) < v
    s = sketch_of([v] * 10)
    assert s.quantile(0.5) == v


def _datasets():
    rng = random.Random(20240607)
    return {
        "uniform": [rng.uniform(0.0, 1000.0) for _ in range(5000)],
        "lognormal": [rng.lognormvariate(0.0, 2.0) for _ in range(5000)],
        "negative": [-rng.uniform(1.0, 1e6) for _ in range(2000)],
        "mixed sign": [rng.uniform(-100.0, 100.0) for _ in range(3000)],
        "tiny and zero": [0.0, 1e-12, -1e-11, 1e-9, 2e-9, 1.0] * 50,
        "single value": [42.0],
        "identical values": [3.7] * 1000,
        "huge range": [10.0**e for e in range(-8, 200)] + [-(10.0**e) for e in range(-8, 200)],
    }


@pytest.mark.parametrize("name", list(_datasets()))
def test_every_quantile_within_relative_accuracy(name):
    values = _datasets()[name]
    assert_accurate(sketch_of(values), values)


def test_identical_values_give_that_value_at_every_quantile():
    s = sketch_of([3.7] * 1000)
    assert {s.quantile(q) for q in QUANTILES} == {3.7}


finite = st.floats(min_value=-1e200, max_value=1e200, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=300), st.floats(min_value=0.0, max_value=1.0))
def test_property_quantile_within_relative_accuracy(values, q):
    s = sketch_of(values)
    estimate, exact = s.quantile(q), exact_quantile(values, q)
    assert within_accuracy(estimate, exact), (estimate, exact)


@given(
    st.lists(st.tuples(finite, st.integers(min_value=1, max_value=20)), min_size=1, max_size=100),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_property_weighted_quantile_within_relative_accuracy(samples, q):
    """A value added with weight n counts as int(n) copies of it in the bins."""
    s = Sketch()
    expanded = []
    for v, n in samples:
        s.add(v, float(n))
        expanded.extend([v] * n)
    assert s.count == len(expanded)
    assert within_accuracy(s.quantile(q), exact_quantile(expanded, q))


# --- sample-rate weighting ----------------------------------------------------------


def test_rate_one_quarter_counts_four_times():
    s = Sketch()
    s.add(2.0, 1 / 0.25)
    assert s.count == 4.0
    assert s.sum == 8.0
    assert s.avg == 2.0
    assert s.bins() == ([key_of(2.0)], [4])


def test_fractional_weight_truncates_in_bins_only():
    """n = 1/0.3: the basic stats take 3.33, the bin takes int(3.33) = 3."""
    n = 1 / 0.3
    s = Sketch()
    s.add(2.0, n)
    assert s.count == n
    assert s.sum == 2.0 * n
    assert s.bins() == ([key_of(2.0)], [3])


@pytest.mark.parametrize("n", [0.5, 0.0, -4.0, math.inf, -math.inf, math.nan])
def test_weight_that_no_valid_rate_gives_counts_once(n):
    """The agent resets a rate outside (0, 1] to 1, so n < 1, Inf and NaN count once."""
    s = Sketch()
    s.add(2.0, n)
    assert (s.count, s.sum) == (1.0, 2.0)
    assert s.bins() == ([key_of(2.0)], [1])


def test_bin_counts_above_uint32_split_like_the_agent():
    """appendSafe: the remainder first, then full uint32 bins, under one key."""
    s = Sketch()
    for _ in range(3):  # one sample's weight is capped at a bin's capacity
        s.add(1.0, 4e9)
    total = 3 * 4_000_000_000
    rest = total - 2 * MAX_BIN_COUNT
    assert s.bins() == ([BIAS] * 3, [rest, MAX_BIN_COUNT, MAX_BIN_COUNT])
    assert s.count == total


# --- merge and copy -----------------------------------------------------------------


def assert_same_sketch(a: Sketch, b: Sketch) -> None:
    assert a.bins() == b.bins()
    assert (a.count, a.min, a.max) == (b.count, b.min, b.max)
    assert math.isclose(a.sum, b.sum, rel_tol=1e-9, abs_tol=1e-6 * max(1.0, abs(a.max), abs(a.min)))


@given(st.lists(st.tuples(finite, st.integers(min_value=1, max_value=5)), max_size=200), st.data())
def test_property_merge_equals_adding_all(samples, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(samples)))
    left, right, whole = Sketch(), Sketch(), Sketch()
    for i, (v, n) in enumerate(samples):
        (left if i < cut else right).add(v, float(n))
        whole.add(v, float(n))
    right_before = right.bins()
    left.merge(right)
    assert_same_sketch(left, whole)
    assert right.bins() == right_before


def test_merge_into_and_from_empty():
    s = sketch_of([1.0, 2.0])
    s.merge(Sketch())
    assert_same_sketch(s, sketch_of([1.0, 2.0]))
    e = Sketch()
    e.merge(s)
    assert_same_sketch(e, s)


def test_merge_with_itself_doubles():
    s = sketch_of([1.0, 2.0, 2.0])
    s.merge(s)
    assert_same_sketch(s, sketch_of([1.0, 2.0, 2.0] * 2))


def test_copy_is_independent():
    s = sketch_of([1.0, 2.0])
    dup = s.copy()
    dup.add(100.0)
    assert s.bins() == sketch_of([1.0, 2.0]).bins()
    assert (s.count, s.max) == (2.0, 2.0)
    assert (dup.count, dup.max) == (3.0, 100.0)


# --- the bin limit ------------------------------------------------------------------


def distinct_key_values(n: int, first_key: int = BIAS) -> list[float]:
    return [value_of(k) for k in range(first_key, first_key + n)]


@pytest.mark.parametrize("distinct", [BIN_LIMIT + 1, BIN_LIMIT + 400, BIN_LIMIT + 3000])
def test_bin_limit_collapses_the_lowest_bins_upwards(distinct):
    """Past 4096 keys the lowest ones fold into the lowest kept key (agent trimLeft)."""
    values = distinct_key_values(distinct)
    s = sketch_of(values)
    keys, counts = s.bins()
    assert len(keys) == BIN_LIMIT
    assert keys == list(range(BIAS + distinct - BIN_LIMIT, BIAS + distinct))
    assert counts[0] == distinct - BIN_LIMIT + 1
    assert set(counts[1:]) == {1}
    assert s.count == distinct
    assert s.min == values[0]
    for q in (0.5, 0.9, 0.99, 0.999, 1.0):
        assert within_accuracy(s.quantile(q), exact_quantile(values, q)), q


def test_bin_limit_collapses_most_negative_values_first():
    values = [-v for v in distinct_key_values(BIN_LIMIT + 10)]
    keys, counts = sketch_of(values).bins()
    assert keys[0] == -(BIAS + BIN_LIMIT - 1)
    assert counts[0] == 11
    assert keys[-1] == -BIAS


def test_collapse_does_not_depend_on_insertion_order():
    values = distinct_key_values(BIN_LIMIT + 2000) * 2
    forward = sketch_of(values)
    shuffled = values[:]
    random.Random(7).shuffle(shuffled)
    assert sketch_of(shuffled).bins() == forward.bins()
    assert sketch_of(reversed(values)).bins() == forward.bins()


def test_value_below_the_collapsed_range_joins_the_lowest_bin():
    s = sketch_of(distinct_key_values(BIN_LIMIT + 600))
    lowest_key, lowest_count = s.bins()[0][0], s.bins()[1][0]
    s.add(0.5)
    keys, counts = s.bins()
    assert (keys[0], counts[0]) == (lowest_key, lowest_count + 1)
    assert len(keys) == BIN_LIMIT


def test_merge_past_the_bin_limit_equals_adding_all():
    a_values = distinct_key_values(3000)
    b_values = distinct_key_values(3000, first_key=BIAS + 2000)
    a, b = sketch_of(a_values), sketch_of(b_values)
    a.merge(b)
    assert_same_sketch(a, sketch_of(a_values + b_values))
    assert len(a.bins()[0]) == BIN_LIMIT


# --- adding many values at once -------------------------------------------------------

weights = st.sampled_from([1.0, 2.0, 4.0, 2.5, 0.5, 1e12])


@given(
    st.lists(finite, max_size=50),
    st.lists(st.one_of(finite, st.floats(min_value=MIN_VALUE, max_value=1e6)), max_size=300),
    weights,
)
def test_add_many_gives_what_adding_one_by_one_gives(before, values, n):
    """add_many's batched keys and bin updates match add(), on an empty or a used sketch."""
    one_by_one, batched = sketch_of(before), sketch_of(before)
    for v in values:
        one_by_one.add(v, n)
    batched.add_many(values, n)
    assert batched.bins() == one_by_one.bins()
    assert (batched.count, batched.min, batched.max) == (one_by_one.count, one_by_one.min, one_by_one.max)
    # Python 3.12's sum() compensates rounding, so only 3.11 gives the same bits.
    assert math.isclose(batched.sum, one_by_one.sum, rel_tol=1e-9, abs_tol=1e-300)


def test_add_many_collapses_bins_past_the_limit_like_add():
    values = [1.0001**i for i in range(BIN_LIMIT * 3)]
    one_by_one, batched = sketch_of(values), Sketch()
    batched.add_many(values)
    assert batched.bins() == one_by_one.bins()
