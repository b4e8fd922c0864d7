"""The simulators against raw protocol clients on loopback: the documented map is what is served."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from pymodbus.client import AsyncModbusTcpClient

from simulators.modbus_server import UNIT_ID, ModbusSimServer
from simulators.model import LineModel, LineParams
from simulators.opcua_server import NAMESPACE_URI, OpcuaSimServer, node_id
from simulators.runner import Simulation

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10.0
VARIABLES = (
    "State",
    "TotalCount",
    "RejectCount",
    "Running",
    "IdealCycleTime",
    "EnergyWh",
    "EnergyKWh",
    "PowerKW",
    "OrderId",
    "OrderQuantity",
)


# -- raw protocol helpers --------------------------------------------------------------------


@dataclass(frozen=True)
class ModbusLine:
    state: int
    total16: int
    rejects16: int
    total32: int
    ideal_cycle_time_s: float
    running: bool


@asynccontextmanager
async def modbus_client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    # reconnect_delay=0: a test wants a failure, not a client retrying in the background.
    client = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay=0, timeout=2)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            assert await client.connect()
        yield client
    finally:
        client.close()


@asynccontextmanager
async def opcua_client(url: str) -> AsyncIterator[Client]:
    client = Client(url, timeout=5)
    async with asyncio.timeout(TIMEOUT_S):
        await client.connect()
    try:
        yield client
    finally:
        async with asyncio.timeout(TIMEOUT_S):
            await client.disconnect()


async def read_modbus_line(
    client: AsyncModbusTcpClient, index: int, *, input_registers: bool = False
) -> ModbusLine:
    base = 100 * index
    # Registers and coil take two requests: a simulator update may land between them. Read
    # again until the coil is the same before and after the registers (one snapshot).
    for _ in range(20):
        async with asyncio.timeout(TIMEOUT_S):
            first = await client.read_coils(index, count=1, device_id=UNIT_ID)
            if input_registers:
                regs = await client.read_input_registers(base, count=7, device_id=UNIT_ID)
            else:
                regs = await client.read_holding_registers(base, count=7, device_id=UNIT_ID)
            coils = await client.read_coils(index, count=1, device_id=UNIT_ID)
        assert not regs.isError(), regs
        assert not coils.isError() and not first.isError(), coils
        if first.bits[0] == coils.bits[0]:
            break
    r = regs.registers
    return ModbusLine(
        state=r[0],
        total16=r[1],
        rejects16=r[2],
        total32=(r[3] << 16) | r[4],
        ideal_cycle_time_s=struct.unpack(">f", struct.pack(">HH", r[5], r[6]))[0],
        running=coils.bits[0],
    )


async def read_opcua_line(client: Client, index: int) -> dict[str, ua.DataValue]:
    nodes = [client.get_node(node_id(index, name)) for name in VARIABLES]
    async with asyncio.timeout(TIMEOUT_S):
        values = await client.read_attributes(nodes, AttributeIds.Value)
    return dict(zip(VARIABLES, values, strict=True))


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, what: str
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def value_of(data_value: ua.DataValue) -> Any:
    assert data_value.Value is not None
    assert data_value.StatusCode is None or data_value.StatusCode.is_good()
    return data_value.Value.Value


def assert_map_consistent(line: ModbusLine) -> None:
    assert 1 <= line.state <= 5
    assert line.total16 == line.total32 % 65536
    assert line.running == (line.state == 1)
    assert line.rejects16 <= line.total32  # no wrap of the rejects in these tests


def assert_no_other_tasks() -> None:
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leftover, leftover


# -- the servers, driven by hand: exact values ----------------------------------------------


async def test_modbus_register_map_is_as_documented() -> None:
    models = [
        LineModel(1, ideal_cycle_time_s=1.5, initial_count=65_530),
        LineModel(2, ideal_cycle_time_s=0.25, initial_count=2**32 - 3, initial_reject_count=7),
    ]
    server = ModbusSimServer(models)
    port = await server.start()
    try:
        assert port > 0
        async with modbus_client(port) as client:
            for sim_time_s in (0.0, 30.0, 300.0):
                for model in models:
                    model.advance(sim_time_s)
                server.update()
                for index, model in enumerate(models):
                    for input_registers in (False, True):
                        line = await read_modbus_line(
                            client, index, input_registers=input_registers
                        )
                        assert line == ModbusLine(
                            state=model.state_code,
                            total16=model.total_count % 2**16,
                            rejects16=model.reject_count % 2**16,
                            total32=model.total_count % 2**32,
                            ideal_cycle_time_s=model.ideal_cycle_time_s,
                            running=model.running,
                        )
            # Both counters started just below their wrap and have passed it.
            assert models[0].total_count > 65_536
            assert models[1].total_count > 2**32
            # Address 0 is the first line's state code: no off-by-one between the map and
            # the wire (old sequential blocks started at 1).
            async with asyncio.timeout(TIMEOUT_S):
                first = await client.read_holding_registers(0, count=1, device_id=UNIT_ID)
            assert first.registers == [models[0].state_code]
    finally:
        await server.stop()


async def test_modbus_map_is_read_only_and_bounded() -> None:
    server = ModbusSimServer([LineModel(1)])
    port = await server.start()
    try:
        async with modbus_client(port) as client, asyncio.timeout(TIMEOUT_S):
            write = await client.write_register(0, 3, device_id=UNIT_ID)
            assert write.isError()
            coil = await client.write_coil(0, False, device_id=UNIT_ID)
            assert coil.isError()
            unused = await client.read_holding_registers(15, count=85, device_id=UNIT_ID)
            assert unused.registers == [0] * 85
            beyond = await client.read_holding_registers(99, count=2, device_id=UNIT_ID)
            assert beyond.isError()
            state = await client.read_holding_registers(0, count=1, device_id=UNIT_ID)
            assert state.registers == [1]  # the write did not change anything
    finally:
        await server.stop()
    # After stop nothing listens on the port any more.
    async with asyncio.timeout(TIMEOUT_S):
        client = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay=0, timeout=1)
        assert not await client.connect()
        client.close()


async def test_opcua_nodes_are_as_documented() -> None:
    models = [LineModel(1, ideal_cycle_time_s=1.5), LineModel(2, initial_count=2**32 - 2)]
    server = OpcuaSimServer(models)
    url = await server.start()
    try:
        assert url.startswith("opc.tcp://127.0.0.1:")
        assert url.endswith("/")
        async with opcua_client(url) as client:
            async with asyncio.timeout(TIMEOUT_S):
                assert await client.get_namespace_index(NAMESPACE_URI) == 2
            first = await read_opcua_line(client, 0)
            for sim_time_s in (10.0, 100.0):
                for model in models:
                    model.advance(sim_time_s)
                await server.update()
                for index, model in enumerate(models):
                    values = await read_opcua_line(client, index)
                    expected: dict[str, tuple[Any, ua.VariantType]] = {
                        "State": (model.state_code, ua.VariantType.UInt16),
                        "TotalCount": (model.total_count % 2**32, ua.VariantType.UInt32),
                        "RejectCount": (model.reject_count % 2**32, ua.VariantType.UInt32),
                        "Running": (model.running, ua.VariantType.Boolean),
                        "IdealCycleTime": (model.ideal_cycle_time_s, ua.VariantType.Double),
                        "EnergyWh": (int(model.energy_kwh * 1000), ua.VariantType.UInt32),
                        "EnergyKWh": (int(model.energy_kwh * 1000) / 1000, ua.VariantType.Double),
                        "PowerKW": (model.power_kw, ua.VariantType.Double),
                        "OrderId": (f"ORD-{model.order_number:05d}", ua.VariantType.String),
                        "OrderQuantity": (model.params.order_quantity, ua.VariantType.UInt32),
                    }
                    for name, (value, variant_type) in expected.items():
                        data_value = values[name]
                        assert data_value.Value is not None
                        assert data_value.Value.Value == value, name
                        assert data_value.Value.VariantType == variant_type, name
                        assert data_value.SourceTimestamp is not None, name
            assert models[1].total_count > 2**32  # the UInt32 view wrapped
            # A changed value carries a new SourceTimestamp; an unchanged one keeps its own.
            last = await read_opcua_line(client, 0)
            first_total_ts = first["TotalCount"].SourceTimestamp
            last_total_ts = last["TotalCount"].SourceTimestamp
            assert first_total_ts is not None
            assert last_total_ts is not None
            assert last_total_ts > first_total_ts
            assert last["IdealCycleTime"].SourceTimestamp == first["IdealCycleTime"].SourceTimestamp
    finally:
        await server.stop()


# -- the whole simulation in real time ------------------------------------------------------


async def test_simulation_serves_advancing_consistent_values_on_both_protocols() -> None:
    async with Simulation(
        lines=2, seed=1, speed=20.0, update_interval_s=0.05, initial_count=65_500
    ) as sim:
        assert sim.modbus_port is not None
        assert sim.opcua_endpoint is not None
        async with modbus_client(sim.modbus_port) as mb, opcua_client(sim.opcua_endpoint) as opc:
            start = [await read_modbus_line(mb, i) for i in range(2)]
            for line in start:
                assert_map_consistent(line)
                assert line.total32 >= 65_500
                assert line.ideal_cycle_time_s == 1.0

            async def counters_wrapped() -> bool:
                lines = [await read_modbus_line(mb, i) for i in range(2)]
                for line in lines:
                    assert_map_consistent(line)
                return all(line.total32 >= 65_536 and line.total16 < 100 for line in lines)

            # The 32-bit count runs on past 65535 while the 16-bit view wraps to near 0.
            await wait_for(counters_wrapped, what="both lines' 16-bit counters to wrap")

            # OPC UA agrees with Modbus within one update: sandwich an OPC UA read between
            # two Modbus reads (counts only grow). The two servers are refreshed one after the
            # other, not atomically, so either may be one update step ahead: at speed 20 and
            # 50 ms per update that is at most one part (slack 2).
            slack = 2
            for index in range(2):
                for _ in range(5):
                    before = await read_modbus_line(mb, index)
                    values = await read_opcua_line(opc, index)
                    after = await read_modbus_line(mb, index)
                    total = value_of(values["TotalCount"])
                    rejects = value_of(values["RejectCount"])
                    assert before.total32 - slack <= total <= after.total32 + slack
                    assert before.rejects16 - slack <= rejects <= after.rejects16 + slack
                    # No update landed during the sandwich: then every view is the same.
                    if before == after and total == before.total32:
                        assert value_of(values["State"]) == before.state
                        assert value_of(values["Running"]) == before.running
                    assert value_of(values["IdealCycleTime"]) == 1.0
        assert sim.sim_time_s > 0.0
    assert_no_other_tasks()


async def test_simulation_states_change_over_time() -> None:
    # Stops every few simulated seconds on average so a short test sees several states.
    params = LineParams(mean_time_between_microstops_s=3.0, microstop_duration_s=(1.0, 2.0))
    async with Simulation(
        lines=1, seed=3, speed=20.0, update_interval_s=0.05, opcua_port=None, params=params
    ) as sim:
        assert sim.opcua_endpoint is None
        assert sim.modbus_port is not None
        seen: set[int] = set()
        async with modbus_client(sim.modbus_port) as mb:

            async def saw_running_and_stopped() -> bool:
                line = await read_modbus_line(mb, 0)
                assert_map_consistent(line)
                seen.add(line.state)
                return 1 in seen and len(seen) > 1

            await wait_for(saw_running_and_stopped, what="a running and a stopped state")
    assert_no_other_tasks()


async def test_simulation_without_modbus_serves_opcua_only() -> None:
    async with Simulation(lines=1, modbus_port=None, speed=20.0) as sim:
        assert sim.modbus_port is None
        assert sim.opcua_endpoint is not None
        async with opcua_client(sim.opcua_endpoint) as opc:
            first = value_of((await read_opcua_line(opc, 0))["TotalCount"])

            async def advanced() -> bool:
                values = await read_opcua_line(opc, 0)
                return bool(value_of(values["TotalCount"]) > first)

            await wait_for(advanced, what="the OPC UA total count to advance")
    assert_no_other_tasks()


async def test_simulation_models_are_seeded_per_line() -> None:
    async with Simulation(lines=3, seed=10, modbus_port=None, opcua_port=None) as sim:
        assert sim.modbus_port is None
        assert sim.opcua_endpoint is None
        reference = [LineModel(10 + i) for i in range(3)]
        for model, ref in zip(sim.models, reference, strict=True):
            model.advance(1000.0)  # drive them ahead of the clock: same seed, same history
            ref.advance(1000.0)
            assert model.snapshot() == ref.snapshot()
    assert_no_other_tasks()


# -- the console script ---------------------------------------------------------------------


async def test_cli_prints_addresses_serves_and_exits_0_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cli",
        "--lines",
        "1",
        "--speed",
        "10",
        "--modbus-port",
        "0",
        "--opcua-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            modbus_line = (await proc.stdout.readline()).decode()
            opcua_line = (await proc.stdout.readline()).decode()
        kind, address, unit, unit_id = modbus_line.split()
        assert (kind, unit, unit_id) == ("modbus", "unit", "1")
        assert address.startswith("tcp://127.0.0.1:")
        modbus_port = int(address.rsplit(":", 1)[1])
        kind, url = opcua_line.split()
        assert kind == "opcua"
        assert url.startswith("opc.tcp://127.0.0.1:")

        async with modbus_client(modbus_port) as mb:
            assert_map_consistent(await read_modbus_line(mb, 0))
        async with opcua_client(url) as opc:
            values = await read_opcua_line(opc, 0)
            assert 1 <= value_of(values["State"]) <= 5

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_refuses_to_run_nothing() -> None:
    from simulators.cli import main

    assert main(["--no-modbus", "--no-opcua"]) == 2


async def test_power_meter_and_order_registers_and_nodes() -> None:
    """base + 7..14 and the Energy*/Power*/Order* nodes carry the model's meter and order."""
    model = LineModel(1, params=LineParams(order_quantity=50))
    model.advance(600.0)
    energy_kwh = model.energy_kwh
    assert energy_kwh > 0
    server = ModbusSimServer([model])
    port = await server.start()
    try:
        async with modbus_client(port) as client, asyncio.timeout(TIMEOUT_S):
            regs = (await client.read_holding_registers(7, count=8, device_id=UNIT_ID)).registers
    finally:
        await server.stop()
    assert (regs[0] << 16 | regs[1]) == int(energy_kwh * 1000)
    kwh = struct.unpack(">f", struct.pack(">HH", regs[2], regs[3]))[0]
    assert abs(kwh - energy_kwh) <= energy_kwh * 1e-6
    kw = struct.unpack(">f", struct.pack(">HH", regs[4], regs[5]))[0]
    assert kw == model.power_kw
    assert regs[6:8] == [1 + model.good_count // 50, 50]
