"""Context sharding across intake processes: which process owns a metric line.

With ``dogstatsd_workers`` above 1, every process reads its share of the
datagrams, but each line's context is held by one process only, its *owner*:
the one numbered ``crc32(shape key) % count``.  The shape key is the line
without its value (:mod:`twisted_statsd.intake.pipeline`), so every line of a
context under one tag order goes to one owner, and CRC-32 (not Python's
``hash``, which is salted per process) makes every process route alike.  A
context that reaches two owners (two tag orders, or a mapper or tag filter
that makes one context of two shapes) is still exact: the process that
flushes merges what the owners ship (:meth:`Aggregator.merge`).

The router cuts a batch with C-level calls only (``map``, ``compress``) and
hands each other owner its lines as one *frame*: the origin (a detected
container ID, or empty), a newline, and the lines joined by newlines.  Pure:
the sending is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import compress, repeat
from operator import eq, mod
from zlib import crc32

# Hands a frame of lines to the process numbered by the first argument.
Send = Callable[[int, bytes], None]


class Router:
    """Keeps the lines process ``index`` of ``count`` owns and sends the others to their owners.

    ``send`` returns nothing; lines for an owner that is gone (``lost``) are
    kept here instead, so nothing is dropped because a worker died.

    With few contexts, every process holding all of them costs less than
    sending most lines to another process (at 1,000 contexts, 2 processes
    drained a full queue 1.57 times as fast as one unsharded, 1.11 times
    sharded), so the pipeline routes only once its shape cache holds more than
    ``after_shapes`` shapes: the cardinality where it stops staging anyway.
    Either way the merge is exact; routing only decides who holds what.
    """

    def __init__(self, index: int, count: int, send: Send, after_shapes: int = 0):
        if not 0 <= index < count:
            raise ValueError(f"process {index} of {count}")
        self.index = index
        self.count = count
        self.send = send
        # Routing starts once the process has cached more line shapes than this, and then stays on.
        self.after_shapes = after_shapes
        self.active = after_shapes == 0
        self.lost: set[int] = set()
        # Lines handed to other owners, for telemetry.
        self.forwarded = 0

    def route(self, keys: list[bytes], lines: list[bytes], origin: bytes | None) -> list[bool] | None:
        """Send the lines others own; a selector of the lines kept here, or None when all are.

        ``keys`` are the lines' shape keys, one per line.
        """
        owners = list(map(mod, map(crc32, keys), repeat(self.count)))
        mine = list(map(eq, owners, repeat(self.index)))
        if all(mine):
            return None
        prefix = (origin or b"") + b"\n"
        for owner in range(self.count):
            if owner == self.index or owner in self.lost:
                continue
            theirs = list(compress(lines, map(eq, owners, repeat(owner))))
            if theirs:
                self.send(owner, prefix + b"\n".join(theirs))
                self.forwarded += len(theirs)
        if self.lost:
            return [owner == self.index or owner in self.lost for owner in owners]
        return mine


def decode(frame: bytes) -> tuple[bytes | None, bytes]:
    """A frame's origin (None when empty) and its lines, newline-separated."""
    origin, _, lines = frame.partition(b"\n")
    return origin or None, lines
