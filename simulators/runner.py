"""Run line models in real time (or faster) behind the Modbus and OPC UA simulator servers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType

from pymodbus.constants import ExcCodes

from simulators.modbus_server import ModbusSimServer, Transport
from simulators.model import LineModel, LineParams
from simulators.opcua_server import OpcuaSimServer, SimSecurity
from simulators.scenarios import Fault, Scenario

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
        scenario: Scenario | None = None,
        opcua_security: SimSecurity | None = None,
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
        self._opcua_security = opcua_security
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
        self._scenario = scenario
        self._fault_task: asyncio.Task[None] | None = None
        self.faults = 0  # fault periods started so far
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
                self._opcua = OpcuaSimServer(
                    self.models,
                    self._host,
                    self._requested_opcua_port,
                    security=self._opcua_security,
                )
                self.opcua_endpoint = await self._opcua.start()
        except BaseException:
            await self._shutdown()
            raise
        # Simulated time starts once the servers listen, so a slow OPC UA start does not show
        # up as a burst of parts.
        self._start_monotonic_s = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="simulation")
        self._task.add_done_callback(self._log_crash)
        if self._scenario is not None:
            self._fault_task = asyncio.create_task(
                self._run_scenario(self._scenario), name="simulation-faults"
            )
            self._fault_task.add_done_callback(self._log_crash)
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

    async def fault_on(self, fault: Fault) -> None:
        """Switch ``fault`` on (see :mod:`simulators.scenarios`)."""
        logger.warning("fault on: %s", fault.value)
        self.faults += 1
        match fault:
            case Fault.DROP | Fault.RESTART:
                await self._stop_servers()
                if fault is Fault.RESTART:
                    for model in self.models:
                        model.reset_counters()
                    if self._modbus is not None:
                        self._modbus.update()
            case Fault.STALL:
                if self._modbus is not None:
                    self._modbus.answering.clear()
            case Fault.BUSY | Fault.ILLEGAL:
                if self._modbus is not None:
                    self._modbus.exception = (
                        ExcCodes.DEVICE_BUSY if fault is Fault.BUSY else ExcCodes.ILLEGAL_ADDRESS
                    )
            case Fault.BAD_STATUS:
                if self._opcua is not None:
                    self._opcua.bad_status = True
            case Fault.GARBAGE:
                if self._modbus is not None:
                    self._modbus.garbage = True

    async def fault_off(self, fault: Fault) -> None:
        """Switch ``fault`` off again: servers restarted on their ports, answers normal."""
        logger.warning("fault off: %s", fault.value)
        match fault:
            case Fault.DROP | Fault.RESTART:
                if self._modbus is not None:
                    await self._modbus.start()
                if self._opcua is not None:
                    await self._opcua.start()
            case Fault.STALL:
                if self._modbus is not None:
                    self._modbus.answering.set()
            case Fault.BUSY | Fault.ILLEGAL:
                if self._modbus is not None:
                    self._modbus.exception = None
            case Fault.BAD_STATUS:
                if self._opcua is not None:
                    self._opcua.bad_status = False
            case Fault.GARBAGE:
                if self._modbus is not None:
                    self._modbus.garbage = False

    async def _run_scenario(self, scenario: Scenario) -> None:
        while True:
            await asyncio.sleep(scenario.every_s - scenario.duration_s)
            await self.fault_on(scenario.fault)
            try:
                await asyncio.sleep(scenario.duration_s)
            finally:
                # Also on cancellation: a simulator never exits with a server held down.
                if self._task is not None:
                    await self.fault_off(scenario.fault)

    async def _stop_servers(self) -> None:
        try:
            if self._opcua is not None:
                await self._opcua.stop()
        finally:
            if self._modbus is not None:
                await self._modbus.stop()

    @staticmethod
    def _log_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("simulation task stopped: %r", exc, exc_info=exc)

    async def _shutdown(self) -> None:
        fault_task, self._fault_task = self._fault_task, None
        if fault_task is not None:
            fault_task.cancel()
            await asyncio.wait([fault_task])
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
