"""Deltas of PLC part counters, across wraps, PLC resets and agent restarts (DESIGN §3).

A counter that goes down either wrapped or was reset. It wrapped if the modular delta
``(cur - prev) mod rollover`` is plausible for the elapsed time at the ideal rate:
``delta <= elapsed_s / ideal_cycle_time_s * margin + slack_parts``. Otherwise it was reset (PLC
restart) and the delta is the new value: the parts made since the reset. Clamping a reset to zero
would lose those parts; treating a wrap as a reset would lose a whole lap.

A counter that goes up is taken at face value: a reset followed by more parts than the old value
cannot be told from counting, which is what ``reset_hint`` (e.g. an OPC UA server whose start time
changed) is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MARGIN = 2.0  # machines may beat the configured ideal rate; allow twice as fast
DEFAULT_SLACK_PARTS = 10  # polling jitter: a few parts more than the elapsed time explains


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """Parts counted since the previous value (never negative) and how they were derived."""

    delta: int
    wrapped: bool = False
    reset: bool = False


_ZERO = CounterDelta(0)


class CounterTracker:
    """Turns successive absolute counter values into non-negative deltas.

    The first value (or the first after :meth:`from_state` with no baseline) is the baseline and
    yields a delta of 0. The baseline survives agent restarts through :meth:`state_dict`.
    """

    __slots__ = ("_ideal_s", "_margin", "_slack", "last_time", "last_value", "rollover")

    def __init__(
        self,
        rollover: int | None,
        ideal_cycle_time_s: float,
        margin: float = DEFAULT_MARGIN,
        *,
        slack_parts: int = DEFAULT_SLACK_PARTS,
    ) -> None:
        if rollover is not None and rollover < 2:
            raise ValueError(f"rollover must be >= 2, got {rollover}")
        if ideal_cycle_time_s <= 0:
            raise ValueError(f"ideal_cycle_time_s must be > 0, got {ideal_cycle_time_s}")
        self.rollover = rollover
        self._ideal_s = ideal_cycle_time_s
        self._margin = margin
        self._slack = slack_parts
        self.last_value: int | None = None
        self.last_time: float | None = None

    def update(self, value: int, now: float, *, reset_hint: bool = False) -> CounterDelta:
        """Take the counter's value read at ``now`` and return the parts counted since the last."""
        prev, prev_t = self.last_value, self.last_time
        self.last_value, self.last_time = value, now
        if prev is None or prev_t is None:
            return _ZERO
        if reset_hint:
            return CounterDelta(max(value, 0), reset=True)
        if value >= prev:
            return CounterDelta(value - prev) if value > prev else _ZERO
        if self.rollover is not None:
            modular = (value - prev) % self.rollover
            elapsed_s = max(now - prev_t, 0.0)
            if modular <= elapsed_s / self._ideal_s * self._margin + self._slack:
                return CounterDelta(modular, wrapped=True)
        return CounterDelta(max(value, 0), reset=True)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable baseline."""
        return {"value": self.last_value, "time": self.last_time}

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any] | None,
        rollover: int | None,
        ideal_cycle_time_s: float,
        margin: float = DEFAULT_MARGIN,
        *,
        slack_parts: int = DEFAULT_SLACK_PARTS,
    ) -> CounterTracker:
        """A tracker that continues from a :meth:`state_dict` (``None``: no baseline yet)."""
        tracker = cls(rollover, ideal_cycle_time_s, margin, slack_parts=slack_parts)
        if state:
            value, t = state.get("value"), state.get("time")
            if value is not None and t is not None:
                tracker.last_value = int(value)
                tracker.last_time = float(t)
        return tracker


@dataclass(frozen=True, slots=True)
class MeterDelta:
    """Energy (in the meter's unit) since the previous reading, never negative."""

    delta: float
    wrapped: bool = False
    reset: bool = False


class MeterTracker:
    """:class:`CounterTracker` for a float meter reading (an active-energy counter).

    Same rules: the first reading is the baseline; a reading that goes down wrapped if the
    modular delta is plausible, else the meter was reset and the new reading is the energy since
    the reset. Plausible: at most ``max_rate_per_s × elapsed × margin + slack`` with a known
    maximum rate (a meter's ``max_power``), otherwise at most half the rollover (a wrap of a
    meter that counts for years versus a meter cleared near its top: without a rate, half the
    range is the only neutral line).
    """

    __slots__ = ("_margin", "_max_rate", "_slack", "last_time", "last_value", "rollover")

    def __init__(
        self,
        rollover: float | None,
        max_rate_per_s: float | None = None,
        margin: float = DEFAULT_MARGIN,
        *,
        slack: float = 0.0,
    ) -> None:
        if rollover is not None and rollover <= 0:
            raise ValueError(f"rollover must be > 0, got {rollover}")
        self.rollover = rollover
        self._max_rate = max_rate_per_s
        self._margin = margin
        self._slack = slack
        self.last_value: float | None = None
        self.last_time: float | None = None

    def update(self, value: float, now: float) -> MeterDelta:
        prev, prev_t = self.last_value, self.last_time
        self.last_value, self.last_time = value, now
        if prev is None or prev_t is None:
            return MeterDelta(0.0)
        if value >= prev:
            return MeterDelta(value - prev)
        if self.rollover is not None:
            modular = (value - prev) % self.rollover
            if self._max_rate is not None:
                limit = max(now - prev_t, 0.0) * self._max_rate * self._margin + self._slack
            else:
                limit = self.rollover / 2.0
            if modular <= limit:
                return MeterDelta(modular, wrapped=True)
        return MeterDelta(max(value, 0.0), reset=True)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.last_value, "time": self.last_time}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state:
            value, t = state.get("value"), state.get("time")
            if value is not None and t is not None:
                self.last_value = float(value)
                self.last_time = float(t)
