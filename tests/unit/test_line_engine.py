"""The line engine end to end: samples and time in, kpi / kpi/shift / state messages out."""

from __future__ import annotations

import json
import math
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.schema import (
    Break,
    CounterSignal,
    LineConfig,
    MachineState,
    Shift,
    Signals,
    StateSignal,
)
from edge_agent.engine.oee import compute_kpis
from edge_agent.model import OutMessage, Quality, Sample
from tests.helpers.wire import WireEngine

S = MachineState
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
STATE_MAP = {1: S.RUNNING, 2: S.IDLE, 3: S.FAULT, 4: S.PLANNED_STOP, 5: S.CHANGEOVER}
DAY = Shift(
    name="day",
    start=time(6),
    end=time(14),
    breaks=(Break(start=time(9), end=time(9, 15)), Break(start=time(12), end=time(12, 15))),
)
T0 = datetime(2024, 3, 4, 6, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # Monday 06:00 UTC
H, M = 3600.0, 60.0


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


def smp(key: str, value: Any, t: float, quality: Quality = Quality.GOOD) -> Sample:
    source, _, tag = key.partition(".")
    return Sample(source, tag, value, quality, None, t)


def feed(engine: WireEngine, t: float, **values: Any) -> None:
    for tag, value in values.items():
        engine.ingest(smp(f"plc.{tag}", value, t))


def validate(msg: OutMessage, seq: int = 1) -> None:
    name = "state" if msg.topic_suffix == "state" else "kpi"
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.validate({**msg.payload, "seq": seq}, schema)


def by_topic(messages: list[OutMessage], topic: str) -> list[OutMessage]:
    return [m for m in messages if m.topic_suffix == topic]


def test_classic_worked_example_through_the_engine() -> None:
    # The published example's counts (see the test below) with 30 instead of 60 min of breaks,
    # so not its figures.
    # 480 min shift, breaks 09:00–09:15 and 12:00–12:15 (30 min), fault 10:00–10:47 (47 min),
    # 19,271 parts of which 423 rejects, ideal 1.0 s:
    #   planned = 450 min = 27,000 s, run = 403 min = 24,180 s
    #   A = 403/450 = 0.895556, P = 19,271/24,180 = 0.796981, Q = 18,848/19,271 = 0.978050,
    #   OEE = 18,848/27,000 = 0.698074; throughput good = 18,848/8 h = 2,356/h.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 2 * H, total=7000, rejects=100)
    feed(e, T0 + 4 * H, state=3)
    feed(e, T0 + 4 * H + 47 * M, state=1)
    out = e.tick(T0 + 5 * H)
    assert [m.payload["state"] for m in by_topic(out, "state")] == ["running", "fault", "running"]
    feed(e, T0 + 8 * H - 60, total=19_271, rejects=423)
    assert by_topic(e.tick(T0 + 8 * H - 1), "kpi/shift") == []
    out = e.finish(T0 + 8 * H)  # the data ends at the shift's end
    shifts = by_topic(out, "kpi/shift")
    assert len(shifts) == 1
    msg = shifts[0]
    assert (msg.retain, msg.qos, msg.line) == (False, 1, "line1")
    p = msg.payload
    validate(msg)
    assert p["window"] == {
        "kind": "shift",
        "name": "day",
        "start": "2024-03-04T06:00:00+00:00",
        "end": "2024-03-04T14:00:00+00:00",
    }
    assert p["ts"] == "2024-03-04T14:00:00.000+00:00"
    assert abs(p["availability"] - 0.895556) < 1e-4
    assert abs(p["performance"] - 0.796981) < 1e-4
    assert abs(p["quality"] - 0.978050) < 1e-4
    assert abs(p["oee"] - 0.698074) < 1e-4
    assert p["availability"] == round(403 / 450, 6)
    assert p["oee"] == round(18_848 / 27_000, 6)
    assert (p["total_count"], p["good_count"], p["reject_count"]) == (19_271, 18_848, 423)
    assert p["elapsed_s"] == 28_800
    assert p["planned_time_s"] == 27_000
    assert p["run_time_s"] == 24_180
    assert p["planned_stop_s"] == 1_800
    assert p["unknown_time_s"] == 0
    assert p["loss_time_s"] == {
        "idle": 0.0,
        "fault": 2_820.0,
        "changeover": 0.0,
        "starved": 0.0,
        "blocked": 0.0,
        "planned_stop": 0.0,
    }
    assert p["throughput_good_per_h"] == 2_356.0
    assert p["throughput_total_per_h"] == 2_408.875
    assert p["data_coverage"] == 1.0
    assert p["warnings"] == []
    assert p["convention"] == "iso22400:planned=planned_stop"
    # Later ticks do not repeat the report.
    assert by_topic(e.tick(T0 + 8 * H + 1) + e.tick(T0 + 9 * H), "kpi/shift") == []


def test_published_worked_example_with_a_meal_break() -> None:
    # The published example (oee.com / Vorne): 480 min shift, two 15 min breaks and a 30 min
    # meal (420 min planned), 47 min down, ideal 60 parts/min, 19,271 parts, 423 rejects:
    #   A = 373/420 = 88.81 %, P = 19,271/22,380 s = 86.11 %, Q = 97.80 %, OEE = 74.79 %.
    meal = Shift(
        name="day",
        start=time(6),
        end=time(14),
        breaks=(*DAY.breaks, Break(start=time(11), end=time(11, 30))),
    )
    e = WireEngine(line_cfg(shifts=(meal,)), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 4 * H, state=3)
    feed(e, T0 + 4 * H + 47 * M, state=1)
    feed(e, T0 + 8 * H - 60, total=19_271, rejects=423)
    [msg] = by_topic(e.finish(T0 + 8 * H), "kpi/shift")
    p = msg.payload
    assert (p["planned_time_s"], p["run_time_s"]) == (25_200, 22_380)
    assert p["availability"] == round(373 / 420, 6) == 0.888095
    assert p["performance"] == round(19_271 / 22_380, 6) == 0.861081
    assert p["quality"] == 0.97805
    assert p["oee"] == round(18_848 / 25_200, 6) == 0.747937


def test_overnight_shift_in_seoul_with_a_fault_across_the_midnight_break() -> None:
    seoul = ZoneInfo("Asia/Seoul")
    night = Shift(
        name="night",
        start=time(22),
        end=time(6),
        breaks=(Break(start=time(23, 45), end=time(0, 15)),),
    )
    e = WireEngine(line_cfg(timezone="Asia/Seoul", shifts=(night,)), site="plant")
    start = datetime(2024, 5, 1, 22, 0, tzinfo=seoul).timestamp()
    feed(e, start, state=1, total=0, rejects=0)
    # Fault 23:40–00:20 local; the break 23:45–00:15 wins, so the fault loss is 5 + 5 min = 600 s.
    feed(e, start + 100 * M, state=3)
    feed(e, start + 140 * M, state=1)
    feed(e, start + 8 * H - 10, total=25_000, rejects=500)
    out = by_topic(e.finish(start + 8 * H), "kpi/shift")
    assert len(out) == 1
    p = out[0].payload
    validate(out[0])
    assert p["window"]["start"] == "2024-05-01T22:00:00+09:00"
    assert p["window"]["end"] == "2024-05-02T06:00:00+09:00"
    # planned = 8 h − 30 min = 27,000 s; run = 27,000 − 600 = 26,400 s
    # A = 26,400/27,000 = 0.977778; P = 25,000/26,400 = 0.946970; Q = 24,500/25,000 = 0.98;
    # OEE = 24,500/27,000 = 0.907407
    assert p["planned_time_s"] == 27_000
    assert p["planned_stop_s"] == 1_800
    assert p["loss_time_s"]["fault"] == 600
    assert p["run_time_s"] == 26_400
    assert abs(p["availability"] - 0.977778) < 1e-6
    assert abs(p["performance"] - 0.946970) < 1e-6
    assert p["quality"] == 0.98
    assert abs(p["oee"] - 0.907407) < 1e-6


def test_16_bit_counter_wrap_and_plc_reset() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=65_000, rejects=0)
    # 1,036 s later the counter shows 500: (500 − 65,000) mod 65,536 = 1,036 parts: a wrap.
    feed(e, T0 + 1036, total=500)
    p = e.snapshot(T0 + 1036).payload
    assert p["total_count"] == 1036
    assert p["warnings"] == ["counter_wrap"]
    # 1 s later it shows 3: 3 − 500 mod 65,536 = 65,039 parts in 1 s is impossible: a reset;
    # the 3 parts since the reset count.
    feed(e, T0 + 1037, total=3)
    p = e.snapshot(T0 + 1037).payload
    assert p["total_count"] == 1039
    # (1,039 parts in 1,037 s also beats the ideal rate: performance_above_ideal)
    assert p["warnings"] == ["counter_reset", "counter_wrap", "performance_above_ideal"]


