"""Memory-based back-pressure: readings, the pure decision, the throttle, the monitor loop."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.core.aggregator import Aggregator
from twisted_statsd.core.enrich import Enricher
from twisted_statsd.intake.pipeline import Pipeline
from twisted_statsd.listeners.memory import (
    HARD,
    HIGH,
    HIGH_MAX_DELAY,
    MIN_DELAY,
    OK,
    SOFT,
    SOFT_MAX_DELAY,
    MemoryMonitorService,
    MemoryProbe,
    MemoryReading,
    MemoryState,
    MemoryThresholds,
    ReadThrottle,
    cgroup_limit_files,
    decide,
    parse_cgroup_limit,
    parse_meminfo_total,
    parse_statm_rss,
)
from twisted_statsd.telemetry import Telemetry

LIMITS = MemoryThresholds(0.7, 0.8, 0.9)


# -- the decision ---------------------------------------------------------------


@pytest.mark.parametrize("ratio, level", [(0.0, OK), (0.7, OK), (0.71, SOFT), (0.8, SOFT), (0.85, HIGH), (0.95, HARD)])
def test_levels(ratio, level):
    assert decide(ratio, MemoryState(), LIMITS).level == level


def test_below_the_low_limit_there_is_no_pause():
    assert decide(0.5, MemoryState(HIGH, 0.85, 0.4), LIMITS) == MemoryState(OK, 0.5, 0.0)


def test_the_pause_starts_short_and_doubles_up_to_a_cap_per_level():
    state = MemoryState()
    delays = []
    for _ in range(10):
        state = decide(0.75, state, LIMITS)
        delays.append(state.delay)
    assert delays[0] == MIN_DELAY and delays[1] == 2 * MIN_DELAY
    assert delays[-1] == SOFT_MAX_DELAY
    for _ in range(10):
        state = decide(0.85, state, LIMITS)
    assert state.delay == HIGH_MAX_DELAY
    assert decide(0.75, state, LIMITS).delay == SOFT_MAX_DELAY  # falling back to soft shortens it


def test_only_the_hard_level_refuses_new_contexts():
    assert decide(0.95, MemoryState(), LIMITS).refuse_new_contexts
    assert not decide(0.85, MemoryState(), LIMITS).refuse_new_contexts


# -- readings -------------------------------------------------------------------


def test_parsers():
    assert parse_statm_rss("765 410 381 5 0 123 0\n", 4096) == 410 * 4096
    assert parse_cgroup_limit("max\n") is None
    assert parse_cgroup_limit("9223372036854771712\n") is None  # cgroup v1 "unlimited"
    assert parse_cgroup_limit("536870912\n") == 512 << 20
    assert parse_meminfo_total("MemFree: 1 kB\nMemTotal:       24684084 kB\n") == 24684084 * 1024
    assert parse_meminfo_total("nothing") is None


def test_limit_files_walk_from_our_cgroup_to_the_root():
    v2 = cgroup_limit_files("0::/system.slice/app.service\n", "/cg")
    assert v2 == ["/cg/system.slice/app.service/memory.max", "/cg/system.slice/memory.max", "/cg/memory.max"]
    v1 = cgroup_limit_files("5:cpu:/x\n4:memory:/docker/abc\n0::/\n", "/cg")
    assert v1 == [
        "/cg/memory/docker/abc/memory.limit_in_bytes",
        "/cg/memory/docker/memory.limit_in_bytes",
        "/cg/memory/memory.limit_in_bytes",
        "/cg/memory.max",
    ]


@pytest.fixture
def fake_system(tmp_path):
    """A fake /proc and /sys/fs/cgroup with a 1 GiB parent limit and an unlimited own cgroup."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "statm").write_text("1000 2000 10 1 0 5 0\n")
    (proc / "self" / "cgroup").write_text("0::/parent/child\n")
    (proc / "meminfo").write_text("MemTotal:       4194304 kB\n")
    cg = tmp_path / "cg"
    (cg / "parent" / "child").mkdir(parents=True)
    (cg / "parent" / "memory.max").write_text(f"{1 << 30}\n")
    (cg / "parent" / "child" / "memory.max").write_text("max\n")
    return str(proc), str(cg)


def test_probe_uses_the_tightest_cgroup_limit(fake_system):
    proc, cg = fake_system
    probe = MemoryProbe(proc_root=proc, cgroup_root=cg)
    probe.page_size = 4096
    assert probe.read() == MemoryReading(2000 * 4096, 1 << 30)


def test_probe_falls_back_to_host_memory_and_honours_the_override(fake_system, tmp_path):
    proc, _ = fake_system
    probe = MemoryProbe(proc_root=proc, cgroup_root=str(tmp_path / "nowhere"))
    assert probe.limit() == 4194304 * 1024
    assert MemoryProbe(limit_bytes=12345, proc_root=proc).limit() == 12345


def test_probe_reads_this_process():
    reading = MemoryProbe().read()
    assert 0 < reading.usage < reading.limit


