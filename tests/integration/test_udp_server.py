"""The real service tree on a real UDP port, fed by the datadog package's DogStatsd client."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from datadog.dogstatsd import DogStatsd
from helpers import counted, early_in_a_bucket, start_jsonl_server, wait_for, with_deadline

from twisted_statsd import build_service, load_config
from twisted_statsd.intake.service import IntakeService
from twisted_statsd.listeners.udp import READ_BUDGET


def user_objects(path):
    """The JSON lines of the output, without the server's own telemetry."""
    with open(path) as f:
        objects = [json.loads(line) for line in f]
    return [o for o in objects if not o.get("metric", "").startswith("twisted_statsd.")]


def without_timestamps(obj):
    obj = dict(obj)
    if "points" in obj:
        obj["points"] = [{"value": p["value"]} for p in obj["points"]]
    obj.pop("timestamp", None)
    return obj


async def start(reactor, tmp_path, **settings):
    return start_jsonl_server(reactor, tmp_path, **settings)


async def stop(reactor, service):
    await with_deadline(reactor, service.stopService())


def client(service) -> DogStatsd:
    return DogStatsd(
        host="127.0.0.1", port=service.udp.address.port, disable_telemetry=True, constant_tags=["env:test"]
    )


@pytest_twisted.ensureDeferred
async def test_datadog_client_metrics_are_aggregated_exactly(reactor, tmp_path):
    await early_in_a_bucket(reactor)  # one point per series: the final flush comes in the same bucket
    service, out = await start(reactor, tmp_path)
    try:
        statsd = client(service)
        statsd.increment("page.views", 3, tags=["page:home"])
        statsd.increment("page.views", 2, tags=["page:home"])
        statsd.gauge("queue.size", 12, tags=["queue:a"])
        statsd.gauge("queue.size", 7, tags=["queue:a"])
        for v in (1, 2, 3, 4, 5):
            statsd.histogram("request.size", v)
        statsd.set("users.unique", "alice")
        statsd.set("users.unique", "bob")
        statsd.set("users.unique", "alice")
        statsd.increment("sampled", 1, sample_rate=1.0, tags=["host:elsewhere"])
        statsd.close_socket()
        await wait_for(reactor, lambda: counted(service) >= 13)
    finally:
        await stop(reactor, service)

    objects = sorted(user_objects(out), key=lambda o: (o["metric"], o["tags"]))
    for obj in objects:
        assert all(p["timestamp"] % 10 == 0 for p in obj["points"])
        assert obj["interval"] == 10
    host = [{"type": "host", "name": "testhost"}]

    def series(metric, kind, value, tags, resources=host):
        return {
            "metric": metric,
            "type": kind,
            "points": [{"value": value}],
            "tags": tags,
            "resources": resources,
            "interval": 10,
        }

    assert [without_timestamps(o) for o in objects] == [
        series("page.views", 2, 0.5, ["env:test", "page:home"]),
        series("queue.size", 3, 7.0, ["env:test", "queue:a"]),
        series("request.size.95percentile", 3, 5.0, ["env:test"]),
        series("request.size.avg", 3, 3.0, ["env:test"]),
        series("request.size.count", 2, 0.5, ["env:test"]),
        series("request.size.max", 3, 5.0, ["env:test"]),
        series("request.size.median", 3, 3.0, ["env:test"]),
        series("sampled", 2, 0.1, ["env:test"], [{"type": "host", "name": "elsewhere"}]),
        series("users.unique", 3, 2.0, ["env:test"]),
    ]


@pytest_twisted.ensureDeferred
async def test_distribution_event_and_service_check(reactor, tmp_path):
    service, out = await start(reactor, tmp_path)
    try:
        statsd = client(service)
        for v in range(1, 101):
            statsd.distribution("latency", v)
        statsd.event("Deploy", "version 2\nrolled out", alert_type="success", tags=["team:a"], hostname="web1")
        statsd.service_check("app.up", DogStatsd.OK, tags=["team:a"], message="fine")
        statsd.close_socket()
        await wait_for(
            reactor,
            lambda: (
                counted(service) >= 100
                and service.telemetry.get("events") == 1
                and service.telemetry.get("service_checks") == 1
            ),
        )
    finally:
        await stop(reactor, service)

    objects = user_objects(out)
    (dist,) = [o for o in objects if o.get("type") == "distribution"]
    assert (dist["metric"], dist["count"], dist["min"], dist["max"], dist["sum"], dist["avg"]) == (
        "latency",
        100,
        1,
        100,
        5050,
        50.5,
    )
    assert dist["tags"] == ["env:test"]
    assert set(dist["percentiles"]) == {"p50", "p75", "p90", "p95", "p99"}
    assert abs(dist["percentiles"]["p99"] - 99) <= 99 / 64
    (event,) = [o for o in objects if "msg_title" in o]
    assert event["msg_title"] == "Deploy" and event["msg_text"] == "version 2\nrolled out"
    assert (event["host"], event["alert_type"], event["tags"]) == ("web1", "success", ["env:test", "team:a"])
    (check,) = [o for o in objects if "check" in o]
    assert (check["check"], check["status"], check["message"], check["host_name"], check["tags"]) == (
        "app.up",
        0,
        "fine",
        "testhost",
        ["env:test", "team:a"],
    )


