"""Rules about one configuration object: its keys together (``backoff_max`` >= ``backoff_initial``,
what a Modbus string tag needs, what a secure OPC UA channel needs, ...). Each runs on the
checked keys of one mapping before its dataclass is built (:func:`edge_agent.config.kinds.rule`);
rules across objects are in :mod:`edge_agent.config.references`."""

from __future__ import annotations

from datetime import date

from yaml.nodes import Node

from edge_agent import calendars
from edge_agent.config.issues import join_index, join_key
from edge_agent.config.kinds import REGISTER, Ctx, Parsed, declared, rule
from edge_agent.config.schema import (
    AgentConfig,
    Calendar,
    DataType,
    EmissionFactor,
    LineConfig,
    Maintenance,
    ModbusSourceConfig,
    ModbusTable,
    ModbusTag,
    ModbusTransport,
    MqttConfig,
    MqttEncoding,
    OpcuaSecurityConfig,
    OpcuaSecurityPolicy,
    OpcuaSourceConfig,
    OpcuaTag,
    OperatorConfig,
    OutboxConfig,
    PrometheusConfig,
    Signals,
    TlsConfig,
    modicon_hint,
)
from edge_agent.domain import Convention
from edge_agent.engine.stops import OPERATOR_SOURCE
from edge_agent.sinks import sparkplug

# Lines one agent serves with its engine step well inside the 1 s tick on 2 cores (measured:
# docs/performance.md, supported size). More is valid, and warned about.
MAX_LINES_SUPPORTED = 1000
_REGISTERS = {
    **dict.fromkeys((DataType.BOOL, DataType.INT16, DataType.UINT16), 1),
    **dict.fromkeys((DataType.INT32, DataType.UINT32, DataType.FLOAT32), 2),
    **dict.fromkeys((DataType.INT64, DataType.UINT64, DataType.FLOAT64), 4),
}
_BIT_TABLES = (ModbusTable.COIL, ModbusTable.DISCRETE)


def _default(cls: type, key: str) -> object:
    return next(d.default for d in declared(cls) if d.yaml == key)


def _backoff(ctx: Ctx, parsed: Parsed, cls: type) -> None:
    initial = parsed.get("backoff_initial", _default(cls, "backoff_initial"))
    maximum = parsed.get("backoff_max", _default(cls, "backoff_max"))
    if isinstance(initial, float) and isinstance(maximum, float) and maximum < initial:
        message = f"must be >= backoff_initial ({initial:g} s), got {maximum:g} s"
        ctx.add(*parsed.at("backoff_max"), message)


@rule(AgentConfig, always=True)
def _agent(ctx: Ctx, parsed: Parsed) -> None:
    lines = parsed.nodes.get("lines")
    if (
        lines is not None
        and isinstance(lines.value, list)
        and len(lines.value) > MAX_LINES_SUPPORTED
    ):
        ctx.warn(
            lines,
            "lines",
            f"{len(lines.value)} lines: more than the {MAX_LINES_SUPPORTED} one agent is measured "
            "to serve (docs/performance.md, supported size); the engine's step grows with every "
            "line (about 1 s per tick for 10000 on 2 cores) and ticks are skipped: split the "
            "plant over several agents",
        )
    sinks = parsed.values.get("mqtt")
    if isinstance(sinks, tuple):
        parsed.values["mqtt"] = sinks[0]
        parsed.extra["mqtt_extra"] = sinks[1:]
    parsed.extra["path"] = ctx.file


