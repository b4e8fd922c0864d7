"""The configuration model: frozen, typed data that the loader builds from YAML.

File paths (``*_file``, ``trust_dir``) are absolute here: the loader resolves a relative path
against ``$CREDENTIALS_DIRECTORY`` when it is set (systemd ``LoadCredential=``), else against the
directory of the configuration file.

Key names are a **contract** (DESIGN §2): extend, never rename. YAML durations (``5s``) become
``*_s`` floats here; YAML keys without a unit suffix map to fields with one (``poll_interval`` →
``poll_interval_s``, ``ideal_cycle_time`` → ``ideal_cycle_time_s``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime, time

# The domain defines them; importing them from here keeps working.
from edge_agent.domain import ALL_DAYS, EnergyUnit, MachineState


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
    min_value: float | None = None  # YAML `min`: a smaller value is reported as BAD
    max_value: float | None = None  # YAML `max`: a larger value is reported as BAD


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialConfig:
    """A serial port for Modbus RTU. Defaults follow the Modbus serial line specification
    (19200 baud, even parity, 8 data bits, 1 stop bit)."""

    port: str  # e.g. /dev/ttyUSB0, /dev/serial/by-id/...
    baudrate: int = 19200
    parity: Parity = Parity.EVEN
    stopbits: int = 1
    bytesize: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusSourceConfig:
    name: str
    protocol: str = "modbus"
    transport: ModbusTransport = ModbusTransport.TCP
    host: str = ""  # required for tcp and rtu_over_tcp; empty for rtu
    port: int = 502
    serial: SerialConfig | None = None  # required for rtu, None otherwise
    unit_id: int = 1
    inter_request_gap_s: float = 0.0  # quiet time between a response and the next request
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
    min_value: float | None = None  # YAML `min`: a smaller value is reported as BAD
    max_value: float | None = None  # YAML `max`: a larger value is reported as BAD


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaSecurityConfig:
    """A secure channel to the server. The server certificate is never trusted on first use:
    exactly one of ``server_cert_file`` (pinned file), ``server_fingerprint`` (pinned SHA-256)
    or ``trust_dir`` (trusted certificates and CAs) is set when the policy is not None."""

    policy: OpcuaSecurityPolicy = OpcuaSecurityPolicy.NONE
    mode: OpcuaSecurityMode = OpcuaSecurityMode.SIGN_AND_ENCRYPT
    cert_file: str | None = None  # the agent's application instance certificate (DER or PEM)
    key_file: str | None = None  # its private key (PEM or DER, unencrypted)
    server_cert_file: str | None = None
    server_fingerprint: str | None = None  # normalised "AB:CD:..." (64 hex digits)
    trust_dir: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcuaSourceConfig:
    name: str
    protocol: str = "opcua"
    endpoint: str  # opc.tcp://host:port/path
    username: str | None = None
    password_file: str | None = None
    security: OpcuaSecurityConfig = field(default_factory=OpcuaSecurityConfig)
    poll_interval_s: float = 1.0
    timeout_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    on_startup_error: OnStartupError = OnStartupError.RETRY
    mode: OpcuaMode = OpcuaMode.POLL
    publishing_interval_s: float | None = None  # subscribe mode; None: poll_interval
    sampling_interval_s: float | None = None  # subscribe mode; None: publishing interval
    deadband: float = 0.0  # subscribe mode; absolute deadband of numeric tags, 0: every change
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
    # Weekdays (0 = Monday, as date.weekday()) on which the shift *starts*; default every day.
    days: frozenset[int] = ALL_DAYS


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraDay:
    """A working day outside the usual week (e.g. a Saturday worked to catch up)."""

    date: date
    like: int | None = None  # follow the shifts of this weekday (0 = Monday); None: all shifts


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintenance:
    """A dated planned-maintenance window: planned stop, not planned production time."""

    start: datetime  # naive, local time of the line's timezone
    end: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Calendar:
    """Dated exceptions to a line's weekly shift pattern."""

    holidays: tuple[date, ...] = ()  # no shift starts on these local dates
    extra_days: tuple[ExtraDay, ...] = ()  # shifts start on these dates whatever the weekday
    maintenance: tuple[Maintenance, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSignal:
    tag: str  # SOURCE.TAG
    map: dict[int, MachineState]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonSignal:
    tag: str  # SOURCE.TAG of an integer reason (downtime cause) code
    map: dict[int, str]  # code -> reason name; an unmapped code is reported as "code N"


@dataclass(frozen=True, slots=True, kw_only=True)
class Product:
    name: str
    ideal_cycle_time_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductSignal:
    tag: str  # SOURCE.TAG of an integer product / recipe code
    map: dict[int, Product]  # an unmapped code uses the line's ideal cycle time


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterSignal:
    tag: str  # SOURCE.TAG
    rollover: int | None = None  # the counter's modulus, e.g. 65536; None: never wraps


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergySignal:
    """An active-energy counter of a power meter (imported energy, never decreasing except by a
    wrap or a meter reset)."""

    tag: str  # SOURCE.TAG
    unit: EnergyUnit = EnergyUnit.KWH
    rollover: float | None = None  # the counter's modulus in its own unit; None: never wraps
    # Wrap plausibility: a modular delta above max_power × elapsed × 2 + slack is a reset.
    # None: any modular delta up to half the rollover is a wrap.
    max_power_kw: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderSignal:
    """Production order data read from PLC tags (string or number tags)."""

    id: str  # SOURCE.TAG of the order id; an empty value (or 0) means no order
    target: str | None = None  # SOURCE.TAG of the target (good) quantity
    product: str | None = None  # SOURCE.TAG of the product code / recipe


@dataclass(frozen=True, slots=True, kw_only=True)
class EmissionFactor:
    """Grid emission factor for CO2e figures; the source is mandatory so reports can cite it."""

    kg_co2e_per_kwh: float
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Signals:
    state: StateSignal | None = None
    running: str | None = None  # SOURCE.TAG of a boolean
    total_count: CounterSignal
    reject_count: CounterSignal | None = None
    good_count: CounterSignal | None = None
    reason: ReasonSignal | None = None
    product: ProductSignal | None = None
    energy: EnergySignal | None = None
    power: str | None = None  # SOURCE.TAG of the active power in kW (live display only)
    order: OrderSignal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LineConfig:
    name: str
    timezone: str = "UTC"
    ideal_cycle_time_s: float
    stop_after_s: float | None = None  # None: 5 × ideal cycle time
    # Stops shorter than this are also counted as micro-stops. None: max(60 s, 2 × stop_after).
    micro_stop_max_s: float | None = None
    min_data_coverage: float = 0.9  # below it, reports carry the low_data_coverage warning
    planned_states: frozenset[MachineState] = frozenset({MachineState.PLANNED_STOP})
    shifts: tuple[Shift, ...] = ()  # empty: the whole day is one shift
    calendar: Calendar = field(default_factory=Calendar)
    signals: Signals
    emission_factor: EmissionFactor | None = None  # None: CO2e fields are null, with a note


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip the hostname check (never by default)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareConfig:
    """What a sink receives (``mqtt[].share``): allow-lists; ``None`` allows everything.

    Messages of other lines or topics are never given to the sink; payloads keep only
    ``fields`` plus the fields that identify them (``edge_agent.sharing.CORE_FIELDS``).
    """

    lines: frozenset[str] | None = None
    topics: frozenset[str] | None = None  # topic suffixes: edge_agent.sharing.LINE_TOPICS
    fields: frozenset[str] | None = None  # top-level payload fields


@dataclass(frozen=True, slots=True, kw_only=True)
class SparkplugConfig:
    """The Sparkplug B identity of a sink with ``encoding: sparkplug_b`` (``mqtt.sparkplug``)."""

    group_id: str | None = None  # None: the site
    edge_node_id: str = "edge-agent"


DEFAULT_SINK_NAME = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    # Names the sink in metrics, logs and its outbox file (outbox-{name}.sqlite, except the
    # first sink's: outbox.sqlite). Required in the list form of `mqtt`.
    name: str = DEFAULT_SINK_NAME
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
    # False: a persistent session (MQTT 3.1.1 clean_session=0; MQTT 5 clean start off with a
    # session expiry of session_expiry_s), so the broker keeps the client's session across
    # reconnects.
    clean_session: bool = True
    session_expiry_s: float = 3600.0
    max_inflight: int = 100  # publishes awaiting PUBACK at once (also the client's queue bound)
    # Accept order commands on {topic_prefix}/{site}/{line}/cmd/order. Meant for the plant's own
    # broker only: whoever can publish there can set the line's current order.
    commands: bool = False
    share: ShareConfig | None = None  # None: the sink receives everything
    # json: the agent's topics and payloads; sparkplug_b: Sparkplug B (needs the `sparkplug`
    # extra), with the identity in `sparkplug`.
    encoding: MqttEncoding = MqttEncoding.JSON
    sparkplug: SparkplugConfig = field(default_factory=SparkplugConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108
    cert_file: str | None = None  # HTTPS when set (with key_file)
    key_file: str | None = None
    username: str | None = None  # HTTP basic auth when set
    password_file: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    """How much the outbox may hold while the broker is away. ``0``: no limit.

    Above ``max_messages`` / ``max_bytes`` the oldest live ``kpi`` snapshots are dropped (each
    line's newest is kept); above ``hard_max_messages`` / ``hard_max_bytes`` the oldest messages
    of every topic are. Bytes count payloads, not the file's own overhead.
    """

    max_messages: int = 100_000
    max_bytes: int = 100 * 1024 * 1024
    hard_max_messages: int = 1_000_000
    hard_max_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryConfig:
    """The raw-sample history (``history.sqlite`` in the state directory), for replay and audit."""

    enabled: bool = True
    keyframe_interval_s: float = 300.0  # every tag's current value, so an export can start anywhere
    retention_s: float = 30 * 86400.0  # rows older than this are deleted


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    # Absolute (a relative one is resolved against the config file's directory).
    # None: $STATE_DIRECTORY (systemd), else `state` next to the configuration file.
    dir: str | None = None
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
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
    mqtt: MqttConfig  # the first (primary) MQTT sink: the engine's state lives in its outbox
    # Further sinks, from the list form of `mqtt` (`mqtt: [{name: plant, ...}, {name: ...}]`).
    mqtt_extra: tuple[MqttConfig, ...] = ()
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    path: str = "<memory>"  # where it was loaded from, for messages

    @property
    def mqtt_sinks(self) -> tuple[MqttConfig, ...]:
        """Every MQTT sink, the primary (``mqtt``) first."""
        return (self.mqtt, *self.mqtt_extra)
