"""Socket files: stale ones go, live ones and non-sockets stay; modes; credentials."""

from __future__ import annotations

import os
import socket
import stat
import struct

import pytest

from twisted_statsd.listeners import sockets
from twisted_statsd.listeners.sockets import SocketPathError


@pytest.fixture
def path(short_tmpdir):
    return os.path.join(short_tmpdir, "dsd.socket")


def stale_socket(path, kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path)
    s.close()


def test_a_missing_path_is_fine(path):
    sockets.prepare_path(path)
    assert not os.path.exists(path)


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_a_stale_socket_is_removed(path, kind):
    stale_socket(path, kind)
    assert not sockets.socket_in_use(path)
    sockets.prepare_path(path)
    assert not os.path.exists(path)


def test_a_live_datagram_socket_is_address_in_use(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(path)
        with pytest.raises(SocketPathError, match="address in use"):
            sockets.prepare_path(path)
        assert os.path.exists(path)


def test_a_live_stream_socket_is_address_in_use_and_gets_no_connection(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen()
        live.setblocking(False)
        with pytest.raises(SocketPathError, match="address in use"):
            sockets.prepare_path(path)
        with pytest.raises(BlockingIOError):
            live.accept()  # the probe did not connect


def test_a_regular_file_is_never_deleted(path):
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(SocketPathError, match="is not a Unix socket") as info:
        sockets.prepare_path(path)
    assert (
        str(info.value)
        == f"Cannot listen on Unix socket {path}: the path exists and is not a Unix socket; it is left alone"
    )
    with open(path) as f:
        assert f.read() == "precious"


def test_a_symlink_to_a_stale_socket_is_not_followed(path, short_tmpdir):
    target = os.path.join(short_tmpdir, "real.socket")
    stale_socket(target)
    os.symlink(target, path)
    with pytest.raises(SocketPathError, match="not a Unix socket"):
        sockets.prepare_path(path)
    assert os.path.lexists(path) and os.path.exists(target)


@pytest.mark.parametrize("target", ["missing.socket", "."])
def test_a_dangling_symlink_or_one_to_a_directory_is_refused_and_left_alone(path, short_tmpdir, target):
    os.symlink(os.path.join(short_tmpdir, target), path)
    with pytest.raises(SocketPathError, match="not a Unix socket"):
        sockets.prepare_path(path)
    assert os.path.islink(path)


def test_a_symlink_put_in_place_of_our_socket_is_not_removed_at_stop(path, short_tmpdir):
    """Stop removes only the file we bound: a symlink swapped in (even to a socket) and its target stay."""
    sock = sockets.bind_datagram_socket(path, 0o722)
    identity = sockets.file_identity(path)
    sock.close()
    target = os.path.join(short_tmpdir, "other.socket")
    stale_socket(target)
    os.rename(path, path + ".ours")  # keeps our inode alive, so the symlink cannot reuse it
    os.symlink(target, path)
    assert not sockets.remove_socket_file(path, identity)
    assert os.path.islink(path) and os.path.exists(target)


def test_a_missing_directory_is_a_clear_error(short_tmpdir):
    with pytest.raises(SocketPathError, match="does not exist"):
        sockets.prepare_path(os.path.join(short_tmpdir, "nope", "dsd.socket"))


def test_bind_sets_the_mode_whatever_the_umask(path):
    old = os.umask(0o077)
    try:
        sock = sockets.bind_datagram_socket(path, 0o722)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o722
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert not sock.getblocking()
    finally:
        sock.close()


def test_remove_only_the_file_we_bound(path):
    sock = sockets.bind_datagram_socket(path, 0o722)
    identity = sockets.file_identity(path)
    sock.close()
    keep = path + ".old"
    os.link(path, keep)  # keeps our inode alive, so the replacement cannot reuse it
    stale_socket(path + ".new")
    os.rename(path + ".new", path)  # someone else's file now
    assert not sockets.remove_socket_file(path, identity)
    assert os.path.exists(path)
    assert sockets.remove_socket_file(path, sockets.file_identity(path))
    assert not sockets.remove_socket_file(path, None)  # already gone: fine


def test_receive_buffer_is_read_back(path):
    sock = sockets.bind_datagram_socket(path, 0o722)
    try:
        default = sockets.set_receive_buffer(sock, 0)
        granted = sockets.set_receive_buffer(sock, 1 << 20)
        assert granted >= min(1 << 20, 212992) and granted != default
    finally:
        sock.close()


@pytest.mark.skipif(not sockets.credentials_supported(), reason="Linux credentials")
def test_credentials_come_with_datagrams_and_from_stream_peers(path):
    receiver = sockets.bind_datagram_socket(path, 0o722, passcred=True)
    with receiver, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"x:1|c", path)
        _data, ancdata, _flags, _ = receiver.recvmsg(100, sockets.CREDENTIALS_SPACE)
        assert sockets.credentials_from_ancillary(ancdata) == (os.getpid(), os.getuid(), os.getgid())
    a, b = socket.socketpair()
    with a, b:
        assert sockets.peer_credentials(a).pid == os.getpid()


def test_credentials_parsing_ignores_other_ancillary_data():
    assert sockets.credentials_from_ancillary([]) is None
    assert sockets.credentials_from_ancillary([(socket.SOL_SOCKET, 1, b"\0" * 4)]) is None
    ucred = struct.pack("=iII", 12, 1000, 100)
    entry = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, ucred)
    assert sockets.credentials_from_ancillary([entry]) == (12, 1000, 100)


def test_sender_pid_agrees_with_full_credentials():
    entry = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("=iII", 4321, 1, 2))
    assert sockets.sender_pid([entry]) == 4321
    assert sockets.sender_pid([]) is None
