"""A seeded, deterministic model of one packaging line.

The model is pure: it reads no clock and does no I/O. :meth:`LineModel.advance` moves it to a given
simulated time by processing its own events (part completions, stops, restarts) in time order, and
every random draw happens while processing an event. The sequence of events therefore depends only
on the seed and the parameters, never on how often or in which steps ``advance`` is called: a model
advanced to 100 s in one call and one advanced there in a thousand small steps are identical.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

__all__ = ["LineModel", "LineParams", "LineSnapshot", "State"]


class State(enum.IntEnum):
    """Machine state codes, as a PLC would expose them (the agent's default state map)."""

    RUNNING = 1
    IDLE = 2
    FAULT = 3
    PLANNED_STOP = 4
    CHANGEOVER = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class LineParams:
    """Behaviour of a :class:`LineModel`.

    Mean times between stops are measured in *running* time and may be ``math.inf`` to switch that
    kind of stop off. Durations are ``(min_s, max_s)`` ranges drawn uniformly. The defaults make a
    30-second demo at speed 1 show parts flowing and, often, at least one micro-stop.
    """

    jitter: tuple[float, float] = (1.0, 1.15)
    """Each cycle lasts ``ideal_cycle_time_s`` times a factor drawn uniformly from this range."""

    reject_probability: float = 0.02
    mean_time_between_microstops_s: float = 20.0
    microstop_duration_s: tuple[float, float] = (2.0, 8.0)
    mean_time_between_faults_s: float = 180.0
    fault_duration_s: tuple[float, float] = (15.0, 60.0)
    mean_time_between_planned_stops_s: float = 1200.0
    planned_stop_duration_s: tuple[float, float] = (60.0, 240.0)
    mean_time_between_changeovers_s: float = 2400.0
    changeover_duration_s: tuple[float, float] = (120.0, 480.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.reject_probability <= 1.0:
            raise ValueError(f"reject_probability must be in 0..1, got {self.reject_probability}")
        ranges = {
            "jitter": self.jitter,
            "microstop_duration_s": self.microstop_duration_s,
            "fault_duration_s": self.fault_duration_s,
            "planned_stop_duration_s": self.planned_stop_duration_s,
            "changeover_duration_s": self.changeover_duration_s,
        }
        for name, (low, high) in ranges.items():
            if not 0.0 < low <= high or math.isinf(high):
                raise ValueError(f"{name} must satisfy 0 < min <= max < inf, got {(low, high)}")
        means = {
            "mean_time_between_microstops_s": self.mean_time_between_microstops_s,
            "mean_time_between_faults_s": self.mean_time_between_faults_s,
            "mean_time_between_planned_stops_s": self.mean_time_between_planned_stops_s,
            "mean_time_between_changeovers_s": self.mean_time_between_changeovers_s,
        }
        for name, mean_s in means.items():
            if not mean_s > 0.0:
                raise ValueError(f"{name} must be > 0 (inf disables), got {mean_s}")

    def stop_kinds(self) -> list[tuple[State, float, tuple[float, float]]]:
        """``(state, rate per running second, duration range)`` for each kind of stop, in a fixed
        order (the order is part of the determinism contract)."""
        return [
            (State.IDLE, 1.0 / self.mean_time_between_microstops_s, self.microstop_duration_s),
            (State.FAULT, 1.0 / self.mean_time_between_faults_s, self.fault_duration_s),
            (
                State.PLANNED_STOP,
                1.0 / self.mean_time_between_planned_stops_s,
                self.planned_stop_duration_s,
            ),
            (
                State.CHANGEOVER,
                1.0 / self.mean_time_between_changeovers_s,
                self.changeover_duration_s,
            ),
        ]


@dataclass(frozen=True, slots=True)
class LineSnapshot:
    """The model's outputs at one simulated time; what the servers publish."""

    sim_time_s: float
    state_code: int
    running: bool
    total_count: int
    reject_count: int
    ideal_cycle_time_s: float


@dataclass(slots=True)
class _Counters:
    total: int
    rejects: int


class LineModel:
    """One line: parts while running, rejects, micro-stops, faults, planned stops, changeovers.

    The line starts running at simulated time 0. ``total_count`` and ``reject_count`` are
    unbounded and never decrease (the servers present them modulo 2**16 / 2**32); ``initial_count``
    and ``initial_reject_count`` let a test start near a wrap.
    """

    def __init__(
        self,
        seed: int,
        ideal_cycle_time_s: float = 1.0,
        params: LineParams | None = None,
        *,
        initial_count: int = 0,
        initial_reject_count: int = 0,
    ) -> None:
        if not ideal_cycle_time_s > 0.0 or math.isinf(ideal_cycle_time_s):
            raise ValueError(f"ideal_cycle_time_s must be > 0, got {ideal_cycle_time_s}")
        if not 0 <= initial_reject_count <= initial_count:
            raise ValueError("need 0 <= initial_reject_count <= initial_count")
        self._params = params if params is not None else LineParams()
        self._ideal_cycle_time_s = float(ideal_cycle_time_s)
        self._rng = random.Random(seed)
        self._kinds = self._params.stop_kinds()
        self._stop_rate = sum(rate for _, rate, _ in self._kinds)
        self._counters = _Counters(initial_count, initial_reject_count)
        self._time_s = 0.0
        self._state = State.RUNNING
        # While running: when the current part completes and when the next stop begins.
        # While stopped: _state_end_s is when the line runs again.
        self._next_part_s = 0.0
        self._state_end_s = 0.0
        self._enter_running(0.0)

    def reset_counters(self) -> None:
        """Start the counters again from 0, as a PLC does after a power cycle."""
        self._counters = _Counters(0, 0)

    # -- read-only outputs ------------------------------------------------------------------

    @property
    def params(self) -> LineParams:
        return self._params

    @property
    def sim_time_s(self) -> float:
        """The simulated time the model has been advanced to."""
        return self._time_s

    @property
    def state(self) -> State:
        return self._state

    @property
    def state_code(self) -> int:
        """1 running, 2 idle, 3 fault, 4 planned_stop, 5 changeover."""
        return int(self._state)

    @property
    def running(self) -> bool:
        return self._state is State.RUNNING

    @property
    def total_count(self) -> int:
        return self._counters.total

    @property
    def reject_count(self) -> int:
        return self._counters.rejects

    @property
    def good_count(self) -> int:
        return self._counters.total - self._counters.rejects

    @property
    def ideal_cycle_time_s(self) -> float:
        return self._ideal_cycle_time_s

    def snapshot(self) -> LineSnapshot:
        return LineSnapshot(
            sim_time_s=self._time_s,
            state_code=self.state_code,
            running=self.running,
            total_count=self._counters.total,
            reject_count=self._counters.rejects,
            ideal_cycle_time_s=self._ideal_cycle_time_s,
        )

    # -- simulation -------------------------------------------------------------------------

    def advance(self, sim_time_s: float) -> None:
        """Process every event at or before ``sim_time_s`` and move the model's clock there.

        Raises ``ValueError`` if ``sim_time_s`` lies before the model's current time.
        """
        if sim_time_s < self._time_s:
            raise ValueError(f"cannot go back in time: {sim_time_s} < {self._time_s}")
        while True:
            event_s = self._next_event_s()
            if event_s > sim_time_s:
                break
            self._process_event(event_s)
        self._time_s = sim_time_s

    def _next_event_s(self) -> float:
        if self._state is State.RUNNING:
            return min(self._next_part_s, self._state_end_s)
        return self._state_end_s

    def _process_event(self, event_s: float) -> None:
        if self._state is not State.RUNNING:
            self._enter_running(event_s)
        elif self._next_part_s <= self._state_end_s:
            # A part that completes at the very instant a stop begins still counts.
            self._complete_part(event_s)
        else:
            self._enter_stop(event_s)

    def _complete_part(self, event_s: float) -> None:
        self._counters.total += 1
        if self._rng.random() < self._params.reject_probability:
            self._counters.rejects += 1
        self._next_part_s = event_s + self._cycle_s()

    def _enter_running(self, event_s: float) -> None:
        self._state = State.RUNNING
        # The interrupted cycle (if any) is scrapped: the next part needs a whole cycle.
        self._next_part_s = event_s + self._cycle_s()
        if self._stop_rate > 0.0:
            # Competing exponential clocks: the first stop of any kind comes after Exp(sum of
            # rates) of running time; which kind it is gets drawn when it happens.
            self._state_end_s = event_s + self._exponential(self._stop_rate)
        else:
            self._state_end_s = math.inf

    def _enter_stop(self, event_s: float) -> None:
        pick = self._rng.random() * self._stop_rate
        state, duration_range = self._kinds[-1][0], self._kinds[-1][2]
        for kind, rate, kind_range in self._kinds:
            if pick < rate:
                state, duration_range = kind, kind_range
                break
            pick -= rate
        self._state = state
        self._state_end_s = event_s + self._rng.uniform(*duration_range)

    def _cycle_s(self) -> float:
        return self._ideal_cycle_time_s * self._rng.uniform(*self._params.jitter)

    def _exponential(self, rate: float) -> float:
        # 1 - random() lies in (0, 1], so the log is finite.
        return -math.log(1.0 - self._rng.random()) / rate
