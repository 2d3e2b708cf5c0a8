"""Origin detection: container IDs from /proc/<pid>/cgroup samples, and the TTL cache."""

from __future__ import annotations

import pytest

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.listeners.origin import OriginResolver, container_id_from_cgroup
from twisted_statsd.telemetry import Telemetry

CID = "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860"
TASK_CID = "34dc0b5e626f2c5c4c5170e34b10e765-1234567890"
UUID_CID = "9e3c1e2b-2fbb-4e3d-b9d9-0cf9ef1fd8a5"

V1_DOCKER = "\n".join(f"{n}:{c}:/docker/{CID}" for n, c in [(12, "memory"), (11, "cpu,cpuacct"), (1, "name=systemd")])
V1_KUBERNETES = (
    f"11:memory:/kubepods/burstable/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/{CID}\n"
    f"10:pids:/kubepods/burstable/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/{CID}\n"
)
V2_SYSTEMD_CONTAINERD = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod2d3da189_6407_48e3_9ab6_78188d75e609.slice/cri-containerd-{CID}.scope\n"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (V1_DOCKER, CID),
        (V1_KUBERNETES, CID),
        (V2_SYSTEMD_CONTAINERD, CID),
        (f"0::/system.slice/docker-{CID}.scope\n", CID),
        (f"0::/kubepods.slice/kubepods-besteffort.slice/crio-{CID}.scope\n", CID),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CID),
        (f"1:name=systemd:/ecs/34dc0b5e626f2c5c4c5170e34b10e765/{TASK_CID}\n", TASK_CID),
        (f"1:name=systemd:/ecs/{UUID_CID}/{CID}\n", CID),
        (f"0::/some/runtime/{UUID_CID}\n", UUID_CID),
        ("5:memory:/\n0::/\n", None),  # a private cgroup namespace names nothing
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("4:memory:/process_api/a3c31eb39a4cc57a42b892cbab5b6de7\n", None),  # 32 hex digits: not a container
        ("11:memory:/kubepods/burstable/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a\n", None),  # a pod, not a container
        (f"0::/docker/{CID}x\n", None),
        ("", None),
        ("garbage without colons\n", None),
    ],
)
def test_container_id_from_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


@pytest.fixture
def telemetry():
    return Telemetry()


@pytest.fixture
def proc(tmp_path):
    """A fake /proc: proc(pid, text) writes /proc/<pid>/cgroup."""

    def write(pid, text):
        (tmp_path / str(pid)).mkdir(exist_ok=True)
        (tmp_path / str(pid) / "cgroup").write_text(text)

    write.root = str(tmp_path)
    return write


def resolver(telemetry, proc, **kwargs):
    return OriginResolver(RateLimitedReporter(telemetry), proc_root=proc.root, **kwargs)


def test_a_pid_maps_to_its_container_and_is_cached_for_the_ttl(telemetry, proc):
    proc(42, V1_DOCKER)
    r = resolver(telemetry, proc, ttl=60)
    assert r.origin(42, 1000.0) == CID.encode()
    proc(42, f"0::/system.slice/docker-{'a' * 64}.scope\n")  # the PID was reused
    assert r.origin(42, 1059.9) == CID.encode()
    assert r.origin(42, 1060.0) == b"a" * 64
    assert telemetry.total_dropped() == 0


def test_no_container_is_cached_too(telemetry, proc):
    proc(7, "0::/user.slice\n")
    r = resolver(telemetry, proc)
    assert r.origin(7, 0.0) is None
    proc(7, V1_DOCKER)
    assert r.origin(7, 30.0) is None
    assert r.origin(7, 61.0) == CID.encode()


def test_failures_are_counted_not_cached_and_the_caller_gets_no_origin(telemetry, proc):
    r = resolver(telemetry, proc)
    assert r.origin(99, 0.0) is None  # no such process
    assert telemetry.get("errors", "reason:origin_detection_failed") == 1
    proc(99, V1_DOCKER)
    assert r.origin(99, 1.0) == CID.encode()  # not cached: found at once
    assert r.origin(0, 1.0) is None  # another PID namespace
    assert r.origin(None, 1.0) is None  # no credentials
    assert telemetry.get("errors", "reason:origin_detection_failed") == 3


def test_lookups_are_budgeted_per_second(telemetry, proc):
    for pid in range(1, 6):
        proc(pid, V1_DOCKER)
    r = resolver(telemetry, proc, max_lookups_per_second=3)
    assert [r.origin(pid, 10.0) for pid in range(1, 6)] == [CID.encode()] * 3 + [None, None]
    assert telemetry.get("errors", "reason:origin_detection_throttled") == 2
    assert r.origin(1, 10.5) == CID.encode()  # cached entries cost no budget
    assert r.origin(4, 11.0) == CID.encode()  # a new second, a new budget


def test_expire_forgets_old_pids_and_returns_live_origins(telemetry, proc):
    proc(1, V1_DOCKER)
    proc(2, f"0::/docker-{'b' * 64}.scope\n")
    proc(3, "0::/\n")
    r = resolver(telemetry, proc, ttl=60)
    r.origin(1, 0.0)
    r.origin(2, 30.0)
    r.origin(3, 30.0)
    assert r.expire(59.0) == {CID.encode(), b"b" * 64}
    assert r.expire(60.0) == {b"b" * 64}
    assert r.expire(90.0) == set()
    assert r._cache == {}
