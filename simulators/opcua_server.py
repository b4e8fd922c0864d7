"""An OPC UA server presenting :class:`~simulators.model.LineModel` values as a PLC would.

Address space: namespace ``urn:edge-agent:simulator`` (index 2), one object per line under
Objects, and for line index ``i`` these variables (string node ids, ``n = i + 1``):

=========================  ========  ====================================
node id                    type      value
=========================  ========  ====================================
ns=2;s=Line{n}.State       UInt16    state code (1 running … 5 changeover)
ns=2;s=Line{n}.TotalCount  UInt32    total count modulo 2**32
ns=2;s=Line{n}.RejectCount UInt32    reject count modulo 2**32
ns=2;s=Line{n}.Running     Boolean   true while running
ns=2;s=Line{n}.IdealCycleTime Double ideal cycle time in seconds
ns=2;s=Line{n}.EnergyWh    UInt32    power meter: active energy in Wh modulo 2**32
ns=2;s=Line{n}.EnergyKWh   Double    power meter: active energy in kWh
ns=2;s=Line{n}.PowerKW     Double    power meter: active power in kW
ns=2;s=Line{n}.OrderId     String    production order id, e.g. "ORD-00001"
ns=2;s=Line{n}.OrderQuantity UInt32  production order quantity (good parts)
=========================  ========  ====================================

Security: None and anonymous sessions by default. With ``security`` (:class:`SimSecurity`) the
server offers only Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss endpoints, in
Sign and SignAndEncrypt modes, with that certificate (ApplicationUri
``urn:edge-agent:simulator:server``); anonymous sessions are still accepted. Client
certificates are checked only when ``client_trust_dir`` is set: then CreateSession refuses one that
is not in that directory (``BadCertificateUntrusted``), the directory being read at start.

A value is written only when it changes, with a SourceTimestamp of the moment the server saw the
change, the way a PLC stamps its tags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uatypes import UInt32

from simulators.model import LineModel

__all__ = ["APPLICATION_URI", "NAMESPACE_URI", "OpcuaSimServer", "SimSecurity", "node_id"]

logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:edge-agent:simulator"
# Not the namespace URI: the ApplicationUri is namespace 1 of every server.
APPLICATION_URI = "urn:edge-agent:simulator:server"

_SECURE_POLICIES = [
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
]


@dataclass(frozen=True, slots=True)
class SimSecurity:
    """The server's application instance certificate (DER or PEM) and its PEM private key; make
    them with :func:`edge_agent.certs.make_opcua_certificate` and ``APPLICATION_URI``."""

    cert_file: Path
    key_file: Path
    client_trust_dir: Path | None = None  # trusted client certificates; None: trust any


_VARIABLES: tuple[tuple[str, ua.VariantType], ...] = (
    ("State", ua.VariantType.UInt16),
    ("TotalCount", ua.VariantType.UInt32),
    ("RejectCount", ua.VariantType.UInt32),
    ("Running", ua.VariantType.Boolean),
    ("IdealCycleTime", ua.VariantType.Double),
    ("EnergyWh", ua.VariantType.UInt32),
    ("EnergyKWh", ua.VariantType.Double),
    ("PowerKW", ua.VariantType.Double),
    ("OrderId", ua.VariantType.String),
    ("OrderQuantity", ua.VariantType.UInt32),
)


def node_id(line_index: int, variable: str) -> str:
    """The string form of a variable's node id, e.g. ``ns=2;s=Line1.State`` for index 0."""
    return f"ns=2;s=Line{line_index + 1}.{variable}"


def _values(model: LineModel) -> dict[str, Any]:
    return {
        "State": model.state_code,
        "TotalCount": model.total_count % 2**32,
        "RejectCount": model.reject_count % 2**32,
        "Running": model.running,
        "IdealCycleTime": model.ideal_cycle_time_s,
        # Rounded to the Wh, so a value is written about once per Wh, not on every update.
        "EnergyWh": int(model.energy_kwh * 1000.0) % 2**32,
        "EnergyKWh": int(model.energy_kwh * 1000.0) / 1000.0,
        "PowerKW": model.power_kw,
        "OrderId": f"ORD-{model.order_number:05d}",
        "OrderQuantity": model.params.order_quantity,
    }


@dataclass(slots=True)
class _Variable:
    line_index: int
    name: str
    variant_type: ua.VariantType
    node_id: ua.NodeId
    last_value: Any = None


