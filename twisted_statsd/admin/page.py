"""The live page at ``/``: plain HTML, CSS and a small script polling the JSON endpoints.

Served from package data, no build step and no external assets.  The script
writes every value the server received with ``textContent`` (never as HTML),
and a Content-Security-Policy allows only this origin's own script, style
and requests, so text a client sent cannot run as code even if a future
change slipped.
"""

from __future__ import annotations

from importlib.resources import files

CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FILES = {
    b"/": ("index.html", b"text/html; charset=utf-8"),
    b"/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"/app.css": ("app.css", b"text/css; charset=utf-8"),
}


def _serve(body: bytes, content_type: bytes):
    def render(request) -> bytes:
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Security-Policy", CSP)
        request.setHeader(b"X-Frame-Options", b"DENY")
        return body

    return render


def routes() -> dict:
    """Path -> GET handler for each static file, read once."""
    static = files("twisted_statsd.admin") / "static"
    return {path: _serve((static / name).read_bytes(), kind) for path, (name, kind) in _FILES.items()}
