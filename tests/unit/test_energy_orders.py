"""Energy, CO2e, orders with ETA and reliability KPIs, replay-style: timestamped samples fed
into :class:`LineEngine` as ``edge-agent replay`` does, with hand-computed expectations
(docs/kpi.md quotes these numbers). Every payload is validated against its JSON Schema.

Unless a test says otherwise: line1 in UTC, ideal cycle time 1 s, one shift "day" 06:00–14:00
without breaks, Monday 2024-03-04; an energy meter counting Wh with a rollover of 100,000 Wh and
a maximum power of 50 kW; the emission factor 0.4594 kgCO2e/kWh.
"""

from __future__ import annotations

import json
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest

from edge_agent.config.schema import (
    Break,
    CounterSignal,
    EmissionFactor,
    EnergySignal,
    EnergyUnit,
    LineConfig,
    MachineState,
    OrderSignal,
    ReasonSignal,
    Shift,
    Signals,
    StateSignal,
)
from edge_agent.engine.energy import NO_FACTOR_NOTE
from edge_agent.engine.orders import MAX_ORDER_QUANTITY, Order, validate_order_command
from edge_agent.model import OutMessage, Quality, Sample
from tests.helpers.wire import WireEngine

S = MachineState
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALIDATORS = {
    "kpi": _validator("kpi"),
    "kpi/shift": _validator("kpi"),
    "kpi/hour": _validator("kpi"),
    "state": _validator("state"),
    "energy": _validator("energy"),
    "order": _validator("order"),
    "order/closed": _validator("order-closed"),
    "cmd/order/reply": _validator("cmd-reply"),
}
COMMAND = _validator("order-command")
STATE_MAP = {1: S.RUNNING, 2: S.IDLE, 3: S.FAULT, 4: S.PLANNED_STOP}
UTC = ZoneInfo("UTC")
T0 = datetime(2024, 3, 4, 6, 0, tzinfo=UTC).timestamp()  # Monday 06:00 UTC
H, M = 3600.0, 60.0
FACTOR = EmissionFactor(kg_co2e_per_kwh=0.4594, source="Korea grid 2023, GIR")
METER = EnergySignal(tag="meter.wh", unit=EnergyUnit.WH, rollover=100_000, max_power_kw=50.0)


def line_cfg(**kw: Any) -> LineConfig:
    sig: dict[str, Any] = {
        "state": StateSignal(tag="plc.state", map=STATE_MAP),
        "total_count": CounterSignal(tag="plc.total", rollover=65536),
        "reject_count": CounterSignal(tag="plc.rejects", rollover=65536),
        "energy": METER,
        "power": "meter.kw",
    }
    sig.update(kw.pop("signals", {}))
    args: dict[str, Any] = {
        "name": "line1",
        "timezone": "UTC",
        "ideal_cycle_time_s": 1.0,
        "shifts": (Shift(name="day", start=time(6), end=time(14)),),
        "signals": Signals(**sig),
        "emission_factor": FACTOR,
    }
    args.update(kw)
    return LineConfig(**args)


def feed(engine: WireEngine, t: float, **values: Any) -> None:
    """Samples at ``t``: keyword ``wh`` is the meter, ``kw`` the power, others PLC tags."""
    for tag, value in values.items():
        source, name = ("meter", tag) if tag in ("wh", "kw") else ("plc", tag)
        engine.ingest(Sample(source, name, value, Quality.GOOD, None, t))


def validated(messages: list[OutMessage]) -> list[OutMessage]:
    for seq, m in enumerate(messages, 1):
        VALIDATORS[m.topic_suffix].validate({**m.payload, "seq": seq})
    return messages


def live(engine: WireEngine, t: float) -> dict[str, dict[str, Any]]:
    return {m.topic_suffix: m.payload for m in validated(engine.snapshots(t))}


def approx(x: float, rel: float = 1e-9) -> Any:
    return pytest.approx(x, rel=rel, abs=1e-6)


# --- energy ----------------------------------------------------------------------------------


