"""OPC UA secure channels against the simulator with security on (real asyncua server)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from edge_agent.certs import OpcuaCertificate, make_opcua_certificate
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

# One secure simulator for the module: an asyncua server takes seconds to build its address space.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True, slots=True)
class Certs:
    server: OpcuaCertificate
    client: OpcuaCertificate
    impostor: OpcuaCertificate  # another server certificate with the same ApplicationUri
    trust_dir: Path  # holds the server's certificate
    wrong_trust_dir: Path  # holds only the impostor's


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("opcua-pki")
    server = make_opcua_certificate(
        root / "server",
        application_uri=APPLICATION_URI,
        common_name="simulator",
        hostnames=["localhost", "127.0.0.1"],
    )
    impostor = make_opcua_certificate(
        root / "impostor", application_uri=APPLICATION_URI, common_name="simulator"
    )
    client = make_opcua_certificate(root / "client", hostnames=["localhost"])
    trust, wrong = root / "trusted", root / "wrong"
    trust.mkdir()
    wrong.mkdir()
    shutil.copy(server.cert_file, trust / "plc.der")
    shutil.copy(impostor.cert_file, wrong / "other.der")
    return Certs(server, client, impostor, trust, wrong)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_sim(certs: Certs) -> AsyncIterator[str]:
    security = SimSecurity(certs.server.cert_file, certs.server.key_file)
    async with Simulation(lines=1, modbus_port=None, opcua_security=security) as sim:
        assert sim.opcua_endpoint is not None
        yield sim.opcua_endpoint


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _settled() -> AsyncIterator[None]:
    """The server finishes with a closed connection a few loop turns later: wait for the tasks
    this test started (bounded), so the shared leak guard judges what is really left."""
    before = set(asyncio.all_tasks())
    yield
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=5.0)


def source(endpoint: str, security: OpcuaSecurityConfig) -> OpcuaSource:
    return OpcuaSource(
        OpcuaSourceConfig(
            name="plc1",
            endpoint=endpoint,
            security=security,
            timeout_s=5.0,
            tags=(OpcuaTag(name="state", node="ns=2;s=Line1.State"),),
        )
    )


def security(certs: Certs, **overrides: object) -> OpcuaSecurityConfig:
    values: dict[str, object] = {
        "policy": OpcuaSecurityPolicy.BASIC256SHA256,
        "mode": OpcuaSecurityMode.SIGN_AND_ENCRYPT,
        "cert_file": str(certs.client.cert_file),
        "key_file": str(certs.client.key_file),
        "trust_dir": str(certs.trust_dir),
    }
    values.update(overrides)
    return OpcuaSecurityConfig(**values)  # type: ignore[arg-type]


async def read_state(src: OpcuaSource) -> None:
    await src.connect()
    try:
        (sample,) = await src.read()
        assert sample.quality is Quality.GOOD
        assert isinstance(sample.value, int) and 1 <= sample.value <= 5
    finally:
        await src.close()


@pytest.mark.parametrize(
    "policy",
    [
        OpcuaSecurityPolicy.BASIC256SHA256,
        OpcuaSecurityPolicy.AES128_SHA256_RSAOAEP,
        OpcuaSecurityPolicy.AES256_SHA256_RSAPSS,
    ],
)
async def test_sign_and_encrypt_with_a_trust_dir(
    secure_sim: str, certs: Certs, policy: OpcuaSecurityPolicy
) -> None:
    await read_state(source(secure_sim, security(certs, policy=policy)))


async def test_sign_with_a_pinned_fingerprint_and_a_pinned_file(
    secure_sim: str, certs: Certs
) -> None:
    pinned = security(
        certs,
        mode=OpcuaSecurityMode.SIGN,
        trust_dir=None,
        server_fingerprint=certs.server.fingerprint,
    )
    await read_state(source(secure_sim, pinned))
    by_file = security(certs, trust_dir=None, server_cert_file=str(certs.server.cert_file))
    await read_state(source(secure_sim, by_file))


@pytest.mark.parametrize("pin", ["trust_dir", "fingerprint", "file"])
async def test_an_untrusted_server_certificate_is_refused_clearly(
    secure_sim: str, certs: Certs, pin: str
) -> None:
    wrong = {
        "trust_dir": {"trust_dir": str(certs.wrong_trust_dir)},
        "fingerprint": {"trust_dir": None, "server_fingerprint": certs.impostor.fingerprint},
        "file": {"trust_dir": None, "server_cert_file": str(certs.impostor.cert_file)},
    }[pin]
    src = source(secure_sim, security(certs, **wrong))
    with pytest.raises(NotConnectedError) as caught:
        await src.connect()
    message = str(caught.value)
    assert "plc1" in message
    assert "server certificate not trusted" in message
    assert f"SHA-256 {certs.server.fingerprint}" in message  # what the server presented
    assert not src.connected


async def test_a_server_without_the_policy_says_what_it_offers(certs: Certs) -> None:
    async with Simulation(lines=1, modbus_port=None) as sim:  # security None only
        assert sim.opcua_endpoint is not None
        src = source(sim.opcua_endpoint, security(certs))
        with pytest.raises(NotConnectedError, match=r"no endpoint with Basic256Sha256.*None"):
            await src.connect()


async def test_a_certificate_without_an_application_uri_is_refused(
    secure_sim: str, certs: Certs, tmp_path: Path
) -> None:
    from helpers.tls import issue, make_ca, write_cert, write_key

    cert, key = issue(make_ca("ca"), "no-uri", server=False)
    bad = security(
        certs,
        cert_file=str(write_cert(tmp_path / "c.pem", cert)),
        key_file=str(write_key(tmp_path / "k.pem", key)),
    )
    with pytest.raises(NotConnectedError, match="no ApplicationUri"):
        await source(secure_sim, bad).connect()


async def cli(*args: str) -> tuple[int, str, str]:
    """``edge-agent ARGS`` as a child process (it runs its own event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_shows_the_server_certificate_and_a_files_fingerprint(
    secure_sim: str, certs: Certs
) -> None:
    """What an engineer compares with the PLC's display before pinning or trusting it."""
    code, out, err = await cli("certs", "show-server", secure_sim)
    assert code == 0, err
    assert f"sha256           {certs.server.fingerprint}" in out
    assert f"application uri  {APPLICATION_URI}" in out
    assert "Basic256Sha256/SignAndEncrypt" in out and "Aes256_Sha256_RsaPss/Sign" in out
    assert out.count("sha256 ") == 1  # one certificate for every endpoint
    code, out, err = await cli("certs", "fingerprint", str(certs.server.cert_file))
    assert code == 0, err
    assert f"sha256           {certs.server.fingerprint}" in out
    code, _, err = await cli("certs", "fingerprint", str(certs.server.key_file))
    assert code == 1 and "not a certificate" in err
