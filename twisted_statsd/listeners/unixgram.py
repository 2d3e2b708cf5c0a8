"""The Unix datagram listener (``dogstatsd_socket``): one packet per datagram.

On Linux the kernel queues at most ``net.unix.max_dgram_qlen`` datagrams (10 by
default) for a Unix datagram socket, whatever its SO_RCVBUF, and a
non-blocking sender gets EAGAIN and drops beyond that.  So the socket is read
as fast as possible: every readable event reads in a loop until the kernel
queue is empty or a byte budget is spent, and does nothing per datagram but
append it to a packet buffer.

Twisted's ``listenUNIXDatagram`` does not expose ancillary data, which origin
detection needs (SCM_CREDENTIALS), so the socket is ours and is read by a small
``IReadDescriptor``, :class:`DatagramSocketReader`, registered with
``reactor.addReader``.  It is used with and without origin detection: one code
path, the same reads, the same truncation check (MSG_TRUNC from ``recvmsg``
rather than reading one extra byte), and nothing of Twisted's private port API.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from twisted_statsd._binding import BindingService
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd._twisted_helpers import periodic
from twisted_statsd.intake.buffer import PacketBuffer
from twisted_statsd.listeners import sockets
from twisted_statsd.listeners.memory import ReadThrottle
from twisted_statsd.listeners.origin import ORIGIN_TTL, OriginResolver

#: Bytes read per readable event before the reactor gets control back (as UDP's maxThroughput).
READ_BUDGET = 256 * 1024
#: Bytes read from the kernel queue at stop, after the socket file is gone.
DRAIN_LIMIT = 16 * 1024 * 1024

LISTENING = (
    "Listening for DogStatsD on unix datagram socket {path} "
    "(mode {mode}, receive buffer {granted} bytes, origin detection {origin})"
)
PASSCRED_FAILED = "Could not enable SO_PASSCRED on {path}; origin detection is off: {error}"
CLOSED = "Closed unix datagram socket {path}"


class UnixDatagramReceiver:
    """Routes each datagram to a packet buffer: one buffer, or one per sender's container.

    With a ``resolver`` (origin detection) the sender's PID comes from the
    datagram's credentials and its container ID selects the buffer, so the
    pipeline tags the sender's metrics.  Buffers of containers that stopped
    sending are released by :meth:`expire_origins`.  Never raises.
    """

    def __init__(self, intake, buffer_size: int, reporter: RateLimitedReporter, resolver: OriginResolver | None = None):
        self.intake = intake
        self.buffer_size = buffer_size
        self.reporter = reporter
        self.resolver = resolver
        # Set between open() and close(), the only time the socket is read.
        self.default: PacketBuffer | None = None
        self.buffers: dict = {}

    def open(self) -> None:
        """Take a packet buffer from the intake for senders without a container."""
        self.default = self.intake.buffer_for("uds")
        self.buffers = {None: self.default}

    def datagram_received(self, data: bytes, ancdata, flags: int, now: float) -> None:
        if flags & socket.MSG_TRUNC:
            self.reporter.report(
                "datagram_truncated",
                f"datagram longer than dogstatsd_buffer_size ({self.buffer_size}); its last line is lost",
                data,
            )
            data = data[: data.rfind(b"\n") + 1]
        if not data:
            return
        if self.resolver is None:
            if self.default is not None:
                self.default.append(data)
            return
        origin = self.resolver.origin(sockets.sender_pid(ancdata), now)
        buffer = self.buffers.get(origin)
        if buffer is None:
            buffer = self.buffers[origin] = self.intake.buffer_for("uds", origin)
        buffer.append(data)

    def expire_origins(self, now: float) -> None:
        """Release the buffers of containers whose senders were not seen for a TTL."""
        if self.resolver is None:
            return
        live = self.resolver.expire(now)
        for origin in [o for o in self.buffers if o is not None and o not in live]:
            self.intake.release(self.buffers.pop(origin))

    def close(self) -> None:
        """Hand every held packet to the pipeline and forget the buffers."""
        for buffer in self.buffers.values():
            self.intake.release(buffer)
        self.default = None
        self.buffers = {}


@implementer(IReadDescriptor)
class DatagramSocketReader:
    """Reads a non-blocking datagram socket for the reactor: ``recvmsg`` until EAGAIN or the budget.

    ``receive(data, ancdata, flags, now)`` is called for each datagram, with
    ``now`` read once per readable event.  A read error other than EAGAIN is
    counted and ends the round; the reader keeps listening.  ``throttle``
    (memory back-pressure) may pause the reader after a round.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        sock: socket.socket,
        receive: Callable[[bytes, list, int, float], None],
        reporter: RateLimitedReporter,
        *,
        buffer_size: int,
        ancillary_size: int = 0,
        budget: int = READ_BUDGET,
        throttle: ReadThrottle | None = None,
    ):
        self.reactor = reactor
        self.socket = sock
        self.receive = receive
        self.reporter = reporter
        self.buffer_size = buffer_size
        self.ancillary_size = ancillary_size
        self.budget = budget
        self.throttle = throttle
        self.reading = False
        self.closed = False
        self._failed = False

    def start_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.reactor.addReader(self)

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)

    pause_reading = stop_reading
    resume_reading = start_reading

    def read(self, budget: int) -> int:
        """Read datagrams until the queue is empty or ``budget`` bytes; return bytes read."""
        recvmsg, size, ancillary = self.socket.recvmsg, self.buffer_size, self.ancillary_size
        receive, now = self.receive, self.reactor.seconds()
        done = 0
        while done < budget:
            try:
                data, ancdata, flags, _ = recvmsg(size, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.reporter.report("uds_read_error", f"reading the socket failed: {e.strerror or e}", dropped=False)
                break
            done += len(data) or 1
            try:
                receive(data, ancdata, flags, now)
            except Exception:
                self._internal_error()
        return done

    def _internal_error(self) -> None:
        """A bug in a receiver must not stop the listener: count it, log the first traceback."""
        self.reporter.telemetry.drop("internal_error")
        if not self._failed:
            self._failed = True
            self.log.failure("Handling a datagram failed; later failures are only counted")

    def doRead(self):
        self.read(self.budget)
        throttle = self.throttle
        if throttle is not None and throttle.delay and self.reading:
            throttle.hold(self)
        return None

    def close(self) -> None:
        self.stop_reading()
        if self.throttle is not None:
            self.throttle.forget(self)
        self.closed = True
        self.socket.close()

    def fileno(self) -> int:
        return self.socket.fileno()

    def connectionLost(self, reason) -> None:
        """Only called by the reactor if a read raised, which :meth:`read` prevents."""
        self.close()

    def logPrefix(self) -> str:
        return "UnixDatagram"


class UnixDatagramListenerService(BindingService):
    """Binds the datagram socket in ``privilegedStartService``; on stop reads what is queued and removes the file.

    ``stopService`` returns a Deferred that has fired once the socket file is
    gone, the kernel queue has been read, the socket is closed and every
    buffer has been handed to the pipeline.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        receiver: UnixDatagramReceiver,
        path: str,
        *,
        mode: int = sockets.DEFAULT_SOCKET_MODE,
        so_rcvbuf: int = 0,
        throttle: ReadThrottle | None = None,
        origin_sweep_interval: float = ORIGIN_TTL,
    ):
        self.reactor = reactor
        self.receiver = receiver
        self.path = path
        self.mode = mode
        self.so_rcvbuf = so_rcvbuf
        self.throttle = throttle
        self.reader: DatagramSocketReader | None = None
        self.granted_rcvbuf: int | None = None
        self._identity: tuple[int, int] | None = None
        self._sweep = periodic(
            reactor,
            origin_sweep_interval,
            lambda: receiver.expire_origins(reactor.seconds()),
            receiver.reporter.telemetry,
            "origin_expiry",
        )

    @property
    def bound(self) -> bool:
        return self.reader is not None

    def startService(self):
        super().startService()
        if self.receiver.resolver is not None and not self._sweep.running:
            self._sweep.startService()

    def describe(self) -> tuple[str, str]:
        return "dogstatsd_socket", f"listen on unix datagram socket {self.path}"

    def bind(self) -> None:
        sockets.prepare_path(self.path)
        origin = self.receiver.resolver is not None
        sock = sockets.bind_datagram_socket(self.path, self.mode)
        self._identity = sockets.file_identity(self.path)
        try:
            if origin:
                try:
                    sockets.enable_passcred(sock)
                except OSError as e:
                    self.log.error(PASSCRED_FAILED, path=self.path, error=e, log_category="UDS_PASSCRED_FAILED")
                    self.receiver.resolver = None
                    origin = False
            self.granted_rcvbuf = sockets.set_receive_buffer(sock, self.so_rcvbuf, self.path)
        except BaseException:
            sock.close()
            sockets.remove_socket_file(self.path, self._identity)
            raise
        self.receiver.open()
        self.reader = DatagramSocketReader(
            self.reactor,
            sock,
            self.receiver.datagram_received,
            self.receiver.reporter,
            buffer_size=self.receiver.buffer_size,
            ancillary_size=sockets.CREDENTIALS_SPACE if origin else 0,
            throttle=self.throttle,
        )
        self.reader.start_reading()
        self.log.info(
            LISTENING,
            path=self.path,
            mode=oct(self.mode),
            granted=self.granted_rcvbuf,
            origin="on" if origin else "off",
            log_category="UDS_DATAGRAM_LISTENING",
        )

    def read_pending(self) -> None:
        """Read everything the kernel holds for us now (up to ``DRAIN_LIMIT`` bytes)."""
        if self.reader is not None:
            self.reader.read(DRAIN_LIMIT)

    def stopService(self):
        """Refuse new datagrams and remove the file, read what is queued, close, flush the buffers.

        Shutting the socket for reading first makes every later send fail at
        once (EPIPE) instead of landing in a queue about to be closed: a sender
        whose send succeeded has its datagram read, even under load.
        """
        super().stopService()
        if self._sweep.running:
            self._sweep.stopService()  # the sweep is synchronous: stopped at once
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.stop_reading()
            reader.socket.shutdown(socket.SHUT_RD)
            sockets.remove_socket_file(self.path, self._identity)
            reader.read(DRAIN_LIMIT)
            reader.close()
            self.receiver.close()
            self.log.info(CLOSED, path=self.path, log_category="UDS_DATAGRAM_CLOSED")
        return defer.succeed(None)
