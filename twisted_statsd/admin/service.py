"""AdminService: the admin HTTP endpoint's listening socket, and the state its resources read.

It is the server's first child, so it stops last: while the listeners close,
the buffers drain and the final flush runs, ``/health`` answers 503.

Per-metric statistics cost nothing while off.  While on, each batch of
packets (``dogstatsd_packet_buffer_size`` packets) is split into lines and
its names counted with C-level calls before it is parsed; every second the
counts are merged into the table, and before each flush the live contexts are
walked a slice at a time.  The benchmark figures are in the README.
"""

from __future__ import annotations

from collections import deque
from functools import partial

from twisted.internet.task import Cooperator
from twisted.logger import Logger

from twisted_statsd._cooperate import run_in_slices
from twisted_statsd._http import CappedSite, SiteService
from twisted_statsd._twisted_helpers import periodic
from twisted_statsd.admin import capture, contexts, explain, limits, page, recent, stats, status
from twisted_statsd.admin._routes import AdminResource
from twisted_statsd.core.stats import MetricStats, series_per_context

# Admin connections open at once.
MAX_CONNECTIONS = 16
# How often the packet and metric totals are sampled for the per-second rates, and over how long.
RATE_SAMPLE_SECONDS = 5.0
RATE_WINDOW_SECONDS = 60.0
# How often the names counted on intake are merged into the statistics while they are on.
MERGE_SECONDS = 1.0


class RateWindow:
    """Totals sampled every few seconds; rates are over the oldest sample still in the window.  Pure."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS, every: float = RATE_SAMPLE_SECONDS):
        self.window = window
        self.samples: deque = deque(maxlen=int(window / every) + 1)

    def record(self, now: float, totals: dict[str, int]) -> None:
        self.samples.append((now, totals))

    def per_second(self, now: float, totals: dict[str, int]) -> dict:
        """Each total's rate from the oldest sample at most ``window`` old until ``now``; None without one."""
        oldest = next(((t, v) for t, v in self.samples if now - t <= self.window and now > t), None)
        result: dict = {"window_seconds": None if oldest is None else now - oldest[0]}
        for name, value in totals.items():
            result[name + "_per_second"] = None if oldest is None else (value - oldest[1][name]) / (now - oldest[0])
        return result


class AdminService(SiteService):
    """Serves the admin resources on ``host:port`` (port 0: the kernel picks one).

    Its slow work (recording flushes for the live page, walking the live
    contexts for the statistics) runs on the server's shared ``cooperator``.
    """

    log = Logger()

    def __init__(self, reactor, root, cooperator: Cooperator, *, port: int, host: str = "127.0.0.1"):
        self.reactor = reactor
        self.root = root
        self.port, self.host = port, host
        self.started_at: float | None = None
        self.rates = RateWindow()
        config = root.config
        self.stats = MetricStats(series_per_context(config.histogram_aggregates, config.histogram_percentiles))
        self.stats_enabled = False
        self.capture: capture.CaptureStream | None = None  # the capture running, if any
        self.recent = recent.RecentFlushes()
        self.cooperator = cooperator
        # Started and stopped with this service; they cannot die (a failure is counted as loop_errors).
        self._loops = [
            periodic(reactor, RATE_SAMPLE_SECONDS, self._sample, root.telemetry, "admin_rates"),
            periodic(reactor, MERGE_SECONDS, self.merge_stats, root.telemetry, "admin_stats_merge"),
        ]

    def _routes(self) -> dict:
        get = {
            b"/health": status.health,
            b"/ready": status.ready,
            b"/status": status.status,
            b"/stats": stats.everything,
            b"/stats/top": stats.top,
            b"/contexts": contexts.dump,
            b"/explain": explain.explain,
            b"/capture": capture.start,
            b"/recent": recent.recent,
            b"/drops": recent.drops,
            b"/limits": limits.limits,
        }
        post = {b"/stats/enable": stats.enable, b"/stats/disable": stats.disable}
        routes = {path: {b"GET": partial(handler, self)} for path, handler in get.items()}
        routes.update({path: {b"GET": handler} for path, handler in page.routes().items()})
        routes.update({path: {b"POST": partial(handler, self)} for path, handler in post.items()})
        return routes

    def bind(self) -> None:
        self._site = CappedSite(AdminResource(self._routes()), self.reactor, MAX_CONNECTIONS)
        self._listening = self.reactor.listenTCP(self.port, self._site, interface=self.host)

    def startService(self):
        super().startService()
        self.started_at = self.reactor.seconds()
        for loop in self._loops:
            loop.startService()

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            loop.stopService()
        if self.capture is not None:
            self.capture.close()
        return self._close_site()

    # -- what the resources read ----------------------------------------------------

    def totals(self) -> dict[str, int]:
        counters = self.root.telemetry.counters
        return {
            "packets": sum(v for (name, _), v in counters.items() if name == "packets"),
            "metrics": counters.get(("metrics", ()), 0),
        }

    def _sample(self) -> None:
        self.rates.record(self.reactor.seconds(), self.totals())

    # -- per-metric statistics ------------------------------------------------------

    def set_stats(self, enabled: bool) -> None:
        """Turn per-metric statistics on (from an empty table) or off (the table is kept for reading)."""
        observers = self.root.intake.observers
        if enabled and not self.stats_enabled:
            self.stats.reset()
            observers.append(self.stats.received)
        elif not enabled and self.stats_enabled:
            observers.remove(self.stats.received)
        self.stats_enabled = enabled

    def after_flush(self, batch) -> None:
        """Record a flush for the live page while someone watches it (a FlushService hook)."""
        if self.recent.watched(self.reactor.seconds()):
            d = run_in_slices(self.cooperator, self.recent.steps(batch), 1)
            if d is not None:
                d.addErrback(lambda f: self.log.failure("Recording a flush for the live page failed", f))

    def merge_stats(self) -> None:
        """Fold what intake counted into the statistics (every second, and before they are read)."""
        if self.stats_enabled:
            self.stats.merge(self.reactor.seconds())

    def before_flush(self):
        """Feed the statistics every live context, before this flush closes buckets (a FlushService hook)."""
        if not self.stats_enabled:
            return None
        return run_in_slices(self.cooperator, self._flushed_steps(self.reactor.seconds()), 1)

    def _flushed_steps(self, now: float):
        self.stats.merge(now)
        found: dict = {}  # a context held in two buckets (or a bucket and the live counters) counts once
        for item in contexts.live_contexts(self.root.aggregator):
            if item is None:
                yield
                continue
            context, kind, _last = item
            found[(kind, context.key)] = (context.name, contexts.TYPE_CODES[kind], context.tags)
        self.stats.flushed(found.values(), now)
