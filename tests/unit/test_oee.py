"""KPI maths: interval accounting and ratios (DESIGN §3)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config.schema import MachineState as S
from edge_agent.engine.intervals import intersect, normalize, subtract, total
from edge_agent.engine.oee import Accounting, TimeBuckets, account, compute_kpis

PLANNED = frozenset({S.PLANNED_STOP})
MIN = 60.0


def test_classic_worked_example() -> None:
    # The classic 8 h shift: 480 min, two 15 min breaks, 47 min down, 19,271 parts, 423 rejects,
    # ideal cycle time 1.0 s.
    #   planned production time = 480 − 30 = 450 min = 27,000 s
    #   run time                = 450 − 47 = 403 min = 24,180 s
    #   availability = 403 / 450            = 0.895556
    #   performance  = 1.0 × 19,271 / 24,180 = 0.796981
    #   quality      = (19,271 − 423) / 19,271 = 18,848 / 19,271 = 0.978050
    #   OEE          = 18,848 × 1.0 / 27,000 = 0.698074  (= A × P × Q)
    breaks = [(180 * MIN, 195 * MIN), (360 * MIN, 375 * MIN)]
    planned = subtract([(0.0, 480 * MIN)], breaks)
    segments = [
        (S.RUNNING, 0.0, 240 * MIN),
        (S.FAULT, 240 * MIN, 287 * MIN),
        (S.RUNNING, 287 * MIN, 480 * MIN),
    ]
    b = account(0.0, 480 * MIN, planned, segments=segments, unknown=[], planned_states=PLANNED)
    assert b.planned_s == 27_000
    assert b.run_s == 24_180
    assert b.fault_s == 47 * MIN
    assert b.planned_stop_s == 30 * MIN
    k = compute_kpis(b, total_count=19_271, good_count=18_848, ideal_cycle_time_s=1.0)
    assert k.availability is not None and k.performance is not None
    assert k.quality is not None and k.oee is not None
    assert abs(k.availability - 0.895556) < 1e-4
    assert abs(k.performance - 0.796981) < 1e-4
    assert abs(k.quality - 0.978050) < 1e-4
    assert abs(k.oee - 0.698074) < 1e-4
    assert math.isclose(k.oee, k.availability * k.performance * k.quality, rel_tol=1e-12)
    assert k.throughput_good_per_h == 18_848 / 8
    assert k.data_coverage == 1.0
    assert k.warnings == frozenset()


def test_break_overlapping_a_fault_counts_once_as_planned() -> None:
    # Fault 09:05–09:20 (in minutes from 09:00: 5–20), break 09:00–09:15 (0–15): only 15–20 is a
    # fault loss (5 min); the break's 15 min are planned stop; the rest of the hour runs.
    planned = subtract([(0.0, 60 * MIN)], [(0.0, 15 * MIN)])
    segs = [
        (S.RUNNING, 0.0, 5 * MIN),
        (S.FAULT, 5 * MIN, 20 * MIN),
        (S.RUNNING, 20 * MIN, 60 * MIN),
    ]
    b = account(0.0, 60 * MIN, planned, segments=segs, unknown=[], planned_states=PLANNED)
    assert b.fault_s == 5 * MIN
    assert b.planned_stop_s == 15 * MIN
    assert b.run_s == 40 * MIN


def test_planned_state_beats_unknown_and_losses() -> None:
    segs = [(S.PLANNED_STOP, 0.0, 100.0), (S.FAULT, 100.0, 200.0)]
    b = account(
        0.0, 200.0, [(0.0, 200.0)], segments=segs, unknown=[(50.0, 150.0)], planned_states=PLANNED
    )
    # 0–100 planned (unknown 50–100 ignored), 100–150 unknown, 150–200 fault.
    assert (b.planned_stop_s, b.unknown_s, b.fault_s, b.planned_s) == (100.0, 50.0, 50.0, 100.0)


def test_changeover_configured_as_planned() -> None:
    segs = [(S.CHANGEOVER, 0.0, 600.0), (S.RUNNING, 600.0, 3600.0)]
    planned_states = frozenset({S.PLANNED_STOP, S.CHANGEOVER})
    b = account(
        0.0, 3600.0, [(0.0, 3600.0)], segments=segs, unknown=[], planned_states=planned_states
    )
    assert (b.changeover_s, b.planned_stop_s, b.planned_s) == (0.0, 600.0, 3000.0)
    b2 = account(0.0, 3600.0, [(0.0, 3600.0)], segments=segs, unknown=[], planned_states=PLANNED)
    assert (b2.changeover_s, b2.planned_stop_s, b2.planned_s) == (600.0, 0.0, 3600.0)


def test_no_parts_and_no_run_time_give_nulls_not_nan() -> None:
    b = TimeBuckets(elapsed_s=0.0, planned_stop_s=0.0, unknown_s=0.0, run_s=0.0)
    k = compute_kpis(b, total_count=0, good_count=0, ideal_cycle_time_s=1.0)
    assert (k.availability, k.performance, k.quality, k.oee, k.data_coverage) == (None,) * 5
    assert (k.throughput_good_per_h, k.throughput_total_per_h) == (None, None)
    # Idle all shift: availability is a real 0, the others have nothing to divide by.
    idle = TimeBuckets(
        elapsed_s=3600.0, planned_stop_s=0.0, unknown_s=0.0, run_s=0.0, idle_s=3600.0
    )
    k = compute_kpis(idle, total_count=0, good_count=0, ideal_cycle_time_s=1.0)
    assert (k.availability, k.performance, k.quality, k.oee) == (0.0, None, None, None)
    assert k.throughput_good_per_h == 0.0


def test_running_without_parts_is_oee_zero() -> None:
    # A × P × Q with P = 0: OEE is 0 (good × ideal / known), not null, though quality is null.
    b = TimeBuckets(elapsed_s=3600.0, planned_stop_s=0.0, unknown_s=0.0, run_s=3600.0)
    k = compute_kpis(b, total_count=0, good_count=0, ideal_cycle_time_s=1.0)
    assert (k.availability, k.performance, k.quality, k.oee) == (1.0, 0.0, None, 0.0)


def test_performance_above_one_is_not_clamped() -> None:
    # 150 parts in 100 s of run time at an ideal 1 s/part: performance 1.5, with a warning.
    b = TimeBuckets(elapsed_s=100.0, planned_stop_s=0.0, unknown_s=0.0, run_s=100.0)
    k = compute_kpis(b, total_count=150, good_count=150, ideal_cycle_time_s=1.0)
    assert k.performance == 1.5
    assert k.oee == 1.5
    assert k.warnings == {"performance_above_ideal"}


def test_low_data_coverage() -> None:
    # 3600 s planned, 600 s unknown: coverage 3000/3600 = 0.8333 < 0.9; availability 2400/3000.
    b = TimeBuckets(
        elapsed_s=3600.0, planned_stop_s=0.0, unknown_s=600.0, run_s=2400.0, fault_s=600.0
    )
    k = compute_kpis(b, total_count=2400, good_count=2400, ideal_cycle_time_s=1.0)
    assert k.data_coverage is not None and abs(k.data_coverage - 0.833333) < 1e-6
    assert k.availability == 0.8
    assert "low_data_coverage" in k.warnings


# --- properties ------------------------------------------------------------------------------

STATES = st.sampled_from(list(S))


@st.composite
def timelines(
    draw: st.DrawFn,
) -> tuple[
    float, list[tuple[float, float]], list[tuple[S, float, float]], list[tuple[float, float]]
]:
    """A window [0, end), planned intervals, a state partition and unknown intervals."""
    end = float(draw(st.integers(1, 10_000)))
    cuts = sorted(set(draw(st.lists(st.integers(1, int(end) - 1 if end > 1 else 1), max_size=12))))
    cuts = [c for c in cuts if 0 < c < end]
    bounds = [0.0, *map(float, cuts), end]
    segments = [(draw(STATES), a, b) for a, b in itertools.pairwise(bounds)]

    def ivs() -> list[tuple[float, float]]:
        pts = sorted(draw(st.lists(st.floats(0.0, end), max_size=8)))
        return normalize(zip(pts[::2], pts[1::2], strict=False))

    breaks = ivs()
    planned = subtract([(0.0, end)], breaks)
    return end, planned, segments, ivs()


@given(timelines(), st.sets(STATES, max_size=3))
def test_incremental_accounting_equals_interval_arithmetic(tl, extra_planned: set[S]) -> None:  # type: ignore[no-untyped-def]
    end, planned, segments, unknown = tl
    planned_states = frozenset({S.PLANNED_STOP} | (extra_planned - {S.RUNNING}))
    ref = account(
        0.0, end, planned, segments=segments, unknown=unknown, planned_states=planned_states
    )
    acc = Accounting(0.0, end, planned, planned_states)
    # Feed pieces with constant (state, unknown): cut every segment at the unknown boundaries.
    for state, a, b in segments:
        inside = intersect([(a, b)], unknown)
        for s, e in inside:
            acc.add(s, e, state, True)
        for s, e in subtract([(a, b)], unknown):
            acc.add(s, e, state, False)
    got = acc.buckets(end)
    for name in (
        "planned_stop_s",
        "unknown_s",
        "run_s",
        "idle_s",
        "fault_s",
        "changeover_s",
        "starved_s",
        "blocked_s",
    ):
        assert math.isclose(getattr(got, name), getattr(ref, name), abs_tol=1e-6), name
    parts = ref.run_s + sum(ref.loss_s.values()) + ref.planned_stop_s + ref.unknown_s
    assert math.isclose(parts, end, abs_tol=1e-6)
    assert math.isclose(
        ref.planned_s,
        total(planned)
        - total(
            intersect(planned, normalize((a, b) for s, a, b in segments if s in planned_states))
        ),
        abs_tol=1e-6,
    )


@given(
    st.tuples(st.floats(0.0, 1e5), st.floats(0.0, 1e5), st.floats(0.0, 1e5)),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.floats(0.01, 100.0),
)
def test_oee_identity(
    times: tuple[float, float, float], total_count: int, reject: int, ideal_s: float
) -> None:
    run_s, idle_s, unknown_s = times
    good = max(total_count - reject, 0)
    b = TimeBuckets(
        elapsed_s=run_s + idle_s + unknown_s,
        planned_stop_s=0.0,
        unknown_s=unknown_s,
        run_s=run_s,
        idle_s=idle_s,
    )
    k = compute_kpis(b, total_count=total_count, good_count=good, ideal_cycle_time_s=ideal_s)
    for v in (k.availability, k.performance, k.quality, k.oee, k.data_coverage):
        assert v is None or (math.isfinite(v) and v >= 0)
    if k.oee is not None:
        assert math.isclose(k.oee, good * ideal_s / b.known_s, rel_tol=1e-9, abs_tol=1e-12)
        if k.quality is not None:
            assert k.availability is not None and k.performance is not None
            assert math.isclose(
                k.oee, k.availability * k.performance * k.quality, rel_tol=1e-9, abs_tol=1e-12
            )
