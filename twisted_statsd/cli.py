"""The ``twisted-statsd`` command: reads a running server's admin endpoint (README "Admin endpoint").

    twisted-statsd [--url URL | --config FILE] top [--by contexts|samples|series] [-n 20]
    twisted-statsd [--url URL | --config FILE] stats [--enable | --disable]
    twisted-statsd [--url URL | --config FILE] dump-contexts --out FILE [--prefix P]
    twisted-statsd [--url URL | --config FILE] capture --duration S --out FILE [--max-bytes N]
    twisted-statsd replay FILE --to udp://HOST:PORT|unixgram://PATH|unixstream://PATH [--speed X | --max]

A blocking client (``urllib``) is enough for a command that makes one request
and exits; nothing here imports the reactor.
"""

from __future__ import annotations

import getopt
import json
import sys
import time
import urllib.error
import urllib.request
from typing import ClassVar
from urllib.parse import urlencode

from twisted.python import usage

# 8126 is the Datadog trace agent's port, often on the same host; 8129 is free of known uses.
DEFAULT_URL = "http://127.0.0.1:8129"
TIMEOUT = 30.0
COLUMNS = (
    ("NAME", "name"),
    ("TYPE", "type"),
    ("SAMPLES", "samples"),
    ("CONTEXTS", "contexts"),
    ("SERIES~", "estimated_series"),
    ("LAST SEEN", "last_seen"),
    ("TRANSPORTS", "transports"),
    ("SENDERS", "senders"),
)


class CommandError(Exception):
    """Something the user should be told in one line, with exit status 1."""


def _cell(key: str, value, now: float) -> str:
    if key == "last_seen":
        return "-" if value is None else f"{max(now - value, 0.0):.0f}s ago"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value) if value != "" else "-"


