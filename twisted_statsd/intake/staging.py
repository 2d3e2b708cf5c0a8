"""Staging: the samples the pipeline holds, to hand to the aggregator in one batch.

Two kinds, all received in the bucket open at the time:

* raw values by :class:`~twisted_statsd.intake.shapes.Shape`: lines of learnt
  shapes, appended with C-level calls, so a staged batch costs no Python
  bytecode per line; they are converted when folded, a counter's values into
  one run (one ``sum``);
* runs: the converted values of lines taken one by one, in arrival order.

Between two folds a context's samples are all of one kind: a context leaves
the bulk path (its lines go one at a time) only after a fold; it comes back
to it only when the shape cache starts over or rotates, after a fold too; and
the pipeline folds before it stops staging values by shape.  So handing the
runs over before the values by shape keeps every context's arrival order.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

from twisted_statsd.core.aggregator import Route, Run
from twisted_statsd.core.enrich import Target
from twisted_statsd.intake.shapes import Shape

_append = list.append


class Staging:
    """Staged samples and when they arrived; :meth:`take` empties it."""

    __slots__ = ("kept", "latest", "lines", "opened", "runs", "values")

    def __init__(self) -> None:
        self.values: defaultdict[Shape, list[bytes]] = defaultdict(list)
        self.runs: list[Run] = []
        self.kept = 0  # samples in ``runs``, distribution copies aside
        self.lines = 0  # lines received since the last take
        self.opened = 0.0  # when the first of them arrived
        self.latest = 0.0  # when the latest of them arrived

    def __bool__(self) -> bool:
        return bool(self.runs or self.values)

    def note(self, lines: int, now: float) -> None:
        """Count ``lines`` received at ``now``."""
        if not self.lines:
            self.opened = now
        self.lines += lines
        self.latest = now

    def stage(self, shapes: list[Shape], raws: Iterable[bytes]) -> None:
        """Append each raw value to its shape's values, with C-level calls only."""
        deque(map(_append, map(self.values.__getitem__, shapes), raws), 0)

    def add_run(self, route: Route, values: Sequence) -> None:
        """Queue the converted values of one route."""
        if values:
            self.runs.append((route, values))
            self.kept += len(values)

    def add_singles(self, routes: list[Shape], values: list) -> None:
        """Queue one run of one value per route, in order, with C-level calls only."""
        self.runs.extend(zip(routes, zip(values), strict=True))
        self.kept += len(values)

    def add_target_run(self, target: Target, values: Sequence) -> None:
        """Queue the converted values of a line that has no shape, under a route of its own."""
        self.add_run(Route(target.context, target.type, target.rate, target.copy), values)

    def take(self) -> tuple[list[Run], int]:
        """The runs and how many samples they hold; staging starts empty.

        Raw values left by shape are dropped: the caller converts them into
        runs first.  The containers are emptied in place, so a loop holding
        them goes on staging into them.
        """
        taken = self.runs.copy(), self.kept
        self.values.clear()
        self.runs.clear()
        self.kept = self.lines = 0
        return taken
