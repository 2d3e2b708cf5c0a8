"""The real service tree on TCP and TLS: the ``statsd`` package's TCPStatsClient, raw sockets, stdlib ssl.

Certificates are generated per test session with ``cryptography``; no key file is committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import counted, start_jsonl_server, wait_for, with_deadline
from statsd import TCPStatsClient
from twisted.internet import threads

from twisted_statsd import build_service, load_config
from twisted_statsd.listeners.tcp import TLSError


def values(path):
    """metric -> summed point values of the user's metrics."""
    found: dict[str, float] = {}
    with open(path) as f:
        for o in map(json.loads, f):
            if "points" in o and not o["metric"].startswith("twisted_statsd."):
                found[o["metric"]] = found.get(o["metric"], 0) + sum(p["value"] for p in o["points"])
    return found


def build(tmp_path, **settings):
    out = tmp_path / "out.jsonl"
    data = {
        "dogstatsd_port": 0,
        "dogstatsd_tcp_port": "__random__",
        "hostname": "testhost",
        "flush_interval": 3600,
        "sinks": [{"type": "jsonl", "path": str(out)}],
        **settings,
    }
    return build_service(load_config(data=data)), out


def start(tmp_path, **settings):
    service, out = build(tmp_path, **settings)
    service.privilegedStartService()
    service.startService()
    return service, out, service.tcp.address.port


async def stop(reactor, service):
    await with_deadline(reactor, service.stopService())


def raw_client(port) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def closed_by_peer(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True


# -- plain TCP ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_statsd_tcp_client(reactor, tmp_path):
    service, out, port = start(tmp_path)
    try:
        client = TCPStatsClient("127.0.0.1", port, prefix="app")
        client.incr("hits", 3)
        client.incr("hits", 2)
        client.gauge("temp", 21)
        client.timing("latency", 12)
        with client.pipeline() as pipe:  # one write of several lines
            pipe.incr("piped")
            pipe.incr("piped")
        await wait_for(reactor, lambda: counted(service) == 6)
        assert service.telemetry.gauges[("tcp_connections", ())] == 1
        client.close()
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 0)
    finally:
        await stop(reactor, service)
    found = values(out)
    assert found["app.hits"] == 0.5 and found["app.temp"] == 21 and found["app.piped"] == 0.2
    assert found["app.latency.count"] == 0.1
    assert service.telemetry.get("packets", "transport:tcp") >= 1
    assert service.telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_lines_split_across_writes_and_coalesced_in_one(reactor, tmp_path):
    service, out, port = start(tmp_path)
    sock = raw_client(port)
    try:
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 1)
        (protocol,) = service.tcp.tracker.connections
        for i, byte in enumerate(b"split:1|c\n"):
            sock.send(bytes([byte]))
            await wait_for(reactor, lambda i=i: protocol.decoder.pending == (i + 1) % 10)
        sock.send(b"".join(b"many.%d:%d|c\n" % (n % 10, n) for n in range(1000)) + b"tail:")
        sock.send(b"5|g\n")
        await wait_for(reactor, lambda: counted(service) == 1002)
    finally:
        sock.close()
        await stop(reactor, service)
    found = values(out)
    assert found["split"] == 0.1 and found["tail"] == 5
    assert sum(v for k, v in found.items() if k.startswith("many.")) == pytest.approx(sum(range(1000)) / 10)


@pytest_twisted.ensureDeferred
async def test_a_line_too_long_closes_only_that_connection(reactor, tmp_path):
    service, out, port = start(tmp_path, dogstatsd_buffer_size=1024)
    bad, good = raw_client(port), raw_client(port)
    try:
        bad.send(b"before:1|c\n" + b"x" * 2000)
        good.send(b"good:1|c\n")
        await wait_for(reactor, lambda: closed_by_peer(bad))
        assert service.telemetry.dropped("tcp_line_too_long") == 1
        good.send(b"good:1|c\n")
        await wait_for(reactor, lambda: counted(service) == 3)
        assert len(service.tcp.tracker) == 1
    finally:
        bad.close()
        good.close()
        await stop(reactor, service)
    assert values(out) == {"before": 0.1, "good": 0.2}


