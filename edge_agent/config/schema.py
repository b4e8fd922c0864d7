"""The configuration model: frozen, typed data that the loader builds from YAML, and the one
declaration of every key (:func:`~edge_agent.config.kinds.key`: kind, range or pattern,
default, description), from which the loader, the editor schema, the dump and the key reference
in docs/config.md are made.

File paths (``*_file``, ``trust_dir``) are absolute here: the loader resolves a relative path
against ``$CREDENTIALS_DIRECTORY`` when it is set (systemd ``LoadCredential=``), else against the
directory of the configuration file.

Key names are a **contract** (DESIGN §2): extend, never rename. YAML durations (``5s``) become
``*_s`` floats here; YAML keys without a unit suffix map to fields with one (``poll_interval`` →
``poll_interval_s``, ``ideal_cycle_time`` → ``ideal_cycle_time_s``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Final

from yaml.nodes import MappingNode, Node, SequenceNode

from edge_agent.calendars import COUNTRY_PATTERN, country_problem
from edge_agent.config.files import FileKind
from edge_agent.config.issues import join_key
from edge_agent.config.kinds import (
    NAME,
    PORT,
    REGISTER,
    Alias,
    Boolean,
    Checked,
    Choice,
    CodeMap,
    Const,
    Ctx,
    Duration,
    Either,
    Endpoint,
    FilePath,
    Fingerprint,
    Integer,
    Kind,
    ListOf,
    Model,
    Names,
    Number,
    OneOf,
    Opt,
    Pattern,
    Shared,
    Size,
    Str,
    TagRef,
    Text,
    TimeZone,
    TopicPrefix,
    Upper,
    Weekday,
    _Invalid,
    items,
    key,
    name_node,
    only_in,
)

# The domain defines them; importing them from here keeps working.
from edge_agent.domain import (
    ALL_DAYS,
    WEEKDAY_NAMES,
    Convention,
    EnergyUnit,
    MachineState,
    sparkplug_id_problem,
)


class ModbusTable(enum.StrEnum):
    HOLDING = "holding"  # holding registers, function 3
    INPUT = "input"  # input registers, function 4
    COIL = "coil"  # coils, function 1
    DISCRETE = "discrete"  # discrete inputs, function 2


class DataType(enum.StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class ByteOrder(enum.StrEnum):
    """Order of the bytes of a multi-register value, A being the most significant byte.

    ABCD: big-endian words, big-endian bytes (Modbus default). CDAB: word-swapped.
    BADC: byte-swapped inside each word. DCBA: fully little-endian.
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class ModbusTransport(enum.StrEnum):
    """How Modbus frames travel: MBAP over TCP, RTU frames over TCP (serial gateways), or RTU
    over a serial line (RS-485/RS-232)."""

    TCP = "tcp"
    RTU_OVER_TCP = "rtu_over_tcp"
    RTU = "rtu"


class Parity(enum.StrEnum):
    NONE = "N"
    EVEN = "E"
    ODD = "O"


