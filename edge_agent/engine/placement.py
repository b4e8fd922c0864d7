"""Where a counter or meter delta belongs in time (DESIGN §3, docs/kpi.md "Where a count
belongs"). Pure: no clock, no I/O.

A delta observed at ``t`` covers ``(t_prev, t]``, the time since the signal's previous sample.
A :class:`Ledger` keeps that time, cut by window (the pair of the shift or off-shift window and
the clock-hour window it lies in) and by bucket. A counter's buckets are the machine's own:
``running``, ``unknown`` (no data, or the state unknown) and ``stopped``, whatever the calendar
says (a line that runs through a break makes parts in it); the meter's are the time accounting's
(``running``, a loss state, ``planned_stop``, ``unknown``). When the next sample shows a delta,
the delta is placed over the ledger's time:

- parts (:func:`place_parts`) in proportion to the time in which parts can be made: ``running``
  and ``unknown`` (data unavailable: the line may have run). Parts placed in unknown time are
  counted, but not paired with run time. When the ledger holds neither, parts are placed by
  elapsed time, as known parts.
- energy (:func:`place_energy`) in proportion to all the time, bucket by bucket.

Parts are whole: the integer split uses the largest-remainder rule (each part of the ledger gets
the floor of its exact share; the parts left over go one each to the largest fractional
remainders, the earliest first on a tie), so the placed parts always add up to the delta: no part
is lost or counted twice across windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WindowKey = tuple[float, float]  # (start of the shift or off-shift window, start of the hour)

RUNNING = "running"
UNKNOWN = "unknown"


class Ledger:
    """The time since a signal's previous sample, by window pair and bucket, in time order."""

    __slots__ = ("segments", "since")

    def __init__(self) -> None:
        self.segments: list[tuple[WindowKey, dict[str, float]]] = []
        # The time up to which the engine's time is in the ledger (part of the piece in
        # progress may be, booked at a sample without cutting the piece).
        self.since = -math.inf

    def add(self, key: WindowKey, bucket: str, seconds: float) -> None:
        """``seconds`` more in ``bucket`` of window pair ``key`` (the latest time)."""
        if seconds <= 0:
            return
        segs = self.segments
        if segs and segs[-1][0] == key:
            buckets = segs[-1][1]
        else:
            buckets = {}
            segs.append((key, buckets))
        buckets[bucket] = buckets.get(bucket, 0.0) + seconds

    def holds(self, index: int, start: float, *, parts: bool = False) -> bool:
        """Whether time of the window starting at ``start`` is in the ledger (``index`` 0: the
        shift or off-shift window, 1: the hour); ``parts``: only time in which parts are placed
        (running or unknown)."""
        return any(
            key[index] == start
            and (not parts or buckets.get(RUNNING, 0.0) > 0 or buckets.get(UNKNOWN, 0.0) > 0)
            for key, buckets in self.segments
        )

    def take(self) -> list[tuple[WindowKey, dict[str, float]]]:
        """The ledger's time, emptying it (the time up to the new sample is placed)."""
        out, self.segments = self.segments, []
        return out

    def state_dict(self) -> list[list[Any]]:
        return [[key[0], key[1], dict(buckets)] for key, buckets in self.segments]

    @classmethod
    def from_state(cls, saved: Any) -> Ledger:
        ledger = cls()
        for shift_start, hour_start, buckets in saved or ():
            key = (float(shift_start), float(hour_start))
            for bucket, seconds in buckets.items():
                ledger.add(key, str(bucket), float(seconds))
        return ledger


@dataclass(frozen=True, slots=True)
class PlacedParts:
    """Parts of a delta placed in window pair ``key`` (``None``: the ledger was empty, the
    windows open at the sample's time): ``known`` in time with data, ``unknown`` in time
    without."""

    key: WindowKey | None
    known: int
    unknown: int


def largest_remainder(delta: int, weights: list[float]) -> list[int]:
    """``delta`` whole parts in proportion to ``weights`` (not all zero), adding up to
    ``delta``."""
    total = math.fsum(weights)
    quotas = [delta * w / total for w in weights]
    shares = [math.floor(q) for q in quotas]
    left = delta - sum(shares)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def place_parts(
    segments: list[tuple[WindowKey, dict[str, float]]], delta: int
) -> list[PlacedParts]:
    """Place ``delta`` parts over a ledger's time (see the module docstring)."""
    if delta <= 0:
        return []
    if len(segments) == 1:  # the common case: within one window pair, known or unknown
        key, buckets = segments[0]
        if buckets.get(UNKNOWN, 0.0) <= 0:
            return [PlacedParts(key, delta, 0)]
        if buckets.get(RUNNING, 0.0) <= 0:
            return [PlacedParts(key, 0, delta)]
    weights: list[float] = []
    for _, buckets in segments:
        weights.append(buckets.get(RUNNING, 0.0))
        weights.append(buckets.get(UNKNOWN, 0.0))
    if not any(w > 0 for w in weights):
        # None of it running and none unknown: by elapsed time, known parts.
        weights = []
        for _, buckets in segments:
            weights.append(math.fsum(buckets.values()))
            weights.append(0.0)
    if not any(w > 0 for w in weights):
        return [PlacedParts(None, delta, 0)]
    shares = largest_remainder(delta, weights)
    return [
        PlacedParts(key, shares[2 * i], shares[2 * i + 1])
        for i, (key, _) in enumerate(segments)
        if shares[2 * i] or shares[2 * i + 1]
    ]


def place_energy(
    segments: list[tuple[WindowKey, dict[str, float]]], kwh: float, state: str
) -> list[tuple[WindowKey | None, str, float]]:
    """Place ``kwh`` over a ledger's time, by bucket in proportion to its duration; an empty
    ledger (two readings at one instant): all in ``state``, in the windows open now."""
    total = math.fsum(s for _, buckets in segments for s in buckets.values())
    if total <= 0:
        return [(None, state, kwh)]
    return [
        (key, bucket, kwh * s / total)
        for key, buckets in segments
        for bucket, s in buckets.items()
        if s > 0
    ]
