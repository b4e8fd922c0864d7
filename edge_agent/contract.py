"""The MQTT contract of the line reports (DESIGN §4; docs/mqtt.md, docs/asyncapi.yaml).

One place maps each report type of :mod:`edge_agent.engine.reports` to its topic suffix (under
``{topic_prefix}/{site}/{line}/``), retain flag, QoS and JSON payload, and derives from the
types' field declarations what other parts need written out:

- :func:`payload`: the JSON-serialisable payload of a report (without ``seq``, which the
  outbox adds);
- :func:`message`: the :class:`~edge_agent.model.OutMessage` an MQTT sink stores and publishes;
- :data:`LINE_TOPICS` and :data:`PAYLOAD_FIELDS`: what a share (``mqtt[].share``) may list;
- :func:`json_schema`: the JSON Schemas shipped in ``docs/schemas/``. Regenerate them after
  changing a report type: ``python -m edge_agent.contract docs/schemas`` (a test fails while a
  shipped copy is stale).
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge_agent.engine.reports import (
    DEFS,
    REPORT_TYPES,
    CommandReply,
    EnergyReport,
    KpiReport,
    OperatorEvent,
    OrderClosed,
    OrderReport,
    Report,
    StateChange,
    WireField,
    items_part,
    part_type,
    to_dict,
    wire_fields,
)
from edge_agent.model import OutMessage

DEFAULT_QOS: Final = 1

# The fields every line payload keeps on a shared sink (``window`` where the payload has one):
# a payload still identifies itself and validates. ``seq`` is added by the outbox.
CORE_FIELDS: Final[frozenset[str]] = frozenset({"schema", "site", "line", "window", "ts", "seq"})
# Set in a payload from which fields were withheld by a share's ``fields`` list: the JSON
# Schemas then require only CORE_FIELDS.
SHARED_MARK: Final = "shared"

# Fields the contract adds to every payload, with what they mean.
_ENVELOPE: Final[Mapping[str, Mapping[str, Any]]] = {
    SHARED_MARK: {
        "const": True,
        "description": "present (true) only in the payloads of a shared sink that withholds"
        " fields by agreement (mqtt[].share.fields in the agent's configuration): only schema,"
        " site, line, window (kpi topics), ts and seq are then guaranteed, plus the agreed"
        " fields",
    },
    "seq": {
        "type": "integer",
        "minimum": 1,
        "description": "per line, strictly increasing across all of the line's messages",
    },
}


@dataclass(frozen=True, slots=True)
class Topic:
    """One line topic: its suffix, the report type on it, and how it is published."""

    suffix: str
    report: type
    retain: bool
    qos: int = DEFAULT_QOS


TOPICS: Final[tuple[Topic, ...]] = (
    Topic("kpi", KpiReport, retain=True),  # the live snapshot
    Topic("kpi/shift", KpiReport, retain=False),  # a closed shift
    Topic("kpi/hour", KpiReport, retain=False),  # a closed clock hour
    Topic("state", StateChange, retain=True),
    Topic("energy", EnergyReport, retain=True),
    Topic("order", OrderReport, retain=True),
    Topic("order/closed", OrderClosed, retain=False),
    Topic("cmd/order/reply", CommandReply, retain=False),
    Topic("operator", OperatorEvent, retain=False),
)
_BY_SUFFIX: Final = {t.suffix: t for t in TOPICS}
_BY_TYPE: Final = {t.report: t for t in reversed(TOPICS)}  # the first topic of each type

# The line topics a share may list. ``cmd/order/reply`` only ever goes to the primary sink (the
# commands come from its broker); a share on the primary sink may still leave it out.
LINE_TOPICS: Final[tuple[str, ...]] = tuple(t.suffix for t in TOPICS)


def topic_suffix(report: Report) -> str:
    """The topic suffix of ``report``."""
    if isinstance(report, KpiReport):
        if not report.closed:
            return "kpi"
        return "kpi/hour" if report.window.kind == "hour" else "kpi/shift"
    if isinstance(report, CommandReply):
        return f"cmd/{report.command}/reply"
    return _BY_TYPE[type(report)].suffix


def retained(suffix: str) -> bool:
    """Whether messages on the line topic ``suffix`` are retained (the live ones)."""
    topic = _BY_SUFFIX.get(suffix)
    return topic.retain if topic is not None else False


def message(report: Report, *, qos: int = DEFAULT_QOS) -> OutMessage:
    """The MQTT sink's record of ``report``: topic suffix, payload, retain flag, QoS."""
    suffix = topic_suffix(report)
    return OutMessage(
        line=report.line,
        topic_suffix=suffix,
        payload=payload(report),
        retain=retained(suffix),
        qos=qos,
    )