@pytest_twisted.ensureDeferred
async def test_connections_over_the_cap_are_refused(reactor, tmp_path):
    service, _out, port = start(tmp_path, dogstatsd_tcp_max_connections=2)
    socks = [raw_client(port) for _ in range(2)]
    try:
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 2)
        extra = raw_client(port)
        socks.append(extra)
        await wait_for(reactor, lambda: closed_by_peer(extra))
        assert service.telemetry.dropped("tcp_connection_refused") == 1
        for sock in socks[:2]:
            sock.send(b"ok:1|c\n")
        await wait_for(reactor, lambda: counted(service) == 2)
    finally:
        for sock in socks:
            sock.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_closed(reactor, tmp_path):
    service, _out, port = start(tmp_path, dogstatsd_tcp_idle_timeout=0.2)
    idle = raw_client(port)
    try:
        idle.send(b"whole:1|c\nhalf:1")
        await wait_for(reactor, lambda: closed_by_peer(idle))
        assert service.telemetry.get("tcp_connections_idle_closed") == 1
        assert service.telemetry.dropped("tcp_line_truncated") == 1
        await wait_for(reactor, lambda: counted(service) == 1)
    finally:
        idle.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_stop_reads_what_was_sent_and_closes_connections(reactor, tmp_path):
    service, out, port = start(tmp_path)
    sock = raw_client(port)
    try:
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 1)
        sock.send(b"last:1|c\n")
        await stop(reactor, service)  # no reactor turn between the send and the stop
        assert closed_by_peer(sock)
    finally:
        sock.close()
    assert values(out) == {"last": 0.1}
    assert service.tcp.port is None


@pytest_twisted.ensureDeferred
async def test_read_pending_takes_what_the_kernel_holds_without_a_reactor_turn(reactor, tmp_path):
    """What service.flush() and stopping rely on: a synchronous read through the socket."""
    service, _out, port = start(tmp_path)
    sock = raw_client(port)
    try:
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 1)
        (protocol,) = service.tcp.tracker.connections
        sock.send(b"now:1|c\nnext:")
        service.tcp.read_pending()
        assert protocol.buffer.packets == [b"now:1|c\n"]
        assert protocol.decoder.pending == 5
    finally:
        sock.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_lines_are_forwarded_in_datagrams_of_at_most_the_buffer_size(reactor, tmp_path):
    """Forwarding (spec §4) sends each packet as one datagram: a TCP read is cut into packets that fit."""
    second, _second_out = start_jsonl_server(reactor, tmp_path, "second", dogstatsd_buffer_size=1024)
    first, _out, port = start(
        tmp_path,
        dogstatsd_buffer_size=1024,
        statsd_forward_host="127.0.0.1",
        statsd_forward_port=second.udp.address.port,
    )
    try:
        await wait_for(reactor, lambda: first.forwarder._address is not None)
        client = TCPStatsClient("127.0.0.1", port)
        with client.pipeline() as pipe:  # one write of 10 KB
            for n in range(1000):
                pipe.incr(f"fwd.{n % 10}")
        await wait_for(reactor, lambda: counted(second) == 1000 and counted(first) == 1000)
        assert first.telemetry.get("forwarded_packets") >= 10  # 10 KB in packets of at most 1 KiB
        client.close()
    finally:
        await stop(reactor, first)
        await stop(reactor, second)
    assert second.telemetry.total_dropped() == 0 and first.telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_memory_pressure_pauses_reading_but_delivers(reactor, tmp_path):
    limiter = {"enabled": True, "low_soft_limit": 0.0001, "high_soft_limit": 1000, "hard_limit": 1000}
    service, _out, port = start(tmp_path, dogstatsd_mem_based_rate_limiter=limiter)
    sock = raw_client(port)
    try:
        assert service.memory.state.delay > 0
        for _ in range(50):
            sock.send(b"pressed:1|c\n")
            await wait_for(reactor, lambda: True)  # a reactor turn, so that the writes are separate reads
        await wait_for(reactor, lambda: counted(service) == 50)
        assert service.telemetry.get("uds_read_holds") > 0
    finally:
        sock.close()
        await stop(reactor, service)
    assert service.telemetry.total_dropped() == 0


