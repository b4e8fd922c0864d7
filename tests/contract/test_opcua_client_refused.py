"""A PLC that does not trust the agent's client certificate (yet): the source says so, naming
the certificate, instead of asyncua's ``AssertionError``.

Two real servers refuse it in the two places OPC UA allows: node-opcua at OpenSecureChannel (a
ServiceFault with BadSecurityChecksFailed, which asyncua 2.1 cannot decode there) and asyncua's
own server at CreateSession (BadCertificateUntrusted).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from helpers.node_opcua import node_opcua_server

from edge_agent.certs import (
    OpcuaCertificate,
    fingerprint,
    load_certificate,
    make_opcua_certificate,
    thumbprint,
)
from edge_agent.config.schema import (
    OpcuaSecurityConfig,
    OpcuaSecurityMode,
    OpcuaSecurityPolicy,
    OpcuaSourceConfig,
    OpcuaTag,
)
from edge_agent.errors import NotConnectedError
from edge_agent.model import Quality
from edge_agent.sources.opcua import OpcuaSource
from simulators.opcua_server import APPLICATION_URI, SimSecurity
from simulators.runner import Simulation

# ServerStatus/State: every server has it.
SERVER_STATE = "i=2259"


def source(endpoint: str, client: OpcuaCertificate, server_cert: Path) -> OpcuaSource:
    return OpcuaSource(
        OpcuaSourceConfig(
            name="plc1",
            endpoint=endpoint,
            timeout_s=10.0,
            security=OpcuaSecurityConfig(
                policy=OpcuaSecurityPolicy.BASIC256SHA256,
                mode=OpcuaSecurityMode.SIGN_AND_ENCRYPT,
                cert_file=str(client.cert_file),
                key_file=str(client.key_file),
                server_cert_file=str(server_cert),
            ),
            tags=(OpcuaTag(name="state", node=SERVER_STATE),),
        )
    )


def check_message(message: str, client: OpcuaCertificate, answer: str) -> None:
    cert = load_certificate(client.cert_file.read_bytes())
    assert "plc1" in message
    assert f"the server refused the agent's client certificate ({answer})" in message
    assert str(client.cert_file) in message
    assert f"SHA-256 {fingerprint(cert)}" in message
    assert f"SHA-1 thumbprint {thumbprint(cert)}" in message
    assert "on the PLC" in message and "rejected" in message
    assert "\n" not in message


async def connects(src: OpcuaSource) -> bool:
    try:
        await src.connect()
    except NotConnectedError:
        return False
    try:
        (sample,) = await src.read()
        return sample.quality is Quality.GOOD
    finally:
        await src.close()


async def test_node_opcua_refusing_at_open_secure_channel_is_named(tmp_path: Path) -> None:
    client = make_opcua_certificate(tmp_path / "agent", hostnames=["localhost"])
    async with node_opcua_server(tmp_path / "pki") as plc:
        src = source(plc.endpoint, client, plc.server_cert)
        with pytest.raises(NotConnectedError) as caught:
            await src.connect()
        assert not isinstance(caught.value.__cause__, NotConnectedError)
        check_message(str(caught.value), client, "it answered OpenSecureChannel with a fault")
        assert not src.connected
        # What the message tells the engineer to do works: node-opcua filed the certificate
        # under rejected/ by its thumbprint; moved to trusted/, the next connect succeeds.
        cert = load_certificate(client.cert_file.read_bytes())
        (rejected,) = plc.rejected.glob(f"*{thumbprint(cert)}*")
        plc.trusted.mkdir(parents=True, exist_ok=True)
        shutil.move(rejected, plc.trusted / rejected.name)

        async with asyncio.timeout(60):
            # Each attempt is a connect; the server may take a moment to see the moved file.
            while not await connects(src):  # noqa: ASYNC110 -- no event exists for it
                await asyncio.sleep(0.2)


async def test_asyncua_refusing_at_create_session_is_named(tmp_path: Path) -> None:
    server = make_opcua_certificate(
        tmp_path / "server",
        application_uri=APPLICATION_URI,
        common_name="simulator",
        hostnames=["localhost", "127.0.0.1"],
    )
    client = make_opcua_certificate(tmp_path / "agent", hostnames=["localhost"])
    other = make_opcua_certificate(tmp_path / "other", application_uri="urn:other:client")
    trusted = tmp_path / "trusted-clients"
    trusted.mkdir()
    shutil.copy(other.cert_file, trusted)  # another client's certificate, not the agent's
    security = SimSecurity(server.cert_file, server.key_file, client_trust_dir=trusted)
    async with Simulation(lines=1, modbus_port=None, opcua_security=security) as sim:
        assert sim.opcua_endpoint is not None
        src = source(sim.opcua_endpoint, client, server.cert_file)
        with pytest.raises(NotConnectedError) as caught:
            await src.connect()
        check_message(str(caught.value), client, "BadCertificateUntrusted")
        assert not src.connected
