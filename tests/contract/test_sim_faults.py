"""The simulators' fault scenarios, seen through the agent's real sources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge_agent.config.schema import ModbusSourceConfig, ModbusTag, OpcuaSourceConfig, OpcuaTag
from edge_agent.errors import NotConnectedError, SourceError
from edge_agent.model import Quality
from edge_agent.sources.modbus import ModbusSource
from edge_agent.sources.opcua import OpcuaSource
from simulators.runner import Simulation
from simulators.scenarios import Fault, Scenario


def modbus(port: int) -> ModbusSource:
    return ModbusSource(
        ModbusSourceConfig(
            name="plc",
            host="127.0.0.1",
            port=port,
            timeout_s=0.5,
            tags=(ModbusTag(name="state", address=0), ModbusTag(name="total", address=1)),
        )
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=1, seed=2, speed=50.0, opcua_port=None) as s:
        yield s


async def test_busy_fails_a_poll_but_keeps_the_connection(sim: Simulation) -> None:
    assert sim.modbus_port is not None
    source = modbus(sim.modbus_port)
    await source.connect()
    try:
        await sim.fault_on(Fault.BUSY)
        with pytest.raises(SourceError, match="busy") as info:
            await source.read()
        assert not isinstance(info.value, NotConnectedError)
        assert source.connected
        await sim.fault_off(Fault.BUSY)
        assert all(s.quality is Quality.GOOD for s in await source.read())
    finally:
        await source.close()


async def test_illegal_address_makes_the_tags_bad_not_the_source(sim: Simulation) -> None:
    assert sim.modbus_port is not None
    source = modbus(sim.modbus_port)
    await source.connect()
    try:
        await sim.fault_on(Fault.ILLEGAL)
        samples = await source.read()
        assert [s.quality for s in samples] == [Quality.BAD, Quality.BAD]
        assert source.connected
    finally:
        await sim.fault_off(Fault.ILLEGAL)
        await source.close()


async def test_stall_is_a_timeout_that_asks_for_a_reconnect(sim: Simulation) -> None:
    assert sim.modbus_port is not None
    source = modbus(sim.modbus_port)
    await source.connect()
    try:
        await sim.fault_on(Fault.STALL)
        with pytest.raises(NotConnectedError, match=r"(?i)no (valid )?answer"):
            await source.read()
    finally:
        await sim.fault_off(Fault.STALL)
        await source.close()


async def test_garbage_answers_ask_for_a_reconnect_and_then_read_again(sim: Simulation) -> None:
    # Noise instead of Modbus frames must never come back as values: the source gives up on
    # the connection (the stream cannot be trusted) and reads normally once the line is clean.
    assert sim.modbus_port is not None
    source = modbus(sim.modbus_port)
    await source.connect()
    try:
        await sim.fault_on(Fault.GARBAGE)
        with pytest.raises(NotConnectedError):
            await source.read()
        assert not source.connected
        await sim.fault_off(Fault.GARBAGE)
        await source.connect()
        samples = await source.read()
        assert [s.quality for s in samples] == [Quality.GOOD, Quality.GOOD]
        assert samples[0].value == sim.models[0].state_code
    finally:
        await sim.fault_off(Fault.GARBAGE)
        await source.close()


async def test_restart_drops_connections_and_resets_the_counters(sim: Simulation) -> None:
    assert sim.modbus_port is not None
    source = modbus(sim.modbus_port)
    await source.connect()
    try:
        await sim.wait_update()
        while sim.models[0].total_count < 20:
            await sim.wait_update()
        before = {s.tag: s.value for s in await source.read()}
        await sim.fault_on(Fault.RESTART)
        with pytest.raises(NotConnectedError):
            await source.read()
        with pytest.raises(NotConnectedError, match="refused"):
            await source.connect()
        await sim.fault_off(Fault.RESTART)
        await source.connect()  # the same port again
        after = {s.tag: s.value for s in await source.read()}
        assert isinstance(before["total"], int) and isinstance(after["total"], int)
        assert after["total"] < before["total"]
    finally:
        await source.close()


async def test_opcua_bad_status_is_bad_quality_per_tag() -> None:
    async with Simulation(lines=1, seed=2, speed=10.0, modbus_port=None) as sim:
        assert sim.opcua_endpoint is not None
        source = OpcuaSource(
            OpcuaSourceConfig(
                name="plc",
                endpoint=sim.opcua_endpoint,
                timeout_s=2.0,
                tags=(OpcuaTag(name="total", node="ns=2;s=Line1.TotalCount"),),
            )
        )
        await source.connect()
        try:
            assert (await source.read())[0].quality is Quality.GOOD
            await sim.fault_on(Fault.BAD_STATUS)
            await sim.wait_update()
            await sim.wait_update()
            assert (await source.read())[0].quality is Quality.BAD
            await sim.fault_off(Fault.BAD_STATUS)
            await sim.wait_update()
            await sim.wait_update()
            assert (await source.read())[0].quality is Quality.GOOD
        finally:
            await source.close()


async def test_a_scenario_repeats_its_fault() -> None:
    scenario = Scenario(fault=Fault.BUSY, every_s=0.3, duration_s=0.1)
    async with Simulation(lines=1, seed=2, opcua_port=None, scenario=scenario) as sim:
        async with asyncio.timeout(10):
            while sim.faults < 2:
                await sim.wait_update()


def test_a_scenario_needs_a_pause_between_faults() -> None:
    with pytest.raises(ValueError, match="every_s > duration_s"):
        Scenario(fault=Fault.DROP, every_s=5, duration_s=5)
