"""The capture file format and the replay pacing: pure, no sockets."""

from __future__ import annotations

import gzip
import json

import pytest

from twisted_statsd.capture import MAGIC, CaptureEncoder, CaptureFormatError, Record, parse
from twisted_statsd.replay import open_target, progress_line, replay


def encoded(*batches, skipped=None, finish=True) -> bytes:
    encoder = CaptureEncoder(100.0, "9.9")
    data = b""
    for now, packets, transport, origin in batches:
        encoder.add(now, packets, transport, origin)
        data += encoder.take()
    if finish:
        data += encoder.finish(200.0, skipped or {})
    return data


def test_records_round_trip_with_time_transport_and_origin():
    data = encoded((1.5, [b"a:1|c", b"b:2|g"], "udp", None), (2.25, [b"c:3|ms"], "uds", b"cid-9"), skipped={"x": 2})
    capture = parse(data)
    assert capture.header == {"format": "twisted-statsd capture", "version": 1, "started": 100.0, "server": "9.9"}
    assert capture.records == [
        Record(1.5, "udp", b"", b"a:1|c"),
        Record(1.5, "udp", b"", b"b:2|g"),
        Record(2.25, "uds", b"cid-9", b"c:3|ms"),
    ]
    assert capture.summary == {"packets": 3, "skipped": {"x": 2}} and capture.skipped == {"x": 2}


def test_the_file_is_gzip_with_the_documented_layout():
    raw = gzip.decompress(encoded((1.0, [b"a:1|c"], "udp", None)))
    assert raw[:6] == MAGIC and raw[6] == 1
    size = int.from_bytes(raw[7:11], "little")
    assert json.loads(raw[11 : 11 + size])["version"] == 1


def test_a_capture_cut_short_is_read_up_to_its_last_whole_record():
    data = encoded((1.0, [b"a:1|c"], "udp", None), (2.0, [b"b:1|c"], "udp", None), finish=False)
    capture = parse(data)
    assert [r.packet for r in capture.records] == [b"a:1|c", b"b:1|c"] and capture.summary is None


def test_other_files_are_refused():
    with pytest.raises(CaptureFormatError):
        parse(b"not gzip at all")
    with pytest.raises(CaptureFormatError):
        parse(gzip.compress(b"XXXXXX\x01"))
    with pytest.raises(CaptureFormatError):
        parse(gzip.compress(MAGIC + b"\x02" + b"\x00" * 4))


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_replay_keeps_the_recorded_pace_divided_by_speed_and_reports_progress():
    records = [Record(t, "udp", b"", b"p%d" % i) for i, t in enumerate([10.0, 10.0, 11.0, 14.0])]
    sent, lines, time = [], [], FakeTime()
    assert replay(records, sent.append, speed=2.0, progress=lines.append, clock=time.clock, sleep=time.sleep) == 4
    assert sent == [b"p0", b"p1", b"p2", b"p3"]
    assert time.sleeps == [0.5, 1.5]
    assert lines[-1] == "sent 4/4 packets (100%), 2 packets/s, ETA 0s"
    time = FakeTime()
    replay(records, sent.append, speed=None, clock=time.clock, sleep=time.sleep)
    assert time.sleeps == []


def test_progress_line_and_bad_targets():
    assert progress_line(50, 200, 5.0, 15.0) == "sent 50/200 packets (25%), 10 packets/s, ETA 15s"
    for url in ("tcp://x:1", "udp://nohost", "unixgram://"):
        with pytest.raises(ValueError):
            open_target(url)