def test_kwh_and_co2e_per_good_part_across_a_meter_wrap() -> None:
    e = WireEngine(line_cfg(), site="s")
    # 06:00 running, meter at 95,000 Wh (baseline: no energy yet).
    feed(e, T0, state=1, total=0, rejects=0, wh=95_000, kw=15.0)
    # 07:00: 3,000 parts; the meter wrapped: 95,000 → 5,000 is (5,000 − 95,000) mod 100,000
    # = 10,000 Wh. Plausible: ≤ 3,600 s × 50 kW (13.9 Wh/s) × 2 + slack → a wrap, 10 kWh, all
    # running (the line ran 06:00–07:00). Then idle.
    feed(e, T0 + 1 * H, total=3000, wh=5_000)
    feed(e, T0 + 1 * H, state=2)
    # 07:30 running again. The meter sample at 07:40 (+2,000 Wh) spans idle 07:00–07:30 and
    # running 07:30–07:40: split 30:10 → idle 1.5 kWh, running 0.5 kWh.
    feed(e, T0 + 1.5 * H, state=1)
    feed(e, T0 + 1 * H + 40 * M, wh=7_000)
    # 08:00: 4,800 parts, 48 rejects; +3,000 Wh, running.
    feed(e, T0 + 2 * H, total=4800, rejects=48, wh=10_000, kw=14.5)
    p = live(e, T0 + 2 * H)
    kpi, energy = p["kpi"], p["energy"]
    # energy 10 + 2 + 3 = 15 kWh; running 10 + 0.5 + 3 = 13.5, idle 1.5.
    assert kpi["energy_kwh"] == approx(15.0)
    assert kpi["energy_by_state_kwh"] == {"idle": approx(1.5), "running": approx(13.5)}
    # good 4,800 − 48 = 4,752; 15 ÷ 4,752 = 0.0031565656… kWh per good part.
    assert kpi["good_count"] == 4752
    assert kpi["energy_per_good_part_kwh"] == approx(0.003157, 1e-3)
    # CO2e: 15 × 0.4594 = 6.891 kg; per part 0.0031565656 × 0.4594 = 0.0014501263… kg.
    assert kpi["co2e_kg"] == approx(6.891)
    assert kpi["co2e_per_good_part_kg"] == approx(0.00145, 1e-3)
    assert kpi["emission_factor"] == {
        "kg_co2e_per_kwh": 0.4594,
        "source": "Korea grid 2023, GIR",
        "valid_from": None,
    }
    assert kpi["energy_notes"] == []
    assert "energy_meter_wrap" in kpi["warnings"]
    # The energy topic carries the same window figures plus the live readings.
    assert energy["energy_kwh"] == kpi["energy_kwh"]
    assert energy["meter_kwh"] == approx(10.0)  # 10,000 Wh
    assert energy["power_kw"] == 14.5
    assert energy["warnings"] == ["energy_meter_wrap"]


def test_meter_reset_counts_the_new_reading_and_planned_stop_energy_is_separate() -> None:
    cfg = line_cfg(
        shifts=(
            Shift(
                name="day",
                start=time(6),
                end=time(14),
                breaks=(Break(start=time(7), end=time(7, 30)),),
            ),
        )
    )
    e = WireEngine(cfg, site="s")
    feed(e, T0, state=1, total=0, rejects=0, wh=50_000)
    # 06:00–08:00 with a break 07:00–07:30; one meter delta of 4,000 Wh over the two hours:
    # 90 min running in planned time, 30 min of break (planned stop) → 3.0 and 1.0 kWh.
    feed(e, T0 + 2 * H, total=5400, wh=54_000)
    # 08:01 the meter reads 200 Wh: (200 − 54,000) mod 100,000 = 46,200 Wh in 60 s is far
    # above 60 s × 13.9 Wh/s × 2 + 139: a reset, the new reading (200 Wh) is the energy since.
    feed(e, T0 + 2 * H + 1 * M, wh=200)
    kpi = live(e, T0 + 2 * H + 1 * M)["kpi"]
    assert kpi["energy_by_state_kwh"] == {"planned_stop": approx(1.0), "running": approx(3.2)}
    assert kpi["energy_kwh"] == approx(4.2)
    assert "energy_meter_reset" in kpi["warnings"]


