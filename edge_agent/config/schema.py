"""The configuration model: frozen, typed data that the loader builds from YAML.

Key names are a **contract** (DESIGN §2): extend, never rename. YAML durations (``5s``) become
``*_s`` floats here; YAML keys without a unit suffix map to fields with one (``poll_interval`` →
``poll_interval_s``, ``ideal_cycle_time`` → ``ideal_cycle_time_s``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import time


class MachineState(enum.StrEnum):
    """Machine state categories (DESIGN §3; ISO 22400 loss model)."""

    RUNNING = "running"
    IDLE = "idle"
    FAULT = "fault"
    PLANNED_STOP = "planned_stop"
    CHANGEOVER = "changeover"
    STARVED = "starved"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"  # no data: never configured, produced by the engine only


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


class OnStartupError(enum.StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    DISABLE = "disable"


class MqttProtocol(enum.StrEnum):
    V311 = "3.1.1"
    V5 = "5"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusTag:
    name: str
    table: ModbusTable = ModbusTable.HOLDING
    address: int  # 0-based protocol address
    type: DataType = DataType.UINT16
    order: ByteOrder = ByteOrder.ABCD
    length: int = 0  # registers, for type string only
    scale: float = 1.0  # value = raw * scale + offset (numeric types only)
    offset: float = 0.0
    unit_id: int | None = None  # overrides the source's unit_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusSourceConfig:
    name: str
    protocol: str = "modbus"
    host: str
    port: int = 502
    unit_id: int = 1
    poll_interval_s: float = 1.0
    timeout_s: float = 2.0
    max_gap: int = 16  # registers (or bits ×16) read over to save a request
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    on_startup_error: OnStartupError = OnStartupError.RETRY
    tags: tuple[ModbusTag, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaTag:
    name: str
    node: str  # node id as a string, e.g. "ns=2;s=Line1.TotalCount"


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaSourceConfig:
    name: str
    protocol: str = "opcua"
    endpoint: str  # opc.tcp://host:port/path
    username: str | None = None
    password_file: str | None = None
    poll_interval_s: float = 1.0
    timeout_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    on_startup_error: OnStartupError = OnStartupError.RETRY
    tags: tuple[OpcuaTag, ...]


SourceConfig = ModbusSourceConfig | OpcuaSourceConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Break:
    start: time
    end: time


@dataclass(frozen=True, slots=True, kw_only=True)
class Shift:
    name: str
    start: time
    end: time  # end <= start means the shift crosses midnight; start == end is 24 h
    breaks: tuple[Break, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSignal:
    tag: str  # SOURCE.TAG
    map: dict[int, MachineState]


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterSignal:
    tag: str  # SOURCE.TAG
    rollover: int | None = None  # the counter's modulus, e.g. 65536; None: never wraps


@dataclass(frozen=True, slots=True, kw_only=True)
class Signals:
    state: StateSignal | None = None
    running: str | None = None  # SOURCE.TAG of a boolean
    total_count: CounterSignal
    reject_count: CounterSignal | None = None
    good_count: CounterSignal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LineConfig:
    name: str
    timezone: str = "UTC"
    ideal_cycle_time_s: float
    stop_after_s: float | None = None  # None: 5 × ideal cycle time
    planned_states: frozenset[MachineState] = frozenset({MachineState.PLANNED_STOP})
    shifts: tuple[Shift, ...] = ()  # empty: the whole day is one shift
    signals: Signals


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip the hostname check (never by default)


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    host: str
    port: int = 1883
    client_id: str | None = None  # None: "edge-agent-{site}"
    username: str | None = None
    password_file: str | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "edge-agent"
    keepalive_s: float = 30.0
    protocol: MqttProtocol = MqttProtocol.V311
    qos: int = 1
    publish_interval_s: float = 5.0
    timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryConfig:
    """The raw-sample history (``history.sqlite`` in the state directory), for replay and audit."""

    enabled: bool = True
    keyframe_interval_s: float = 300.0  # every tag's current value, so an export can start anywhere
    retention_s: float = 30 * 86400.0  # rows older than this are deleted


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    # None: $STATE_DIRECTORY (systemd), else ./state
    dir: str | None = None
    history: HistoryConfig = field(default_factory=HistoryConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: str = "INFO"
    format: LogFormat = LogFormat.TEXT


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    version: int = 1
    site: str
    sources: tuple[SourceConfig, ...] = ()
    lines: tuple[LineConfig, ...]
    mqtt: MqttConfig
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    path: str = "<memory>"  # where it was loaded from, for messages
