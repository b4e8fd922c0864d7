"""ModbusSource over RTU: a serial line (through a ``socat`` pty pair) and RTU frames over TCP.

The simulator plays a shared RS-485 line: one device per line model, each with its own unit id,
silent for any other unit id as real devices are. The models are not advanced, so every value
read is known exactly.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest

from edge_agent.config.schema import (
    DataType,
    ModbusSourceConfig,
    ModbusTable,
    ModbusTag,
    ModbusTransport,
    Parity,
    SerialConfig,
)
from edge_agent.errors import NotConnectedError
from edge_agent.model import Quality
from edge_agent.sources.modbus import ModbusSource
from simulators.modbus_server import ModbusSimServer
from simulators.model import LineModel

pytest.importorskip("serial", reason="pyserial (the 'rtu' extra) is needed for Modbus RTU")

TIMEOUT_S = 0.5
# Two meters on one line: unit 1 counts 1234 parts, unit 2 counts 50000.
COUNTS = {1: 1234, 2: 50_000}
PTY = re.compile(rb"PTY is (\S+)")


@pytest.fixture
def serial_pair() -> Iterator[tuple[str, str]]:
    """Two connected pseudo-terminals, like the two ends of an RS-485 cable."""
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat not found: it makes the virtual serial pair (apt-get install socat)")
    process = subprocess.Popen(
        [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        ports: list[str] = []
        # socat reports each pty on its own line before it starts transferring.
        while len(ports) < 2:
            line = process.stderr.readline()
            if not line:
                pytest.fail(f"socat exited ({process.wait()}) before opening two ptys")
            if match := PTY.search(line):
                ports.append(match[1].decode())
        yield ports[0], ports[1]
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def models() -> list[LineModel]:
    return [LineModel(seed, initial_count=count) for seed, count in enumerate(COUNTS.values())]


def tags(*units: int) -> tuple[ModbusTag, ...]:
    """Per unit: the state, total (uint16) and total (uint32) registers and the running coil."""
    return tuple(
        tag
        for unit in units
        for tag in (
            ModbusTag(name=f"state{unit}", address=0, unit_id=unit),
            ModbusTag(name=f"total{unit}", address=1, unit_id=unit),
            ModbusTag(name=f"total32_{unit}", address=3, type=DataType.UINT32, unit_id=unit),
            ModbusTag(
                name=f"running{unit}",
                table=ModbusTable.COIL,
                type=DataType.BOOL,
                address=0,
                unit_id=unit,
            ),
        )
    )


def rtu_config(port: str, *units: int, gap_s: float = 0.0) -> ModbusSourceConfig:
    return ModbusSourceConfig(
        name="meters",
        transport=ModbusTransport.RTU,
        serial=SerialConfig(port=port, baudrate=9600, parity=Parity.NONE),
        timeout_s=TIMEOUT_S,
        inter_request_gap_s=gap_s,
        tags=tags(*units),
    )


@pytest.fixture
async def serial_line(serial_pair: tuple[str, str]) -> AsyncIterator[tuple[str, ModbusSimServer]]:
    """The simulator on one end of the pair, units 1 and 2; yields the other end's path."""
    agent_end, device_end = serial_pair
    server = ModbusSimServer(
        models(),
        transport="rtu",
        serial_port=device_end,
        parity="N",
        baudrate=9600,
        unit_ids=[1, 2],
    )
    await server.start()
    try:
        yield agent_end, server
    finally:
        await server.stop()


@pytest.fixture
async def rtu_over_tcp() -> AsyncIterator[ModbusSimServer]:
    server = ModbusSimServer(models(), transport="rtu_over_tcp", unit_ids=[1, 2])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def values(samples: list) -> dict[str, object]:  # type: ignore[type-arg]
    return {s.tag: s.value for s in samples if s.quality is Quality.GOOD}


def expected(*units: int) -> dict[str, object]:
    model = dict(zip(COUNTS, models(), strict=True))
    return {
        key: value
        for unit in units
        for key, value in {
            f"state{unit}": model[unit].state_code,
            f"total{unit}": COUNTS[unit] % 65536,
            f"total32_{unit}": COUNTS[unit],
            f"running{unit}": model[unit].running,
        }.items()
    }


async def test_serial_line_shared_by_two_units(serial_line: tuple[str, ModbusSimServer]) -> None:
    port, server = serial_line
    source = ModbusSource(rtu_config(port, 1, 2))
    await source.connect()
    try:
        samples = await source.read()
        assert values(samples) == expected(1, 2)
        assert len(samples) == 8
        # One coalesced request per unit and table: 2 units × (holding, coil).
        assert source.requests_per_scan == 4
        assert {unit for _, unit in server.recent_requests} == {1, 2}
    finally:
        await source.close()