def test_without_an_emission_factor_co2e_is_null_with_a_note() -> None:
    e = WireEngine(line_cfg(emission_factor=None), site="s")
    feed(e, T0, state=1, total=0, rejects=0, wh=0)
    feed(e, T0 + H, total=3600, wh=10_000)
    kpi = live(e, T0 + H)["kpi"]
    assert kpi["energy_kwh"] == approx(10.0)
    assert kpi["energy_per_good_part_kwh"] == approx(10 / 3600)
    assert kpi["co2e_kg"] is None and kpi["co2e_per_good_part_kg"] is None
    assert kpi["emission_factor"] is None
    assert kpi["energy_notes"] == [NO_FACTOR_NOTE]


def test_energy_belongs_to_the_time_its_meter_delta_covers() -> None:
    e = WireEngine(line_cfg(), site="s")
    feed(e, T0 + 7 * H + 50 * M, state=1, total=0, rejects=0, wh=0)  # 13:50
    # 14:10: +10,000 Wh over 13:50–14:10: 13:50–14:00 running in the shift, 14:00–14:10 off
    # shift (planned stop). The sample arrives off shift, but the delta covers both: the day
    # shift gets its 5 kWh of running, the off-shift window its 5 kWh of planned stop. The
    # shift's report waits for the meter (and the counters) to be seen after its end.
    assert [m.topic_suffix for m in e.tick(T0 + 8 * H + 10 * M)] == ["state"]
    feed(e, T0 + 8 * H + 10 * M, wh=10_000, total=1_200, rejects=0)
    out = e.tick(T0 + 8 * H + 10 * M)
    assert [m.topic_suffix for m in out] == ["kpi/hour", "kpi/shift"]
    shift = next(m.payload for m in validated(out) if m.topic_suffix == "kpi/shift")
    assert shift["energy_by_state_kwh"] == {"running": approx(5.0)}
    kpi = live(e, T0 + 8 * H + 10 * M)["kpi"]
    assert kpi["window"]["kind"] == "off_shift"
    assert kpi["energy_by_state_kwh"] == {"planned_stop": approx(5.0)}


def test_energy_state_survives_a_restart() -> None:
    e = WireEngine(line_cfg(), site="s")
    feed(e, T0, state=1, total=0, rejects=0, wh=1_000)
    feed(e, T0 + H, total=3600, wh=6_000)
    saved = json.loads(json.dumps(e.state_dict()))
    e2 = WireEngine(line_cfg(), site="s")
    e2.restore(saved)
    # Down 07:00–07:10 (unknown time); the meter advanced 1,000 Wh meanwhile: counted once,
    # booked to the unknown bucket (the agent did not see the state).
    feed(e2, T0 + H + 10 * M, state=1, total=4200, wh=7_000)
    kpi = live(e2, T0 + H + 10 * M)["kpi"]
    assert kpi["energy_by_state_kwh"] == {"running": approx(5.0), "unknown": approx(1.0)}


# --- orders ----------------------------------------------------------------------------------


def order_cfg(**kw: Any) -> LineConfig:
    return line_cfg(signals={"energy": None, "power": None}, **kw)


def command(e: WireEngine, t: float, doc: Any) -> dict[str, Any]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    e.command("order", raw, t)
    replies = [m.payload for m in validated(e.tick(t)) if m.topic_suffix == "cmd/order/reply"]
    assert len(replies) == 1
    return replies[0]


