"""The UDP listener: a DatagramProtocol that only appends, and the service that binds it.

UDP has no back-pressure: whatever the server does not read in time the kernel
drops.  So the protocol does as little as possible per datagram, the socket gets
the receive buffer asked for (``dogstatsd_so_rcvbuf``, read back because the
kernel clamps it), oversized datagrams are counted rather than parsed, and the
kernel's own drop counter for the socket (``/proc/net/udp``) is copied into
telemetry at every flush, so loss the server never saw is visible too.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.udp import Port
from twisted.logger import Logger

from twisted_statsd._binding import BindingService
from twisted_statsd._ratelimit import RateLimitedReporter
from twisted_statsd.interfaces import IPacketConsumer
from twisted_statsd.listeners.senders import SenderAllowList

# doRead calls (READ_BUDGET each) when draining the socket on demand: more than any receive buffer.
MAX_DRAIN_READS = 1024

# Bytes read per readable event before the reactor gets control back (Twisted's
# ``maxThroughput``, 256 KiB by default).  The lines read are parsed as they
# come, so this bounds how long one read holds off timers and other sockets:
# in a burst of 100,000 new contexts (benchmarks.burst), 64-67 ms of CPU at
# 256 KiB, 43-44 ms at 128 KiB, 26-31 ms at 64 KiB.  It also bounds what
# intake reads between two slices of a large flush (one read per 4 ms
# slice): 128 KiB keeps that above 30 MB/s, some 400,000 lines/s.
READ_BUDGET = 128 * 1024


class DatagramReceiver(DatagramProtocol):
    """Appends each datagram to a packet buffer; never parses, never raises.

    The port reads whole datagrams (``read_size``), so that what lies beyond
    ``buffer_size`` can be counted line by line before it is dropped: only the
    complete lines within ``buffer_size`` are kept, as DogStatsD keeps them.
    Reading 64 KiB instead of ``buffer_size`` costs nothing per datagram
    (recvfrom allocates the size asked for, then shrinks it in place).
    With ``senders``, datagrams from other addresses are dropped and counted
    (``udp_sender_refused``).
    """

    # The largest UDP payload (IPv6 jumbograms aside).
    read_size = 65536

    noisy = False  # the service logs the bound address itself

    def __init__(
        self,
        consumer: IPacketConsumer,
        buffer_size: int,
        reporter: RateLimitedReporter,
        senders: SenderAllowList | None = None,
    ):
        self.consumer = IPacketConsumer(consumer)
        self.buffer_size = buffer_size
        self.reporter = reporter
        self.senders = senders

    def datagramReceived(self, data: bytes, addr) -> None:
        if self.senders is not None and not self.senders.allows(addr[0]):
            self.reporter.report("udp_sender_refused", f"{addr[0]} is not in dogstatsd_allowed_senders")
            return
        if len(data) > self.buffer_size:
            kept = data[: data.rfind(b"\n", 0, self.buffer_size) + 1]
            lost = sum(1 for line in data[len(kept) :].split(b"\n") if line)
            self.reporter.report(
                "datagram_truncated",
                f"datagram of {len(data)} bytes is longer than dogstatsd_buffer_size ({self.buffer_size}); "
                f"{lost} lines beyond it are lost",
                data,
                count=lost,
            )
            data = kept
            if not data:
                return
        self.consumer.append(data)


def kernel_drops(table: str, inode: int) -> int | None:
    """The ``drops`` column of the socket with ``inode`` in a ``/proc/net/udp`` table."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 13 and fields[9] == str(inode):
            return int(fields[12])
    return None


class UDPListenerService(BindingService):
    """Binds the UDP port in ``privilegedStartService`` and closes it on stop."""

    log = Logger()
    #: The listening port, once bound.
    port: Port | None = None

    def __init__(self, reactor, protocol: DatagramReceiver, port: int, interface: str, so_rcvbuf: int = 0):
        self.reactor = reactor
        self.protocol = protocol
        self.port_number = port
        self.interface = interface
        self.so_rcvbuf = so_rcvbuf
        self._kernel_drops_seen = 0

    @property
    def bound(self) -> bool:
        return self.port is not None

    def describe(self) -> tuple[str, str]:
        return "dogstatsd_port", f"listen on udp {self.interface or '0.0.0.0'}:{self.port_number}"

    def bind(self) -> None:
        port: Port = self.reactor.listenUDP(
            self.port_number,
            self.protocol,
            interface=self.interface,
            maxPacketSize=max(self.protocol.read_size, self.protocol.buffer_size + 1),
        )
        port.maxThroughput = READ_BUDGET
        self.port = port
        handle = port.getHandle()
        if self.so_rcvbuf:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.so_rcvbuf)
        host = port.getHost()
        self.log.info(
            "Listening for DogStatsD on udp {host}:{port} (receive buffer {granted} bytes)",
            host=host.host,
            port=host.port,
            granted=handle.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )

    def record_kernel_drops(self, proc_tables=("/proc/net/udp", "/proc/net/udp6")) -> None:
        """Count datagrams the kernel dropped for our socket since the last call."""
        if self.port is None:
            return
        inode = os.fstat(self.port.fileno()).st_ino
        for path in proc_tables:
            try:
                with open(path) as f:
                    drops = kernel_drops(f.read(), inode)
            except OSError:
                continue
            if drops is not None:
                if drops > self._kernel_drops_seen:
                    self.protocol.reporter.telemetry.drop("udp_kernel", drops - self._kernel_drops_seen)
                    self._kernel_drops_seen = drops
                return

    @property
    def address(self):
        """The bound address (an IPv4Address), e.g. to learn an ephemeral port; None before the bind."""
        return self.port.getHost() if self.port is not None else None

    def read_pending(self) -> None:
        """Read everything the kernel holds for us now, not just one read's budget.

        ``doRead`` stops after ``maxThroughput`` bytes; FIONREAD tells whether
        a datagram is still queued.  Bounded, so a sender faster than us
        cannot keep this loop going.
        """
        if self.port is None:
            return
        handle = self.port.getHandle()
        for _ in range(MAX_DRAIN_READS):
            self.port.doRead()
            if not struct.unpack("i", fcntl.ioctl(handle, termios.FIONREAD, b"\0\0\0\0"))[0]:
                break

    def stopService(self):
        """Read what the kernel holds for us and count its drops, then close the port."""
        super().stopService()
        self.read_pending()
        self.record_kernel_drops()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
