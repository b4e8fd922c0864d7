"""KPI scenarios with hand-computed expectations (docs/kpi.md quotes these numbers).

Every payload a test produces is validated against its JSON Schema. Unless a test says otherwise:
line1 in UTC, ideal cycle time 1 s, one shift "day" 06:00–14:00 with breaks 09:00–09:15 and
12:00–12:15 (8 h = 28,800 s, planned 27,000 s), Monday 2024-03-04.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_agent.config.schema import (
    Break,
    Calendar,
    CounterSignal,
    ExtraDay,
    LineConfig,
    MachineState,
    Maintenance,
    Product,
    ProductSignal,
    ReasonSignal,
    Shift,
    Signals,
    StateSignal,
)
from edge_agent.engine.shifts import HOUR, OFF_SHIFT, SHIFT, ShiftCalendar, hour_window
from edge_agent.model import OutMessage, Quality, Sample
from tests.helpers.wire import WireEngine

S = MachineState
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
# Checked once, then used as compiled validators: jsonschema.validate() re-checks the schema on
# every call, which costs far more than the engine.
KPI = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "kpi.schema.json").read_text()))
STATE = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "state.schema.json").read_text()))
KPI.check_schema(KPI.schema)
STATE.check_schema(STATE.schema)
STATE_MAP = {1: S.RUNNING, 2: S.IDLE, 3: S.FAULT, 4: S.PLANNED_STOP, 5: S.CHANGEOVER}
DAY = Shift(
    name="day",
    start=time(6),
    end=time(14),
    breaks=(Break(start=time(9), end=time(9, 15)), Break(start=time(12), end=time(12, 15))),
)
UTC = ZoneInfo("UTC")
T0 = datetime(2024, 3, 4, 6, 0, tzinfo=UTC).timestamp()  # Monday 06:00 UTC
H, M = 3600.0, 60.0
EPS = 1e-6  # payload ratios are rounded to 6 decimals


def signals(**kw: Any) -> Signals:
    args: dict[str, Any] = {
        "state": StateSignal(tag="plc.state", map=STATE_MAP),
        "total_count": CounterSignal(tag="plc.total", rollover=65536),
        "reject_count": CounterSignal(tag="plc.rejects", rollover=65536),
    }
    args.update(kw)
    return Signals(**args)


def line_cfg(**kw: Any) -> LineConfig:
    args: dict[str, Any] = {
        "name": "line1",
        "timezone": "UTC",
        "ideal_cycle_time_s": 1.0,
        "shifts": (DAY,),
        "signals": signals(),
    }
    args.update(kw)
    return LineConfig(**args)


def feed(engine: WireEngine, t: float, **values: Any) -> None:
    """Samples at ``t``, in the order given."""
    for tag, value in values.items():
        engine.ingest(Sample("plc", tag, value, Quality.GOOD, None, t))


def validated(messages: list[OutMessage]) -> list[OutMessage]:
    for seq, m in enumerate(messages, 1):
        validator = STATE if m.topic_suffix == "state" else KPI
        validator.validate({**m.payload, "seq": seq})
    return messages


def reports(messages: list[OutMessage], topic: str) -> list[dict[str, Any]]:
    return [m.payload for m in validated(messages) if m.topic_suffix == topic]


def snap(engine: WireEngine, t: float) -> dict[str, Any]:
    return validated([engine.snapshot(t)])[0].payload


def assert_apq(p: dict[str, Any], a: float, perf: float, q: float, oee: float) -> None:
    got = (p["availability"], p["performance"], p["quality"], p["oee"])
    for value, want in zip(got, (a, perf, q, oee), strict=True):
        assert value is not None and abs(value - want) <= EPS, (got, (a, perf, q, oee))


def run_shift(engine: WireEngine, end: float) -> dict[str, Any]:
    """The shift report at ``end``, the data of the shift complete (no later counter sample)."""
    shifts = reports(engine.finish(end), "kpi/shift")
    assert len(shifts) == 1
    return shifts[0]


# --- calendar --------------------------------------------------------------------------------


def test_planned_maintenance_overlapping_a_fault_counts_once_as_planned() -> None:
    # Maintenance 10:00–11:00, fault 10:30–11:30: the overlap 10:30–11:00 is planned, not lost.
    #   planned stops = breaks 1,800 + maintenance 3,600 = 5,400 s; planned = 28,800 − 5,400
    #   = 23,400 s; fault loss = 11:00–11:30 = 1,800 s; run = 23,400 − 1,800 = 21,600 s.
    #   20,000 parts, 200 rejects:
    #   A = 21,600/23,400 = 0.923077; P = 20,000/21,600 = 0.925926; Q = 19,800/20,000 = 0.99;
    #   OEE = 19,800/23,400 = 0.846154 (= A × P × Q).
    cal = Calendar(
        maintenance=(
            Maintenance(
                start=datetime(2024, 3, 4, 10), end=datetime(2024, 3, 4, 11), reason="press"
            ),
        )
    )
    e = WireEngine(line_cfg(calendar=cal), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 4.5 * H, state=3)
    feed(e, T0 + 5.5 * H, state=1)
    feed(e, T0 + 8 * H - 60, total=20_000, rejects=200)
    p = run_shift(e, T0 + 8 * H)
    assert p["planned_stop_s"] == 5_400
    assert p["planned_stop_by_cause_s"] == {
        "break": 1_800,
        "maintenance": 3_600,
        "off_shift": 0,
        "planned_stop": 0,
    }
    assert p["planned_time_s"] == 23_400
    assert p["loss_time_s"]["fault"] == 1_800
    assert p["run_time_s"] == 21_600
    assert_apq(p, 0.923077, 0.925926, 0.99, 0.846154)


def test_holiday_has_no_planned_time() -> None:
    # Monday 2024-03-04 is a holiday: the day shift is not held. The line runs anyway and makes
    # 1,000 parts; they are counted, but no time is planned, so A, P, Q and OEE are null and no
    # kpi/shift is published. Tuesday's shift is held as usual.
    cal = Calendar(holidays=(date(2024, 3, 4),))
    e = WireEngine(line_cfg(calendar=cal), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 2 * H, total=1_000)
    out = e.finish(T0 + 8 * H)
    assert reports(out, "kpi/shift") == []
    p = snap(e, T0 + 8 * H)
    assert p["window"]["kind"] == OFF_SHIFT
    # Sunday 14:00 (end of the last shift) to Tuesday 06:00.
    assert (p["window"]["start"], p["window"]["end"]) == (
        "2024-03-03T14:00:00+00:00",
        "2024-03-05T06:00:00+00:00",
    )
    assert p["planned_time_s"] == 0
    assert p["planned_stop_by_cause_s"]["off_shift"] == p["elapsed_s"] == 24 * H
    assert p["total_count"] == 1_000
    assert (p["availability"], p["performance"], p["quality"], p["oee"]) == (None,) * 4
    # The holiday's hours are reported, without planned time and without ratios.
    hours = reports(out, "kpi/hour")
    assert len(hours) == 8 and all(h["planned_time_s"] == 0 for h in hours)
    assert all(h["oee"] is None and h["quality"] is None for h in hours)
    e.tick(T0 + 24 * H)
    assert e.window is not None and e.window.kind == SHIFT and e.window.name == "day"


def test_weekday_only_shifts_and_an_extra_working_day() -> None:
    # The day shift runs Monday to Friday; Saturday 2024-03-16 is worked like a Monday.
    weekdays = Shift(
        name="day", start=time(6), end=time(14), breaks=DAY.breaks, days=frozenset(range(5))
    )
    cal = ShiftCalendar(
        "UTC", [weekdays], Calendar(extra_days=(ExtraDay(date=date(2024, 3, 16), like=0),))
    )
    friday = datetime(2024, 3, 8, tzinfo=UTC).date()
    assert [w.name for w in cal.day_windows(friday)] == ["day"]
    assert cal.day_windows(date(2024, 3, 9)) == ()  # Saturday
    assert cal.day_windows(date(2024, 3, 10)) == ()  # Sunday
    assert [w.name for w in cal.day_windows(date(2024, 3, 16))] == ["day"]  # extra day
    sat = datetime(2024, 3, 9, 8, tzinfo=UTC).timestamp()
    off = cal.window_or_off_shift(sat)
    assert off.kind == OFF_SHIFT
    assert off.start == datetime(2024, 3, 8, 14, tzinfo=UTC).timestamp()
    assert off.end == datetime(2024, 3, 11, 6, tzinfo=UTC).timestamp()

    # Through the engine: Friday's shift runs flat out, then the weekend is off shift.
    #   planned 27,000 s, run 27,000 s, 27,000 parts, no rejects: A = P = Q = OEE = 1.
    fri = datetime(2024, 3, 8, 6, tzinfo=UTC).timestamp()
    e = WireEngine(line_cfg(shifts=(weekdays,)), site="plant")
    feed(e, fri, state=1, total=0, rejects=0)
    feed(e, fri + 8 * H - 1, total=27_000)
    out = e.finish(fri + 3 * 24 * H + 1)  # Monday 06:00:01
    shifts = reports(out, "kpi/shift")
    assert len(shifts) == 1 and shifts[0]["window"]["start"] == "2024-03-08T06:00:00+00:00"
    assert_apq(shifts[0], 1.0, 1.0, 1.0, 1.0)
    # Weekend hours: no planned time.
    weekend = [h for h in reports(out, "kpi/hour") if h["window"]["start"] >= "2024-03-09"]
    assert len(weekend) == 48 + 6 and all(h["planned_time_s"] == 0 for h in weekend)
    assert e.window is not None and e.window.kind == SHIFT


def test_hour_windows_follow_the_local_clock_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # Autumn 2024-10-27: 02:00–03:00 happens twice (CEST, then CET); each hour is 3,600 s.
    first = datetime(2024, 10, 27, 0, 30, tzinfo=UTC).timestamp()  # 02:30 CEST
    second = first + H  # 02:30 CET
    w1, w2 = hour_window(first, berlin), hour_window(second, berlin)
    assert (w1.name, w2.name) == ("02:00", "02:00")
    assert w1.end == w2.start and w1.end - w1.start == w2.end - w2.start == H
    # Spring 2024-03-31: 02:00 does not exist; 01:00 CET is followed by 03:00 CEST.
    spring = datetime(2024, 3, 31, 0, 30, tzinfo=UTC).timestamp()  # 01:30 CET
    w = hour_window(spring, berlin)
    assert w.name == "01:00" and w.end - w.start == H
    assert hour_window(w.end, berlin).name == "03:00"
    # India is UTC+05:30: local clock hours start at :30 UTC.
    kolkata = hour_window(
        datetime(2024, 3, 4, 6, 45, tzinfo=UTC).timestamp(), ZoneInfo("Asia/Kolkata")
    )
    assert kolkata.start == datetime(2024, 3, 4, 6, 30, tzinfo=UTC).timestamp()


# --- losses, reasons, micro-stops ------------------------------------------------------------


def test_downtime_per_reason() -> None:
    # 06:00–07:00, reasons {12: jam, 31: no material}:
    #   06:10–06:15 fault, reason 12        → jam          300 s
    #   06:20–06:30 idle, reason 31         → no material  600 s
    #   06:40–06:42 fault, reason 77        → code 77      120 s (unmapped)
    #   06:50–06:51 fault, reason bad       → unspecified   60 s (the time itself stays known)
    #   fault 480 s + idle 600 s = 1,080 s = Σ reasons; run 3,600 − 1,080 = 2,520 s.
    #   2,400 parts, 24 rejects: A = 2,520/3,600 = 0.7; P = 2,400/2,520 = 0.952381;
    #   Q = 2,376/2,400 = 0.99; OEE = 2,376/3,600 = 0.66.
    sig = signals(reason=ReasonSignal(tag="plc.reason", map={12: "jam", 31: "no material"}))
    e = WireEngine(line_cfg(signals=sig), site="plant")
    feed(e, T0, state=1, reason=0, total=0, rejects=0)
    feed(e, T0 + 10 * M, reason=12, state=3)
    feed(e, T0 + 15 * M, state=1, reason=0)
    feed(e, T0 + 20 * M, reason=31, state=2)
    feed(e, T0 + 30 * M, state=1)
    feed(e, T0 + 40 * M, reason=77, state=3)
    feed(e, T0 + 42 * M, state=1)
    e.ingest(Sample("plc", "reason", 0, Quality.BAD, None, T0 + 50 * M))
    feed(e, T0 + 50 * M, state=3)
    feed(e, T0 + 51 * M, state=1)
    feed(e, T0 + H - 1, total=2_400, rejects=24)
    hour = reports(e.finish(T0 + H), "kpi/hour")[0]
    p = snap(e, T0 + H)
    for r in (hour, p):
        assert r["loss_time_by_reason_s"] == {
            "code 77": 120,
            "jam": 300,
            "no material": 600,
            "unspecified": 60,
        }
        assert r["loss_time_s"]["fault"] == 480 and r["loss_time_s"]["idle"] == 600
        assert (r["run_time_s"], r["unknown_time_s"]) == (2_520, 0)
        assert r["micro_stop_count"] == 0  # the 60 s fault is not shorter than 60 s
        assert_apq(r, 0.7, 0.952381, 0.99, 0.66)


def test_micro_stops_with_the_state_inferred_from_the_counter() -> None:
    # No state signal: running while parts arrive, idle 5 s (5 × ideal) after the last part.
    # micro_stop_max 30 s. A part every second over 06:00:01–06:10:00, 06:10:20–06:20:00,
    # 06:21:40–06:30:00, 06:30:25–06:59:59 (600 + 581 + 501 + 1,775 = 3,457 parts).
    #   idle 06:10:05–06:10:20 = 15 s  → micro-stop
    #   idle 06:20:05–06:21:40 = 95 s  → a stop, not micro
    #   idle 06:30:05–06:30:25 = 20 s  → micro-stop
    #   micro_stop_count 2, micro_stop_time_s 35; idle 130 s; unknown 06:00:00–06:00:01 = 1 s;
    #   run = 3,600 − 1 − 130 = 3,469 s. The first part, seen at 06:00:01, covers the unknown
    #   second before it: counted, but not paired with run time (unknown_time_count 1).
    #   A = 3,469/3,599 = 0.963879; P = 3,456/3,469 = 0.996253; Q = 1;
    #   OEE = 3,456/3,599 = 0.960267.
    cfg = line_cfg(
        signals=Signals(total_count=CounterSignal(tag="plc.total")), micro_stop_max_s=30.0
    )
    e = WireEngine(cfg, site="plant")
    feed(e, T0, total=0)
    n = 0
    for first, last in ((1, 600), (620, 1200), (1300, 1800), (1825, 3599)):
        for i in range(first, last + 1):
            n += 1
            feed(e, T0 + i, total=n)
    assert n == 3_457
    hour = reports(e.finish(T0 + H), "kpi/hour")[0]
    p = snap(e, T0 + H)
    for r in (hour, p):
        assert (r["micro_stop_count"], r["micro_stop_time_s"]) == (2, 35)
        assert r["loss_time_s"]["idle"] == 130  # micro-stops stay availability losses
        assert (r["unknown_time_s"], r["run_time_s"], r["total_count"]) == (1, 3_469, 3_457)
        assert r["unknown_time_count"] == 1
        assert_apq(r, 0.963879, 0.996253, 1.0, 0.960267)


def test_micro_stop_default_threshold_and_a_stop_across_an_hour() -> None:
    # Default micro_stop_max = max(60 s, 2 × stop_after) = 60 s with a 1 s ideal cycle time.
    # A 40 s fault 06:59:40–07:00:20 is a micro-stop: counted in hour 07 (where it ends) with
    # its 20 s there, and in the shift with all 40 s; hour 06 just has 20 s of fault.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + H - 20, state=3)
    feed(e, T0 + H + 20, state=1)
    out = e.finish(T0 + 2 * H)
    h6, h7 = reports(out, "kpi/hour")
    assert (h6["micro_stop_count"], h6["loss_time_s"]["fault"]) == (0, 20)
    assert (h7["micro_stop_count"], h7["micro_stop_time_s"]) == (1, 20)
    p = snap(e, T0 + 2 * H)
    assert (p["micro_stop_count"], p["micro_stop_time_s"]) == (1, 40)


# --- counters ---------------------------------------------------------------------------------


def test_16_bit_counter_wrap() -> None:
    # The counter reads 65,000 at 06:00 and 3,000 at 07:00: (3,000 − 65,000) mod 65,536 = 3,536
    # parts, plausible for 3,600 s at 1 s/part. Then 06:00–07:00: run 3,600, 3,536 parts.
    #   A = 1; P = 3,536/3,600 = 0.982222; Q = 1; OEE = 0.982222.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=65_000, rejects=0)
    feed(e, T0 + H - 1, total=3_000)
    hour = reports(e.finish(T0 + H), "kpi/hour")[0]
    assert hour["total_count"] == 3_536
    assert hour["warnings"] == ["counter_wrap"]
    assert_apq(hour, 1.0, 3_536 / 3_600, 1.0, 3_536 / 3_600)


def test_plc_counter_reset() -> None:
    # 06:00 reads 40,000; 06:30 reads 1,500: (1,500 − 40,000) mod 65,536 = 27,036 parts in
    # 1,800 s is more than twice the ideal rate: a reset; the 1,500 parts since count.
    # 07:00 reads 3,300: +1,800. Hour 06: 3,300 parts, run 3,600 s.
    #   A = 1; P = 3,300/3,600 = 0.916667; Q = 1; OEE = 0.916667.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=40_000, rejects=0)
    feed(e, T0 + 30 * M, total=1_500)
    feed(e, T0 + H - 1, total=3_300)
    hour = reports(e.finish(T0 + H), "kpi/hour")[0]
    assert hour["total_count"] == 3_300
    assert hour["warnings"] == ["counter_reset"]
    assert_apq(hour, 1.0, 0.916667, 1.0, 0.916667)


def test_counter_flags_reach_the_shift_and_hour_reports_of_their_window() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=65_000, rejects=0)
    feed(e, T0 + 1.5 * H, total=4_000)  # 07:30: wrap (4,536 parts in 5,400 s)
    e.source_restarted("plc", T0 + 3.5 * H)
    feed(e, T0 + 3.5 * H + 1, total=10)  # 09:30: the PLC restarted: reset
    for i in range(1, 9):
        feed(e, T0 + i * H - 1, total=10 + i)
    out = e.finish(T0 + 8 * H)
    hours = reports(out, "kpi/hour")
    assert [h["window"]["name"] for h in hours] == [f"{h:02d}:00" for h in range(6, 14)]
    flags = {
        h["window"]["name"]: [w for w in h["warnings"] if w.startswith("counter")] for h in hours
    }
    assert flags["07:00"] == ["counter_wrap"]
    assert flags["09:00"] == ["counter_reset"]
    assert all(flags[n] == [] for n in flags if n not in ("07:00", "09:00"))
    shift = reports(out, "kpi/shift")[0]
    assert {"counter_wrap", "counter_reset"} <= set(shift["warnings"])
    # The next shift's live report starts clean.
    assert not {"counter_wrap", "counter_reset"} & set(snap(e, T0 + 24 * H)["warnings"])


# --- performance and products -----------------------------------------------------------------


def test_ideal_cycle_time_longer_than_real_gives_performance_above_one_unclamped() -> None:
    # Configured ideal 1 s, the machine really makes 1.25 parts/s (0.8 s a part): the configured
    # ideal is wrong. 33,750 parts in 27,000 s of run time, 675 rejects.
    #   A = 1; P = 33,750/27,000 = 1.25 (warning performance_above_ideal);
    #   Q = 33,075/33,750 = 0.98; OEE = 33,075/27,000 = 1.225.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 8 * H - 1, total=33_750, rejects=675)
    p = run_shift(e, T0 + 8 * H)
    assert_apq(p, 1.0, 1.25, 0.98, 1.225)
    assert p["warnings"] == ["performance_above_ideal"]


def two_products_engine() -> WireEngine:
    sig = signals(
        product=ProductSignal(
            tag="plc.recipe",
            map={
                1: Product(name="A-100", ideal_cycle_time_s=1.2),
                2: Product(name="B-200", ideal_cycle_time_s=2.0),
            },
        )
    )
    return WireEngine(line_cfg(signals=sig), site="plant")


def test_two_products_with_different_cycle_times() -> None:
    # A-100 (1.2 s) 06:00–10:00, B-200 (2.0 s) 10:00–14:00; running all shift (run 27,000 s).
    # The 10:00 poll shows the recipe change and 10,000 parts: those parts were made before
    # the change and count for A-100.
    #   10,000 parts, 100 rejects; B-200: 6,000 parts, 300 rejects.
    #   net run time = 1.2 × 10,000 + 2.0 × 6,000 = 24,000 s;
    #   fully productive time = 1.2 × 9,900 + 2.0 × 5,700 = 23,280 s.
    #   A = 1; P = 24,000/27,000 = 0.888889; Q = 15,600/16,000 = 0.975;
    #   OEE = 23,280/27,000 = 0.862222 = A × P × (23,280/24,000 = 0.97, quality weighted by
    #   ideal cycle time); A × P × Q would give 0.866667.
    #   ideal_cycle_time_s = 24,000/16,000 = 1.5 (count-weighted).
    e = two_products_engine()
    feed(e, T0, recipe=1, state=1, total=0, rejects=0)
    feed(e, T0 + 4 * H, recipe=2, total=10_000, rejects=100)
    feed(e, T0 + 8 * H - 1, total=16_000, rejects=400)
    p = run_shift(e, T0 + 8 * H)
    assert p["products"] == [
        {
            "product": "A-100",
            "code": 1,
            "ideal_cycle_time_s": 1.2,
            "total_count": 10_000,
            "good_count": 9_900,
            "reject_count": 100,
        },
        {
            "product": "B-200",
            "code": 2,
            "ideal_cycle_time_s": 2.0,
            "total_count": 6_000,
            "good_count": 5_700,
            "reject_count": 300,
        },
    ]
    assert (p["net_run_time_s"], p["fully_productive_time_s"]) == (24_000, 23_280)
    assert p["ideal_cycle_time_s"] == 1.5
    assert_apq(p, 1.0, 0.888889, 0.975, 0.862222)
    assert p["warnings"] == []


def test_unmapped_product_code_falls_back_to_the_line_ideal_cycle_time() -> None:
    # Code 9 is not in the map: its 1,000 parts use the line's 1 s; 1,000 parts of A-100 at
    # 1.2 s. 06:00–07:00 all running: P = (1,000 × 1.2 + 1,000 × 1.0)/3,600 = 0.611111.
    e = two_products_engine()
    feed(e, T0, recipe=1, state=1, total=0, rejects=0)
    feed(e, T0 + 30 * M, recipe=9, total=1_000)
    feed(e, T0 + H - 1, total=2_000)
    hour = reports(e.finish(T0 + H), "kpi/hour")[0]
    assert [
        (r["product"], r["ideal_cycle_time_s"], r["total_count"]) for r in hour["products"]
    ] == [
        ("A-100", 1.2, 1_000),
        ("code 9", 1.0, 1_000),
    ]
    assert hour["warnings"] == ["unmapped_product_code"]
    assert abs(hour["performance"] - 0.611111) <= EPS


# --- unknown time -----------------------------------------------------------------------------


def test_source_outage_and_a_configurable_coverage_threshold() -> None:
    # 06:00–07:00: the source is down 06:20–06:30 (600 s unknown). 3,600 parts at the ideal
    # rate: 1,200 by 06:20, 600 in the outage (seen at 06:30), 1,800 by 07:00.
    #   A = 3,000/3,000 = 1; P = 3,000 parts in known time/3,000 = 1; Q = 1; OEE = 1;
    #   data_coverage = 3,000/3,600 = 0.833333: below the default 0.9, above 0.8.
    for threshold, warned in ((0.9, True), (0.8, False)):
        e = WireEngine(line_cfg(min_data_coverage=threshold), site="plant")
        feed(e, T0, state=1, total=0, rejects=0)
        feed(e, T0 + 20 * M, total=1_200, rejects=0)
        e.source_available("plc", False, T0 + 20 * M)
        e.source_available("plc", True, T0 + 30 * M)
        feed(e, T0 + 30 * M, state=1, total=1_800, rejects=0)
        feed(e, T0 + H, total=3_600, rejects=0)
        p = snap(e, T0 + H)
        assert (p["unknown_time_s"], p["run_time_s"]) == (600, 3_000)
        assert (p["total_count"], p["unknown_time_count"]) == (3_600, 600)
        assert_apq(p, 1.0, 1.0, 1.0, 1.0)
        assert p["data_coverage"] == 0.833333
        assert ("low_data_coverage" in p["warnings"]) is warned


def test_agent_started_mid_shift_knows_only_the_time_since_its_start() -> None:
    # Started at 10:00; at 11:00 the shift's planned time so far is 5 h − 15 min break =
    # 17,100 s, of which 3,600 s known: coverage 0.210526. A = 3,600/3,600 = 1.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0 + 4 * H, state=1, total=0, rejects=0)
    feed(e, T0 + 5 * H, total=3_600)
    p = snap(e, T0 + 5 * H)
    assert (p["planned_time_s"], p["unknown_time_s"]) == (17_100, 13_500)
    assert p["data_coverage"] == 0.210526
    assert_apq(p, 1.0, 1.0, 1.0, 1.0)
    assert "low_data_coverage" in p["warnings"]


# --- hourly buckets ---------------------------------------------------------------------------


def test_hourly_bucket_report() -> None:
    # Hour 09:00–10:00: break 09:00–09:15 (900 s), fault 09:30–09:40 (600 s).
    #   planned = 3,600 − 900 = 2,700 s; run = 2,700 − 600 = 2,100 s.
    #   Counter 10,000 at 09:00 and 12,000 at 10:00 (a sample at an hour's end closes that
    #   hour), rejects 50 → 70: 2,000 parts, 20 rejects. A = 2,100/2,700 = 0.777778;
    #   P = 2,000/2,100 = 0.952381; Q = 1,980/2,000 = 0.99; OEE = 1,980/2,700 = 0.733333.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 3 * H, total=10_000, rejects=50)
    feed(e, T0 + 3.5 * H, state=3)
    feed(e, T0 + 3.5 * H + 10 * M, state=1)
    feed(e, T0 + 4 * H, total=12_000, rejects=70)
    out = validated(e.tick(T0 + 4 * H))
    hours = [m for m in out if m.topic_suffix == "kpi/hour"]
    assert [m.payload["window"]["name"] for m in hours] == ["06:00", "07:00", "08:00", "09:00"]
    msg = hours[-1]
    assert (msg.retain, msg.qos) == (False, 1)
    p = msg.payload
    assert p["window"] == {
        "kind": HOUR,
        "name": "09:00",
        "start": "2024-03-04T09:00:00+00:00",
        "end": "2024-03-04T10:00:00+00:00",
    }
    assert p["ts"] == "2024-03-04T10:00:00.000+00:00"
    assert (p["elapsed_s"], p["planned_stop_s"], p["planned_time_s"]) == (3_600, 900, 2_700)
    assert p["planned_stop_by_cause_s"]["break"] == 900
    assert (p["run_time_s"], p["loss_time_s"]["fault"]) == (2_100, 600)
    assert (p["total_count"], p["good_count"], p["reject_count"]) == (2_000, 1_980, 20)
    assert p["throughput_good_per_h"] == 1_980
    assert_apq(p, 0.777778, 0.952381, 0.99, 0.733333)
    # At a common end the hour is reported before the shift.
    out = e.finish(T0 + 8 * H)
    assert [m.topic_suffix for m in out if m.topic_suffix.startswith("kpi/")][-2:] == [
        "kpi/hour",
        "kpi/shift",
    ]


def test_hours_across_a_shift_change_split_planned_time() -> None:
    # Shifts 06:30–14:30 and 14:30–22:30: hour 14:00–15:00 holds the end of one and the start
    # of the other; 22:30–23:00 is off shift (1,800 s planned stop, 1,800 s planned).
    a = Shift(name="early", start=time(6, 30), end=time(14, 30))
    b = Shift(name="late", start=time(14, 30), end=time(22, 30))
    e = WireEngine(line_cfg(shifts=(a, b)), site="plant")
    start = T0 + 8 * H  # 14:00
    feed(e, start, state=1, total=0, rejects=0)
    out = e.finish(start + 9 * H)
    hours = {h["window"]["name"]: h for h in reports(out, "kpi/hour")}
    assert hours["14:00"]["planned_time_s"] == 3_600
    assert [s["window"]["name"] for s in reports(out, "kpi/shift")] == ["early", "late"]
    h22 = hours["22:00"]
    assert (h22["planned_time_s"], h22["planned_stop_by_cause_s"]["off_shift"]) == (1_800, 1_800)
    assert h22["run_time_s"] == 1_800 and h22["availability"] == 1.0


# --- restore ----------------------------------------------------------------------------------


def test_restore_keeps_hour_products_reasons_and_micro_stops() -> None:
    def run(e: WireEngine, t0: float, t1: float) -> None:
        for i in range(int(t0), int(t1)):
            feed(e, T0 + i, total=i)

    sig = signals(
        state=None,
        reject_count=None,
        total_count=CounterSignal(tag="plc.total"),
        product=ProductSignal(tag="plc.recipe", map={1: Product(name="A", ideal_cycle_time_s=0.8)}),
        reason=ReasonSignal(tag="plc.reason", map={1: "jam"}),
    )
    cfg = line_cfg(signals=sig, micro_stop_max_s=30.0)
    a = WireEngine(cfg, site="plant")
    feed(a, T0, recipe=1, reason=1, total=0)
    run(a, 1, 100)
    run(a, 120, 200)  # a micro-stop 06:01:44–06:02:00 (16 s)
    b = WireEngine(cfg, site="plant")
    b.restore(json.loads(json.dumps(a.state_dict())))
    for e in (a, b):
        run(e, 200, 300)
        e.tick(T0 + 300)
    pa, pb = snap(a, T0 + 300), snap(b, T0 + 300)
    for key in ("products", "micro_stop_count", "micro_stop_time_s", "loss_time_by_reason_s"):
        assert pa[key] == pb[key]
    assert pa["micro_stop_count"] == 1 and pa["loss_time_by_reason_s"] == {"jam": 16}
    assert pa["products"][0]["total_count"] == 299
    # The second between the saved moment (06:03:19) and the next sample was not observed.
    ha, hb = a.hour_buckets(), b.hour_buckets()
    assert ha is not None and hb is not None
    assert (hb.run_s, hb.unknown_s) == (ha.run_s - 1, ha.unknown_s + 1)


def test_version_1_state_still_restores() -> None:
    e = WireEngine(line_cfg(), site="plant")
    v1 = {
        "version": 1,
        "line": "line1",
        "now": T0 + H,
        "state": "running",
        "state_since": T0,
        "idle_at": None,
        "counters": {
            "total": {"tag": "plc.total", "value": 3000, "time": T0 + H},
            "reject": {"tag": "plc.rejects", "value": 10, "time": T0 + H},
        },
        "pending": [],
        "window": {"kind": "shift", "name": "day", "start": T0, "end": T0 + 8 * H},
        "accounting": {
            "start": T0,
            "end": T0 + 8 * H,
            "planned": [[T0, T0 + 3 * H], [T0 + 3.25 * H, T0 + 6 * H], [T0 + 6.25 * H, T0 + 8 * H]],
            "sums": {"run": 3600.0},
        },
        "counts": {"total": 3000, "reject": 10, "good": 0},
        "flags": [],
    }
    e.restore(v1)
    feed(e, T0 + H + 10, total=3010)
    p = snap(e, T0 + H + 10)
    assert (p["total_count"], p["reject_count"], p["run_time_s"]) == (3010, 10, 3600)


# --- properties -------------------------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.floats(0.0, 1.5 * H),
        st.sampled_from(["state", "total", "rejects", "recipe", "reason", "down", "up", "bad"]),
        st.integers(0, 6),
    ),
    max_size=40,
)
PRODUCTS = {
    1: Product(name="A", ideal_cycle_time_s=0.5),
    2: Product(name="B", ideal_cycle_time_s=2.0),
}


def within_rounding(ratio: float, numerator: float, seconds: float, times: int) -> bool:
    """``ratio`` is ``numerator / seconds`` where ``seconds`` is the sum of ``times`` payload
    times, each rounded to 1 ms (the numerator is exact enough: parts times ideal time)."""
    slack = 0.0005 * times + 1e-9
    low = numerator / (seconds + slack)
    high = numerator / (seconds - slack) if seconds > slack else math.inf
    return low * (1 - 1e-6) - 1e-6 <= ratio <= high * (1 + 1e-6) + 1e-6


@settings(max_examples=50, deadline=None)
@given(EVENTS)
# Runs of 0.3125 s: ratios of times rounded to 1 ms (found by the search, kept).
@example([(0.0, "state", 1), (0.0, "total", 6), (3600.3125, "state", 2), (5379.99, "total", 1)])
@example([(0.0, "state", 1), (0.0, "total", 0), (3600.3125, "state", 0), (0.0, "total", 1)])
def test_hours_roll_up_to_the_shift_and_oee_is_fully_productive_over_known_time(
    events: list[tuple[float, str, int]],
) -> None:
    """Over random timelines:

    - every report's time buckets add up to its elapsed time, loss by reason to the losses, and
      planned stops by cause to the planned stops;
    - the eight hour reports of a shift add up to its shift report (times and total count);
    - OEE = Σ_products ideal_p × good_p / (planned − unknown) = fully_productive_time_s /
      (planned_time_s − unknown_time_s), and performance = net_run_time_s / run_time_s;
    - counts are never negative and good + reject = total, per product too.
    """
    sig = signals(
        product=ProductSignal(tag="plc.recipe", map=PRODUCTS),
        reason=ReasonSignal(tag="plc.reason", map={1: "jam"}),
    )
    e = WireEngine(line_cfg(signals=sig), site="plant")
    t = T0 - H
    total = rejects = 0
    out: list[OutMessage] = []
    for dt, kind, v in events:
        t += dt
        if kind == "total":
            total += v * 100
            feed(e, t, total=total % 65536)
        elif kind == "rejects":
            rejects += v
            feed(e, t, rejects=rejects % 65536)
        elif kind in ("state", "recipe", "reason"):
            feed(e, t, **{kind: v})
        elif kind == "bad":
            e.ingest(Sample("plc", "total", 0, Quality.BAD, None, t))
        else:
            e.source_available("plc", kind == "up", t)
        out += e.tick(t)
    out += e.tick(t + 24 * H)
    out.append(e.snapshot(t + 24 * H))
    validated(out)
    kpis = [m.payload for m in out if m.topic_suffix.startswith("kpi")]
    for p in kpis:
        losses = sum(p["loss_time_s"].values())
        parts = p["run_time_s"] + losses + p["planned_stop_s"] + p["unknown_time_s"]
        assert math.isclose(parts, p["elapsed_s"], abs_tol=0.01)
        assert math.isclose(sum(p["loss_time_by_reason_s"].values()), losses, abs_tol=0.01)
        causes = sum(p["planned_stop_by_cause_s"].values())
        assert math.isclose(causes, p["planned_stop_s"], abs_tol=0.01)
        assert min(p["total_count"], p["good_count"], p["reject_count"]) >= 0
        assert p["good_count"] + p["reject_count"] == p["total_count"]
        for row in p["products"]:
            assert min(row["total_count"], row["good_count"], row["reject_count"]) >= 0
            assert row["good_count"] + row["reject_count"] == row["total_count"]
        assert sum(r["total_count"] for r in p["products"]) == p["total_count"]
        fpt = sum(r["ideal_cycle_time_s"] * r["good_count"] for r in p["products"])
        net = sum(r["ideal_cycle_time_s"] * r["total_count"] for r in p["products"])
        assert math.isclose(p["fully_productive_time_s"], fpt, abs_tol=1e-3)
        known = p["planned_time_s"] - p["unknown_time_s"]
        if p["oee"] is not None:
            # The ratios are computed before the times are rounded to 1 ms in the payload: over
            # a run of a fraction of a second that rounding moves a ratio by up to 0.2 %.
            assert within_rounding(p["oee"], fpt, known, 2), p
            assert within_rounding(p["performance"], net, p["run_time_s"], 1), p
    hours = [p for p in kpis if p["window"]["kind"] == HOUR]
    for shift in (p for p in kpis if p["window"]["kind"] == SHIFT):
        if shift["elapsed_s"] != 8 * H:
            continue  # the live snapshot of an unfinished shift
        inside = [
            h
            for h in hours
            if shift["window"]["start"] <= h["window"]["start"] < shift["window"]["end"]
        ]
        assert len(inside) == 8
        for key in (
            "elapsed_s",
            "planned_time_s",
            "run_time_s",
            "unknown_time_s",
            "planned_stop_s",
        ):
            assert math.isclose(sum(h[key] for h in inside), shift[key], abs_tol=0.01), key
        assert sum(h["total_count"] for h in inside) == shift["total_count"]
        # Rejects seen in an hour before their parts are capped there (good is never negative),
        # and a stop ending exactly at an hour's start has no loss time in it: hence <=.
        for key in ("reject_count", "micro_stop_count"):
            assert sum(h[key] for h in inside) <= shift[key], key