def test_eta_under_changing_throughput_and_the_order_closes_at_target() -> None:
    e = WireEngine(order_cfg(), site="s", orders=True)
    feed(e, T0, state=1, total=0, rejects=0)
    reply = command(e, T0, {"order_id": "PO-1", "product": "A-100", "target_quantity": 3000})
    assert reply["ok"] is True and reply["errors"] == []
    total = 0
    # 06:00–06:30 30 parts/min, 06:30–07:00 10 parts/min, sampled every minute.
    for minute in range(1, 61):
        total += 30 if minute <= 30 else 10
        feed(e, T0 + minute * M, total=total)
    order = live(e, T0 + H)["order"]
    # good 30 × 30 + 30 × 10 = 1,200; remaining 3,000 − 1,200 = 1,800.
    assert (order["good_count"], order["remaining_quantity"]) == (1200, 1800)
    # current: 150 parts in (06:45, 07:00] = 600/h → 1,800 ÷ 600 = 3 h → 10:00.
    assert order["throughput_current_good_per_h"] == approx(600.0)
    assert order["time_to_complete_current_s"] == approx(3 * H)
    assert order["eta_current"] == "2024-03-04T10:00:00.000+00:00"
    # shift average: 1,200 good in 1 h → 1,200/h → 1.5 h → 08:30.
    assert order["throughput_shift_good_per_h"] == approx(1200.0)
    assert order["eta_shift_average"] == "2024-03-04T08:30:00.000+00:00"
    # 07:00–07:15 back to 30/min: good 1,650, remaining 1,350.
    for minute in range(61, 76):
        total += 30
        feed(e, T0 + minute * M, total=total)
    order = live(e, T0 + H + 15 * M)["order"]
    assert order["remaining_quantity"] == 1350
    # current: 450 parts in (07:00, 07:15] = 1,800/h → 0.75 h → 08:00.
    assert order["eta_current"] == "2024-03-04T08:00:00.000+00:00"
    # shift: 1,650 ÷ 1.25 h = 1,320/h → 1,350 ÷ 1,320 h = 3,681.818 s → 08:16:21.818.
    assert order["throughput_shift_good_per_h"] == approx(1320.0)
    assert order["time_to_complete_shift_average_s"] == approx(3681.818, 1e-6)
    assert order["eta_shift_average"] == "2024-03-04T08:16:21.818+00:00"
    # At 30/min the remaining 1,350 take 45 min: the order closes at 08:00.
    closed: list[dict[str, Any]] = []
    for minute in range(76, 121):
        total += 30
        feed(e, T0 + minute * M, total=total)
        closed += [
            m.payload
            for m in validated(e.tick(T0 + minute * M))
            if m.topic_suffix == "order/closed"
        ]
    assert len(closed) == 1
    c = closed[0]
    assert (c["order_id"], c["reason"], c["good_count"], c["duration_s"]) == (
        "PO-1",
        "target_reached",
        3000,
        2 * H,
    )
    assert c["ts"] == "2024-03-04T08:00:00.000+00:00"
    order = live(e, T0 + 2 * H)["order"]
    assert (order["status"], order["remaining_quantity"], order["eta_current"]) == (
        "completed",
        0,
        "2024-03-04T08:00:00.000+00:00",
    )


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"product": "A", "target_quantity": 5}, "order_id: required"),
        ({"order_id": "", "target_quantity": 5}, "order_id: must be a non-empty string"),
        ({"order_id": "PO-2", "target_quantity": 0}, "target_quantity: must be an integer >= 1"),
        ({"order_id": "PO-2", "target_quantity": 2.5}, "target_quantity: must be an integer >= 1"),
        ({"order_id": "PO-2", "target_quantity": True}, "target_quantity: must be an integer >= 1"),
        ({"order_id": "PO-2", "target_quantity": 5, "qty": 1}, "qty: unknown key"),
        ({"order_id": 7, "target_quantity": 5}, "order_id: must be a non-empty string"),
        ([1, 2], "the command must be a JSON object, got list"),
        (b"{not json", "not UTF-8 JSON"),
        ({"order_id": "PO-BIG", "target_quantity": 10**12}, "target_quantity: at most 1000000000"),
        ({"order_id": "PO-BIG", "target_quantity": 10**309}, "target_quantity: at most 1000000000"),
        (b"[" * 4000, "the command nests arrays or objects more than 2 levels deep"),
    ],
)
def test_an_invalid_command_is_rejected_and_never_applied(doc: Any, error: str) -> None:
    e = WireEngine(order_cfg(), site="s", orders=True)
    feed(e, T0, state=1, total=0, rejects=0)
    command(e, T0, {"order_id": "PO-1", "target_quantity": 100, "request_id": "r1"})
    reply = command(e, T0 + M, doc)
    assert reply["ok"] is False
    assert any(err.startswith(error) for err in reply["errors"]), reply["errors"]
    assert live(e, T0 + M)["order"]["order_id"] == "PO-1"  # unchanged
    if not isinstance(doc, bytes):
        assert not COMMAND.is_valid(doc)  # the schema rejects it too