def table(rows: list[dict], now: float) -> str:
    """Rows as aligned text columns, the header first."""
    cells = [[title for title, _ in COLUMNS]]
    cells += [[_cell(key, row.get(key), now) for _, key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


class _Client:
    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def open(self, path: str, method: str = "GET", timeout: float = TIMEOUT):
        request = urllib.request.Request(self.base + path, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace").strip()
            raise CommandError(f"{self.base}{path}: HTTP {e.code} {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CommandError(f"cannot reach the admin endpoint at {self.base}: {reason}") from None

    def json(self, path: str, method: str = "GET") -> dict:
        with self.open(path, method) as response:
            return json.load(response)


class _Command(usage.Options):
    longdesc = ""


def _summary(body: dict) -> str:
    state = "on" if body["enabled"] else "off (POST /stats/enable, or `twisted-statsd stats --enable`)"
    return f"per-metric statistics: {state}; {body['names']} names, {body['untracked_samples']} untracked samples"


class TopOptions(_Command):
    synopsis = "top [--by contexts|samples|series] [-n N]"
    optParameters: ClassVar[list] = [
        ["by", "b", "contexts", "order by contexts, samples or series"],
        ["n", "n", "20", "how many names", int],
    ]

    def run(self, client: _Client, out) -> None:
        body = client.json("/stats/top?" + urlencode({"by": self["by"], "n": self["n"]}))
        print(_summary(body), file=out)
        print(table(body["metrics"], time.time()), file=out)


class StatsOptions(_Command):
    synopsis = "stats [--enable | --disable]"
    optFlags: ClassVar[list] = [["enable", None, "turn per-metric statistics on"], ["disable", None, "turn them off"]]

    def postOptions(self):
        if self["enable"] and self["disable"]:
            raise usage.UsageError("--enable and --disable exclude each other")

    def run(self, client: _Client, out) -> None:
        if self["enable"] or self["disable"]:
            body = client.json("/stats/enable" if self["enable"] else "/stats/disable", method="POST")
            print(_summary(body), file=out)
            return
        body = client.json("/stats")
        print(_summary(body), file=out)
        print(table(body["metrics"], time.time()), file=out)


class DumpContextsOptions(_Command):
    synopsis = "dump-contexts --out FILE [--prefix P]"
    optParameters: ClassVar[list] = [
        ["out", "o", None, "file to write the contexts to, one JSON object a line ('-': standard output)"],
        ["prefix", "p", "", "only names starting with this"],
    ]

    def postOptions(self):
        if not self["out"]:
            raise usage.UsageError("--out FILE is required")

    def run(self, client: _Client, out) -> None:
        path = "/contexts?" + urlencode({"prefix": self["prefix"]})
        count = 0
        with client.open(path) as response:
            target = sys.stdout.buffer if self["out"] == "-" else open(self["out"], "wb")
            try:
                for line in response:
                    target.write(line)
                    count += 1
            finally:
                if target is not sys.stdout.buffer:
                    target.close()
        if self["out"] != "-":
            print(f"{count} contexts written to {self['out']}", file=out)


class CaptureOptions(_Command):
    synopsis = "capture --duration S --out FILE [--max-bytes N]"
    optParameters: ClassVar[list] = [
        ["duration", "d", None, "seconds to record", float],
        ["out", "o", None, "the capture file to write"],
        [
            "max-bytes",
            None,
            None,
            "stop recording after this many bytes of packets (the server's default: 256 MiB)",
            int,
        ],
    ]

    def postOptions(self):
        if not self["duration"] or not self["out"]:
            raise usage.UsageError("--duration S and --out FILE are required")

    def run(self, client: _Client, out) -> None:
        params = {"duration": self["duration"]}
        if self["max-bytes"]:
            params["max_bytes"] = self["max-bytes"]
        with client.open("/capture?" + urlencode(params), timeout=self["duration"] + TIMEOUT) as response:
            with open(self["out"], "wb") as target:
                while chunk := response.read(65536):
                    target.write(chunk)
        from twisted_statsd.capture import CaptureFormatError, read

        try:
            capture = read(self["out"])
        except CaptureFormatError as e:
            raise CommandError(f"{self['out']}: {e}") from None
        skipped = ", ".join(f"{n} ({reason})" for reason, n in capture.skipped.items()) or "none"
        print(f"{len(capture.records)} packets written to {self['out']}; skipped: {skipped}", file=out)


class ReplayOptions(_Command):
    synopsis = "replay FILE --to udp://HOST:PORT|unixgram://PATH|unixstream://PATH [--speed X | --max]"
    optParameters: ClassVar[list] = [
        ["to", "t", None, "where to send: udp://HOST:PORT, unixgram://PATH or unixstream://PATH"],
        ["speed", "s", 1.0, "times the recorded pace (2: twice as fast)", float],
    ]
    optFlags: ClassVar[list] = [["max", None, "send as fast as possible"], ["quiet", "q", "no progress line"]]

    def parseOptions(self, options=None):
        """Options may follow FILE (``replay FILE --to ...``): GNU-style parsing, then Twisted's."""
        try:
            found, args = getopt.gnu_getopt(options or [], self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        ordered = [f"{o}={v}" if o.startswith("--") and v else o + v for o, v in found]
        super().parseOptions([*ordered, *args])

    def parseArgs(self, path):  # type: ignore[override]
        self["file"] = path

    def postOptions(self):
        if not self["to"]:
            raise usage.UsageError("--to is required")
        if not self["speed"] > 0:
            raise usage.UsageError("--speed must be above 0")

    def run(self, client, out) -> None:
        from twisted_statsd.capture import CaptureFormatError, read
        from twisted_statsd.replay import TargetError, open_target, replay

        try:
            capture = read(self["file"])
        except (OSError, CaptureFormatError) as e:
            raise CommandError(f"{self['file']}: {e}") from None
        try:
            send, close = open_target(self["to"])
        except TargetError as e:
            raise CommandError(str(e)) from None
        terminal = not self["quiet"] and sys.stderr.isatty()

        def show(line: str) -> None:
            sys.stderr.write("\r" + line + "\033[K")
            sys.stderr.flush()

        try:
            sent = replay(
                capture.records, send, speed=None if self["max"] else self["speed"], progress=show if terminal else None
            )
        except OSError as e:
            raise CommandError(f"sending to {self['to']} failed: {e.strerror or e}") from None
        finally:
            close()
        if terminal:
            sys.stderr.write("\n")
        print(f"{sent} packets sent to {self['to']}", file=out)


class Options(usage.Options):
    synopsis = "twisted-statsd [--url URL | --config FILE] COMMAND [options]"
    longdesc = "Reads a running twisted-statsd's admin endpoint (admin_port)."
    optParameters: ClassVar[list] = [
        ["url", "u", None, f"the admin endpoint (default {DEFAULT_URL})"],
        ["config", "c", None, "read admin_host and admin_port from this server configuration file"],
    ]
    subCommands: ClassVar[list] = [
        ["top", None, TopOptions, "the top metric names by contexts, samples or estimated series"],
        ["stats", None, StatsOptions, "every metric name's statistics; or turn them on or off"],
        ["dump-contexts", None, DumpContextsOptions, "write every live context to a file as JSON lines"],
        ["capture", None, CaptureOptions, "record every packet the server receives for a while"],
        ["replay", None, ReplayOptions, "send a capture's packets again"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is required: " + ", ".join(c[0] for c in self.subCommands))
        if self["url"] and self["config"]:
            raise usage.UsageError("--url and --config exclude each other")

    def base_url(self) -> str:
        if self["url"]:
            return self["url"]
        if not self["config"]:
            return DEFAULT_URL
        from twisted_statsd.config import ConfigError, load_config

        try:
            config = load_config(path=self["config"])
        except ConfigError as e:
            raise CommandError(str(e)) from None
        if config.admin_port <= 0:
            raise CommandError(f"{self['config']}: admin_port is not set to a fixed port")
        host = config.admin_host if ":" not in config.admin_host else f"[{config.admin_host}]"
        return f"http://{host}:{config.admin_port}"


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{options}\ntwisted-statsd: {e}", file=sys.stderr)
        return 2
    try:
        options.subOptions.run(_Client(options.base_url()), out)
    except CommandError as e:
        print(f"twisted-statsd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
