"""The jsonl sink never loses a whole flush: not to one value JSON cannot carry, not to a full disk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_statsd.core.model import SERIES_GAUGE, FlushBatch, Series, SketchSeries
from twisted_statsd.core.sketch import Sketch
from twisted_statsd.sinks.jsonl import AppendFile, JsonlSink
from twisted_statsd.telemetry import Telemetry


def write(sink: JsonlSink, clock: Clock, batch: FlushBatch) -> None:
    d = sink.write(batch)
    while not d.called:
        clock.advance(0)
    assert not isinstance(d.result, Failure)


def test_a_distribution_whose_sum_overflowed_costs_only_itself(tmp_path, logged_errors):
    """Issue 12 defect 1: two ``ovf.d:1e308|d`` lines made the whole flush fail to encode."""
    overflowed = Sketch()
    overflowed.add(1e308)
    overflowed.add(1e308)
    fine = Sketch()
    fine.add(2.0)
    batch = FlushBatch(timestamp=100)
    batch.series = [Series("g", SERIES_GAUGE, [(90, 1.0)], (), "h", 10)]
    batch.sketches = [
        SketchSeries("ovf.d", [(90, overflowed)], (), "h", 10),
        SketchSeries("ok.d", [(90, fine)], (), "h", 10),
    ]
    clock, telemetry = Clock(), Telemetry()
    sink = JsonlSink(clock, telemetry, path=str(tmp_path / "out.jsonl"))
    sink.startService()
    write(sink, clock, batch)
    sink.stopService()
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["metric"] for o in written] == ["g", "ok.d"]
    assert telemetry.dropped("jsonl_unencodable") == 1


def test_a_full_device_drops_and_counts_lines_and_writes_nothing_torn(logged_errors):
    clock, telemetry = Clock(), Telemetry()
    sink = JsonlSink(clock, telemetry, path="/dev/full")
    sink.startService()
    batch = FlushBatch(timestamp=100)
    batch.series = [Series(f"g{i}", SERIES_GAUGE, [(90, 1.0)], (), "h", 10) for i in range(250)]
    write(sink, clock, batch)
    sink.stopService()
    assert telemetry.dropped("jsonl_write_failed") == 250
    assert logged_errors.expect("Could not write whole lines")


# Run in a process of its own: a file size limit applies to the whole process.
_SIZE_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    from twisted_statsd.sinks.jsonl import AppendFile
    from twisted_statsd.telemetry import Telemetry

    path, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    telemetry = Telemetry()
    out = AppendFile(path, telemetry)
    for chunk in range(10):
        out.write(b"".join(b'{"chunk": %d, "line": %d}\\n' % (chunk, line) for line in range(7)))
    out.close()
    print(telemetry.dropped("jsonl_write_failed"))
    """
)


def test_a_write_cut_short_leaves_whole_lines_only(tmp_path):
    """Issue 12 defect 8: a write cut short by a full disk left half a line glued to the next one."""
    path = tmp_path / "out.jsonl"
    chunk = sum(len(b'{"chunk": 0, "line": %d}\n' % line) for line in range(7))
    limit = chunk * 3 + chunk // 2  # the fourth chunk is cut in the middle
    result = subprocess.run(
        [sys.executable, "-c", _SIZE_LIMITED, str(path), str(limit)], capture_output=True, text=True, check=True
    )
    data = path.read_text()
    assert data.endswith("\n")
    written = [json.loads(line) for line in data.splitlines()]
    assert [o["chunk"] for o in written] == [0] * 7 + [1] * 7 + [2] * 7
    assert int(result.stdout) == 7 * 7


def test_append_file_appends_to_what_is_there(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"earlier\n")
    out = AppendFile(str(path), Telemetry())
    out.write(b"later\n")
    out.close()
    assert path.read_bytes() == b"earlier\nlater\n"
