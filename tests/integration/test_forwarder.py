"""Forwarding (spec §4): a second server fed by the first sees every line exactly once."""

from __future__ import annotations

import json

import pytest_twisted
from datadog.dogstatsd import DogStatsd
from helpers import counted, start_jsonl_server, wait_for, with_deadline


def series_of(path):
    with open(path) as f:
        objects = [json.loads(line) for line in f]
    return sorted(
        (o["metric"], o["type"], [p["value"] for p in o["points"]], o["tags"])
        for o in objects
        if "points" in o and not o["metric"].startswith("twisted_statsd.")
    )


def server(reactor, tmp_path, name, **settings):
    return start_jsonl_server(reactor, tmp_path, name, hostname="fwd", **settings)


@pytest_twisted.ensureDeferred
async def test_second_server_sees_every_line_once(reactor, tmp_path):
    second, second_out = server(reactor, tmp_path, "second")
    first, first_out = server(
        reactor, tmp_path, "first", statsd_forward_host="127.0.0.1", statsd_forward_port=second.udp.address.port
    )
    try:
        await wait_for(reactor, lambda: first.forwarder._address is not None)
        statsd = DogStatsd(host="127.0.0.1", port=first.udp.address.port, disable_telemetry=True)
        for i in range(50):
            statsd.increment("fwd.count", tags=[f"i:{i % 5}"])
            statsd.gauge("fwd.gauge", i)
            statsd.histogram("fwd.hist", i)
        statsd.close_socket()
        # forwarded copies leave before the first server's own buffer drains
        await wait_for(reactor, lambda: counted(second) >= 150 and counted(first) >= 150)
        assert first.telemetry.get("forwarded_packets") == first.telemetry.get("packets", "transport:udp")
    finally:
        await with_deadline(reactor, first.stopService())
        await with_deadline(reactor, second.stopService())
    assert counted(second) == 150
    assert series_of(first_out) == series_of(second_out) != []


@pytest_twisted.ensureDeferred
async def test_unresolvable_target_is_counted_and_intake_goes_on(reactor, tmp_path, monkeypatch):
    from twisted.internet import defer
    from twisted.internet.error import DNSLookupError

    # No name lookups leave this machine: the resolver fails as it would for an unknown name.
    monkeypatch.setattr(reactor, "resolve", lambda name, timeouts=(): defer.fail(DNSLookupError(name)))
    first, out = server(reactor, tmp_path, "first", statsd_forward_host="statsd.example", statsd_forward_port=9)
    try:
        await wait_for(reactor, lambda: first.telemetry.get("forward_resolve_errors") == 1)
        statsd = DogStatsd(host="127.0.0.1", port=first.udp.address.port, disable_telemetry=True)
        statsd.gauge("still.works", 1)
        statsd.close_socket()
        await wait_for(reactor, lambda: counted(first) == 1)
        assert first.telemetry.dropped("forward_unresolved") == 1
    finally:
        await with_deadline(reactor, first.stopService())
    assert [s[0] for s in series_of(out)] == ["still.works"]


@pytest_twisted.ensureDeferred
async def test_forward_target_receives_every_line_exactly_as_sent(reactor, tmp_path):
    """The forward copy is the packet as received: a capturing server sees the client's lines, once each."""
    from twisted_statsd.testing import CapturingServer

    target = CapturingServer(reactor).start()
    first, _ = server(reactor, tmp_path, "first", statsd_forward_host="127.0.0.1", statsd_forward_port=target.port)
    sent = [b"exact.%d:%d|c|#i:%d" % (i, i, i % 3) for i in range(40)] + [b"_e{2,2}:hi|yo", b"bad line"]
    try:
        await wait_for(reactor, lambda: first.forwarder._address is not None)
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for line in sent:
                sock.sendto(line, ("127.0.0.1", first.udp.address.port))
        await wait_for(reactor, lambda: first.telemetry.get("forwarded_packets") == len(sent))
        await target.flush()
        assert target.lines == sent
    finally:
        await with_deadline(reactor, first.stopService())
        await with_deadline(reactor, target.stop())


@pytest_twisted.ensureDeferred
async def test_forward_socket_listens_on_loopback_only_and_only_to_the_target(reactor, tmp_path):
    """Issue 12 item 6: the send socket was bound to every interface (0.0.0.0), open to datagrams from anyone."""
    from twisted_statsd.testing import CapturingServer

    target = CapturingServer(reactor).start()
    first, _ = server(reactor, tmp_path, "first", statsd_forward_host="127.0.0.1", statsd_forward_port=target.port)
    try:
        await wait_for(reactor, lambda: first.forwarder._address is not None)
        sock = first.forwarder._socket
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.getpeername() == ("127.0.0.1", target.port)
    finally:
        await with_deadline(reactor, first.stopService())
        await with_deadline(reactor, target.stop())


@pytest_twisted.ensureDeferred
async def test_copies_the_target_refuses_are_counted(reactor, tmp_path):
    """With nothing listening at the target, the kernel refuses the connected socket's sends: each is counted."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]
    first, _ = server(reactor, tmp_path, "first", statsd_forward_host="127.0.0.1", statsd_forward_port=nobody)
    try:
        await wait_for(reactor, lambda: first.forwarder._address is not None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

            def refused():
                sock.sendto(b"refused:1|c", ("127.0.0.1", first.udp.address.port))
                return first.telemetry.dropped("forward_refused") >= 1

            await wait_for(reactor, refused)
        first.intake.drain()
        read = first.telemetry.get("packets", "transport:udp")
        assert first.telemetry.get("forwarded_packets") + first.telemetry.dropped("forward_refused") == read
    finally:
        await with_deadline(reactor, first.stopService())
