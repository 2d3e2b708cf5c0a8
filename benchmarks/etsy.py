"""Etsy statsd (npm ``statsd``) as a benchmark receiver: install, configure, count.

Etsy statsd 0.9.0 parses DogStatsD tags (``|#k:v,...`` becomes ``name;k=v;...``)
and takes ``h`` and ``d`` lines as counters, so it is sent the very same
datagrams as twisted-statsd; none of them is a bad line (counted anyway).

Counting what it received: statsd keeps ``statsd.metrics_received`` (one per
non-empty line) and ``statsd.bad_lines_seen`` as counters that every flush
resets.  A no-op backend written here sums them at every flush, and on SIGTERM
exits the process, whose exit handler runs a last flush; the backend writes
the totals to a JSON file at each flush.  Its own UDP server module (statsd's
``servers`` option, the plug-in point for servers) is statsd's stock one plus
``recvBufferSize``, so statsd gets the same receive buffer as twisted-statsd,
binds an ephemeral port and reports both.  ``flushInterval`` is 10 s, as
DogStatsD's buckets; ``deleteIdleStats`` on, ``dumpMessages`` off.  (The
management port cannot give totals: ``counters`` shows the counters only since
the last flush, and ``stats`` only ``messages.bad_lines_seen`` and
``messages.last_msg_seen``.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

from benchmarks.receivers import ProcessReceiver

VERSION = "0.9.0"  # `npm view statsd version` on 2026-11-23; pinned so runs compare

BACKEND_JS = """\
// No-op benchmark backend: sums statsd's own counters over every flush into a JSON file.
const fs = require('fs');
exports.init = function (startupTime, config, events) {
  console.log('BENCH startup ' + startupTime);
  const prefix = (config.prefixStats !== undefined ? config.prefixStats : 'statsd') + '.';
  const totals = {metrics_received: 0, bad_lines_seen: 0, packets_received: 0, flushes: 0};
  events.on('flush', function (timestamp, metrics) {
    totals.metrics_received += metrics.counters[prefix + 'metrics_received'] || 0;
    totals.bad_lines_seen += metrics.counters[prefix + 'bad_lines_seen'] || 0;
    totals.packets_received += metrics.counters[prefix + 'packets_received'] || 0;
    totals.flushes += 1;
    fs.writeFileSync(config.benchmarkTotals, JSON.stringify(totals));
  });
  // exit (not the default SIGTERM death) runs statsd's exit handler: a last flush.
  process.on('SIGTERM', function () { process.exit(0); });
  return true;
};
"""

SERVER_JS = """\
// statsd's servers/udp.js plus recvBufferSize, an ephemeral port, and a line saying what was granted.
const dgram = require('dgram');
exports.start = function (config, callback) {
  const server = dgram.createSocket({type: 'udp4', recvBufferSize: config.recvBufferSize}, callback);
  server.on('listening', function () {
    console.log('BENCH listening port ' + server.address().port +
                ' receive buffer ' + server.getRecvBufferSize() + ' bytes');
  });
  server.bind(config.port, config.address);
  this.server = server;
  return true;
};
"""


def install(directory: str, version: str = VERSION) -> str:
    """``npm install statsd@version`` into ``directory``; returns the path of stats.js."""
    stats_js = os.path.join(directory, "node_modules", "statsd", "stats.js")
    if not os.path.exists(stats_js):
        with open(os.path.join(directory, "package.json"), "w") as f:
            json.dump({"name": "statsd-benchmark", "private": True}, f)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--omit=optional", "--ignore-scripts", f"statsd@{version}"],
            cwd=directory,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    with open(os.path.join(directory, "node_modules", "statsd", "package.json")) as f:
        installed = json.load(f)["version"]
    if installed != version:
        raise RuntimeError(f"{directory} holds statsd {installed}, not {version}")
    return stats_js


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtsyStatsd(ProcessReceiver):
    """One Etsy statsd process, listening on UDP on loopback."""

    name = "etsy-statsd"
    ready_pattern = r"BENCH listening port (?P<port>\d+) receive buffer (?P<rcvbuf>\d+) bytes"
    FLUSH_SECONDS = 10

    def __init__(self, stats_js: str, workdir: str, rcvbuf: int):
        super().__init__(workdir, "udp")
        self.stats_js = stats_js
        self.rcvbuf_asked = rcvbuf
        self.totals_path = os.path.join(workdir, "etsy-totals.json")

    def command(self) -> list[str]:
        backend, server, config = (os.path.join(self.workdir, n) for n in ("backend.js", "udp.js", "config.js"))
        for path, text in ((backend, BACKEND_JS), (server, SERVER_JS)):
            with open(path, "w") as f:
                f.write(text)
        settings = {
            "servers": [{"server": server, "address": "127.0.0.1", "port": 0, "recvBufferSize": self.rcvbuf_asked}],
            "mgmt_address": "127.0.0.1",
            "mgmt_port": _free_tcp_port(),
            "backends": [backend],
            "benchmarkTotals": self.totals_path,
            "flushInterval": self.FLUSH_SECONDS * 1000,
            "deleteIdleStats": True,
            "dumpMessages": False,
        }
        with open(config, "w") as f:
            json.dump(settings, f)
        if os.path.exists(self.totals_path):
            os.unlink(self.totals_path)
        return ["node", self.stats_js, config]

    def next_flush_after(self, when: float) -> float:
        """statsd flushes at its start second plus whole flush intervals."""
        startup = int(re.search(r"BENCH startup (\d+)", self.log_text()).group(1))
        return startup + (int((when - startup) // self.FLUSH_SECONDS) + 1) * self.FLUSH_SECONDS

    def result(self) -> dict:
        if not os.path.exists(self.totals_path):
            raise self._failed("wrote no totals")
        with open(self.totals_path) as f:
            totals = json.load(f)
        dropped = {"bad_line": totals["bad_lines_seen"]} if totals["bad_lines_seen"] else {}
        return {
            "accepted": totals["metrics_received"] - totals["bad_lines_seen"],
            "dropped": dropped,
            "packets": totals["packets_received"],
        }
