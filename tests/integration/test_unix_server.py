"""The real service tree on Unix datagram and stream sockets, fed by the datadog client and raw sockets."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct

import pytest
import pytest_twisted
from datadog.dogstatsd import DogStatsd
from helpers import counted, wait_for, with_deadline
from twisted.internet import threads

from twisted_statsd import build_service, load_config
from twisted_statsd.errors import StartupError

CID = "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860"


def user_objects(path):
    with open(path) as f:
        objects = [json.loads(line) for line in f]
    return [o for o in objects if not o.get("metric", "").startswith("twisted_statsd.")]


def own_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if '"twisted_statsd.' in line]


def values(path):
    """metric -> summed point values, with the tags of its first series."""
    found = {}
    for o in user_objects(path):
        if "metric" in o and "points" in o:
            total, tags = found.get(o["metric"], (0.0, o["tags"]))
            found[o["metric"]] = (total + sum(p["value"] for p in o["points"]), tags)
    return found


@pytest.fixture
def paths(short_tmpdir):
    return os.path.join(short_tmpdir, "dsd.socket"), os.path.join(short_tmpdir, "dsd-stream.socket")


def build(tmp_path, paths, *, _proc_root="/proc", **settings):
    out = tmp_path / "out.jsonl"
    data = {
        "dogstatsd_port": 0,
        "dogstatsd_socket": paths[0],
        "dogstatsd_stream_socket": paths[1],
        "hostname": "testhost",
        "flush_interval": 3600,
        "sinks": [{"type": "jsonl", "path": str(out)}],
        **settings,
    }
    return build_service(load_config(data=data), _proc_root=_proc_root), out


async def start(reactor, tmp_path, paths, **settings):
    service, out = build(tmp_path, paths, **settings)
    service.privilegedStartService()
    service.startService()
    return service, out


async def stop(reactor, service):
    await with_deadline(reactor, service.stopService())


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def stream_client(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    return sock


def closed_by_peer(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


# -- the datadog client ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_datadog_client_over_unixgram(reactor, tmp_path, paths):
    service, out = await start(reactor, tmp_path, paths)
    try:
        statsd = DogStatsd(socket_path="unixgram://" + paths[0], disable_telemetry=True, constant_tags=["env:test"])
        statsd.increment("gram.count", 3, tags=["a:b"])
        statsd.increment("gram.count", 2, tags=["a:b"])
        statsd.gauge("gram.gauge", 7)
        statsd.service_check("gram.up", DogStatsd.OK)
        assert statsd._transport == "uds"
        statsd.close_socket()
        await wait_for(reactor, lambda: counted(service) == 3)
    finally:
        await stop(reactor, service)
    assert values(out) == {"gram.count": (0.5, ["a:b", "env:test"]), "gram.gauge": (7.0, ["env:test"])}
    assert service.telemetry.get("service_checks") == 1
    assert service.telemetry.get("packets", "transport:uds") == 4


@pytest_twisted.ensureDeferred
async def test_datadog_client_over_unixstream(reactor, tmp_path, paths):
    service, out = await start(reactor, tmp_path, paths)
    try:
        statsd = DogStatsd(socket_path="unixstream://" + paths[1], disable_telemetry=True, disable_buffering=False)
        for v in range(1, 501):
            statsd.histogram("stream.hist", v)
        statsd.event("Deploy", "done", tags=["team:a"])
        statsd.flush()
        assert statsd._transport == "uds-stream"
        await wait_for(reactor, lambda: counted(service) == 500 and service.telemetry.get("events") == 1)
        statsd.close_socket()
        await wait_for(reactor, lambda: len(service.unixstream.tracker) == 0)
    finally:
        await stop(reactor, service)
    found = values(out)
    assert found["stream.hist.count"][0] == 50.0 and found["stream.hist.max"][0] == 500.0
    assert service.telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_many_concurrent_stream_connections(reactor, tmp_path, paths):
    """200 clients connect at once, each with its own buffer; the open count is in telemetry."""
    service, out = await start(reactor, tmp_path, paths)
    clients = [DogStatsd(socket_path="unixstream://" + paths[1], disable_telemetry=True) for _ in range(200)]
    try:
        for n, statsd in enumerate(clients):
            for _ in range(10):
                statsd.increment("conc", tags=[f"client:{n % 4}"])
        await wait_for(reactor, lambda: counted(service) == 2000)
        assert service.telemetry.gauges[("uds_connections", ())] == 200
        await with_deadline(reactor, service.flush(final=True))
        for statsd in clients:
            statsd.close_socket()
        await wait_for(reactor, lambda: service.telemetry.gauges[("uds_connections", ())] == 0)
    finally:
        await stop(reactor, service)
    per_client: dict = {}
    for o in user_objects(out):
        per_client[o["tags"][0]] = per_client.get(o["tags"][0], 0) + o["points"][0]["value"]
    assert per_client == {f"client:{n}": 50.0 for n in range(4)}  # 500 increments each, as a rate per 10 s
    gauges = [o["points"][0]["value"] for o in own_metrics(out) if o["metric"] == "twisted_statsd.uds_connections"]
    assert gauges[0] == 200 and gauges[-1] == 0
    assert service.telemetry.get("uds_connections_accepted") == 200


@pytest_twisted.ensureDeferred
async def test_frames_sent_byte_by_byte(reactor, tmp_path, paths):
    service, out = await start(reactor, tmp_path, paths)
    sock = stream_client(paths[1])
    try:
        await wait_for(reactor, lambda: len(service.unixstream.tracker) == 1)
        (protocol,) = service.unixstream.tracker.connections
        data = frame(b"slow.a:1|c\nslow.b:2|c") + frame(b"slow.c:3|g")
        first = len(frame(b"slow.a:1|c\nslow.b:2|c"))
        for i in range(len(data)):
            sock.send(data[i : i + 1])
            held = (i + 1) % first if i < first else (i + 1 - first) % (len(data) - first)
            await wait_for(reactor, lambda held=held: protocol.decoder.pending == held)
        await wait_for(reactor, lambda: counted(service) == 3)
    finally:
        sock.close()
        await stop(reactor, service)
    assert set(values(out)) == {"slow.a", "slow.b", "slow.c"}


# -- refusals ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_oversized_frame_closes_only_that_connection(reactor, tmp_path, paths):
    service, out = await start(reactor, tmp_path, paths, dogstatsd_buffer_size=1024)
    bad, good = stream_client(paths[1]), stream_client(paths[1])
    try:
        bad.send(frame(b"before:1|c") + struct.pack("<I", 1025) + b"x" * 100)
        good.send(frame(b"good:1|c"))
        await wait_for(reactor, lambda: closed_by_peer(bad))
        assert service.telemetry.dropped("stream_frame_too_large") == 1
        good.send(frame(b"good:1|c"))
        await wait_for(reactor, lambda: counted(service) == 3)
        assert len(service.unixstream.tracker) == 1
    finally:
        bad.close()
        good.close()
        await stop(reactor, service)
    assert values(out) == {"before": (0.1, []), "good": (0.2, [])}


@pytest_twisted.ensureDeferred
async def test_connections_over_the_cap_are_refused(reactor, tmp_path, paths):
    service, _out = await start(reactor, tmp_path, paths, dogstatsd_stream_max_connections=2)
    socks = [stream_client(paths[1]) for _ in range(2)]
    try:
        await wait_for(reactor, lambda: len(service.unixstream.tracker) == 2)
        extra = stream_client(paths[1])
        socks.append(extra)
        await wait_for(reactor, lambda: closed_by_peer(extra))
        assert service.telemetry.dropped("stream_connection_refused") == 1
        for sock in socks[:2]:
            sock.send(frame(b"ok:1|c"))
        await wait_for(reactor, lambda: counted(service) == 2)
    finally:
        for sock in socks:
            sock.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_idle_stream_connections_are_closed(reactor, tmp_path, paths):
    """Issue 12 defect 5: idle and half-frame connections no longer hold the cap forever."""
    service, _out = await start(reactor, tmp_path, paths, dogstatsd_stream_idle_timeout=0.2)
    idle, half = stream_client(paths[1]), stream_client(paths[1])
    try:
        half.send(frame(b"half:1|c")[:6])
        await wait_for(reactor, lambda: closed_by_peer(idle) and closed_by_peer(half))
        assert service.telemetry.get("uds_connections_idle_closed") == 2
        assert service.telemetry.dropped("stream_frame_truncated") == 1
    finally:
        idle.close()
        half.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_one_user_is_held_to_the_per_user_cap(reactor, tmp_path, paths):
    """Every connection here comes from this process's user: the third is refused and counted."""
    service, _out = await start(reactor, tmp_path, paths, dogstatsd_stream_max_connections_per_user=2)
    socks = [stream_client(paths[1]) for _ in range(2)]
    try:
        await wait_for(reactor, lambda: len(service.unixstream.tracker) == 2)
        extra = stream_client(paths[1])
        socks.append(extra)
        await wait_for(reactor, lambda: closed_by_peer(extra))
        assert service.telemetry.dropped("stream_connection_refused_user") == 1
        for sock in socks[:2]:
            sock.send(frame(b"ok:1|c"))
        await wait_for(reactor, lambda: counted(service) == 2)
    finally:
        for sock in socks:
            sock.close()
        await stop(reactor, service)


