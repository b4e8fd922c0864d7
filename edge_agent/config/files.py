"""The files a configuration names: do they exist, can the agent read them, do they parse?

``check-config`` and ``run`` (and a reload) check them before anything starts, so a missing key
file is a configuration error (exit 78) instead of a connection that fails at run time. The paths
given here are already resolved by the loader exactly as the agent resolves them
(:func:`edge_agent.secrets.resolve_path`). Nothing here ever puts a file's content in a message.
"""

from __future__ import annotations

import os
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from edge_agent.certs import load_certificate

__all__ = ["MAX_FILE_BYTES", "FileKind", "file_problem"]

MAX_FILE_BYTES = 1 << 20  # a certificate bundle is a few hundred kB at most


class FileKind(StrEnum):
    SECRET = "secret"  # a password file: UTF-8 text, not empty
    CERT = "cert"  # one certificate, PEM or DER
    CA = "ca"  # one or more CA certificates, PEM or DER
    KEY = "key"  # an unencrypted private key, PEM or DER
    DIR = "dir"  # a directory of certificates (trust_dir)


def _read(path: str) -> bytes | str:
    """The file's bytes, or what is wrong with it."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        return f"{path} is a directory, not a file"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    if len(data) > MAX_FILE_BYTES:
        return f"{path} is larger than {MAX_FILE_BYTES} bytes: not a certificate, key or secret"
    return data


def _certificates(data: bytes) -> list[x509.Certificate]:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)
    return [load_certificate(data)]


def _private_key(path: str, data: bytes) -> str | None:
    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        if pem:
            serialization.load_pem_private_key(data, password=None)
        else:
            serialization.load_der_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError for an encrypted key given no password.
        return (
            f"{path} is an encrypted private key: the agent has no passphrase to open it; "
            "store it unencrypted (chmod 600)"
        )
    except (ValueError, UnsupportedAlgorithm):
        if b"CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
            return f"{path} holds a certificate, not a private key"
        return f"{path} is not a PEM or DER private key"
    return None


def file_problem(path: str, kind: FileKind) -> str | None:
    """What is wrong with ``path`` as a file of ``kind`` (one line), or None when it is usable."""
    if kind is FileKind.DIR:
        if not os.path.isdir(path):
            return (
                f"{path} is not a directory"
                if os.path.exists(path)
                else f"directory {path} does not exist"
            )
        try:
            os.listdir(path)
        except OSError as exc:
            return f"cannot read directory {path}: {exc.strerror or type(exc).__name__}"
        return None
    data = _read(path)
    if isinstance(data, str):
        return data
    if kind is FileKind.SECRET:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return f"{path} is not UTF-8 text"
        if not text.removesuffix("\n").removesuffix("\r"):
            return f"{path} is empty: write the password into it"
        return None
    if kind is FileKind.KEY:
        return _private_key(path, data)
    what = "certificate" if kind is FileKind.CERT else "CA certificate file"
    if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
        return f"{path} holds a private key, not a {what}"
    try:
        certificates = _certificates(data)
    except ValueError:
        return f"{path} is not a PEM or DER {what}"
    if not certificates:
        return f"{path} holds no certificate"
    return None
