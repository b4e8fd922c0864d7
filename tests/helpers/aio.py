"""Async test helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``condition()`` on the event loop until it is true; ``TimeoutError`` after
    ``timeout_s``. For state that offers no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 -- no event exists for such conditions
            await asyncio.sleep(0.01)