@pytest_twisted.ensureDeferred
async def test_bad_lines_are_counted_and_the_rest_of_the_packet_goes_through(reactor, tmp_path, logged_errors):
    service, out = await start(reactor, tmp_path)
    try:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(b"good:1|c\nbad:abc|g\nnopipe\nalso.good:2|g\nnan:NaN|g", ("127.0.0.1", service.udp.address.port))
        sock.close()
        await wait_for(reactor, lambda: counted(service) >= 2 and service.telemetry.total_dropped() >= 3)
        assert service.telemetry.dropped("metric_bad_value") == 1
        assert service.telemetry.dropped("non_finite_value") == 1
    finally:
        await stop(reactor, service)
    assert sorted(o["metric"] for o in user_objects(out)) == ["also.good", "good"]
    # Drops reach the output as the server's own metrics.
    with open(out) as f:
        own = [json.loads(line) for line in f if "twisted_statsd.dropped" in line]
    assert any("reason:metric_bad_value" in o["tags"] for o in own)


@pytest_twisted.ensureDeferred
async def test_a_64_kb_datagram_keeps_what_fits_and_counts_each_line_lost(reactor, tmp_path):
    """Lines beyond dogstatsd_buffer_size are dropped as DogStatsD drops them, and counted one by one."""
    service, out = await start(reactor, tmp_path)
    try:
        import socket

        line = b"big.packet:1|c|#k:v\n"  # 20 bytes
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(line * 3000, ("127.0.0.1", service.udp.address.port))
        sock.close()
        await wait_for(reactor, lambda: service.telemetry.dropped("datagram_truncated") > 0)
        kept = service.config.dogstatsd_buffer_size // len(line)
        assert counted(service) == kept
        assert service.telemetry.dropped("datagram_truncated") == 3000 - kept
    finally:
        await stop(reactor, service)
    (flushed,) = [o for o in user_objects(out) if o["metric"] == "big.packet"]
    assert sum(p["value"] for p in flushed["points"]) * 10 == pytest.approx(kept)


@pytest_twisted.ensureDeferred
async def test_stop_leaves_no_port_and_flushes_open_buckets(reactor, tmp_path):
    service, out = await start(reactor, tmp_path)
    port = service.udp.address.port
    statsd = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True)
    statsd.gauge("last.words", 1)
    statsd.close_socket()
    await wait_for(reactor, lambda: _received(service))
    await stop(reactor, service)
    assert service.udp.port is None
    assert [o["metric"] for o in user_objects(out)] == ["last.words"]


def _received(service) -> bool:
    """True once the datagram sits in a packet buffer or has been aggregated."""
    intake = next(s for s in service if isinstance(s, IntakeService))
    return any(b.packets for b in intake.buffers) or counted(service) > 0


def send_raw(service, payload: bytes) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, ("127.0.0.1", service.udp.address.port))


@pytest.mark.parametrize("eol, expected", [([], 2), (["udp"], 1)])
@pytest_twisted.ensureDeferred
async def test_eol_required_over_udp(reactor, tmp_path, eol, expected):
    """spec §1.7: the unterminated last line counts only when EOL is not required."""
    service, _out = await start(reactor, tmp_path, dogstatsd_eol_required=eol)
    try:
        send_raw(service, b"daemon:666|g|#foo:bar\ndaemon:666|g|#foo:bar")
        await wait_for(reactor, lambda: service.telemetry.get("packets", "transport:udp") == 1)
        await with_deadline(reactor, service.flush(), 10)  # samples are counted as they are folded in
        assert counted(service) == expected
        assert service.telemetry.dropped("unterminated_line") == 2 - expected
    finally:
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_non_local_traffic_binds_all_interfaces_and_receive_buffer_is_set(reactor, tmp_path):
    service, _out = await start(reactor, tmp_path, dogstatsd_non_local_traffic=True, dogstatsd_so_rcvbuf=1 << 20)
    try:
        import socket

        assert service.udp.address.host == "0.0.0.0"
        granted = service.udp.port.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert granted >= min(1 << 20, 212992)  # the kernel may clamp to net.core.rmem_max (and doubles it)
        # One read's budget bounds how long parsing what it read holds the reactor (benchmarks.burst).
        assert service.udp.port.maxThroughput == READ_BUDGET == 128 * 1024
    finally:
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_timestamped_metrics_pass_through_unaggregated(reactor, tmp_path):
    """spec §6.7: |T gauges and counters keep the client's timestamp; counters become value/10."""
    service, out = await start(reactor, tmp_path)
    try:
        send_raw(service, b"ts.gauge:5|g|T1657100430\nts.count:20|c|T1657100440\nts.hist:1|h|T1657100440")
        await wait_for(reactor, lambda: counted(service) == 2)
        assert service.telemetry.dropped("timestamped_unsupported_type") == 1
    finally:
        await stop(reactor, service)
    points = {o["metric"]: (o["type"], o["points"]) for o in user_objects(out)}
    assert points == {
        "ts.gauge": (3, [{"timestamp": 1657100430, "value": 5.0}]),
        "ts.count": (2, [{"timestamp": 1657100440, "value": 2.0}]),
    }


