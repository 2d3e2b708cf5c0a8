"""BindingService: services that own a socket and bind it as twistd expects.

twistd calls ``privilegedStartService`` on the whole tree before any
``startService``, and a bind that fails there stops the process at start,
before anything runs half-started.  An embedder may call ``startService``
alone, so the bind happens there too when it has not happened yet.
"""

from __future__ import annotations

from twisted.application.service import Service


class BindingService(Service):
    """A Service whose socket is bound synchronously at the first start call."""

    @property
    def bound(self) -> bool:
        raise NotImplementedError

    def bind(self) -> None:
        """Bind the socket; raise (e.g. CannotListenError) when that is impossible."""
        raise NotImplementedError

    def privilegedStartService(self):
        if not self.bound:
            self.bind()
        super().privilegedStartService()

    def startService(self):
        if not self.bound:
            self.bind()
        super().startService()
