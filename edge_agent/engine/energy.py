"""A line's energy: the meter and power readings, how a meter delta is split over the states
of the time it covers, and the energy figures of windows and orders (DESIGN §3, docs/kpi.md).
Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from edge_agent.config.schema import EmissionFactor, EnergySignal
from edge_agent.domain import EnergyUnit
from edge_agent.engine.counters import MeterTracker
from edge_agent.engine.placement import Ledger, WindowKey, place_energy
from edge_agent.engine.reports import EmissionFactorRef, EnergyFields, EnergyReport, WindowRef

NO_FACTOR_NOTE = "no emission_factor configured for this line: CO2e not computed"
NO_METER_NOTE = "no energy signal configured for this line"
OLDEST: WindowKey = (-math.inf, -math.inf)  # a window pair before any: the oldest one open


def not_in_force_note(day: date) -> str:
    return f"no emission factor of this line is in force on {day.isoformat()}: CO2e not computed"


@dataclass(frozen=True, slots=True)
class EnergyFigures:
    """Energy of a window or an order and what follows from it. ``energy_kwh`` is ``None``
    without an energy signal; ratios are ``None`` when their denominator is zero."""

    energy_kwh: float | None
    by_state_kwh: Mapping[str, float]
    per_good_part_kwh: float | None
    co2e_kg: float | None
    co2e_per_good_part_kg: float | None
    factor: EmissionFactor | None
    notes: tuple[str, ...]


def energy_figures(
    energy_kwh: float | None,
    by_state_kwh: Mapping[str, float],
    good_count: int,
    factor: EmissionFactor | None,
    no_factor_note: str = NO_FACTOR_NOTE,
) -> EnergyFigures:
    """kWh per good part = energy ÷ good count; kgCO2e = energy × factor (docs/kpi.md)."""
    notes: list[str] = []
    if energy_kwh is None:
        notes.append(NO_METER_NOTE)
    elif factor is None:
        notes.append(no_factor_note)
    per_part = energy_kwh / good_count if energy_kwh is not None and good_count > 0 else None
    co2e = energy_kwh * factor.kg_co2e_per_kwh if energy_kwh is not None and factor else None
    co2e_part = per_part * factor.kg_co2e_per_kwh if per_part is not None and factor else None
    return EnergyFigures(
        energy_kwh=energy_kwh,
        by_state_kwh=by_state_kwh,
        per_good_part_kwh=per_part,
        co2e_kg=co2e,
        co2e_per_good_part_kg=co2e_part,
        factor=factor,
        notes=tuple(notes),
    )


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def energy_fields(e: EnergyFigures) -> EnergyFields:
    """The energy fields shared by the kpi, energy, order and order/closed reports."""
    return EnergyFields(
        energy_kwh=_r(e.energy_kwh, 6),
        energy_by_state_kwh={k: round(v, 6) for k, v in sorted(e.by_state_kwh.items())},
        energy_per_good_part_kwh=_r(e.per_good_part_kwh, 6),
        co2e_kg=_r(e.co2e_kg, 6),
        co2e_per_good_part_kg=_r(e.co2e_per_good_part_kg, 6),
        emission_factor=(
            None
            if e.factor is None
            else EmissionFactorRef(
                kg_co2e_per_kwh=e.factor.kg_co2e_per_kwh,
                source=e.factor.source,
                valid_from=None if e.factor.valid_from is None else e.factor.valid_from.isoformat(),
            )
        ),
        energy_notes=e.notes,
    )


@dataclass(frozen=True, slots=True)
class MeterReading:
    """What one meter reading adds: ``(window pair, state bucket, kWh)`` over the time since the
    previous reading (window pair ``None``: the windows open now), and whether the meter wrapped
    or was reset."""

    shares: list[tuple[WindowKey | None, str, float]]
    wrapped: bool
    reset: bool

    def by_bucket(self) -> dict[str, float]:
        """kWh by state bucket, whatever the window."""
        out: dict[str, float] = {}
        for _, bucket, kwh in self.shares:
            out[bucket] = out.get(bucket, 0.0) + kwh
        return out


class LineEnergy:
    """The energy side of a line: without an energy signal only :meth:`fields` is of use (the
    figures are ``null`` and say why)."""

    def __init__(
        self,
        signal: EnergySignal | None,
        factors: Sequence[EmissionFactor],
        tz: ZoneInfo,
    ) -> None:
        """``factors``: the line's emission factors (one undated, or several dated)."""
        self.signal = signal
        self.factors = tuple(sorted(factors, key=lambda f: f.valid_from or date.min))
        self.tz = tz
        self.kwh_per_unit = 0.001 if signal and signal.unit is EnergyUnit.WH else 1.0
        self.meter: MeterTracker | None = None
        if signal is not None:
            max_kw = signal.max_power_kw
            self.meter = MeterTracker(
                signal.rollover,
                None if max_kw is None else max_kw / 3600.0 / self.kwh_per_unit,
                # slack: a few seconds at full power, for polling jitter
                slack=0.0 if max_kw is None else 10.0 * max_kw / 3600.0 / self.kwh_per_unit,
            )
        # Time by window pair and bucket since the last meter sample, to place the next delta.
        self.ledger = Ledger()
        self.meter_kwh: float | None = None  # last reading, in kWh
        self.power_kw: float | None = None

    @property
    def measuring(self) -> bool:
        """Whether the meter has a baseline: time from now on is split over its next delta."""
        return self.meter is not None and self.meter.last_value is not None

    def add_time(self, key: WindowKey, bucket: str, in_plan_s: float, outside_s: float) -> None:
        """Time since the last reading in window pair ``key``: ``in_plan_s`` in ``bucket``,
        ``outside_s`` outside planned time (booked as ``planned_stop``)."""
        self.ledger.add(key, bucket, in_plan_s)
        self.ledger.add(key, "planned_stop", outside_s)

    def reading(self, value: float, t: float, state: str) -> MeterReading:
        """A meter reading (in the meter's unit) at ``t``, the time up to ``t`` already added;
        ``state``: the bucket of a delta between two readings at one instant."""
        meter = self.meter
        assert meter is not None
        baseline = meter.last_value is None
        d = meter.update(value, t)
        self.meter_kwh = value * self.kwh_per_unit
        shares: list[tuple[WindowKey | None, str, float]] = []
        if not (d.delta > 0 or d.wrapped or d.reset):
            # An unchanged reading does not end the interval (as for part counters).
            return MeterReading(shares, d.wrapped, d.reset)
        segments = self.ledger.take()
        if not baseline and d.delta > 0:
            # Proportional split: each window and bucket gets the delta × its share of the time.
            shares = place_energy(segments, d.delta * self.kwh_per_unit, state)
        return MeterReading(shares, d.wrapped, d.reset)

    def factor_at(self, t: float) -> EmissionFactor | None:
        """The factor in force at ``t``: the latest whose ``valid_from`` (a local date of the
        line's time zone) is not after ``t``'s date; an undated factor is always in force."""
        day = datetime.fromtimestamp(t, self.tz).date()
        found = None
        for factor in self.factors:
            if factor.valid_from is not None and factor.valid_from > day:
                break
            found = factor
        return found

    def figures(self, by_state: Mapping[str, float], good: int, at: float) -> EnergyFigures:
        """The figures of ``by_state`` (kWh) and ``good`` parts, with the factor in force at
        ``at`` (a window's start, an order report's time)."""
        kwh = sum(by_state.values()) if self.signal is not None else None
        factor = self.factor_at(at)
        note = NO_FACTOR_NOTE
        if factor is None and self.factors:
            note = not_in_force_note(datetime.fromtimestamp(at, self.tz).date())
        return energy_figures(kwh, by_state, good, factor, note)

    def fields(self, by_state: Mapping[str, float], good: int, at: float) -> EnergyFields:
        """The energy fields of a report on ``by_state`` (kWh) and ``good`` parts, with the
        factor in force at ``at``."""
        return energy_fields(self.figures(by_state, good, at))

    def report(
        self,
        *,
        site: str,
        line: str,
        window: WindowRef,
        ts: str,
        state: str,
        good: int,
        by_state: Mapping[str, float],
        flags: set[str],
        window_start: float,
    ) -> EnergyReport:
        """The live energy report of a window (the factor in force at ``window_start``)."""
        return EnergyReport(
            site=site,
            line=line,
            window=window,
            ts=ts,
            state=state,
            meter_kwh=_r(self.meter_kwh, 6),
            power_kw=_r(self.power_kw, 6),
            good_count=good,
            energy=self.fields(by_state, good, window_start),
            warnings=tuple(sorted(f for f in flags if f.startswith("energy_"))),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "meter": None if self.meter is None else self.meter.state_dict(),
            "energy_ledger": self.ledger.state_dict(),
        }

    def restore(self, d: Mapping[str, Any]) -> None:
        if self.meter is not None:
            self.meter.restore(d.get("meter"))
            if self.meter.last_value is not None:
                self.meter_kwh = self.meter.last_value * self.kwh_per_unit
        self.ledger = Ledger.from_state(d.get("energy_ledger"))
        for bucket, seconds in (d.get("energy_time") or {}).items():
            # Saved by a version that kept no windows: the oldest window open after the restart.
            self.ledger.add(OLDEST, str(bucket), float(seconds))