async def test_a_silent_unit_costs_only_its_own_tags(
    serial_line: tuple[str, ModbusSimServer], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = serial_line
    source = ModbusSource(rtu_config(port, 1, 2, 3))  # no device answers unit 3
    await source.connect()
    try:
        for _ in range(2):  # the line stays usable after the silence
            samples = await source.read()
            assert values(samples) == expected(1, 2)
            bad = {s.tag for s in samples if s.quality is Quality.BAD}
            assert bad == {"state3", "total3", "total32_3", "running3"}
            assert source.connected
    finally:
        await source.close()
    # Silence, not an exception response: the request timed out.
    assert "holding 0..4 on unit 3 got no answer" in caplog.text


async def test_a_line_where_nobody_answers_is_not_connected(
    serial_line: tuple[str, ModbusSimServer],
) -> None:
    port, _ = serial_line
    source = ModbusSource(rtu_config(port, 7))
    await source.connect()
    try:
        with pytest.raises(NotConnectedError, match="no device answered on serial port"):
            await source.read()
        assert not source.connected
    finally:
        await source.close()


async def test_inter_request_gap_keeps_the_line_quiet(
    serial_line: tuple[str, ModbusSimServer],
) -> None:
    port, server = serial_line
    gap_s = 0.05
    source = ModbusSource(rtu_config(port, 1, 2, gap_s=gap_s))
    await source.connect()
    try:
        await source.read()
        await source.read()  # the gap also holds from one scan to the next
    finally:
        await source.close()
    times = [t for t, _ in server.recent_requests]
    assert len(times) == 8
    # A request reaches the device only after the previous answer left it and the gap passed;
    # 1 ms of slack for the event loop's clock resolution.
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= gap_s - 0.001, gaps


async def test_missing_serial_port_is_reported() -> None:
    source = ModbusSource(rtu_config("/dev/edge-agent-no-such-tty", 1))
    with pytest.raises(NotConnectedError, match="cannot open serial port /dev/edge-agent-no-such"):
        await source.connect()
    assert not source.connected


async def test_a_second_open_of_the_same_port_is_refused(
    serial_line: tuple[str, ModbusSimServer],
) -> None:
    # Why the loader allows one source per serial port: the port is opened exclusively.
    port, _ = serial_line
    first = ModbusSource(rtu_config(port, 1))
    second = ModbusSource(replace(rtu_config(port, 2), name="other"))
    await first.connect()
    try:
        with pytest.raises(NotConnectedError, match="cannot open serial port"):
            await second.connect()
    finally:
        await second.close()
        await first.close()


async def test_rtu_over_tcp_shared_by_two_units(rtu_over_tcp: ModbusSimServer) -> None:
    assert rtu_over_tcp.port is not None
    cfg = ModbusSourceConfig(
        name="gateway",
        transport=ModbusTransport.RTU_OVER_TCP,
        host="127.0.0.1",
        port=rtu_over_tcp.port,
        timeout_s=TIMEOUT_S,
        tags=tags(1, 2, 3),
    )
    source = ModbusSource(cfg)
    await source.connect()
    try:
        samples = await source.read()
        assert values(samples) == expected(1, 2)
        assert {s.tag for s in samples if s.quality is Quality.BAD} == {
            "state3",
            "total3",
            "total32_3",
            "running3",
        }
    finally:
        await source.close()


async def test_rtu_over_tcp_is_not_modbus_tcp(rtu_over_tcp: ModbusSimServer) -> None:
    # The framing matters: an MBAP client gets no valid answer from an RTU gateway.
    assert rtu_over_tcp.port is not None
    cfg = ModbusSourceConfig(
        name="wrong",
        host="127.0.0.1",
        port=rtu_over_tcp.port,
        timeout_s=TIMEOUT_S,
        tags=tags(1),
    )
    source = ModbusSource(cfg)
    await source.connect()
    try:
        with pytest.raises(NotConnectedError):
            await source.read()
    finally:
        await source.close()


async def test_simulation_serves_rtu(serial_pair: tuple[str, str]) -> None:
    from simulators.runner import Simulation

    agent_end, device_end = serial_pair
    async with Simulation(
        lines=2,
        opcua_port=None,
        modbus_transport="rtu",
        modbus_serial_port=device_end,
        modbus_unit_ids=[1, 2],
        modbus_parity="N",  # a pty refuses parity settings
    ) as sim:
        assert sim.modbus_port is None
        source = ModbusSource(
            replace(
                rtu_config(agent_end, 1, 2),
                serial=SerialConfig(port=agent_end, parity=Parity.NONE),
            )
        )
        await source.connect()
        try:
            samples = await source.read()
        finally:
            await source.close()
    good = values(samples)
    assert good.keys() == expected(1, 2).keys()
