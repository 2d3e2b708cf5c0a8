"""The admin endpoint's one resource: a fixed table of paths and methods, and nothing else.

Unknown paths get 404, known paths asked with another method 405 (with
``Allow``).  A state-changing POST from a web page of another origin is refused
(403): browsers send ``Origin`` with such requests, and the endpoint must not
be driven by pages a local user happens to visit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlsplit

from twisted.web.resource import Resource

Handler = Callable[..., bytes | int]

JSON = b"application/json"


def respond(request, body: dict | list, code: int = 200) -> bytes:
    """Write ``body`` as JSON with status ``code``; returns the bytes to render."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON)
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


def optional_query(request, name: str) -> str | None:
    """The first value of query parameter ``name``, decoded; None when absent."""
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def query(request, name: str, default: str) -> str:
    """The first value of query parameter ``name``, decoded; ``default`` when absent."""
    found = optional_query(request, name)
    return default if found is None else found


class BadRequest(Exception):
    """A query parameter the handler cannot use; answered with 400 and the message."""


def count_query(request, default: int, maximum: int, name: str = "n") -> int:
    """Query parameter ``name`` as a whole number from 1 to ``maximum``; BadRequest otherwise."""
    try:
        n = int(query(request, name, str(default)))
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not 0 < n <= maximum:
        raise BadRequest(f"{name} must be between 1 and {maximum}")
    return n


class AdminResource(Resource):
    """Dispatches by exact path and method; ``routes`` maps a path to {method: handler(request)}."""

    isLeaf = True

    def __init__(self, routes: dict[bytes, dict[bytes, Handler]]):
        super().__init__()
        self.routes = routes

    def render(self, request):
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        handlers = self.routes.get(request.path)
        if handlers is None:
            return respond(request, {"error": "not found", "paths": sorted(p.decode() for p in self.routes)}, 404)
        method = b"GET" if request.method == b"HEAD" else request.method
        handler = handlers.get(method)
        if handler is None:
            allowed = sorted(handlers) + ([b"HEAD"] if b"GET" in handlers else [])
            request.setHeader(b"Allow", b", ".join(allowed))
            return respond(request, {"error": "method not allowed", "allow": [m.decode() for m in allowed]}, 405)
        if method != b"GET" and not _same_origin(request):
            return respond(request, {"error": "cross-origin request refused"}, 403)
        try:
            return handler(request)
        except BadRequest as e:
            return respond(request, {"error": str(e)}, 400)


def _same_origin(request) -> bool:
    """True without an ``Origin`` header, or when it names the host the request was sent to."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    return urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") == host