@rule(ModbusSourceConfig, always=True)
def _modbus_source(ctx: Ctx, parsed: Parsed) -> None:
    """host/port for the TCP transports, serial for rtu (one source per port: references)."""
    _backoff(ctx, parsed, ModbusSourceConfig)
    _reserved_name(ctx, parsed)
    transport = parsed.get("transport", ModbusTransport.TCP)
    if not isinstance(transport, ModbusTransport):
        return
    if transport is ModbusTransport.RTU:
        if "serial" not in parsed.nodes:
            ctx.add(
                parsed.node, join_key(parsed.path, "serial"), "required key missing (transport rtu)"
            )
        for key in ("host", "port"):
            if key in parsed.nodes:
                message = "applies to transports tcp and rtu_over_tcp, not rtu (use serial.port)"
                ctx.add(*parsed.at(key), message)
        return
    if "host" not in parsed.nodes:
        ctx.add(parsed.node, join_key(parsed.path, "host"), "required key missing")
    if "serial" in parsed.nodes:
        ctx.add(*parsed.at("serial"), f"applies to transport rtu, not {transport.value}")


@rule(OpcuaSourceConfig, always=True)
def _opcua_source(ctx: Ctx, parsed: Parsed) -> None:
    _backoff(ctx, parsed, OpcuaSourceConfig)
    _reserved_name(ctx, parsed)


def _reserved_name(ctx: Ctx, parsed: Parsed) -> None:
    if parsed.get("name") == OPERATOR_SOURCE:
        message = f"'{OPERATOR_SOURCE}' is reserved for the operator page's actions: rename it"
        ctx.add(*parsed.at("name"), message)


@rule(OpcuaSecurityConfig)
def _security(ctx: Ctx, parsed: Parsed) -> None:
    given = [key for key in parsed.nodes if key != "policy"]
    if parsed.values["policy"] is OpcuaSecurityPolicy.NONE:
        for key in given:
            ctx.add(*parsed.at(key), "applies only when policy is not None")
        return
    for key in ("cert_file", "key_file"):
        if key not in parsed.nodes:
            hint = "required key missing (create one with: edge-agent certs opcua --out DIR)"
            ctx.add(parsed.node, join_key(parsed.path, key), hint)
    trust = [k for k in ("server_cert_file", "server_fingerprint", "trust_dir") if k in given]
    if not trust:
        ctx.add(
            parsed.node,
            parsed.path,
            "give server_cert_file, server_fingerprint or trust_dir: the server's certificate "
            "is never trusted on first use",
        )
    for key in trust[1:]:
        ctx.add(*parsed.at(key), f"give only one of {', '.join(trust)}")


def _range(ctx: Ctx, parsed: Parsed) -> None:
    low, high = parsed.get("min"), parsed.get("max")
    if isinstance(low, float) and isinstance(high, float) and high < low:
        ctx.add(*parsed.at("max"), f"must be >= min ({low:g})")


rule(OpcuaTag)(_range)


@rule(ModbusTag)
def _modbus_tag(ctx: Ctx, parsed: Parsed) -> None:
    before = ctx.count
    _range(ctx, parsed)
    table = parsed.get("table", ModbusTable.HOLDING)
    if table in _BIT_TABLES:
        parsed.values.setdefault("type", DataType.BOOL)  # a coil can only be a bit
    kind = parsed.values.get("type", DataType.UINT16)
    if table in _BIT_TABLES and kind != DataType.BOOL:
        ctx.add(
            *parsed.at("type"), f"table {table.value} holds bits: type must be bool, got {kind}"
        )
    length = parsed.get("length", 0)
    if kind == DataType.STRING and length <= 0:
        ctx.add(*parsed.at("length"), "must be > 0 for type string (registers, 2 characters each)")
    elif kind != DataType.STRING and "length" in parsed.nodes:
        ctx.add(*parsed.at("length"), "applies to type string only")
    if kind in (DataType.BOOL, DataType.STRING):
        for key in ("scale", "offset", "min", "max"):
            if key in parsed.nodes:
                ctx.add(*parsed.at(key), f"applies to numeric types only, not {kind}")
    elif parsed.get("scale") == 0.0:
        ctx.add(*parsed.at("scale"), "must not be 0 (every value would read 0)")
    address = parsed.values["address"]
    if table not in _BIT_TABLES:
        width = length if kind == DataType.STRING else _REGISTERS[kind]
        if width > 0 and address + width - 1 > REGISTER.high:
            ctx.add(
                *parsed.at("address"),
                f"{kind} spans registers up to {address + width - 1}, past {REGISTER.high}",
            )
    if ctx.count == before and (hint := modicon_hint(address)) is not None:
        # Not an error: a large PLC may really have register 40003 (0-based).
        ctx.warn(
            *parsed.at("address"),
            f"{hint} (if the PLC's manual lists 0-based protocol addresses, {address} is "
            "right: ignore this)",
        )