# -- the sender allow-list ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_senders_outside_the_allow_list_are_refused_on_udp_and_tcp(reactor, tmp_path):
    service, _out, port = start(tmp_path, dogstatsd_port="__random__", dogstatsd_allowed_senders=["10.0.0.0/8"])
    sock = raw_client(port)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"refused:1|c", ("127.0.0.1", service.udp.address.port))
        await wait_for(reactor, lambda: closed_by_peer(sock))
        await wait_for(reactor, lambda: service.telemetry.dropped("udp_sender_refused") == 1)
        assert service.telemetry.dropped("tcp_sender_refused") == 1
        assert counted(service) == 0
    finally:
        sock.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_senders_inside_the_allow_list_are_served(reactor, tmp_path):
    service, out, port = start(tmp_path, dogstatsd_port="__random__", dogstatsd_allowed_senders=["127.0.0.0/8"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"by.udp:1|c", ("127.0.0.1", service.udp.address.port))
        TCPStatsClient("127.0.0.1", port).incr("by.tcp")
        await wait_for(reactor, lambda: counted(service) == 2)
    finally:
        await stop(reactor, service)
    assert values(out) == {"by.udp": 0.1, "by.tcp": 0.1}
    assert service.telemetry.total_dropped() == 0


# -- TLS ------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer_key, issuer_name, *, ca: bool = False, san: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(directory, name: str, key, cert) -> tuple[str, str]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server and a client certificate it signed, and a client certificate from another CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("test CA", None, None, ca=True)
    rogue_key, rogue_cert = _issue("rogue CA", None, None, ca=True)
    paths = {"ca": _write(directory, "ca", ca_key, ca_cert)}
    paths["server"] = _write(directory, "server", *_issue("localhost", ca_key, ca_cert.subject, san=True))
    paths["client"] = _write(directory, "client", *_issue("client", ca_key, ca_cert.subject))
    paths["rogue"] = _write(directory, "rogue", *_issue("client", rogue_key, rogue_cert.subject))
    return paths


def tls_settings(pki, *, require_client: bool):
    settings = {"dogstatsd_tls_cert": pki["server"][0], "dogstatsd_tls_key": pki["server"][1]}
    if require_client:
        settings["dogstatsd_tls_ca"] = pki["ca"][0]
    return settings


def tls_send(port: int, ca: str, lines: bytes, client: tuple[str, str] | None = None) -> None:
    """A stdlib ssl client, verifying the server against ``ca``; run in a thread."""
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(lines)
            tls.unwrap()


def tls_refused(port: int, ca: str, client: tuple[str, str] | None) -> bool:
    """True when the server ends the TLS session without taking the client's data."""
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                # TLS 1.3: the server checks the client's certificate after the client's handshake ends.
                tls.sendall(b"refused:1|c\n")
                return tls.recv(1) == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True


@pytest_twisted.ensureDeferred
async def test_tls_with_a_real_client(reactor, tmp_path, pki):
    service, out, port = start(tmp_path, **tls_settings(pki, require_client=False))
    try:
        lines = b"".join(b"secure.%d:1|c\n" % (n % 5) for n in range(500))
        await with_deadline(reactor, threads.deferToThread(tls_send, port, pki["ca"][0], lines))
        await wait_for(reactor, lambda: counted(service) == 500)
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 0)
    finally:
        await stop(reactor, service)
    assert values(out) == {f"secure.{n}": 10.0 for n in range(5)}
    assert service.telemetry.total_dropped() == 0


@pytest_twisted.ensureDeferred
async def test_tls_client_certificates_must_be_signed_by_the_ca(reactor, tmp_path, pki, logged_errors):
    service, out, port = start(tmp_path, **tls_settings(pki, require_client=True))
    ca = pki["ca"][0]
    try:
        assert await with_deadline(reactor, threads.deferToThread(tls_refused, port, ca, pki["rogue"]))
        assert await with_deadline(reactor, threads.deferToThread(tls_refused, port, ca, None))
        await with_deadline(reactor, threads.deferToThread(tls_send, port, ca, b"trusted:1|c\n", pki["client"]))
        await wait_for(reactor, lambda: counted(service) == 1)
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 0)
    finally:
        await stop(reactor, service)
    assert values(out) == {"trusted": 0.1}


