"""ModbusSource against a real pymodbus TCP server on loopback.

The server records every request it receives (its ``trace_pdu`` hook), so coalescing is checked
on the wire, not just in the plan.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from edge_agent.config.schema import (
    ByteOrder,
    DataType,
    ModbusSourceConfig,
    ModbusTable,
    ModbusTag,
)
from edge_agent.errors import NotConnectedError, SourceError
from edge_agent.model import Quality, Sample
from edge_agent.sources.decode import register_count
from edge_agent.sources.modbus import ModbusSource

TIMEOUT_S = 1.0
FIXED_NOW = 1_700_000_000.5

FORMATS = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}
SAMPLE_VALUES = {
    DataType.INT16: -1234,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_001,
    DataType.INT64: -(2**62) - 12345,
    DataType.UINT64: 2**63 + 98765,
    DataType.FLOAT32: 123.5,
    DataType.FLOAT64: -9876.54321,
}


def to_registers(big_endian: bytes, order: ByteOrder) -> list[int]:
    """Lay out a value's big-endian bytes (A first) as a PLC with ``order`` stores them."""
    b = list(big_endian)
    if order is ByteOrder.DCBA:
        b.reverse()
    elif order is ByteOrder.BADC:
        b = [b[i ^ 1] for i in range(len(b))]
    elif order is ByteOrder.CDAB:
        words = [b[i : i + 2] for i in range(0, len(b), 2)]
        b = [x for word in reversed(words) for x in word]
    return [b[i] << 8 | b[i + 1] for i in range(0, len(b), 2)]


def string_registers(text: str, length: int, order: ByteOrder) -> list[int]:
    data = text.encode().ljust(length * 2, b"\0")
    swap = order in (ByteOrder.BADC, ByteOrder.DCBA)
    return [
        (data[i + 1] << 8 | data[i]) if swap else (data[i] << 8 | data[i + 1])
        for i in range(0, len(data), 2)
    ]


@dataclass
class Layout:
    """Holding registers 0.. with one tag per type and byte order, and what each should read."""

    registers: list[int] = field(default_factory=list)
    tags: list[ModbusTag] = field(default_factory=list)
    expected: dict[str, object] = field(default_factory=dict)

    def add(self, tag: ModbusTag, words: list[int], expected: object) -> None:
        assert tag.address == len(self.registers)
        assert len(words) == register_count(tag)
        self.registers.extend(words)
        self.tags.append(tag)
        self.expected[tag.name] = expected


def holding_layout() -> Layout:
    layout = Layout()
    for type_, fmt in FORMATS.items():
        for order in ByteOrder:
            value = SAMPLE_VALUES[type_]
            tag = ModbusTag(
                name=f"{type_.value}_{order.value}",
                address=len(layout.registers),
                type=type_,
                order=order,
            )
            layout.add(tag, to_registers(struct.pack(">" + fmt, value), order), value)
    for order in ByteOrder:
        tag = ModbusTag(
            name=f"string_{order.value}",
            address=len(layout.registers),
            type=DataType.STRING,
            order=order,
            length=4,
        )
        layout.add(tag, string_registers("PRESS-1", 4, order), "PRESS-1")
    base = len(layout.registers)
    layout.add(
        ModbusTag(name="scaled", address=base, type=DataType.INT16, scale=0.5, offset=10.0),
        [0xFFFC],  # -4
        8.0,
    )
    layout.add(ModbusTag(name="flag_off", address=base + 1, type=DataType.BOOL), [0], False)
    layout.add(ModbusTag(name="flag_on", address=base + 2, type=DataType.BOOL), [0x0100], True)
    layout.add(
        ModbusTag(name="nan", address=base + 3, type=DataType.FLOAT32), [0x7FC0, 0x0000], None
    )
    layout.add(
        ModbusTag(name="bad_text", address=base + 5, type=DataType.STRING, length=1),
        [0xFFFE],
        None,
    )
    # Plain counters up to past 125 registers, so that one scan needs two holding reads.
    while len(layout.registers) < 140:
        address = len(layout.registers)
        layout.add(ModbusTag(name=f"count{address}", address=address), [address], address)
    return layout


