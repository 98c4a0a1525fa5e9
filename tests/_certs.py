"""Throwaway TLS material made at test time: two CAs, server and client certificates.

Everything is PEM bytes (no grpc objects), EC P-256 keys (fast to make), valid from an
hour ago for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyPair", "TLSMaterial", "make_tls_material"]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A private key and its certificate, both PEM."""

    key: bytes
    cert: bytes


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    """What the TLS tests need, all PEM bytes.

    - ``ca``: the root that signed ``server``, ``client`` and ``misnamed_server``.
    - ``server``: for DNS ``localhost`` and IP ``127.0.0.1``.
    - ``misnamed_server``: for DNS ``other.example`` only.
    - ``localhost_only_server``: for DNS ``localhost`` only (no IP address), so a
      client dialling 127.0.0.1 verifies it only if it checks the name ``localhost``.
    - ``client``: a client certificate for mutual TLS.
    - ``other_ca``: an unrelated root that signed nothing here.
    """

    ca: bytes
    server: KeyPair
    misnamed_server: KeyPair
    localhost_only_server: KeyPair
    client: KeyPair
    other_ca: bytes


def make_tls_material() -> TLSMaterial:
    """Make a fresh CA, the certificates it signs, and an unrelated CA."""
    ca_key, ca_cert = _ca("conngrpc test CA")
    _, other_ca_cert = _ca("conngrpc unrelated CA")
    localhost = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return TLSMaterial(
        ca=_pem(ca_cert),
        server=_leaf("localhost", localhost, ExtendedKeyUsageOID.SERVER_AUTH, ca_key, ca_cert),
        misnamed_server=_leaf(
            "other.example",
            [x509.DNSName("other.example")],
            ExtendedKeyUsageOID.SERVER_AUTH,
            ca_key,
            ca_cert,
        ),
        localhost_only_server=_leaf(
            "localhost",
            [x509.DNSName("localhost")],
            ExtendedKeyUsageOID.SERVER_AUTH,
            ca_key,
            ca_cert,
        ),
        client=_leaf("conngrpc test client", [], ExtendedKeyUsageOID.CLIENT_AUTH, ca_key, ca_cert),
        other_ca=_pem(other_ca_cert),
    )


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(key=key_pem, cert=_pem(cert))


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
