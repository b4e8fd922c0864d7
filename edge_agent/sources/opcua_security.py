"""OPC UA secure channel set-up for :mod:`edge_agent.sources.opcua` (asyncua 2.1).

Imported only by ``sources/opcua.py``, so asyncua stays a lazy import.

Contract of :func:`apply_security` (called before ``Client.connect``):

- Policies Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss; modes Sign and
  SignAndEncrypt. The agent presents its application instance certificate (``cert_file``,
  ``key_file``); the client's ApplicationUri is taken from that certificate's subjectAltName, as
  OPC UA requires them to match.
- The server's certificate is never trusted on first use. The endpoints are fetched over an
  unsecured channel (GetEndpoints carries no secret), and the certificate of the endpoint with
  the configured policy and mode must be the pinned file (``server_cert_file``), have the pinned
  SHA-256 fingerprint (``server_fingerprint``), or pass asyncua's certificate validator against
  ``trust_dir`` (trusted certificates or the CAs that issued them; validity period,
  ApplicationUri, key usage, server role): otherwise :class:`NotConnectedError` names the
  certificate's fingerprint and subject and what to do, before any secure channel is opened or
  password sent. The same check is installed as the client's ``certificate_validator``, so
  CreateSession verifies the certificate the server actually signs with (asyncua without a
  validator accepts any). ``trust_dir`` is re-read at every connect: a certificate copied there
  is picked up by the next retry.

The other direction: a PLC that does not (yet) trust the agent's certificate refuses the secure
channel, at OpenSecureChannel (node-opcua, most PLCs: ``BadSecurityChecksFailed``, often as a
ServiceFault that asyncua 2.1 cannot decode there) or at CreateSession / ActivateSession
(``BadCertificate...``). :func:`client_certificate_refused` turns that into one line naming the
agent's certificate (path, SHA-256 fingerprint, SHA-1 thumbprint) and what to do on the PLC.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.uacrypto import CertProperties
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.certs import fingerprint, load_certificate, thumbprint
from edge_agent.config.schema import OpcuaSecurityConfig, OpcuaSecurityMode, OpcuaSecurityPolicy
from edge_agent.errors import NotConnectedError

__all__ = [
    "CERTIFICATE_REFUSED",
    "ServerTrust",
    "apply_security",
    "client_certificate_refused",
    "server_certificates",
]

_log = logging.getLogger(__name__)

_POLICIES: dict[OpcuaSecurityPolicy, type[security_policies.SecurityPolicy]] = {
    OpcuaSecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    OpcuaSecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    OpcuaSecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    OpcuaSecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    OpcuaSecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
# asyncua's validator defaults suit a server checking clients; the agent checks a server.
_VALIDATION = (
    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER
)
_WHY = {
    StatusCodes.BadCertificateUntrusted: "it is not in trust_dir and no CA there issued it",
    StatusCodes.BadCertificateTimeInvalid: "it is expired or not yet valid",
    StatusCodes.BadCertificateUriInvalid: (
        "its subjectAltName does not hold the server's ApplicationUri"
    ),
    StatusCodes.BadCertificateUseNotAllowed: (
        "its key usage or extended key usage does not allow an OPC UA server"
    ),
    StatusCodes.BadCertificateRevoked: "it is revoked",
    StatusCodes.BadCertificateInvalid: "it lacks required extensions (subjectAltName)",
}


# What a server answers when it will not accept the client's certificate (OPC UA Part 4,
# OpenSecureChannel and CreateSession): BadSecurityChecksFailed is what node-opcua and most PLCs
# send for a certificate that is not in their trust list.
CERTIFICATE_REFUSED = frozenset(
    {
        StatusCodes.BadSecurityChecksFailed,
        StatusCodes.BadCertificateInvalid,
        StatusCodes.BadCertificateUntrusted,
        StatusCodes.BadCertificateTimeInvalid,
        StatusCodes.BadCertificateIssuerTimeInvalid,
        StatusCodes.BadCertificateHostNameInvalid,
        StatusCodes.BadCertificateUriInvalid,
        StatusCodes.BadCertificateUseNotAllowed,
        StatusCodes.BadCertificateIssuerUseNotAllowed,
        StatusCodes.BadCertificateRevocationUnknown,
        StatusCodes.BadCertificateIssuerRevocationUnknown,
        StatusCodes.BadCertificateRevoked,
        StatusCodes.BadCertificateIssuerRevoked,
        StatusCodes.BadCertificateChainIncomplete,
        StatusCodes.BadCertificatePolicyCheckFailed,
        StatusCodes.BadNoValidCertificates,
    }
)


def client_certificate_refused(cfg: OpcuaSecurityConfig, where: str, answer: str) -> str:
    """One line: the server refused the agent's certificate (``answer`` says how), which file
    and fingerprints it is, and what to do on the PLC."""
    described = f"cert_file {cfg.cert_file}"
    if cfg.cert_file is not None:
        try:
            cert = load_certificate(Path(cfg.cert_file).read_bytes())
        except (OSError, ValueError):
            pass  # it was readable a moment ago; the path alone still says which one
        else:
            described += (
                f" (SHA-256 {fingerprint(cert)}, SHA-1 thumbprint {thumbprint(cert)}, "
                f"subject '{cert.subject.rfc4514_string()}')"
            )
    return (
        f"{where}: the server refused the agent's client certificate ({answer}); trust "
        f"{described} on the PLC: most servers file a refused certificate under 'rejected' "
        "(node-opcua: PKI/rejected/, named by its thumbprint), move it to 'trusted' "
        "(see docs/install.md, OPC UA security)"
    )


def _read(path: str, what: str, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise NotConnectedError(f"{where}: cannot read {what} {path}: {exc.strerror}") from None


def _describe(cert: x509.Certificate) -> str:
    return f"SHA-256 {fingerprint(cert)}, subject '{cert.subject.rfc4514_string()}'"


def _application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


class ServerTrust:
    """Decides whether a server certificate is the one configured (see the module docstring)."""

    def __init__(self, cfg: OpcuaSecurityConfig, where: str) -> None:
        self._cfg = cfg
        self._where = where
        self._pinned: x509.Certificate | None = None
        self._validator: CertificateValidator | None = None
        # Set when the hook below refused the certificate the server signs its session with:
        # asyncua reports that as BadCertificateUntrusted, like a refusal by the server.
        self.refused: str | None = None

    async def load(self) -> None:
        cfg = self._cfg
        if cfg.server_cert_file is not None:
            data = _read(cfg.server_cert_file, "server_cert_file", self._where)
            try:
                self._pinned = load_certificate(data)
            except ValueError as exc:
                raise NotConnectedError(
                    f"{self._where}: server_cert_file {cfg.server_cert_file} is not a PEM or DER "
                    f"certificate: {exc}"
                ) from None
        if cfg.trust_dir is not None:
            if not Path(cfg.trust_dir).is_dir():  # noqa: ASYNC240 - one local stat per connect
                raise NotConnectedError(f"{self._where}: trust_dir {cfg.trust_dir} is no directory")
            store = TrustStore([Path(cfg.trust_dir)], [])
            try:
                await store.load()
            except (OSError, ValueError) as exc:
                raise NotConnectedError(
                    f"{self._where}: cannot load the certificates in trust_dir {cfg.trust_dir}: "
                    f"{exc}"
                ) from None
            self._validator = CertificateValidator(_VALIDATION, store)

    async def verdict(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> str | None:
        """None when ``cert`` is trusted, else why not."""
        cfg = self._cfg
        if self._pinned is not None:
            if cert != self._pinned:
                return f"it is not the pinned server_cert_file {cfg.server_cert_file}"
            return None
        if cfg.server_fingerprint is not None:
            if fingerprint(cert) != cfg.server_fingerprint:
                return (
                    f"its fingerprint is not the pinned server_fingerprint {cfg.server_fingerprint}"
                )
            return None
        assert self._validator is not None
        try:
            await self._validator.validate(cert, app)
        except ServiceError as exc:
            name = ua.StatusCode(ua.UInt32(exc.code)).name
            return f"{_WHY.get(exc.code, 'asyncua refused it')} ({name})"
        return None

    def _untrusted(self, cert: x509.Certificate, why: str) -> str:
        return (
            f"{self._where}: server certificate not trusted: {why}; the server presented "
            f"{_describe(cert)}. If this is the PLC's certificate, copy it into trust_dir "
            "or pin it (server_cert_file or server_fingerprint)"
        )

    async def check(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        why = await self.verdict(cert, app)
        if why is not None:
            raise NotConnectedError(self._untrusted(cert, why))

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """asyncua's ``certificate_validator`` hook (CreateSession): a ServiceError refuses;
        why is kept in :attr:`refused`."""
        why = await self.verdict(cert, app)
        if why is not None:
            self.refused = self._untrusted(cert, why)
            raise ServiceError(StatusCodes.BadCertificateUntrusted)


async def apply_security(
    client: Client, cfg: OpcuaSecurityConfig, where: str
) -> ServerTrust | None:
    """Configure ``client`` for the secure channel in ``cfg`` (a no-op returning ``None`` for
    policy None); returns the check installed as the client's ``certificate_validator``.

    Opens and closes one unsecured connection to read the endpoints. Raises
    :class:`NotConnectedError` when a file cannot be used, the server offers no endpoint with
    this policy and mode, or its certificate is not trusted; asyncua's ``UaError`` and
    ``OSError`` pass through (the caller reports them as connection failures). Call inside the
    connect deadline.
    """
    if cfg.policy is OpcuaSecurityPolicy.NONE:
        return None
    assert cfg.cert_file is not None and cfg.key_file is not None  # the loader requires them
    policy = _POLICIES[cfg.policy]
    mode = _MODES[cfg.mode]
    cert_data = _read(cfg.cert_file, "cert_file", where)
    key_data = _read(cfg.key_file, "key_file", where)
    try:
        own = load_certificate(cert_data)
    except ValueError as exc:
        raise NotConnectedError(
            f"{where}: cert_file {cfg.cert_file} is not a PEM or DER certificate: {exc}"
        ) from None
    uri = _application_uri(own)
    if uri is None:
        raise NotConnectedError(
            f"{where}: cert_file {cfg.cert_file} has no ApplicationUri (a URI in its "
            "subjectAltName); create one with: edge-agent certs opcua --out DIR"
        )
    client.application_uri = uri
    trust = ServerTrust(cfg, where)
    await trust.load()

    endpoints = await client.connect_and_get_server_endpoints()
    matching = [
        e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode
    ]
    if not matching:
        offered = sorted(
            {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
        )
        raise NotConnectedError(
            f"{where}: the server offers no endpoint with {cfg.policy.value}/{cfg.mode.value}; "
            f"it offers: {', '.join(offered) or 'nothing'}"
        )
    endpoint = matching[0]
    try:
        server_cert = x509.load_der_x509_certificate(_first_der(endpoint.ServerCertificate))
    except ValueError as exc:
        raise NotConnectedError(f"{where}: the server's certificate is unreadable: {exc}") from None
    await trust.check(server_cert, endpoint.Server)
    client.certificate_validator = trust

    key_pem = _key_pem(key_data, cfg.key_file, where)
    try:
        await client.set_security(
            policy,
            CertProperties(own.public_bytes(serialization.Encoding.DER), extension="der"),
            CertProperties(key_pem, extension="pem"),
            server_certificate=CertProperties(
                server_cert.public_bytes(serialization.Encoding.DER), extension="der"
            ),
            mode=mode,
        )
    except (ValueError, TypeError, UaError) as exc:
        raise NotConnectedError(f"{where}: cannot use cert_file/key_file: {exc}") from None
    _log.debug("%s: %s/%s, server %s", where, cfg.policy, cfg.mode, _describe(server_cert))
    return trust


async def server_certificates(
    endpoint: str, timeout_s: float
) -> list[tuple[x509.Certificate, list[str]]]:
    """The certificates a server presents in its endpoints (GetEndpoints, an unsecured request
    that carries no secret), each with the ``Policy/Mode`` pairs it is used for. Raises
    ``UaError``, ``OSError`` or ``TimeoutError``; ``ValueError`` for an unreadable certificate.
    """
    client = Client(endpoint, timeout=timeout_s)
    async with asyncio.timeout(timeout_s):
        endpoints = await client.connect_and_get_server_endpoints()
    found: dict[bytes, tuple[x509.Certificate, list[str]]] = {}
    for e in endpoints:
        if not e.ServerCertificate:
            continue
        der = _first_der(e.ServerCertificate)
        _, uses = found.setdefault(der, (x509.load_der_x509_certificate(der), []))
        uses.append(f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}")
    return list(found.values())


def _key_pem(data: bytes, path: str, where: str) -> bytes:
    """The private key as unencrypted PEM, whatever form the file has."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise NotConnectedError(
            f"{where}: key_file {path} is not an unencrypted PEM or DER private key: {exc}"
        ) from None
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _first_der(data: bytes | None) -> bytes:
    """The first certificate of a DER chain (a server may send its chain concatenated)."""
    if not data:
        raise ValueError("the endpoint carries no certificate")
    # A DER SEQUENCE: 0x30, then the length (short form, or 0x8N and N length bytes).
    if data[0] != 0x30 or len(data) < 2:
        raise ValueError("not DER")
    if data[1] < 0x80:
        return data[: 2 + data[1]]
    count = data[1] & 0x7F
    length = int.from_bytes(data[2 : 2 + count], "big")
    return data[: 2 + count + length]
