"""One process: an embedded server takes N metric lines over one stream transport, then exits.

    python -m benchmarks.stream_intake {tcp,tls,unixstream} [--lines 1000000]

A sender thread writes the lines (1,000 counter contexts) in 8 KiB writes:
newline-framed on TCP and TLS, length-prefixed frames on the Unix stream
socket.  The process exits once the server's telemetry has counted every
metric, so timing the whole process (several runs, one transport against
another) compares the listeners' cost per line; the start-up is the same for
all.  Not part of the test run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading

CHUNK = 8192


def payloads(lines: int) -> list[bytes]:
    """The lines, cut into chunks of whole lines of at most CHUNK bytes."""
    chunks, current, size = [], [], 0
    for n in range(lines):
        line = b"bench.metric.%d:1|c|#shard:%d\n" % (n % 1000, n % 7)
        if size + len(line) > CHUNK:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    chunks.append(b"".join(current))
    return chunks


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A self-signed CA and a server certificate for 127.0.0.1, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path, cert_path


def send(transport: str, address, chunks: list[bytes], ca: str | None) -> None:
    if transport == "unixstream":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        data = [struct.pack("<I", len(c)) + c for c in chunks]
    else:
        sock = socket.create_connection(address)
        if transport == "tls":
            sock = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname="127.0.0.1")
        data = chunks
    with sock:
        for chunk in data:
            sock.sendall(chunk)
        if transport == "tls":
            # A TLS close: closing with the server's session tickets unread would reset the
            # connection, and the kernel would discard what the server has not read yet.
            sock.unwrap()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transport", choices=("tcp", "tls", "unixstream"))
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    from twisted.internet import reactor, task

    from twisted_statsd import build_service, load_config
    from twisted_statsd.testing import MemorySink

    directory = tempfile.mkdtemp(prefix="sb")
    settings = {"dogstatsd_port": 0, "flush_interval": 3600, "hostname": "bench"}
    ca = None
    if args.transport == "unixstream":
        settings["dogstatsd_stream_socket"] = os.path.join(directory, "s.sock")
    else:
        settings["dogstatsd_tcp_port"] = "__random__"
    if args.transport == "tls":
        cert, key, ca = make_certificates(directory)
        settings.update(dogstatsd_tls_cert=cert, dogstatsd_tls_key=key)
    service = build_service(load_config(data=settings), reactor, sinks=[MemorySink()])
    service.privilegedStartService()
    service.startService()
    if args.transport == "unixstream":
        address = settings["dogstatsd_stream_socket"]
    else:
        address = ("127.0.0.1", service.tcp.address.port)
    chunks = payloads(args.lines)
    threading.Thread(target=send, args=(args.transport, address, chunks, ca), daemon=True).start()

    def check() -> None:
        service.intake.drain()
        service.pipeline.fold()
        if service.telemetry.get("metrics") >= args.lines:
            loop.stop()
            service.stopService().addBoth(lambda _: reactor.stop())

    loop = task.LoopingCall(check)
    loop.start(0.05)
    reactor.run()
    if service.telemetry.total_dropped():
        sys.exit(f"dropped: {service.telemetry.total_dropped()}")


if __name__ == "__main__":
    main()
