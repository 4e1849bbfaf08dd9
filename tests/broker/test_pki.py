"""The private CA: chains verify, names and key usages are as asked, TLS handshakes work."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from broker.pki import (
    CA_DAYS,
    LEAF_DAYS,
    PkiError,
    is_dns_name,
    issue_client,
    issue_server,
    load_issued,
    new_ca,
    subject_alt_names,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca():
    return new_ca(now=NOW)


def test_ca_is_a_constrained_self_signed_authority(ca):
    cert = ca.cert
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed, signature valid
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert ca.key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=CA_DAYS)


def test_server_certificate_verifies_against_the_ca_for_every_name(ca):
    server = issue_server(ca, ["broker.lan", "localhost", "127.0.0.1", "::1"], now=NOW)
    store = Store([ca.cert])
    at = NOW + datetime.timedelta(days=1)
    for name in ("broker.lan", "localhost"):
        verifier = PolicyBuilder().store(store).time(at).build_server_verifier(x509.DNSName(name))
        chain = verifier.verify(server.cert, [])
        assert chain[-1] == ca.cert
    for address in ("127.0.0.1", "::1"):
        ip = x509.IPAddress(ipaddress.ip_address(address))
        PolicyBuilder().store(store).time(at).build_server_verifier(ip).verify(server.cert, [])
    # A name not in the certificate fails: the check above could fail.
    other = PolicyBuilder().store(store).time(at).build_server_verifier(x509.DNSName("evil.lan"))
    with pytest.raises(VerificationError):
        other.verify(server.cert, [])


def test_server_certificate_names_and_usages(ca):
    server = issue_server(ca, ["Broker.LAN", "10.0.0.7"], now=NOW)
    cert = server.cert
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert cert.subject.rfc4514_string() == "CN=Broker.LAN"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=LEAF_DAYS)
    assert cert.not_valid_before_utc < NOW  # some clock skew tolerated


def test_client_certificate_is_for_client_auth_only(ca):
    client = issue_client(ca, "pi-1", now=NOW)
    client.cert.verify_directly_issued_by(ca.cert)
    eku = client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.cert.subject.rfc4514_string() == "CN=pi-1"
    with pytest.raises(x509.ExtensionNotFound):
        client.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_leaf_never_outlives_its_ca(ca):
    late = ca.cert.not_valid_after_utc - datetime.timedelta(days=10)
    server = issue_server(ca, ["localhost"], now=late)
    assert server.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


@pytest.mark.parametrize(
    "hosts",
    [[], ["bad name"], ["-lead.lan"], ["a..b"], ["*.wild.lan"], ["x" * 64 + ".lan"], ["a", "A"]],
)
def test_bad_host_names_are_refused_by_name(hosts):
    with pytest.raises(PkiError, match="host"):
        subject_alt_names(hosts)


def test_dns_name_rules():
    assert is_dns_name("localhost")
    assert is_dns_name("edge-1.example.org")
    assert not is_dns_name("under_score.lan")
    assert not is_dns_name("trailing.")


def test_pem_round_trip_and_mismatched_key(ca):
    again = load_issued(ca.cert_pem(), ca.key_pem())
    assert again.cert == ca.cert
    assert b"BEGIN PRIVATE KEY" in ca.key_pem()  # PKCS#8, unencrypted
    other = new_ca()
    with pytest.raises(PkiError, match="does not belong"):
        load_issued(ca.cert_pem(), other.key_pem())


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_strict_python_tls_handshake_with_mutual_authentication(tmp_path):
    """Python's ssl (OpenSSL) with X509_STRICT accepts the chain both ways."""
    ca = new_ca()
    server = issue_server(ca, ["localhost", "127.0.0.1"])
    client = issue_client(ca, "pi-1")
    ca_file = _write(tmp_path, "ca.crt", ca.cert_pem())
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    server_ctx.load_cert_chain(
        _write(tmp_path, "s.crt", server.cert_pem()), _write(tmp_path, "s.key", server.key_pem())
    )
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx = ssl.create_default_context(cafile=ca_file)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.load_cert_chain(
        _write(tmp_path, "c.crt", client.cert_pem()), _write(tmp_path, "c.key", client.key_pem())
    )
    peer: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5.0)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer.update(tls.getpeercert() or {})
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(5.0)
    assert peer["subject"] == ((("commonName", "pi-1"),),)
