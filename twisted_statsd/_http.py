"""Small HTTP servers that accept only bodiless GETs: the Prometheus page and the admin endpoint.

Both answer loopback clients reading state, so a request that announces a body
is refused at its headers (413) instead of being spooled to a temporary file,
the number of open connections is capped, and stopping closes the connections
still open and waits for them.

Slow clients cannot hold the slots (issue 12 defect 6).  Twisted's own timeout
is an idle timer that every byte resets, so one byte every 30 s held a
connection for ever and 64 of them kept every scraper out.  Here a connection
has ``request_deadline`` seconds to send a complete request, counted from its
opening or from the end of its previous response, whatever it trickles
meanwhile; one that misses it is aborted, and with it a response it has not
read.  And a connection beyond the cap evicts the oldest one that is not being
answered, so a client that connects and asks at once (a scraper) always gets
in; only when every slot is being answered is a connection refused.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from twisted_statsd._binding import BindingService
from twisted_statsd._twisted_helpers import deadline

TOO_LARGE = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

# Seconds a connection has to send a complete request (from its opening or the end of its previous response).
REQUEST_DEADLINE = 10.0


class BodylessChannel(HTTPChannel):
    """Refuses requests with a body; tracks itself in the site's ``channels`` so stopping can close it.

    ``answering`` is true from a complete request to the end of its response
    (no deadline runs meanwhile: a response may stream); ``closing`` once it
    was aborted, its slot free although its ``connectionLost`` is still to come.
    """

    #: A TCP connection (a listening TCP port builds the channels).
    transport: ITCPTransport
    answering = False
    closing = False
    _disarm_deadline: Callable[..., object] = staticmethod(lambda result=None: result)

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
        self._arm_deadline()

    def allContentReceived(self):
        self.answering = True
        self._disarm_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        super().requestDone(request)
        self.answering = False
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._disarm_deadline = deadline(self.factory.reactor, self.factory.request_deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self.factory.count("request_timeouts")
        self.close()

    def close(self) -> None:
        """Abort the connection, whatever it is doing."""
        self.closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm_deadline()
        super().connectionLost(reason)
        done = self.factory.channels.pop(self, None)
        if done is not None:
            done.callback(None)


def _uncounted(name: str) -> None:
    pass


class CappedSite(Site):
    """A Site serving at most ``max_connections`` connections at once, each request within ``request_deadline``.

    ``count(name)`` hears ``request_timeouts``, ``connections_evicted`` and
    ``connections_refused``, for the owner's telemetry.
    """

    # Twisted annotates this as its HTTP/2-negotiating wrapper factory; any HTTPChannel class serves.
    protocol = BodylessChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        resource,
        reactor,
        max_connections: int,
        *,
        count: Callable[[str], None] = _uncounted,
        request_deadline: float = REQUEST_DEADLINE,
    ):
        super().__init__(resource, reactor=reactor)
        self.max_connections = max_connections
        self.count = count
        self.request_deadline = request_deadline
        self.channels: dict[BodylessChannel, defer.Deferred] = {}

    def buildProtocol(self, addr):
        live = [channel for channel in self.channels if not channel.closing]
        if len(live) >= self.max_connections:
            idle = next((channel for channel in live if not channel.answering), None)
            if idle is None:
                self.count("connections_refused")
                return None
            self.count("connections_evicted")
            idle.close()
        return super().buildProtocol(addr)

    def log(self, request):
        """Requests are counted in telemetry, not logged one line each."""


def close_site(listening, site: CappedSite) -> defer.Deferred:
    """Stop listening and abort the site's open connections; fires when both are done."""
    waits = [defer.maybeDeferred(listening.stopListening), *site.channels.values()]
    for channel in list(site.channels):
        channel.close()
    return defer.gatherResults(waits).addCallback(lambda _: None)


class SiteService(BindingService):
    """A BindingService whose ``bind`` sets ``_site`` (a CappedSite) and ``_listening`` (its port)."""

    _site: CappedSite | None = None
    _listening: IListeningPort | None = None

    @property
    def address(self):
        """The bound address (``.port`` is the real port when 0 was asked for), or None."""
        return self._listening.getHost() if self._listening else None

    @property
    def bound(self) -> bool:
        return self._listening is not None

    def _close_site(self) -> defer.Deferred:
        """Stop listening and abort the open connections; fires when both are done (at once if not listening)."""
        listening, self._listening = self._listening, None
        if listening is None or self._site is None:
            return defer.succeed(None)
        return close_site(listening, self._site)
