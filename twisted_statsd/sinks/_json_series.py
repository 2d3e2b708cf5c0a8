"""A series' JSON text formatted directly, for the sinks that write one object per context.

A flush writes a series per live context, and a general JSON encoder costs
about twice what these few ``%`` formats do (``python -m benchmarks.flush_cost``).
The text is byte for byte what the sink's encoder gives for the same object;
a series holding other types than the aggregator's (int timestamps, float
values, str names, tags and host) is left to that encoder.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from twisted_statsd.core.model import Series

# The string encoder a JSONEncoder with ensure_ascii uses.
string = json.encoder.encode_basestring_ascii


class SeriesFormat(NamedTuple):
    """How one sink's encoder lays a series out.

    ``series`` is a ``str.format`` template of the name, type, points, tags,
    interval and resources (by index, so each sink keeps its encoder's key
    order); ``resources`` a ``%`` template of the host's JSON string, and
    ``no_resources`` the text for a series without a host.
    """

    point: str
    separator: str
    series: str
    resources: str
    no_resources: str


def series_text(series: Series, layout: SeriesFormat) -> str | None:
    """``series`` as JSON text laid out as ``layout`` says, or None where the encoder must write it.

    Raises ValueError for a value JSON cannot carry, as an encoder with
    ``allow_nan=False`` does.
    """
    kind, interval, host = series.type, series.interval, series.host
    if type(kind) is not int or type(interval) is not int or type(host) is not str:
        return None
    point, texts = layout.point, []
    for ts, value in series.points:
        if type(ts) is not int or type(value) is not float:
            return None
        if value - value:  # NaN or infinite
            raise ValueError("Out of range float values are not JSON compliant")
        texts.append(point % (ts, value))
    try:
        name, tags = string(series.name), layout.separator.join(map(string, series.tags))
    except TypeError:
        return None
    resources = layout.resources % string(host) if host else layout.no_resources
    return layout.series.format(name, kind, layout.separator.join(texts), tags, interval, resources)