def test_source_restarted_hint_forces_a_reset() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=10, rejects=0)
    e.source_restarted("plc", T0 + 5)
    feed(e, T0 + 6, total=12)  # 12 parts since the restart, not 2
    assert e.snapshot(T0 + 6).payload["total_count"] == 12


def test_planned_stop_state_and_a_fault_during_a_break() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 3 * H + 5 * M, state=3)  # fault 09:05–09:20, break 09:00–09:15
    feed(e, T0 + 3 * H + 20 * M, state=1)
    feed(e, T0 + 4 * H, state=4)  # planned stop 10:00–10:30
    feed(e, T0 + 4 * H + 30 * M, state=1)
    p = e.snapshot(T0 + 5 * H).payload
    # elapsed 5 h = 18,000 s; planned stops: break 900 + planned state 1,800 = 2,700 s;
    # planned time 18,000 − 2,700 = 15,300 s; fault 5 min = 300 s; run 15,000 s.
    assert p["elapsed_s"] == 18_000
    assert p["planned_stop_s"] == 2_700
    assert p["planned_time_s"] == 15_300
    assert p["loss_time_s"]["fault"] == 300
    assert p["run_time_s"] == 15_000
    assert p["availability"] == round(15_000 / 15_300, 6)


def test_changeover_as_planned_changes_the_convention() -> None:
    cfg = line_cfg(planned_states=frozenset({S.PLANNED_STOP, S.CHANGEOVER}))
    e = WireEngine(cfg, site="plant")
    feed(e, T0, state=5, total=0, rejects=0)
    feed(e, T0 + 10 * M, state=1)
    p = e.snapshot(T0 + H).payload
    assert p["convention"] == "iso22400:planned=changeover+planned_stop"
    assert (p["planned_stop_s"], p["planned_time_s"], p["loss_time_s"]["changeover"]) == (
        600,
        3000,
        0,
    )


