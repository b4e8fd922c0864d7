"""KPI maths over interval accounting (DESIGN §3). Pure: no clock, no I/O.

Time of a window ``W = [start, until)`` splits into disjoint buckets:

- ``planned_stop``: ``W − P`` (breaks; everything off shift) plus time in a planned state inside
  ``P``, where ``P`` are the window's planned intervals (window minus breaks);
- planned production time ``PPT = (W ∩ P) − planned-state time``, itself split into
  ``unknown = (unknown timeline ∪ state unknown) ∩ PPT``, ``run = running ∩ PPT − unknown`` and one
  loss bucket per non-planned state (idle, fault, changeover, starved, blocked), known time only.

A state that is neither planned, running nor a loss category counts as unknown; ``planned_stop``
not configured as planned is a loss category of its own (planned downtime as a loss).
Precedence follows from the set operations: a break beats any state (a fault during a break
costs nothing), a planned state beats unknown and losses, unknown beats any machine state.
So ``run + losses + planned_stop + unknown == elapsed`` for every window.

Two implementations of the same definitions: :func:`account` applies them literally to whole
timelines (the reference, used to recompute and to test), :class:`Accounting` folds them piece by
piece so that the live engine's cost and persisted state do not grow with the number of events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.domain import MachineState
from edge_agent.engine.intervals import Interval, clip, intersect, normalize, subtract, total, union

LOSS_STATES: tuple[MachineState, ...] = (
    MachineState.IDLE,
    MachineState.FAULT,
    MachineState.CHANGEOVER,
    MachineState.STARVED,
    MachineState.BLOCKED,
    MachineState.PLANNED_STOP,  # a loss only where it is not a planned state
)

LOW_DATA_COVERAGE = 0.9  # default of a line's min_data_coverage
UNSPECIFIED_REASON = "unspecified"  # loss time while no reason code was known

# Bucket indices of Accounting's sums.
_PLANNED_STOP, _UNKNOWN, _RUN, _IDLE, _FAULT, _CHANGEOVER, _STARVED, _BLOCKED, _PLANNED_LOSS = (
    range(9)
)
_STATE_INDEX: dict[MachineState, int] = {
    MachineState.RUNNING: _RUN,
    MachineState.IDLE: _IDLE,
    MachineState.FAULT: _FAULT,
    MachineState.CHANGEOVER: _CHANGEOVER,
    MachineState.STARVED: _STARVED,
    MachineState.BLOCKED: _BLOCKED,
    MachineState.PLANNED_STOP: _PLANNED_LOSS,
    MachineState.UNKNOWN: _UNKNOWN,
}
_BUCKET_NAMES = (
    "planned_stop",
    "unknown",
    "run",
    "idle",
    "fault",
    "changeover",
    "starved",
    "blocked",
    "planned_stop_loss",
)

# The same buckets named by state, for quantities attributed like time (energy_by_state_kwh):
# time in state planned_stop is planned_stop whether it is planned or a loss.
_ENERGY_NAMES = tuple(
    {"run": "running", "planned_stop_loss": "planned_stop"}.get(name, name)
    for name in _BUCKET_NAMES
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeBuckets:
    """Disjoint time buckets of one window, in seconds; they add up to ``elapsed_s``."""

    elapsed_s: float
    planned_stop_s: float
    unknown_s: float
    run_s: float
    idle_s: float = 0.0
    fault_s: float = 0.0
    changeover_s: float = 0.0
    starved_s: float = 0.0
    blocked_s: float = 0.0
    # Time in state planned_stop when it is not a planned state (an availability loss).
    planned_stop_loss_s: float = 0.0
    # planned_stop_s by cause: calendar causes (off_shift, break, maintenance) and planned states.
    planned_stop_by_cause_s: Mapping[str, float] = field(default_factory=dict)
    # The loss buckets' total by downtime reason (UNSPECIFIED_REASON while none was known).
    loss_by_reason_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def loss_s(self) -> dict[str, float]:
        return {
            "idle": self.idle_s,
            "fault": self.fault_s,
            "changeover": self.changeover_s,
            "starved": self.starved_s,
            "blocked": self.blocked_s,
            "planned_stop": self.planned_stop_loss_s,
        }

    @property
    def planned_s(self) -> float:
        """Planned production time (PBT): unknown time included."""
        return self.run_s + sum(self.loss_s.values()) + self.unknown_s

    @property
    def known_s(self) -> float:
        """Planned production time with data: the denominator of availability."""
        return self.run_s + sum(self.loss_s.values())


def account(
    start: float,
    until: float,
    planned: Iterable[Interval],
    *,
    segments: Iterable[tuple[MachineState, float, float]],
    unknown: Iterable[Interval],
    planned_states: frozenset[MachineState],
) -> TimeBuckets:
    """The buckets of window ``[start, until)`` by the definitions, with interval arithmetic.

    ``planned``: the window's planned intervals; ``segments``: ``(state, start, end)`` of the
    machine state (time covered by no segment counts as unknown); ``unknown``: intervals without
    data (source down, bad quality).
    """
    window = [(start, until)] if until > start else []
    plan = clip(normalize(planned), start, until)
    by_state: dict[MachineState, list[Interval]] = {}
    for state, s, e in segments:
        by_state.setdefault(state, []).append((s, e))
    states = {k: clip(normalize(v), start, until) for k, v in by_state.items()}
    in_planned_state = union(*(v for k, v in states.items() if k in planned_states))
    ppt = subtract(plan, in_planned_state)
    covered = union(*states.values())
    # A state that is neither planned, running nor a loss category (``unknown``, or
    # ``planned_stop`` configured as unplanned) carries no usable information: unknown.
    unclassified = union(
        *(
            v
            for k, v in states.items()
            if k not in planned_states and k is not MachineState.RUNNING and k not in LOSS_STATES
        )
    )
    no_data = union(unknown, unclassified, subtract(window, covered))
    unk = intersect(no_data, ppt)
    known = subtract(ppt, unk)

    def known_in(state: MachineState) -> float:
        if state in planned_states:
            return 0.0
        return total(intersect(states.get(state, []), known))

    return TimeBuckets(
        elapsed_s=max(until - start, 0.0),
        planned_stop_s=total(subtract(window, plan)) + total(intersect(plan, in_planned_state)),
        unknown_s=total(unk),
        run_s=known_in(MachineState.RUNNING),
        idle_s=known_in(MachineState.IDLE),
        fault_s=known_in(MachineState.FAULT),
        changeover_s=known_in(MachineState.CHANGEOVER),
        starved_s=known_in(MachineState.STARVED),
        blocked_s=known_in(MachineState.BLOCKED),
        planned_stop_loss_s=known_in(MachineState.PLANNED_STOP),
    )


OpenPiece = tuple[float, MachineState, bool, str | None]


class Accounting:
    """Incremental form of :func:`account` for one window.

    The engine feeds it consecutive *pieces* ``[a, b)`` in which the state, the unknown flag and
    the downtime reason are constant, covering the window without gaps or overlaps. Each piece is
    split by the planned intervals (interval intersection) and lands in exactly one bucket, so the
    sums are the interval-arithmetic result, not a sum of event durations.

    ``stops`` are the calendar's planned stops by cause (:class:`~edge_agent.engine.shifts.Plan`):
    the complement of ``planned`` in the window, used only to split ``planned_stop_s`` by cause.
    """

    __slots__ = (
        "_by_reason",
        "_by_state",
        "_planned_states",
        "_stop",
        "_sums",
        "end",
        "planned",
        "start",
        "stops",
    )

    def __init__(
        self,
        start: float,
        end: float,
        planned: Sequence[Interval],
        planned_states: frozenset[MachineState],
        stops: Mapping[str, Sequence[Interval]] | None = None,
    ) -> None:
        self.start = start
        self.end = end
        self.planned: list[Interval] = clip(normalize(planned), start, end)
        self.stops: dict[str, list[Interval]] = {
            cause: clip(normalize(ivs), start, end) for cause, ivs in (stops or {}).items()
        }
        self._planned_states = planned_states
        self._sums = [0.0] * len(_BUCKET_NAMES)
        self._by_state: dict[str, float] = {str(st): 0.0 for st in sorted(planned_states)}
        self._by_reason: dict[str, float] = {}
        # Loss seconds of the stop in progress in this window, by (bucket, reason).
        self._stop: dict[tuple[int, str], float] = {}

    def _split(
        self, a: float, b: float, state: MachineState, unknown: bool
    ) -> tuple[int, float, float]:
        in_plan = 0.0
        for ps, pe in self.planned:
            if pe <= a:
                continue
            if ps >= b:
                break
            in_plan += min(b, pe) - max(a, ps)
        if state in self._planned_states:
            idx = _PLANNED_STOP
        elif unknown:
            idx = _UNKNOWN
        else:
            idx = _STATE_INDEX.get(state, _UNKNOWN)
        return idx, in_plan, (b - a) - in_plan

    def classify(
        self, a: float, b: float, state: MachineState, unknown: bool
    ) -> tuple[str, float, float]:
        """Where piece ``[a, b)`` lands: ``(bucket, seconds in it, seconds of calendar planned
        stop)``; ``bucket`` is ``planned_stop``, ``unknown``, ``running`` or a loss state. For
        attributing other quantities (energy) by the same rules as time."""
        if b <= a:
            return "unknown", 0.0, 0.0
        idx, in_plan, outside = self._split(a, b, state, unknown)
        return _ENERGY_NAMES[idx], in_plan, outside

    def move_loss(self, source: str, target: str, seconds: float) -> None:
        """Book ``seconds`` of loss time under downtime reason ``target`` instead of ``source``
        (an operator named a stop's reason; :mod:`edge_agent.engine.stops`). Never more than
        ``source`` holds; the loss buckets themselves do not change."""
        have = self._by_reason.get(source, 0.0)
        moved = min(seconds, have)
        if moved <= 0:
            return
        rest = have - moved
        if rest > 1e-9:
            self._by_reason[source] = rest
        else:
            self._by_reason.pop(source, None)
        self._by_reason[target] = self._by_reason.get(target, 0.0) + moved

    def add(
        self,
        a: float,
        b: float,
        state: MachineState,
        unknown: bool,
        reason: str | None = None,
        *,
        stop: bool = False,
    ) -> float:
        """Account piece ``[a, b)`` spent in ``state`` (``unknown``: no data during it) while
        ``reason`` was the downtime reason; ``stop``: the piece belongs to a stop in progress
        (a micro-stop candidate, see :meth:`stop_ended`). Returns the availability-loss seconds
        it added."""
        if b <= a:
            return 0.0
        idx, in_plan, outside = self._split(a, b, state, unknown)
        self._sums[idx] += in_plan
        self._sums[_PLANNED_STOP] += outside
        if idx == _PLANNED_STOP and in_plan > 0:
            self._by_state[str(state)] = self._by_state.get(str(state), 0.0) + in_plan
        elif idx >= _IDLE and in_plan > 0:
            key = reason or UNSPECIFIED_REASON
            self._by_reason[key] = self._by_reason.get(key, 0.0) + in_plan
            if stop:
                self._stop[idx, key] = self._stop.get((idx, key), 0.0) + in_plan
            return in_plan
        return 0.0

    def stop_ended(self, *, as_run: bool) -> None:
        """The stop in progress ended. ``as_run`` (it was a micro-stop under the six big
        losses): its loss time in this window becomes run time, a performance loss."""
        if as_run:
            for (idx, reason), secs in self._stop.items():
                self._sums[idx] = max(self._sums[idx] - secs, 0.0)
                self._sums[_RUN] += secs
                left = self._by_reason.get(reason, 0.0) - secs
                if left > 1e-9:
                    self._by_reason[reason] = left
                else:
                    self._by_reason.pop(reason, None)
        self._stop.clear()

    def buckets(self, until: float, open_piece: OpenPiece | None = None) -> TimeBuckets:
        """The buckets up to ``until``; ``open_piece`` = ``(since, state, unknown, reason)`` is
        the piece still in progress, counted up to ``until`` without being recorded."""
        acc = self
        if open_piece is not None and until > open_piece[0]:
            acc = self.folded(until, open_piece)
        sums = acc._sums
        causes = {cause: total(clip(ivs, self.start, until)) for cause, ivs in self.stops.items()}
        causes.update(acc._by_state)
        return TimeBuckets(
            elapsed_s=max(until - self.start, 0.0),
            planned_stop_s=sums[_PLANNED_STOP],
            unknown_s=sums[_UNKNOWN],
            run_s=sums[_RUN],
            idle_s=sums[_IDLE],
            fault_s=sums[_FAULT],
            changeover_s=sums[_CHANGEOVER],
            starved_s=sums[_STARVED],
            blocked_s=sums[_BLOCKED],
            planned_stop_loss_s=sums[_PLANNED_LOSS],
            planned_stop_by_cause_s=causes,
            loss_by_reason_s=dict(acc._by_reason),
        )

    def folded(self, until: float, open_piece: OpenPiece) -> Accounting:
        """A copy with the open piece ``[since, until)`` recorded (for persistence)."""
        acc = Accounting(self.start, self.end, self.planned, self._planned_states)
        acc.stops = self.stops
        acc._sums = list(self._sums)
        acc._by_state = dict(self._by_state)
        acc._by_reason = dict(self._by_reason)
        acc._stop = dict(self._stop)
        acc.add(open_piece[0], until, open_piece[1], open_piece[2], open_piece[3])
        return acc

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "planned": [list(iv) for iv in self.planned],
            "stops": {cause: [list(iv) for iv in ivs] for cause, ivs in self.stops.items()},
            "sums": dict(zip(_BUCKET_NAMES, self._sums, strict=True)),
            "by_state": dict(self._by_state),
            "by_reason": dict(self._by_reason),
            "stop": [
                [_BUCKET_NAMES[idx], reason, secs] for (idx, reason), secs in self._stop.items()
            ],
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], planned_states: frozenset[MachineState]) -> Accounting:
        acc = cls(
            float(d["start"]),
            float(d["end"]),
            [(float(s), float(e)) for s, e in d["planned"]],
            planned_states,
            {
                cause: [(float(s), float(e)) for s, e in ivs]
                for cause, ivs in (d.get("stops") or {}).items()
            },
        )
        sums = d["sums"]
        acc._sums = [float(sums.get(name, 0.0)) for name in _BUCKET_NAMES]
        acc._by_state.update({k: float(v) for k, v in (d.get("by_state") or {}).items()})
        acc._by_reason = {k: float(v) for k, v in (d.get("by_reason") or {}).items()}
        index = {name: i for i, name in enumerate(_BUCKET_NAMES)}
        acc._stop = {
            (index[name], str(reason)): float(secs)
            for name, reason, secs in d.get("stop") or []
            if name in index
        }
        return acc


@dataclass(frozen=True, slots=True, kw_only=True)
class Kpis:
    """Ratios are ``None`` when their denominator is zero (JSON ``null``), never NaN."""

    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    throughput_good_per_h: float | None
    throughput_total_per_h: float | None
    data_coverage: float | None
    warnings: frozenset[str]
    throughput_good_per_known_h: float | None = None


# Time denominators below a microsecond are zero: float residue of interval sums must not turn
# into an infinite performance.
_MIN_TIME_S = 1e-6


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _time_ratio(num: float, den_s: float) -> float | None:
    return num / den_s if den_s >= _MIN_TIME_S else None


def compute_kpis(
    buckets: TimeBuckets,
    *,
    total_count: int,
    good_count: int,
    ideal_cycle_time_s: float,
    net_run_time_s: float | None = None,
    fully_productive_time_s: float | None = None,
    ratios: bool = True,
    min_data_coverage: float = LOW_DATA_COVERAGE,
    unknown_net_run_time_s: float = 0.0,
    known_good_count: int | None = None,
) -> Kpis:
    """The KPIs of one window.

    ``net_run_time_s`` = Σ ideal cycle time × total count and ``fully_productive_time_s`` =
    Σ ideal cycle time × good count, over the products made (default: ``ideal_cycle_time_s`` ×
    the counts, one product).

    availability = run / (planned − unknown); performance = net run time / run, not clamped
    (above 1.0 adds ``performance_above_ideal``); quality = good / total; OEE = fully productive
    time / (planned − unknown). With one ideal cycle time that is exactly A × P × Q; with several
    it is A × P × (quality weighted by ideal cycle time). OEE stays defined (0) when the line ran
    without making a part; it is ``None`` without run time. Throughput is per hour of elapsed
    window time, and (``throughput_good_per_known_h``) good parts made in known time per hour
    of the window's time with data (elapsed − unknown).

    Parts placed in unknown time (edge_agent.engine.placement) count in quality, but not in
    performance and OEE, which pair parts with run time: ``unknown_net_run_time_s`` is their
    ideal time (the part of ``net_run_time_s`` they make up), ``known_good_count`` the good
    parts in known time (default: ``good_count``).
    ``ratios=False`` (no planned time by the calendar) makes all ratios ``None``.
    """
    warnings: set[str] = set()
    known_s = buckets.known_s
    coverage = _time_ratio(known_s, buckets.planned_s)
    net_s = ideal_cycle_time_s * total_count if net_run_time_s is None else net_run_time_s
    fpt_s = (
        ideal_cycle_time_s * good_count
        if fully_productive_time_s is None
        else fully_productive_time_s
    )
    if not ratios:
        availability = performance = quality = oee = coverage = None
    else:
        availability = _time_ratio(buckets.run_s, known_s)
        known_net_s = max(net_s - unknown_net_run_time_s, 0.0)
        performance = _time_ratio(known_net_s, buckets.run_s)
        quality = _ratio(good_count, total_count)
        # Fully productive time of the parts made in known time: A × P × Q.
        known_fpt_s = fpt_s * known_net_s / net_s if net_s > 0 else fpt_s
        # Defined exactly when availability and performance are.
        oee = (
            known_fpt_s / known_s if availability is not None and performance is not None else None
        )
        if performance is not None and performance > 1.0:
            warnings.add("performance_above_ideal")
        if coverage is not None and coverage < min_data_coverage:
            warnings.add("low_data_coverage")
    hours = buckets.elapsed_s / 3600.0
    return Kpis(
        availability=availability,
        performance=performance,
        quality=quality,
        oee=oee,
        throughput_good_per_h=_time_ratio(good_count, hours),
        throughput_total_per_h=_time_ratio(total_count, hours),
        data_coverage=coverage,
        warnings=frozenset(warnings),
        throughput_good_per_known_h=_time_ratio(
            good_count if known_good_count is None else known_good_count,
            (buckets.elapsed_s - buckets.unknown_s) / 3600.0,
        ),
    )
