"""The distribution sketch: a mergeable, log-bucketed quantile sketch (spec §6.6).

It reproduces the Datadog agent's sketch (``pkg/util/quantile``) so that the bins
we send are the bins the agent would send for the same samples: relative
accuracy 1/128, keys ``round_half_even(log_γ|v|) + bias`` mirrored for negative
values, a zero bin for magnitudes below about 1e-9, and at most 4096 bins, the
lowest ones collapsing upwards.  Exact count, sum, min, max and average ride
along.  Pure Python and clock-free: the aggregator owns one sketch per
(bucket, context) and calls :meth:`Sketch.add` once per sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import repeat
from math import floor, inf, log, log1p
from operator import mul, truediv

__all__ = [
    "BIAS",
    "BIN_LIMIT",
    "EPSILON",
    "GAMMA",
    "INF_KEY",
    "LN_GAMMA",
    "MAX_BIN_COUNT",
    "MAX_KEY",
    "MIN_VALUE",
    "Sketch",
    "key_of",
    "value_of",
]

# Agent defaults (config.go: defaultEps, defaultMin, defaultBinLimit).
EPSILON = 1.0 / 128.0
GAMMA = 1.0 + 2.0 * EPSILON
# log1p, as the agent does: it is the more accurate log of a number near 1.
LN_GAMMA = log1p(2.0 * EPSILON)
# emin is the power of γ just below 1e-9; the bias shifts it to key 1, so every
# magnitude the sketch can tell apart from zero has a positive key.
_EMIN = floor(log(1e-9) / LN_GAMMA)
BIAS = 1 - _EMIN
# The smallest magnitude with a non-zero key (γ^emin ≈ 9.94e-10): the agent
# compares against this, not against 1e-9 itself.
MIN_VALUE = GAMMA**_EMIN
# Keys are int16 in the agent; the two extreme values stand for ±Inf and catch
# every finite magnitude whose key would not fit (above about 1e211).
INF_KEY = (1 << 15) - 1
MAX_KEY = INF_KEY - 1
BIN_LIMIT = 4096
# A bin counts in a uint32; bins() splits larger counts as the agent does.
MAX_BIN_COUNT = (1 << 32) - 1

# Below this magnitude every key fits under MAX_KEY (γ^(MAX_KEY - BIAS) is about 1e211):
# add_many takes its batched path only for values in [MIN_VALUE, _BATCH_MAX).
_BATCH_MAX = 1e200

# New keys beyond BIN_LIMIT are tolerated up to this many before collapsing, so
# a stream of ever-new keys pays for one sort per _TRIM_SLACK keys, not one
# scan per key.  Collapsing late gives the same bins as collapsing early (see
# Sketch._trim), and every read collapses first.
_TRIM_SLACK = 512
_TRIM_AT = BIN_LIMIT + _TRIM_SLACK


def sketch_weight(rate: float) -> float:
    """A distribution sample's weight: ``1 / rate``, and 1 for a rate outside (0, 1] (spec §1.4)."""
    return 1.0 / rate if 0.0 < rate <= 1.0 else 1.0


def key_of(value: float) -> int:
    """Return the bin key of ``value``, as the agent's ``Config.key`` does.

    Raises ``ValueError`` for NaN and ``OverflowError`` for ±Inf; the aggregator
    drops both before they get here (spec §6.5).
    """
    magnitude = -value if value < 0.0 else value
    if magnitude < MIN_VALUE:
        return 0
    # round() on a float rounds half to even, like Go's math.RoundToEven, so
    # that key_of(value_of(k)) == k.  The agent also clamps keys below 1 to 1,
    # which cannot happen once magnitude >= MIN_VALUE.
    k = round(log(magnitude) / LN_GAMMA) + BIAS
    if k > MAX_KEY:
        k = INF_KEY
    return -k if value < 0.0 else k


def value_of(key: int) -> float:
    """Return the value that stands for a bin: γ^(key - bias), mirrored for negative keys.

    It is the log-midpoint of the bin, so it is within 1/128 of every value the
    bin holds.  The agent calls it ``f64``.
    """
    if key < 0:
        return -value_of(-key)
    if key == 0:
        return 0.0
    if key == INF_KEY:
        return inf
    return GAMMA ** (key - BIAS)


