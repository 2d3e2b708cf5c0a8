"""Socket files are created with their mode: no moment with the umask's permissions (issue 12 item 6).

Binding and then chmod-ing left the file, for a moment, with ``0o777 & ~umask``:
under umask 0 anyone could connect before the mode was set.  ``os.chmod`` is
watched here: whenever it is called on the socket file, the file must already
have the requested mode.
"""

from __future__ import annotations

import os
import stat

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.listeners import sockets
from twisted_statsd.listeners.unixstream import FramedStreamFactory, UnixStreamListenerService
from twisted_statsd.telemetry import Telemetry


@pytest.fixture
def path(short_tmpdir):
    return os.path.join(short_tmpdir, "dsd.socket")


@pytest.fixture
def modes_at_chmod(monkeypatch, path):
    """The socket file's mode each time something chmods it, under the widest umask (0)."""
    seen = []
    chmod = os.chmod

    def watching(target, mode, *args, **kwargs):
        if os.fspath(target) in (path, os.fsencode(path)):
            seen.append(stat.S_IMODE(os.lstat(target).st_mode))
        return chmod(target, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", watching)
    previous = os.umask(0)
    yield seen
    assert os.umask(previous) == 0  # the umask in force around the bind is put back


def test_a_datagram_socket_file_never_has_wider_permissions(path, modes_at_chmod):
    sock = sockets.bind_datagram_socket(path, 0o722)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o722
        assert modes_at_chmod in ([], [0o722])
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_socket_file_never_has_wider_permissions(reactor, path, modes_at_chmod):
    factory = FramedStreamFactory(object(), RateLimitedReporter(Telemetry()), clock=Clock(), max_frame=64)
    listener = UnixStreamListenerService(reactor, factory, path, mode=0o720)
    listener.bind()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o720
        assert modes_at_chmod and set(modes_at_chmod) == {0o720}  # Twisted chmods after its bind
    finally:
        await listener.port.stopListening()
