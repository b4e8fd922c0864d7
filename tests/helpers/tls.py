"""Throwaway certificate authorities for TLS tests, made with ``cryptography`` (no openssl tool)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class Pki:
    ca_cert: Path
    server_cert: Path  # for DNS name "localhost" only (not for 127.0.0.1)
    server_key: Path
    client_cert: Path
    client_key: Path
    # A second CA the broker does not know, and a client certificate it signed.
    other_ca_cert: Path
    stranger_cert: Path
    stranger_key: Path


@dataclass(frozen=True, slots=True)
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=2)
    )


def make_ca(cn: str) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
    )
    return _Ca(_validity(builder).sign(key, hashes.SHA256()), key)


def issue(
    ca: _Ca, cn: str, *, dns: tuple[str, ...] = (), server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns]), critical=False
        )
    return _validity(builder).sign(ca.key, hashes.SHA256()), key


def write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for ``localhost`` and a client certificate, all EC P-256;
    plus a second, unknown CA with a client certificate of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("edge-agent test CA")
    other = make_ca("edge-agent stranger CA")
    server, server_key = issue(ca, "localhost", dns=("localhost",), server=True)
    client, client_key = issue(ca, "edge-agent-test", server=False)
    stranger, stranger_key = issue(other, "edge-agent-test", server=False)
    return Pki(
        ca_cert=write_cert(directory / "ca.crt", ca.cert),
        server_cert=write_cert(directory / "server.crt", server),
        server_key=write_key(directory / "server.key", server_key),
        client_cert=write_cert(directory / "client.crt", client),
        client_key=write_key(directory / "client.key", client_key),
        other_ca_cert=write_cert(directory / "other-ca.crt", other.cert),
        stranger_cert=write_cert(directory / "stranger.crt", stranger),
        stranger_key=write_key(directory / "stranger.key", stranger_key),
    )