def test_the_command_schema_and_the_validator_agree() -> None:
    docs: list[Any] = [
        {"order_id": "PO-1", "target_quantity": 1},
        {"order_id": "PO-1", "target_quantity": 1, "product": None, "request_id": "x"},
        {"order_id": "PO-1", "target_quantity": 1, "product": "A-100"},
        {"order_id": " ", "target_quantity": 1},
        {"order_id": "x" * 65, "target_quantity": 1},
        {"order_id": "x" * 64, "target_quantity": 10**9},
        {"order_id": "x" * 64, "target_quantity": 10**9 + 1},
        {"order_id": "x" * 64, "target_quantity": 10**12},
        {"order_id": "PO-1", "target_quantity": 5.0},
        {"order_id": "PO-1", "target_quantity": 1e300},
        {"order_id": "PO-1", "target_quantity": 1, "request_id": 5},
        {"order_id": "PO-1", "target_quantity": "5"},
        {"order_id": "PO-1"},
        {},
        "PO-1",
    ]
    for doc in docs:
        assert COMMAND.is_valid(doc) == (validate_order_command(doc) == []), doc


def test_the_largest_order_target_is_written_once() -> None:
    """The schemas say what the engine enforces: commands, and targets in order payloads."""
    assert MAX_ORDER_QUANTITY == 10**9
    command_schema = json.loads((SCHEMAS / "order-command.schema.json").read_text())
    assert command_schema["properties"]["target_quantity"]["maximum"] == MAX_ORDER_QUANTITY
    for name in ("order", "order-closed"):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        assert schema["properties"]["target_quantity"]["maximum"] == MAX_ORDER_QUANTITY


def test_an_eta_beyond_the_year_9999_is_null_with_a_warning() -> None:
    """10^9 parts at 4 parts an hour take 28,500 years: the time to complete is reported, the
    ETA is null (no date can say it) and the warning says why."""
    e = WireEngine(order_cfg(), site="s", orders=True)
    feed(e, T0, state=1, total=0, rejects=0)
    assert command(e, T0, {"order_id": "PO-BIG", "target_quantity": MAX_ORDER_QUANTITY})["ok"]
    feed(e, T0 + 15 * M, total=1)
    order = live(e, T0 + 15 * M)["order"]
    assert order["throughput_current_good_per_h"] == approx(4.0)
    assert order["time_to_complete_current_s"] == approx((MAX_ORDER_QUANTITY - 1) / 4.0 * H)
    assert (order["eta_current"], order["eta_shift_average"]) == (None, None)
    assert order["warnings"] == ["eta_out_of_range"]
    # A near target has a date again, and no warning.
    assert command(e, T0 + 16 * M, {"order_id": "PO-BIG", "target_quantity": 5})["ok"]
    order = live(e, T0 + 16 * M)["order"]
    assert order["eta_current"] is not None and order["warnings"] == []


