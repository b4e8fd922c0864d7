"""Persistence of a line engine: what :meth:`LineEngine.state_dict` stores and
:meth:`LineEngine.restore` reads back (this version's format, and versions 1 and 2).

Version 1 had no hour window and no products; version 2 stored the undelivered reports as MQTT
messages (topic suffix, payload, retain, QoS); version 3 stores them as reports (type and
fields). Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.domain import MachineState
from edge_agent.engine.counters import CounterTracker
from edge_agent.engine.intervals import clip
from edge_agent.engine.oee import UNSPECIFIED_REASON
from edge_agent.engine.orders import Order
from edge_agent.engine.placement import Ledger
from edge_agent.engine.reports import REPORT_TYPES, KpiReport, Report, from_dict, to_dict
from edge_agent.engine.shifts import HOUR
from edge_agent.engine.signals import COUNTER_NAMES, ORDER_KINDS, order_value
from edge_agent.engine.windows import OpenWindow

if TYPE_CHECKING:
    from edge_agent.engine.line import LineEngine

STATE_VERSION = 3
AGENT_CAUSE = "agent"  # unknown cause: the engine did not observe (not started yet, or restarted)

_TYPES: dict[str, Any] = {cls.__name__: cls for cls in REPORT_TYPES}
# Version 2 stored messages: the report type of each topic suffix then in use.
_V2_TOPICS: dict[str, tuple[type, bool]] = {
    "kpi/shift": (KpiReport, True),
    "kpi/hour": (KpiReport, True),
    "kpi": (KpiReport, False),
    "state": (_TYPES["StateChange"], False),
    "energy": (_TYPES["EnergyReport"], False),
    "order": (_TYPES["OrderReport"], False),
    "order/closed": (_TYPES["OrderClosed"], False),
}


def _saved_report(report: Report) -> dict[str, Any]:
    saved: dict[str, Any] = {"report": type(report).__name__, "fields": to_dict(report)}
    if isinstance(report, KpiReport):
        saved["closed"] = report.closed
    return saved


def _restored_report(saved: dict[str, Any]) -> Report:
    """A report saved by :func:`_saved_report`, or a version 2 message."""
    if "topic_suffix" in saved:  # version 2
        suffix = str(saved["topic_suffix"])
        cls, closed = _V2_TOPICS.get(suffix, (_TYPES["CommandReply"], False))
        extra = {"closed": closed} if cls is KpiReport else {}
        report: Report = from_dict(cls, saved["payload"], **extra)
        return report
    cls = _TYPES[str(saved["report"])]
    extra = {"closed": bool(saved.get("closed"))} if cls is KpiReport else {}
    restored: Report = from_dict(cls, saved["fields"], **extra)
    return restored


def save(engine: LineEngine) -> dict[str, Any]:
    """The engine's state, JSON-serialisable (see :meth:`LineEngine.state_dict`)."""
    d: dict[str, Any] = {
        "version": STATE_VERSION,
        "line": engine.line,
        "now": engine._now,
        "state": str(engine._state),
        "state_since": engine._state_since,
        "idle_at": engine._idle_at,
        "reason": engine._reason,
        "product": engine._product,
        "product_next": list(engine._product_next) if engine._product_next else None,
        "last_known_state": str(engine._last_known_state),
        **engine._energy.state_dict(),
        "order": None if engine._orders.order is None else engine._orders.order.state_dict(),
        "plc_order": list(engine._orders.plc_order),
        "counters": {
            COUNTER_NAMES[k]: {"tag": engine._counter_signals[k].tag, **tr.state_dict()}
            for k, tr in engine._trackers.items()
        },
        "pending": [_saved_report(r) for r in engine._pending],
        "windows": {},
        "stops": _saved_stops(engine),
        "shift_notes": {repr(start): note for start, note in engine.shift_notes.items()},
        "ledgers": {
            COUNTER_NAMES[k]: engine._with_open_piece(
                ledger, engine._trackers[k].last_value is not None
            ).state_dict()
            for k, ledger in engine._ledgers.items()
        },
        "energy_ledger": engine._with_open_piece(
            engine._energy.ledger, engine._energy.measuring, energy=True
        ).state_dict(),
        "closing": [{**o.state_dict(), "state_at_end": str(state)} for o, state in engine._closing],
    }
    if engine._now is not None:
        piece = engine._open_piece()
        for name, o in (("shift", engine._shift), ("hour", engine._hour)):
            if o is None:
                continue
            saved = o.state_dict()
            saved["accounting"] = o.acc.folded(engine._now, piece).state_dict()
            d["windows"][name] = saved
    return d


