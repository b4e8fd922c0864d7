"""Sparkplug B encoding of an MQTT sink (``encoding: sparkplug_b``; see docs/mqtt.md).

The agent is a Sparkplug *edge node* (``spBv1.0/{group_id}/…/{edge_node_id}``) and each line is
one of its *devices*. What this module does, free of I/O except the ``bdSeq`` file:

- the Sparkplug B protobuf ``Payload`` message, built in code from the field names, numbers and
  types of the Sparkplug 3.0 specification (the subset the agent writes: no data sets,
  templates, metadata or extensions; a decoder skips nothing it needs), so that no generated code
  or ``.proto`` file ships with the agent;
- the metric mapping: a JSON report (``kpi``, ``kpi/shift``, ``kpi/hour``, ``state``) to metrics
  named after its fields, '/' as the folder separator (:data:`LINE_METRICS`), derived from the
  report types' field declarations (the fields declared as metrics, their units and types);
- :class:`SparkplugSession`: the node's state on one broker: ``bdSeq`` (persisted, one per
  MQTT session), ``seq`` (0-255 over every node message after NBIRTH), the current value of each
  metric for the DBIRTHs, and the messages: NDEATH (the last will), NBIRTH, DBIRTH, DDATA,
  DDEATH.

``google.protobuf`` is an optional dependency (the ``sparkplug`` extra): it is imported when a
session is created, and the configuration loader checks that it is importable
(:func:`protobuf_missing`) before anything starts.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import json
import logging
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

from edge_agent.engine.reports import (
    ISO_TIME,
    KpiReport,
    StateChange,
    WireField,
    part_type,
    wire_fields,
)

log = logging.getLogger(__name__)

NAMESPACE: Final = "spBv1.0"
INSTALL_HINT: Final = "pip install 'edge-agent[sparkplug]'"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"
_SEQ_MODULO: Final = 256
_U64: Final = (1 << 64) - 1


def protobuf_missing() -> bool:
    """True when ``google.protobuf`` cannot be imported (the ``sparkplug`` extra is not
    installed)."""
    try:
        return importlib.util.find_spec("google.protobuf") is None
    except ModuleNotFoundError:  # the ``google`` namespace itself is absent
        return True


class DataType(enum.IntEnum):
    """Sparkplug B metric data types (the specification's numbers), those the agent uses."""

    INT64 = 4
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13


# --- the protobuf schema, built in code ---------------------------------------------------------


@cache
def payload_class() -> Any:
    """The ``org.eclipse.tahu.protobuf.Payload`` message class (proto2), built once.

    Raises ``ModuleNotFoundError`` when protobuf is not installed."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: PLC0415

    fdp = descriptor_pb2.FieldDescriptorProto
    opt, rep = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED
    pkg = ".org.eclipse.tahu.protobuf.Payload"

    def add(msg: Any, name: str, number: int, kind: int, label: int = opt, **kw: Any) -> None:
        msg.field.add(name=name, number=number, type=kind, label=label, **kw)

    f = descriptor_pb2.FileDescriptorProto(
        name="edge_agent/sparkplug_b.proto", package="org.eclipse.tahu.protobuf", syntax="proto2"
    )
    payload = f.message_type.add(name="Payload")

    value = payload.nested_type.add(name="PropertyValue")
    add(value, "type", 1, fdp.TYPE_UINT32)
    add(value, "is_null", 2, fdp.TYPE_BOOL)
    value.oneof_decl.add(name="value")
    for name, number, kind in (
        ("int_value", 3, fdp.TYPE_UINT32),
        ("long_value", 4, fdp.TYPE_UINT64),
        ("float_value", 5, fdp.TYPE_FLOAT),
        ("double_value", 6, fdp.TYPE_DOUBLE),
        ("boolean_value", 7, fdp.TYPE_BOOL),
        ("string_value", 8, fdp.TYPE_STRING),
    ):
        add(value, name, number, kind, oneof_index=0)
    add(value, "propertyset_value", 9, fdp.TYPE_MESSAGE, type_name=f"{pkg}.PropertySet")
    value.field[-1].oneof_index = 0

    props = payload.nested_type.add(name="PropertySet")
    add(props, "keys", 1, fdp.TYPE_STRING, rep)
    add(props, "values", 2, fdp.TYPE_MESSAGE, rep, type_name=f"{pkg}.PropertyValue")

    metric = payload.nested_type.add(name="Metric")
    add(metric, "name", 1, fdp.TYPE_STRING)
    add(metric, "alias", 2, fdp.TYPE_UINT64)
    add(metric, "timestamp", 3, fdp.TYPE_UINT64)
    add(metric, "datatype", 4, fdp.TYPE_UINT32)
    add(metric, "is_historical", 5, fdp.TYPE_BOOL)
    add(metric, "is_transient", 6, fdp.TYPE_BOOL)
    add(metric, "is_null", 7, fdp.TYPE_BOOL)
    add(metric, "properties", 9, fdp.TYPE_MESSAGE, type_name=f"{pkg}.PropertySet")
    metric.oneof_decl.add(name="value")
    for name, number, kind in (
        ("int_value", 10, fdp.TYPE_UINT32),
        ("long_value", 11, fdp.TYPE_UINT64),
        ("float_value", 12, fdp.TYPE_FLOAT),
        ("double_value", 13, fdp.TYPE_DOUBLE),
        ("boolean_value", 14, fdp.TYPE_BOOL),
        ("string_value", 15, fdp.TYPE_STRING),
        ("bytes_value", 16, fdp.TYPE_BYTES),
    ):
        add(metric, name, number, kind, oneof_index=0)

    add(payload, "timestamp", 1, fdp.TYPE_UINT64)
    add(payload, "metrics", 2, fdp.TYPE_MESSAGE, rep, type_name=f"{pkg}.Metric")
    add(payload, "seq", 3, fdp.TYPE_UINT64)
    add(payload, "uuid", 4, fdp.TYPE_STRING)
    add(payload, "body", 5, fdp.TYPE_BYTES)

    pool = descriptor_pool.DescriptorPool()  # private: never clashes with another Tahu schema
    pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
    )


# --- metrics ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of a payload. ``value`` ``None`` is sent as ``is_null``."""

    name: str
    datatype: DataType
    value: Any
    timestamp_ms: int | None = None
    is_historical: bool = False
    eng_unit: str | None = None  # the ``engUnit`` property (births only)


def encode(timestamp_ms: int, metrics: Iterable[Metric], seq: int | None) -> bytes:
    """A Sparkplug B payload. ``seq`` ``None``: none (NDEATH)."""
    msg = payload_class()()
    msg.timestamp = timestamp_ms
    if seq is not None:
        msg.seq = seq
    for m in metrics:
        pm = msg.metrics.add()
        pm.name = m.name
        pm.datatype = int(m.datatype)
        if m.timestamp_ms is not None:
            pm.timestamp = m.timestamp_ms
        if m.is_historical:
            pm.is_historical = True
        if m.eng_unit is not None:
            pm.properties.keys.append("engUnit")
            prop = pm.properties.values.add()
            prop.type = int(DataType.STRING)
            prop.string_value = m.eng_unit
        if m.value is None:
            pm.is_null = True
        elif m.datatype in (DataType.INT64, DataType.DATETIME):
            pm.long_value = int(m.value) & _U64  # two's complement, as the spec says
        elif m.datatype is DataType.DOUBLE:
            pm.double_value = float(m.value)
        elif m.datatype is DataType.BOOLEAN:
            pm.boolean_value = bool(m.value)
        else:
            pm.string_value = str(m.value)
    return bytes(msg.SerializeToString())


def decode(data: bytes) -> Any:
    """Parse a Sparkplug B payload (for NCMD and tests)."""
    msg = payload_class()()
    msg.ParseFromString(data)
    return msg


def _ms(iso_text: Any) -> int | None:
    if not isinstance(iso_text, str):
        return None
    try:
        return round(datetime.fromisoformat(iso_text).timestamp() * 1000)
    except ValueError:
        return None


def _joined(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How one JSON payload field (``path``: keys from the top) becomes a metric."""

    name: str
    path: tuple[str, ...]
    datatype: DataType
    eng_unit: str | None = None
    convert: Callable[[Any], Any] | None = None  # JSON value -> metric value


def _datatype(f: WireField) -> tuple[DataType, Callable[[Any], Any] | None]:
    """The metric data type of a payload field, and how its JSON value is converted."""
    tp = f.tp
    if f.doc.schema == ISO_TIME:
        return DataType.DATETIME, _ms
    if typing.get_origin(tp) is tuple:
        return DataType.STRING, _joined
    args = set(typing.get_args(tp)) - {type(None)} if isinstance(tp, types.UnionType) else {tp}
    if args == {int}:
        return DataType.INT64, None
    if args == {float}:
        return DataType.DOUBLE, None
    return DataType.STRING, None


def report_specs(cls: type) -> tuple[MetricSpec, ...]:
    """The metrics of a report type: its fields declared as metrics (``Doc.metric``), a part's
    fields under the part's name as a folder, a time mapping's keys under the field's name."""
    specs: list[MetricSpec] = []
    for f in wire_fields(cls):
        if not f.doc.metric:
            continue
        name = f.doc.metric if isinstance(f.doc.metric, str) else f.name
        part = part_type(f.tp)
        if part is not None:
            for sub in wire_fields(part):
                datatype, convert = _datatype(sub)
                specs.append(
                    MetricSpec(f"{name}/{sub.name}", (f.name, sub.name), datatype, convert=convert)
                )
        elif "properties" in f.doc.schema:  # a mapping with fixed keys (loss_time_s)
            specs += [
                MetricSpec(f"{name}/{k}", (f.name, k), DataType.DOUBLE, f.doc.unit)
                for k in f.doc.schema["properties"]
            ]
        else:
            datatype, convert = _datatype(f)
            specs.append(MetricSpec(name, (f.name,), datatype, f.doc.unit, convert))
    return tuple(specs)


KPI_SPECS: Final = report_specs(KpiReport)
STATE_SPECS: Final = report_specs(StateChange)
# The folder of each report topic's metrics: the live snapshot at the top, the last closed
# shift and hour under their own folders (so a closed window never overwrites the live values).
TOPIC_FOLDERS: Final[Mapping[str, str]] = {
    "kpi": "",
    "kpi/shift": "last_shift/",
    "kpi/hour": "last_hour/",
    "state": "",
}


def _specs(topic_suffix: str) -> tuple[MetricSpec, ...]:
    return STATE_SPECS if topic_suffix == "state" else KPI_SPECS


def line_metrics() -> tuple[tuple[str, MetricSpec], ...]:
    """Every metric of a line's DBIRTH, as (topic suffix, spec), names unique: the first
    topic that produces a name gives its datatype (:data:`METRIC_SOURCES` has them all)."""
    out: dict[str, tuple[str, MetricSpec]] = {}
    for topic, folder in TOPIC_FOLDERS.items():
        for spec in _specs(topic):
            out.setdefault(folder + spec.name, (topic, spec))
    return tuple(out.values())


def metric_sources() -> dict[str, tuple[tuple[str, MetricSpec], ...]]:
    """Metric name -> every (topic suffix, spec) that produces it (``state`` comes from both
    ``kpi`` and ``state``, with the same datatype)."""
    out: dict[str, list[tuple[str, MetricSpec]]] = {}
    for topic, folder in TOPIC_FOLDERS.items():
        for spec in _specs(topic):
            out.setdefault(folder + spec.name, []).append((topic, spec))
    return {name: tuple(sources) for name, sources in out.items()}


LINE_METRICS: Final = line_metrics()
METRIC_SOURCES: Final[Mapping[str, tuple[tuple[str, MetricSpec], ...]]] = metric_sources()


def report_metrics(
    topic_suffix: str, payload: Mapping[str, Any], *, historical: bool
) -> list[Metric]:
    """The metrics of one JSON report, each with the report's ``ts`` as its timestamp.

    A field absent from the payload (withheld by the sink's ``share``) gives no metric; a
    ``null`` one gives a null metric. Topics without a mapping give none."""
    folder = TOPIC_FOLDERS.get(topic_suffix)
    if folder is None:
        return []
    ts = _ms(payload.get("ts"))
    out = []
    for spec in _specs(topic_suffix):
        value: Any = payload
        for key in spec.path:
            if not isinstance(value, Mapping) or key not in value:
                break
            value = value[key]
        else:
            if spec.convert is not None and value is not None:
                value = spec.convert(value)
            out.append(
                Metric(folder + spec.name, spec.datatype, value, ts, is_historical=historical)
            )
    return out


# --- bdSeq --------------------------------------------------------------------------------------


class BdSeqStore:
    """The birth/death sequence number, persisted in a small file: :meth:`next` gives each new
    MQTT session the number after the last one given (0 the first time; 255 is followed by 0)
    and writes it durably before the connection uses it, so a restarted agent never births with
    the number of a death the broker may still deliver."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def last(self) -> int | None:
        """The number given last, ``None`` when none was (or the file is unreadable)."""
        try:
            value = json.loads(self.path.read_text())["bdSeq"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return value if isinstance(value, int) and 0 <= value < _SEQ_MODULO else None

    def next(self) -> int:
        """The next number, stored (file written, fsynced and renamed into place)."""
        last = self.last()
        value = 0 if last is None else (last + 1) % _SEQ_MODULO
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as fh:
            fh.write(json.dumps({"bdSeq": value}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):  # the rename's durability, where the OS allows it
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return value


# --- the node -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """The Sparkplug topics of one edge node."""

    group_id: str
    edge_node_id: str

    def node(self, kind: str) -> str:
        """``spBv1.0/{group}/{kind}/{node}`` for NBIRTH, NDEATH, NCMD, NDATA."""
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"

    def device(self, kind: str, device_id: str) -> str:
        """``spBv1.0/{group}/{kind}/{node}/{device}`` for DBIRTH, DDATA, DDEATH, DCMD."""
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}/{device_id}"


Outgoing = tuple[str, bytes]  # (topic, payload)


class SparkplugSession:
    """The Sparkplug state of one sink (see the module docstring). Event loop thread only.

    Sequence of a connection: :meth:`new_session` (before CONNECT: the will), :meth:`seed`
    with the newest queued reports and :meth:`births` (after CONNACK), then :meth:`data` per
    outbox message in outbox order, :meth:`births` again on a rebirth request
    (:meth:`is_rebirth`; the caller publishes them only when every earlier DDATA is on the
    wire), and :meth:`deaths` before a clean DISCONNECT. ``allow_metric(line, topic_suffix,
    field)`` tells whether a metric may be shared at all (the sink's ``share``): a metric
    withheld by every topic that produces it never appears in a DBIRTH, and the sink's
    publish-time share check removes it from the reports before :meth:`data`. A DDATA carries
    only metrics its device's last DBIRTH declared (the others are dropped, logged once each),
    and only lines that got a DBIRTH get DDATA or a DDEATH.
    """

    def __init__(
        self,
        topics: Topics,
        lines: Iterable[str],
        bdseq: BdSeqStore,
        *,
        allow_metric: Callable[[str, str, str], bool] | None = None,
    ) -> None:
        payload_class()  # fail at construction, not at the first publish
        self.topics = topics
        self.lines = tuple(lines)
        self._bdseq_store = bdseq
        self._allow = allow_metric or (lambda _line, _topic, _field: True)
        self.bdseq = 0
        self._seq = 0
        self.session_start = 0.0  # POSIX seconds of this session's first NBIRTH
        self._current: dict[str, dict[str, Metric]] = {}  # line -> name -> last live metric
        # line -> the metric names of its last DBIRTH in this MQTT session (born lines only)
        self._declared: dict[str, frozenset[str]] = {}
        self._undeclared_logged: set[tuple[str, str]] = set()

    def next_seq(self) -> int:
        """The ``seq`` of the next node message after NBIRTH: 1, 2, … 255, 0, 1, …"""
        self._seq = (self._seq + 1) % _SEQ_MODULO
        return self._seq

    def new_session(self, now: float) -> Outgoing:
        """A new MQTT session: the next ``bdSeq`` (persisted) and the NDEATH to register as the
        connection's last will."""
        self.bdseq = self._bdseq_store.next()
        self.session_start = 0.0
        self._declared = {}
        return self._ndeath(now)

    def _ndeath(self, now: float) -> Outgoing:
        bd = Metric(BDSEQ_METRIC, DataType.INT64, self.bdseq)
        return self.topics.node("NDEATH"), encode(round(now * 1000), [bd], None)

    def births(self, now: float) -> list[Outgoing]:
        """NBIRTH (``seq`` 0, ``bdSeq``, ``Node Control/Rebirth``) and one DBIRTH per line with
        every metric at its current value (null until a live report gave one)."""
        if not self.session_start:
            self.session_start = now
        now_ms = round(now * 1000)
        self._seq = 0
        node = [
            Metric(BDSEQ_METRIC, DataType.INT64, self.bdseq, now_ms),
            Metric(REBIRTH_METRIC, DataType.BOOLEAN, False, now_ms),
        ]
        out = [(self.topics.node("NBIRTH"), encode(now_ms, node, 0))]
        self._declared = {}
        for line in self.lines:
            current = self._current.get(line, {})
            metrics = []
            for topic, spec in LINE_METRICS:
                name = TOPIC_FOLDERS[topic] + spec.name
                # Declared when any topic that produces it is shared (``state`` comes from the
                # ``kpi`` and the ``state`` topics).
                if not any(self._allow(line, t, s.path[0]) for t, s in METRIC_SOURCES[name]):
                    continue
                seen = current.get(name)
                metrics.append(
                    Metric(
                        name,
                        spec.datatype,
                        seen.value if seen else None,
                        seen.timestamp_ms if seen and seen.timestamp_ms else now_ms,
                        eng_unit=spec.eng_unit,
                    )
                )
            if metrics:
                self._declared[line] = frozenset(m.name for m in metrics)
                out.append(
                    (self.topics.device("DBIRTH", line), encode(now_ms, metrics, self.next_seq()))
                )
        return out

    def seed(self, line: str, topic_suffix: str, payload: bytes) -> None:
        """Take a report that is still queued (sent later as historical DDATA) as the current
        values for the next DBIRTHs: used with the newest queued report of each (line, topic)
        before the births of a session, so that values made during an outage (a shift that
        closed meanwhile) reach the host's current values and not only its history."""
        if line not in self.lines:
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        current = self._current.setdefault(line, {})
        for m in report_metrics(topic_suffix, doc, historical=False):
            current[m.name] = m

    def data(
        self, line: str, topic_suffix: str, payload: bytes, created: float, now: float
    ) -> Outgoing | None:
        """The DDATA of one outbox message, or ``None`` when its topic has no Sparkplug
        mapping (or no metric is shared). A message created before this session's NBIRTH (it
        waited in the outbox) is historical: ``is_historical`` on every metric, and the
        DBIRTH values stay as they are."""
        declared = self._declared.get(line)
        if declared is None:  # no DBIRTH (nothing of the line is shared): no DDATA either
            return None
        try:
            doc = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        historical = created < self.session_start
        metrics = report_metrics(topic_suffix, doc, historical=historical)
        if any(m.name not in declared for m in metrics):
            metrics = self._declared_only(line, declared, metrics)
        if not metrics:
            return None
        if not historical:
            current = self._current.setdefault(line, {})
            for m in metrics:
                current[m.name] = m
        topic = self.topics.device("DDATA", line)
        return topic, encode(round(now * 1000), metrics, self.next_seq())

    def _declared_only(
        self, line: str, declared: frozenset[str], metrics: list[Metric]
    ) -> list[Metric]:
        """A safety net: a host rejects (or rebirths on) a DDATA metric its DBIRTH did not
        declare, so such metrics are dropped, each name logged once."""
        for m in metrics:
            if m.name not in declared and (line, m.name) not in self._undeclared_logged:
                self._undeclared_logged.add((line, m.name))
                log.warning(
                    "Sparkplug device %s: metric %r is not in its DBIRTH, left out of DDATA",
                    line,
                    m.name,
                )
        return [m for m in metrics if m.name in declared]

    def deaths(self, now: float) -> list[Outgoing]:
        """DDEATH per line that got a DBIRTH in this MQTT session, then NDEATH: published
        before a clean DISCONNECT."""
        now_ms = round(now * 1000)
        out = [
            (self.topics.device("DDEATH", line), encode(now_ms, [], self.next_seq()))
            for line in self.lines
            if line in self._declared
        ]
        out.append(self._ndeath(now))
        return out

    @staticmethod
    def is_rebirth(payload: bytes) -> bool:
        """Whether an NCMD payload asks for a rebirth (``Node Control/Rebirth`` true)."""
        try:
            msg = decode(payload)
        except Exception:  # a malformed command is not a rebirth request
            return False
        return any(
            m.name == REBIRTH_METRIC and m.HasField("boolean_value") and m.boolean_value
            for m in msg.metrics
        )
