"""Watch and the demo show both throughputs: per hour of the shift so far (GOOD/H) and per hour
with data (KNOWN/H), so a line watched since mid-shift does not look 8 times slower."""

from __future__ import annotations

import json

from edge_agent.console import BrokerView, render_table
from edge_agent.watch import FleetView, render_fleet

KPI = {
    "seq": 1,
    "site": "s1",
    "line": "l1",
    "ts": "2024-03-04T14:00:00.000+00:00",
    "state": "running",
    "oee": 0.9,
    "total_count": 3000,
    "good_count": 3000,
    "throughput_good_per_h": 375.0,
    "throughput_good_per_known_h": 3000.0,
    "throughput_total_per_h": 375.0,
}


def column(lines: list[str], title: str) -> list[str]:
    header = lines[0].split()
    i = header.index(title)
    return [row.split()[i] for row in lines[1:]]


def test_the_demo_table_and_line_show_throughput_over_known_time() -> None:
    view = BrokerView(prefix="edge-agent", site="s1")
    text = view.receive("edge-agent/s1/l1/kpi", json.dumps(KPI).encode(), now_monotonic=1.0)
    assert text is not None and "good/h=375 good/known_h=3000" in text
    rows = render_table(view, ["l1"], now_monotonic=2.0)
    assert (column(rows, "GOOD/H"), column(rows, "KNOWN/H")) == (["375"], ["3000"])


def test_watch_shows_throughput_over_known_time() -> None:
    view = FleetView(prefix="p")
    now = 1_000_000.0
    payload = json.dumps(KPI).encode()
    view.receive("p/s1/l1/kpi", payload, now=now, now_monotonic=0.0, retained=False)
    rows = render_fleet(view, now + 1, stale_after_s=15)
    assert (column(rows, "GOOD/H"), column(rows, "KNOWN/H")) == (["375"], ["3000"])
