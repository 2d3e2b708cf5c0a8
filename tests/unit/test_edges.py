"""The Twisted edges with fakes: datagram protocol, packet buffer, flush loop, service tree."""

from __future__ import annotations

import pytest
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.config import load_config
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.model import COUNTER, GAUGE, Context, FlushBatch
from twisted_statsd.flush import FlushService
from twisted_statsd.intake.buffer import PacketBuffer
from twisted_statsd.interfaces import IMetricSink, IPacketConsumer
from twisted_statsd.listeners.udp import DatagramReceiver
from twisted_statsd.service import build_service
from twisted_statsd.sinks.console import ConsoleSink
from twisted_statsd.sinks.jsonl import JsonlSink
from twisted_statsd.telemetry import Telemetry


@implementer(IMetricSink)
class RecordingSink:
    name = "recording"

    def __init__(self, result=None):
        self.batches: list[FlushBatch] = []
        self.result = result

    def write(self, batch):
        self.batches.append(batch)
        return self.result


def test_interfaces_are_provided():
    verifyObject(IMetricSink, ConsoleSink())
    verifyObject(IMetricSink, JsonlSink(Clock(), Telemetry()))
    verifyObject(IPacketConsumer, PacketBuffer(lambda p: None, 2, Telemetry(), "udp"))


def test_packet_buffer_flushes_when_full_and_counts():
    batches = []
    telemetry = Telemetry()
    buffer = PacketBuffer(batches.append, 3, telemetry, "udp")
    for packet in (b"a:1|c", b"b:1|c", b"c:1|c", b"d:1|c"):
        buffer.append(packet)
    assert batches == [[b"a:1|c", b"b:1|c", b"c:1|c"]]
    buffer.flush()
    assert batches[-1] == [b"d:1|c"]
    assert telemetry.get("packets", "transport:udp") == 4
    assert telemetry.get("bytes", "transport:udp") == 20


def test_packet_buffer_survives_a_failing_pipeline(logged_errors):
    telemetry = Telemetry()

    def explode(packets):
        raise RuntimeError("bug")

    buffer = PacketBuffer(explode, 2, telemetry, "udp")
    buffer.append(b"x")
    buffer.append(b"y")
    assert telemetry.dropped("internal_error") == 2
    assert logged_errors.expect("Pipeline failed")


def test_datagram_receiver_appends_and_cuts_oversized_datagrams():
    received = []
    telemetry = Telemetry()

    @implementer(IPacketConsumer)
    class Consumer:
        def append(self, packet):
            received.append(packet)

    receiver = DatagramReceiver(Consumer(), 16, RateLimitedReporter(telemetry, verbose=False))
    receiver.datagramReceived(b"a:1|c\nb:2|c", ("127.0.0.1", 1))
    receiver.datagramReceived(b"a:1|c\nb:2|c\nc:33333|c", ("127.0.0.1", 1))  # 17 bytes
    receiver.datagramReceived(b"x" * 17, ("127.0.0.1", 1))
    assert received == [b"a:1|c\nb:2|c", b"a:1|c\nb:2|c\n"]
    assert telemetry.dropped("datagram_truncated") == 2