def test_performance_above_ideal_is_reported_unclamped() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 100, total=150)  # 150 parts in 100 s at an ideal 1 s/part
    p = e.snapshot(T0 + 100).payload
    assert p["performance"] == 1.5
    assert "performance_above_ideal" in p["warnings"]


def test_source_outage_is_unknown_time_not_downtime() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    e.source_available("plc", False, T0 + 20 * M)
    assert e.state is S.UNKNOWN
    e.source_available("other", False, T0 + 21 * M)  # not this line's source: no effect
    e.source_available("plc", True, T0 + 30 * M)
    assert e.state is S.UNKNOWN  # until a fresh state sample
    feed(e, T0 + 30 * M, state=1, total=3000, rejects=0)
    out = e.tick(T0 + 30 * M)
    assert [(m.payload["previous_state"], m.payload["state"]) for m in by_topic(out, "state")] == [
        ("unknown", "running"),
        ("running", "unknown"),
        ("unknown", "running"),
    ]
    p = e.snapshot(T0 + H).payload
    # planned 3,600 s, unknown 600 s: availability 3,000/3,000 = 1, coverage 3,000/3,600.
    assert p["unknown_time_s"] == 600
    assert p["run_time_s"] == 3000
    assert p["availability"] == 1.0
    assert p["data_coverage"] == round(3000 / 3600, 6)
    assert "low_data_coverage" in p["warnings"]


def test_bad_quality_of_a_counter_is_unknown_time_but_keeps_the_state() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    e.ingest(smp("plc.total", 0, T0 + 40 * M, Quality.BAD))
    e.ingest(smp("plc.total", 99, T0 + 42 * M, Quality.UNCERTAIN))  # still no data
    assert e.state is S.RUNNING
    feed(e, T0 + 45 * M, total=2700)  # parts made meanwhile are counted, not lost
    p = e.snapshot(T0 + H).payload
    assert (p["unknown_time_s"], p["run_time_s"], p["total_count"]) == (300, 3300, 2700)


