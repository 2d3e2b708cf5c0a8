"""The channels between intake processes (issue 14), over real socket pairs in one process."""

from __future__ import annotations

import socket

import pytest_twisted
from helpers import wait_for, with_deadline
from twisted.internet import defer
from unit.test_pipeline import make

from twisted_statsd import shards
from twisted_statsd.shards import Peers

NOW = 1_000_001.0


def connected(reactor, count: int = 2, **hooks):
    """``count`` Peers with their pipelines, every pair joined by a stream socket pair."""
    made = [make() for _ in range(count)]
    peers = [Peers(reactor, p, t, i, count, _route_after_shapes=0, **hooks) for i, (p, _, t) in enumerate(made)]
    for i in range(count):
        for k in range(i + 1, count):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            peers[i].adopt(reactor, k, a.fileno())
            peers[k].adopt(reactor, i, b.fileno())
            a.close()
            b.close()
    return peers


def held(peer: Peers) -> set[bytes]:
    peer.pipeline.fold()
    return {m.context.name.encode() for b in peer.pipeline.aggregator.held()[0] for m in b.metrics.values()}


async def closed(reactor, peers) -> None:
    for peer in peers:
        peer.close()
    await wait_for(reactor, lambda: all(not p.channels for p in peers))


LINES = [b"chan.c%d:1|c" % i for i in range(200)]


@pytest_twisted.ensureDeferred
async def test_after_the_barrier_each_process_holds_the_lines_it_owns(reactor):
    peers = connected(reactor, 3)
    try:
        peers[0].pipeline.process([b"\n".join(LINES)], NOW)
        await with_deadline(reactor, defer.gatherResults([p.barrier() for p in peers]), 10)
        names = [held(p) for p in peers]
        assert all(names)  # each got its share
        assert set().union(*names) == {line.split(b":")[0] for line in LINES}
        assert sum(map(len, names)) == len(LINES)  # no context in two places
    finally:
        await closed(reactor, peers)


@pytest_twisted.ensureDeferred
async def test_a_peer_that_is_gone_holds_no_barrier_and_its_lines_stay(reactor):
    peers = connected(reactor, 2)
    try:
        peers[1].close()
        await wait_for(reactor, lambda: not peers[0].channels)
        await with_deadline(reactor, peers[0].barrier(), 10)  # does not wait for the lost peer
        peers[0].pipeline.process([b"\n".join(LINES)], NOW)
        assert len(held(peers[0])) == len(LINES)
    finally:
        await closed(reactor, peers)


@pytest_twisted.ensureDeferred
async def test_a_full_channel_stops_reading_until_the_peer_catches_up(reactor, monkeypatch):
    monkeypatch.setattr(shards, "SEND_BUFFER", 1 << 20)
    calls = []
    peers = connected(
        reactor, 2, pause_reading=lambda: calls.append("pause"), resume_reading=lambda: calls.append("resume")
    )
    try:
        lines = [b"full.c%d:1|c|#pad:%s" % (i, b"x" * 100) for i in range(20_000)]
        peers[0].pipeline.process([b"\n".join(lines)], NOW)  # over a megabyte for the peer, written at once
        assert calls == ["pause"]
        assert peers[0].telemetry.get("shard_pauses") == 1
        await wait_for(reactor, lambda: calls == ["pause", "resume"])
        await with_deadline(reactor, defer.gatherResults([p.barrier() for p in peers]), 30)
        assert len(held(peers[0])) + len(held(peers[1])) == len(lines)
    finally:
        await closed(reactor, peers)
