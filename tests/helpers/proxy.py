"""A TCP proxy for fault injection between the agent and a broker or a PLC.

``async with Proxy(host, port) as p:`` listens on 127.0.0.1 and a free port (``p.port``) and
forwards every connection to ``host:port``. While it runs:

- ``p.latency_s = 0.5``: every chunk is delayed (in order) before it is forwarded;
- ``p.partition("hold")``: traffic stops in both directions but connections stay open (a
  network that silently loses everything; bytes are held and flow again after ``heal()``);
- ``p.partition("drop")``: the same, but the bytes are discarded;
- ``p.cut()``: every open connection is closed at once (new ones are accepted);
- ``p.refuse = True``: new connections are closed as soon as they are accepted;
- ``p.close_after_s = 1.0``: every new connection is closed that long after it was accepted (a
  peer that drops each link shortly after it came up).

Everything it starts is stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Literal, Self


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.latency_s = 0.0
        self.refuse = False
        self.close_after_s: float | None = None
        self.connections = 0  # accepted so far
        self.accepted_at: list[float] = []  # loop time of each accept
        self._mode: Literal["open", "hold", "drop"] = "open"
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        if pipes:
            await asyncio.wait(pipes)
        if self._server is not None:
            await self._server.wait_closed()

    def partition(self, mode: Literal["hold", "drop"] = "hold") -> None:
        self._mode = mode
        if mode == "hold":
            self._flowing.clear()

    def heal(self) -> None:
        self._mode = "open"
        self._flowing.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.accepted_at.append(asyncio.get_running_loop().time())
        if self.refuse:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(
                pipes, timeout=self.close_after_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.wait(pipes)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                if self._mode == "drop":
                    continue
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