# -- the throttle ---------------------------------------------------------------


class Reader:
    def __init__(self):
        self.paused = False
        self.events = []

    def pause_reading(self):
        self.paused = True
        self.events.append("pause")

    def resume_reading(self):
        self.paused = False
        self.events.append("resume")


def test_throttle_holds_readers_for_the_delay_with_one_timer():
    clock, telemetry = Clock(), Telemetry()
    throttle = ReadThrottle(clock, telemetry)
    throttle.set_delay(0.01)
    readers = [Reader() for _ in range(50)]
    for reader in readers:
        throttle.hold(reader)
    assert all(r.paused for r in readers)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.01)
    assert not any(r.paused for r in readers)
    assert telemetry.get("uds_read_holds") == 50


def test_throttle_forgets_closed_readers_and_releases_when_the_delay_ends():
    clock = Clock()
    throttle = ReadThrottle(clock, Telemetry())
    throttle.set_delay(1.0)
    kept, closed = Reader(), Reader()
    throttle.hold(kept)
    throttle.hold(closed)
    throttle.forget(closed)
    throttle.set_delay(0.0)
    assert not kept.paused and closed.paused
    assert clock.getDelayedCalls() == []


# -- the monitor ----------------------------------------------------------------


class FakeProbe:
    def __init__(self, *ratios):
        self.ratios = list(ratios)

    def read(self):
        ratio = self.ratios.pop(0)
        if isinstance(ratio, Exception):
            raise ratio
        return MemoryReading(int(ratio * 1000), 1000)


def monitor(probe, **kwargs):
    clock, telemetry = Clock(), Telemetry()
    throttle = ReadThrottle(clock, telemetry)
    changes = []
    service = MemoryMonitorService(
        clock, throttle, telemetry, thresholds=LIMITS, probe=probe, interval=1.0, on_change=changes.append, **kwargs
    )
    return service, clock, telemetry, throttle, changes


def test_monitor_polls_on_the_clock_and_publishes_its_state():
    service, clock, telemetry, throttle, changes = monitor(FakeProbe(0.5, 0.75, 0.85, 0.95, 0.5))
    service.startService()
    assert telemetry.gauges[("memory_pressure_level", ())] == OK
    clock.advance(1)
    assert throttle.delay == MIN_DELAY
    assert telemetry.gauges[("memory_usage_ratio", ())] == 0.75
    clock.advance(1)
    clock.advance(1)
    assert [c.level for c in changes] == [SOFT, HIGH, HARD]
    assert changes[-1].refuse_new_contexts
    assert telemetry.gauges[("uds_read_delay_seconds", ())] == 4 * MIN_DELAY
    clock.advance(1)
    assert changes[-1].level == OK and throttle.delay == 0
    assert telemetry.gauges[("memory_limit_bytes", ())] == 1000
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_a_failed_reading_keeps_the_state_and_the_loop(logged_errors):
    service, clock, telemetry, throttle, _changes = monitor(
        FakeProbe(0.75, OSError("gone"), OSError("still gone"), 0.75)
    )
    service.startService()
    clock.advance(1)
    clock.advance(1)
    assert len(logged_errors.expect("Could not read the process's memory use")) == 1
    assert telemetry.get("memory_check_errors") == 2
    assert throttle.delay == MIN_DELAY
    clock.advance(1)
    assert throttle.delay == 2 * MIN_DELAY
    service.stopService()


def test_level_change_log_formats():
    from twisted.logger import formatEvent

    from twisted_statsd.listeners.memory import LEVEL_CHANGED

    text = formatEvent(
        {"log_format": LEVEL_CHANGED, "ratio": 0.853, "limit": 1000, "old": "ok", "new": "high", "delay": 0.001}
    )
    assert text == "Memory use 85% of 1000 bytes: back-pressure level ok -> high (read pause 0.001 s)"


# -- the pipeline's hard-limit hook ----------------------------------------------------


def test_above_the_hard_limit_new_contexts_are_refused_known_ones_aggregate():
    telemetry = Telemetry()
    aggregator = Aggregator()
    pipeline = Pipeline(aggregator, Enricher(hostname="h"), telemetry, RateLimitedReporter(telemetry, verbose=False))
    now = 1_000_000.0
    pipeline.process([b"known:1|c"], now)
    pipeline.refuse_new_contexts = True
    pipeline.process([b"known:2|c\nnew:1|c\nnew.ts:1|g|T999999\n_e{1,1}:a|b"], now)
    pipeline.fold()  # samples are counted as they are folded into the aggregator
    assert telemetry.dropped("memory_hard_limit") == 1
    assert telemetry.get("metrics") == 3  # known twice, the timestamped gauge
    assert telemetry.get("events") == 1
    pipeline.refuse_new_contexts = False
    pipeline.process([b"new:1|c"], now)
    pipeline.fold()  # samples are counted as they are folded into the aggregator
    assert telemetry.get("metrics") == 4
