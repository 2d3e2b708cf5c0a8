"""Packet forwarding (``statsd_forward_host`` / ``statsd_forward_port``, spec §4).

Every packet a listener reads is also sent, unchanged and before parsing, over
UDP to another StatsD server, so that server sees every line clients sent
exactly once.  Each datagram or stream frame is forwarded as it was received;
nothing is merged.  Forwarding never holds up intake: until the address is
resolved, and whenever a send fails, packets are dropped for the forward copy
only, counted and reported at a limited rate.  The name is resolved again every
``RESOLVE_INTERVAL`` seconds so a moved target is followed (IPv4, as the
reactor's resolver gives).

The send socket listens to nothing it does not need.  It is a plain
non-blocking socket connected to the target: the kernel binds it to the one
local address the target is reached from (loopback for a local target), not
to every interface, and delivers it no datagram from anyone else.  It is never
read, so it is not given to the reactor (Twisted closes a connected UDP port
on the first ICMP error, epoll reporting it as a hang-up); a send never waits
(a full buffer drops the copy), and one the target refused is counted.  A new
address gets a new socket.
"""

from __future__ import annotations

import errno
import socket

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._twisted_helpers import periodic

RESOLVE_INTERVAL = 60.0

# Drop reasons of a forward copy the kernel would not send; any other error is forward_send_failed.
_SEND_ERRORS = {
    errno.EAGAIN: "forward_would_block",
    errno.EWOULDBLOCK: "forward_would_block",
    errno.ECONNREFUSED: "forward_refused",
}


class ForwarderService(Service):
    """Sends a copy of every packet to ``host:port``; see the module docstring."""

    log = Logger()

    def __init__(self, reactor, reporter: RateLimitedReporter, host: str, port: int):
        self.reactor = reactor
        self.reporter = reporter
        self.host = host
        self.port = port
        self._socket: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._resolver = periodic(reactor, RESOLVE_INTERVAL, self._resolve, reporter.telemetry, "forward_resolve")

    def startService(self):
        super().startService()
        self._resolver.startService()

    async def _resolve_address(self) -> None:
        try:
            address = await self.reactor.resolve(self.host)
        except Exception as e:
            self.reporter.telemetry.incr("forward_resolve_errors")
            self.log.warn("Cannot resolve the forward target {host!r}: {error}", host=self.host, error=str(e))
            return
        if (address, self.port) != self._address:
            try:
                self._connect((address, self.port))
            except OSError as e:
                self.reporter.telemetry.incr("forward_resolve_errors")
                self.log.warn("Cannot reach the forward target {host}: {error}", host=address, error=str(e))
                return
            self.log.info("Forwarding packets to udp {host}:{port}", host=address, port=self.port)

    def _connect(self, address: tuple[str, int]) -> None:
        """Send from now on through a new socket connected to ``address``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        old, self._socket, self._address = self._socket, sock, address
        if old is not None:
            old.close()

    def _resolve(self):
        return defer.ensureDeferred(self._resolve_address())

    def forward(self, packet: bytes) -> None:
        """Send one packet; never raises: a failure is counted as a dropped forward copy."""
        if self._socket is None:
            self.reporter.report("forward_unresolved", "the forward target is not resolved yet", packet)
            return
        try:
            self._socket.send(packet)
        except OSError as e:
            reason = _SEND_ERRORS.get(e.errno or 0, "forward_send_failed")
            self.reporter.report(reason, f"cannot forward to {self._address}: {e}", packet)
        else:
            self.reporter.telemetry.incr("forwarded_packets")

    def stopService(self):
        """Stop resolving (waiting for a resolution in flight) and close the socket."""
        super().stopService()
        waits = []
        if self._resolver.running:
            waits.append(self._resolver.stopService())
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        return defer.gatherResults(waits).addCallback(lambda _: None)
