"""TLS for the TCP listener (``dogstatsd_tls_cert``, ``dogstatsd_tls_key``, ``dogstatsd_tls_ca``).

Twisted's TLS needs pyOpenSSL, which comes with the ``tls`` extra, so this
module is imported only when TLS is configured
(:func:`twisted_statsd.listeners.tcp.server_tls`).  With a CA file, every
client must present a certificate signed by one of its CAs, or the handshake
fails.  The connection cap and the sender allow-list are checked before the
TLS layer is built (:class:`AdmittingTLSFactory`), so a refused connection
costs no handshake.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_statsd.listeners.tcp import TLSError

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"

# The private key types TLS can sign with (a PEM file may also hold, say, a Diffie-Hellman key).
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise TLSError(f"{key}: cannot read {path}: {error.strerror or error}") from None


def _certificates(key: str, path: str) -> list[x509.Certificate]:
    """Every PEM certificate in the file, in order."""
    try:
        return x509.load_pem_x509_certificates(_read(key, path))
    except ValueError as error:
        raise TLSError(f"{key}: {path} holds no valid PEM certificate: {error}") from None


class AdmittingTLSFactory(TLSMemoryBIOFactory):
    """Twisted's server TLS factory, except that a connection the wrapped factory refuses is closed at once."""

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory
        if not wrapped.admit(addr):
            return None
        return self.protocol(self, wrapped.make_protocol())


@dataclass(frozen=True)
class ServerTLS:
    """The TLS files of the TCP listener, read by :meth:`options` when the port is bound."""

    cert: str
    key: str
    ca: str = ""

    def options(self) -> ssl.CertificateOptions:
        """Twisted's CertificateOptions for these files; a TLSError names the bad one."""
        leaf, *chain = _certificates("dogstatsd_tls_cert", self.cert)
        try:
            key = serialization.load_pem_private_key(_read("dogstatsd_tls_key", self.key), password=None)
        except (ValueError, TypeError) as error:
            raise TLSError(
                f"dogstatsd_tls_key: {self.key} holds no valid unencrypted PEM private key: {error}"
            ) from None
        if not isinstance(key, _SIGNING_KEYS):
            raise TLSError(f"dogstatsd_tls_key: {self.key} holds a {type(key).__name__}, which cannot sign for TLS")
        trust = {}
        if self.ca:
            # Twisted's trust root takes pyOpenSSL certificates.
            authorities = [
                ssl.Certificate(X509.from_cryptography(c)) for c in _certificates("dogstatsd_tls_ca", self.ca)
            ]
            trust["trustRoot"] = ssl.trustRootFromCertificates(authorities)
        try:
            try:
                # Twisted annotates these as pyOpenSSL's types; with pyOpenSSL >= 24.3 it takes cryptography's.
                options = ssl.CertificateOptions(
                    privateKey=key,  # type: ignore[arg-type]
                    certificate=leaf,  # type: ignore[arg-type]
                    extraCertChain=chain,  # type: ignore[arg-type]
                    **trust,
                )
                options.getContext()  # checks that the key belongs to the certificate
            except TypeError:
                # pyOpenSSL before 24.3 takes only its own key and certificate types (newer ones deprecate them).
                options = ssl.CertificateOptions(
                    privateKey=PKey.from_cryptography_key(key),
                    certificate=X509.from_cryptography(leaf),
                    extraCertChain=[X509.from_cryptography(c) for c in chain],
                    **trust,
                )
                options.getContext()
        except (SSL.Error, ValueError) as error:
            raise TLSError(f"dogstatsd_tls_key: {self.key} is not the key of {self.cert}: {error}") from None
        return options

    def wrap(self, factory, clock) -> AdmittingTLSFactory:
        return AdmittingTLSFactory(self.options(), False, factory, clock)