def test_no_parts_gives_nulls() -> None:
    e = WireEngine(line_cfg(), site="plant")
    p = e.snapshot(T0).payload  # nothing seen, nothing elapsed
    for k in ("availability", "performance", "quality", "oee", "data_coverage"):
        assert p[k] is None
    assert (p["throughput_good_per_h"], p["total_count"]) == (None, 0)
    validate(e.snapshot(T0))
    feed(e, T0, state=2, total=7, rejects=1)
    p = e.snapshot(T0 + H).payload
    assert (p["availability"], p["performance"], p["quality"], p["oee"]) == (0.0, None, None, None)
    assert p["loss_time_s"]["idle"] == 3600
    assert json.loads(json.dumps(p, allow_nan=False)) == p


def test_off_shift_window() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0 + 8 * H, state=1, total=0, rejects=0)
    feed(e, T0 + 8 * H + 60, total=50)
    msg = e.snapshot(T0 + 9 * H)
    validate(msg)
    p = msg.payload
    assert msg.retain is True and msg.topic_suffix == "kpi"
    assert p["window"] == {
        "kind": "off_shift",
        "name": "off_shift",
        "start": "2024-03-04T14:00:00+00:00",
        "end": "2024-03-05T06:00:00+00:00",
    }
    assert (p["planned_time_s"], p["planned_stop_s"], p["total_count"]) == (0, 3600, 50)
    for k in ("availability", "performance", "quality", "oee", "data_coverage"):
        assert p[k] is None
    # The next shift opens on time and the off-shift window emits no kpi/shift.
    out = e.tick(T0 + 24 * H + 1)
    assert by_topic(out, "kpi/shift") == []
    assert e.window is not None and e.window.name == "day"


def test_state_changes_emit_state_messages() -> None:
    e = WireEngine(line_cfg(timezone="Asia/Seoul", shifts=()), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 10, state=1)  # no change, no message
    feed(e, T0 + 20.5, state=3)
    out = e.tick(T0 + 30)
    states = by_topic(out, "state")
    assert len(states) == 2
    for m in states:
        validate(m)
        assert m.retain is True
    assert states[1].payload == {
        "schema": "edge-agent/state/1",
        "site": "plant",
        "line": "line1",
        "ts": "2024-03-04T15:00:20.500+09:00",
        "state": "fault",
        "previous_state": "running",
        "since": "2024-03-04T15:00:20.500+09:00",
    }
    assert e.tick(T0 + 40) == []
    assert e.state is S.FAULT


def test_unmapped_state_code() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=99, total=0, rejects=0)
    assert e.state is S.UNKNOWN
    p = e.snapshot(T0 + 60).payload
    assert p["warnings"] == ["low_data_coverage", "unmapped_state_code"]
    assert p["unknown_time_s"] == 60


def test_state_inferred_from_the_counter() -> None:
    cfg = line_cfg(signals=Signals(total_count=CounterSignal(tag="plc.total")))
    e = WireEngine(cfg, site="plant")
    feed(e, T0, total=100)  # baseline: state not known yet
    assert e.state is S.UNKNOWN
    for i in range(1, 601):  # a part a second, 06:00:01 … 06:10:00
        feed(e, T0 + i, total=100 + i)
    assert e.state is S.RUNNING
    e.tick(T0 + 604)
    assert e.state is S.RUNNING
    out = e.tick(T0 + 700)
    assert e.state is S.IDLE
    # Idle from 5 × 1 s after the last part, not from when it was noticed.
    assert by_topic(out, "state")[-1].payload["since"] == "2024-03-04T06:10:05.000+00:00"
    p = e.snapshot(T0 + 700).payload
    # unknown 06:00:00–06:00:01, run 06:00:01–06:10:05 = 604 s, idle 95 s.
    assert (p["unknown_time_s"], p["run_time_s"], p["loss_time_s"]["idle"]) == (1, 604, 95)
    assert (p["total_count"], p["good_count"], p["reject_count"]) == (600, 600, 0)


def test_running_boolean_and_good_counter() -> None:
    sig = Signals(
        running="plc.run",
        total_count=CounterSignal(tag="plc.total"),
        good_count=CounterSignal(tag="plc.good"),
    )
    e = WireEngine(line_cfg(signals=sig), site="plant")
    feed(e, T0, run=True, total=0, good=0)
    feed(e, T0 + 600, run=False, total=500, good=480)
    p = e.snapshot(T0 + 1200).payload
    assert (p["run_time_s"], p["loss_time_s"]["idle"]) == (600, 600)
    assert (p["total_count"], p["good_count"], p["reject_count"]) == (500, 480, 20)


