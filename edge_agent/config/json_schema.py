"""A JSON Schema of the YAML configuration, for editors (``edge-agent config-schema``).

Generated from the dataclasses in :mod:`edge_agent.config.schema` (fields, types, defaults,
enums) and the loader's knowledge of the YAML (key names from ``FIELD_NAMES``, durations, name
and node-id patterns, ranges), so that it follows the model when a field is added. The loader
stays the authority: it also checks what a schema cannot say (tag references, overlapping
shifts, time zones). ``docs/schemas/config.schema.json`` is this output; a test keeps the two
equal and checks the schema against the loader on valid and invalid files.

Point the YAML language server at it with a first line
``# yaml-language-server: $schema=../docs/schemas/config.schema.json`` (path relative to the
file) or in the editor's settings.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

from edge_agent.config import schema as model
from edge_agent.config.dump import duration_text
from edge_agent.config.loader import FIELD_NAMES, NAME_PATTERN
from edge_agent.domain import WEEKDAY_NAMES, MachineState
from edge_agent.sharing import LINE_TOPICS, PAYLOAD_FIELDS

SCHEMA_ID: Final = "https://edge-agent.invalid/schemas/config.schema.json"

_NAME_DEF: Final = {
    "type": "string",
    "pattern": f"^{NAME_PATTERN.pattern}$",
    "description": "1 to 64 characters from A-Z a-z 0-9 _ - (it becomes an MQTT topic level)",
}
_PART = NAME_PATTERN.pattern
_TAG_REF_DEF: Final = {
    "type": "string",
    "pattern": f"^{_PART}\\.{_PART}$",
    "description": "a tag as SOURCE.TAG",
}
_DURATION_DEF: Final = {
    "description": "a duration: a number and a unit (ms, s, m, h, d), e.g. 500ms, 5s, 15m, 8h, "
    "30d; a plain number is seconds",
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h|d)?\s*$"},
    ],
}
_CLOCK_DEF: Final = {
    "type": "string",
    "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$",
    "description": 'a time of day "HH:MM" (quote it)',
}
_SHARED: Final = {
    "name": _NAME_DEF,
    "tagRef": _TAG_REF_DEF,
    "duration": _DURATION_DEF,
    "timeOfDay": _CLOCK_DEF,
}
_NAME: Final = {"$ref": "#/$defs/name"}
_TAG_REF: Final = {"$ref": "#/$defs/tagRef"}
_DURATION: Final = {"$ref": "#/$defs/duration"}
_CLOCK: Final = {"$ref": "#/$defs/timeOfDay"}
_DATE: Final = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_LOCAL_DATETIME: Final = {
    "type": "string",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]([01][0-9]|2[0-3]):[0-5][0-9]$",
    "description": "a local date and time YYYY-MM-DDTHH:MM in the line's timezone",
}
_WEEKDAY: Final = {
    "enum": [
        *WEEKDAY_NAMES,
        *(d.capitalize() for d in WEEKDAY_NAMES),
        *(d.upper() for d in WEEKDAY_NAMES),
    ]
}
_SIZE: Final = {
    "description": "a size: a number of bytes, or a number and a unit (kB, KiB, MB, MiB, GB, GiB)",
    "oneOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+\s*(|B|kB|KB|KiB|MB|MiB|GB|GiB)\s*$"},
    ],
}
_SPARKPLUG_ID: Final = {
    "type": "string",
    "pattern": "^[^+#/]+$",
    "description": "a Sparkplug id: not empty, without '+', '#' or '/' (it is a topic level)",
}
_NO_STATE = (MachineState.UNKNOWN,)
_STATE_VALUES = [s.value for s in MachineState if s not in _NO_STATE]
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# What the loader checks beyond a field's Python type, by (dataclass, field name).
_OVERRIDES: Final[Mapping[tuple[type, str], dict[str, Any]]] = {
    (model.AgentConfig, "version"): {"const": 1},
    (model.AgentConfig, "site"): _NAME,
    (model.AgentConfig, "lines"): {"minItems": 1},
    (model.ModbusSourceConfig, "protocol"): {"const": "modbus"},
    (model.ModbusSourceConfig, "port"): {"minimum": 1, "maximum": 65535},
    (model.ModbusSourceConfig, "unit_id"): {"minimum": 0, "maximum": 247},
    (model.ModbusSourceConfig, "max_gap"): {"minimum": 0, "maximum": 65535},
    (model.ModbusSourceConfig, "tags"): {"minItems": 1},
    (model.OpcuaSourceConfig, "protocol"): {"const": "opcua"},
    (model.OpcuaSourceConfig, "endpoint"): {
        "type": "string",
        "pattern": "^opc\\.tcp://.*:[0-9]+",
        "description": "opc.tcp://HOST:PORT[/PATH]; the port is required",
    },
    (model.OpcuaSourceConfig, "tags"): {"minItems": 1},
    (model.ModbusTag, "address"): {"minimum": 0, "maximum": 65535, "description": "0-based"},
    (model.ModbusTag, "length"): {"minimum": 0, "maximum": 125},
    (model.ModbusTag, "unit_id"): {"minimum": 0, "maximum": 247},
    (model.OpcuaTag, "node"): {
        "type": "string",
        "pattern": "^(ns=[0-9]+;|nsu=[^;]+;)?[isgb]=[\\s\\S]+$",
        "description": "an OPC UA node id, e.g. ns=2;s=Line1.State",
    },
    (model.LineConfig, "timezone"): {"description": "an IANA time zone, e.g. Asia/Seoul"},
    (model.LineConfig, "planned_states"): {
        "type": "array",
        "uniqueItems": True,
        "items": {"enum": [s for s in _STATE_VALUES if s != MachineState.RUNNING.value]},
    },
    (model.Shift, "start"): _CLOCK,
    (model.Shift, "end"): _CLOCK,
    (model.Break, "start"): _CLOCK,
    (model.Break, "end"): _CLOCK,
    (model.Signals, "running"): _TAG_REF,
    (model.StateSignal, "tag"): _TAG_REF,
    (model.StateSignal, "map"): {
        "type": "object",
        "description": "PLC state code (an integer) to state",
        "minProperties": 1,
        "propertyNames": {"pattern": "^[+-]?[0-9]+$"},
        "additionalProperties": {"enum": _STATE_VALUES},
    },
    (model.CounterSignal, "tag"): _TAG_REF,
    (model.CounterSignal, "rollover"): {
        "anyOf": [{"type": "integer", "minimum": 2}, {"type": "null"}]
    },
    (model.MqttConfig, "port"): {"minimum": 1, "maximum": 65535},
    (model.MqttConfig, "max_inflight"): {"minimum": 1, "maximum": 32767},
    (model.Shift, "days"): {
        "type": "array",
        "minItems": 1,
        "items": _WEEKDAY,
        "description": "weekdays on which the shift starts (default: every day)",
    },
    (model.ExtraDay, "like"): {"anyOf": [_WEEKDAY, {"type": "null"}]},
    (model.LineConfig, "min_data_coverage"): {"type": "number", "minimum": 0, "maximum": 1},
    (model.OutboxConfig, "max_bytes"): _SIZE,
    (model.OutboxConfig, "hard_max_bytes"): _SIZE,
    (model.OutboxConfig, "max_messages"): {"minimum": 0},
    (model.OutboxConfig, "hard_max_messages"): {"minimum": 0},
    (model.SerialConfig, "baudrate"): {"minimum": 50, "maximum": 4_000_000},
    (model.SerialConfig, "stopbits"): {"minimum": 1, "maximum": 2},
    (model.SerialConfig, "bytesize"): {"const": 8},
    (model.MqttConfig, "topic_prefix"): {
        "type": "string",
        "pattern": "^[^$/+#][^/+#]*(/[^/+#]+)*$",
        "description": "topic levels separated by '/', none empty, no '+' or '#', no leading '$'",
    },
    (model.MqttConfig, "protocol"): {"enum": ["3.1.1", "311", 311, "5", "5.0", 5]},
    (model.MqttConfig, "qos"): {"minimum": 0, "maximum": 2},
    (model.MqttConfig, "name"): _NAME,
    (model.ShareConfig, "lines"): {
        "anyOf": [{"type": "array", "uniqueItems": True, "items": _NAME}, {"type": "null"}]
    },
    (model.ShareConfig, "topics"): {
        "anyOf": [
            {"type": "array", "uniqueItems": True, "items": {"enum": list(LINE_TOPICS)}},
            {"type": "null"},
        ]
    },
    (model.ShareConfig, "fields"): {
        "anyOf": [
            {"type": "array", "uniqueItems": True, "items": {"enum": sorted(PAYLOAD_FIELDS)}},
            {"type": "null"},
        ]
    },
    (model.SparkplugConfig, "group_id"): {
        "anyOf": [_SPARKPLUG_ID, {"type": "null"}],
        "description": "the Sparkplug group id; null or left out: the site",
    },
    (model.SparkplugConfig, "edge_node_id"): _SPARKPLUG_ID,
    (model.PrometheusConfig, "port"): {"minimum": 1, "maximum": 65535},
    (model.LoggingConfig, "level"): {"enum": [*_LEVELS, *(v.lower() for v in _LEVELS)]},
}
_DEFAULTS: Final[Mapping[tuple[type, str], Any]] = {
    (model.Shift, "days"): list(WEEKDAY_NAMES),
}
_EXCLUDED: Final = {
    (model.AgentConfig, "path"),  # where the file was read from, not a key
    (model.AgentConfig, "mqtt_extra"),  # the list form of `mqtt` (below), not a key
}


def _yaml_key(field_name: str) -> str:
    for key, name in FIELD_NAMES.items():
        if name == field_name:
            return key
    return field_name


def _default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset):
        return sorted(_default(v) for v in value)
    if isinstance(value, tuple):
        return [_default(v) for v in value]
    return value


class _Builder:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def ref(self, cls: type) -> dict[str, Any]:
        if cls.__name__ not in self.defs:
            self.defs[cls.__name__] = {}  # placeholder: recursion stops here
            self.defs[cls.__name__] = self.dataclass(cls)
        return {"$ref": f"#/$defs/{cls.__name__}"}

    def dataclass(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            if (cls, f.name) in _EXCLUDED:
                continue
            key = _yaml_key(f.name)
            duration = key != f.name and f.name.endswith("_s")
            prop = self.type(hints[f.name], duration=duration)
            override = _OVERRIDES.get((cls, f.name))
            if override is not None:
                prop = _merge(prop, override)
            if (cls, f.name) in _DEFAULTS:
                prop["default"] = _DEFAULTS[cls, f.name]
            elif f.default is not dataclasses.MISSING and f.default not in (None, ""):
                prop["default"] = duration_text(f.default) if duration else _default(f.default)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(key)
            properties[key] = prop
        out: dict[str, Any] = {"type": "object", "additionalProperties": False}
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out["description"] = " ".join(cls.__doc__.split())
        out["properties"] = properties
        if required:
            out["required"] = required
        return out

    def type(self, tp: Any, *, duration: bool = False) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            options = [a for a in args if a is not type(None)]
            nullable = len(options) < len(args)
            if len(options) == 1:
                inner = self.type(options[0], duration=duration)
                return {"anyOf": [inner, {"type": "null"}]} if nullable else inner
            branches = [self.type(a) for a in options]
            if nullable:
                branches.append({"type": "null"})
            return {"oneOf": branches}
        if origin is tuple:
            return {"type": "array", "items": self.type(args[0])}
        if origin is frozenset:
            return {"type": "array", "uniqueItems": True, "items": self.type(args[0])}
        if origin is dict:
            # Code maps (state, reason, product): integer codes as keys.
            return {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": "^[+-]?[0-9]+$"},
                "additionalProperties": self.type(args[1]),
            }
        if duration:
            return dict(_DURATION)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"enum": [m.value for m in tp]}
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.ref(tp)
        if tp is bool:
            return {"type": "boolean"}
        if tp is int:
            return {"type": "integer"}
        if tp is float:
            return {"type": "number"}
        if tp is str:
            return {"type": "string", "pattern": "\\S"}  # the loader refuses blank strings
        if tp is datetime.time:
            return dict(_CLOCK)
        if tp is datetime.date:
            return dict(_DATE)
        if tp is datetime.datetime:
            return dict(_LOCAL_DATETIME)
        raise TypeError(f"no JSON Schema for {tp!r}: add it to edge_agent/config/json_schema.py")


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` applied to ``base``; for a nullable base (anyOf [X, null]) it applies to X."""
    if "anyOf" in base and {"type": "null"} in base["anyOf"] and "anyOf" not in override:
        inner = [_merge(b, override) if b != {"type": "null"} else b for b in base["anyOf"]]
        return {"anyOf": inner}
    if override.keys() & {"type", "const", "enum", "anyOf", "oneOf", "$ref"}:
        return dict(override)  # a different shape: the loader's rule replaces the type's
    return base | dict(override)


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a configuration file."""
    b = _Builder()
    root = b.dataclass(model.AgentConfig)
    # The loader's special forms, which a field's type does not tell.
    props = root["properties"]
    modbus, opcua = b.ref(model.ModbusSourceConfig), b.ref(model.OpcuaSourceConfig)
    props["sources"] = {"type": "array", "items": {"oneOf": [modbus, opcua]}}
    for name in ("ModbusSourceConfig", "OpcuaSourceConfig", "ModbusTag", "OpcuaTag"):
        b.defs[name]["properties"]["name"] = _NAME
    for name in ("LineConfig", "Shift"):
        b.defs[name]["properties"]["name"] = _NAME
    b.defs["ModbusSourceConfig"]["required"].append("protocol")
    b.defs["OpcuaSourceConfig"]["required"].append("protocol")
    counter = b.ref(model.CounterSignal)
    for key in ("total_count", "reject_count", "good_count"):
        # A counter is a tag reference, or a mapping with its rollover.
        b.defs["Signals"]["properties"][key] = {"oneOf": [_TAG_REF, counter]}
    b.defs["Signals"]["allOf"] = [
        {"not": {"required": ["state", "running"]}},
        {"not": {"required": ["reject_count", "good_count"]}},
    ]
    b.defs["MqttConfig"]["properties"]["tls"] = {
        "description": "true for TLS with the system's trust store, or the TLS settings",
        "oneOf": [{"type": "boolean"}, b.ref(model.TlsConfig)],
    }
    # One sink as a mapping, or a list of named sinks (the first is the primary).
    mqtt = b.ref(model.MqttConfig)
    props["mqtt"] = {
        "description": "one MQTT sink, or a list of named sinks, the first being the primary",
        "oneOf": [
            mqtt,
            {"type": "array", "minItems": 1, "items": {"allOf": [mqtt, {"required": ["name"]}]}},
        ],
    }
    b.defs["TlsConfig"]["dependentRequired"] = {"key_file": ["cert_file"]}
    # A worked extra day is a date, or a date with the weekday whose shifts it follows.
    b.defs["Calendar"]["properties"]["extra_days"]["items"] = {
        "oneOf": [_DATE, b.ref(model.ExtraDay)]
    }
    root["patternProperties"] = {"^x-": {"description": "ignored: a home for YAML anchors"}}
    root["required"].insert(0, "version")  # it has a default in the model, not in a file
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edge-agent configuration (version 1)",
        "description": "Generated by `edge-agent config-schema` from the configuration model; "
        "`edge-agent check-config` is the full check.",
        **root,
        "$defs": dict(sorted((b.defs | _SHARED).items())),
    }


def config_schema_text() -> str:
    """The schema as committed in docs/schemas/config.schema.json."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
