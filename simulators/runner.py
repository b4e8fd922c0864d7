"""Run line models in real time (or faster) behind the Modbus and OPC UA simulator servers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType

from simulators.modbus_server import ModbusSimServer, Transport
from simulators.model import LineModel, LineParams
from simulators.opcua_server import OpcuaSimServer

__all__ = ["Simulation"]

logger = logging.getLogger(__name__)


class Simulation:
    """Async context manager: models plus servers, advanced by one owned task.

    On enter it builds ``lines`` models (line ``i`` seeded with ``seed + i``), starts each server
    whose port is not ``None`` (0 picks a free port) and starts one task that, every
    ``update_interval_s``, advances the models to ``(monotonic time since enter) * speed`` and
    publishes their values to both servers. On exit the task is cancelled and awaited and both
    servers are stopped: nothing is left running.

    After enter, ``modbus_port`` and ``opcua_endpoint`` hold the bound addresses (``None`` for a
    server that was not started) and ``models`` the line models, index ``i`` for line ``i``.

    ``modbus_transport``, ``modbus_serial_port``, ``modbus_parity`` and ``modbus_unit_ids`` pass
    through to
    :class:`~simulators.modbus_server.ModbusSimServer` (RTU over TCP or a serial port, one unit id
    per line); ``modbus`` is the running server after enter.
    """

    def __init__(
        self,
        lines: int = 2,
        seed: int = 1,
        speed: float = 1.0,
        *,
        host: str = "127.0.0.1",
        modbus_port: int | None = 0,
        opcua_port: int | None = 0,
        update_interval_s: float = 0.1,
        initial_count: int = 0,
        ideal_cycle_time_s: float = 1.0,
        params: LineParams | None = None,
        modbus_transport: Transport = "tcp",
        modbus_serial_port: str | None = None,
        modbus_unit_ids: Sequence[int] | None = None,
        modbus_parity: str = "E",
    ) -> None:
        if lines < 1:
            raise ValueError(f"lines must be >= 1, got {lines}")
        if not speed > 0.0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if not update_interval_s > 0.0:
            raise ValueError(f"update_interval_s must be > 0, got {update_interval_s}")
        self._speed = speed
        self._host = host
        self._requested_modbus_port = modbus_port
        self._requested_opcua_port = opcua_port
        self._update_interval_s = update_interval_s
        self._modbus_transport: Transport = modbus_transport
        self._modbus_serial_port = modbus_serial_port
        self._modbus_unit_ids = modbus_unit_ids
        self._modbus_parity = modbus_parity
        self.models: list[LineModel] = [
            LineModel(
                seed + index,
                ideal_cycle_time_s=ideal_cycle_time_s,
                params=params,
                initial_count=initial_count,
            )
            for index in range(lines)
        ]
        self.modbus_port: int | None = None
        self.opcua_endpoint: str | None = None
        self._modbus: ModbusSimServer | None = None
        self._opcua: OpcuaSimServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_monotonic_s = 0.0
        self._updated = asyncio.Event()

    async def __aenter__(self) -> Simulation:
        try:
            if self._requested_modbus_port is not None:
                self._modbus = ModbusSimServer(
                    self.models,
                    self._host,
                    self._requested_modbus_port,
                    transport=self._modbus_transport,
                    serial_port=self._modbus_serial_port,
                    unit_ids=self._modbus_unit_ids,
                    parity=self._modbus_parity,
                )
                port = await self._modbus.start()
                self.modbus_port = port if self._modbus_transport != "rtu" else None
            if self._requested_opcua_port is not None:
                self._opcua = OpcuaSimServer(self.models, self._host, self._requested_opcua_port)
                self.opcua_endpoint = await self._opcua.start()
        except BaseException:
            await self._shutdown()
            raise
        # Simulated time starts once the servers listen, so a slow OPC UA start does not show
        # up as a burst of parts.
        self._start_monotonic_s = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="simulation")
        self._task.add_done_callback(self._log_crash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    @property
    def modbus(self) -> ModbusSimServer | None:
        """The Modbus server, once entered (None when not started)."""
        return self._modbus

    @property
    def sim_time_s(self) -> float:
        """Simulated time the models were last advanced to."""
        return self.models[0].sim_time_s

    async def wait_update(self) -> None:
        """Return after the next time the servers were updated (for tests and tools)."""
        self._updated.clear()
        await self._updated.wait()

    async def step(self) -> None:
        """Advance the models to the current simulated time and publish to both servers."""
        sim_time_s = (time.monotonic() - self._start_monotonic_s) * self._speed
        for index, model in enumerate(self.models):
            before = model.state
            model.advance(max(sim_time_s, model.sim_time_s))
            if model.state is not before:
                logger.info(
                    "line %d: %s -> %s at sim time %.1f s (total %d)",
                    index + 1,
                    before.name.lower(),
                    model.state.name.lower(),
                    sim_time_s,
                    model.total_count,
                )
        if self._modbus is not None:
            self._modbus.update()
        if self._opcua is not None:
            await self._opcua.update()
        self._updated.set()

    async def _run(self) -> None:
        logger.info(
            "simulating %d line(s) at speed %g, updating every %g s",
            len(self.models),
            self._speed,
            self._update_interval_s,
        )
        while True:
            await self.step()
            await asyncio.sleep(self._update_interval_s)

    @staticmethod
    def _log_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("simulation task stopped: %r", exc, exc_info=exc)

    async def _shutdown(self) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                # asyncio.wait, not `await task`: a cancellation of the caller itself must still
                # propagate instead of being mistaken for the task's.
                await asyncio.wait([task])
        finally:
            # Each server stops even if the task or the other server failed to.
            try:
                if self._opcua is not None:
                    await self._opcua.stop()
            finally:
                if self._modbus is not None:
                    await self._modbus.stop()
