"""An open reporting window of a line engine and what was counted in it. Pure."""

from __future__ import annotations

from typing import Any

from edge_agent.domain import MachineState
from edge_agent.engine.oee import Accounting
from edge_agent.engine.shifts import Window
from edge_agent.engine.signals import SIG_GOOD, SIG_REJECT


class OpenWindow:
    """One open reporting window and what was counted in it."""

    __slots__ = (
        "acc",
        "counts",
        "energy",
        "fault_count",
        "flags",
        "micro_count",
        "micro_pending_s",
        "micro_s",
        "window",
    )

    def __init__(self, window: Window, acc: Accounting) -> None:
        self.window = window
        self.acc = acc
        # product code (None: no product signal, or product not known) -> [total, second
        # counter, total in unknown time, second counter in unknown time]
        self.counts: dict[int | None, list[int]] = {}
        self.flags: set[str] = set()
        self.micro_count = 0
        self.micro_s = 0.0
        self.micro_pending_s = 0.0  # loss time in this window of the stop in progress
        self.energy: dict[str, float] = {}  # kWh by state bucket
        self.fault_count = 0  # faults that started in this window

    def add(self, product: int | None, slot: int, known: int, unknown: int) -> None:
        """Parts of counter ``slot`` (0: total, 1: the second counter) for ``product``:
        ``known`` in time with data, ``unknown`` in time without."""
        entry = self.counts.get(product)
        if entry is None:
            entry = self.counts[product] = [0, 0, 0, 0]
        entry[slot] += known + unknown
        entry[slot + 2] += unknown

    def product_rows(
        self, second_counter: int | None, *, known: bool = False
    ) -> list[tuple[int | None, int, int, int]]:
        """(product code, total, good, reject) per product; ``second_counter``: the line's
        reject or good counter kind, if any; ``known``: only the parts placed in time with data.
        A reject (good) delta that arrives in the window before its total delta is capped so
        that good and reject are never negative."""
        rows = []
        for code, (all_total, all_second, unknown_total, unknown_second) in self.counts.items():
            total, second = all_total, all_second
            if known:
                total, second = all_total - unknown_total, all_second - unknown_second
            if second_counter == SIG_REJECT:
                reject = min(second, total)
                rows.append((code, total, total - reject, reject))
            elif second_counter == SIG_GOOD:
                good = min(second, total)
                rows.append((code, total, good, total - good))
            else:
                rows.append((code, total, total, 0))
        rows.sort(key=lambda r: (r[0] is not None, r[0] or 0))
        return rows

    def unknown_time_count(self) -> int:
        """Parts of the total counter placed in time without data."""
        return sum(c[2] for c in self.counts.values())

    def state_dict(self) -> dict[str, Any]:
        w = self.window
        return {
            "window": {"kind": w.kind, "name": w.name, "start": w.start, "end": w.end},
            "accounting": self.acc.state_dict(),
            "counts": [[code, *c] for code, c in self.counts.items()],
            "flags": sorted(self.flags),
            "micro": [self.micro_count, self.micro_s, self.micro_pending_s],
            "energy": dict(self.energy),
            "fault_count": self.fault_count,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], planned_states: frozenset[MachineState]) -> OpenWindow:
        w = d["window"]
        window = Window(
            kind=w["kind"], name=w["name"], start=float(w["start"]), end=float(w["end"])
        )
        o = cls(window, Accounting.from_state(d["accounting"], planned_states))
        o.counts = {
            # [code, total, second] from a version that placed no parts in unknown time
            (None if row[0] is None else int(row[0])): [int(v) for v in (*row[1:], 0, 0)[:4]]
            for row in d["counts"]
        }
        o.flags = set(d.get("flags", []))
        count, micro_s, pending_s = d.get("micro", (0, 0.0, 0.0))
        o.micro_count, o.micro_s, o.micro_pending_s = int(count), float(micro_s), float(pending_s)
        o.energy = {k: float(v) for k, v in (d.get("energy") or {}).items()}
        o.fault_count = int(d.get("fault_count", 0))
        return o