def test_a_truncated_datagram_counts_every_line_it_loses():
    """A 64 KB datagram cut to dogstatsd_buffer_size loses thousands of lines: each is counted."""
    received = []
    telemetry = Telemetry()

    @implementer(IPacketConsumer)
    class Consumer:
        def append(self, packet):
            received.append(packet)

    receiver = DatagramReceiver(Consumer(), 8192, RateLimitedReporter(telemetry, verbose=False))
    line = b"page.views:1|c|#page:home\n"  # 26 bytes
    datagram = line * 2500  # 65,000 bytes
    receiver.datagramReceived(datagram[:-1], ("127.0.0.1", 1))  # no newline after the last line
    (kept,) = received
    assert kept == line * (8192 // len(line))
    assert telemetry.dropped("datagram_truncated") == 2500 - 8192 // len(line)


def make_flusher(sinks, interval=15.0):
    clock = Clock()
    clock.advance(1000)
    telemetry = Telemetry()
    aggregator = Aggregator()
    flusher = FlushService(
        clock, aggregator, sinks, telemetry, RateLimitedReporter(telemetry), interval=interval, hostname="h"
    )
    return clock, aggregator, telemetry, flusher


def user_series(batch):
    return [s for s in batch.series if not s.name.startswith("twisted_statsd.")]


def test_the_servers_own_counters_start_in_the_bucket_they_were_counted_in():
    """The first flush carries no zero points for self-metrics counted after its bucket
    ended; the next flush reports them with their values."""
    sink = RecordingSink()
    clock, aggregator, telemetry, flusher = make_flusher([sink])
    flusher.startService()
    aggregator.add(Context(b"c", b"h", []), COUNTER, 5, 1.0, clock.seconds())  # the first bucket is flushed
    telemetry.incr("metrics", 30)
    clock.pump([15, 15])
    first, second = (
        {s.name: s.points for s in batch.series if s.name.startswith("twisted_statsd.")} for batch in sink.batches
    )
    assert first == {}
    assert second["twisted_statsd.metrics"] == [(1010, 3.0)]


def test_flush_loop_runs_every_interval_and_final_flush_on_stop():
    sink = RecordingSink()
    clock, aggregator, _telemetry, flusher = make_flusher([sink])
    flusher.startService()
    aggregator.add(Context(b"c", b"h", []), COUNTER, 5, 1.0, clock.seconds())
    clock.pump([15, 15])
    assert len(sink.batches) == 2
    assert [s.points for s in user_series(sink.batches[0])] == [[(1000, 0.5)]]
    aggregator.add(Context(b"late", b"h", []), COUNTER, 1, 1.0, clock.seconds())
    d = flusher.stopService()
    assert d.called
    assert "late" in [s.name for s in sink.batches[-1].series]
    assert not clock.getDelayedCalls()


def test_a_counter_that_overflowed_in_the_final_flush_is_counted_as_dropped():
    """Issue 12 defect 3: ``big.c:1e308|c`` twice vanished from the final flush without a count."""
    sink = RecordingSink()
    clock, aggregator, telemetry, flusher = make_flusher([sink])
    flusher.startService()
    for _ in range(2):
        aggregator.add(Context(b"big.c", b"h", []), COUNTER, 1e308, 1.0, clock.seconds())
    flusher.stopService()
    assert "big.c" not in [s.name for s in sink.batches[-1].series]
    assert telemetry.dropped("non_finite_point") == 1


def test_self_metrics_are_flushed():
    sink = RecordingSink()
    clock, _aggregator, telemetry, flusher = make_flusher([sink])
    telemetry.drop("metric_bad_value", 3)
    for _ in range(3):  # recorded at one flush, reported when its bucket closes at a later one
        flusher.flush()
        clock.advance(20)
    names = {(s.name, s.tags) for batch in sink.batches for s in batch.series}
    assert ("twisted_statsd.dropped", ("reason:metric_bad_value",)) in names
    assert ("twisted_statsd.flushed_contexts", ()) in names


def test_a_failing_sink_is_counted_and_does_not_stop_the_others(logged_errors):
    broken = RecordingSink(defer.fail(RuntimeError("backend down")))
    broken.name = "broken"
    good = RecordingSink()
    clock, _aggregator, telemetry, flusher = make_flusher([broken, good])
    flusher.startService()
    clock.advance(15)
    assert len(good.batches) == 1
    assert telemetry.get("sink_write_errors", "sink:broken") == 1
    assert telemetry.get("sink_writes", "sink:recording") == 1
    assert logged_errors.expect("Sink {sink} failed")
    flusher.stopService()


def test_a_failing_flush_is_counted_and_the_loop_goes_on(logged_errors):
    sink = RecordingSink()
    clock, aggregator, telemetry, flusher = make_flusher([sink])
    calls = []

    real = aggregator.flush_steps

    def broken_flush(now, batch, final=False):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return real(now, batch, final=final)

    aggregator.flush_steps = broken_flush
    flusher.startService()
    clock.pump([15, 15])
    assert len(calls) == 2 and len(sink.batches) == 1
    assert telemetry.get("flush_errors") == 1 and telemetry.dropped("flush_failed") == 1
    assert logged_errors.expect("Flush failed")
    flusher.stopService()


def test_stop_waits_for_slow_sinks():
    pending = defer.Deferred()
    sink = RecordingSink(pending)
    _clock, _aggregator, _telemetry, flusher = make_flusher([sink])
    flusher.startService()
    d = flusher.stopService()
    assert not d.called
    pending.callback(None)
    assert d.called


def test_service_tree_order_and_clean_stop_with_memory_reactor(tmp_path):
    reactor = MemoryReactorClock()
    config = load_config(data={"dogstatsd_port": 0, "sinks": [{"type": "jsonl", "path": str(tmp_path / "o")}]})
    root = build_service(config, reactor)
    assert root.name == "statsd"
    assert [type(s).__name__ for s in root] == [
        "SharedCooperatorService",
        "JsonlSink",
        "PeriodicService",
        "FlushService",
        "IntakeService",
    ]
    assert root.getServiceNamed("reactor_lag") in root
    root.privilegedStartService()
    root.startService()
    assert len(reactor.getDelayedCalls()) == 3  # reactor lag probe, buffer drain and flush loops
    d = root.stopService()
    reactor.advance(0)  # the jsonl sink writes through a Cooperator
    assert d.called
    assert not reactor.getDelayedCalls()
    assert not any(s.running for s in root)


def test_the_flush_and_the_sinks_share_one_cooperator_stopped_after_them(tmp_path):
    from twisted.internet.task import SchedulerStopped

    reactor = MemoryReactorClock()
    sinks = [{"type": "jsonl", "path": str(tmp_path / "o")}, {"type": "prometheus", "port": 0}]
    root = build_service(load_config(data={"dogstatsd_port": 0, "sinks": sinks}), reactor)
    shared = next(iter(root))  # the first child: stopped last
    assert {id(s._cooperator) for s in root.flusher.sinks} | {id(root.flusher._cooperator)} == {id(shared.coop)}
    root.startService()
    root.aggregator.add(Context(b"c", b"h", []), COUNTER, 5, 1.0, reactor.seconds())
    d = root.stopService()
    reactor.advance(0)  # the final flush's jsonl write runs through the shared Cooperator
    assert d.called and (tmp_path / "o").read_text()
    failures = []
    shared.coop.coiterate(iter(())).addErrback(failures.append)
    assert failures[0].check(SchedulerStopped)


def test_the_admin_endpoint_works_on_the_shared_cooperator_and_its_loops_stop_with_it():
    from twisted_statsd._cooperate import SharedCooperatorService

    reactor = MemoryReactorClock()
    root = build_service(load_config(data={"dogstatsd_port": 0, "admin_port": "__random__"}), reactor)
    (shared,) = [s for s in root if isinstance(s, SharedCooperatorService)]
    assert root.admin.cooperator is shared.coop
    root.privilegedStartService()
    root.startService()
    # reactor lag probe, buffer drain and flush loops, and the admin's rate sampler and statistics merge
    assert len(reactor.getDelayedCalls()) == 5
    d = root.stopService()
    reactor.advance(0)
    assert d.called
    assert not reactor.getDelayedCalls()


def test_default_sink_is_console():
    root = build_service(load_config(data={"dogstatsd_port": 0}), MemoryReactorClock())
    assert [type(s).__name__ for s in root][1] == "ConsoleSink"


def test_console_table_is_readable():
    from twisted_statsd.core.model import Series
    from twisted_statsd.sinks.console import format_batch

    text = format_batch(FlushBatch(0, series=[Series("page.views", 2, [(1000, 0.5)], ("a:b",), "h")]))
    assert text.splitlines() == [
        "flush: 1 series, 0 distributions, 0 events, 0 service checks",
        "  page.views{a:b}  rate  0.5  @1000 x1",
    ]


def test_kernel_drops_are_read_from_proc_net_udp():
    from twisted_statsd.listeners.udp import kernel_drops

    table = (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode ref pointer drops\n"
        "  123: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000"
        "     0        0 4242 2 0000000000000000 17\n"
        "  124: 0100007F:1FBE 00000000:0000 07 00000000:00000000 00:00000000 00000000"
        "     0        0 4343 2 0000000000000000 0\n"
    )
    assert kernel_drops(table, 4242) == 17
    assert kernel_drops(table, 4343) == 0
    assert kernel_drops(table, 1) is None


def test_stop_gives_up_on_a_dead_sink_after_a_timeout(logged_errors):
    from twisted_statsd.flush import SINK_STOP_TIMEOUT

    sink = RecordingSink(defer.Deferred())
    clock, _aggregator, telemetry, flusher = make_flusher([sink])
    flusher.startService()
    d = flusher.stopService()
    clock.advance(SINK_STOP_TIMEOUT - 1)
    assert not d.called
    clock.advance(1)
    assert d.called
    assert telemetry.get("sink_stop_timeouts") == 1
    assert logged_errors.expect("Gave up waiting")


def test_every_sink_type_builds_and_two_of_a_kind_get_distinct_names(tmp_path):
    config = load_config(
        data={
            "dogstatsd_port": 0,
            "api_key": "k",
            "sinks": [
                {"type": "jsonl", "path": str(tmp_path / "a")},
                {"type": "jsonl", "path": str(tmp_path / "b")},
                {"type": "prometheus", "port": 0},
                {"type": "graphite"},
                {"type": "datadog", "url": "http://127.0.0.1:9"},
                {"type": "console"},
            ],
        }
    )
    root = build_service(config, MemoryReactorClock())
    names = [s.name for s in root.flusher.sinks]
    assert names == ["jsonl", "jsonl-2", "prometheus", "graphite", "datadog", "console"]
    for sink in root.flusher.sinks:
        verifyObject(IMetricSink, sink)


def test_reload_mapper_swaps_atomically_and_keeps_the_old_one_when_invalid():
    from twisted_statsd.core.mapper import MapperConfigError

    profiles = [{"name": "p", "prefix": "a.", "mappings": [{"match": "a.*", "name": "first"}]}]
    root = build_service(
        load_config(data={"dogstatsd_port": 0, "dogstatsd_mapper_profiles": profiles}), MemoryReactorClock()
    )
    root.pipeline.process([b"a.x:1|g"], 1000.0)
    root.reload_mapper([{"name": "p", "prefix": "a.", "mappings": [{"match": "a.*", "name": "second"}]}])
    root.pipeline.process([b"a.x:1|g"], 1000.0)
    with pytest.raises(MapperConfigError):
        root.reload_mapper([{"name": "", "prefix": "a."}])
    root.pipeline.process([b"a.y:1|g"], 1000.0)
    root.reload_mapper([])
    root.pipeline.process([b"a.z:1|g"], 1000.0)
    root.pipeline.fold()  # readers of the aggregator fold what the pipeline staged first
    names = sorted(s.name for s in root.aggregator.flush(1020).series)
    assert names == ["a.z", "first", "second"]


def test_a_large_flush_runs_in_slices_and_intake_goes_on_between_them():
    from twisted_statsd.core.aggregator import FLUSH_STEP
    from twisted_statsd.flush import INLINE_STEPS

    sink = RecordingSink()
    clock, aggregator, _telemetry, flusher = make_flusher([sink])
    contexts = FLUSH_STEP * (INLINE_STEPS + 5)
    for i in range(contexts):
        aggregator.add(Context(b"g%d" % i, b"h", []), COUNTER, 1, 1.0, 1001)
    clock.advance(20)
    done = []
    flusher.flush().addCallback(done.append)
    assert not done  # the rest waits for reactor turns
    aggregator.add(Context(b"meanwhile", b"h", []), GAUGE, 1, 1.0, clock.seconds())
    while not done:  # the Cooperator runs about 10 ms of slices per turn
        clock.advance(0)
    (batch,) = sink.batches
    assert len([s for s in batch.series if s.name.startswith("g")]) == contexts
    assert "meanwhile" not in {s.name for s in batch.series}
    clock.advance(20)
    flusher.flush()
    while len(sink.batches) < 2:
        clock.advance(0)
    assert "meanwhile" in {s.name for s in sink.batches[1].series}


def test_work_runs_inline_for_at_most_its_step_count_and_its_time_budget():
    """run_in_slices: work without a yield finishes at once whatever the budget; otherwise it
    stops inline at the step count or once the time budget is spent, and the Cooperator goes on."""
    from twisted_statsd._cooperate import cooperator, run_in_slices

    def work(log, steps):
        for i in range(steps):
            log.append(i)
            yield

    clock = Clock()
    ran = []
    assert run_in_slices(cooperator(clock), work(ran, 0), 50, 0.0) is None
    assert run_in_slices(cooperator(clock), work(ran, 3), 50, float("inf")) is None and ran == [0, 1, 2]
    ran.clear()
    d = run_in_slices(cooperator(clock), work(ran, 3), 50, 0.0)
    assert ran == [0] and d is not None  # the budget was spent after the first step
    done = []
    d.addCallback(done.append)
    while not done:
        clock.advance(0)
    assert ran == [0, 1, 2]
    ran.clear()
    assert run_in_slices(cooperator(clock), work(ran, 5), 2, float("inf")) is not None and ran == [0, 1]


def test_freeze_gc_pauses_the_collector_during_a_flush_and_freezes_what_lives():
    import gc

    seen = []
    sink = RecordingSink()
    _clock, _aggregator, _telemetry, flusher = make_flusher([sink])
    flusher.freeze_gc = True
    flusher.before_flush.append(lambda: seen.append(gc.isenabled()))
    try:
        flusher.flush()
        assert seen == [False]
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_slow_sink_does_not_hold_up_later_flushes_or_the_collector():
    import gc

    slow = RecordingSink(defer.Deferred())
    _clock, _aggregator, _telemetry, flusher = make_flusher([slow])
    flusher.freeze_gc = True
    try:
        waiting = flusher.flush_and_wait()
        assert not waiting.called and gc.isenabled()
        flusher.flush()
        assert len(slow.batches) == 2  # the second flush was not stuck behind the first's sink
        slow.result.callback(None)
        assert waiting.called
    finally:
        gc.unfreeze()


def test_stopping_twice_waits_for_the_one_stop():
    pending = defer.Deferred()
    sink = RecordingSink(pending)
    root = build_service(load_config(data={"dogstatsd_port": 0}), MemoryReactorClock(), sinks=[sink])
    root.startService()
    first, second = root.stopService(), root.stopService()
    assert not first.called and not second.called
    pending.callback(None)
    assert first.called and second.called
    assert len(sink.batches) == 1


def test_a_stalled_stdout_reader_costs_output_not_intake():
    """jsonl to a pipe nobody reads: writes never block; beyond the buffer, lines are dropped and counted."""
    import os

    from twisted_statsd.sinks.jsonl import PipeWriter

    reactor = MemoryReactorClock()
    telemetry = Telemetry()
    read_end, write_end = os.pipe()
    writer = PipeWriter(reactor, write_end, 256 * 1024, telemetry)
    try:
        line = b"x" * 1023 + b"\n"
        for _ in range(1000):  # 1 MB into a 64 KiB pipe and a 256 KiB buffer
            writer.write(line)
        assert writer in reactor.getWriters()
        assert telemetry.dropped("jsonl_output_full") > 0
        while os.read(read_end, 1 << 20):  # the reader catches up
            writer.doWrite()
            if writer not in reactor.getWriters():
                break
        assert writer.drained().called
    finally:
        writer.close()
        os.close(read_end)


def test_drops_counted_after_the_final_flush_are_logged(logged_errors):
    """Sinks giving up at shutdown count drops no flush will carry: the stop logs them."""
    events = []
    from twisted.logger import globalLogPublisher

    @implementer(IMetricSink)
    class GivesUpAtStop(Service):
        name = "quitter"

        def write(self, batch):
            return None

        def stopService(self):
            telemetry.drop("quitter_unsent", 7)
            return super().stopService()

    root = build_service(load_config(data={"dogstatsd_port": 0}), MemoryReactorClock(), sinks=[GivesUpAtStop()])
    telemetry = root.telemetry
    globalLogPublisher.addObserver(events.append)
    try:
        root.startService()
        root.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    late = [e for e in events if e.get("log_category") == "SHUTDOWN_DROPS"]
    assert [(e["count"], e["reason"]) for e in late] == [(7, "reason:quitter_unsent")]
