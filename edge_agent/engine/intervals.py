"""Interval arithmetic on half-open time intervals ``[start, end)`` in POSIX seconds.

Every function takes and returns *normalised* lists: sorted, disjoint, non-empty intervals, with
touching intervals merged. KPI time buckets are computed with these set operations, never by
adding up event durations, so overlapping causes are counted once.
"""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[float, float]


def normalize(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort, drop empty intervals and merge overlapping or touching ones."""
    out: list[Interval] = []
    for start, end in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union(*lists: Iterable[Interval]) -> list[Interval]:
    return normalize(iv for lst in lists for iv in lst)


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """``a ∩ b`` of two normalised lists (linear merge)."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """``a − b`` of two normalised lists."""
    out: list[Interval] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            if cur >= end:
                break
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def clip(a: list[Interval], start: float, end: float) -> list[Interval]:
    """``a ∩ [start, end)``."""
    return intersect(a, [(start, end)]) if end > start else []


def total(a: Iterable[Interval]) -> float:
    """Total length in seconds of a normalised list."""
    return sum(end - start for start, end in a)