@pytest_twisted.ensureDeferred
async def test_kernel_drops_reach_telemetry(reactor, tmp_path):
    """Overflow a tiny receive buffer while the reactor is not reading; the kernel's count shows up."""
    import socket

    service, _out = await start(reactor, tmp_path, dogstatsd_so_rcvbuf=4096)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(200):  # the reactor cannot read: this coroutine holds it
                sock.sendto(b"x:1|c" * 100, ("127.0.0.1", service.udp.address.port))
        service.udp.record_kernel_drops()
        assert service.telemetry.dropped("udp_kernel") > 0
    finally:
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_mapped_metric_arrives_under_its_new_name_and_tags(reactor, tmp_path):
    """Issue 4: a dotted name sent over UDP is renamed and tagged by the mapper."""
    profiles = [
        {
            "name": "airflow",
            "prefix": "airflow.",
            "mappings": [
                {
                    "match": "airflow.job.duration.*.*",
                    "name": "airflow.job.duration",
                    "tags": {"job_type": "$1", "job_name": "$2"},
                }
            ],
        }
    ]
    service, out = await start(reactor, tmp_path, dogstatsd_mapper_profiles=profiles)
    try:
        statsd = client(service)
        statsd.timing("airflow.job.duration.my_job.my_dag", 120)
        statsd.close_socket()
        await service.flush(final=True)
    finally:
        await stop(reactor, service)
    names = {(o["metric"], tuple(o["tags"])) for o in user_objects(out)}
    assert ("airflow.job.duration.max", ("env:test", "job_name:my_dag", "job_type:my_job")) in names


@pytest_twisted.ensureDeferred
async def test_a_failed_start_leaves_nothing_open(reactor, tmp_path):
    """An embedder whose start fails (port in use) is not left with sockets or timers."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        service = build_service(
            load_config(data={"dogstatsd_port": port, "sinks": [{"type": "jsonl", "path": str(tmp_path / "o")}]}),
            reactor,
        )
        with pytest.raises(Exception, match="Address already in use"):
            service.startService()
    await with_deadline(reactor, service.abandoned)
    assert not any(s.running for s in service)


@pytest_twisted.ensureDeferred
async def test_stop_reads_everything_queued_not_just_one_read_budget(reactor, tmp_path):
    """More than doRead's 256 KiB budget waits in the socket at stop: all of it is aggregated."""
    import socket

    service, _out = await start(reactor, tmp_path, dogstatsd_so_rcvbuf=4 << 20)
    granted = service.udp.port.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    line = b"q:1|c\n" * 200  # 1,200 bytes, 200 metrics per datagram
    count = min(1500, granted // 4096)  # stay well inside the receive buffer (kernel overhead per datagram)
    if count * len(line) <= 256 * 1024:
        await stop(reactor, service)
        pytest.skip(f"net.core.rmem_max too small here ({granted} bytes granted) to queue more than 256 KiB")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):  # the reactor cannot read meanwhile: this coroutine holds it
            sock.sendto(line, ("127.0.0.1", service.udp.address.port))
    await stop(reactor, service)
    assert counted(service) == count * 200
    assert service.telemetry.dropped("udp_kernel") == 0


@pytest_twisted.ensureDeferred
async def test_memory_limiter_refuses_new_udp_contexts_above_its_hard_limit(reactor, tmp_path):
    """Issue 12, defect 7: with UDP alone the limiter was never started, so memory grew past its limit."""
    limiter = {"enabled": True, "memory_limit_bytes": 1}  # any process is above 90 % of one byte
    service, out = await start(reactor, tmp_path, dogstatsd_mem_based_rate_limiter=limiter)
    try:
        assert service.memory is not None and service.memory.state.refuse_new_contexts
        assert service.pipeline.refuse_new_contexts
        statsd = client(service)
        statsd.increment("refused.udp", 1)
        statsd.close_socket()
        await wait_for(reactor, lambda: service.telemetry.dropped("memory_hard_limit") == 1)
    finally:
        await stop(reactor, service)
    assert [o for o in user_objects(out) if o.get("metric") == "refused.udp"] == []