def _weight(n: float) -> tuple[float, int]:
    """The weight a sample adds to count and sum, and the count it adds to its bin.

    A weight past one bin's capacity (a rate such as 1e-300) would make bins()
    split into millions of entries: it is capped there.  A weight that no
    valid rate gives counts once.
    """
    if 1.0 < n < inf:
        n = min(n, float(MAX_BIN_COUNT))
        return n, int(n)
    return 1.0, 1


class Sketch:
    """A distribution sketch with exact basic statistics.

    Sample-rate weighting follows the agent's ``Agent.Insert``: ``add(v, n)``
    with ``n = 1/rate`` adds the float ``n`` to count and sum and the truncated
    ``int(n)`` to the value's bin.  The agent resets a rate outside (0, 1] to 1,
    so ``n`` is never below 1; any ``n`` that is not a finite number >= 1 is
    likewise taken as 1, and a bin never gains a zero count.

    Unlike the agent, ``count`` is the float total of the weights, as the spec
    asks (the agent truncates each weight to an int64 in its summary), and
    ``avg`` is ``sum / count``.
    """

    # Invariants:
    # * _bins maps key -> count > 0; sum(_bins.values()) is the bin total.
    # * Every count sits at max(its own key, the lowest kept key), where the
    #   kept keys are the BIN_LIMIT highest keys seen: that is the agent's
    #   trimLeft, and it depends only on the keys seen, not on when trimming
    #   ran.  Between reads _bins may hold up to _TRIM_AT keys.
    # * _floor is the lowest kept key once a trim has happened, else None; it
    #   only rises, and _bins always holds it.
    # * _min/_max are +inf/-inf while the sketch is empty.
    __slots__ = ("_bins", "_count", "_floor", "_max", "_min", "_sum")

    def __init__(self) -> None:
        self._bins: dict[int, int] = {}
        self._floor: int | None = None
        self._count = 0.0
        self._sum = 0.0
        self._min = inf
        self._max = -inf

    def add(self, value: float, n: float = 1.0) -> None:
        """Count ``value`` with weight ``n`` (``1/rate``).

        ``value`` must be finite: NaN raises ``ValueError`` and ±Inf raises
        ``OverflowError``, leaving the sketch unchanged.
        """
        # key_of, inlined: this is the per-sample hot path.
        magnitude = -value if value < 0.0 else value
        if magnitude < MIN_VALUE:
            k = 0
        else:
            k = round(log(magnitude) / LN_GAMMA) + BIAS
            if k > MAX_KEY:
                k = INF_KEY
            if value < 0.0:
                k = -k
        if n == 1.0:
            c = 1
            self._count += 1.0
            self._sum += value
        else:
            n, c = _weight(n)
            self._count += n
            self._sum += value * n
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        bins = self._bins
        old = bins.get(k)
        if old is not None:
            bins[k] = old + c
        else:
            self._new_bin(k, c)

    def add_many(self, values: Sequence[float], n: float = 1.0) -> None:
        """Count every one of ``values`` with weight ``n``; the same bins and totals as ``add`` one by one.

        Positive values of ordinary size (the common case) take their keys with
        C-level maps and update each distinct bin once; a batch holding zero,
        negative or huge values goes one value at a time.
        """
        if len(values) < 8:  # too few for the batched path's set-up to pay off
            for value in values:
                self.add(value, n)
            return
        low, high = min(values), max(values)
        if not (MIN_VALUE <= low and high < _BATCH_MAX):
            for value in values:
                self.add(value, n)
            return
        if n == 1.0:
            c = 1
            self._count += len(values)  # exact: counts stay far below 2**53
            self._sum = sum(values, self._sum)
        else:
            n, c = _weight(n)
            self._count = sum(repeat(n, len(values)), self._count)
            self._sum = sum(map(mul, values, repeat(n)), self._sum)
        if low < self._min:
            self._min = low
        if high > self._max:
            self._max = high
        bins = self._bins
        for k, times in Counter(map(round, map(truediv, map(log, values), repeat(LN_GAMMA)))).items():
            k += BIAS
            old = bins.get(k)
            if old is not None:
                bins[k] = old + c * times
            else:
                self._new_bin(k, c * times)

    def _new_bin(self, k: int, c: int) -> None:
        bins = self._bins
        lowest = self._floor
        if lowest is not None and k < lowest:
            # Already below the kept keys: it would collapse into the floor.
            bins[lowest] += c
            return
        bins[k] = c
        if len(bins) > _TRIM_AT:
            self._trim()

    def _trim(self) -> None:
        """Collapse the lowest bins into the lowest kept one, as the agent's trimLeft does."""
        bins = self._bins
        excess = len(bins) - BIN_LIMIT
        if excess <= 0:
            return
        keys = sorted(bins)
        lowest = keys[excess]
        moved = 0
        for k in keys[:excess]:
            moved += bins.pop(k)
        bins[lowest] += moved
        self._floor = lowest

    def add_run(self, values: Sequence[float], rate: float, now: float) -> None:
        """Count a run of values sampled at ``rate``, as the aggregator hands runs to every metric."""
        self.add_many(values, sketch_weight(rate))

    def merge(self, other: Sketch) -> None:
        """Add ``other``'s samples to this sketch, leaving ``other`` unchanged.

        The bins come out exactly as if both streams had been added here.
        """
        if other._count == 0.0:
            return
        self._count += other._count
        self._sum += other._sum
        if other._min < self._min:
            self._min = other._min
        if other._max > self._max:
            self._max = other._max
        bins = self._bins
        get = bins.get
        for k, c in list(other._bins.items()):
            bins[k] = get(k, 0) + c
        self._trim()

    def copy(self) -> Sketch:
        """Return an independent copy."""
        dup = Sketch.__new__(Sketch)
        dup._bins = self._bins.copy()
        dup._floor = self._floor
        dup._count = self._count
        dup._sum = self._sum
        dup._min = self._min
        dup._max = self._max
        return dup

    def quantile(self, q: float) -> float:
        """Return the value at quantile ``q`` in [0, 1], within 1/128 of the exact one.

        As in the agent, the wanted rank is ``round_half_even(q * (N - 1))``
        over the N bin counts, and the answer comes from the first bin whose
        cumulative count exceeds it; q <= 0 gives min, q >= 1 gives max, and an
        empty sketch gives 0.  The agent then interpolates between γ^k and
        γ^(k+1), which can miss by over 2%; this returns the bin's own value
        γ^k, clamped to [min, max], which keeps the 1/128 bound.
        """
        if self._count == 0.0:
            return 0.0
        if q <= 0.0:
            return self._min
        if q >= 1.0:
            return self._max
        self._trim()
        bins = self._bins
        rank = round(q * (sum(bins.values()) - 1))
        seen = 0
        for k in sorted(bins):
            seen += bins[k]
            if seen > rank:
                v = value_of(k)
                if v < self._min:
                    return self._min
                if v > self._max:
                    return self._max
                return v
        return self._max

    def bins(self) -> tuple[list[int], list[int]]:
        """Return the keys in ascending order and their counts, ready for a sketch payload.

        A count above ``MAX_BIN_COUNT`` is split as the agent's appendSafe
        does: the remainder first, then full bins, all under the same key.
        """
        self._trim()
        bins = self._bins
        keys: list[int] = []
        counts: list[int] = []
        for k in sorted(bins):
            c = bins[k]
            if c <= MAX_BIN_COUNT:
                keys.append(k)
                counts.append(c)
                continue
            full, rest = divmod(c, MAX_BIN_COUNT)
            if rest:
                keys.append(k)
                counts.append(rest)
            keys.extend([k] * full)
            counts.extend([MAX_BIN_COUNT] * full)
        return keys, counts

    @property
    def empty(self) -> bool:
        """Whether nothing has been added; the aggregator skips empty sketches."""
        return self._count == 0.0

    @property
    def count(self) -> float:
        """The total weight added: the number of samples, each counted ``n`` times."""
        return self._count

    @property
    def sum(self) -> float:
        """The weighted sum of the values."""
        return self._sum

    @property
    def min(self) -> float:
        """The smallest value added, or 0 when empty."""
        return self._min if self._count else 0.0

    @property
    def max(self) -> float:
        """The largest value added, or 0 when empty."""
        return self._max if self._count else 0.0

    @property
    def avg(self) -> float:
        """The weighted mean, or 0 when empty."""
        return self._sum / self._count if self._count else 0.0

    def __repr__(self) -> str:
        return (
            f"<Sketch count={self.count!r} sum={self.sum!r} min={self.min!r} max={self.max!r} bins={len(self._bins)}>"
        )
