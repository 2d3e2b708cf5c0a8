"""``GET /capture?duration=S[&max_bytes=N]``: every packet received for S seconds, as a capture file.

The response body *is* the file (:mod:`twisted_statsd.capture`), streamed
while the capture runs, so the server writes nothing to its own disk.  One
capture runs at a time (another request gets 409).  The capture never holds
back intake: packets are encoded in memory as their batch is parsed, and the
compressed pieces are written to the connection every ``WRITE_SECONDS``.
Packets are skipped, and counted (``capture_skipped{reason}`` in telemetry and
in the file's end record), once ``max_bytes`` of records were captured
(``size_cap``) or while the client reads too slowly to keep
``MAX_PENDING_BYTES`` from piling up (``slow_reader``).
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

import twisted_statsd
from twisted_statsd._twisted_helpers import deadline, periodic
from twisted_statsd.admin._routes import BadRequest, query, respond
from twisted_statsd.capture import CaptureEncoder

WRITE_SECONDS = 0.25
MAX_DURATION = 24 * 3600.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_PENDING_BYTES = 16 * 1024 * 1024
CONTENT_TYPE = b"application/gzip"


@implementer(IPushProducer)
class CaptureStream:
    """One capture in progress; a push producer, so the connection pauses it when the client lags."""

    def __init__(self, admin, request, duration: float, max_bytes: int):
        self.admin, self.request = admin, request
        self.reactor = admin.reactor
        self.max_bytes = max_bytes
        self.encoder = CaptureEncoder(self.reactor.seconds(), twisted_statsd.__version__)
        self.skipped: dict[str, int] = {}
        self.paused = False
        self.written = self.encoder.raw_bytes  # raw bytes already handed to the connection
        self.done = False
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        request.setHeader(b"Content-Disposition", b'attachment; filename="capture.tsdcap.gz"')
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self.close(write=False))
        admin.root.intake.observers.append(self.observe)
        self._writer = periodic(self.reactor, WRITE_SECONDS, self.write, admin.root.telemetry, "capture_writer")
        self._writer.startService()
        self._cancel_end = deadline(self.reactor, duration, self.close)

    def observe(self, packets: list[bytes], now: float, transport: str, origin: bytes | None) -> None:
        encoder = self.encoder
        if encoder.raw_bytes >= self.max_bytes:
            self._skip("size_cap", len(packets))
        elif self.paused and encoder.raw_bytes - self.written >= MAX_PENDING_BYTES:
            self._skip("slow_reader", len(packets))
        else:
            encoder.add(now, packets, transport, origin)

    def _skip(self, reason: str, n: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.admin.root.telemetry.incr("capture_skipped", n, ("reason:" + reason,))

    def write(self) -> None:
        if not self.paused and not self.done:
            self.written = self.encoder.raw_bytes
            self.request.write(self.encoder.take())

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.close(write=False)

    def close(self, write: bool = True) -> None:
        """End the capture: stop observing, and (unless the client left) send the end record."""
        if self.done:
            return
        self.done = True
        observers = self.admin.root.intake.observers
        if self.observe in observers:
            observers.remove(self.observe)
        self._writer.stopService()
        self._cancel_end()
        self.admin.capture = None
        self.admin.root.telemetry.incr("captures")
        if write:
            self.request.unregisterProducer()
            self.request.write(self.encoder.finish(self.reactor.seconds(), self.skipped))
            self.request.finish()


def start(admin, request):
    try:
        duration = float(query(request, "duration", "") or "nan")
        max_bytes = int(query(request, "max_bytes", str(DEFAULT_MAX_BYTES)))
    except ValueError:
        raise BadRequest("duration (seconds) and max_bytes must be numbers") from None
    if not 0 < duration <= MAX_DURATION:
        raise BadRequest(f"duration must be between 0 and {MAX_DURATION:.0f} seconds")
    if max_bytes <= 0:
        raise BadRequest("max_bytes must be positive")
    if admin.capture is not None:
        return respond(request, {"error": "a capture is already running"}, 409)
    admin.capture = CaptureStream(admin, request, duration, max_bytes)
    return NOT_DONE_YET
