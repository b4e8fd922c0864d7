"""Modbus source over TCP, RTU over TCP (serial gateways) or RTU over a serial line. The only
module that imports pymodbus.

The tags are planned once into the fewest read requests (:mod:`edge_agent.sources.planner`) and each
request gets a precompiled block decoder (:mod:`edge_agent.sources.decode`), so a scan is a few
round trips and a few ``struct`` calls. pymodbus handles one request at a time per connection
(DESIGN §7), so the requests run in order.

Retry policy lives in the supervisor: the client is built with its reconnect loop off
(``reconnect_delay=0``) and no retries (``retries=0``). A lost connection or a request without an
answer closes the client and raises :class:`NotConnectedError` ("reconnect me").

On the RTU transports one connection is a bus shared by several devices (tags with their own
``unit_id``): a device that does not answer costs only its own tags (they read BAD), unless no
device answered in the whole scan, which is taken as a lost line. ``inter_request_gap`` keeps
the bus quiet for that long between a response and the next request, as slow RS-485 devices need.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from edge_agent.config.schema import DataType, ModbusSourceConfig, ModbusTable, ModbusTransport
from edge_agent.errors import DecodeError, NotConnectedError, SourceError
from edge_agent.model import Quality, Sample, Value
from edge_agent.sources.decode import BlockDecoder, compile_field, is_bit_table, is_finite
from edge_agent.sources.planner import ReadRequest, narrow, plan_reads

__all__ = ["ModbusSource"]

log = logging.getLogger(__name__)

# Modbus exception codes (Modbus Application Protocol v1.1b3, §7).
EXC_ILLEGAL_ADDRESS = 2
EXC_DEVICE_BUSY = 6

# The outer deadline leaves pymodbus's own timeout (cfg.timeout_s) room to fire first, so its
# transaction state is clean; the outer one catches anything that would otherwise hang.
_DEADLINE_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class _PlannedRead:
    request: ReadRequest
    decoder: BlockDecoder
    names: tuple[str, ...]  # the tags' names, in decoder field order
    # Fields whose value must be judged (floats may be NaN, strings may not decode); every
    # other field of a decoded block is good as it is, which spares a check per tag.
    checked: tuple[int, ...]


def _compile(request: ReadRequest) -> _PlannedRead:
    fields = [compile_field(planned.tag, planned.offset) for planned in request.tags]
    decoder = BlockDecoder(fields, request.count, bits=is_bit_table(request.table))
    floats = {
        i
        for i, planned in enumerate(request.tags)
        if planned.tag.type in (DataType.FLOAT32, DataType.FLOAT64)
    }
    checked = tuple(sorted(floats.union(decoder.singles)))
    names = tuple(planned.tag.name for planned in request.tags)
    return _PlannedRead(request, decoder, names, checked)


_Client = AsyncModbusTcpClient | AsyncModbusSerialClient


def _describe_connect_error(exc: OSError | None, cfg: ModbusSourceConfig, endpoint: str) -> str:
    if cfg.transport is ModbusTransport.RTU:
        if exc is None:
            return f"timed out opening {endpoint} after {cfg.timeout_s:g} s"
        return f"cannot open {endpoint}: {exc.strerror or exc}"
    if exc is None:
        # pymodbus swallowed a TimeoutError of its own connect deadline.
        return f"timed out connecting to {endpoint} after {cfg.timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return f"connection refused to {endpoint}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {cfg.host!r}: {exc.strerror or exc}"
    return f"cannot connect to {endpoint}: {exc.strerror or exc}"


def _endpoint(cfg: ModbusSourceConfig) -> str:
    """Where the source connects, for messages: ``host:port`` or ``serial port /dev/ttyUSB0``."""
    if cfg.transport is ModbusTransport.RTU:
        assert cfg.serial is not None  # the loader requires it
        return f"serial port {cfg.serial.port}"
    return f"{cfg.host}:{cfg.port}"


class _Scan:
    """The results of one scan as parallel lists (cheaper than a tuple per tag)."""

    __slots__ = ("current", "names", "qualities", "values")

    def __init__(self) -> None:
        self.current: ReadRequest | None = None  # the request in flight, for messages
        self.names: list[str] = []
        self.values: list[Value] = []
        self.qualities: list[Quality] = []

    def add_bad(self, names: Sequence[str]) -> None:
        self.names.extend(names)
        self.values.extend([None] * len(names))
        self.qualities.extend([Quality.BAD] * len(names))


class ModbusSource:
    """A Modbus connection to one PLC or one RTU bus (implements :class:`edge_agent.model.Source`).

    ``read`` returns one sample per configured tag, stamped with ``clock()`` at the end of the
    scan. A value the PLC cannot give comes back with :attr:`Quality.BAD` and value ``None``:
    an address it refuses (Modbus exception 2, or any code but 6), a NaN or infinite float, bytes
    that do not decode. Exception 6 (device busy) raises :class:`SourceError` and keeps the
    connection; a lost connection or a missing answer raises :class:`NotConnectedError`.
    """

    def __init__(self, cfg: ModbusSourceConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._clock = clock
        self._endpoint = _endpoint(cfg)
        self._shared_bus = cfg.transport is not ModbusTransport.TCP
        self._deadline_s = cfg.timeout_s + _DEADLINE_MARGIN_S
        # ValueError here means a tag the loader should have rejected.
        self._initial_plan = [
            _compile(request)
            for request in plan_reads(cfg.tags, unit_id=cfg.unit_id, max_gap=cfg.max_gap)
        ]
        self._plan = list(self._initial_plan)
        self._conn: _Client | None = None
        self._in_flight = False
        self._quiet_until = 0.0  # time.monotonic() before which the next request waits (gap)
        self._answered = False  # some device answered during the current scan
        # Requests and tags currently failing, so that each failure is logged once when it
        # starts and once when it ends, not on every poll.
        self._failing_requests: set[tuple[int, ModbusTable, int, int]] = set()
        self._bad_tags: set[str] = set()

    @property
    def requests_per_scan(self) -> int:
        """Read requests one :meth:`read` sends (grows if a refused request had to be split)."""
        return len(self._plan)

    @property
    def connected(self) -> bool:
        return self._conn is not None and bool(self._conn.connected)

    async def connect(self) -> None:
        """Open the TCP connection or the serial port, replacing any previous one.

        Raises :class:`NotConnectedError` with the reason ("connection refused to
        127.0.0.1:5020", "timed out connecting to ...", "cannot open serial port ...") within
        ``timeout_s`` (plus a small margin). A new connection starts from the full coalesced plan
        again.
        """
        self._drop_client()
        cfg = self._cfg
        client = self._new_client()
        errors = self._record_connect_errors(client)
        try:
            async with asyncio.timeout(self._deadline_s):
                ok = await client.connect()
        except TimeoutError:
            client.close()
            raise NotConnectedError(_describe_connect_error(None, cfg, self._endpoint)) from None
        except BaseException:
            client.close()
            raise
        if not ok:
            client.close()
            raise NotConnectedError(
                _describe_connect_error(errors[-1] if errors else None, cfg, self._endpoint)
            )
        self._conn = client
        self._plan = list(self._initial_plan)
        log.debug("source %r connected to %s", self.name, self._endpoint)

    async def read(self) -> list[Sample]:
        """One scan: every planned request in order, one sample per tag.

        Raises :class:`NotConnectedError` when not connected or the connection is lost (the
        client is closed then), :class:`SourceError` when the device answers "busy".
        """
        client = self._conn
        if client is None or not client.connected:
            self._drop_client()
            raise NotConnectedError(f"not connected to {self._endpoint}")
        scan = _Scan()
        self._answered = False
        plan = self._plan
        new_plan: list[_PlannedRead] | None = None
        # One backstop deadline for the whole scan, not one per request (an asyncio.timeout costs
        # a timer handle each): pymodbus bounds every request by timeout_s itself, and this
        # catches anything that would otherwise hang, with room for each request's own timeout.
        try:
            async with asyncio.timeout(
                (self._deadline_s + self._cfg.inter_request_gap_s) * (len(plan) + 1)
            ):
                for index, planned in enumerate(plan):
                    scan.current = planned.request
                    replacement = await self._read_one(client, planned, scan)
                    if replacement is not None:  # the request was split: the plan changes
                        if new_plan is None:
                            new_plan = plan[:index]
                        new_plan.extend(replacement)
                    elif new_plan is not None:
                        new_plan.append(planned)
        except TimeoutError:
            self._drop_client()
            where = f" reading {scan.current.describe()}" if scan.current is not None else ""
            raise NotConnectedError(
                f"no answer from {self._endpoint} within {self._cfg.timeout_s:g} s{where}"
            ) from None
        if new_plan is not None:
            self._plan = new_plan
        if not self._answered:
            # On a bus every device was silent: the line (cable, adapter, gateway) is down.
            self._drop_client()
            raise NotConnectedError(f"no device answered on {self._endpoint}")
        now = self._clock()
        source = self.name
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function, and this list
        # is the agent's largest per-scan allocation (one Sample per tag).
        make = tuple.__new__
        return [
            make(Sample, (source, tag, value, quality, None, now))
            for tag, value, quality in zip(scan.names, scan.values, scan.qualities, strict=True)
        ]

    async def close(self) -> None:
        """Close the connection. Idempotent; the source can :meth:`connect` again."""
        self._drop_client()

    # -- internals ------------------------------------------------------------------------------

    def _new_client(self) -> _Client:
        cfg = self._cfg
        common: dict[str, Any] = {
            "name": f"modbus:{cfg.name}",
            # 0 turns pymodbus's own reconnect loop off: the supervisor owns it
            "reconnect_delay": 0,
            "reconnect_delay_max": 0,
            "timeout": cfg.timeout_s,
            "retries": 0,  # one owner of retries: the supervisor
            "trace_connect": self._on_connection_change,
        }
        if cfg.transport is ModbusTransport.RTU:
            assert cfg.serial is not None  # the loader requires it
            if importlib.util.find_spec("serial") is None:
                raise NotConnectedError(
                    "transport rtu needs pyserial: pip install 'edge-agent[rtu]'"
                )
            return AsyncModbusSerialClient(
                cfg.serial.port,
                framer=FramerType.RTU,
                baudrate=cfg.serial.baudrate,
                bytesize=cfg.serial.bytesize,
                parity=cfg.serial.parity.value,
                stopbits=cfg.serial.stopbits,
                **common,
            )
        framer = (
            FramerType.RTU if cfg.transport is ModbusTransport.RTU_OVER_TCP else FramerType.SOCKET
        )
        return AsyncModbusTcpClient(cfg.host, port=cfg.port, framer=framer, **common)

    async def _read_one(
        self, client: _Client, planned: _PlannedRead, scan: _Scan
    ) -> list[_PlannedRead] | None:
        """Read one planned request, add its tags' results to ``scan``; return what replaces it
        in the plan (``None``: itself).

        A request refused with "illegal data address" that holds several tags is split in halves
        until the refused tags are alone: read-over gaps or one missing address then cost only
        those tags, not their neighbours.
        """
        request = planned.request
        response = await self._execute(client, request)
        if response is None:
            # A silent device on a shared bus: its tags are bad, the others still read.
            self._note_request_failure(request, "got no answer")
            scan.add_bad(planned.names)
            return None
        self._answered = True
        if response.isError():
            code = int(response.exception_code)
            if code == EXC_DEVICE_BUSY:
                # Exception 6 (busy) is transient: fail this scan, keep the connection.
                raise SourceError(
                    f"device busy (Modbus exception 6) reading {request.describe()} "
                    f"from {self._endpoint}"
                )
            if code == EXC_ILLEGAL_ADDRESS and len(request.tags) > 1:
                half = len(request.tags) // 2
                log.info(
                    "source %r: %s refused (illegal data address); splitting it",
                    self.name,
                    request.describe(),
                )
                replacement: list[_PlannedRead] = []
                for part in (request.tags[:half], request.tags[half:]):
                    narrowed = _compile(narrow(request, part))
                    replacement.extend(await self._read_one(client, narrowed, scan) or [narrowed])
                return replacement
            self._note_request_failure(request, f"refused with Modbus exception {code}")
            scan.add_bad(planned.names)
            return None
        if self._failing_requests:
            self._note_request_success(request)
        data: Sequence[int] | Sequence[bool] = (
            response.bits if is_bit_table(request.table) else response.registers
        )
        try:
            values = planned.decoder.decode(data)
        except DecodeError as exc:
            # A malformed response means the stream cannot be trusted: start again.
            self._drop_client()
            raise NotConnectedError(
                f"bad response for {request.describe()} from {self._endpoint}: {exc}"
            ) from exc
        first = len(scan.values)
        scan.names.extend(planned.names)
        scan.values.extend(values)  # type: ignore[arg-type]  # DecodeErrors replaced below
        scan.qualities.extend([Quality.GOOD] * len(values))
        names = planned.names
        bad_tags = self._bad_tags
        for i in planned.checked:
            value = values[i]
            # Fast path for the common case, a finite float of a tag that was good (x - x is NaN
            # for an infinity and for NaN); anything else goes through _good.
            if value.__class__ is float and value - value == 0.0 and names[i] not in bad_tags:
                continue
            if not self._good(names[i], value):
                scan.values[first + i] = None
                scan.qualities[first + i] = Quality.BAD
        return None

    def _good(self, tag: str, value: Value | DecodeError) -> bool:
        """Judge one decoded value; log a tag going bad or good again once."""
        if isinstance(value, DecodeError):
            reason = str(value)
        elif not is_finite(value):
            reason = f"tag {tag!r}: non-finite value {value!r}"
        else:
            if self._bad_tags and tag in self._bad_tags:
                self._bad_tags.discard(tag)
                log.info("source %r: tag %r is good again", self.name, tag)
            return True
        if tag not in self._bad_tags:
            self._bad_tags.add(tag)
            log.warning("source %r: bad value: %s", self.name, reason)
        return False

    @staticmethod
    def _start(client: _Client, request: ReadRequest) -> Awaitable[ModbusPDU]:
        start, count, unit = request.start, request.count, request.unit_id
        match request.table:
            case ModbusTable.HOLDING:
                return client.read_holding_registers(start, count=count, device_id=unit)
            case ModbusTable.INPUT:
                return client.read_input_registers(start, count=count, device_id=unit)
            case ModbusTable.COIL:
                return client.read_coils(start, count=count, device_id=unit)
            case ModbusTable.DISCRETE:
                return client.read_discrete_inputs(start, count=count, device_id=unit)

    async def _execute(self, client: _Client, request: ReadRequest) -> ModbusPDU | None:
        """The response, or None when a device on a shared bus did not answer in time."""
        gap_s = self._cfg.inter_request_gap_s
        if gap_s > 0:
            wait_s = self._quiet_until - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        self._in_flight = True
        try:
            # Inside the try: pymodbus raises ConnectionException before awaiting when the
            # transport is already gone. The deadline is read()'s, around the whole scan.
            return await self._start(client, request)
        except ConnectionException as exc:
            self._drop_client()
            raise NotConnectedError(f"connection to {self._endpoint} lost: {exc}") from exc
        except ModbusIOException:
            if not (self._shared_bus and client.connected):
                self._drop_client()
                raise NotConnectedError(
                    f"no valid answer from {self._endpoint} reading {request.describe()}"
                ) from None
            return None
        except ModbusException as exc:
            # With retries=0 a missing answer arrives here as ModbusIOException.
            self._drop_client()
            raise NotConnectedError(
                f"no valid answer from {self._endpoint} reading {request.describe()}: {exc}"
            ) from exc
        except BaseException:
            # Cancelled mid-request: the answer may still arrive and would be taken for the
            # next request's. Close so the next connect starts clean.
            self._drop_client()
            raise
        finally:
            self._in_flight = False
            self._quiet_until = time.monotonic() + gap_s

    def _on_connection_change(self, connected: bool) -> None:
        """pymodbus's trace_connect hook; called when the peer drops the connection.

        pymodbus leaves an outstanding request waiting for its full timeout after the connection
        is gone; failing its response future ends the wait at once.
        """
        if connected:
            return
        log.debug("source %r: connection to %s lost", self.name, self._endpoint)
        client = self._conn
        if client is None or not self._in_flight:
            return
        future = getattr(client.ctx, "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection lost"))

    def _record_connect_errors(self, client: _Client) -> list[OSError]:
        """Capture the OSError of a failed connect, which pymodbus only logs (it returns False).

        Wraps the transport's connection factory; without it (another pymodbus layout) the
        messages only lose their reason.
        """
        errors: list[OSError] = []
        ctx = getattr(client, "ctx", None)
        create = getattr(ctx, "call_create", None)
        if ctx is None or create is None:
            return errors

        async def create_recording() -> Any:
            try:
                return await create()
            except OSError as exc:
                errors.append(exc)
                raise

        ctx.call_create = create_recording
        return errors

    def _drop_client(self) -> None:
        client, self._conn = self._conn, None
        if client is not None:
            client.close()
            log.debug("source %r: connection to %s closed", self.name, self._endpoint)

    def _note_request_failure(self, request: ReadRequest, reason: str) -> None:
        key = (request.unit_id, request.table, request.start, request.count)
        if key not in self._failing_requests:
            self._failing_requests.add(key)
            names = ", ".join(p.tag.name for p in request.tags)
            log.warning(
                "source %r: %s %s; tags %s are bad",
                self.name,
                request.describe(),
                reason,
                names,
            )

    def _note_request_success(self, request: ReadRequest) -> None:
        if not self._failing_requests:
            return
        key = (request.unit_id, request.table, request.start, request.count)
        if key in self._failing_requests:
            self._failing_requests.discard(key)
            log.info("source %r: %s readable again", self.name, request.describe())
