"""StartupError: why the server cannot start, in one line a person can act on.

Whatever stops the server at start (a configuration value, a sink path that
cannot be opened, a port or socket in use, missing TLS support) raises
:class:`StartupError` with a message that names the key, path or address and
the reason.  An embedder catches it from ``build_service`` or ``startService``;
the twistd plugin turns it into one log line (one stderr line before logging
has started) and exit status 1, with no traceback.  Anything else raised at
start is a bug and keeps its traceback.  This module imports nothing from
Twisted, so the pure configuration loader can use it.
"""

from __future__ import annotations

__all__ = ["StartupError", "reason_of"]


class StartupError(Exception):
    """The server cannot start; ``str()`` is one line naming the key, path or address and the reason."""


def reason_of(error: BaseException) -> str:
    """The reason an OS error gives, without its errno or path: ``Address already in use``.

    Twisted's ``CannotListenError`` carries the socket error (or a text) as
    ``socketError``; an ``OSError`` carries ``strerror``.
    """
    cause = getattr(error, "socketError", error)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause)