class OpcuaSimServer:
    """Serves the models' values over OPC UA; call :meth:`update` to publish new values."""

    def __init__(
        self,
        models: Sequence[LineModel],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        security: SimSecurity | None = None,
    ) -> None:
        if not models:
            raise ValueError("at least one line model is needed")
        self._models = list(models)
        self._host = host
        self._requested_port = port
        self._security = security
        self._server: Server | None = None
        self._variables: list[_Variable] = []
        self._endpoint: str | None = None
        self._port: int | None = None
        # Fault injection (simulators.scenarios): serve every value with this bad status.
        self.bad_status: bool = False
        self._bad_served = False

    @property
    def endpoint(self) -> str | None:
        """``opc.tcp://HOST:PORT/`` once started, else ``None``."""
        return self._endpoint

    async def start(self) -> str:
        """Build the address space, start listening and return the endpoint URL.

        With ``port`` 0 a free port is chosen; the returned URL carries the bound port.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        asyncua_logger = logging.getLogger("asyncua")
        if asyncua_logger.level == logging.NOTSET:
            # asyncua logs every session and request at INFO; a simulator only needs its
            # warnings. A level configured by the caller is left alone.
            asyncua_logger.setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_server_name("edge-agent line simulator")
        if self._security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.set_application_uri(APPLICATION_URI)
            server.set_security_policy(_SECURE_POLICIES)
            cert = self._security.cert_file.read_bytes()
            await server.load_certificate(cert, "pem" if cert.lstrip()[:1] == b"-" else "der")
            await server.load_private_key(self._security.key_file.read_bytes(), format="pem")
            if self._security.client_trust_dir is not None:
                store = TrustStore([self._security.client_trust_dir], [])
                await store.load()
                options = (
                    CertificateValidatorOptions.TRUSTED_VALIDATION
                    | CertificateValidatorOptions.PEER_CLIENT
                )
                server.set_certificate_validator(CertificateValidator(options, store))
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        # After a restart the same port again, so that clients find the PLC where it was.
        port = self._port if self._port is not None else self._requested_port
        server.set_endpoint(f"opc.tcp://{self._host}:{port}/")
        self._variables = []
        namespace_index = await server.register_namespace(NAMESPACE_URI)
        if namespace_index != 2:
            # The node ids are a contract; a changed index would silently break every client.
            raise RuntimeError(f"namespace {NAMESPACE_URI} got index {namespace_index}, not 2")
        await self._build_address_space(server, namespace_index)
        await server.start()
        # With port 0 the endpoint descriptions still say port 0; that is harmless because the
        # server rewrites the URLs it advertises to the one the client asked for
        # (match_discovery_endpoint_url, on by default).
        port = self._bound_port(server)
        self._port = port
        self._server = server
        self._endpoint = f"opc.tcp://{self._host}:{port}/"
        await self.update()
        logger.info("opcua simulator listening on %s", self._endpoint)
        return self._endpoint

    async def stop(self) -> None:
        """Stop the server and close its sessions. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.stop()
        # asyncua keeps a session with subscriptions after its connection closed, for the client
        # to reactivate (Part 4 §6.7), and Server.stop() leaves such sessions' tasks running. A
        # PLC that stops loses its sessions: close them. (No public API lists them.)
        for session in list(server.iserver._external_sessions.values()):
            await session.close_session()
        logger.info("opcua simulator on %s stopped", self._endpoint)

    async def update(self) -> None:
        """Write every value that changed since the last update."""
        server = self._server
        if server is None:
            return
        now = ua.DateTime.now(UTC)
        current = [_values(model) for model in self._models]
        if self.bad_status != self._bad_served:
            self._bad_served = self.bad_status
            for variable in self._variables:
                variable.last_value = None  # rewrite everything with the new status
        status = ua.StatusCode(UInt32(StatusCodes.BadDeviceFailure if self.bad_status else 0))
        for variable in self._variables:
            value = current[variable.line_index][variable.name]
            if value == variable.last_value:
                continue
            data_value = ua.DataValue(
                ua.Variant(value, variable.variant_type),
                StatusCode=status,
                SourceTimestamp=now,
                ServerTimestamp=now,
            )
            await server.write_attribute_value(variable.node_id, data_value)
            variable.last_value = value

    async def _build_address_space(self, server: Server, namespace_index: int) -> None:
        objects = server.nodes.objects
        for line_index, model in enumerate(self._models):
            line_name = f"Line{line_index + 1}"
            line_node = await objects.add_object(
                ua.NodeId(ua.String(line_name), ua.Int16(namespace_index)),
                ua.QualifiedName(line_name, namespace_index),
            )
            initial = _values(model)
            for name, variant_type in _VARIABLES:
                nid = ua.NodeId(ua.String(f"{line_name}.{name}"), ua.Int16(namespace_index))
                await line_node.add_variable(
                    nid,
                    ua.QualifiedName(name, namespace_index),
                    ua.Variant(initial[name], variant_type),
                )
                self._variables.append(_Variable(line_index, name, variant_type, nid))

    @staticmethod
    def _bound_port(server: Server) -> int:
        assert server.bserver is not None
        return int(server.bserver.port)