def test_a_rejected_command_echoes_its_request_id() -> None:
    e = WireEngine(order_cfg(), site="s", orders=True)
    feed(e, T0, state=1, total=0, rejects=0)
    reply = command(e, T0, {"order_id": "PO-BIG", "target_quantity": 10**12, "request_id": "r9"})
    assert (reply["ok"], reply["request_id"], reply["errors"]) == (
        False,
        "r9",
        ["target_quantity: at most 1000000000"],
    )
    assert "order_id" not in reply
    assert e.take_notices() == [
        "order command 'r9' rejected, not applied: target_quantity: at most 1000000000"
    ]


def test_a_saved_target_out_of_range_is_restored_as_unknown() -> None:
    saved = Order("PO-1", None, 500, "command", T0).state_dict()
    assert Order.from_state(saved).target == 500
    assert Order.from_state({**saved, "target": 10**12}).target is None
    assert Order.from_state({**saved, "target": -3}).target is None


def test_a_new_command_closes_the_current_order_and_the_order_survives_a_restart() -> None:
    e = WireEngine(order_cfg(), site="s", orders=True)
    feed(e, T0, state=1, total=0, rejects=0)
    command(e, T0, {"order_id": "PO-1", "target_quantity": 1000})
    feed(e, T0 + 10 * M, total=600, rejects=6)
    saved = json.loads(json.dumps(e.state_dict()))
    e = WireEngine(order_cfg(), site="s", orders=True)
    e.restore(saved)
    order = live(e, T0 + 10 * M)["order"]
    assert (order["order_id"], order["good_count"], order["reject_count"]) == ("PO-1", 594, 6)
    # The same id again only updates the target; another id closes PO-1 (order_changed).
    command(e, T0 + 11 * M, {"order_id": "PO-1", "target_quantity": 2000})
    assert live(e, T0 + 11 * M)["order"]["good_count"] == 594
    e.command(
        "order", json.dumps({"order_id": "PO-2", "target_quantity": 50}).encode(), T0 + 12 * M
    )
    out = validated(e.tick(T0 + 12 * M))
    closed = [m.payload for m in out if m.topic_suffix == "order/closed"]
    assert [(c["order_id"], c["reason"], c["good_count"]) for c in closed] == [
        ("PO-1", "order_changed", 594)
    ]
    assert [m.payload["order_id"] for m in out if m.topic_suffix == "order"] == ["PO-2"]


def test_orders_from_plc_tags() -> None:
    cfg = line_cfg(
        signals={
            "energy": None,
            "power": None,
            "order": OrderSignal(id="plc.order", target="plc.qty", product="plc.recipe"),
        }
    )
    e = WireEngine(cfg, site="s")
    feed(e, T0, state=1, total=0, rejects=0, order=4711, qty=100, recipe="A-100")
    feed(e, T0 + M, total=60)
    order = live(e, T0 + M)["order"]
    assert (order["order_id"], order["product"], order["source"]) == ("4711", "A-100", "plc")
    assert (order["target_quantity"], order["remaining_quantity"]) == (100, 40)
    # A new id (with its own target in the same poll) closes the old order.
    feed(e, T0 + 2 * M, order="4712", qty=500, total=100)
    out = validated(e.tick(T0 + 2 * M))
    closed = [m.payload for m in out if m.topic_suffix == "order/closed"]
    # Parts count for the order current when their counter sample arrives: the id sample came
    # first in this poll, so its 40 parts count for 4712.
    assert [(c["order_id"], c["reason"], c["good_count"]) for c in closed] == [
        ("4711", "order_changed", 60)
    ]
    order = live(e, T0 + 2 * M)["order"]
    assert (order["order_id"], order["target_quantity"], order["good_count"]) == ("4712", 500, 40)
    # An empty id clears the order.
    feed(e, T0 + 3 * M, order="")
    out = validated(e.tick(T0 + 3 * M))
    assert [m.payload["reason"] for m in out if m.topic_suffix == "order/closed"] == [
        "order_cleared"
    ]
    assert live(e, T0 + 3 * M)["order"]["status"] == "none"


# --- reliability -----------------------------------------------------------------------------