COILS = [True, False, True, True, False, False, False, True, False, True]
DISCRETES = [False, True, True, False, True, False, False, False, True, True, False, True]
INPUT_BLOCKS = {0: [11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 20: [31, 32, 33, 34, 35]}


@dataclass
class Server:
    port: int
    layout: Layout
    requests: list[tuple[int, int, int, int]]  # (unit id, function code, address, count)
    busy: list[bool]  # [True] makes the device answer "busy" (exception 6)
    stop: Callable[[], Awaitable[None]]


async def start_server(port: int = 0) -> Server:
    layout = holding_layout()
    requests: list[tuple[int, int, int, int]] = []
    busy = [False]

    def trace_pdu(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            requests.append((pdu.dev_id, pdu.function_code, pdu.address, pdu.count))
        return pdu

    async def action(  # noqa: PLR0917 (pymodbus's signature)
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        return ExcCodes.DEVICE_BUSY if busy[0] else None

    device = SimDevice(
        id=1,
        simdata=(
            [SimData(address=0, values=COILS, datatype=SimType.BITS)],
            [SimData(address=0, values=DISCRETES, datatype=SimType.BITS)],
            [SimData(address=0, values=layout.registers, datatype=SimType.REGISTERS)],
            # input registers 10..19 do not exist on this device
            [
                SimData(address=start, values=values, datatype=SimType.REGISTERS)
                for start, values in INPUT_BLOCKS.items()
            ],
        ),
        action=action,
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", port), trace_pdu=trace_pdu)
    await server.serve_forever(background=True)
    bound = server.transport.sockets[0].getsockname()[1]
    return Server(bound, layout, requests, busy, server.shutdown)


@pytest.fixture
async def modbus_server() -> AsyncIterator[Server]:
    server = await start_server()
    try:
        yield server
    finally:
        await server.stop()


def config(port: int, tags: list[ModbusTag], *, max_gap: int = 16) -> ModbusSourceConfig:
    return ModbusSourceConfig(
        name="press1",
        host="127.0.0.1",
        port=port,
        unit_id=1,
        timeout_s=TIMEOUT_S,
        max_gap=max_gap,
        tags=tuple(tags),
    )


def by_tag(samples: list[Sample]) -> dict[str, Sample]:
    out = {s.tag: s for s in samples}
    assert len(out) == len(samples), "one sample per tag"
    return out


@pytest.fixture
async def source_factory() -> AsyncIterator[Callable[[ModbusSourceConfig], ModbusSource]]:
    sources: list[ModbusSource] = []

    def make(cfg: ModbusSourceConfig) -> ModbusSource:
        sources.append(ModbusSource(cfg, clock=lambda: FIXED_NOW))
        return sources[-1]

    yield make
    for source in sources:
        await source.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_every_type_and_byte_order_reads_back(
    modbus_server: Server, source_factory: Callable[[ModbusSourceConfig], ModbusSource]
) -> None:
    layout = modbus_server.layout
    source = source_factory(config(modbus_server.port, layout.tags))
    await source.connect()
    assert source.connected
    samples = by_tag(await source.read())
    assert set(samples) == set(layout.expected)
    for name, expected in layout.expected.items():
        sample = samples[name]
        assert sample.source == "press1"
        assert sample.source_time is None
        assert sample.agent_time == FIXED_NOW
        if expected is None:  # NaN and invalid UTF-8
            assert (sample.quality, sample.value) == (Quality.BAD, None), name
        else:
            assert sample.quality is Quality.GOOD, name
            assert sample.value == expected, name
            assert type(sample.value) is type(expected), name


async def test_scan_coalesces_on_the_wire(
    modbus_server: Server, source_factory: Callable[[ModbusSourceConfig], ModbusSource]
) -> None:
    layout = modbus_server.layout
    bits = [
        ModbusTag(name=f"coil{i}", table=ModbusTable.COIL, address=i, type=DataType.BOOL)
        for i in range(0, len(COILS), 3)
    ] + [
        ModbusTag(name=f"di{i}", table=ModbusTable.DISCRETE, address=i, type=DataType.BOOL)
        for i in range(1, len(DISCRETES), 2)
    ]
    source = source_factory(config(modbus_server.port, layout.tags + bits))
    await source.connect()
    # 140 contiguous holding registers need two reads; coils and discrete inputs one each.
    assert len(layout.registers) > 125
    assert source.requests_per_scan == 4
    modbus_server.requests.clear()
    samples = by_tag(await source.read())
    assert len(modbus_server.requests) == 4
    assert sorted({fc for _, fc, _, _ in modbus_server.requests}) == [1, 2, 3]
    assert all(count <= 125 for _, fc, _, count in modbus_server.requests if fc == 3)
    for i in range(0, len(COILS), 3):
        assert samples[f"coil{i}"].value is COILS[i]
    for i in range(1, len(DISCRETES), 2):
        assert samples[f"di{i}"].value is DISCRETES[i]
    # The same again: the plan is stable from scan to scan.
    await source.read()
    assert len(modbus_server.requests) == 8


async def test_illegal_address_makes_only_those_tags_bad(
    modbus_server: Server,
    source_factory: Callable[[ModbusSourceConfig], ModbusSource],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = [ModbusTag(name="in0", table=ModbusTable.INPUT, address=0)]
    missing = [
        ModbusTag(name="h5000", address=5000),
        ModbusTag(name="h5001", address=5001, type=DataType.UINT32),
    ]
    source = source_factory(config(modbus_server.port, good + missing, max_gap=4))
    await source.connect()

    def refusals() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if "refused with Modbus exception 2" in r.getMessage()
        ]

    for poll in range(3):
        samples = by_tag(await source.read())
        assert samples["in0"].quality is Quality.GOOD and samples["in0"].value == 11
        for name in ("h5000", "h5001"):
            assert (samples[name].quality, samples[name].value) == (Quality.BAD, None)
        if poll == 0:
            first = refusals()
            # the refused request was split down to its two tags, each warned about
            assert len(first) == 2
            assert any("h5000" in m for m in first) and any("h5001" in m for m in first)
    assert refusals() == first, "warned once per request, not once per poll"
    assert source.connected


async def test_refused_gap_fill_is_split_so_neighbours_stay_good(
    modbus_server: Server, source_factory: Callable[[ModbusSourceConfig], ModbusSource]
) -> None:
    # Input registers 10..19 do not exist: reading 0..24 in one request is refused.
    tags = [
        ModbusTag(name=f"in{a}", table=ModbusTable.INPUT, address=a) for a in (0, 5, 15, 22, 24)
    ]
    source = source_factory(config(modbus_server.port, tags, max_gap=16))
    await source.connect()
    assert source.requests_per_scan == 1
    samples = by_tag(await source.read())
    assert samples["in15"].quality is Quality.BAD
    expected = {"in0": 11, "in5": 16, "in22": 33, "in24": 35}
    assert {n: samples[n].value for n in expected} == expected
    assert all(samples[n].quality is Quality.GOOD for n in expected)
    # The split plan is kept: the next scan sends exactly what it needs.
    split = source.requests_per_scan
    assert 1 < split <= 4
    modbus_server.requests.clear()
    samples = by_tag(await source.read())
    assert len(modbus_server.requests) == split
    assert {n: samples[n].value for n in expected} == expected


async def test_device_busy_raises_source_error_and_keeps_connection(
    modbus_server: Server, source_factory: Callable[[ModbusSourceConfig], ModbusSource]
) -> None:
    source = source_factory(config(modbus_server.port, modbus_server.layout.tags[:3]))
    await source.connect()
    modbus_server.busy[0] = True
    with pytest.raises(SourceError, match="busy") as info:
        await source.read()
    assert not isinstance(info.value, NotConnectedError)
    assert source.connected
    modbus_server.busy[0] = False
    assert all(s.quality is Quality.GOOD for s in await source.read())


async def test_connect_to_closed_port_fails_promptly() -> None:
    port = free_port()
    source = ModbusSource(config(port, [ModbusTag(name="x", address=0)]))
    started = time.monotonic()
    with pytest.raises(NotConnectedError, match=f"connection refused to 127.0.0.1:{port}"):
        await source.connect()
    assert time.monotonic() - started < TIMEOUT_S
    assert not source.connected
    with pytest.raises(NotConnectedError):
        await source.read()
    await source.close()


async def test_read_before_connect_raises_not_connected() -> None:
    source = ModbusSource(config(free_port(), [ModbusTag(name="x", address=0)]))
    with pytest.raises(NotConnectedError, match="not connected"):
        await source.read()


async def test_server_stopped_then_restarted(
    source_factory: Callable[[ModbusSourceConfig], ModbusSource],
) -> None:
    server = await start_server()
    port = server.port
    try:
        source = source_factory(config(port, server.layout.tags[:4]))
        await source.connect()
        await source.read()
    finally:
        await server.stop()
    with pytest.raises(NotConnectedError):
        await source.read()
    assert not source.connected
    with pytest.raises(NotConnectedError, match="refused"):
        await source.connect()
    server = await start_server(port)
    try:
        await source.connect()
        assert all(s.quality is Quality.GOOD for s in await source.read())
    finally:
        await server.stop()


async def test_close_then_connect_again(
    modbus_server: Server, source_factory: Callable[[ModbusSourceConfig], ModbusSource]
) -> None:
    source = source_factory(config(modbus_server.port, modbus_server.layout.tags[:2]))
    await source.connect()
    await source.read()
    await source.close()
    assert not source.connected
    with pytest.raises(NotConnectedError):
        await source.read()
    await source.close()  # idempotent
    await source.connect()
    assert source.connected
    assert len(await source.read()) == 2


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP server that accepts and then misbehaves: mode[0] is 'silent' or 'hang_up'."""
    mode = ["silent"]
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1)
        if mode[0] == "hang_up":
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], mode
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_no_answer_raises_not_connected_after_timeout(
    raw_server: tuple[int, list[str]],
    source_factory: Callable[[ModbusSourceConfig], ModbusSource],
) -> None:
    port, _mode = raw_server
    source = source_factory(config(port, [ModbusTag(name="x", address=0)]))
    await source.connect()
    started = time.monotonic()
    with pytest.raises(NotConnectedError, match="no"):
        await source.read()
    elapsed = time.monotonic() - started
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 1.0
    assert not source.connected


async def test_connection_dropped_mid_request_fails_fast(
    raw_server: tuple[int, list[str]],
    source_factory: Callable[[ModbusSourceConfig], ModbusSource],
) -> None:
    port, mode = raw_server
    mode[0] = "hang_up"
    cfg = ModbusSourceConfig(
        name="press1",
        host="127.0.0.1",
        port=port,
        timeout_s=5.0,
        tags=(ModbusTag(name="x", address=0),),
    )
    source = source_factory(cfg)
    await source.connect()
    started = time.monotonic()
    with pytest.raises(NotConnectedError):
        await source.read()
    assert time.monotonic() - started < 2.0, "did not wait for the 5 s request timeout"
    assert not source.connected


def test_nan_check_is_meaningful() -> None:
    # Guards the layout above: the "nan" registers really are a NaN float32.
    assert math.isnan(struct.unpack(">f", bytes.fromhex("7fc00000"))[0])
