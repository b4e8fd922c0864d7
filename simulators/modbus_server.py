"""A Modbus TCP server presenting :class:`~simulators.model.LineModel` values as a PLC would.

Register map (unit id 1, zero-based protocol addresses as sent on the wire), for line index ``i``
and ``base = 100 * i``:

=============  ======================================================  =====================
address        value                                                   encoding
=============  ======================================================  =====================
base + 0       state code (1 running … 5 changeover)                   uint16
base + 1       total count modulo 65536                                uint16
base + 2       reject count modulo 65536                               uint16
base + 3..4    total count modulo 2**32                                uint32, high word first
base + 5..6    ideal cycle time in seconds                             float32, high word first
base + 7..8    power meter: active energy in Wh modulo 2**32           uint32, high word first
base + 9..10   power meter: active energy in kWh                       float32, high word first
base + 11..12  power meter: active power in kW                         float32, high word first
base + 13      production order number modulo 65536                    uint16
base + 14      production order quantity (good parts)                  uint16
=============  ======================================================  =====================

The same values are served as holding registers (function 3) and input registers (function 4).
Coil ``i`` and discrete input ``i`` are the line's ``running`` flag. Every address in
``0 .. 100 * lines - 1`` is readable (unused ones read 0), and the map is read-only: writes are
answered with exception 2 (illegal address).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.model import LineModel

__all__ = ["LINE_STRIDE", "UNIT_ID", "ModbusSimServer", "line_registers"]

logger = logging.getLogger(__name__)

UNIT_ID = 1
LINE_STRIDE = 100
"""Registers reserved per line: line ``i`` starts at ``LINE_STRIDE * i``."""

_READ_BITS = {1: "c", 2: "d"}
_READ_REGISTERS = {3: "h", 4: "i"}


def line_registers(model: LineModel) -> list[int]:
    """The 15 registers ``base + 0 .. base + 14`` for one line (see the module docstring)."""
    total32 = model.total_count % 2**32
    cycle_hi, cycle_lo = struct.unpack(">HH", struct.pack(">f", model.ideal_cycle_time_s))
    energy_kwh = model.energy_kwh
    wh32 = int(energy_kwh * 1000.0) % 2**32
    kwh_hi, kwh_lo = struct.unpack(">HH", struct.pack(">f", energy_kwh))
    kw_hi, kw_lo = struct.unpack(">HH", struct.pack(">f", model.power_kw))
    return [
        model.state_code,
        model.total_count % 2**16,
        model.reject_count % 2**16,
        total32 >> 16,
        total32 & 0xFFFF,
        cycle_hi,
        cycle_lo,
        wh32 >> 16,
        wh32 & 0xFFFF,
        kwh_hi,
        kwh_lo,
        kw_hi,
        kw_lo,
        model.order_number % 2**16,
        min(model.params.order_quantity, 0xFFFF),
    ]


def _pack_bits(bits: Sequence[bool]) -> list[int]:
    """Bits into 16-bit words, bit 0 in the least significant bit (pymodbus' coil layout)."""
    words = [0] * ((len(bits) + 15) // 16)
    for index, bit in enumerate(bits):
        if bit:
            words[index // 16] |= 1 << (index % 16)
    return words


class ModbusSimServer:
    """Serves the models' values over Modbus TCP; call :meth:`update` to publish new values.

    ``update`` only takes a snapshot of the models; each read request copies the latest snapshot
    into the datastore just before it is answered (through pymodbus' device ``action`` hook), so
    one request never sees half of an update.
    """

    def __init__(self, models: Sequence[LineModel], host: str = "127.0.0.1", port: int = 0) -> None:
        if not models:
            raise ValueError("at least one line model is needed")
        self._models = list(models)
        self._host = host
        self._requested_port = port
        self._register_count = LINE_STRIDE * len(self._models)
        # Coils are stored 16 to a register: round the block up to whole registers.
        self._bit_count = 16 * ((len(self._models) + 15) // 16)
        self._registers: list[int] = [0] * self._register_count
        self._bit_words: list[int] = [0] * (self._bit_count // 16)
        self._server: ModbusTcpServer | None = None
        self._port: int | None = None
        self.update()

    @property
    def port(self) -> int | None:
        """The bound TCP port once started, else ``None``."""
        return self._port

    async def start(self) -> int:
        """Start listening and return the bound port (a free one when ``port`` was 0).

        Raises ``OSError`` when the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        bits = SimData(0, count=self._bit_count, values=False, datatype=DataType.BITS)
        registers = SimData(
            0, count=self._register_count, values=0, datatype=DataType.REGISTERS, readonly=True
        )
        device = SimDevice(
            id=UNIT_ID,
            # Separate blocks per table, so coil i is addressed as coil i and the same
            # registers can be served as holding and as input registers.
            simdata=([bits], [bits], [registers], [registers]),
            action=self._on_request,
        )
        server = ModbusTcpServer(device, address=(self._host, self._requested_port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus reports a failed bind (port in use, bad address) as RuntimeError and logs
            # the cause; callers handle it as the OSError it is.
            raise OSError(f"modbus: cannot listen on {self._host}:{self._requested_port}") from exc
        # serve_forever(background=True) returns once listening; transport is the asyncio.Server.
        sockets = server.transport.sockets  # type: ignore[attr-defined]
        self._port = int(sockets[0].getsockname()[1])
        self._server = server
        logger.info("modbus simulator listening on %s:%d", self._host, self._port)
        return self._port

    async def stop(self) -> None:
        """Stop listening and close client connections. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]
        # Let the closed transports run their connection_lost callbacks before returning.
        await asyncio.sleep(0)
        logger.info("modbus simulator on port %s stopped", self._port)

    def update(self) -> None:
        """Snapshot the models' current values; the next request serves them."""
        registers = [0] * self._register_count
        for index, model in enumerate(self._models):
            base = LINE_STRIDE * index
            values = line_registers(model)
            registers[base : base + len(values)] = values
        bits = [model.running for model in self._models]
        bits += [False] * (self._bit_count - len(bits))
        self._registers = registers
        self._bit_words = _pack_bits(bits)

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_ADDRESS
        # Every block starts at address 0 (register 0 of the list) and ends with a guard
        # register pymodbus adds; only the mapped part is refreshed.
        del start_address
        if function_code in _READ_REGISTERS:
            current_registers[: self._register_count] = self._registers
        elif function_code in _READ_BITS:
            current_registers[: len(self._bit_words)] = self._bit_words
        return None