def _saved_stops(engine: LineEngine) -> dict[str, Any]:
    """The stop book, with the stop in progress ended at the engine's time and its open piece
    included: after a restart the time since is unknown, so that stop ended then."""
    saved = engine.stops.to_dict()
    stops = saved["stops"]
    now = engine._now
    if now is not None and stops and stops[-1]["end"] is None:
        a = engine._piece_start
        if (
            now > a
            and engine.stops.keeps(engine._reason)
            and not engine._causes
            and engine._is_loss(engine._state)
        ):
            reason = engine._reason or UNSPECIFIED_REASON
            stops[-1]["pieces"].append([a, now, str(engine._state), reason])
        stops[-1]["end"] = now
    return saved


def restore(engine: LineEngine, d: dict[str, Any]) -> None:
    """Continue ``engine`` from a saved state (see :meth:`LineEngine.restore`)."""
    version = d.get("version")
    if version not in (1, 2, STATE_VERSION):
        raise ValueError(f"unsupported engine state version {version!r}")
    if d.get("line") != engine.line:
        raise ValueError(f"engine state is for line {d.get('line')!r}, not {engine.line!r}")
    names = {v: k for k, v in COUNTER_NAMES.items()}
    for name, saved in (d.get("counters") or {}).items():
        kind = names.get(name)
        sig = engine._counter_signals.get(kind) if kind is not None else None
        if kind is None or sig is None or saved.get("tag") != sig.tag:
            continue  # the counter was reconfigured: its old baseline means nothing
        engine._trackers[kind] = CounterTracker.from_state(saved, sig.rollover, engine._fastest_s)
        engine._ledgers[kind] = Ledger.from_state((d.get("ledgers") or {}).get(name))
    engine._pending = [_restored_report(m) for m in d.get("pending", [])]
    engine._energy.restore(d)
    order = d.get("order")
    engine._orders.order = Order.from_state(order) if order else None
    plc_order = d.get("plc_order")
    if isinstance(plc_order, list) and len(plc_order) == 3:
        # Saved by a version that took any value: what cannot be an order's is not known.
        engine._orders.plc_order = [
            order_value(kind, value)[0] for kind, value in zip(ORDER_KINDS, plc_order, strict=True)
        ]
    now = d.get("now")
    if now is None:
        return
    engine._now = float(now)
    engine._last_known_state = MachineState(d.get("last_known_state", "unknown"))
    engine._state = MachineState(d.get("state", "unknown"))
    since = d.get("state_since")
    engine._state_since = float(since) if since is not None else None
    idle_at = d.get("idle_at")
    engine._idle_at = float(idle_at) if idle_at is not None else None
    engine._reason = d.get("reason")
    product = d.get("product")
    engine._product = int(product) if product is not None else None
    nxt = d.get("product_next")
    if nxt:
        engine._product_next = (float(nxt[0]), None if nxt[1] is None else int(nxt[1]))
    engine._causes = {AGENT_CAUSE}
    engine._piece_start = engine._now
    engine.stops.restore(d.get("stops"))
    notes = d.get("shift_notes") or {}
    engine.shift_notes = {float(k): str(v) for k, v in notes.items()}
    windows = d.get("windows") or {}
    if version == 1 and d.get("window") is not None:
        windows = {"shift": _v1_window(engine, d)}
    if "shift" in windows:
        engine._shift = OpenWindow.from_state(windows["shift"], engine._planned_states)
        acc = engine._shift.acc
        if not acc.stops:  # version 1 kept no causes: ask the calendar
            acc.stops = {
                k: clip(v, acc.start, acc.end)
                for k, v in engine.calendar.plan(acc.start, acc.end).stops.items()
            }
    if "hour" in windows:
        engine._hour = OpenWindow.from_state(windows["hour"], engine._planned_states)
    elif engine._shift is not None:  # version 1: open the hour now; its past is unknown
        engine._hour = engine._new_open(HOUR, engine._now)
    engine._closing = [
        (
            OpenWindow.from_state(saved, engine._planned_states),
            MachineState(saved.get("state_at_end", "unknown")),
        )
        # Windows waiting for their counts exist from this version on.
        for saved in ((d.get("closing") or ()) if version == STATE_VERSION else ())
    ]


def _v1_window(engine: LineEngine, d: dict[str, Any]) -> dict[str, Any]:
    counts = d.get("counts", {})
    second = COUNTER_NAMES.get(engine._second_counter or -1, "")
    total, other = int(counts.get("total", 0)), int(counts.get(second, 0))
    return {
        "window": d["window"],
        "accounting": d["accounting"],
        "counts": [[None, total, other]] if total or other else [],
        "flags": d.get("flags", []),
    }
