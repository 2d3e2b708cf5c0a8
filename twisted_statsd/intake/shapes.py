"""The shape cache: what the pipeline learnt about each metric line shape.

A line's shape is the line with its value cut out: its name, ``:|`` and what
follows the value, prefixed with ``\\n<origin>\\n`` for packets whose sender's
container was detected.  Everything that decides where a line's samples go is
in its shape, so the pipeline parses and enriches a shape once and keeps the
verdict here, under one of three headings:

* a :class:`Shape`: where the line's values go; its lines take the bulk path;
* a refusal (the block list, a counter with sample rate 0): each line is
  counted as dropped;
* a mixed shape: the :class:`Shape` of a context seen under two metric types.
  Its lines go one at a time, in order, so that the first type in a bucket
  decides (spec §6.4) whatever values are staged.

Shapes of one context that may share a metric share one :class:`Shape` (every
gauge shape of a context, and shapes of one type and rate), so that values
staged under two tag orders keep their arrival order.

Bounded: past ``size`` keys everything is forgotten (counted as
``shape_cache_resets``).  Two generations: :meth:`ShapeCache.rotate` makes the
current one the previous one, and a shape missing from the current generation
is taken back from the previous one, so a shape unseen for a whole generation
is dropped.  ``before_change`` is called before shapes are moved off the bulk
path or forgotten, so that values staged under them are folded first.

A context's first shape in a generation is checked against the metric its
context already has in the open bucket (``held``): after a rotation or a
reset, nothing of it is staged, and the aggregator knows its first type.

All of that bookkeeping serves staging, which groups values by shape.  Once
the pipeline stops staging for the rest of a generation (``in_order``, set
when the cache holds many shapes), every value reaches the aggregator in
arrival order, which applies the first-type rule itself: new shapes are then
cached as they are, at one map entry per shape, not two.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted_statsd.core.aggregator import METRIC_CLASSES, Route
from twisted_statsd.core.enrich import Target
from twisted_statsd.core.model import DISTRIBUTION, GAUGE, SET, Context
from twisted_statsd.telemetry import Telemetry


class Shape(Route):
    """Where the values of a learnt line shape go: the aggregator's route of its context, type and rate.

    ``key`` is the cache key the shape was learnt under, kept to rebuild a line
    for error reports; ``renew`` says the shape's decisions hold for one
    generation only (tag values are limited).
    """

    __slots__ = ("key", "renew")

    def __init__(self, target: Target, key: bytes, *, renew: bool = False):
        super().__init__(target.context, target.type, target.rate, target.copy)
        self.key = key
        # Learnt again in each generation rather than taken back from the previous one.
        self.renew = renew

    def line(self, raw: bytes) -> bytes:
        """The line ``raw`` arrived in (the key without a detected origin's prefix, the value put back)."""
        key = self.key[self.key.rfind(b"\n") + 1 :]
        return key.replace(b":|", b":" + raw + b"|", 1)

    def shares(self, other: Shape) -> bool:
        """Whether ``other``'s values may be kept with this shape's: same type, and same rate where it matters."""
        return other.type == self.type and (self.type in (GAUGE, SET) or other.rate == self.rate)


class ShapeCache:
    """Line shape keys -> :class:`Shape`, refusal reason, or mixed :class:`Shape`.

    Invariants: a key is under at most one heading.  ``_first`` maps the key of
    every context with a bulk shape (distributions aside) to the first shape
    learnt for it, and ``_more_keys`` its other keys, kept only for contexts
    with several shapes: what leaves the bulk path when the context turns out
    mixed, found without a scan.  ``get`` is the current generation's lookup.
    """

    def __init__(
        self,
        size: int,
        telemetry: Telemetry,
        before_change: Callable[[], None],
        held: Callable[[Context], type | None],
    ):
        self.size = size
        self.telemetry = telemetry
        self.before_change = before_change
        self.held = held
        self._shapes: dict[bytes, Shape] = {}
        self._previous: dict[bytes, Shape] = {}
        self._refused: dict[bytes, str] = {}
        self._mixed: dict[bytes, Shape] = {}
        self._first: dict[int, Shape] = {}
        self._more_keys: dict[int, list[bytes]] = {}
        self._mixed_contexts: set[int] = set()
        self.in_order = False
        self.get = self._shapes.get

    def __len__(self) -> int:
        return len(self._shapes)

    def keys(self) -> set[bytes]:
        """Every shape key held, in either generation and under any heading (for inspection)."""
        return {*self._shapes, *self._previous, *self._refused, *self._mixed}

    def lookup(self, keys: list[bytes]) -> list[Shape | None]:
        """The bulk shape of each key, None where there is none."""
        return list(map(self._shapes.get, keys))

    def refusal(self, key: bytes) -> str | None:
        return self._refused.get(key)

    def mixed(self, key: bytes) -> Shape | None:
        return self._mixed.get(key)

    def known(self, key: bytes) -> bool:
        """Whether ``key`` has a verdict off the bulk path (refused or mixed)."""
        return key in self._refused or key in self._mixed

    def refuse(self, key: bytes, reason: str) -> None:
        self._remember()
        self._refused[key] = reason

    def promote(self, key: bytes, still: Callable[[Shape], bool] | None = None) -> Shape | None:
        """Take ``key``'s shape back from the previous generation; None if it has none or is now mixed.

        With ``still``, a shape it rejects is dropped instead (None): the line is learnt anew.
        """
        shape = self._previous.pop(key, None)
        if shape is None or (still is not None and not still(shape)):
            return None
        return self.add(key, shape)

    def add(self, key: bytes, shape: Shape) -> Shape | None:
        """Cache ``shape`` under ``key``; returns the shape its values go to, None when the line goes alone.

        That is ``shape``, or the shape of the same context it shares; None
        when its context is (now) seen under two metric types.
        """
        self._remember()
        # Distributions never share an object with another type (spec §6.4).
        if not self.in_order and shape.type != DISTRIBUTION:
            context_key = shape.context.key
            first = self._first.get(context_key)
            if context_key in self._mixed_contexts:
                self._mixed[key] = shape
                return None
            if first is None:
                held = self.held(shape.context)
                if held is not None and held is not METRIC_CLASSES[shape.type]:
                    self._mixed_contexts.add(context_key)
                    self._mixed[key] = shape
                    return None
                self._first[context_key] = shape
                if key != shape.key:  # a shape taken back from the previous generation under another key
                    self._more_keys.setdefault(context_key, []).append(key)
            elif METRIC_CLASSES[first.type] is not METRIC_CLASSES[shape.type]:
                self._mix(context_key, first)
                self._mixed[key] = shape
                return None
            else:
                self._more_keys.setdefault(context_key, []).append(key)
                if first.shares(shape):
                    shape = first
        self._shapes[key] = shape
        return shape

    def rotate(self) -> None:
        """Start a new generation; shapes unseen since the last rotation are dropped."""
        self.before_change()
        self._previous = self._shapes
        self._shapes = {}
        self.get = self._shapes.get
        self._forget_verdicts()

    def clear(self) -> None:
        """Forget every shape, e.g. after the enricher's mapper was replaced."""
        self.before_change()
        self._shapes.clear()
        self._previous.clear()
        self._forget_verdicts()

    def forget(self, stale: Callable[[Shape], bool]) -> None:
        """Drop this generation's shapes that ``stale`` picks: their lines are learnt anew.

        The shapes of the previous generation are left: taking one back is checked anyway.
        """
        self.before_change()
        gone = set()
        for table in (self._shapes, self._mixed):
            for key, shape in list(table.items()):
                if stale(shape):
                    del table[key]
                    gone.add(shape.context.key)
        for context_key in gone:
            self._first.pop(context_key, None)
            self._more_keys.pop(context_key, None)
            self._mixed_contexts.discard(context_key)

    def _forget_verdicts(self) -> None:
        self._refused = {}
        self._mixed = {}
        self._first = {}
        self._more_keys = {}
        self._mixed_contexts = set()
        self.in_order = False

    def _mix(self, context_key: int, first: Shape) -> None:
        """A context arrived under a second metric type: from now on its lines go one at a time, in order."""
        self.before_change()
        self._mixed_contexts.add(context_key)
        del self._first[context_key]
        for key in [first.key, *self._more_keys.pop(context_key, ())]:
            shape = self._shapes.pop(key, None)
            if shape is not None:
                self._mixed[key] = shape

    def _remember(self) -> None:
        """Make room for one more verdict: past ``size`` of them, start over."""
        if len(self._shapes) + len(self._refused) + len(self._mixed) >= self.size:
            self.clear()
            self.telemetry.incr("shape_cache_resets")