@pytest_twisted.ensureDeferred
async def test_tls_senders_outside_the_allow_list_are_refused_before_the_handshake(reactor, tmp_path, pki):
    settings = tls_settings(pki, require_client=False)
    service, _out, port = start(tmp_path, dogstatsd_allowed_senders=["10.0.0.0/8"], **settings)
    sock = raw_client(port)
    try:
        await wait_for(reactor, lambda: closed_by_peer(sock))
        assert service.telemetry.dropped("tcp_sender_refused") == 1
        assert service.telemetry.get("tcp_connections_accepted") == 0
    finally:
        sock.close()
        await stop(reactor, service)


@pytest_twisted.ensureDeferred
async def test_stop_closes_a_tls_connection_that_never_finished_its_handshake(reactor, tmp_path, pki):
    service, _out, port = start(tmp_path, **tls_settings(pki, require_client=False))
    sock = raw_client(port)
    try:
        await wait_for(reactor, lambda: len(service.tcp.tracker) == 1)
    finally:
        await stop(reactor, service)
        assert closed_by_peer(sock)
        sock.close()


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("dogstatsd_tls_cert", "dogstatsd_tls_cert: cannot read"),
        ("dogstatsd_tls_key", "dogstatsd_tls_key: cannot read"),
        ("dogstatsd_tls_ca", "dogstatsd_tls_ca: cannot read"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_missing_tls_file_fails_the_start_naming_the_key(reactor, tmp_path, pki, which, message):
    settings = {**tls_settings(pki, require_client=True), which: str(tmp_path / "missing.pem")}
    service, _ = build(tmp_path, **settings)
    with pytest.raises(TLSError, match=message):
        service.privilegedStartService()
    await with_deadline(reactor, service.abandoned)


@pytest_twisted.ensureDeferred
async def test_a_key_that_does_not_match_the_certificate_fails_the_start(reactor, tmp_path, pki):
    service, _ = build(tmp_path, dogstatsd_tls_cert=pki["server"][0], dogstatsd_tls_key=pki["client"][1])
    with pytest.raises(TLSError, match=r"dogstatsd_tls_key: .* is not the key of"):
        service.privilegedStartService()
    await with_deadline(reactor, service.abandoned)


def test_tls_files_load_with_a_pyopenssl_that_takes_only_its_own_types(monkeypatch, pki):
    """pyOpenSSL before 24.3 refuses cryptography's objects; the options are built from its own."""
    from OpenSSL import SSL
    from OpenSSL.crypto import X509

    from twisted_statsd.listeners.tls import ServerTLS

    original = SSL.Context.use_certificate

    def old_use_certificate(self, cert):
        if not isinstance(cert, X509):
            raise TypeError("cert must be an X509 instance")
        return original(self, cert)

    monkeypatch.setattr(SSL.Context, "use_certificate", old_use_certificate)
    with pytest.warns(DeprecationWarning):
        options = ServerTLS(*pki["server"], pki["ca"][0]).options()
    assert options.getContext() is not None


@pytest_twisted.ensureDeferred
async def test_a_key_that_cannot_sign_fails_the_start_naming_its_type(reactor, tmp_path, pki):
    """A PEM private key TLS cannot sign with (X25519, a key-agreement key) is refused by name at start."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    key = tmp_path / "x25519.pem"
    key.write_bytes(
        x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    service, _ = build(tmp_path, dogstatsd_tls_cert=pki["server"][0], dogstatsd_tls_key=str(key))
    with pytest.raises(TLSError, match=r"dogstatsd_tls_key: .* holds a X25519PrivateKey, which cannot sign for TLS"):
        service.privilegedStartService()
    await with_deadline(reactor, service.abandoned)
