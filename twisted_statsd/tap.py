"""The twistd plugin's options and service maker: ``twistd -n statsd [options]``.

A failure at start is one line a person can act on, then exit status 1, with
no traceback and no usage text: a configuration error is printed on stderr
(logging has not started yet), and a :class:`StartupError` raised while the
services start (a port in use, a sink path that cannot be opened) is logged
as one critical line.  ``--help`` shows each option's key, ``DD_*`` variable
and default; ``--version`` prints twisted-statsd's version.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, ClassVar, NoReturn

from twisted.application.service import MultiService, Service
from twisted.copyright import version as twisted_version
from twisted.logger import Logger
from twisted.python import usage

from twisted_statsd import __version__
from twisted_statsd.config import ConfigError, key_help, load_config
from twisted_statsd.errors import StartupError

# Command-line options that set a configuration key: (option, short, key, what it does).
# Their default and DD_* variable in --help come from the key's declaration in config.py.
_KEY_OPTIONS = (
    ("port", "p", "dogstatsd_port", "UDP port; 0 turns UDP off, __random__ picks one."),
    ("bind-host", None, "bind_host", "Address to bind UDP to."),
    ("hostname", None, "hostname", "Host name reported with metrics."),
    ("flush-interval", None, "flush_interval", "Seconds between flushes to the sinks."),
    ("socket", None, "dogstatsd_socket", "Unix datagram socket to listen on."),
    ("stream-socket", None, "dogstatsd_stream_socket", "Unix stream socket to listen on."),
)
_KEY_FLAGS = (("non-local-traffic", None, "dogstatsd_non_local_traffic", "Listen on all interfaces."),)


def _shown(value: Any) -> str:
    if value is True or value is False:
        return "on" if value else "off"
    if value == "":
        return "none"
    return str(value)


def _help(text: str, key: str) -> str:
    default, env = key_help(key)
    return f"{text} [{key}{f', {env}' if env else ''}; default: {_shown(default)}]"


class StartupExit(SystemExit, Exception):
    """Ends twistd with status 1 and no traceback, once the reason has been logged or printed.

    twistd's Unix runner catches ``Exception`` around the application's start,
    to report on a daemon's status pipe and remove the pid file, then re-raises;
    the interpreter prints a traceback for anything but ``SystemExit``.  Being
    both, this gets twistd's clean-up, then a silent exit with status 1.  Its
    text is what a daemonising twistd's parent process prints.
    """

    def __init__(self, message: str):
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def exit_before_logging(error: StartupError) -> NoReturn:
    """Print ``error`` as one stderr line and exit with status 1: twistd's log has not started yet."""
    message = _one_line(error)
    sys.stderr.write(f"twistd statsd: {message}\n")
    sys.stderr.flush()
    raise StartupExit(message) from None


class Options(usage.Options):
    """Command-line options; they override the configuration file and ``DD_*`` variables."""

    optParameters: ClassVar[list] = [
        ["config", "c", None, "YAML configuration file with DogStatsD key names [default: none]."],
        *([option, short, None, _help(text, key)] for option, short, key, text in _KEY_OPTIONS),
        [
            "jsonl",
            None,
            None,
            "Write flushes as JSON lines to this path ('-' for stdout) instead of the console [default: console].",
        ],
    ]
    optFlags: ClassVar[list] = [[option, short, _help(text, key)] for option, short, key, text in _KEY_FLAGS]

    def opt_version(self) -> NoReturn:
        """Print twisted-statsd's version and exit."""
        print(f"twisted-statsd {__version__} (Twisted {twisted_version}, Python {sys.version.split()[0]})")
        sys.exit(0)

    def postOptions(self):
        """Load the configuration; an error in it is one line on stderr and exit status 1, not a usage text."""
        overrides: dict[str, Any] = {}
        for option, _, key, _ in _KEY_OPTIONS:
            if self[option] is not None:
                overrides[key] = self[option]
        for option, _, key, _ in _KEY_FLAGS:
            if self[option]:
                overrides[key] = True
        if self["jsonl"] is not None:
            overrides["sinks"] = [{"type": "jsonl", "path": self["jsonl"]}]
        self.overrides = overrides
        try:
            self.config = self.load()
        except ConfigError as error:
            exit_before_logging(error)

    def load(self):
        """Read the configuration again, as at start: file, environment, command line."""
        return load_config(path=self["config"], env=os.environ, overrides=self.overrides)


class ExitOnStartupError(MultiService):
    """The service twistd runs: the server, whose StartupError at start is one log line and exit status 1.

    The server itself raises StartupError, for embedders to catch; only under
    twistd does it end the process.  Anything else raised at start is a bug and
    keeps its traceback.
    """

    log = Logger()

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except StartupError as error:
            self._exit(error)

    def startService(self):
        try:
            super().startService()
        except StartupError as error:
            self._exit(error)

    def _exit(self, error: StartupError) -> NoReturn:
        message = _one_line(error)
        self.log.critical("Cannot start: {error}", error=message, log_category="STARTUP_FAILED")
        raise StartupExit(message) from None


class ReloadOnHangup(Service):
    """On SIGHUP, re-read the configuration and apply its runtime keys if it is valid.

    The mapper, block list, tag filter list, tag value limits, context limits
    and ``dogstatsd_tags`` are reloaded (:meth:`StatsdService.reload`); other
    keys need a restart.  An invalid file is logged and the running
    configuration stays.
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
            self.root.reload(config)
        except (ConfigError, ValueError) as e:
            self.log.error("SIGHUP: configuration not reloaded, the running configuration stays: {error}", error=str(e))

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


def makeService(options):
    """Build the server from parsed options; the global reactor is imported only here.

    The server (named ``statsd``) is the only child of the service returned.
    """
    from twisted.internet import reactor

    from twisted_statsd.service import build_service

    log = Logger()
    for warning in options.config.warnings:
        log.warn("Configuration: {warning}", warning=warning)
    try:
        root = build_service(options.config, reactor, freeze_gc=True)
    except StartupError as error:
        exit_before_logging(error)
    ReloadOnHangup(reactor, root, options.load).setServiceParent(root)
    guard = ExitOnStartupError()
    root.setServiceParent(guard)
    return guard
