"""The line model: deterministic, independent of step size, plausible counts."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from simulators.model import LineModel, LineParams, LineSnapshot, State


def _trace(model: LineModel, times: list[float]) -> list[LineSnapshot]:
    snapshots = []
    for t in times:
        model.advance(t)
        snapshots.append(model.snapshot())
    return snapshots


def test_same_seed_same_times_gives_identical_outputs() -> None:
    times = [i * 0.7 for i in range(2000)]
    assert _trace(LineModel(42), times) == _trace(LineModel(42), times)


def test_different_seeds_differ() -> None:
    times = [i * 1.0 for i in range(600)]
    assert _trace(LineModel(1), times) != _trace(LineModel(2), times)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_result_does_not_depend_on_how_time_is_chopped(seed: int) -> None:
    end_s = 3600.0
    single = LineModel(seed)
    single.advance(end_s)

    chopped = LineModel(seed)
    rng = random.Random(seed)  # irregular steps, some tiny, some spanning many events
    t = 0.0
    while t < end_s:
        t = min(end_s, t + rng.choice([0.001, 0.05, 0.1, 0.9, 3.0, 47.0]))
        chopped.advance(t)

    assert chopped.snapshot() == single.snapshot()
    assert single.total_count > 1000  # the comparison covered plenty of events


def test_chopped_trajectories_agree_at_common_times() -> None:
    fine = LineModel(3)
    coarse = LineModel(3)
    for step in range(1, 601):
        fine.advance(step * 0.1)
        if step % 10 == 0:
            coarse.advance(step * 0.1)
            assert coarse.snapshot() == fine.snapshot()


def test_counts_never_decrease_and_rejects_never_exceed_total() -> None:
    model = LineModel(5, initial_count=10)
    last_total, last_rejects = model.total_count, model.reject_count
    for i in range(1, 20_000):
        model.advance(i * 0.5)
        assert model.total_count >= last_total
        assert model.reject_count >= last_rejects
        assert model.reject_count <= model.total_count
        assert model.good_count == model.total_count - model.reject_count
        last_total, last_rejects = model.total_count, model.reject_count


def test_rate_and_reject_ratio_are_plausible() -> None:
    model = LineModel(9, ideal_cycle_time_s=2.0)
    model.advance(8 * 3600.0)
    # Never faster than the ideal rate; the jitter and the stops make it slower.
    assert model.total_count <= 8 * 3600 / 2.0
    assert model.total_count > 0.3 * 8 * 3600 / 2.0
    assert 0.005 < model.reject_count / model.total_count < 0.05


def test_all_states_occur_and_running_matches_state() -> None:
    model = LineModel(11)
    seen: Counter[int] = Counter()
    for i in range(1, 4 * 3600):
        model.advance(float(i))
        seen[model.state_code] += 1
        assert model.running == (model.state_code == State.RUNNING)
    assert set(seen) == {1, 2, 3, 4, 5}
    assert seen[1] > sum(seen.values()) / 3  # mostly running


def test_parts_flow_only_while_running() -> None:
    model = LineModel(4)
    for i in range(1, 20_000):
        before = model.total_count
        was_running = model.running
        model.advance(i * 0.05)
        if not was_running and not model.running:
            # 50 ms is shorter than any cycle: a stopped line cannot finish a part and
            # restart and stop again within one step.
            assert model.total_count == before


def test_demo_defaults_show_parts_and_a_stop_within_30_s_for_most_seeds() -> None:
    with_stop = 0
    for seed in range(20):
        model = LineModel(seed)
        states = set()
        for i in range(1, 301):
            model.advance(i * 0.1)
            states.add(model.state_code)
        assert model.total_count >= 5
        with_stop += len(states) > 1
    assert with_stop >= 10


def test_initial_count_sets_up_a_16_bit_wrap() -> None:
    model = LineModel(1, initial_count=65_530)
    assert model.total_count == 65_530
    t = 0.0
    while model.total_count <= 65_536:
        t += 1.0
        model.advance(t)
        assert t < 600, "the line should make 7 parts well within 10 minutes"
    assert model.total_count % 2**16 < 65_530  # the 16-bit view wrapped, the count did not


def test_stops_can_be_switched_off() -> None:
    params = LineParams(
        mean_time_between_microstops_s=math.inf,
        mean_time_between_faults_s=math.inf,
        mean_time_between_planned_stops_s=math.inf,
        mean_time_between_changeovers_s=math.inf,
        jitter=(1.0, 1.0),
        reject_probability=0.0,
    )
    model = LineModel(1, ideal_cycle_time_s=0.5, params=params)
    model.advance(100.0)
    assert model.running
    assert model.total_count == 200
    assert model.reject_count == 0


def test_going_back_in_time_is_refused() -> None:
    model = LineModel(1)
    model.advance(10.0)
    model.advance(10.0)  # the same time is fine
    with pytest.raises(ValueError, match="back in time"):
        model.advance(9.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reject_probability": 1.5},
        {"jitter": (0.0, 1.0)},
        {"fault_duration_s": (10.0, 5.0)},
        {"mean_time_between_faults_s": 0.0},
    ],
)
def test_bad_params_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LineParams(**kwargs)  # type: ignore[arg-type]


def test_ideal_cycle_time_is_reported() -> None:
    assert LineModel(1, ideal_cycle_time_s=2.5).ideal_cycle_time_s == 2.5
    with pytest.raises(ValueError):
        LineModel(1, ideal_cycle_time_s=0.0)


def test_power_meter_integrates_power_by_state_and_orders_step_up() -> None:
    params = LineParams(running_power_kw=6.0, stopped_power_kw=1.5, planned_stop_power_kw=0.5)
    model = LineModel(3, params=params, initial_count=0)
    energy = 0.0
    t = 0.0
    # A Riemann sum of the reported power in 1 s steps: close to the model's exact integral
    # (each state change shifts the sum by less than one step's worth of energy).
    while t < 3600.0:
        power = model.power_kw
        model.advance(t + 1.0)
        energy += power / 3600.0
        t += 1.0
    assert abs(model.energy_kwh - energy) < 0.01 * energy
    assert 1.5 < model.energy_kwh < 6.0  # between all-stopped and all-running for an hour
    assert model.order_number == 1 + model.good_count // params.order_quantity
