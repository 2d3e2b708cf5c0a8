"""build_service: the one place where the whole server is wired together.

The twistd plugin and embedding applications both call :func:`build_service`.
Pipeline objects are built here, before any socket is bound, so packets that
arrive as soon as twistd binds (in ``privilegedStartService``) are simply
buffered.
"""

from __future__ import annotations

import dataclasses
from itertools import groupby
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.logger import Logger

from twisted_statsd._cooperate import SharedCooperatorService
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd._twisted_helpers import Waiters, periodic
from twisted_statsd.admin import AdminService
from twisted_statsd.config import EPHEMERAL_PORT, Config
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Blocklist, Enricher
from twisted_statsd.core.limits import ContextLimiter, TagRules
from twisted_statsd.core.mapper import MetricMapper
from twisted_statsd.errors import StartupError
from twisted_statsd.flush import SINK_STOP_TIMEOUT, FlushService
from twisted_statsd.forwarder import ForwarderService
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.intake.service import IntakeService
from twisted_statsd.interfaces import IMetricSink
from twisted_statsd.listeners.memory import MemoryMonitorService, MemoryProbe, MemoryThresholds, ReadThrottle
from twisted_statsd.listeners.origin import OriginResolver
from twisted_statsd.listeners.senders import SenderAllowList
from twisted_statsd.listeners.tcp import LineStreamFactory, TCPListenerService, server_tls
from twisted_statsd.listeners.udp import DatagramReceiver, UDPListenerService
from twisted_statsd.listeners.unixgram import UnixDatagramListenerService, UnixDatagramReceiver
from twisted_statsd.listeners.unixstream import FramedStreamFactory, UnixStreamListenerService
from twisted_statsd.sinks import build_sink
from twisted_statsd.sinks.console import ConsoleSink
from twisted_statsd.telemetry import DROPPED, ReactorLag, Telemetry
from twisted_statsd.workers import WorkerPoolService

# The keys StatsdService.reload applies; the others need a restart.
RELOADED_KEYS = (
    "dogstatsd_mapper_profiles",
    "dogstatsd_mapper_cache_size",
    "statsd_metric_blocklist",
    "statsd_metric_blocklist_match_prefix",
    "metric_tag_filterlist",
    "dogstatsd_tag_value_limits",
    "dogstatsd_context_limiter",
    "dogstatsd_tags",
)

# How often the reactor's lag is sampled: a stall shorter than this is seen
# only when a tick falls due during it.
LAG_PROBE_INTERVAL = 0.1


