"""Test helpers for applications that emit DogStatsD metrics.

Start a :class:`CapturingServer` in your test, point the code under test at its
port, call :meth:`CapturingServer.flush` (no waiting on timers: datagrams
already sent from this process are read from the socket first), and ask what
arrived: raw lines, parsed samples, aggregated series, events and service
checks.  :meth:`CapturingServer.assert_metric` fails with a readable list of
what did arrive.  The same server backs the ``statsd_server`` pytest fixture
(see :mod:`twisted_statsd.pytest_plugin`) and :class:`StatsdServerMixin` for
trial.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_statsd.config import load_config
from twisted_statsd.core import parser
from twisted_statsd.core.model import SERIES_COUNT, SERIES_GAUGE, SERIES_RATE, FlushBatch
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.service import build_service

__all__ = ["CapturingServer", "MemorySink", "StatsdServerMixin"]

SELF_METRIC_PREFIX = "twisted_statsd."
_TYPE_NAMES = {"count": SERIES_COUNT, "rate": SERIES_RATE, "gauge": SERIES_GAUGE}


@implementer(IMetricSink)
class MemorySink(Service):
    """Keeps every flushed batch in memory."""

    name = "memory"

    def __init__(self):
        self.batches: list[FlushBatch] = []

    def write(self, batch: FlushBatch) -> None:
        self.batches.append(batch)


class CapturingServer:
    """An in-process twisted-statsd on an ephemeral UDP port, capturing everything.

    With ``unix_socket=True`` it also listens on a Unix datagram socket in a
    new temporary directory (:attr:`socket_path`, removed on stop), for
    clients configured with ``socket_path``.  ``settings`` are configuration
    keys (as in the YAML file).  Counters are not zero-filled here
    (``dogstatsd_expiry_seconds`` 0), so each flush shows only what was sent
    since the previous one, and the server's own ``twisted_statsd.*`` metrics
    are left out of :attr:`series`.
    """

    def __init__(self, reactor=None, *, unix_socket: bool = False, **settings):
        if reactor is None:
            from twisted.internet import reactor
        data = {"dogstatsd_port": "__random__", "dogstatsd_expiry_seconds": 0, "hostname": "test", **settings}
        self._directory = None
        if unix_socket:
            # A short path: AF_UNIX addresses hold about 108 bytes.
            self._directory = tempfile.mkdtemp(prefix="statsd")
            data["dogstatsd_socket"] = os.path.join(self._directory, "dsd.socket")
        self.sink = MemorySink()
        self.service = build_service(load_config(data=data), reactor, sinks=[self.sink])
        # Tests want flushes to finish at once, however many contexts they hold.
        flusher = self.service.flusher
        assert flusher is not None
        flusher.inline_steps = sys.maxsize
        flusher.inline_seconds = math.inf
        self.packets: list[bytes] = []
        pipeline = self.service.pipeline
        process = pipeline.process

        def recording(packets, now, **options):
            self.packets.extend(packets)
            return process(packets, now, **options)

        # Records what the server read, in front of the pipeline, for the failure message.
        pipeline.process = recording  # type: ignore[method-assign]

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> CapturingServer:
        """Bind and start; synchronous, so the port is known when this returns."""
        self.service.startService()
        return self

    def stop(self) -> defer.Deferred:
        """Stop, closing the sockets; fires when everything is closed."""
        d = self.service.stopService()
        directory = self._directory
        if directory is not None:

            def remove_directory(result):
                shutil.rmtree(directory, ignore_errors=True)
                return result

            d.addBoth(remove_directory)
        return d

    @property
    def socket_path(self) -> str | None:
        """The Unix datagram socket, with ``unix_socket=True``."""
        return self.service.config.dogstatsd_socket or None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        assert self.service.udp is not None
        return self.service.udp.address.port

    def flush(self) -> defer.Deferred:
        """Read what was sent, aggregate it and close every bucket; fires with the batch."""
        return self.service.flush(final=True)

    def flush_now(self) -> FlushBatch:
        """:meth:`flush` for plain, synchronous tests: returns the batch itself.

        The capturing sink takes a batch at once, so no reactor turn is needed.
        """
        outcome: list[FlushBatch | Failure] = []
        self.flush().addBoth(outcome.append)
        (result,) = outcome
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def reset(self) -> None:
        """Forget everything captured so far (the aggregator keeps nothing between flushes)."""
        self.packets.clear()
        self.sink.batches.clear()

    # -- what arrived ------------------------------------------------------------

    @property
    def lines(self) -> list[bytes]:
        """Every non-empty line received, as sent."""
        return [line for packet in self.packets for line in packet.split(b"\n") if line.strip(b"\r")]

    @property
    def samples(self) -> list:
        """The metric lines parsed (events, service checks and bad lines left out)."""
        parsed = []
        for line in self.lines:
            if parser.message_kind(line) == parser.METRIC:
                try:
                    parsed.append(parser.parse_metric(line))
                except parser.ParseError:
                    pass
        return parsed

    @property
    def series(self) -> list:
        return [s for batch in self.sink.batches for s in batch.series if not s.name.startswith(SELF_METRIC_PREFIX)]

    @property
    def distributions(self) -> list:
        return [s for batch in self.sink.batches for s in batch.sketches]

    @property
    def events(self) -> list:
        return [e for batch in self.sink.batches for e in batch.events]

    @property
    def service_checks(self) -> list:
        return [c for batch in self.sink.batches for c in batch.service_checks]

    @property
    def telemetry(self):
        return self.service.telemetry

    def assert_metric(self, name: str, value: float | None = None, tags=None, type: str | None = None):
        """Assert a flushed series matches; returns it.

        ``tags`` must match exactly as a set (the server's ``dogstatsd_tags``
        included); ``type`` is ``"gauge"``, ``"rate"`` or ``"count"``; ``value``
        is compared with the sum of the series' points (a counter of 5 over one
        10-second bucket reports 0.5).  On failure the message lists every
        series that did arrive.
        """
        wanted_tags = None if tags is None else set(tags)
        for s in self.series:
            if s.name != name:
                continue
            if wanted_tags is not None and set(s.tags) != wanted_tags:
                continue
            if type is not None and s.type != _TYPE_NAMES[type]:
                continue
            if value is not None and not math.isclose(sum(v for _, v in s.points), value, rel_tol=1e-9):
                continue
            return s
        wanted = f"{name} value={value!r} tags={sorted(wanted_tags) if wanted_tags else tags!r} type={type!r}"
        raise AssertionError(f"no series matched {wanted}\n{self.describe()}")

    def describe(self) -> str:
        """What arrived, one series per line, for assertion messages."""
        names = {v: k for k, v in _TYPE_NAMES.items()}
        rows = [
            f"  {s.name} {names.get(s.type, s.type)} {[v for _, v in s.points]} tags={sorted(s.tags)}"
            for s in sorted(self.series, key=lambda s: (s.name, s.tags))
        ]
        rows += [f"  {d.name} distribution count={sum(k.count for _, k in d.points):g}" for d in self.distributions]
        rows += [f"  event {e.title!r} tags={list(e.tags)}" for e in self.events]
        rows += [f"  service check {c.name} status={c.status} tags={list(c.tags)}" for c in self.service_checks]
        return "arrived:\n" + ("\n".join(rows) if rows else "  (nothing)")


class StatsdServerMixin:
    """For trial TestCases: ``self.statsd_server`` is a started CapturingServer.

    Call :meth:`start_statsd_server` in ``setUp``; the server is stopped by a
    cleanup, so trial reports no dirty reactor.
    """

    if TYPE_CHECKING:  # provided by the TestCase this is mixed into

        def addCleanup(self, f: Callable[..., object], *args: object, **kwargs: object) -> None: ...

    def start_statsd_server(self, **settings) -> CapturingServer:
        self.statsd_server = CapturingServer(**settings).start()
        self.addCleanup(self.statsd_server.stop)
        return self.statsd_server
