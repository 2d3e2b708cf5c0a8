"""Context sharding (issue 14): each line's context owned by one intake process, exact once merged."""

from __future__ import annotations

import pickle
import random
from zlib import crc32

import pytest
from unit.test_pipeline import CORPUS_SHAPES, flushed, make, packets_of, reference_aggregator

from twisted_statsd.intake.shard import Router, decode

NOW = 1_000_001.0


def sharded(count: int):
    """``count`` pipelines whose routers hand each other's lines over at once, as the channels do."""
    made = [make() for _ in range(count)]
    pipelines = [p for p, _, _ in made]

    def sender(now):
        def send(owner: int, frame: bytes) -> None:
            origin, lines = decode(frame)
            pipelines[owner].process([lines], now[0], origin=origin, owned=True)

        return send

    now = [NOW]
    for index, pipeline in enumerate(pipelines):
        pipeline.router = Router(index, count, sender(now))
    return pipelines, now


def merged(pipelines):
    """Every pipeline's aggregates shipped (pickled, as a worker does) into the first one's."""
    for pipeline in pipelines:
        pipeline.fold()
    first = pipelines[0].aggregator
    for other in pipelines[1:]:
        first.merge(pickle.loads(pickle.dumps(other.aggregator.export())))
    return first


def unordered(result):
    """Events and service checks of several processes come in the order they are shipped, not received."""
    series, sketches, events, checks = result
    return series, sketches, sorted(map(repr, events)), sorted(map(repr, checks))


def test_owner_is_crc32_of_the_shape_key_so_every_process_routes_alike():
    sent = []
    router = Router(0, 3, lambda owner, frame: sent.append((owner, frame)))
    keys = [b"a:|c|#x", b"b:|g", b"c:|ms|@0.5|#y,z", b"d:|s"]
    lines = [b"a:1|c|#x", b"b:2|g", b"c:3|ms|@0.5|#y,z", b"d:u|s"]
    kept = router.route(keys, lines, None)
    owners = [crc32(k) % 3 for k in keys]
    assert set(owners) != {0}  # the example needs lines owned elsewhere
    assert kept == [o == 0 for o in owners]
    for owner, frame in sent:
        assert decode(frame) == (None, b"\n".join(line for line, o in zip(lines, owners, strict=True) if o == owner))
    assert router.forwarded == sum(o != 0 for o in owners)


def test_a_frame_carries_the_detected_origin():
    sent = []
    router = Router(1, 2, lambda owner, frame: sent.append(frame))
    keys = [b"k%d" % i for i in range(40)]
    router.route(keys, [b"x:%d|c" % i for i in range(40)], b"container-1")
    assert sent and all(decode(frame)[0] == b"container-1" for frame in sent)


def test_lines_of_an_owner_that_is_gone_stay_with_their_reader():
    sent = []
    router = Router(0, 2, lambda owner, frame: sent.append(frame))
    router.lost.add(1)
    keys = [b"k%d" % i for i in range(40)]
    assert router.route(keys, [b"x"] * 40, None) in (None, [True] * 40)
    assert sent == []


def test_a_process_index_outside_the_count_is_refused():
    with pytest.raises(ValueError):
        Router(2, 2, lambda owner, frame: None)


@pytest.mark.parametrize("count", [2, 3])
def test_each_context_is_held_by_one_process_whoever_reads_it(count):
    """2,000 counters read in turn by every process: each ends up in its owner only, and the load is shared."""
    pipelines, _ = sharded(count)
    lines = [b"shard.c%d:1|c|#env:prod,i:%d" % (i, i % 13) for i in range(2000)]
    for round_ in range(3):
        for i in range(0, len(lines), 50):
            pipelines[(i // 50 + round_) % count].process([b"\n".join(lines[i : i + 50])], NOW)
    held = []
    for pipeline in pipelines:
        pipeline.fold()
        held.append(set().union(*(b.metrics for b in pipeline.aggregator.held()[0])))
    for i, mine in enumerate(held):
        assert all(not (mine & theirs) for theirs in held[i + 1 :])
        assert 0.5 / count < len(mine) / 2000 < 1.5 / count
    assert len(set().union(*held)) == 2000
    assert sum(p.telemetry.get("metrics") for p in pipelines) == 6000


# A context seen under two metric types is left out: the first type in a bucket decides per
# process, and a metric of another type is merged sample by sample from what it kept (as with
# every earlier multi-process design); every other line of the corpus is in.
SHARDABLE = [shape for shape in CORPUS_SHAPES if not shape.startswith(b"mixed:")]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("count", [2, 3])
def test_sharded_pipelines_merge_into_what_one_process_aggregates(seed, count):
    """Random and malformed lines (two tag orders of a context, events, checks, timestamps, errors),
    read by processes in turn, routed and merged, give what one full parse gives."""
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        v = rng.choice([b"1", b"2.5", b"-3", b"1e2", b"0", str(rng.randint(0, 9)).encode()])
        lines.append(rng.choice(SHARDABLE).replace(b"{v}", v))
    pipelines, now = sharded(count)
    packets = packets_of(lines, rng)
    received = []
    for batch, i in enumerate(range(0, len(packets), 16)):
        now[0] = NOW + batch * 0.001  # arrival order is time order, so the latest gauge is the last one
        chunk = packets[i : i + 16]
        pipelines[batch % count].process(chunk, now[0])
        received += [(line, now[0], None) for line in b"\n".join(chunk).replace(b"\r", b"").split(b"\n") if line]
    assert sum(p.router.forwarded for p in pipelines) > 0
    expected, kept = reference_aggregator(received)
    assert unordered(flushed(merged(pipelines))) == unordered(flushed(expected))
    assert sum(p.telemetry.get("metrics") for p in pipelines) == kept


def test_routing_starts_once_the_shape_cache_is_large_and_stays_on():
    """Few contexts: each process keeps what it reads; past ``after_shapes`` shapes it routes."""
    pipeline, _, _ = make()
    sent = []
    pipeline.router = Router(0, 2, lambda owner, frame: sent.append(frame), after_shapes=50)
    pipeline.process([b"\n".join(b"few.c%d:1|c" % i for i in range(50))], NOW)
    assert not sent and not pipeline.router.active
    pipeline.process([b"more.c0:1|c"], NOW)  # the cache now holds 50 shapes, not more
    pipeline.process([b"\n".join(b"late.c%d:1|c" % i for i in range(40))], NOW)  # 51: routed
    assert pipeline.router.active and sent
    assert pipeline.router.forwarded == sum(len(decode(f)[1].split(b"\n")) for f in sent)
