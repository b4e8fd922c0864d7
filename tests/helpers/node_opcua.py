"""A node-opcua server (``scripts/node-opcua/server.mjs``) that trusts only the client
certificates in its PKI's ``trusted/certs/``: an untrusted one is refused at OpenSecureChannel and
filed under ``rejected/``, as node-opcua (and many PLCs) do. ``scripts/test`` installs it with
``npm ci``; a test that needs it fails (never skips) when it is missing."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.net import free_port

TOOL_DIR = Path(__file__).resolve().parents[2] / "scripts" / "node-opcua"
INSTALL_HINT = "run ./scripts/test, or: npm ci --ignore-scripts --prefix scripts/node-opcua"


@dataclass(frozen=True, slots=True)
class NodeOpcua:
    endpoint: str
    pki: Path

    @property
    def server_cert(self) -> Path:
        """The server's own certificate (PEM), for the agent to pin."""
        return self.pki / "own" / "certs" / "certificate.pem"

    @property
    def rejected(self) -> Path:
        return self.pki / "rejected"

    @property
    def trusted(self) -> Path:
        return self.pki / "trusted" / "certs"


@asynccontextmanager
async def node_opcua_server(
    pki: Path, *, start_timeout_s: float = 90.0
) -> AsyncIterator[NodeOpcua]:
    """Start the server on a free port with its PKI in ``pki``; stop it on exit."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: the node-opcua server needs it ({INSTALL_HINT})")
    if not (TOOL_DIR / "node_modules" / "node-opcua-server").is_dir():
        pytest.fail(f"the node-opcua server is not installed ({INSTALL_HINT})")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(TOOL_DIR / "server.mjs"),
        str(port),
        str(pki),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(start_timeout_s):
            while True:
                line = await proc.stdout.readline()
                assert line, f"node-opcua server exited: {b''.join(seen).decode()[-3000:]}"
                seen.append(line)
                if line.startswith(b"listening "):
                    break
        # Keep reading its output so that it never blocks on a full pipe.
        drain = asyncio.create_task(proc.stdout.read())
        try:
            yield NodeOpcua(f"opc.tcp://127.0.0.1:{port}/", pki)
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
