"""A Modbus server presenting :class:`~simulators.model.LineModel` values as a PLC would, over
TCP, RTU over TCP (as a serial gateway does) or RTU on a serial port.

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

With ``unit_ids`` the server is a shared RS-485 line instead: line ``i`` is a device of its own,
unit id ``unit_ids[i]``, with the map above at ``base = 0``. A request for any other unit id gets
no answer, as on a real bus.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.model import LineModel

__all__ = ["LINE_STRIDE", "UNIT_ID", "ModbusSimServer", "Transport", "line_registers"]

Transport = Literal["tcp", "rtu_over_tcp", "rtu"]

logger = logging.getLogger(__name__)

UNIT_ID = 1
LINE_STRIDE = 100
"""Registers reserved per line: line ``i`` starts at ``LINE_STRIDE * i``."""

_READ_BITS = {1: "c", 2: "d"}
_Action = Callable[
    [int, int, int, int, list[int], list[int] | list[bool] | None],
    Coroutine[None, None, ExcCodes | None],
]
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
    """Serves the models' values over Modbus; call :meth:`update` to publish new values.

    ``update`` only takes a snapshot of the models; each read request copies the latest snapshot
    into the datastore just before it is answered (through pymodbus' device ``action`` hook), so
    one request never sees half of an update.

    ``transport`` is ``tcp`` (MBAP), ``rtu_over_tcp`` (RTU frames on a TCP port) or ``rtu``
    (RTU frames on ``serial_port``, e.g. one end of a ``socat`` pty pair). ``recent_requests``
    holds ``(time.monotonic(), unit id)`` of the last requests answered, for tests and tools.
    """

    def __init__(
        self,
        models: Sequence[LineModel],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        transport: Transport = "tcp",
        serial_port: str | None = None,
        baudrate: int = 19200,
        parity: str = "E",
        unit_ids: Sequence[int] | None = None,
    ) -> None:
        if not models:
            raise ValueError("at least one line model is needed")
        if transport == "rtu" and not serial_port:
            raise ValueError("transport rtu needs a serial_port")
        if unit_ids is not None and (
            len(unit_ids) != len(models) or len(set(unit_ids)) != len(unit_ids)
        ):
            raise ValueError("unit_ids needs one distinct unit id per line")
        self._models = list(models)
        self._host = host
        self._requested_port = port
        self._transport: Transport = transport
        self._serial_port = serial_port
        self._baudrate = baudrate
        self._parity = parity
        self._unit_ids = list(unit_ids) if unit_ids is not None else None
        # One device serving every line, or one device per line (a shared bus).
        self._device_lines = (
            [list(range(len(self._models)))]
            if unit_ids is None
            else [[index] for index in range(len(self._models))]
        )
        self._register_count = LINE_STRIDE * len(self._device_lines[0])
        # Coils are stored 16 to a register: round the block up to whole registers.
        self._bit_count = 16 * ((len(self._device_lines[0]) + 15) // 16)
        self._registers: list[list[int]] = []
        self._bit_words: list[list[int]] = []
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._port: int | None = None
        # Fault injection (simulators.scenarios): an exception to answer every request with, and
        # a gate that holds requests unanswered while it is clear.
        self.exception: ExcCodes | None = None
        self.garbage = False  # answer noise instead of Modbus frames (fault injection)
        self._noise = random.Random(0)
        self.answering = asyncio.Event()
        self.answering.set()
        self._where = ""
        self.recent_requests: collections.deque[tuple[float, int]] = collections.deque(maxlen=1000)
        self.update()

    @property
    def port(self) -> int | None:
        """The bound TCP port once started, else ``None``."""
        return self._port

    async def start(self) -> int:
        """Start listening and return the bound port (a free one when ``port`` was 0; 0 for
        transport ``rtu``, which opens the serial port instead).

        Raises ``OSError`` when the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        devices = []
        unit_ids = self._unit_ids or [UNIT_ID]
        for device_index, unit in enumerate(unit_ids):
            bits = SimData(0, count=self._bit_count, values=False, datatype=DataType.BITS)
            registers = SimData(
                0, count=self._register_count, values=0, datatype=DataType.REGISTERS, readonly=True
            )
            devices.append(
                SimDevice(
                    id=unit,
                    # Separate blocks per table, so coil i is addressed as coil i and the same
                    # registers can be served as holding and as input registers.
                    simdata=([bits], [bits], [registers], [registers]),
                    action=self._action(device_index, unit),
                )
            )
        if self._unit_ids is not None:
            # A catch-all device (id 0) answers every other unit id, and the answer is dropped on
            # its way out: absent devices stay silent, as on a real bus. (pymodbus's own
            # ignore_missing_devices does not apply to simulator devices.)
            devices.append(SimDevice(id=0, simdata=devices[0].simdata))
        trace_packet = self._outgoing
        server: ModbusTcpServer | ModbusSerialServer
        if self._transport == "rtu":
            assert self._serial_port is not None
            where = self._serial_port
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self._serial_port,
                baudrate=self._baudrate,
                parity=self._parity,
                trace_packet=trace_packet,
            )
        else:
            # After a restart the same port again, so that clients find the PLC where it was.
            port = self._port if self._port is not None else self._requested_port
            where = f"{self._host}:{port}"
            framer = FramerType.RTU if self._transport == "rtu_over_tcp" else FramerType.SOCKET
            server = ModbusTcpServer(
                devices,
                framer=framer,
                address=(self._host, port),
                trace_packet=trace_packet,
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus reports a failed bind (port in use, bad address) as RuntimeError and logs
            # the cause; callers handle it as the OSError it is.
            raise OSError(f"modbus: cannot listen on {where}") from exc
        self._server = server
        self._where = where
        if self._transport == "rtu":
            logger.info("modbus simulator serving RTU on %s", where)
            return 0
        # serve_forever(background=True) returns once listening; transport is the asyncio.Server.
        sockets = server.transport.sockets  # type: ignore[attr-defined]
        self._port = int(sockets[0].getsockname()[1])
        self._where = f"{self._host}:{self._port}"
        logger.info(
            "modbus simulator listening on %s:%d (%s)", self._host, self._port, self._transport
        )
        return self._port

    async def stop(self) -> None:
        """Stop listening and close client connections. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]
        # Let the closed transports run their connection_lost callbacks before returning.
        await asyncio.sleep(0)
        logger.info("modbus simulator on %s stopped", self._where)

    def update(self) -> None:
        """Snapshot the models' current values; the next request serves them."""
        all_registers: list[list[int]] = []
        all_bits: list[list[int]] = []
        for lines in self._device_lines:
            registers = [0] * self._register_count
            for slot, index in enumerate(lines):
                base = LINE_STRIDE * slot
                values = line_registers(self._models[index])
                registers[base : base + len(values)] = values
            bits = [self._models[index].running for index in lines]
            bits += [False] * (self._bit_count - len(bits))
            all_registers.append(registers)
            all_bits.append(_pack_bits(bits))
        self._registers = all_registers
        self._bit_words = all_bits

    def _outgoing(self, sending: bool, packet: bytes) -> bytes:
        """pymodbus's trace_packet hook: the last say on every frame the server sends."""
        if not sending or not packet:
            return packet
        if self._unit_ids is not None:
            packet = self._drop_answers_of_absent_units(packet)
        if packet and self.garbage:
            # Fault injection: the answer's bytes are replaced by noise of the same length (a
            # corrupted line, a device speaking another protocol).
            return bytes(self._noise.getrandbits(8) for _ in packet)
        return packet

    def _drop_answers_of_absent_units(self, packet: bytes) -> bytes:
        # The unit id leads an RTU frame and follows the 6-byte MBAP header on Modbus TCP.
        index = 6 if self._transport == "tcp" else 0
        if len(packet) > index and packet[index] not in (self._unit_ids or ()):
            return b""
        return packet

    def _action(self, device_index: int, unit: int) -> _Action:
        """pymodbus' device ``action`` hook for one device, called before each request."""

        async def on_request(
            function_code: int,
            _start_address: int,
            _address: int,
            _count: int,
            current_registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            self.recent_requests.append((time.monotonic(), unit))
            if not self.answering.is_set():
                await self.answering.wait()  # a stalled PLC: the request waits, unanswered
            if self.exception is not None:
                return self.exception
            if set_values is not None:
                return ExcCodes.ILLEGAL_ADDRESS
            # Every block starts at address 0 (register 0 of the list) and ends with a guard
            # register pymodbus adds; only the mapped part is refreshed.
            if function_code in _READ_REGISTERS:
                current_registers[: self._register_count] = self._registers[device_index]
            elif function_code in _READ_BITS:
                words = self._bit_words[device_index]
                current_registers[: len(words)] = words
            return None

        return on_request
