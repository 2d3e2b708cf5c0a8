"""Socket-file and socket-option helpers shared by the Unix listeners.

A Unix socket is a file, and files outlive processes: a crashed run leaves its
socket behind, and binding over it fails.  DogStatsD removes such a file at
start, but a file is only removed here when it is a socket *and* nobody is
listening on it (a connect attempt is refused); a live socket is "address in
use", and anything that is not a socket is never touched.  On stop only the
file this process bound is removed, identified by device and inode, so a stop
never deletes a file that someone else put in its place.

A socket file is created with its final permissions (:func:`created_with_mode`):
binding and then changing the mode would leave a moment in which the file has
the umask's permissions, which may let anyone connect, and a chmod by path
would follow a symbolic link put in the socket's place meanwhile.

Also here: the receive buffer (set, then read back because the kernel clamps
it), SO_PASSCRED, and parsing the ``struct ucred`` credentials that Linux
attaches to datagrams (SCM_CREDENTIALS) or reports for a stream peer
(SO_PEERCRED).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

log = Logger()

#: The default permissions of a socket file: the owner may do anything, others
#: may only write (connect and send), so any local user can send metrics.
DEFAULT_SOCKET_MODE = 0o722

_UCRED = struct.Struct("=iII")
_PID = struct.Struct("=i")
#: Ancillary buffer size for one ``struct ucred`` (32 bytes on 64-bit Linux).
CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size) if hasattr(socket, "CMSG_SPACE") else 0
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", None)
_SO_PASSCRED = getattr(socket, "SO_PASSCRED", None)
_SO_PEERCRED = getattr(socket, "SO_PEERCRED", None)

STALE_SOCKET_REMOVED = "Removed stale socket file {path} (no process was listening on it)"
RECEIVE_BUFFER_FAILED = "Could not set SO_RCVBUF to {size} on {path}: {error}"
REMOVE_FAILED = "Could not remove socket file {path}: {error}"


class SocketPathError(CannotListenError):
    """A Unix socket path that cannot be listened on; the message says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(None, path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"Cannot listen on Unix socket {self.path}: {self.reason}"


class Credentials(NamedTuple):
    """The sending process, as the kernel reports it (``struct ucred``)."""

    pid: int
    uid: int
    gid: int


def credentials_supported() -> bool:
    """Whether this platform can report a sender's credentials (Linux)."""
    return None not in (_SCM_CREDENTIALS, _SO_PASSCRED, _SO_PEERCRED)


def socket_in_use(path: str) -> bool:
    """Whether a process is bound to the socket file at ``path``.

    A datagram connect attempt tells: refused means the file is stale; success
    (a datagram listener) or EPROTOTYPE (a stream socket is bound there) means
    it is alive.  No connection is made to a stream listener, and nothing is sent.
    Any other error means we cannot tell, which is reported rather than guessed.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        if e.errno in (errno.EPROTOTYPE, errno.EAGAIN):
            return True
        raise SocketPathError(path, f"cannot tell whether another process is listening on it: {e.strerror}") from None
    finally:
        probe.close()
    return True


def prepare_path(path: str) -> None:
    """Make ``path`` free for bind: remove a stale socket, refuse anything else.

    Raises :class:`SocketPathError` when a process listens on the socket, when
    the path exists and is not a socket (a symbolic link included), or when
    its directory does not exist.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise SocketPathError(path, f"the directory {directory} does not exist")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(path, "the path exists and is not a Unix socket; it is left alone")
    if socket_in_use(path):
        raise SocketPathError(path, "address in use: another process is listening on it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    log.info(STALE_SOCKET_REMOVED, path=path, log_category="UDS_STALE_SOCKET_REMOVED")


def file_identity(path: str) -> tuple[int, int]:
    """The (device, inode) pair that identifies the socket file we bound."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def remove_socket_file(path: str, identity: tuple[int, int] | None) -> bool:
    """Unlink ``path`` if it is still the file we bound; True when it was removed.

    A missing file is fine (someone cleaned up already), and a file that was
    replaced since we bound is not ours to delete.  Any other failure (say, a
    directory we may no longer write to after twistd dropped privileges) is
    logged: closing the socket matters more than the file.
    """
    try:
        if identity is not None and file_identity(path) != identity:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warn(REMOVE_FAILED, path=path, error=e, log_category="UDS_REMOVE_FAILED")
        return False
    return True


def set_receive_buffer(sock: socket.socket, size: int, path: str = "") -> int:
    """Ask for a ``size``-byte receive buffer (0 leaves it alone); return what was granted.

    A failure is only a warning, as in DogStatsD's Unix listeners.
    """
    if size:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError as e:
            log.warn(RECEIVE_BUFFER_FAILED, size=size, path=path, error=e, log_category="UDS_RCVBUF_FAILED")
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def enable_passcred(sock: socket.socket) -> None:
    """Have the kernel attach the sender's credentials to every datagram (Linux)."""
    if _SO_PASSCRED is None:
        raise OSError(errno.ENOPROTOOPT, "SO_PASSCRED is not available on this platform")
    sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)


@contextmanager
def created_with_mode(mode: int) -> Iterator[None]:
    """Inside, files (and socket files bound) are created with permissions ``mode`` (at most 0o777).

    The process's umask is set for the duration and put back: binding happens
    while the service starts, on the reactor's thread, before anything else
    creates files.
    """
    previous = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(previous)


def bind_datagram_socket(path: str, mode: int, *, passcred: bool = False) -> socket.socket:
    """A non-blocking AF_UNIX datagram socket bound at ``path``, created with permissions ``mode``.

    The path must have been prepared with :func:`prepare_path`.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if passcred:
            enable_passcred(sock)
        try:
            with created_with_mode(mode):
                sock.bind(path)
        except OSError as e:
            raise SocketPathError(path, e.strerror or str(e)) from None
    except BaseException:
        sock.close()
        raise
    return sock


def credentials_from_ancillary(ancdata) -> Credentials | None:
    """The first SCM_CREDENTIALS entry of ``recvmsg`` ancillary data, if any."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS and len(data) >= _UCRED.size:
            return Credentials(*_UCRED.unpack_from(data))
    return None


def sender_pid(ancdata) -> int | None:
    """Just the PID from ``recvmsg`` ancillary data: the per-datagram path of origin detection."""
    for level, kind, data in ancdata:
        if kind == _SCM_CREDENTIALS and level == socket.SOL_SOCKET and len(data) >= _UCRED.size:
            return _PID.unpack_from(data)[0]
    return None


def peer_credentials(sock: socket.socket) -> Credentials:
    """The credentials of the process at the other end of a Unix stream connection."""
    if _SO_PEERCRED is None:
        raise OSError(errno.ENOPROTOOPT, "SO_PEERCRED is not available on this platform")
    return Credentials(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)))