class OnStartupError(enum.StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    DISABLE = "disable"


class OpcuaMode(enum.StrEnum):
    POLL = "poll"  # one batched Read every poll_interval
    SUBSCRIBE = "subscribe"  # monitored items; each poll takes the latest reported values


class MqttProtocol(enum.StrEnum):
    V311 = "3.1.1"
    V5 = "5"


class MqttEncoding(enum.StrEnum):
    """How an MQTT sink encodes what it publishes (``mqtt.encoding``)."""

    JSON = "json"  # the agent's own topics and JSON payloads (docs/mqtt.md)
    SPARKPLUG_B = "sparkplug_b"  # Sparkplug B 3.0 (docs/mqtt.md, "Sparkplug B")


class OpcuaSecurityPolicy(enum.StrEnum):
    """OPC UA security policies (the names of the policy URIs' fragments)."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class OpcuaSecurityMode(enum.StrEnum):
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OperatorLanguage(enum.StrEnum):
    AUTO = "auto"  # the browser's language (Korean or English)
    EN = "en"
    KO = "ko"


class LossCategory(enum.StrEnum):
    """The loss category an operator's stop reason belongs to (the availability losses of the
    six big losses, and the causes outside the machine)."""

    BREAKDOWN = "breakdown"
    SETUP = "setup"  # setup and adjustment
    MINOR_STOP = "minor_stop"
    MATERIAL = "material"  # waiting for material or parts
    PEOPLE = "people"  # no operator
    QUALITY = "quality"  # stopped for a quality check
    OTHER = "other"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


_MODICON: Final = (
    # (first digit, table): 1xxxx discrete inputs, 3xxxx input registers, 4xxxx holding registers.
    # 0xxxx (coils) cannot be told apart: YAML reads 00003 as the integer 3.
    (1, ModbusTable.DISCRETE),
    (3, ModbusTable.INPUT),
    (4, ModbusTable.HOLDING),
)
TABLE_WORDS: Final = {
    ModbusTable.HOLDING: "holding register",
    ModbusTable.INPUT: "input register",
    ModbusTable.COIL: "coil",
    ModbusTable.DISCRETE: "discrete input",
}


def modicon(address: int) -> tuple[ModbusTable, int] | None:
    """The table and 1-based register number that ``address`` names in Modicon notation
    (40003, 400003: holding register 3; 30001: input register 1; 10001: discrete input 1),
    or None when it does not look like it."""
    for digit, table in _MODICON:
        for width in (10_000, 100_000):  # 5-digit (x0001-x9999) and 6-digit (x00001-x65536)
            number = address - digit * width
            if 1 <= number <= (9999 if width == 10_000 else 65536):
                return table, number
    return None


def modicon_hint(address: int) -> str | None:
    found = modicon(address)
    if found is None:
        return None
    table, number = found
    return (
        f"address {address} looks like Modicon notation for {TABLE_WORDS[table]} {number} "
        f"(protocol address {number - 1}); write table: {table.value}, address: {number - 1}"
    )


class _Address(Integer):
    def hint(self, value: int) -> str:
        found = modicon_hint(value) if value > self.high else None  # type: ignore[operator]
        return f": {found}" if found else ""


_CLOCK_RE: Final = r"([01]?[0-9]|2[0-3]):([0-5][0-9])"
_DATE_RE: Final = r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
STR: Final = Str()
SPARKPLUG_ID: Final = Checked(
    sparkplug_id_problem,
    "Sparkplug id: not empty, without '+', '#' or '/' (a topic level)",
    "^[^+#/]+$",
)
DURATION: Final = Shared(Duration(), "duration")
TAG: Final = TagRef()
CLOCK: Final = Shared(
    Pattern(
        _CLOCK_RE,
        lambda m: time(int(m[1]), int(m[2])),
        'a time of day "HH:MM"',
        "time of day",
        'a time of day "HH:MM" (quote it)',
    ),
    "timeOfDay",
)
DATE: Final = Pattern(
    _DATE_RE,
    lambda m: date(int(m[1]), int(m[2]), int(m[3])),
    'a date "YYYY-MM-DD"',
    'date `"YYYY-MM-DD"`',
)
LOCAL_TIME: Final = Pattern(
    f"{_DATE_RE}[T ]{_CLOCK_RE}",
    lambda m: datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5])),
    'a local date and time "YYYY-MM-DDTHH:MM"',
    'local time `"YYYY-MM-DDTHH:MM"`',
    "a local date and time YYYY-MM-DDTHH:MM in the line's timezone",
)
WEEKDAY: Final = Weekday(WEEKDAY_NAMES)
SECRET: Final = Opt(FilePath(FileKind.SECRET))
UNIT_ID: Final = Integer(0, 247)
BACKOFF_INITIAL: Final = "first reconnect delay; doubled after each failure, with jitter"
BACKOFF_MAX: Final = "cap of the reconnect delay; must be >= backoff_initial"
ON_ERROR: Final = "when the first connection fails: keep retrying, stop the agent, or run without"
RANGE: Final = "plausible range after scaling: a value outside it reads bad; numeric types only"


def _numeric(tag: ModbusTag) -> bool:
    return tag.type not in (DataType.BOOL, DataType.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusTag:
    name: str = key(NAME, "unique within the source; the TAG of SOURCE.TAG")
    table: ModbusTable = key(Choice(ModbusTable), "function 3, 4, 1, 2", ModbusTable.HOLDING)
    address: int = key(
        _Address(REGISTER.low, REGISTER.high), "0-based protocol address (40001 is 0)"
    )
    type: DataType = key(
        Choice(DataType),
        "coils and discrete inputs can only be bool",
        DataType.UINT16,
        shown="`uint16`; `bool` for coils and discrete inputs",
    )
    order: ByteOrder = key(Choice(ByteOrder), "byte order of multi-register values", ByteOrder.ABCD)
    length: int = key(
        Integer(0, 125),
        "registers (2 characters each); only for string",
        0,
        shown="required for string",
        applies=lambda tag: tag.type is DataType.STRING,  # one request holds 125 registers
    )
    scale: float = key(Number(), "value = raw × scale + offset; not 0", 1.0, applies=_numeric)
    offset: float = key(Number(), "added after scale", 0.0, applies=_numeric)
    unit_id: int | None = key(Opt(UNIT_ID), "overrides the source's (gateways)", None)
    min_value: float | None = key(Number(), RANGE, None, yaml="min")
    max_value: float | None = key(Number(), RANGE + "; >= min", None, yaml="max")


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialConfig:
    """A serial port for Modbus RTU. Defaults follow the Modbus serial line specification
    (19200 baud, even parity, 8 data bits, 1 stop bit)."""

    port: str = key(STR, "the device, e.g. /dev/ttyUSB0; prefer /dev/serial/by-id/...")
    baudrate: int = key(Integer(50, 4_000_000), "bits per second", 19200)
    parity: Parity = key(Choice(Parity), "none, even, odd", Parity.EVEN)
    stopbits: int = key(Integer(1, 2), "stop bits", 1)
    bytesize: int = key(
        Const(8, says="Modbus RTU needs 8 data bits", base=Integer(5, 8)),
        "RTU frames are 8 data bits",
        8,
    )


def _tcp(source: ModbusSourceConfig) -> bool:
    return source.transport is not ModbusTransport.RTU


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusSourceConfig:
    name: str = key(NAME, "unique among sources; the SOURCE of SOURCE.TAG")
    protocol: str = key(Const("modbus"), "the source's kind", "modbus", required=True)
    transport: ModbusTransport = key(
        Choice(ModbusTransport),
        "tcp, RTU frames over TCP (gateways), or rtu on a serial port",
        ModbusTransport.TCP,
    )
    host: str = key(
        STR, "IP address or host name; required for tcp, rtu_over_tcp", "", applies=_tcp
    )
    port: int = key(PORT, "TCP port; not for rtu", 502, applies=_tcp)
    serial: SerialConfig | None = key(
        Model(SerialConfig), "the serial port and its settings", None, shown="required for rtu"
    )
    unit_id: int = key(UNIT_ID, "Modbus unit (slave) id", 1)
    inter_request_gap_s: float = key(
        Duration(zero=True),
        "quiet time between a response and the next request",
        0.0,
        yaml="inter_request_gap",
    )
    poll_interval_s: float = key(DURATION, "how often all tags are read", 1.0, yaml="poll_interval")
    timeout_s: float = key(
        DURATION, "deadline of one request and of connecting", 2.0, yaml="timeout"
    )
    max_gap: int = key(REGISTER, "unused registers (bits ÷ 16) read over to merge two reads", 16)
    backoff_initial_s: float = key(DURATION, BACKOFF_INITIAL, 1.0, yaml="backoff_initial")
    backoff_max_s: float = key(DURATION, BACKOFF_MAX, 60.0, yaml="backoff_max")
    on_startup_error: OnStartupError = key(Choice(OnStartupError), ON_ERROR, OnStartupError.RETRY)
    tags: tuple[ModbusTag, ...] = key(
        ListOf(
            Model(ModbusTag, elsewhere=lambda: {"node": "applies to opcua tags, not modbus"}),
            least=1,
            names="tag",
            empty="must list at least one tag",
        ),
        "the registers and bits to read",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaTag:
    name: str = key(NAME, "unique within the source; the TAG of SOURCE.TAG")
    node: str = key(
        Text(
            r"(ns=[0-9]+;|nsu=[^;]+;)?[isgb]=[\s\S]+",
            "an OPC UA node id like 'ns=2;s=Line1.State'",
            "node id",
        ),
        "ns=2;s=Line1.State, ns=3;i=1001, nsu=URI;s=... (also g= / b=)",
    )
    min_value: float | None = key(Number(), RANGE.replace(" after scaling", ""), None, yaml="min")
    max_value: float | None = key(Number(), "plausible range; >= min", None, yaml="max")


_CHOSEN = "required when policy is not None"
_PIN = "one of three when policy is not None"


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaSecurityConfig:
    """A secure channel to the server. The server certificate is never trusted on first use:
    exactly one of ``server_cert_file`` (pinned file), ``server_fingerprint`` (pinned SHA-256)
    or ``trust_dir`` (trusted certificates and CAs) is set when the policy is not None."""

    policy: OpcuaSecurityPolicy = key(
        Choice(OpcuaSecurityPolicy),
        "with None no other key is allowed",
        OpcuaSecurityPolicy.NONE,
        required=True,
    )
    mode: OpcuaSecurityMode = key(
        Choice(OpcuaSecurityMode),
        "sign, or sign and encrypt",
        OpcuaSecurityMode.SIGN_AND_ENCRYPT,
        applies=lambda sec: sec.policy is not OpcuaSecurityPolicy.NONE,
    )
    cert_file: str | None = key(
        FilePath(FileKind.CERT), f"the agent's certificate, DER or PEM; {_CHOSEN}", None
    )
    key_file: str | None = key(FilePath(FileKind.KEY), f"its private key; {_CHOSEN}", None)
    server_cert_file: str | None = key(FilePath(FileKind.CERT), f"the PLC's, pinned; {_PIN}", None)
    server_fingerprint: str | None = key(
        Fingerprint(), f"its SHA-256 fingerprint, pinned (64 hex digits); {_PIN}", None
    )
    trust_dir: str | None = key(
        FilePath(FileKind.DIR), f"trusted certificates and CAs, re-read at connect; {_PIN}", None
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaSourceConfig:
    name: str = key(NAME, "unique among sources; the SOURCE of SOURCE.TAG")
    protocol: str = key(Const("opcua"), "the source's kind", "opcua", required=True)
    endpoint: str = key(Endpoint(), "the server's opc.tcp:// URL, with its port")
    username: str | None = key(Opt(STR), "none: anonymous", None)
    password_file: str | None = key(SECRET, "file holding the password", None)
    security: OpcuaSecurityConfig = key(
        Model(OpcuaSecurityConfig),
        "secure channel",
        factory=OpcuaSecurityConfig,
        shown="policy `None`",
    )
    poll_interval_s: float = key(DURATION, "how often all tags are read", 1.0, yaml="poll_interval")
    timeout_s: float = key(
        DURATION, "deadline of one request and of connecting", 5.0, yaml="timeout"
    )
    backoff_initial_s: float = key(DURATION, BACKOFF_INITIAL, 1.0, yaml="backoff_initial")
    backoff_max_s: float = key(DURATION, BACKOFF_MAX, 60.0, yaml="backoff_max")
    on_startup_error: OnStartupError = key(Choice(OnStartupError), ON_ERROR, OnStartupError.RETRY)
    mode: OpcuaMode = key(
        Choice(OpcuaMode),
        "poll: one batched Read each poll; subscribe: monitored items",
        OpcuaMode.POLL,
    )
    publishing_interval_s: float | None = key(
        DURATION,
        "subscribe mode: how often the server sends the changes",
        None,
        yaml="publishing_interval",
        shown="`poll_interval`",
    )
    sampling_interval_s: float | None = key(
        DURATION,
        "subscribe mode: how often the server samples each variable",
        None,
        yaml="sampling_interval",
        shown="`publishing_interval`",
    )
    deadband: float = key(
        Number(0), "subscribe mode: absolute deadband of numeric tags; 0: every change", 0.0
    )
    tags: tuple[OpcuaTag, ...] = key(
        ListOf(
            Model(OpcuaTag, elsewhere=only_in(ModbusTag, OpcuaTag, "modbus tags, not opcua")),
            least=1,
            names="tag",
            empty="must list at least one tag",
        ),
        "the nodes to read",
    )


SourceConfig = ModbusSourceConfig | OpcuaSourceConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Break:
    start: time = key(CLOCK, "inside the shift")
    end: time = key(CLOCK, "not overlapping another break")


@dataclass(frozen=True, slots=True, kw_only=True)
class Shift:
    name: str = key(NAME, "unique within the line; the window.name of reports")
    start: time = key(CLOCK, "local time of the line")
    end: time = key(CLOCK, "end <= start crosses midnight; end == start is 24 h")
    breaks: tuple[Break, ...] = key(ListOf(Model(Break)), "planned stops inside the shift", ())
    # Weekdays (0 = Monday, as date.weekday()) on which the shift *starts*; default every day.
    days: frozenset[int] = key(
        ListOf(WEEKDAY, least=1, unique=True),
        "the weekdays on which the shift starts",
        ALL_DAYS,
        shown="every day",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraDay:
    """A working day outside the usual week (e.g. a Saturday worked to catch up)."""

    date: date = key(DATE, "the local date")
    like: int | None = key(WEEKDAY, "run the shifts of this weekday", None, shown="every shift")


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintenance:
    """A dated planned-maintenance window: planned stop, not planned production time."""

    start: datetime = key(LOCAL_TIME, "naive, local time of the line's timezone")
    end: datetime = key(LOCAL_TIME, "after start")
    reason: str | None = key(STR, "free text", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubstituteDay:
    """A day off the site gives instead of a public holiday it works."""

    instead_of: date = key(DATE, "the public holiday of `country` that is worked instead")
    date: date = key(DATE, "the local date taken off")


COUNTRY: Final = Checked(
    country_problem, "a country of the holidays package, e.g. KR", COUNTRY_PATTERN
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Calendar:
    """Dated exceptions to a line's weekly shift pattern."""

    country: str | None = key(
        Opt(COUNTRY),
        "no shift starts on this country's public holidays (ISO 3166 code, e.g. KR; from the"
        " holidays package)",
        None,
        shown="none",
    )
    holidays: tuple[date, ...] = key(
        ListOf(DATE), "no shift starts on these local dates (the site's own holidays)", ()
    )
    worked_holidays: tuple[date, ...] = key(
        ListOf(DATE), "public holidays of `country` worked like any other day of their weekday", ()
    )
    substitute_days: tuple[SubstituteDay, ...] = key(
        ListOf(Model(SubstituteDay)),
        "days off the site gives instead of public holidays it works",
        (),
    )
    extra_days: tuple[ExtraDay, ...] = key(
        ListOf(Either(DATE, lambda day: ExtraDay(date=day), Model(ExtraDay))),
        "shifts start on these dates whatever the weekday; not also a holiday",
        (),
    )
    maintenance: tuple[Maintenance, ...] = key(
        ListOf(Model(Maintenance)), "planned-maintenance windows", ()
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSignal:
    tag: str = key(TAG, "an integer state code")
    map: dict[int, MachineState] = key(
        CodeMap(Choice(MachineState, exclude=(MachineState.UNKNOWN,)), "states", "state code"),
        "state code to state",
    )
    unmapped: MachineState = key(
        Choice(MachineState),
        "what a code the map lacks means (warning unmapped_state_code either way)",
        MachineState.UNKNOWN,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonSignal:
    tag: str = key(TAG, "an integer reason (downtime cause) code")
    map: dict[int, str] = key(
        CodeMap(STR, "reason names"), "an unmapped code is reported as code N", factory=dict
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Product:
    name: str = key(STR, "the product's name in reports")
    ideal_cycle_time_s: float = key(DURATION, "seconds per part", yaml="ideal_cycle_time")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductSignal:
    tag: str = key(TAG, "an integer product / recipe code")
    map: dict[int, Product] = key(
        CodeMap(Model(Product), "products"), "an unmapped code uses the line's ideal cycle time"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterSignal:
    tag: str = key(TAG, "the PLC counter")
    rollover: int | None = key(
        Opt(Integer(2)), "the counter's modulus, e.g. 65536", None, shown="never wraps"
    )


COUNTER: Final = Either(TAG, lambda tag: CounterSignal(tag=tag), Model(CounterSignal))


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergySignal:
    """An active-energy counter of a power meter (imported energy, never decreasing except by a
    wrap or a meter reset)."""

    tag: str = key(TAG, "the meter's energy counter")
    unit: EnergyUnit = key(Choice(EnergyUnit), "the counter's unit", EnergyUnit.KWH)
    rollover: float | None = key(
        Opt(Number(0, above=True)), "the counter's modulus in its unit", None, shown="never wraps"
    )
    # Wrap plausibility: a modular delta above max_power × elapsed × 2 + slack is a reset.
    max_power_kw: float | None = key(
        Opt(Number(0, above=True)),
        "the most the line draws, in kW (tells a wrap from a reset)",
        None,
        yaml="max_power",
        shown="half the rollover is a wrap",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderSignal:
    """Production order data read from PLC tags (string or number tags)."""

    id: str = key(TAG, "the order id; an empty value (or 0) means no order")
    target: str | None = key(TAG, "the target good quantity", None)
    product: str | None = key(TAG, "the product code / recipe", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmissionFactor:
    """Grid emission factor for CO2e figures; the source is mandatory so reports can cite it."""

    valid_from: date | None = key(
        Opt(DATE),
        "the local date from which it is in force (a report uses the factor in force at its"
        " window's start)",
        None,
        shown="always",
    )
    kg_co2e_per_kwh: float = key(Number(0), "kg CO2e per kWh of the grid")
    source: str = key(STR, "where the figure comes from, published with every CO2e figure")


@dataclass(frozen=True, slots=True, kw_only=True)
class Signals:
    state: StateSignal | None = key(Model(StateSignal), "a PLC state code", None)
    running: str | None = key(TAG, "a boolean instead of state", None)
    total_count: CounterSignal = key(COUNTER, "all parts made")
    reject_count: CounterSignal | None = key(COUNTER, "rejected parts; good = total - reject", None)
    good_count: CounterSignal | None = key(COUNTER, "good parts, instead of reject_count", None)
    reason: ReasonSignal | None = key(Model(ReasonSignal), "a downtime reason code", None)
    product: ProductSignal | None = key(Model(ProductSignal), "a product / recipe code", None)
    energy: EnergySignal | None = key(
        Either(TAG, lambda tag: EnergySignal(tag=tag), Model(EnergySignal)),
        "the line's active-energy counter",
        None,
    )
    power: str | None = key(TAG, "active power in kW (live display only)", None)
    order: OrderSignal | None = key(Model(OrderSignal), "the current production order", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopReason:
    """A reason an operator may give a stop on the operator page (docs/operator.md)."""

    name: str = key(NAME, "the reason's name in loss_time_by_reason_s")
    category: LossCategory = key(Choice(LossCategory), "its loss category", LossCategory.OTHER)
    label: str | None = key(Opt(STR), "what the page shows", None, shown="the name")


@dataclass(frozen=True, slots=True, kw_only=True)
class LineConfig:
    name: str = key(NAME, "unique; third MQTT topic level")
    timezone: str = key(TimeZone(), "the shifts' local time, e.g. Asia/Seoul", "UTC")
    ideal_cycle_time_s: float = key(
        DURATION, "seconds per part at the ideal rate", yaml="ideal_cycle_time"
    )
    stop_after_s: float | None = key(
        Opt(DURATION),
        "without a state signal: stopped after this long without a part",
        None,
        yaml="stop_after",
        shown="5 × `ideal_cycle_time`",
    )
    micro_stop_max_s: float | None = key(
        Opt(DURATION),
        "a stop shorter than this is also counted as a micro-stop",
        None,
        yaml="micro_stop_max",
        shown="max(60 s, 2 × `stop_after`)",
    )
    min_data_coverage: float = key(
        Number(0.0, 1.0), "below it, reports carry the low_data_coverage warning", 0.9
    )
    planned_states: frozenset[MachineState] = key(
        ListOf(
            Choice(MachineState, exclude=(MachineState.UNKNOWN, MachineState.RUNNING)), unique=True
        ),
        "states excluded from planned production time (with convention planned_downtime_loss:"
        " availability losses instead)",
        frozenset({MachineState.PLANNED_STOP}),
    )
    stop_reasons: tuple[StopReason, ...] = key(
        ListOf(Model(StopReason), names="reason"),
        "what operators may name a stop with (the operator page)",
        (),
    )
    operator_reason_wins: bool = key(
        Boolean(),
        "true: an operator's stop reason also replaces the reason a PLC reason signal gave"
        " (default: the PLC's reason wins)",
        False,
    )
    convention: Convention = key(
        Choice(Convention),
        "loss convention: iso22400, planned_downtime_loss (SMRP) or six_big_losses (TPM)",
        Convention.ISO22400,
    )
    shifts: tuple[Shift, ...] = key(
        ListOf(Model(Shift), names="shift"),
        "the weekly pattern",
        (),
        shown="one shift covering the whole day",
    )
    calendar: Calendar = key(
        Model(Calendar), "holidays, extra days, maintenance", factory=Calendar, shown="none"
    )
    signals: Signals = key(Model(Signals), "the PLC tags the KPIs come from")
    emission_factor: EmissionFactor | None = key(
        Opt(Model(EmissionFactor)), "grid emission factor; none: CO2e fields are null", None
    )
    emission_factors: tuple[EmissionFactor, ...] = key(
        ListOf(Model(EmissionFactor)),
        "dated grid emission factors, instead of emission_factor: the one in force at a"
        " window's start applies",
        (),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    ca_file: str | None = key(
        Opt(FilePath(FileKind.CA)), "CA bundle of the broker", None, shown="the system trust store"
    )
    cert_file: str | None = key(Opt(FilePath(FileKind.CERT)), "client certificate", None)
    key_file: str | None = key(
        Opt(FilePath(FileKind.KEY)), "its private key; needs cert_file", None
    )
    insecure: bool = key(Boolean(), "skip the host name check (testing only)", False)


def _topics() -> Collection[str]:
    from edge_agent.sharing import LINE_TOPICS  # noqa: PLC0415 (sharing imports this module)

    return LINE_TOPICS


def _fields() -> Collection[str]:
    from edge_agent.sharing import PAYLOAD_FIELDS  # noqa: PLC0415 (sharing imports this module)

    return PAYLOAD_FIELDS


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareConfig:
    """What a sink receives (``mqtt[].share``): allow-lists; ``None`` allows everything.

    Messages of other lines or topics are never given to the sink; payloads keep only
    ``fields`` plus the fields that identify them (``edge_agent.sharing.CORE_FIELDS``).
    """

    lines: frozenset[str] | None = key(
        Names("line"), "only these lines' messages", None, shown="all lines"
    )
    topics: frozenset[str] | None = key(
        Names("topic", _topics), "only these topics", None, shown="all"
    )
    fields: frozenset[str] | None = key(
        Names("payload field", _fields), "top-level payload fields kept", None, shown="all"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SparkplugConfig:
    """The Sparkplug B identity of a sink with ``encoding: sparkplug_b`` (``mqtt.sparkplug``)."""

    group_id: str | None = key(Opt(SPARKPLUG_ID), "the Sparkplug group id", None, shown="the site")
    edge_node_id: str = key(SPARKPLUG_ID, "the edge node id, unique in its group", "edge-agent")


DEFAULT_SINK_NAME = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    # Names the sink in metrics, logs and its outbox file (outbox-{name}.sqlite, except the
    # first sink's: outbox.sqlite). Required in the list form of `mqtt`.
    name: str = key(NAME, "the sink's name; required in the list form", DEFAULT_SINK_NAME)
    host: str = key(STR, "broker host name or address")
    port: int = key(PORT, "usually 8883 with TLS", 1883)
    client_id: str | None = key(Opt(STR), "unique on the broker", None, shown="`edge-agent-{site}`")
    username: str | None = key(Opt(STR), "broker user", None)
    password_file: str | None = key(SECRET, "file holding the password", None)
    tls: TlsConfig | None = key(
        Either(
            Boolean(),
            lambda on: TlsConfig() if on else None,
            Model(TlsConfig),
            "a mapping, true or false",
        ),
        "true: TLS with the system trust store",
        None,
        shown="plain TCP",
    )
    topic_prefix: str = key(TopicPrefix(), "first topic level(s)", "edge-agent")
    keepalive_s: float = key(
        Shared(Duration(most=65535, why="an MQTT limit"), "keepalive"),
        "MQTT keepalive",
        30.0,
        yaml="keepalive",
    )
    protocol: MqttProtocol = key(
        Alias(
            {
                "3.1.1": MqttProtocol.V311,
                "311": MqttProtocol.V311,
                "5": MqttProtocol.V5,
                "5.0": MqttProtocol.V5,
            },
            '"3.1.1" or 5',
        ),
        "MQTT version",
        MqttProtocol.V311,
    )
    qos: int = key(Integer(0, 2), "QoS of KPI and state messages", 1)
    publish_interval_s: float = key(
        DURATION, "period of the live kpi snapshot", 5.0, yaml="publish_interval"
    )
    timeout_s: float = key(
        DURATION, "deadline to connect and for acknowledgements", 10.0, yaml="timeout"
    )
    backoff_initial_s: float = key(DURATION, BACKOFF_INITIAL, 1.0, yaml="backoff_initial")
    backoff_max_s: float = key(DURATION, BACKOFF_MAX, 60.0, yaml="backoff_max")
    # False: a persistent session (MQTT 3.1.1 clean_session=0; MQTT 5 clean start off with a
    # session expiry of session_expiry_s), so the broker keeps the client's session.
    clean_session: bool = key(Boolean(), "false: a persistent session (not with sparkplug_b)", True)
    session_expiry_s: float = key(
        Duration(most=0xFFFFFFFF, why="an MQTT 5 limit"),
        "MQTT 5, clean_session false: how long the broker keeps the session",
        3600.0,
        yaml="session_expiry",
    )
    # paho's message ids are 16-bit, and the sink hands paho up to twice this many.
    max_inflight: int = key(Integer(1, 32767), "publishes awaiting their PUBACK at once", 100)
    # Whoever can publish on the broker can set the line's current order: plant broker only.
    commands: bool = key(Boolean(), "accept order commands (first sink, plant broker only)", False)
    share: ShareConfig | None = key(
        Model(ShareConfig), "what this sink receives", None, shown="everything"
    )
    encoding: MqttEncoding = key(Choice(MqttEncoding), "json or Sparkplug B", MqttEncoding.JSON)
    sparkplug: SparkplugConfig = key(
        Model(SparkplugConfig), "the Sparkplug B identity", factory=SparkplugConfig
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusConfig:
    enabled: bool = key(Boolean(), "serve GET /metrics", True)
    host: str = key(STR, "listen address; 0.0.0.0 for a remote Prometheus", "127.0.0.1")
    port: int = key(PORT, "listen port", 9108)
    cert_file: str | None = key(Opt(FilePath(FileKind.CERT)), "HTTPS; needs key_file", None)
    key_file: str | None = key(
        Opt(FilePath(FileKind.KEY)), "its private key; needs cert_file", None
    )
    username: str | None = key(Opt(STR), "HTTP basic auth; needs password_file", None)
    password_file: str | None = key(SECRET, "the basic-auth password; needs username", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorStation:
    """One operator station (a tablet at the line): its name, its lines and its PIN."""

    name: str = key(NAME, "the station's name in the log and the audit events")
    lines: frozenset[str] = key(Names("line"), "the lines it sees and changes")
    pin_file: str = key(
        FilePath(FileKind.SECRET), "file holding the station's PIN (4 to 12 digits)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorConfig:
    """The operator page (docs/operator.md): off unless ``enabled``."""

    enabled: bool = key(Boolean(), "serve the operator page", False)
    host: str = key(STR, "listen address; 0.0.0.0 for tablets on the plant network", "127.0.0.1")
    port: int = key(PORT, "listen port", 8088)
    cert_file: str | None = key(Opt(FilePath(FileKind.CERT)), "HTTPS; needs key_file", None)
    key_file: str | None = key(
        Opt(FilePath(FileKind.KEY)), "its private key; needs cert_file", None
    )
    language: OperatorLanguage = key(
        Choice(OperatorLanguage), "auto (the browser's), en or ko", OperatorLanguage.AUTO
    )
    stations: tuple[OperatorStation, ...] = key(
        ListOf(Model(OperatorStation), names="station"), "who may use the page", ()
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    """How much the outbox may hold while the broker is away. ``0``: no limit.

    Above ``max_messages`` / ``max_bytes`` the oldest live ``kpi`` snapshots are dropped (each
    line's newest is kept); above ``hard_max_messages`` / ``hard_max_bytes`` the oldest messages
    of every topic are. Bytes count payloads, not the file's own overhead.
    """

    max_messages: int = key(Integer(0), "soft limit (oldest kpi snapshots go); 0: none", 100_000)
    max_bytes: int = key(Size(), "soft limit on payload bytes", 100 * 1024 * 1024)
    hard_max_messages: int = key(Integer(0), "hard limit (oldest of any topic go)", 1_000_000)
    hard_max_bytes: int = key(Size(), "hard limit on payload bytes", 1024 * 1024 * 1024)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryConfig:
    """The raw-sample history (``history.sqlite`` in the state directory), for replay and audit."""

    enabled: bool = key(Boolean(), "record raw samples", True)
    keyframe_interval_s: float = key(
        DURATION,
        "every tag's current value again, so an export can start anywhere",
        300.0,
        yaml="keyframe_interval",
    )
    retention_s: float = key(
        DURATION, "rows older than this are deleted", 30 * 86400.0, yaml="retention"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    # Absolute (a relative one is resolved against the config file's directory).
    dir: str | None = key(
        Opt(FilePath(local=True)),
        "outbox, engine state, history",
        None,
        shown="`$STATE_DIRECTORY`, else `state` next to the configuration file",
    )
    outbox: OutboxConfig = key(Model(OutboxConfig), "outbox limits", factory=OutboxConfig)
    history: HistoryConfig = key(
        Either(
            Boolean(),
            lambda on: HistoryConfig(enabled=on),
            Model(HistoryConfig),
            "a mapping, true or false",
        ),
        "the raw-sample history; true / false: short for {enabled: ...}",
        factory=HistoryConfig,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: str = key(Upper(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")), "any case", "INFO")
    format: LogFormat = key(
        Choice(LogFormat), "text lines, or one JSON object a line", LogFormat.TEXT
    )


class _Sinks(Kind[Any]):
    """``mqtt``: one sink as a mapping, or a list of named sinks, the first being the primary.
    Gives a non-empty tuple."""

    text = "mapping or list"
    sink = Model(MqttConfig)

    def parse(self, ctx: Ctx, node: Node, path: str) -> Any:
        if not isinstance(node, SequenceNode):
            sink = self.sink.parse(ctx, node, path)
            return sink if isinstance(sink, _Invalid) else (sink,)
        kind = ListOf(
            self.sink,
            least=1,
            names="sink",
            empty="must list at least one sink (or be a mapping for a single one)",
        )
        for item, item_path in items(ctx, node, path) or []:
            if isinstance(item, MappingNode) and name_node(ctx, item, item_path) is None:
                ctx.add(item, join_key(item_path, "name"), "required key missing")
        return kind.parse(ctx, node, path)

    def schema(self, b: Any) -> dict[str, Any]:
        one = self.sink.schema(b)
        many = {"type": "array", "minItems": 1, "items": {"allOf": [one, {"required": ["name"]}]}}
        return {"oneOf": [one, many]}


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    version: int = key(Const(1, "the only version this agent reads"), "must be 1", 1, required=True)
    site: str = key(NAME, "the plant; second MQTT topic level")
    sources: tuple[SourceConfig, ...] = key(
        ListOf(
            OneOf(
                "protocol",
                {
                    "modbus": Model(
                        ModbusSourceConfig,
                        elsewhere=only_in(
                            OpcuaSourceConfig, ModbusSourceConfig, "opcua sources, not modbus"
                        ),
                    ),
                    "opcua": Model(
                        OpcuaSourceConfig,
                        elsewhere=only_in(
                            ModbusSourceConfig, OpcuaSourceConfig, "modbus sources, not opcua"
                        ),
                    ),
                },
            ),
            names="source",
        ),
        "PLC connections; may be left out for replay",
        (),
    )
    lines: tuple[LineConfig, ...] = key(
        ListOf(Model(LineConfig), least=1, names="line", empty="must list at least one line"),
        "production lines",
    )
    # The first (primary) MQTT sink: the engine's state lives in its outbox.
    mqtt: MqttConfig = key(_Sinks(), "one sink, or a list of named sinks (the first is primary)")
    # Further sinks, from the list form of `mqtt` (`mqtt: [{name: plant, ...}, {name: ...}]`).
    mqtt_extra: tuple[MqttConfig, ...] = ()
    prometheus: PrometheusConfig = key(
        Model(PrometheusConfig), "the metrics endpoint", factory=PrometheusConfig
    )
    storage: StorageConfig = key(Model(StorageConfig), "the state directory", factory=StorageConfig)
    operator: OperatorConfig = key(
        Model(OperatorConfig), "the operator page at the line", factory=OperatorConfig
    )
    logging: LoggingConfig = key(
        Model(LoggingConfig), "log level and format", factory=LoggingConfig
    )
    path: str = "<memory>"  # where it was loaded from, for messages

    @property
    def mqtt_sinks(self) -> tuple[MqttConfig, ...]:
        """Every MQTT sink, the primary (``mqtt``) first."""
        return (self.mqtt, *self.mqtt_extra)


ROOT: Final = Model(AgentConfig, extensions=True)
