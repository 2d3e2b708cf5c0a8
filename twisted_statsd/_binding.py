"""BindingService: services that own a socket (or an output file) and open it as twistd expects.

twistd calls ``privilegedStartService`` on the whole tree before any
``startService``, and a bind that fails there stops the process at start,
before anything runs half-started.  An embedder may call ``startService``
alone, so the bind happens there too when it has not happened yet.  A bind
that fails for a reason outside the program (an address in use, a missing
directory) is raised as a :class:`StartupError` that names the configuration
key and the address, with the original error as its cause.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.error import CannotListenError

from twisted_statsd.errors import StartupError, reason_of


class BindingService(Service):
    """A Service whose socket is bound synchronously at the first start call."""

    @property
    def bound(self) -> bool:
        raise NotImplementedError

    def bind(self) -> None:
        """Bind the socket; raise (e.g. CannotListenError, OSError) when that is impossible."""
        raise NotImplementedError

    def describe(self) -> tuple[str, str]:
        """The configuration key, and what ``bind`` does with the address: ``listen on udp 127.0.0.1:8125``.

        A failed bind becomes the start-up error ``<key>: cannot <what>: <reason>``.
        """
        raise NotImplementedError

    def _bind(self) -> None:
        try:
            self.bind()
        except (CannotListenError, OSError) as error:
            key, what = self.describe()
            raise StartupError(f"{key}: cannot {what}: {reason_of(error)}") from error

    def privilegedStartService(self):
        if not self.bound:
            self._bind()
        super().privilegedStartService()

    def startService(self):
        if not self.bound:
            self._bind()
        super().startService()
