"""The sinks' fast paths for the common series give what their general paths give: jsonl and datadog
series lines are the JSON encoder's, byte for byte; prometheus takes a one-point counter as any counter."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_statsd.core.model import SERIES_GAUGE, SERIES_RATE, FlushBatch, Series
from twisted_statsd.sinks import _datadog_payloads, jsonl
from twisted_statsd.sinks.prometheus import PrometheusState

text = st.text(max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
series = st.builds(
    Series,
    text,
    st.sampled_from((SERIES_GAUGE, SERIES_RATE)),
    st.lists(st.tuples(st.integers(0, 2**40), finite), min_size=1, max_size=3),
    st.lists(text, max_size=5).map(tuple),
    text,
    st.sampled_from((10, 15)),
)


def jsonl_reference(s: Series) -> str:
    return json.JSONEncoder(allow_nan=False).encode(jsonl.series_object(s))


def datadog_reference(s: Series) -> bytes:
    return json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode(_datadog_payloads.series_object(s)).encode()


@given(series)
def test_jsonl_series_lines_are_the_encoders(s):
    assert jsonl.series_line(s) == jsonl_reference(s)


@given(series)
def test_datadog_series_items_are_the_encoders(s):
    assert _datadog_payloads.series_item(s) == datadog_reference(s)


ODD = [
    Series('na"me\\é\n', SERIES_GAUGE, [(1, -0.0), (11, 1e-310), (21, 1.7976931348623157e308)], ("k:v", "ü"), "", 10),
    Series("int value", SERIES_GAUGE, [(1, 5)], ("a",), "h", 10),  # a hand-built series: the encoder's way
    Series("float timestamp", SERIES_GAUGE, [(1.5, 5.0)], ("a",), "h", 10),
    Series("bool value", SERIES_GAUGE, [(1, True)], (), "h", 10),
    Series("list tags", SERIES_RATE, [(1, 1.0)], ["b", "a"], "h", 10),  # type: ignore[arg-type]
    Series("no points", SERIES_RATE, [], (), "h", 10),
]


@pytest.mark.parametrize("s", ODD, ids=lambda s: s.name)
def test_odd_series_are_encoded_as_the_encoder_does(s):
    assert jsonl.series_line(s) == jsonl_reference(s)
    assert _datadog_payloads.series_item(s) == datadog_reference(s)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_point_json_cannot_carry_raises_as_the_encoder_does(value):
    s = Series("x", SERIES_GAUGE, [(1, 1.0), (11, value)], (), "h", 10)
    with pytest.raises(ValueError):
        jsonl.series_line(s)
    with pytest.raises(ValueError):
        _datadog_payloads.series_item(s)


@pytest.mark.parametrize(
    ("value", "total", "dropped"),
    [
        (0.3, 3.0, {}),
        (0.0, 0.0, {}),
        (-0.1, None, {"negative_counter": 1}),
        (float("nan"), None, {"non_finite": 1}),
        (float("inf"), None, {"non_finite": 1}),
    ],
)
def test_prometheus_takes_a_one_point_counter_as_any_counter(value, total, dropped):
    """One point per counter series is the common case, with a path of its own: same results."""
    state = PrometheusState()
    batch = FlushBatch(timestamp=20, series=[Series("c", SERIES_RATE, [(10, value)], ("k:v",), "h", 10)])
    out = state.update(batch, 20.0)
    assert out.dropped == dropped
    assert out.accepted == (0 if total is None else 1)
    page = state.render().decode()
    if total is None:
        assert "c_total{" not in page
    else:
        assert f'c_total{{host="h",k="v"}} {total!r}\n' in page