def test_samples_of_other_tags_are_ignored() -> None:
    e = WireEngine(line_cfg(), site="plant")
    e.ingest(smp("plc.unrelated", 5, T0))
    e.ingest(smp("other.state", 3, T0))
    assert e.window is None and e.state is S.UNKNOWN
    # A tag name containing dots still matches exactly "SOURCE.TAG".
    cfg = line_cfg(signals=signals(state=StateSignal(tag="opc.Line1.State", map=STATE_MAP)))
    e2 = WireEngine(cfg, site="plant")
    e2.ingest(Sample("opc", "Line1.State", 1, Quality.GOOD, None, T0))
    assert e2.state is S.RUNNING


def test_a_shift_close_found_by_ingest_is_emitted_once_by_tick() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, T0, state=1, total=0, rejects=0)
    feed(e, T0 + 8 * H - 1, total=100)
    # The 10 parts cover 13:59:59–14:00:01, running: 5 in the shift, 5 off shift.
    feed(e, T0 + 8 * H + 1, total=110, rejects=0)
    out = e.tick(T0 + 8 * H + 2)
    shifts = by_topic(out, "kpi/shift")
    assert len(shifts) == 1 and shifts[0].payload["total_count"] == 105
    assert e.snapshot(T0 + 8 * H + 2).payload["total_count"] == 5
    assert by_topic(e.tick(T0 + 8 * H + 3), "kpi/shift") == []


def test_state_dict_restore_neither_loses_nor_double_counts_parts() -> None:
    a = WireEngine(line_cfg(), site="plant")
    feed(a, T0, state=1, total=1000, rejects=5)
    feed(a, T0 + H, total=4000, rejects=25)
    a.tick(T0 + H)
    saved = json.loads(json.dumps(a.state_dict()))
    b = WireEngine(line_cfg(), site="plant")
    b.restore(saved)
    # Both see the same next reading 10 s later.
    for e in (a, b):
        feed(e, T0 + H + 10, total=4010, rejects=26)
    pa, pb = a.snapshot(T0 + H + 10).payload, b.snapshot(T0 + H + 10).payload
    assert (
        (pb["total_count"], pb["reject_count"])
        == (pa["total_count"], pa["reject_count"])
        == (3010, 21)
    )
    # The 10 s the restarted agent did not observe are unknown, not lost or invented.
    assert (pa["unknown_time_s"], pb["unknown_time_s"]) == (0, 10)
    assert pb["run_time_s"] == pa["run_time_s"] - 10
    assert pb["elapsed_s"] == pa["elapsed_s"]
    assert b.state is S.RUNNING


def test_restore_across_a_shift_end_reports_the_shift_once() -> None:
    a = WireEngine(line_cfg(), site="plant")
    feed(a, T0, state=1, total=0, rejects=0)
    feed(a, T0 + 7 * H, total=20_000, rejects=0)
    saved = json.loads(json.dumps(a.state_dict()))
    b = WireEngine(line_cfg(), site="plant")
    b.restore(saved)
    feed(b, T0 + 9 * H, total=23_600, rejects=0)  # the agent was down 13:00–15:00
    out = b.tick(T0 + 9 * H)
    shifts = by_topic(out, "kpi/shift")
    assert len(shifts) == 1
    p = shifts[0].payload
    assert (p["total_count"], p["unknown_time_s"]) == (20_000, 3600)
    # The parts made while the agent was down are counted once, when it sees them again: the
    # shift was reported 10 minutes after its end (settle_s), so its share goes to the next
    # window, as parts made in unknown time.
    snap = b.snapshot(T0 + 9 * H).payload
    assert (snap["total_count"], snap["unknown_time_count"]) == (3600, 3600)


def test_restore_rejects_another_line() -> None:
    a = WireEngine(line_cfg(), site="plant")
    feed(a, T0, state=1, total=0, rejects=0)
    b = WireEngine(line_cfg(name="line2"), site="plant")
    with pytest.raises(ValueError, match="line1"):
        b.restore(a.state_dict())


def test_pending_messages_survive_a_restore() -> None:
    a = WireEngine(line_cfg(), site="plant")
    feed(a, T0, state=1, total=0, rejects=0)
    feed(a, T0 + 8 * H, total=10)  # closes the shift, report pending until tick
    b = WireEngine(line_cfg(), site="plant")
    b.restore(json.loads(json.dumps(a.state_dict())))
    assert [m.topic_suffix for m in b.tick(T0 + 8 * H)] == [
        m.topic_suffix for m in a.tick(T0 + 8 * H)
    ]


