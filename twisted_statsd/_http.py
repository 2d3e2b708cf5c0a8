"""Small HTTP servers that accept only bodiless GETs: the Prometheus page and the admin endpoint.

Both answer loopback clients reading state, so a request that announces a body
is refused at its headers (413) instead of being spooled to a temporary file,
the number of open connections is capped, and stopping closes the connections
still open and waits for them.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

TOO_LARGE = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BodylessChannel(HTTPChannel):
    """Refuses requests with a body; tracks itself in the site's ``channels`` so stopping can close it."""

    def headerReceived(self, line):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            self.transport.write(TOO_LARGE)
            self.transport.loseConnection()
            return False
        return super().headerReceived(line)

    def connectionMade(self):
        super().connectionMade()
        self.factory.channels[self] = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        done = self.factory.channels.pop(self, None)
        if done is not None:
            done.callback(None)


class CappedSite(Site):
    """A Site serving at most ``max_connections`` connections at once; more are refused."""

    protocol = BodylessChannel
    noisy = False

    def __init__(self, resource, reactor, max_connections: int):
        super().__init__(resource, reactor=reactor)
        self.max_connections = max_connections
        self.channels: dict[BodylessChannel, defer.Deferred] = {}

    def buildProtocol(self, addr):
        if len(self.channels) >= self.max_connections:
            return None
        return super().buildProtocol(addr)

    def log(self, request):
        """Requests are counted in telemetry, not logged one line each."""


def close_site(listening, site: CappedSite) -> defer.Deferred:
    """Stop listening and abort the site's open connections; fires when both are done."""
    waits = [defer.maybeDeferred(listening.stopListening), *site.channels.values()]
    for channel in list(site.channels):
        channel.transport.abortConnection()
    return defer.gatherResults(waits).addCallback(lambda _: None)