def messages(reports: Sequence[Report], *, qos: int = DEFAULT_QOS) -> list[OutMessage]:
    return [message(r, qos=qos) for r in reports]


# The field names every line payload has (schema) or that the contract adds.
_CONTRACT_FIELDS: Final = ("schema", "seq")

PAYLOAD_FIELDS: Final[frozenset[str]] = frozenset(
    _CONTRACT_FIELDS + tuple(f.name for cls in REPORT_TYPES for f in wire_fields(cls))
)


def payload(report: Report) -> dict[str, Any]:
    """The JSON payload of ``report`` (without ``seq``): ``schema`` first, then its fields in
    declaration order."""
    return to_dict(report)


# --- JSON Schemas --------------------------------------------------------------------------


def _field_schema(f: WireField) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    part = part_type(f.tp)
    items = items_part(f.tp)
    if part is not None:
        schema = _object_schema(part)
        if isinstance(f.tp, types.UnionType):
            schema["type"] = ["object", "null"]
    elif items is not None:
        schema = {"type": "array", "items": _object_schema(items)}
    schema.update(f.doc.schema)
    if f.doc.text:
        schema["description"] = f.doc.text
    return schema


def _object_schema(cls: type) -> dict[str, Any]:
    fields = wire_fields(cls)
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in fields if f.required],
        "properties": {f.name: _field_schema(f) for f in fields},
    }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            yield ref.removeprefix("#/$defs/")
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _refs(v)


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the payloads of report type ``cls``: every field of
    the current version; with ``shared`` set, only the core fields are required."""
    fields = wire_fields(cls)
    props: dict[str, Any] = {"schema": {"const": cls.SCHEMA}}  # type: ignore[attr-defined]
    required = ["schema"]
    for f in fields:
        props[f.name] = _field_schema(f)
        if f.required:
            required.append(f.name)
        if f.name == "ts":
            props.update(_ENVELOPE)
            required.append("seq")
    used: list[str] = []
    pending = list(_refs(props))
    while pending:
        name = pending.pop(0)
        if name not in used:
            used.append(name)
            pending.extend(_refs(DEFS[name]))
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edge-agent.invalid/schemas/{cls.SCHEMA_FILE}",  # type: ignore[attr-defined]
        "title": cls.TITLE,  # type: ignore[attr-defined]
    }
    if cls.DESCRIPTION:  # type: ignore[attr-defined]
        doc["description"] = cls.DESCRIPTION  # type: ignore[attr-defined]
    doc.update(
        {
            "type": "object",
            "additionalProperties": False,
            "required": [n for n in required if n in CORE_FIELDS or n == "schema"],
            "if": {"not": {"required": [SHARED_MARK]}},
            "then": {"required": required},
            "$defs": {name: DEFS[name] for name in sorted(used)},
            "properties": props,
        }
    )
    return doc


def schema_text(cls: type) -> str:
    """:func:`json_schema` as the text of its shipped file."""
    return json.dumps(json_schema(cls), indent=2, ensure_ascii=False) + "\n"


def schema_files() -> dict[str, str]:
    """File name -> text of every generated schema."""
    return {cls.SCHEMA_FILE: schema_text(cls) for cls in REPORT_TYPES}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_agent.contract DIR``: write the report schemas into ``DIR``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m edge_agent.contract DIR (e.g. docs/schemas)", file=sys.stderr)
        return 2
    out = Path(args[0])
    for name, text in schema_files().items():
        (out / name).write_text(text, encoding="utf-8")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