# -- lifecycle and socket files ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_reads_closes_flushes_and_removes_the_files(reactor, tmp_path, paths):
    service, out = await start(reactor, tmp_path, paths)
    assert stat.S_IMODE(os.stat(paths[0]).st_mode) == 0o722
    assert stat.S_IMODE(os.stat(paths[1]).st_mode) == 0o722
    assert sorted(os.listdir(os.path.dirname(paths[0]))) == ["dsd-stream.socket", "dsd.socket"]  # no lock file
    sock = stream_client(paths[1])
    try:
        await wait_for(reactor, lambda: len(service.unixstream.tracker) == 1)
        sock.send(frame(b"last.stream:1|c"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gram:
            gram.sendto(b"last.gram:1|c", paths[0])
        await stop(reactor, service)  # no reactor turn between the sends and the stop
        assert closed_by_peer(sock)
    finally:
        sock.close()
    assert set(values(out)) == {"last.stream", "last.gram"}
    assert os.listdir(os.path.dirname(paths[0])) == []
    assert service.unixgram.reader is None and service.unixstream.port is None


@pytest_twisted.ensureDeferred
async def test_stop_completes_when_the_socket_files_were_deleted(reactor, tmp_path, paths):
    service, _out = await start(reactor, tmp_path, paths)
    os.unlink(paths[0])
    os.unlink(paths[1])
    await stop(reactor, service)
    assert os.listdir(os.path.dirname(paths[0])) == []


@pytest_twisted.ensureDeferred
async def test_stale_socket_files_are_replaced_and_the_mode_is_configurable(reactor, tmp_path, paths):
    for path, kind in zip(paths, (socket.SOCK_DGRAM, socket.SOCK_STREAM), strict=False):
        with socket.socket(socket.AF_UNIX, kind) as crashed:
            crashed.bind(path)
    service, _out = await start(reactor, tmp_path, paths, dogstatsd_socket_mode="0700")
    try:
        for path in paths:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gram:
            gram.sendto(b"after.crash:1|c", paths[0])
        await wait_for(reactor, lambda: counted(service) == 1)
    finally:
        await stop(reactor, service)


@pytest.mark.parametrize("which", [0, 1])
@pytest_twisted.ensureDeferred
async def test_a_socket_in_use_is_a_clear_error(reactor, tmp_path, paths, which):
    """Another server (of either kind) on the path: start fails, its file stays."""
    kind = (socket.SOCK_DGRAM, socket.SOCK_STREAM)[which]
    with socket.socket(socket.AF_UNIX, kind) as other:
        other.bind(paths[which])
        if kind == socket.SOCK_STREAM:
            other.listen()
        only = [paths[0], ""] if which == 0 else ["", paths[1]]
        service, _ = build(tmp_path, only)
        key, kind = [("dogstatsd_socket", "datagram"), ("dogstatsd_stream_socket", "stream")][which]
        with pytest.raises(StartupError) as info:
            service.privilegedStartService()
        assert str(info.value) == (
            f"{key}: cannot listen on unix {kind} socket {paths[which]}: "
            "address in use: another process is listening on it"
        )
        await with_deadline(reactor, service.abandoned)
        assert os.path.exists(paths[which])


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_a_socket_is_never_deleted(reactor, tmp_path, paths):
    with open(paths[1], "w") as f:
        f.write("not a socket")
    service, _ = build(tmp_path, ["", paths[1]])
    with pytest.raises(
        StartupError,
        match=f"^dogstatsd_stream_socket: cannot listen on unix stream socket {paths[1]}: .*not a Unix socket",
    ):
        service.privilegedStartService()
    await with_deadline(reactor, service.abandoned)
    with open(paths[1]) as f:
        assert f.read() == "not a socket"


# -- origin detection ----------------------------------------------------------------------


@pytest.fixture
def fake_proc(tmp_path):
    """A /proc in which this process runs in docker container CID."""
    root = tmp_path / "proc"
    (root / str(os.getpid())).mkdir(parents=True)
    (root / str(os.getpid()) / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    return str(root)


@pytest_twisted.ensureDeferred
async def test_origin_detection_tags_metrics_with_the_senders_container(reactor, tmp_path, paths, fake_proc):
    service, out = await start(
        reactor,
        tmp_path,
        paths,
        _proc_root=fake_proc,
        dogstatsd_origin_detection=True,
        dogstatsd_origin_detection_client=True,
    )
    try:
        gram = DogStatsd(socket_path="unixgram://" + paths[0], disable_telemetry=True, origin_detection_enabled=False)
        stream = DogStatsd(
            socket_path="unixstream://" + paths[1], disable_telemetry=True, origin_detection_enabled=False
        )
        gram.increment("o.gram")
        stream.increment("o.stream")
        gram._send_to_server("o.client:1|c|c:ci-abc")  # a c: field from the client wins
        gram.close_socket()
        stream.close_socket()
        await wait_for(reactor, lambda: counted(service) == 3)
    finally:
        await stop(reactor, service)
    tags = {name: t for name, (_, t) in values(out).items()}
    assert tags == {
        "o.gram": [f"container_id:{CID}"],
        "o.stream": [f"container_id:{CID}"],
        "o.client": ["container_id:abc"],
    }
    assert service.telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_origin_detection_failures_leave_packets_untagged(reactor, tmp_path, paths):
    service, out = await start(
        reactor, tmp_path, paths, _proc_root=str(tmp_path / "noproc"), dogstatsd_origin_detection=True
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gram:
            gram.sendto(b"untagged:1|c", paths[0])
        await wait_for(reactor, lambda: counted(service) == 1)
        assert service.telemetry.get("errors", "reason:origin_detection_failed") == 1
    finally:
        await stop(reactor, service)
    assert values(out) == {"untagged": (0.1, [])}


@pytest_twisted.ensureDeferred
async def test_origin_detection_on_this_host(reactor, tmp_path, paths):
    """The real /proc: a process outside any container gets no tag and no error."""
    service, _out = await start(reactor, tmp_path, paths, dogstatsd_origin_detection=True)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gram:
            gram.sendto(b"host.proc:1|c", paths[0])
        await wait_for(reactor, lambda: counted(service) == 1)
    finally:
        await stop(reactor, service)
    assert service.telemetry.total_dropped() == 0


# -- load and back-pressure ----------------------------------------------------------------


def blocking_burst(path, datagrams: int, per_datagram: int) -> None:
    payload = b"\n".join(b"burst.%d:1|c" % (i % 50) for i in range(per_datagram))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        for _ in range(datagrams):
            sock.send(payload)


@pytest_twisted.ensureDeferred
async def test_a_blocking_datagram_burst_loses_nothing(reactor, tmp_path, paths):
    """The kernel queues only 10 datagrams; a blocking sender waits, and everything arrives."""
    service, _out = await start(reactor, tmp_path, paths)
    try:
        await with_deadline(reactor, threads.deferToThread(blocking_burst, paths[0], 20_000, 10), timeout=60)
        await wait_for(reactor, lambda: counted(service) == 200_000, timeout=30)
    finally:
        await stop(reactor, service)
    assert service.telemetry.get("packets", "transport:uds") == 20_000


@pytest_twisted.ensureDeferred
async def test_memory_pressure_slows_reading_but_delivers(reactor, tmp_path, paths):
    limiter = {"enabled": True, "low_soft_limit": 0.0001, "high_soft_limit": 1000, "hard_limit": 1000}
    service, _out = await start(reactor, tmp_path, paths, dogstatsd_mem_based_rate_limiter=limiter)
    sock = stream_client(paths[1])
    try:
        assert service.memory.state.level == 1 and service.memory.state.delay > 0
        await with_deadline(reactor, threads.deferToThread(blocking_burst, paths[0], 200, 5), timeout=30)
        for _ in range(50):
            sock.send(frame(b"pressed:1|c"))
        await wait_for(reactor, lambda: counted(service) == 1050)
        assert service.telemetry.get("uds_read_holds") > 0
        assert service.telemetry.gauges[("memory_pressure_level", ())] == 1
    finally:
        sock.close()
        await stop(reactor, service)
    assert service.telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_above_the_hard_limit_new_contexts_are_refused(reactor, tmp_path, paths):
    limiter = {"enabled": True, "memory_limit_bytes": 1}
    service, out = await start(reactor, tmp_path, paths, dogstatsd_mem_based_rate_limiter=limiter)
    try:
        assert service.memory.state.refuse_new_contexts
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gram:
            gram.sendto(b"refused:1|c", paths[0])
        await wait_for(reactor, lambda: service.telemetry.dropped("memory_hard_limit") == 1)
    finally:
        await stop(reactor, service)
    assert values(out) == {}
