"""The live page in headless Chromium, against a real server receiving metrics over UDP.

Chromium runs the page's script for a few seconds of virtual time (network
fetches to the server happen in real time meanwhile) and dumps the DOM it
built; a second run writes a screenshot to ``build/test-artifacts/`` (or
``$TEST_ARTIFACTS_DIR``).  Needs Debian's ``chromium``; skipped without it.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from helpers import with_deadline
from twisted.internet import task, utils

from twisted_statsd import build_service, load_config
from twisted_statsd.testing import MemorySink

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", Path(__file__).parents[2] / "build" / "test-artifacts"))

# Client-sent text that would run if the page wrote it as HTML (CSP aside).
SCRIPT = "<script>document.body.dataset.xss='script'</script>"
IMAGE = "<img src=x onerror=document.body.dataset.xss='img'>"


def table(dom: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells in the dumped table ``table_id``."""
    found = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert found, f"no table {table_id}"
    rows = re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S)
    return [
        [html.unescape(re.sub(r"<[^>]*>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in rows
    ]


async def chromium(reactor, *args: str) -> str:
    profile = tempfile.mkdtemp(prefix="chrome")
    try:
        out, err, code = await with_deadline(
            reactor,
            utils.getProcessOutputAndValue(
                CHROMIUM,
                [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    "--virtual-time-budget=6000",
                    *args,
                ],
                env={"HOME": profile, "PATH": os.environ.get("PATH", "")},
            ),
            timeout=90,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert code == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8", "replace")


@pytest_twisted.ensureDeferred
async def test_the_page_shows_live_metrics_and_runs_nothing_a_client_sent(reactor):
    config = load_config(
        data={
            "dogstatsd_port": "__random__",
            "admin_port": "__random__",
            "hostname": "pagehost",
            "flush_interval": 3600,
            "dogstatsd_metrics_stats_enable": True,
        }
    )
    service = build_service(config, reactor, sinks=[MemorySink()])
    service.startService()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = ("127.0.0.1", service.udp.address.port)
    sent = [0]

    def send() -> None:
        sent[0] += 1
        lines = [
            b"page.requests:%d|c|#route:home" % sent[0],
            b"page.latency:%d|ms|#route:home" % (sent[0] % 50),
            b"page.queue:%d|g" % (sent[0] % 7),
            ("xss." + SCRIPT + ":1|c|#note:" + IMAGE).encode(),
            f"_e{{{len(SCRIPT)},{len(IMAGE)}}}:{SCRIPT}|{IMAGE}|#src:test".encode(),
            b"bad" + SCRIPT.encode(),
        ]
        sock.sendto(b"\n".join(lines), address)

    sending = task.LoopingCall(send)
    # Final flushes close the open bucket too: every flush has rows, as a 10 s one would.
    flushing = task.LoopingCall(lambda: service.flush(final=True))
    base = f"http://127.0.0.1:{service.admin.address.port}"
    try:
        service.admin.recent.watch(reactor.seconds())  # as the page's first poll does
        for _ in range(3):  # a few flushes, so the sparklines have points
            send()
            await with_deadline(reactor, service.flush(final=True))
        sending.start(0.05)
        flushing.start(0.5, now=False)

        dom = await chromium(reactor, "--dump-dom", base + "/")
        assert re.search(r'<body[^>]*data-polls="[1-9]', dom), dom[:3000]
        assert "data-xss" not in dom
        metrics = table(dom, "metrics")
        names = {row[0] for row in metrics}
        assert {"page.requests", "page.latency.max", "page.queue"} <= names
        assert "xss." + SCRIPT in names  # shown as text
        requests = next(row for row in metrics if row[0] == "page.requests")
        assert requests[1:4] == ["rate", "route:home", "pagehost"]
        assert "<polyline" in dom  # a sparkline was drawn
        assert (SCRIPT, IMAGE, "src:test") in {tuple(row) for row in table(dom, "events")}
        assert ["metric_no_pipe", "bad" + SCRIPT] in table(dom, "bad-lines")
        assert "xss." + SCRIPT in {row[0] for row in table(dom, "top")}
        assert any(row[0] == "page.requests" for row in table(dom, "top"))
        # What a client sent is text in the DOM, never markup: no element of its own.
        assert "<img" not in dom and dom.count("<script") == 1  # the page's own app.js

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "admin-page.png"
        await chromium(reactor, "--window-size=1280,1400", f"--screenshot={shot}", base + "/")
        assert shot.stat().st_size > 10_000
    finally:
        for loop in (sending, flushing):
            if loop.running:
                loop.stop()
        sock.close()
        await with_deadline(reactor, service.stopService())