@rule(Calendar)
def _calendar(ctx: Ctx, parsed: Parsed) -> None:
    holidays = set(parsed.get("holidays", ()))
    country = parsed.get("country")
    country = country if isinstance(country, str) else None
    worked = set(parsed.get("worked_holidays", ()))
    replaced = {s.instead_of for s in parsed.get("substitute_days", ()) if hasattr(s, "instead_of")}

    def public(day: date) -> str | None:
        return calendars.public_holidays(country, day.year).get(day) if country else None

    def where(path: str) -> Node:
        return ctx.index.get(path, parsed.node)

    extra_path = join_key(parsed.path, "extra_days")
    for index, extra in enumerate(parsed.get("extra_days", ())):
        item_path = join_index(extra_path, index)
        name = public(extra.date)
        if extra.date in holidays:
            ctx.add(
                where(item_path), item_path, f"{extra.date.isoformat()} is also listed as a holiday"
            )
        elif name is not None and extra.date not in worked | replaced:
            ctx.add(
                where(item_path),
                item_path,
                f"{extra.date.isoformat()} is a public holiday of {country} ({name}): list it"
                " under worked_holidays to work it",
            )
    checks = [
        ("worked_holidays", i, day) for i, day in enumerate(parsed.get("worked_holidays", ()))
    ] + [
        ("substitute_days", i, s.instead_of)
        for i, s in enumerate(parsed.get("substitute_days", ()))
        if hasattr(s, "instead_of")
    ]
    for key_name, index, day in checks:
        item_path = join_index(join_key(parsed.path, key_name), index)
        if key_name == "substitute_days":
            item_path = join_key(item_path, "instead_of")
        if "country" not in parsed.values:
            ctx.add(
                where(item_path),
                item_path,
                "needs calendar.country: the public holidays it refers to",
            )
            return
        if country is not None and public(day) is None:
            ctx.add(
                where(item_path),
                item_path,
                f"{day.isoformat()} is not a public holiday of {country} (holidays"
                f" {calendars.package_version()})",
            )


@rule(LineConfig)
def _line(ctx: Ctx, parsed: Parsed) -> None:
    _convention(ctx, parsed)
    _emission_factors(ctx, parsed)


def _convention(ctx: Ctx, parsed: Parsed) -> None:
    if (
        parsed.get("convention") is Convention.PLANNED_DOWNTIME_LOSS
        and "planned_states" in parsed.nodes
    ):
        ctx.warn(
            *parsed.at("planned_states"),
            "has no effect with convention planned_downtime_loss: every state is an"
            " availability loss (remove it, or use convention iso22400)",
        )


def _emission_factors(ctx: Ctx, parsed: Parsed) -> None:
    factors = parsed.get("emission_factors", ())
    if "emission_factor" in parsed.nodes and "emission_factors" in parsed.nodes:
        ctx.add(
            *parsed.at("emission_factors"),
            "give emission_factor (one factor) or emission_factors (dated factors), not both",
        )
        return
    if not isinstance(factors, tuple):
        return
    path = join_key(parsed.path, "emission_factors")
    seen: dict[date | None, int] = {}
    for index, factor in enumerate(factors):
        if not isinstance(factor, EmissionFactor):
            continue
        item_path = join_index(path, index)
        first = seen.setdefault(factor.valid_from, index)
        if first != index:
            day = "no valid_from" if factor.valid_from is None else factor.valid_from.isoformat()
            ctx.add(
                ctx.index.get(item_path, parsed.node),
                item_path,
                f"emission_factors[{first}] has the same valid_from ({day}): one factor per date",
            )


