"""Reliable delivery of request bodies over HTTP, shared by the HTTP sinks (datadog, otlp).

A sink hands :class:`HttpDelivery` an iterator of payloads (and ``None``
between bounded slices of work); the payloads are queued and posted through
one persistent HTTP connection pool, up to ``max_concurrent_requests`` at
once, the iterator being driven in slices through a Cooperator.

Network errors, timeouts and the answers the sink calls retryable are retried:
the whole sink backs off exponentially with jitter (or for as long as
``Retry-After`` says), the failed payload going back to the head of the queue.
Other answers (4xx, 3xx) reject the payload for good, logged with the start of
the response body.  The queue is bounded in bytes, as the Datadog agent's
``forwarder_retry_queue_payloads_max_size``: when it is full the oldest queued
payloads are dropped.  A payload is also dropped once it is older than its
``max_age``.  Every outcome is counted in telemetry, under the sink's name.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from twisted_statsd import _cooperate
from twisted_statsd._stop_deadline import StopDeadline
from twisted_statsd._twisted_helpers import Waiters, deadline
from twisted_statsd.errors import StartupError
from twisted_statsd.flush import SINK_STOP_TIMEOUT
from twisted_statsd.telemetry import Telemetry

__all__ = ["BODY_LOG_LIMIT", "HttpDelivery", "Payload", "backoff_delay", "parse_retry_after"]

# How much of a rejected request's response body is logged.
BODY_LOG_LIMIT = 400
# At most one rejection log line per endpoint and status in this many seconds.
REJECT_LOG_INTERVAL = 60.0
# A Retry-After longer than this is not believed.
RETRY_AFTER_MAX = 3600.0


class Payload(TypingProtocol):
    """What the delivery needs of a payload: its body, where it goes, and how long it is worth retrying."""

    @property
    def body(self) -> bytes: ...

    @property
    def path(self) -> str: ...

    @property
    def max_age(self) -> float: ...


def backoff_delay(errors: int, base: float, cap: float, rand) -> float:
    """How long to wait after ``errors`` consecutive failures (``errors >= 1``).

    The ceiling doubles from ``base`` up to ``cap``; the delay is drawn
    uniformly from the upper half of it ("equal jitter"), so senders spread
    out yet never retry sooner than half the ceiling.
    """
    ceiling = min(cap, base * 2.0 ** min(errors - 1, 64))
    return ceiling / 2.0 + rand() * ceiling / 2.0


def parse_retry_after(value: bytes | None, now: float) -> float | None:
    """A ``Retry-After`` header in seconds from ``now``: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def retryable_like_datadog(code: int) -> bool:
    """The Datadog agent's rule: request timeouts, rate limits and server errors are retried."""
    return code in (408, 429) or code >= 500


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory (payloads are small: a few MiB at most)."""

    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _Delivery:
    """The fate of one write(): fires its Deferred once every payload of the batch is settled."""

    def __init__(self):
        self.deferred: defer.Deferred = defer.Deferred()
        self.outstanding = 0
        self.encoded = False

    def settle(self) -> None:
        self.outstanding -= 1
        self._maybe_fire()

    def done_encoding(self) -> None:
        self.encoded = True
        self._maybe_fire()

    def fail(self, failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(failure)

    def _maybe_fire(self) -> None:
        if self.encoded and not self.outstanding and not self.deferred.called:
            self.deferred.callback(None)


class _Pending:
    """One queued payload; ``sending`` is true while its request is in flight."""

    __slots__ = ("created", "delivery", "payload", "request", "sending")

    def __init__(self, payload: Payload, delivery: _Delivery, created: float):
        self.payload = payload
        self.delivery = delivery
        self.created = created
        self.sending = False
        self.request: defer.Deferred | None = None


def check_url(sink: str, url: str, *, tls_needed: bool = True) -> None:
    """Refuse a URL that is not http(s)://host[:port]...; https needs TLS support, known at start."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{sink} sink URL must be http(s)://host[:port], got {url!r}")
    if parts.scheme == "https" and tls_needed:
        _require_tls(sink)


