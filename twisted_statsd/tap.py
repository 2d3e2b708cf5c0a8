"""The twistd plugin's options and service maker: ``twistd -n statsd [options]``."""

from __future__ import annotations

import os
import signal
from typing import ClassVar

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from twisted_statsd.config import ConfigError, load_config


class Options(usage.Options):
    """Command-line options; they override the configuration file and ``DD_*`` variables."""

    optParameters: ClassVar[list] = [
        ["config", "c", None, "YAML configuration file (DogStatsD key names)."],
        ["port", "p", None, "UDP port (dogstatsd_port); 0 turns UDP off, __random__ picks one."],
        ["bind-host", None, None, "Address to bind UDP to (bind_host)."],
        ["hostname", None, None, "Host name reported with metrics (hostname)."],
        ["flush-interval", None, None, "Seconds between flushes to the sinks (flush_interval)."],
        ["jsonl", None, None, "Write flushes as JSON lines to this path ('-' for stdout) instead of the console."],
        ["socket", None, None, "Unix datagram socket to listen on (dogstatsd_socket)."],
        ["stream-socket", None, None, "Unix stream socket to listen on (dogstatsd_stream_socket)."],
    ]
    optFlags: ClassVar[list] = [
        ["non-local-traffic", None, "Listen on all interfaces (dogstatsd_non_local_traffic)."],
    ]

    def postOptions(self):
        overrides = {}
        for option, key in (
            ("port", "dogstatsd_port"),
            ("bind-host", "bind_host"),
            ("hostname", "hostname"),
            ("flush-interval", "flush_interval"),
            ("socket", "dogstatsd_socket"),
            ("stream-socket", "dogstatsd_stream_socket"),
        ):
            if self[option] is not None:
                overrides[key] = self[option]
        if self["non-local-traffic"]:
            overrides["dogstatsd_non_local_traffic"] = True
        if self["jsonl"] is not None:
            overrides["sinks"] = [{"type": "jsonl", "path": self["jsonl"]}]
        self.overrides = overrides
        try:
            self.config = self.load()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def load(self):
        """Read the configuration again, as at start: file, environment, command line."""
        return load_config(path=self["config"], env=os.environ, overrides=self.overrides)


class ReloadOnHangup(Service):
    """On SIGHUP, re-read the configuration and swap in its mapper profiles if they are valid.

    Only the mapper is reloaded; other keys need a restart.  An invalid file is
    logged and the running mapper stays.
    """

    log = Logger()

    def __init__(self, reactor, root, load):
        self.reactor = reactor
        self.root = root
        self.load = load
        self._previous = None

    def startService(self):
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self, signum, frame):
        self.reactor.callFromThread(self.reload)

    def reload(self):
        try:
            config = self.load()
            self.root.reload_mapper(config.dogstatsd_mapper_profiles, config.dogstatsd_mapper_cache_size)
        except (ConfigError, ValueError) as e:
            self.log.error("SIGHUP: configuration not reloaded, the running mapper stays: {error}", error=str(e))

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


def makeService(options):
    """Build the server from parsed options; the global reactor is imported only here."""
    from twisted.internet import reactor

    from twisted_statsd.service import build_service

    log = Logger(namespace="twisted_statsd")
    for warning in options.config.warnings:
        log.warn("Configuration: {warning}", warning=warning)
    root = build_service(options.config, reactor, freeze_gc=True)
    ReloadOnHangup(reactor, root, options.load).setServiceParent(root)
    return root