@rule(Maintenance)
def _maintenance(ctx: Ctx, parsed: Parsed) -> None:
    start, end = parsed.values["start"], parsed.values["end"]
    if end <= start:
        ctx.add(*parsed.at("end"), f"must be after start ({start:%Y-%m-%dT%H:%M})")


@rule(Signals, always=True)
def _signals(ctx: Ctx, parsed: Parsed) -> None:
    for first, second in (("state", "running"), ("reject_count", "good_count")):
        if first in parsed.nodes and second in parsed.nodes:
            ctx.add(*parsed.at(second), f"give {first} or {second}, not both")


@rule(MqttConfig, always=True)
def _mqtt(ctx: Ctx, parsed: Parsed) -> None:
    """``encoding: sparkplug_b`` needs protobuf (checked here, before anything starts),
    excludes order commands (Sparkplug has its own command topics) and a persistent session
    (Sparkplug 3.0: MQTT 3.1.1 Clean Session true, MQTT 5 Clean Start true with Session Expiry
    0; the sink sends a session expiry only with ``clean_session: false``, so that flag covers
    both). ``sparkplug`` is ignored with ``encoding: json`` (switching is a one-line change)."""
    _backoff(ctx, parsed, MqttConfig)
    if parsed.get("encoding") is not MqttEncoding.SPARKPLUG_B:
        return
    if parsed.get("clean_session") is False:
        ctx.add(
            *parsed.at("clean_session"),
            "sparkplug_b needs a clean session (Sparkplug 3.0: Clean Session true, or "
            "Clean Start true with Session Expiry 0 on MQTT 5): remove it or set it to true",
        )
    if sparkplug.protobuf_missing():
        ctx.add(
            *parsed.at("encoding"),
            "sparkplug_b needs the protobuf package, which is not installed: "
            + sparkplug.INSTALL_HINT,
        )
    if parsed.get("commands"):
        ctx.add(
            *parsed.at("commands"),
            "order commands need encoding: json (a sparkplug_b sink publishes Sparkplug "
            "topics only)",
        )


@rule(TlsConfig)
def _tls(ctx: Ctx, parsed: Parsed) -> None:
    if parsed.get("key_file") and not parsed.get("cert_file"):
        ctx.add(*parsed.at("key_file"), "needs cert_file as well")


@rule(PrometheusConfig)
def _prometheus(ctx: Ctx, parsed: Parsed) -> None:
    for first, second in (("cert_file", "key_file"), ("username", "password_file")):
        for key, other in ((first, second), (second, first)):
            if parsed.get(key) is not None and parsed.get(other) is None:
                ctx.add(*parsed.at(key), f"needs {other} as well")


@rule(OperatorConfig)
def _operator(ctx: Ctx, parsed: Parsed) -> None:
    for key, other in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if parsed.get(key) is not None and parsed.get(other) is None:
            ctx.add(*parsed.at(key), f"needs {other} as well")
    if parsed.get("enabled") and not parsed.get("stations"):
        ctx.add(*parsed.at("enabled"), "needs at least one station (operator.stations)")


@rule(OutboxConfig)
def _outbox(ctx: Ctx, parsed: Parsed) -> None:
    for soft, hard in (("max_messages", "hard_max_messages"), ("max_bytes", "hard_max_bytes")):
        low = parsed.get(soft, _default(OutboxConfig, soft))
        high = parsed.get(hard, _default(OutboxConfig, hard))
        if low and high and high < low:
            where = hard if hard in parsed.nodes else soft
            message = f"{hard} ({high}) must be >= {soft} ({low}), or 0 for no limit"
            ctx.add(*parsed.at(where), message)
