"""Every network listener and endpoint binds loopback unless told otherwise (issue 12, item 6).

A server built from a configuration that only turns each one on (ephemeral
ports) is started on the real reactor, and the address each port actually
got is read back.  The Prometheus sink's default is pinned in
``test_sink_prometheus.py``; Unix sockets are off by default and get an
explicit mode (``test_unix_server.py``).
"""

from __future__ import annotations

import pytest_twisted
from helpers import with_deadline

from twisted_statsd import build_service, load_config
from twisted_statsd.testing import MemorySink


@pytest_twisted.ensureDeferred
async def test_udp_tcp_and_the_admin_endpoint_bind_loopback_by_default(reactor):
    config = load_config(
        data={"dogstatsd_port": "__random__", "dogstatsd_tcp_port": "__random__", "admin_port": "__random__"}
    )
    service = build_service(config, reactor, sinks=[MemorySink()])
    service.privilegedStartService()
    service.startService()
    try:
        hosts = {name: getattr(service, name).address.host for name in ("udp", "tcp", "admin")}
    finally:
        await with_deadline(reactor, service.stopService())
    assert hosts == {"udp": "127.0.0.1", "tcp": "127.0.0.1", "admin": "127.0.0.1"}


@pytest_twisted.ensureDeferred
async def test_non_local_traffic_opens_udp_and_tcp_but_not_the_admin_endpoint(reactor):
    config = load_config(
        data={
            "dogstatsd_port": "__random__",
            "dogstatsd_tcp_port": "__random__",
            "admin_port": "__random__",
            "dogstatsd_non_local_traffic": True,
        }
    )
    service = build_service(config, reactor, sinks=[MemorySink()])
    service.privilegedStartService()
    service.startService()
    try:
        hosts = {name: getattr(service, name).address.host for name in ("udp", "tcp", "admin")}
    finally:
        await with_deadline(reactor, service.stopService())
    assert hosts == {"udp": "0.0.0.0", "tcp": "0.0.0.0", "admin": "127.0.0.1"}
