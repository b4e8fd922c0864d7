"""Where a counter delta belongs (docs/kpi.md "Where a count belongs"): the interval it covers,
split across window boundaries in whole parts, parts in unknown time kept apart from run time,
and throughput over the time with data."""

from __future__ import annotations

import json
import math
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.schema import (
    CounterSignal,
    LineConfig,
    MachineState,
    Shift,
    Signals,
    StateSignal,
)
from edge_agent.engine.line import SETTLE_S
from edge_agent.engine.placement import Ledger, largest_remainder, place_parts
from edge_agent.model import OutMessage, Quality, Sample
from tests.helpers.wire import WireEngine

S = MachineState
DAY = Shift(name="day", start=time(6), end=time(14))
T0 = datetime(2024, 3, 4, 6, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # Monday 06:00 UTC
H, M = 3600.0, 60.0
END = T0 + 8 * H


def line_cfg(**kw: Any) -> LineConfig:
    args: dict[str, Any] = {
        "name": "line1",
        "timezone": "UTC",
        "ideal_cycle_time_s": 1.0,
        "shifts": (DAY,),
        "signals": Signals(
            state=StateSignal(tag="plc.state", map={1: S.RUNNING, 2: S.IDLE}),
            total_count=CounterSignal(tag="plc.total", rollover=65536),
        ),
    }
    args.update(kw)
    return LineConfig(**args)


def feed(engine: WireEngine, t: float, **values: Any) -> None:
    for tag, value in values.items():
        engine.ingest(Sample("plc", tag, value, Quality.GOOD, None, t))


def payloads(messages: list[OutMessage], topic: str) -> list[dict[str, Any]]:
    return [m.payload for m in messages if m.topic_suffix == topic]


def test_a_sample_exactly_at_a_shift_end_closes_that_shift() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, END - 10 * M, state=1, total=0)
    feed(e, END, total=600)  # the parts of 13:50–14:00
    (shift,) = payloads(e.tick(END), "kpi/shift")
    assert shift["total_count"] == 600 and shift["performance"] == 1.0
    assert e.snapshot(END).payload["total_count"] == 0


def test_a_delta_across_a_shift_end_is_split_by_running_time() -> None:
    # 13:55–14:05: running until 14:02, then idle. 420 parts: 300 s running in the shift,
    # 120 s off shift: 300 and 120.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, END - 5 * M, state=1, total=1000)
    feed(e, END + 2 * M, state=2)
    assert payloads(e.tick(END + 4 * M), "kpi/shift") == []  # waits for the counter
    feed(e, END + 5 * M, total=1420)
    (shift,) = payloads(e.tick(END + 5 * M), "kpi/shift")
    assert shift["total_count"] == 300
    assert e.snapshot(END + 5 * M).payload["total_count"] == 120


def test_an_ended_window_waits_at_most_settle_s_for_its_counter() -> None:
    e = WireEngine(line_cfg(), site="plant")
    feed(e, END - M, state=1, total=0)
    assert payloads(e.tick(END + SETTLE_S), "kpi/shift") == []
    (shift,) = payloads(e.tick(END + SETTLE_S + 1), "kpi/shift")
    assert shift["ts"] == "2024-03-04T14:00:00.000+00:00"
    # Parts of a window already reported go to the next one.
    feed(e, END + SETTLE_S + 2, total=60)
    assert e.snapshot(END + SETTLE_S + 2).payload["total_count"] == 60


def test_an_outage_on_a_running_line_is_not_performance_above_ideal() -> None:
    # A part a second at the ideal rate, the counter read every second; the source is down
    # 06:30:00–06:30:15 while the PLC goes on counting. The 16 parts seen at 06:30:15 cover
    # 06:29:59–06:30:15: 1 s running, 15 s unknown: 1 part in known time, 15 in unknown time.
    # Paired with run time as they were before, 3,600 parts over 3,585 s: P = 1.004184.
    e = WireEngine(line_cfg(), site="plant")
    for i in range(1800):
        feed(e, T0 + i, state=1, total=i)
    e.source_available("plc", False, T0 + 1800)
    e.source_available("plc", True, T0 + 1815)
    for i in range(1815, 3600):
        feed(e, T0 + i, state=1, total=i)
    p = e.snapshot(T0 + 3599).payload
    assert (p["total_count"], p["unknown_time_count"]) == (3599, 15)
    assert (p["run_time_s"], p["unknown_time_s"]) == (3584, 15)
    assert p["performance"] == 1.0 and p["oee"] == 1.0
    assert "performance_above_ideal" not in p["warnings"]


def test_throughput_over_known_time_after_a_mid_shift_start() -> None:
    # Started at 13:00 on a 3,000 parts/h line: 3,000 parts by 14:00. Per elapsed shift hour:
    # 3,000/8 = 375/h; per hour with data: 3,000/h.
    e = WireEngine(line_cfg(), site="plant")
    feed(e, END - H, state=1, total=0)
    feed(e, END, total=3000)
    (shift,) = payloads(e.tick(END), "kpi/shift")
    assert shift["throughput_good_per_h"] == 375
    assert shift["throughput_good_per_known_h"] == 3000


def test_a_window_waiting_for_its_counts_survives_a_restart() -> None:
    a = WireEngine(line_cfg(), site="plant")
    feed(a, END - 5 * M, state=1, total=0)
    a.tick(END + M)  # the shift ended, its counter not seen since 13:55
    b = WireEngine(line_cfg(), site="plant")
    b.restore(json.loads(json.dumps(a.state_dict())))
    for e in (a, b):
        feed(e, END + 2 * M, total=420)
    shifts = [payloads(e.tick(END + 2 * M), "kpi/shift") for e in (a, b)]
    # 13:55–14:01 observed running; b did not observe 14:01–14:02 (unknown): 300 of 420 parts in
    # the shift either way.
    assert [s[0]["total_count"] for s in shifts] == [300, 300]


@settings(max_examples=200, deadline=None)
@given(
    delta=st.integers(min_value=0, max_value=100_000),
    weights=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1e5, allow_nan=False),
            st.floats(min_value=0, max_value=1e5, allow_nan=False),
            st.floats(min_value=0, max_value=1e5, allow_nan=False),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_placed_parts_always_add_up_to_the_delta(
    delta: int, weights: list[tuple[float, float, float]]
) -> None:
    ledger = Ledger()
    for i, (run, unknown, stopped) in enumerate(weights):
        for bucket, s in (("running", run), ("unknown", unknown), ("stopped", stopped)):
            ledger.add((float(i), float(i)), bucket, s)
    placed = place_parts(ledger.take(), delta)
    assert sum(p.known + p.unknown for p in placed) == delta
    assert all(p.known >= 0 and p.unknown >= 0 for p in placed)
    # Each part's share is within one part of its exact proportional share.
    total = math.fsum(r + u for r, u, _ in weights)
    if total > 0:
        for p in placed:
            assert p.key is not None
            run, unknown, _ = weights[int(p.key[0])]
            assert abs(p.known - delta * run / total) < 1
            assert abs(p.unknown - delta * unknown / total) < 1


def test_largest_remainder_gives_leftovers_to_the_largest_fractions_earliest_first() -> None:
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert largest_remainder(2, [0.3, 0.6, 0.1]) == [1, 1, 0]
    assert largest_remainder(7, [5, 0, 2]) == [5, 0, 2]
