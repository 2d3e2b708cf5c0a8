"""pytest plugin: the ``statsd_server`` fixture, registered through the ``pytest11`` entry point.

It needs pytest-twisted (the reactor must run while the test does).  Nothing is
imported from Twisted until the fixture is used, so the plugin costs nothing
in test runs that do not use it.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def statsd_server():
    """A started :class:`twisted_statsd.testing.CapturingServer` on an ephemeral UDP port.

    Point your code at ``statsd_server.host``/``statsd_server.port``, then
    ``await statsd_server.flush()`` (``statsd_server.flush_now()`` in a plain
    test) and assert with ``statsd_server.assert_metric(...)``.  The
    server is stopped after the test, leaving no port behind.
    """
    import pytest_twisted

    from twisted_statsd.testing import CapturingServer

    server = CapturingServer().start()
    yield server
    pytest_twisted.blockon(server.stop())
