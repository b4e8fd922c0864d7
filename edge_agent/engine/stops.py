"""Stops of the open shift whose reason the PLC did not give, and the reasons operators give them
(the operator page, docs/operator.md). Pure: no clock, no I/O.

A stop runs from the moment the state enters an availability-loss state until it leaves the loss
states (or the data is lost). Only its loss time booked as ``unspecified`` is kept, piece by
piece: time whose reason a PLC reason signal gave stays with that reason (the PLC wins), unless
the line's ``operator_reason_wins`` is set, when that time is kept too, with the PLC's reason. An
operator's classification moves the stop's kept loss time to the reason, or, split at a time
inside the stop, the part before to one reason and the rest to another; an undo moves it back
to the reasons it was booked under. The amounts moved are computed from the pieces by the
window's own accounting (:meth:`~edge_agent.engine.oee.Accounting.classify`), so breaks inside a
stop are never counted.

Operator actions reach the engine as samples of the reserved source :data:`OPERATOR_SOURCE`,
so the sample history records them and ``edge-agent replay`` reproduces the reports: tags
``LINE.stop`` (the stop's start), ``LINE.split`` (0: none), ``LINE.reason2`` and ``LINE.reason``
(codes, 1-based in the line's ``stop_reasons``; reason 0 undoes), then ``LINE.action``, the line's
action number, one more than the last, which applies them. The history records a tag only when
its value changes and writes every tag's value again at each keyframe: so the values given are
kept until the next sample of their tag (an unchanged value is the same value), and an action
number not above the last one applied is ignored (a keyframe does not apply an action twice).
Samples of bad quality (the history's marks of an outage) carry no action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.domain import MachineState
from edge_agent.engine.oee import UNSPECIFIED_REASON, Accounting

OPERATOR_SOURCE = "operator"
# The tags of one action, in the order the page sends them; `reason` applies the action.
ACTION_TAGS = ("stop", "split", "reason2", "reason", "action")
MAX_STOPS = 500  # kept per shift; older ones can no longer be classified
_SAME_TIME_S = 1e-3  # a stop is named by its start time, to the millisecond


@dataclass(slots=True)
class Stop:
    start: float
    state: str
    end: float | None = None
    # [a, b) pieces of loss time an operator may classify, with their state (for the accounting)
    # and the reason they were booked under (``unspecified``, or the PLC's when it does not win)
    pieces: list[tuple[float, float, str, str]] = field(default_factory=list)
    # operator's reasons: ((from, reason), ...) from ``start``; empty: unclassified
    reasons: list[tuple[float, str]] = field(default_factory=list)
    # seconds moved, by (reason booked under, operator's reason)
    booked: dict[tuple[str, str], float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "state": self.state,
            "end": self.end,
            "pieces": [list(p) for p in self.pieces],
            "reasons": [list(r) for r in self.reasons],
            "booked": [[a, b, s] for (a, b), s in self.booked.items()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stop:
        return cls(
            start=float(d["start"]),
            state=str(d["state"]),
            end=None if d.get("end") is None else float(d["end"]),
            pieces=[_piece(p) for p in d.get("pieces", ())],
            reasons=[(float(t), str(r)) for t, r in d.get("reasons", ())],
            booked=_booked(d.get("booked")),
        )


def _piece(p: list[Any]) -> tuple[float, float, str, str]:
    # saved before pieces carried their reason: unspecified
    reason = str(p[3]) if len(p) > 3 else UNSPECIFIED_REASON
    return float(p[0]), float(p[1]), str(p[2]), reason


def _booked(d: Any) -> dict[tuple[str, str], float]:
    if isinstance(d, dict):  # saved before: {reason: seconds}, all from unspecified
        return {(UNSPECIFIED_REASON, str(k)): float(v) for k, v in d.items()}
    return {(str(a), str(b)): float(s) for a, b, s in d or ()}


class StopBook:
    """The open shift's stops and their classification."""

    def __init__(self, reasons: tuple[str, ...], *, operator_wins: bool = False) -> None:
        self.reasons = reasons  # the line's configured stop reasons, in order (codes from 1)
        # the line's operator_reason_wins: loss time with a PLC reason may be classified too
        self.operator_wins = operator_wins
        self.stops: list[Stop] = []
        self._staged: dict[str, float] = {}  # the latest value of each action tag
        self.seq = 0  # the number of the last action applied

    # --- fed by the engine --------------------------------------------------------------------

    def state_changed(self, state: MachineState, t: float, *, loss: bool, known: bool) -> None:
        current = self.stops[-1] if self.stops and self.stops[-1].end is None else None
        if loss and known:
            if current is None:
                self.stops.append(Stop(t, str(state)))
                del self.stops[:-MAX_STOPS]
            return
        if current is not None:
            current.end = t

    def keeps(self, reason: str | None) -> bool:
        """Whether loss time booked under the PLC's ``reason`` (None: none) may be classified."""
        return reason is None or self.operator_wins

    def piece(self, a: float, b: float, state: MachineState, reason: str | None = None) -> None:
        """Loss time ``[a, b)`` in ``state`` of the stop in progress, booked under the PLC's
        ``reason`` (None: unspecified); only time :meth:`keeps` allows is kept."""
        if self.stops and self.stops[-1].end is None and b > a and self.keeps(reason):
            self.stops[-1].pieces.append((a, b, str(state), reason or UNSPECIFIED_REASON))

    def new_shift(self) -> None:
        """The shift closed: its stops can no longer be classified."""
        self.stops = []

    # --- operator actions ------------------------------------------------------------------------

    def take(self, tag: str, value: float, acc: Accounting) -> str | None:
        """One action sample (``tag`` without the line: see :data:`ACTION_TAGS`). On a new
        ``action`` number the action is applied to ``acc``; returns a problem in words when it
        cannot be (nothing changes then), else ``None``."""
        if tag != "action":
            self._staged[tag] = value
            return None
        if value <= self.seq:
            return None  # applied already (a keyframe repeats the last action's number)
        self.seq = int(value)
        staged = self._staged
        return self.classify(
            staged.get("stop", -1.0),
            int(staged.get("reason", 0)),
            acc,
            split_at=staged.get("split") or None,
            second=int(staged.get("reason2", 0)),
        )

    def find(self, start: float) -> Stop | None:
        for stop in self.stops:
            if abs(stop.start - start) <= _SAME_TIME_S:
                return stop
        return None

    def classify(
        self,
        start: float,
        code: int,
        acc: Accounting,
        *,
        split_at: float | None = None,
        second: int = 0,
    ) -> str | None:
        """Give the stop that started at ``start`` reason ``code`` (1-based in the line's
        ``stop_reasons``; 0 undoes), split at ``split_at`` with ``second`` for the rest."""
        stop = self.find(start)
        if stop is None or stop.end is None:
            return "no ended stop of this shift starts then"
        if not stop.pieces:
            return "the stop has no unspecified loss time (its reason came from the PLC)"
        if code < 0 or code > len(self.reasons):
            return f"unknown reason code {code}"
        if code == 0:
            reasons: list[tuple[float, str]] = []
        else:
            reasons = [(stop.start, self.reasons[code - 1])]
            if split_at is not None:
                if not stop.start < split_at < stop.end:
                    return "the split time is not inside the stop"
                if not 1 <= second <= len(self.reasons):
                    return f"unknown reason code {second} for the rest of the stop"
                reasons.append((split_at, self.reasons[second - 1]))
        booked = _amounts(stop, reasons, acc)
        for (was, reason), seconds in stop.booked.items():
            acc.move_loss(reason, was, seconds)
        for (was, reason), seconds in booked.items():
            acc.move_loss(was, reason, seconds)
        stop.reasons, stop.booked = reasons, booked
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stops": [s.to_dict() for s in self.stops],
            "staged": dict(self._staged),
            "seq": self.seq,
        }

    def restore(self, d: dict[str, Any] | None) -> None:
        d = d or {}
        self.stops = [Stop.from_dict(s) for s in d.get("stops", ())]
        self._staged = {str(k): float(v) for k, v in (d.get("staged") or {}).items()}
        self.seq = int(d.get("seq") or 0)


def _amounts(
    stop: Stop, reasons: list[tuple[float, str]], acc: Accounting
) -> dict[tuple[str, str], float]:
    """The stop's kept loss seconds for each reason's part of it, by the reason they were
    booked under and the operator's reason."""
    out: dict[tuple[str, str], float] = {}
    if not reasons:
        return out
    bounds = [*(t for t, _ in reasons[1:]), float("inf")]
    for (since, reason), until in zip(reasons, bounds, strict=True):
        for a, b, state, was in stop.pieces:
            lo, hi = max(a, since), min(b, until)
            if hi > lo and was != reason:
                bucket, in_plan, _ = acc.classify(lo, hi, MachineState(state), False)
                if bucket not in ("running", "unknown", "planned_stop"):
                    key = (was, reason)
                    out[key] = out.get(key, 0.0) + in_plan
    return out