def test_pending_reports_saved_as_messages_by_version_2_are_restored() -> None:
    """Version 2 of the engine state held undelivered reports as MQTT messages; they come back
    as the same reports, with the same payloads."""
    a = WireEngine(line_cfg(), site="plant")
    feed(a, T0, state=1, total=0, rejects=0)
    feed(a, T0 + 8 * H, state=3, total=10, rejects=0)  # closes the shift, changes the state
    saved = json.loads(json.dumps(a.state_dict()))
    expected = a.tick(T0 + 8 * H)
    assert {"kpi/hour", "kpi/shift", "state"} <= {m.topic_suffix for m in expected}
    saved["version"] = 2
    saved["pending"] = [
        {"topic_suffix": m.topic_suffix, "payload": m.payload, "retain": m.retain, "qos": m.qos}
        for m in expected
    ]
    b = WireEngine(line_cfg(), site="plant")
    b.restore(saved)
    assert b.tick(T0 + 8 * H) == expected


# --- properties ------------------------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.floats(0.0, 2 * H),  # time step
        st.sampled_from(["state", "total", "rejects", "bad", "down", "up", "snap"]),
        st.integers(0, 6),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(EVENTS)
def test_buckets_add_up_and_counts_stay_sane(events: list[tuple[float, str, int]]) -> None:
    e = WireEngine(line_cfg(), site="plant")
    t = T0 - H
    total = rejects = 0
    for dt, kind, v in events:
        t += dt
        if kind == "state":
            feed(e, t, state=v)
        elif kind == "total":
            total += v * 10
            feed(e, t, total=total % 65536)
        elif kind == "rejects":
            rejects += v
            feed(e, t, rejects=rejects % 65536)
        elif kind == "bad":
            e.ingest(smp("plc.total", 0, t, Quality.BAD))
        elif kind in ("down", "up"):
            e.source_available("plc", kind == "up", t)
        else:
            e.tick(t)
        msgs = e.tick(t)
        for m in by_topic(msgs, "kpi/shift"):
            p = m.payload
            parts = p["run_time_s"] + sum(p["loss_time_s"].values()) + p["planned_stop_s"]
            assert math.isclose(parts + p["unknown_time_s"], p["elapsed_s"], abs_tol=0.01)
            assert p["elapsed_s"] == 8 * H
    b = e.time_buckets()
    msg = e.snapshot(t)
    p = msg.payload
    validate(msg)
    if b is None:
        return
    parts = b.run_s + sum(b.loss_s.values()) + b.planned_stop_s + b.unknown_s
    assert math.isclose(parts, b.elapsed_s, abs_tol=1e-6)
    assert p["total_count"] >= 0 and p["good_count"] >= 0 and p["reject_count"] >= 0
    assert p["good_count"] + p["reject_count"] == p["total_count"]
    k = compute_kpis(
        b, total_count=p["total_count"], good_count=p["good_count"], ideal_cycle_time_s=1.0
    )
    if k.oee is not None:
        # OEE == good × ideal / (planned − unknown), and the payload is that value rounded.
        assert math.isclose(
            k.oee, p["good_count"] * 1.0 / (b.planned_s - b.unknown_s), rel_tol=1e-9
        )
        assert abs(p["oee"] - k.oee) <= 5e-7
    else:
        assert p["oee"] is None


def test_a_month_long_gap_reports_the_open_shift_and_jumps_ahead() -> None:
    a = WireEngine(line_cfg(), site="plant")
    feed(a, T0, state=1, total=0, rejects=0)
    b = WireEngine(line_cfg(), site="plant")
    b.restore(json.loads(json.dumps(a.state_dict())))
    later = T0 + 30 * 24 * H + 2 * H  # 30 days later, 08:00 in a day shift
    shifts = by_topic(b.tick(later), "kpi/shift")
    # Only the shift that was open when the state was saved is reported (all of it unknown);
    # the month of missed shifts is not replayed as hundreds of empty reports.
    assert len(shifts) == 1 and shifts[0].payload["unknown_time_s"] == 27_000
    p = b.snapshot(later).payload
    assert p["window"]["start"] == "2024-04-03T06:00:00+00:00"
    assert p["unknown_time_s"] == 2 * H
