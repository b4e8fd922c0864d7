"""What the line board shows: the latest reports of each line, and a wake-up for the pages that
wait for the next change.

The pipeline hands every report it makes to :meth:`Boards.take` (the live ``kpi`` and ``order``
snapshots, state changes, closed windows); nothing here reads a clock or touches the engine, so
a page shows exactly what the MQTT subscribers get. The figures keep the contract's field names
(docs/mqtt.md): the page reads ``oee``, ``top_downtime_reasons``, ``data_coverage``, ... as the
sponsor does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from edge_agent import contract
from edge_agent.engine.reports import KpiReport, OrderReport, Report, StateChange

# The KPI report's fields the board shows (the rest stays on MQTT).
BOARD_KPI_FIELDS: tuple[str, ...] = (
    "window",
    "ts",
    "state",
    "oee",
    "availability",
    "performance",
    "quality",
    "throughput_good_per_h",
    "good_count",
    "total_count",
    "top_downtime_reasons",
    "data_coverage",
    "warnings",
    "shift_note",
)
BOARD_ORDER_FIELDS: tuple[str, ...] = (
    "order_id",
    "product",
    "good_count",
    "target_quantity",
    "remaining_quantity",
    "eta_current",
)


class Boards:
    """The board of every line. :attr:`changed` wakes the pages: each waiter takes the event
    current when it starts waiting (:meth:`next_change`), and :meth:`take` replaces it."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._kpi: dict[str, dict[str, Any]] = {}
        self._order: dict[str, dict[str, Any]] = {}
        self._state: dict[str, dict[str, Any]] = {}
        self.lines = tuple(lines)
        self._changed = asyncio.Event()
        self.version = 0  # increases with every change

    def take(self, reports: Iterable[Report]) -> None:
        """Adopt ``reports`` (in the order the engine made them)."""
        changed = False
        for report in reports:
            if isinstance(report, StateChange):
                self._state[report.line] = {"state": report.state, "since": report.since}
            elif isinstance(report, KpiReport):
                if report.window.kind == "hour" or report.closed:
                    continue  # the board shows the open shift
                doc = contract.payload(report)
                self._kpi[report.line] = {k: doc.get(k) for k in BOARD_KPI_FIELDS}
                self._state.setdefault(report.line, {"state": report.state, "since": None})
            elif isinstance(report, OrderReport):
                doc = contract.payload(report)
                self._order[report.line] = {k: doc.get(k) for k in BOARD_ORDER_FIELDS}
            else:
                continue
            changed = True
        if changed:
            self.version += 1
            self._changed.set()
            self._changed = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """The event :meth:`take` sets at the next change."""
        return self._changed

    def board(self, line: str) -> dict[str, Any]:
        """The line board's figures (``null`` where no report has been seen yet: unknown)."""
        state = self._state.get(line, {"state": "unknown", "since": None})
        return {
            "line": line,
            "state": state["state"],
            "since": state["since"],
            "kpi": self._kpi.get(line),
            "order": self._order.get(line),
        }