class HttpDelivery:
    """Posts payloads with retries, back-off, bounded concurrency and a byte-bounded queue.

    ``sink`` names the sink in telemetry (``sink:<sink>`` tags, ``<sink>_*``
    drop reasons) and log categories; ``display`` names the backend in log
    lines.  ``retryable(code)`` says which HTTP answers are retried, and
    ``on_accepted(payload, body)`` hears each 2xx answer's body (at most
    ``body_limit`` bytes of it).
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        telemetry: Telemetry,
        *,
        sink: str,
        display: str,
        base_url: str,
        headers: Headers,
        retry_queue_max_bytes: int,
        timeout: float,
        backoff_base: float,
        backoff_max: float,
        max_concurrent_requests: int,
        retryable: Callable[[int], bool] = retryable_like_datadog,
        on_accepted: Callable[[Payload, bytes], None] | None = None,
        body_limit: int = BODY_LOG_LIMIT,
        cooperator: Cooperator | None = None,
        _agent=None,
        _random=random.random,
        _stop_timeout: float = SINK_STOP_TIMEOUT,
    ):
        check_url(sink, base_url, tls_needed=_agent is None)
        for option, value in (("timeout", timeout), ("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if not value > 0:
                raise ValueError(f"{sink} sink {option} must be positive, got {value!r}")
        for option, value in (
            ("retry_queue_max_bytes", retry_queue_max_bytes),
            ("max_concurrent_requests", max_concurrent_requests),
        ):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{sink} sink {option} must be a positive integer, got {value!r}")
        self.reactor = reactor
        self.telemetry = telemetry
        self.sink = sink
        self.display = display
        self.tags = (f"sink:{sink}",)
        self.base_url = base_url
        self.retry_queue_max_bytes = retry_queue_max_bytes
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_concurrent_requests = max_concurrent_requests
        self.retryable = retryable
        self.on_accepted = on_accepted
        self.body_limit = body_limit
        self._random = _random
        self._stop_timeout = _stop_timeout
        self._headers = headers
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_concurrent_requests
        self._agent = IAgent(_agent) if _agent is not None else Agent(reactor, connectTimeout=timeout, pool=self._pool)
        # The server's shared Cooperator (stopped by its owner), or one of its own.
        self._own_cooperator = cooperator is None
        self._cooperator = cooperator or _cooperate.cooperator(reactor)
        # Invariants: _held has every unsettled payload, oldest first (a failed
        # one keeps its place, so it is retried first), and _held_bytes is the
        # sum of their body sizes (<= retry_queue_max_bytes); _sending has those
        # of them in flight, at most max_concurrent_requests.  _errors counts
        # consecutive failures; _unblock is the timer of the current back-off.
        self._held: dict[_Pending, None] = {}
        self._held_bytes = 0
        self._sending: set[_Pending] = set()
        self._encoding: set[defer.Deferred] = set()
        self._errors = 0
        self._unblock = None
        self._stopping = False
        self._closed = False
        self._idle = Waiters()
        self._reject_logged: dict[tuple[str, int], tuple[float, int]] = {}

    # -- intake -------------------------------------------------------------

    def submit(self, steps: Iterator[Payload | None]) -> defer.Deferred:
        """Queue the payloads ``steps`` yields; fires when each one is sent or given up (counted, not raised)."""
        delivery = _Delivery()
        if self._closed:
            # Only reachable when written to after stopping: there is no more reactor time to save.
            self.telemetry.drop(f"{self.sink}_shutdown", sum(1 for payload in steps if payload is not None))
            return defer.succeed(None)
        task = self._cooperator.coiterate(self._queue_steps(steps, delivery))
        self._encoding.add(task)

        def encoded(result):
            self._encoding.discard(task)
            if isinstance(result, Failure):
                delivery.fail(result)
            else:
                delivery.done_encoding()

        task.addBoth(encoded)
        return delivery.deferred

    def _queue_steps(self, steps, delivery: _Delivery):
        for payload in steps:
            if payload is not None:
                delivery.outstanding += 1
                self._enqueue(_Pending(payload, delivery, self.reactor.seconds()))
            yield None

    def _enqueue(self, pending: _Pending) -> None:
        size = len(pending.payload.body)
        if self._closed:
            self._give_up(pending, f"{self.sink}_shutdown", held=False)
            return
        # Make room by dropping the oldest payloads that are not in flight.
        while self._held_bytes + size > self.retry_queue_max_bytes:
            victim = next((p for p in self._held if not p.sending), None)
            if victim is None:
                self._give_up(pending, f"{self.sink}_retry_queue_full", held=False)
                return
            self._give_up(victim, f"{self.sink}_retry_queue_full")
        self._held[pending] = None
        self._held_bytes += size
        self._report_queue()
        self._pump()

    # -- sending ------------------------------------------------------------

    def _pump(self) -> None:
        while len(self._sending) < self.max_concurrent_requests and not self._closed and self._unblock is None:
            # The oldest payload not in flight; only in-flight ones are skipped.
            pending = next((p for p in self._held if not p.sending), None)
            if pending is None:
                return
            if self.reactor.seconds() - pending.created > pending.payload.max_age:
                self._give_up(pending, f"{self.sink}_retry_expired")
                continue
            self._send(pending)

    def _send(self, pending: _Pending) -> None:
        pending.sending = True
        self._sending.add(pending)
        payload = pending.payload
        url = (self.base_url + payload.path).encode()
        d = self._agent.request(b"POST", url, self._headers.copy(), _BytesProducer(payload.body))
        d.addCallback(_read_response, self.body_limit)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._answered, self._failed_request, callbackArgs=(pending,), errbackArgs=(pending,))
        d.addErrback(lambda failure: self.log.failure("{sink} sink: unexpected error", failure, sink=self.display))
        pending.request = d

    def _done_sending(self, pending: _Pending) -> None:
        pending.sending = False
        pending.request = None
        self._sending.discard(pending)

    def _answered(self, answer, pending: _Pending) -> None:
        code, headers, body = answer
        self._done_sending(pending)
        if 200 <= code < 300:
            self._reachable()
            self.telemetry.incr("sink_sent", 1, self.tags)
            if self.on_accepted is not None:
                self.on_accepted(pending.payload, body)
            self._settle(pending)
        elif self.retryable(code):
            retry_after = parse_retry_after(headers.getRawHeaders(b"retry-after", [None])[0], self.reactor.seconds())
            self._retry(pending, f"HTTP {code}", retry_after)
        else:
            self._reachable()
            self._reject(pending, code, body)
        self._pump()

    def _failed_request(self, failure, pending: _Pending) -> None:
        self._done_sending(pending)
        reason = failure.getErrorMessage() or failure.type.__name__
        self._retry(pending, reason, None)
        self._pump()

    def _retry(self, pending: _Pending, reason: str, retry_after: float | None) -> None:
        if self._stopping:
            # The final pass tries each payload once.
            self._give_up(pending, f"{self.sink}_shutdown")
            return
        self._errors += 1
        self.telemetry.incr("sink_retries", 1, self.tags)
        delay = retry_after
        if delay is None:
            delay = backoff_delay(self._errors, self.backoff_base, self.backoff_max, self._random)
        if self._errors == 1:
            self.log.warn(
                "{sink} {endpoint} failed ({reason}); retrying with back-off",
                log_category=f"{self.sink.upper()}_RETRY",
                sink=self.display,
                endpoint=pending.payload.path,
                reason=reason,
            )
        self._block(delay)

    def _block(self, delay: float) -> None:
        """Send nothing for ``delay`` seconds (or longer, if already blocked for longer).

        A plain DelayedCall rather than :func:`~twisted_statsd._twisted_helpers.deadline`:
        extending a block reads the pending call's ``getTime()``, which the helper hides.
        """
        if self._unblock is not None:
            if self._unblock.getTime() >= self.reactor.seconds() + delay:
                return
            self._unblock.cancel()
        self._unblock = self.reactor.callLater(delay, self._unblocked)

    def _unblocked(self) -> None:
        self._unblock = None
        self._pump()

    def _reachable(self) -> None:
        if self._errors:
            self.log.info(
                "{sink} answers again after {errors} failed attempts",
                log_category=f"{self.sink.upper()}_RECOVERED",
                sink=self.display,
                errors=self._errors,
            )
            self._errors = 0

    def _reject(self, pending: _Pending, code: int, body: bytes) -> None:
        path = pending.payload.path
        now = self.reactor.seconds()
        last, suppressed = self._reject_logged.get((path, code), (None, 0))
        if last is None or now - last >= REJECT_LOG_INTERVAL:
            self.log.warn(
                "{sink} rejected a payload for {endpoint} with HTTP {code} "
                "({suppressed} more since the last report): {body}",
                log_category=f"{self.sink.upper()}_REJECTED",
                sink=self.display,
                endpoint=path,
                code=code,
                suppressed=suppressed,
                body=body[:BODY_LOG_LIMIT].decode("utf-8", "replace"),
            )
            self._reject_logged[(path, code)] = (now, 0)
        else:
            self._reject_logged[(path, code)] = (last, suppressed + 1)
        self._give_up(pending, f"{self.sink}_rejected")

    # -- settling -----------------------------------------------------------

    def _give_up(self, pending: _Pending, reason: str, held: bool = True) -> None:
        self.telemetry.drop(reason)
        if held:
            self._settle(pending)
        else:
            pending.delivery.settle()

    def _settle(self, pending: _Pending) -> None:
        del self._held[pending]
        self._held_bytes -= len(pending.payload.body)
        self._report_queue()
        pending.delivery.settle()
        if not self._held:
            self._idle.fire()

    def _report_queue(self) -> None:
        self.telemetry.set_gauge("sink_queue_bytes", self._held_bytes, self.tags)
        self.telemetry.set_gauge("sink_queue_payloads", len(self._held), self.tags)

    # -- lifecycle ----------------------------------------------------------

    def stop(self, deadline: StopDeadline | None = None) -> defer.Deferred:
        """Stop backing off, give what is queued one try within the stop budget, close the pool.

        The budget is this delivery's own stop timeout, or what remains of
        ``deadline`` (the whole server's stop) if that is less.
        """
        return defer.ensureDeferred(self._stop(deadline))

    async def _stop(self, stop_deadline: StopDeadline | None) -> None:
        self._stopping = True
        if self._unblock is not None:
            self._unblock.cancel()
            self._unblock = None
        if self._encoding:
            await defer.DeferredList(list(self._encoding))
        timeout = self._stop_timeout if stop_deadline is None else stop_deadline.remaining(self._stop_timeout)
        cancel = deadline(self.reactor, timeout, self._abandon)
        if self._held:
            idle = self._idle.wait()
            self._pump()
            await idle
        cancel()
        self._closed = True
        if self._own_cooperator:
            self._cooperator.stop()
        await self._pool.closeCachedConnections()

    def _abandon(self) -> None:
        """The stop budget is spent: cancel what is in flight and give up the rest."""
        self._closed = True
        for pending in list(self._held):
            if not pending.sending:
                self._give_up(pending, f"{self.sink}_shutdown")
        for pending in list(self._sending):
            if pending.request is not None:  # always set while sending
                pending.request.cancel()


class _BodyReader(Protocol):
    """Keeps the first ``limit`` bytes of a response body and fires when it ends, however it ends.

    Twisted's readBody would do, but it warns (DeprecationWarning) on every
    response whose transport proxy has no abortConnection (twisted#8227), and
    only the start of a body is ever used.
    """

    def __init__(self, finished: defer.Deferred, limit: int):
        self.finished = finished
        self.kept: list[bytes] = []
        self.room = limit

    def dataReceived(self, data: bytes) -> None:
        if self.room > 0:
            self.kept.append(data[: self.room])
            self.room -= len(data)

    def connectionLost(self, reason=None) -> None:
        if not self.finished.called:
            self.finished.callback(b"".join(self.kept))


def _read_response(response, limit: int = BODY_LOG_LIMIT):
    """(status, headers, start of the body); cancelling it drops the connection."""
    reader = None

    def cancel(_):
        if reader is not None and reader.transport is not None:
            reader.transport.stopProducing()

    finished: defer.Deferred = defer.Deferred(cancel)
    reader = _BodyReader(finished, limit)
    response.deliverBody(reader)
    finished.addCallbacks(
        lambda body: (response.code, response.headers, body),
        lambda _: (response.code, response.headers, b""),
    )
    return finished


def _require_tls(sink: str) -> None:
    """HTTPS needs pyOpenSSL and service_identity (the ``tls`` extra): fail at start, not per request."""
    try:
        import service_identity  # noqa: F401
        from twisted.internet import ssl  # noqa: F401
    except ImportError as error:
        raise StartupError(
            f"sinks: {sink}: https needs TLS support, which is not installed ({error}): "
            "pip install 'twisted-statsd[tls]'"
        ) from None
