"""Where counts belong in time, through ``edge-agent replay``: a 1-second recording and the
5-minute export thinned from it give the same shift figures (within one part per window
boundary), and an outage on a running line never makes performance look above ideal."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge_agent.cli import main

SEOUL = ZoneInfo("Asia/Seoul")
START = datetime(2024, 5, 2, 13, 0, tzinfo=SEOUL).timestamp()  # 13:00, an hour before 14:00
SPAN_S = 2 * 3600  # 13:00–15:00: the end of the day shift and the start of the swing shift
CYCLE_S = 1.25  # the line runs at 80 % of its ideal rate (ideal cycle time 1 s)
REJECT_EVERY = 50
OUTAGE = (1800, 1815)  # 13:30:00–13:30:15: the PLC cannot be read; it keeps counting
FAULT = (2400, 2700)  # 13:40–13:45: a fault, no parts
THIN_S, THIN_OFFSET_S = 300, 137  # the export: counters every 5 minutes, at :02:17, :07:17, ...

CONFIG = """
version: 1
site: s1
lines:
  - name: line1
    timezone: Asia/Seoul
    ideal_cycle_time: 1s
    shifts:
      - {name: day, start: "06:00", end: "14:00"}
      - {name: swing, start: "14:00", end: "22:00"}
    signals:
      state: {tag: plc1.state, map: {1: running, 3: fault}}
      total_count: {tag: plc1.total, rollover: 65536}
      reject_count: {tag: plc1.rejects, rollover: 65536}
mqtt: {host: 127.0.0.1}
"""


def stamp(s: int) -> str:
    return datetime.fromtimestamp(START + s, SEOUL).isoformat()


def total_at(s: int) -> int:
    """Parts made by second ``s`` of the recording: none during the fault."""
    running_s = s - max(0, min(s, FAULT[1]) - FAULT[0])
    return int(running_s / CYCLE_S)


def recording(*, thinned: bool) -> str:
    """The samples CSV: the state on change, the counters every second (or every 5 minutes),
    and the outage as bad-quality rows (what the history sink records)."""
    rows = ["timestamp,tag,value"]
    for s in range(SPAN_S + 1):
        t = stamp(s)
        if s == OUTAGE[0]:
            rows += [f"{t},plc1.state,", f"{t},plc1.total,", f"{t},plc1.rejects,"]
            continue
        if OUTAGE[0] < s < OUTAGE[1]:
            continue
        if s in (0, OUTAGE[1], FAULT[0], FAULT[1]):
            rows.append(f"{t},plc1.state,{3 if s == FAULT[0] else 1}")
        if not thinned or s in (0, SPAN_S) or s % THIN_S == THIN_OFFSET_S:
            total = total_at(s)
            rows += [f"{t},plc1.total,{total}", f"{t},plc1.rejects,{total // REJECT_EVERY}"]
    return "\n".join(rows) + "\n"


def replay_cli(tmp_path: Path, name: str, csv_text: str, capsys: Any) -> dict[str, Any]:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    samples = tmp_path / f"{name}.csv"
    samples.write_text(csv_text)
    assert main(["replay", "-c", str(cfg), str(samples)]) == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {r["window"]["name"]: r for r in reports}


def test_a_5_minute_export_gives_the_shift_figures_of_the_1_second_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense = replay_cli(tmp_path, "dense", recording(thinned=False), capsys)
    sparse = replay_cli(tmp_path, "sparse", recording(thinned=True), capsys)
    day_made, all_made = total_at(3600), total_at(SPAN_S)
    # The 1-second data: a sample exactly at 14:00 closes the day shift with the parts made
    # before it, the swing shift has the rest.
    assert (dense["day"]["total_count"], dense["swing"]["total_count"]) == (
        day_made,
        all_made - day_made,
    )
    # The export: its 13:57:17–14:02:17 delta is split by the running time on each side.
    for name in ("day", "swing"):
        d, s = dense[name], sparse[name]
        print(name, {k: (d[k], s[k]) for k in ("total_count", "good_count", "performance")})
        for key in ("total_count", "good_count", "reject_count"):
            assert abs(d[key] - s[key]) <= 1, (name, key, d[key], s[key])
    assert sparse["day"]["total_count"] + sparse["swing"]["total_count"] == all_made
    # The same time accounting: the fault, the run time of both.
    assert dense["day"]["loss_time_s"]["fault"] == sparse["day"]["loss_time_s"]["fault"] == 300


def test_parts_made_during_an_outage_are_counted_but_not_paired_with_run_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, csv_text in (
        ("dense", recording(thinned=False)),
        ("sparse", recording(thinned=True)),
    ):
        day = replay_cli(tmp_path, name, csv_text, capsys)["day"]
        # Every part is counted: total and good include the parts of the outage.
        assert day["total_count"] == pytest.approx(total_at(3600), abs=1)
        assert day["unknown_time_count"] > 0
        assert day["unknown_time_s"] > 0
        # Paired with run time, the parts made in known time keep the line's real rate: 0.8
        # (pairing the outage's parts with the run time around it would give 0.8037).
        assert day["performance"] == pytest.approx(1 / CYCLE_S, abs=0.001)
        assert "performance_above_ideal" not in day["warnings"]
        # Throughput over the time with data (13:00–14:00 less the outage), not the 8-hour shift.
        known_h = (day["elapsed_s"] - day["unknown_time_s"]) / 3600
        assert day["throughput_good_per_known_h"] == pytest.approx(
            (day["good_count"] - day["unknown_time_count"]) / known_h, rel=0.02
        )
        assert day["throughput_good_per_known_h"] > 5 * day["throughput_good_per_h"]
    # The outage in the 1-second data: 16 parts' worth of time (13:29:59–13:30:15), of which
    # the 15 unknown seconds hold 15/16 of the parts seen at 13:30:15.
    dense_day = replay_cli(tmp_path, "dense", recording(thinned=False), capsys)["day"]
    made = total_at(OUTAGE[1]) - total_at(OUTAGE[0] - 1)
    assert dense_day["unknown_time_count"] == round(made * 15 / 16)