class StatsdService(MultiService):
    """The server's root service; its children stop one after another, in reverse order.

    Children are added as sinks, forwarder, flush, intake, listeners, so stopping closes
    the listeners, drains the buffers, runs the final flush, and then closes
    the sinks, all of them at once: everything accepted reaches the sinks before
    the process exits.  The whole stop has one budget, ``stop_deadline``, started
    when stopping begins: the final flush's wait for the sinks and each sink's
    own stop take what remains of it, so slow sinks cannot add up their waits.
    """

    log = Logger()

    def __init__(self, config: Config, aggregator: Aggregator, telemetry: Telemetry, pipeline: Pipeline):
        super().__init__()
        self.setName("statsd")
        self.config = config
        self.aggregator = aggregator
        self.telemetry = telemetry
        self.pipeline = pipeline
        self.enricher = pipeline.enricher
        # The profiles the enricher's mapper was built from (explained by the admin endpoint).
        self.mapper_profiles = tuple(config.dogstatsd_mapper_profiles)
        self.flusher: FlushService | None = None
        self.intake: IntakeService | None = None
        self.forwarder: ForwarderService | None = None
        self.udp: UDPListenerService | None = None
        self._stop_waiters = Waiters()
        self.stop_deadline: StopDeadline | None = None
        self.workers: WorkerPoolService | None = None
        self.unixgram: UnixDatagramListenerService | None = None
        self.unixstream: UnixStreamListenerService | None = None
        self.tcp: TCPListenerService | None = None
        self.memory: MemoryMonitorService | None = None
        self.admin: AdminService | None = None

    def privilegedStartService(self):
        self._start_or_abandon(super().privilegedStartService)

    def startService(self):
        self._start_or_abandon(super().startService)

    def _start_or_abandon(self, start) -> None:
        """Start every child; if one fails, close what was opened before raising."""
        try:
            start()
        except Exception:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Stop every child after a failed start, so an embedder is left no open sockets.

        ``self.abandoned`` fires when that cleanup is done.
        """
        self.running = 0
        self.abandoned = defer.ensureDeferred(self._stop_children(everything=True))
        self.abandoned.addErrback(lambda f: self.log.failure("Cleanup after a failed start", f))

    @property
    def listeners(self) -> list:
        """The listener services (UDP, Unix), each able to ``read_pending()``."""
        return [s for s in self if hasattr(s, "read_pending")]

    def flush(self, final: bool = False) -> defer.Deferred:
        """Flush now: read what the sockets hold, aggregate it, and hand it to the sinks.

        Fires with the FlushBatch once every sink has taken it; ``final`` closes
        open buckets too.  Datagrams a client in this process has already sent
        are therefore in the batch, with no waiting on timers.
        """
        if self.flusher is None:
            raise RuntimeError("this service has no flusher: build it with build_service()")
        for listener in self.listeners:
            listener.read_pending()
        return self.flusher.flush_and_wait(final)

    def reload_mapper(self, profiles, cache_size: int | None = None) -> None:
        """Replace the metric mapper with one built from ``profiles`` (spec §5.1 shape).

        The swap is atomic: an invalid configuration raises MapperConfigError
        and the current mapper stays.  An empty list removes the mapper.
        Packets already read are aggregated with the old mapper first.
        """
        if cache_size is None:
            cache_size = self.config.dogstatsd_mapper_cache_size
        mapper = MetricMapper(profiles, cache_size) if profiles else None
        if self.intake is None:
            raise RuntimeError("this service has no intake: build it with build_service()")
        for listener in self.listeners:
            listener.read_pending()
        self.intake.drain()
        self.enricher.mapper = mapper
        self.mapper_profiles = tuple(profiles)
        self.pipeline.forget_shapes()
        self.log.info("Metric mapper reloaded: {count} profiles", count=len(profiles))

    def reload(self, config: Config) -> None:
        """Apply the keys of a re-read ``config`` that change at runtime (the SIGHUP path).

        Those are :data:`RELOADED_KEYS`: the mapper, the block list,
        ``metric_tag_filterlist``, ``dogstatsd_tag_value_limits``,
        ``dogstatsd_context_limiter`` and ``dogstatsd_tags``.  ``config`` was
        validated when it was loaded, and everything is built before anything
        is swapped, so a failure keeps the running configuration whole.
        Packets already read are aggregated under the old one first; every
        cached line shape is dropped, since it memoises the old decisions.
        Contexts the limiter counts stay counted; the tag value limits start
        over.
        """
        refused = limits_with_workers(dataclasses.replace(config, dogstatsd_workers=self.config.dogstatsd_workers))
        if refused:
            raise ValueError(refused)
        if self.intake is None or self.flusher is None:
            raise RuntimeError("reload needs a service tree built by build_service")
        mapper = (
            MetricMapper(config.dogstatsd_mapper_profiles, config.dogstatsd_mapper_cache_size)
            if config.dogstatsd_mapper_profiles
            else None
        )
        blocklist = Blocklist(config.statsd_metric_blocklist, config.statsd_metric_blocklist_match_prefix)
        rules = tag_rules(config)
        for listener in self.listeners:
            listener.read_pending()
        self.intake.drain()
        enricher = self.enricher
        enricher.mapper, enricher.blocklist, enricher.tag_rules = mapper, blocklist, rules
        enricher.extra_tags = [t.encode() for t in config.dogstatsd_tags]
        self.flusher.blocklist = blocklist
        if self.pipeline.limiter is not None:
            self.pipeline.limiter.configure(**limiter_options(config))
        self.mapper_profiles = tuple(config.dogstatsd_mapper_profiles)
        self.config = dataclasses.replace(self.config, **{key: getattr(config, key) for key in RELOADED_KEYS})
        self.pipeline.forget_shapes()
        self.log.info(
            "Configuration reloaded: {count} mapper profiles, {blocked} blocked names, "
            "{filters} tag filter rules, context limit {limit}",
            count=len(config.dogstatsd_mapper_profiles),
            blocked=len(config.statsd_metric_blocklist),
            filters=len(config.metric_tag_filterlist),
            limit=config.dogstatsd_context_limiter.limit,
        )

    def stopService(self):
        """Stop the children in order; a call while stopping waits for the same stop."""
        stopping = len(self._stop_waiters)
        waiter = self._stop_waiters.wait()
        if not stopping:
            # Service.stopService, not MultiService's: the children are stopped here, in order.
            super(MultiService, self).stopService()
            if self.stop_deadline is not None:
                self.stop_deadline.start()
            defer.ensureDeferred(self._stop_children()).addBoth(self._stop_waiters.fire)
        return waiter

    async def _stop_children(self, everything: bool = False) -> None:
        stopping = [service for service in reversed(list(self)) if everything or service.running]
        for sinks, services in groupby(stopping, key=IMetricSink.providedBy):
            if not sinks:
                for service in services:
                    await defer.maybeDeferred(service.stopService)
                continue
            # Sinks are independent: each gets what remains of the one budget, at the same time.
            results = await defer.DeferredList(
                [defer.maybeDeferred(sink.stopService) for sink in services], consumeErrors=True
            )
            for stopped, failure in results:
                if not stopped:
                    failure.raiseException()
        self._log_late_drops()

    def _log_late_drops(self) -> None:
        """Drops counted after the final flush (sinks giving up at stop) reach no sink: log them."""
        late = [(tags, n) for name, tags, n in self.telemetry.deltas() if name == DROPPED]
        for tags, n in late:
            self.log.warn(
                "At shutdown, after the final flush: {count} dropped ({reason})",
                count=n,
                reason=",".join(tags),
                log_category="SHUTDOWN_DROPS",
            )


def build_pipeline(config: Config) -> Pipeline:
    """The pure intake chain for ``config``: parser, enricher (and mapper), aggregator, telemetry."""
    telemetry = Telemetry()
    reporter = RateLimitedReporter(telemetry, verbose=not config.dogstatsd_disable_verbose_logs)
    # Built even when no budget is set, so that a reload can set one.
    limiter = ContextLimiter(**limiter_options(config))
    aggregator = Aggregator(
        histogram_aggregates=config.histogram_aggregates,
        histogram_percentiles=config.histogram_percentiles,
        expiry_seconds=config.dogstatsd_expiry_seconds,
        zero_fill_limit=config.dogstatsd_zero_fill_limit,
    )
    enricher = Enricher(
        hostname=config.hostname,
        extra_tags=config.dogstatsd_tags,
        namespace=config.statsd_metric_namespace,
        namespace_exclusions=config.statsd_metric_namespace_blacklist,
        blocklist=Blocklist(config.statsd_metric_blocklist, config.statsd_metric_blocklist_match_prefix),
        mapper=(
            MetricMapper(config.dogstatsd_mapper_profiles, config.dogstatsd_mapper_cache_size)
            if config.dogstatsd_mapper_profiles
            else None
        ),
        histogram_copy_prefix=(
            config.histogram_copy_to_distribution_prefix if config.histogram_copy_to_distribution else None
        ),
        tag_rules=tag_rules(config),
    )
    return Pipeline(
        aggregator,
        enricher,
        telemetry,
        reporter,
        limiter=limiter,
        timestamps=config.dogstatsd_no_aggregation_pipeline,
        origin_client=config.dogstatsd_origin_detection_client,
        context_expiry=config.dogstatsd_context_expiry_seconds,
    )


def limits_with_workers(config: Config) -> str | None:
    """Why ``config``'s context budgets cannot run, if they cannot: they are set with several workers.

    Each worker would count its own contexts, which never expire there (it exports every bucket).
    """
    limits = config.dogstatsd_context_limiter
    if config.dogstatsd_workers > 1 and (limits.limit or limits.sender_limit or limits.metric_name_limit):
        return "dogstatsd_context_limiter: not supported with dogstatsd_workers above 1"
    return None


def limiter_options(config: Config) -> dict:
    """The :class:`ContextLimiter` settings in ``config``."""
    limits = config.dogstatsd_context_limiter
    return {
        "limit": limits.limit,
        "sender_limit": limits.sender_limit,
        "metric_name_limit": limits.metric_name_limit,
        "key_tag_name": limits.key_tag_name,
        "entry_timeout": limits.entry_timeout,
        "extra_tags": config.dogstatsd_tags,
    }


def tag_rules(config: Config) -> TagRules:
    """The tag filter list and tag value limits in ``config``."""
    filters = {
        rule.metric_name: (rule.action == "include", frozenset(t.encode() for t in rule.tags))
        for rule in config.metric_tag_filterlist
    }
    value_limits: dict[str, dict[bytes, int]] = {}
    for rule in config.dogstatsd_tag_value_limits:
        value_limits.setdefault(rule.metric_name, {})[rule.tag.encode()] = rule.limit
    return TagRules(filters, value_limits, config.dogstatsd_context_limiter.entry_timeout)


# Overflow offenders reported as tagged telemetry at each flush; the rest are summed.
TOP_OFFENDERS = 10


def report_zero_fill(pipeline: Pipeline) -> None:
    """Count the idle counters flushes left without a zero point (``dogstatsd_zero_fill_limit``)."""
    aggregator = pipeline.aggregator
    if aggregator.zero_fill_skipped:
        pipeline.telemetry.incr("zero_fill_skipped", aggregator.zero_fill_skipped)
        aggregator.zero_fill_skipped = 0


def report_limits(pipeline: Pipeline, now: float) -> None:
    """Put the limiter's and tag rules' counts of this interval in telemetry, bounded in cardinality."""
    telemetry, limiter = pipeline.telemetry, pipeline.limiter
    if limiter is None:
        return
    telemetry.set_gauge("live_contexts", len(limiter))
    for sender, name, count in limiter.new_overflows(now, TOP_OFFENDERS):
        telemetry.incr("context_overflows_by_sender", count, ("sender:" + sender, "metric_name:" + name))
    for into, count in limiter.folded.items():
        telemetry.incr("context_overflows_folded", count, ("into:" + into,))
    limiter.folded.clear()
    rules = pipeline.enricher.tag_rules
    for (name, key), count in rules.dropped.items():
        telemetry.incr("tag_values_over_limit", count, ("metric_name:" + name, "tag_key:" + key))
    rules.dropped.clear()


def build_intake(
    config: Config, reactor, pipeline: Pipeline, forward=None, *, freeze_gc: bool = False
) -> IntakeService:
    """The packet buffers in front of ``pipeline``, drained on the configured timer."""
    return IntakeService(
        reactor,
        pipeline,
        buffer_size=config.dogstatsd_packet_buffer_size,
        flush_timeout=config.dogstatsd_packet_buffer_flush_timeout,
        eol_required=config.dogstatsd_eol_required,
        forward=forward,
        freeze_gc=freeze_gc,
    )


def build_service(
    config: Config, reactor=None, *, sinks=None, freeze_gc: bool = False, _proc_root: str = "/proc"
) -> StatsdService:
    """Build the service tree for ``config``; attach it with ``setServiceParent``.

    ``freeze_gc`` keeps the garbage collector from stalling large flushes
    (see :mod:`twisted_statsd.flush`); it affects the whole process, so only
    the twistd server turns it on by default.

    ``sinks``, a list of IMetricSink providers, replaces the configured sinks:
    an embedding application's own sink.  Sinks that are also services are
    started before, and stopped after, everything else.  ``_proc_root`` (tests
    only) is where origin detection and the memory probe read ``/proc``.
    """
    if reactor is None:
        from twisted.internet import reactor
    # Before anything is built: a missing TLS package fails the start with the command that installs it.
    tls = None
    if config.dogstatsd_tls_cert:
        tls = server_tls(config.dogstatsd_tls_cert, config.dogstatsd_tls_key, config.dogstatsd_tls_ca)
    if limits_with_workers(config):
        raise StartupError(limits_with_workers(config))
    pipeline = build_pipeline(config)
    telemetry, reporter, aggregator = pipeline.telemetry, pipeline.reporter, pipeline.aggregator
    blocklist = pipeline.enricher.blocklist
    root = StatsdService(config, aggregator, telemetry, pipeline)
    root.stop_deadline = StopDeadline(reactor, SINK_STOP_TIMEOUT)
    cooperator = SharedCooperatorService(reactor)
    if config.admin_port:
        # The first child: it stops last, so /health answers 503 while the rest stops.
        port = 0 if config.admin_port == EPHEMERAL_PORT else config.admin_port
        root.admin = AdminService(reactor, root, cooperator.coop, port=port, host=config.admin_host)
        root.admin.setServiceParent(root)
    # Stopped after everything but the admin endpoint: the sinks' last writes run through it.
    cooperator.setServiceParent(root)

    if sinks is None:
        sinks = [build_sink(s, reactor, telemetry, cooperator.coop) for s in config.sinks] or [ConsoleSink()]
    seen: dict[str, int] = {}
    for sink in sinks:
        # Names tag telemetry and name the service: a second sink of a type gets "-2".
        seen[sink.name] = seen.get(sink.name, 0) + 1
        if seen[sink.name] > 1:
            sink.name = f"{sink.name}-{seen[sink.name]}"
        if IService.providedBy(sink):
            sink.setServiceParent(root)
        if hasattr(sink, "stop_deadline"):
            sink.stop_deadline = root.stop_deadline

    if config.statsd_forward_host and config.statsd_forward_port:
        root.forwarder = ForwarderService(reactor, reporter, config.statsd_forward_host, config.statsd_forward_port)
        root.forwarder.setServiceParent(root)

    lag = ReactorLag(telemetry, LAG_PROBE_INTERVAL)
    periodic(
        reactor, LAG_PROBE_INTERVAL, lambda: lag.tick(reactor.seconds()), telemetry, "reactor_lag"
    ).setServiceParent(root)

    forward = root.forwarder.forward if root.forwarder else None
    intake = build_intake(config, reactor, pipeline, forward=forward, freeze_gc=freeze_gc)
    root.flusher = FlushService(
        reactor,
        aggregator,
        sinks,
        telemetry,
        reporter,
        interval=config.flush_interval,
        hostname=config.hostname,
        blocklist=blocklist,
        # Folded before the flush records the server's own telemetry, so its
        # metrics count includes every sample this flush sends.
        before_flush=[
            intake.drain,
            pipeline.fold,
            lag.report,
            lambda: report_limits(pipeline, reactor.seconds()),
            lambda: report_zero_fill(pipeline),
        ],
        freeze_gc=freeze_gc,
        cooperator=cooperator.coop,
        stop_deadline=root.stop_deadline,
    )
    root.flusher.setServiceParent(root)
    intake.setServiceParent(root)
    root.intake = intake

    senders = SenderAllowList(config.dogstatsd_allowed_senders) if config.dogstatsd_allowed_senders else None
    if config.dogstatsd_port:
        receiver = DatagramReceiver(intake.buffer_for("udp"), config.dogstatsd_buffer_size, reporter, senders)
        port = 0 if config.dogstatsd_port == EPHEMERAL_PORT else config.dogstatsd_port
        root.udp = UDPListenerService(reactor, receiver, port, config.udp_interface, config.dogstatsd_so_rcvbuf)
        root.udp.setServiceParent(root)
        root.flusher.before_flush.append(root.udp.record_kernel_drops)
        if config.dogstatsd_workers > 1:
            # Added after the listener: it starts once the socket is bound, and stops
            # (each worker shipping a last time) before the listener and the final flush.
            root.workers = WorkerPoolService(
                reactor,
                root.udp,
                pipeline,
                config.dogstatsd_workers - 1,
                config,
                drain=intake.drain,
                flusher=root.flusher,
            )
            root.workers.setServiceParent(root)
            root.flusher.before_flush.insert(0, root.workers.before_flush)
    # Whatever the listeners: above the hard limit new contexts are refused on every transport
    # (UDP included); the throttle only slows the Unix and TCP listeners, added after it so that
    # they stop first.
    throttle = _add_memory_monitor(root, config, reactor, pipeline, _proc_root)
    if config.dogstatsd_socket or config.dogstatsd_stream_socket:
        _add_unix_listeners(root, config, reactor, intake, reporter, throttle, _proc_root)
    if config.dogstatsd_tcp_port:
        _add_tcp_listener(root, config, reactor, intake, reporter, throttle, senders, tls)
    if root.admin is not None:
        root.flusher.before_flush.append(root.admin.before_flush)
        root.flusher.after_flush.append(root.admin.after_flush)
        root.admin.set_stats(config.dogstatsd_metrics_stats_enable)
    return root


def _add_memory_monitor(root, config, reactor, pipeline, proc_root) -> ReadThrottle | None:
    """The memory monitor (above its hard limit, new contexts are refused) and the Unix and TCP read throttle."""
    limiter = config.dogstatsd_mem_based_rate_limiter
    if not limiter.enabled:
        return None
    throttle = ReadThrottle(reactor, root.telemetry)

    def on_change(state) -> None:
        pipeline.refuse_new_contexts = state.refuse_new_contexts

    root.memory = MemoryMonitorService(
        reactor,
        throttle,
        root.telemetry,
        thresholds=MemoryThresholds(limiter.low_soft_limit, limiter.high_soft_limit, limiter.hard_limit),
        probe=MemoryProbe(limit_bytes=limiter.memory_limit_bytes, proc_root=proc_root),
        interval=limiter.check_interval,
        on_change=on_change,
    )
    root.memory.setServiceParent(root)
    return throttle


def _add_unix_listeners(root, config, reactor, intake, reporter, throttle, proc_root) -> None:
    """The Unix datagram and stream listeners."""
    resolver = OriginResolver(reporter, proc_root=proc_root) if config.dogstatsd_origin_detection else None
    if config.dogstatsd_socket:
        receiver = UnixDatagramReceiver(intake, config.dogstatsd_buffer_size, reporter, resolver)
        root.unixgram = UnixDatagramListenerService(
            reactor,
            receiver,
            config.dogstatsd_socket,
            mode=config.dogstatsd_socket_mode,
            so_rcvbuf=config.dogstatsd_so_rcvbuf,
            throttle=throttle,
        )
        root.unixgram.setServiceParent(root)
    if config.dogstatsd_stream_socket:
        factory = FramedStreamFactory(
            intake,
            reporter,
            max_connections=config.dogstatsd_stream_max_connections,
            idle_timeout=config.dogstatsd_stream_idle_timeout,
            max_connections_per_user=config.dogstatsd_stream_max_connections_per_user,
            log_too_big=config.dogstatsd_stream_log_too_big,
            resolver=resolver,
            **_stream_options(config, reactor, throttle),
        )
        root.unixstream = UnixStreamListenerService(
            reactor, factory, config.dogstatsd_stream_socket, mode=config.dogstatsd_socket_mode
        )
        root.unixstream.setServiceParent(root)


def _stream_options(config, reactor, throttle) -> dict[str, Any]:
    """What every stream factory (Unix stream, TCP) shares: the reactor's clock, the frame size limit, the throttle."""
    return {"clock": reactor, "max_frame": config.dogstatsd_buffer_size, "throttle": throttle}


def _add_tcp_listener(root, config, reactor, intake, reporter, throttle, senders, tls) -> None:
    """The TCP listener (with TLS when ``tls`` is set), bound like UDP to ``bind_host``."""
    factory = LineStreamFactory(
        intake,
        reporter,
        max_connections=config.dogstatsd_tcp_max_connections,
        idle_timeout=config.dogstatsd_tcp_idle_timeout,
        senders=senders,
        cut_packets=root.forwarder is not None,
        **_stream_options(config, reactor, throttle),
    )
    port = 0 if config.dogstatsd_tcp_port == EPHEMERAL_PORT else config.dogstatsd_tcp_port
    root.tcp = TCPListenerService(reactor, factory, port, config.udp_interface, tls=tls)
    root.tcp.setServiceParent(root)
