"""A private certificate authority for one broker: its CA, server and client certificates.

Built with the ``cryptography`` library, no openssl binary. Keys are ECDSA P-256 (fast handshakes
on small devices; OpenSSL, mbedTLS and Python's ssl all take them), signatures SHA-256. The
certificates carry what strict verifiers (OpenSSL's X509_STRICT, Python 3.13's default) demand:
critical basic constraints and key usage, subject and authority key identifiers, and subject
alternative names on the server certificate, which is what clients check the host name against.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schemas.errors import AresError

CA_DAYS = 3650
# 825 days: the longest server certificate validity some clients (Apple's) still accept.
LEAF_DAYS = 825
CLOCK_SKEW = datetime.timedelta(minutes=5)  # devices whose clocks lag a little still accept
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class PkiError(AresError, ValueError):
    """A certificate request that cannot be honoured (bad host name, mismatched CA key)."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """PKCS#8, unencrypted: Mosquitto would otherwise prompt for a passphrase at start."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses and DNS names for a server certificate; a clear error for anything else."""
    if not hosts:
        raise PkiError("a server certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not is_dns_name(host):
            raise PkiError(
                f"invalid host {host!r}: expected an IP address or a DNS name "
                "(letters, digits and '-' in dot-separated labels)"
            )
        names.append(x509.DNSName(host.lower()))
    if len(set(names)) != len(names):
        raise PkiError(f"duplicate host in {list(hosts)}")
    return names


def is_dns_name(host: str) -> bool:
    """An ASCII host name as certificates hold it (no wildcards, no trailing dot)."""
    return len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in host.split("."))


def new_ca(common_name: str = "ARES broker CA", *, now: datetime.datetime | None = None) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    begin = _now(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin - CLOCK_SKEW)
        .not_valid_after(begin + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_server(
    ca: Issued, hosts: Sequence[str], *, now: datetime.datetime | None = None
) -> Issued:
    """A TLS server certificate for ``hosts`` (its SANs; the first is also its common name)."""
    names = subject_alt_names(hosts)
    return _issue(
        ca, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName(names), now
    )


def issue_client(ca: Issued, common_name: str, *, now: datetime.datetime | None = None) -> Issued:
    """A TLS client certificate; the common name is the device id (its MQTT user name)."""
    if not common_name or len(common_name) > 64:
        raise PkiError(
            f"a client certificate's common name must be 1-64 characters: {common_name!r}"
        )
    return _issue(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, None, now)


def load_issued(cert_pem: bytes, key_pem: bytes) -> Issued:
    """A certificate and key read back from PEM; checks that they belong together."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"expected an EC private key, got {type(key).__name__}")
    if key.public_key() != cert.public_key():
        raise PkiError("the private key does not belong to the certificate")
    return Issued(cert, key)


def _issue(
    ca: Issued,
    common_name: str,
    usage: x509.ObjectIdentifier,
    alt_names: x509.SubjectAlternativeName | None,
    now: datetime.datetime | None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    begin = _now(now)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin - CLOCK_SKEW)
        # Never past the CA: a verifier rejects the chain once the CA expires anyway.
        .not_valid_after(
            min(begin + datetime.timedelta(days=LEAF_DAYS), ca.cert.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDHE key exchange: the leaf key only signs the handshake.
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)
