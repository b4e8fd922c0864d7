"""The loss conventions and unknown state codes (docs/kpi.md, "Conventions"), through
``edge-agent replay``: each row of the doc's example table is replayed and its figures checked,
so the doc and the engine cannot drift apart."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config.loader import load_config_text
from edge_agent.replay import replay

KPI_DOC = Path(__file__).resolve().parents[2] / "docs" / "kpi.md"
DAY = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday

LINE: dict[str, Any] = {
    "name": "line1",
    "timezone": "UTC",
    "ideal_cycle_time": "1s",
    "shifts": [
        {
            "name": "day",
            "start": "06:00",
            "end": "14:00",
            "breaks": [{"start": "09:00", "end": "09:15"}, {"start": "12:00", "end": "12:15"}],
        }
    ],
    "signals": {
        "state": {
            "tag": "plc.state",
            "map": {1: "running", 2: "idle", 3: "fault", 4: "planned_stop"},
        },
        "total_count": "plc.total",
        "reject_count": "plc.rejects",
    },
}


def at(hour: int, minute: int = 0, second: int = 0) -> str:
    return (DAY + timedelta(hours=hour, minutes=minute, seconds=second)).isoformat()


def scenario_a() -> list[tuple[str, str, int]]:
    rows = [(at(6), "plc.state", 1), (at(6), "plc.total", 0), (at(6), "plc.rejects", 0)]
    rows += [(at(7), "plc.state", 4), (at(7, 30), "plc.state", 1)]
    rows += [(at(10), "plc.state", 3), (at(10, 40), "plc.state", 1)]
    for k in range(20):
        rows += [(at(11, k), "plc.state", 2), (at(11, k, 30), "plc.state", 1)]
    rows += [(at(13, 59), "plc.total", 20_000), (at(13, 59), "plc.rejects", 400)]
    return rows


def scenario_b() -> list[tuple[str, str, int]]:
    rows = [(at(6), "plc.state", 1), (at(6), "plc.total", 0), (at(6), "plc.rejects", 0)]
    rows += [(at(10), "plc.state", 9), (at(10, 10), "plc.state", 1)]
    rows += [(at(13, 59), "plc.total", 26_000)]
    return rows


SCENARIOS = {"A": scenario_a, "B": scenario_b}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def doc_rows() -> list[dict[str, Any]]:
    page = KPI_DOC.read_text()
    block = page.split("<!-- convention examples")[1].split("<!-- end of convention examples")[0]
    rows = []
    for line in block.splitlines():
        m = re.fullmatch(r"\| ([AB]) \| `(\{.*\})` \|(.*)\|", line)
        if m is None:
            continue
        numbers = [float(x) for x in m.group(3).split("|")]
        rows.append(
            {
                "scenario": m.group(1),
                "line": yaml.safe_load(m.group(2)),
                "figures": dict(
                    zip(
                        (
                            "planned_time_s",
                            "unknown_time_s",
                            "run_time_s",
                            "availability",
                            "performance",
                            "quality",
                            "oee",
                        ),
                        numbers,
                        strict=True,
                    )
                ),
            }
        )
    return rows


def shift_report(line: dict[str, Any], samples: list[tuple[str, str, Any]]) -> dict[str, Any]:
    doc = {"version": 1, "site": "s1", "lines": [line], "mqtt": {"host": "127.0.0.1"}}
    text = yaml.safe_dump(doc, sort_keys=False)
    cfg = load_config_text(text)
    csv = "timestamp,tag,value\n" + "".join(f"{t},{tag},{v}\n" for t, tag, v in samples)
    csv += f"{at(14, 0, 1)},plc.state,1\n"  # time passes the shift's end
    result = replay(cfg, io.StringIO(csv))
    assert result.problems == []
    [report] = result.closed
    return report


def test_the_doc_has_every_example_row() -> None:
    rows = doc_rows()
    assert len(rows) == 6
    assert {r["scenario"] for r in rows} == {"A", "B"}


@pytest.mark.parametrize("row", doc_rows(), ids=lambda r: f"{r['scenario']}:{r['line']}")
def test_convention_examples_in_the_docs_replay_to_their_figures(row: dict[str, Any]) -> None:
    report = shift_report(merged(LINE, row["line"]), SCENARIOS[row["scenario"]]())
    got = {k: report[k] for k in row["figures"]}
    assert got == pytest.approx(row["figures"], abs=1e-6)
    assert report["elapsed_s"] == 28_800
    buckets = (
        report["run_time_s"]
        + sum(report["loss_time_s"].values())
        + report["planned_stop_s"]
        + report["unknown_time_s"]
    )
    assert buckets == pytest.approx(28_800)


def test_each_report_names_its_convention() -> None:
    names = {
        conv: shift_report(merged(LINE, {"convention": conv}), scenario_a())["convention"]
        for conv in ("iso22400", "planned_downtime_loss", "six_big_losses")
    }
    assert names == {
        "iso22400": "iso22400:planned=planned_stop",
        "planned_downtime_loss": "planned_downtime_loss",
        "six_big_losses": "six_big_losses:planned=planned_stop",
    }
    empty = shift_report(merged(LINE, {"planned_states": []}), scenario_a())
    assert empty["convention"] == "iso22400:planned="


def test_planned_stop_not_planned_is_a_loss_not_unknown_time() -> None:
    # planned_states: [] once turned planned_stop into unknown time: coverage dropped and the
    # stop vanished from the losses.
    report = shift_report(merged(LINE, {"planned_states": []}), scenario_a())
    assert report["loss_time_s"]["planned_stop"] == 1_800
    assert report["unknown_time_s"] == 0
    assert report["data_coverage"] == 1
    assert report["planned_stop_by_cause_s"] == {"off_shift": 0, "break": 1_800, "maintenance": 0}


def test_six_big_losses_move_micro_stops_to_run_time_and_their_reason_with_them() -> None:
    iso = shift_report(LINE, scenario_a())
    tpm = shift_report(merged(LINE, {"convention": "six_big_losses"}), scenario_a())
    assert iso["micro_stop_count"] == tpm["micro_stop_count"] == 20
    assert iso["micro_stop_time_s"] == tpm["micro_stop_time_s"] == 600
    assert iso["loss_time_s"]["idle"] == 600 and tpm["loss_time_s"]["idle"] == 0
    assert tpm["loss_time_s"]["fault"] == 2_400  # a 40 min fault is no micro-stop
    assert iso["loss_time_by_reason_s"] == {"unspecified": 3_000}
    assert tpm["loss_time_by_reason_s"] == {"unspecified": 2_400}
    assert tpm["oee"] == iso["oee"]


def test_an_unmapped_state_code_warns_under_either_choice() -> None:
    for extra in ({}, {"signals": {"state": {"unmapped": "idle"}}}):
        report = shift_report(merged(LINE, extra), scenario_b())
        assert "unmapped_state_code" in report["warnings"]


@pytest.mark.parametrize(
    ("extra", "planned", "run"),
    [
        ({"convention": "iso22400"}, 25_200, 21_600),
        ({"convention": "planned_downtime_loss"}, 27_000, 21_600),
        ({"convention": "six_big_losses"}, 25_200, 22_200),
    ],
)
def test_an_outage_mid_run_is_unknown_time_under_every_convention(
    extra: dict[str, Any], planned: int, run: int
) -> None:
    # Scenario A with the state unreadable 13:00-13:10 while the line was running: 600 s of
    # unknown time, whichever convention; the parts are still counted.
    rows: list[tuple[str, str, Any]] = [r for r in scenario_a() if r[0] != at(13, 59)]
    rows += [(at(13), "plc.state", "")]  # empty: a bad-quality sample
    rows += [(at(13, 10), "plc.state", 1)]
    rows += [(at(13, 59), "plc.total", 20_000), (at(13, 59), "plc.rejects", 400)]
    report = shift_report(merged(LINE, extra), rows)
    assert report["unknown_time_s"] == 600
    assert (report["planned_time_s"], report["run_time_s"]) == (planned, run)
    assert report["data_coverage"] == pytest.approx((planned - 600) / planned, abs=1e-6)
    assert report["availability"] == pytest.approx(run / (planned - 600), abs=1e-6)
    assert report["total_count"] == 20_000


def test_planned_states_with_planned_downtime_loss_is_a_warning() -> None:
    line = merged(LINE, {"convention": "planned_downtime_loss", "planned_states": ["changeover"]})
    doc = {"version": 1, "site": "s1", "lines": [line], "mqtt": {"host": "127.0.0.1"}}
    warnings: list[str] = []
    load_config_text(yaml.safe_dump(doc, sort_keys=False), warnings=warnings)
    assert len(warnings) == 1
    assert (
        "lines[0].planned_states: has no effect with convention planned_downtime_loss"
        in (warnings[0])
    )
