"""What the agent's HTTP listeners (``/metrics``, the operator page) share: binding an aiohttp
application with the failure named in the config's words, and the loopback test for warnings.

aiohttp is imported by the caller's ``run()`` only (an agent with both off does not pay for it);
this module takes the runner it built.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS


@contextlib.asynccontextmanager
async def listening(
    runner: web.AppRunner,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    *,
    what: str,
    keys: str,
    error: type[Exception],
) -> AsyncIterator[int]:
    """Set ``runner`` up, listen on ``host``:``port`` (0: a free port) and yield the port bound;
    clean the runner up on exit. A bind failure raises ``error``: ``what`` (``metrics``), the
    config ``keys`` (``prometheus.host, prometheus.port``) and the errno's own words."""
    from aiohttp import web  # noqa: PLC0415

    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            # asyncio words it "error while attempting to bind on address ...": the errno's own
            # text says it plainly.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise error(f"{what}: cannot listen on {host}:{port} ({keys}): {reason}") from exc
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