def test_mtbf_mttr_and_top_downtime_reasons() -> None:
    # Shift 06:00–14:00 with a break 09:00–09:15: planned 27,900 s.
    cfg = line_cfg(
        shifts=(
            Shift(
                name="day",
                start=time(6),
                end=time(14),
                breaks=(Break(start=time(9), end=time(9, 15)),),
            ),
        ),
        signals={
            "energy": None,
            "power": None,
            "reason": ReasonSignal(
                tag="plc.reason", map={1: "jam", 2: "no material", 3: "overload"}
            ),
        },
    )
    e = WireEngine(cfg, site="s")
    at = lambda h, m=0: T0 + (h - 6) * H + m * M  # noqa: E731
    feed(e, at(6), state=1, total=0, rejects=0, reason=0)
    feed(e, at(7), reason=1, state=3)  # fault 1, jam: 07:00–07:10 = 600 s
    feed(e, at(7, 10), state=1)
    feed(e, at(8, 55), state=3)  # fault 2, jam: 08:55–09:00 = 300 s in planned time
    feed(e, at(9, 5), state=1)  # (09:00–09:05 is the break: planned stop)
    feed(e, at(9, 10), reason=3, state=3)  # starts in the break: not counted; 09:15–09:20 = 300 s
    feed(e, at(9, 20), state=1)
    feed(e, at(10), reason=2, state=2)  # idle, no material: 1,200 s
    feed(e, at(10, 20), state=1)
    feed(e, at(11), reason=3, state=3)  # fault 3, overload: 11:00–11:05 = 300 s
    e.ingest(Sample("plc", "state", None, Quality.BAD, None, at(11, 5)))  # unknown 300 s
    feed(e, at(11, 10), state=3)  # the same fault seen again: 11:10–11:20 = 600 s
    feed(e, at(11, 20), state=1)
    feed(e, at(13, 50), reason=1, state=3)  # fault 4, jam: 13:50–14:00 = 600 s in the shift
    out = validated(e.finish(at(14, 10)))  # the data ends: no later counter sample
    shift = next(m.payload for m in out if m.topic_suffix == "kpi/shift")
    # Faults: 07:00, 08:55, 11:00, 13:50 = 4. Fault time 600 + 300 + 300 + 900 + 600 = 2,700 s.
    assert shift["fault_count"] == 4
    assert shift["loss_time_s"]["fault"] == approx(2700.0)
    assert shift["mttr_s"] == approx(675.0)  # 2,700 ÷ 4
    # Run = 27,900 − 300 unknown − 2,700 fault − 1,200 idle = 23,700 s; MTBF 23,700 ÷ 4.
    assert shift["run_time_s"] == approx(23700.0)
    assert shift["mtbf_s"] == approx(5925.0)
    # jam 600 + 300 + 600 = 1,500; overload 300 + 900 = 1,200; no material 1,200 (ties by name).
    assert shift["top_downtime_reasons"] == [
        {"reason": "jam", "time_s": 1500.0},
        {"reason": "no material", "time_s": 1200.0},
        {"reason": "overload", "time_s": 1200.0},
    ]
    hours = {m.payload["window"]["name"]: m.payload for m in out if m.topic_suffix == "kpi/hour"}
    # 13:00 hour: fault 4 started there, 600 s in it; the 14:00 hour is off shift: no fault
    # starts, its 10 fault minutes are planned stop.
    assert (hours["13:00"]["fault_count"], hours["13:00"]["mttr_s"]) == (1, 600.0)
    assert (hours["11:00"]["fault_count"], hours["11:00"]["mttr_s"]) == (1, 900.0)
    assert hours["09:00"]["fault_count"] == 0 and hours["09:00"]["mttr_s"] is None
    assert hours["09:00"]["loss_time_s"]["fault"] == approx(300.0)
    kpi = live(e, at(14, 10))["kpi"]
    assert kpi["window"]["kind"] == "off_shift"
    assert (kpi["fault_count"], kpi["mtbf_s"], kpi["mttr_s"]) == (0, None, None)
