"""An MQTT subscriber for tests: collects what arrives on a topic filter."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """``async with Subscriber(host, port, "a/#") as sub: msgs = await sub.collect(3, 5.0)``.

    No background task: ``collect`` reads the client's queue itself, so nothing outlives the
    ``async with`` block. ``received`` keeps everything collected so far.
    """

    def __init__(self, host: str, port: int, topic_filter: str, *, qos: int = 1) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.received: list[Received] = []
        self._client = aiomqtt.Client(host, port, timeout=5.0)

    async def __aenter__(self) -> Self:
        async with asyncio.timeout(10.0):
            await self._client.__aenter__()
            await self._client.subscribe(self.topic_filter, qos=self.qos)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async with asyncio.timeout(10.0):
            await self._client.__aexit__(exc_type, exc, tb)

    async def collect(self, n: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until ``n`` messages in total were received; return all of them.

        Raises ``TimeoutError`` (with what did arrive) if they do not come within ``timeout_s``.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.received) < n:
                    msg = await anext(aiter(self._client.messages))
                    self.received.append(
                        Received(
                            topic=str(msg.topic),
                            payload=bytes(msg.payload)
                            if isinstance(msg.payload, bytes | bytearray)
                            else str(msg.payload).encode(),
                            qos=msg.qos,
                            retain=msg.retain,
                        )
                    )
        except TimeoutError:
            got = [(r.topic, r.payload[:80]) for r in self.received]
            raise TimeoutError(f"expected {n} message(s) within {timeout_s} s, got {got}") from None
        return list(self.received)

    async def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> Received:
        """Wait for a message matching ``predicate(received) -> bool``; return it."""
        seen = 0
        async with asyncio.timeout(timeout_s):
            while True:
                for r in self.received[seen:]:
                    if predicate(r):
                        return r
                seen = len(self.received)
                await self.collect(seen + 1, timeout_s)
