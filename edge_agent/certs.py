"""Certificates: OPC UA application instance certificates and fingerprints.

``edge-agent certs opcua --out DIR`` uses :func:`make_opcua_certificate` to create the agent's
OPC UA client certificate: self-signed RSA 2048 / SHA-256 (what the policies Basic256Sha256,
Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss accept), the ApplicationUri in the
subjectAltName (OPC UA Part 6 §6.2.2: servers reject a certificate without it), the host's names
as DNS entries, and the key usages Part 6 asks of an application instance certificate. The same
function makes the simulator's server certificate.

Only ``cryptography`` is used here (a dependency of asyncua), so the command works offline.
``edge-agent certs fingerprint FILE`` prints a certificate's subject, ApplicationUri, SHA-256
fingerprint and SHA-1 thumbprint; ``edge-agent certs show-server ENDPOINT`` prints the same of the
certificate(s) an OPC UA server presents (it imports asyncua, for that command only).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "OpcuaCertificate",
    "describe",
    "fingerprint",
    "load_certificate",
    "make_opcua_certificate",
    "show_main",
    "thumbprint",
]

DEFAULT_APPLICATION_URI = "urn:edge-agent:client"
CERT_FILE = "edge-agent-opcua.der"
KEY_FILE = "edge-agent-opcua.key.pem"


@dataclass(frozen=True, slots=True)
class OpcuaCertificate:
    cert_file: Path  # DER: the form PLC engineering tools import into their trust lists
    key_file: Path  # PEM, unencrypted, mode 0600
    application_uri: str
    fingerprint: str  # SHA-256, "AB:CD:..."


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes; raises ``ValueError`` when it is neither."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def fingerprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as upper-case hex pairs joined by ``:``."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def thumbprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-1 thumbprint, lower-case hex: what OPC UA itself uses to name a
    certificate, and how many servers name the files in their trust lists (node-opcua's
    ``rejected/edge-agent[THUMBPRINT].pem``)."""
    return cert.fingerprint(hashes.SHA1()).hex()  # an identifier, not a signature


def describe(cert: x509.Certificate) -> list[str]:
    """What an engineer compares with a PLC's display, one ``label  value`` line each: subject,
    ApplicationUri, SHA-256 fingerprint, SHA-1 thumbprint, validity."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return [
        f"subject          {cert.subject.rfc4514_string()}",
        f"application uri  {', '.join(uris) or '(none)'}",
        f"sha256           {fingerprint(cert)}",
        f"sha1 thumbprint  {thumbprint(cert)}",
        f"valid            {cert.not_valid_before_utc:%Y-%m-%d} to "
        f"{cert.not_valid_after_utc:%Y-%m-%d}",
    ]


def make_opcua_certificate(
    out_dir: Path,
    *,
    application_uri: str = DEFAULT_APPLICATION_URI,
    common_name: str = "edge-agent",
    hostnames: Sequence[str] = (),
    days: int = 3650,
    cert_name: str = CERT_FILE,
    key_name: str = KEY_FILE,
    overwrite: bool = False,
) -> OpcuaCertificate:
    """Create a self-signed OPC UA application instance certificate and its key in ``out_dir``.

    ``hostnames`` become DNS (or IP) subjectAltName entries. Refuses to replace existing files
    unless ``overwrite`` (raises ``FileExistsError``): a PLC that trusts the old certificate
    would refuse the agent after a silent replacement. The key file is created with mode 0600.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / cert_name, out_dir / key_name
    if not overwrite:
        for path in (cert_path, key_path):
            if path.exists():
                raise FileExistsError(f"{path} exists (pass --force to replace it)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hostnames:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return OpcuaCertificate(cert_path, key_path, application_uri, fingerprint(cert))


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)


def show_main(command: str, args: argparse.Namespace) -> int:
    """``edge-agent certs fingerprint FILE`` and ``edge-agent certs show-server ENDPOINT``:
    print what :func:`describe` says of a certificate file, or of each certificate an OPC UA
    server presents in its endpoints (with the policies it serves). 0, or 1 with the reason."""
    if command == "fingerprint":
        try:
            cert = load_certificate(Path(args.file).read_bytes())
        except OSError as exc:
            print(f"edge-agent certs fingerprint: {args.file}: {exc.strerror}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(
                f"edge-agent certs fingerprint: {args.file}: not a certificate: {exc}",
                file=sys.stderr,
            )
            return 1
        print(f"file             {args.file}")
        print("\n".join(describe(cert)))
        return 0
    # asyncua only for this command: it costs ~0.3 s and ~48 MiB to import.
    from asyncua.ua.uaerrors import UaError  # noqa: PLC0415

    from edge_agent.sources.opcua_security import server_certificates  # noqa: PLC0415

    try:
        found = asyncio.run(server_certificates(args.endpoint, args.timeout))
    except TimeoutError:
        print(
            f"edge-agent certs show-server: {args.endpoint}: no answer within {args.timeout:g} s",
            file=sys.stderr,
        )
        return 1
    except (OSError, UaError, ValueError) as exc:
        print(
            f"edge-agent certs show-server: {args.endpoint}: {exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    if not found:
        print(
            f"edge-agent certs show-server: {args.endpoint} presents no certificate "
            "(it offers security None only)",
            file=sys.stderr,
        )
        return 1
    print(f"endpoint         {args.endpoint}")
    for cert, uses in found:
        print(f"used for         {', '.join(uses)}")
        print("\n".join(describe(cert)))
    return 0
