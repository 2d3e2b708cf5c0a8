"""Packet forwarding (``statsd_forward_host`` / ``statsd_forward_port``, spec §4).

Every packet a listener reads is also sent, unchanged and before parsing, over
UDP to another StatsD server, so that server sees every line clients sent
exactly once.  Each datagram or stream frame is forwarded as it was received;
nothing is merged.  Forwarding never holds up intake: until the address is
resolved, and whenever a send fails, packets are dropped for the forward copy
only, counted and reported at a limited rate.  The name is resolved again every
``RESOLVE_INTERVAL`` seconds so a moved target is followed (IPv4, as the
reactor's resolver gives).
"""

from __future__ import annotations

import errno

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.udp import Port
from twisted.logger import Logger

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._twisted_helpers import periodic

RESOLVE_INTERVAL = 60.0


class _SendOnly(DatagramProtocol):
    """The forwarder's socket only sends; the port is unconnected, so refusals are not reported."""

    noisy = False


class ForwarderService(Service):
    """Sends a copy of every packet to ``host:port``; see the module docstring."""

    log = Logger()

    def __init__(self, reactor, reporter: RateLimitedReporter, host: str, port: int):
        self.reactor = reactor
        self.reporter = reporter
        self.host = host
        self.port = port
        self._udp: Port | None = None
        self._address: tuple[str, int] | None = None
        self._resolver = periodic(reactor, RESOLVE_INTERVAL, self._resolve, reporter.telemetry, "forward_resolve")

    def startService(self):
        super().startService()
        self._udp = self.reactor.listenUDP(0, _SendOnly(), interface="")
        self._resolver.startService()

    async def _resolve_address(self) -> None:
        try:
            address = await self.reactor.resolve(self.host)
        except Exception as e:
            self.reporter.telemetry.incr("forward_resolve_errors")
            self.log.warn("Cannot resolve the forward target {host!r}: {error}", host=self.host, error=str(e))
            return
        if (address, self.port) != self._address:
            self._address = (address, self.port)
            self.log.info("Forwarding packets to udp {host}:{port}", host=address, port=self.port)

    def _resolve(self):
        return defer.ensureDeferred(self._resolve_address())

    def forward(self, packet: bytes) -> None:
        """Send one packet; never raises: a failure is counted as a dropped forward copy."""
        if self._address is None or self._udp is None:
            self.reporter.report("forward_unresolved", "the forward target is not resolved yet", packet)
            return
        try:
            self._udp.write(packet, self._address)
        except OSError as e:
            reason = "forward_would_block" if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK) else "forward_send_failed"
            self.reporter.report(reason, f"cannot forward to {self._address}: {e}", packet)
        except Exception as e:  # MessageLengthError and the like
            self.reporter.report("forward_send_failed", f"cannot forward to {self._address}: {e}", packet)
        else:
            self.reporter.telemetry.incr("forwarded_packets")

    def stopService(self):
        """Stop resolving (waiting for a resolution in flight) and close the socket."""
        super().stopService()
        waits = []
        if self._resolver.running:
            waits.append(self._resolver.stopService())
        udp, self._udp = self._udp, None
        if udp is not None:
            waits.append(defer.maybeDeferred(udp.stopListening))
        return defer.gatherResults(waits).addCallback(lambda _: None)
