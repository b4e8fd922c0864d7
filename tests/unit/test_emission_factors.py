"""Dated emission factors (``emission_factors``): each report uses the factor in force at its
window's start and cites it; the shipped configs carry the current national figure. Through
``edge-agent replay``."""

from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from edge_agent.config.loader import load_config_text
from edge_agent.errors import ConfigError
from edge_agent.replay import replay

ROOT = Path(__file__).resolve().parents[2]
SEOUL = ZoneInfo("Asia/Seoul")
FACTORS = [
    {"valid_from": "2021-01-01", "kg_co2e_per_kwh": 0.4509, "source": "KR 2021"},
    {"valid_from": "2023-01-01", "kg_co2e_per_kwh": 0.4173, "source": "KR 2023"},
    {"valid_from": "2022-01-01", "kg_co2e_per_kwh": 0.4312, "source": "KR 2022"},  # any order
]


def config_text(**line: Any) -> str:
    doc = {
        "version": 1,
        "site": "s1",
        "lines": [
            {
                "name": "line1",
                "timezone": "Asia/Seoul",
                "ideal_cycle_time": "1s",
                "shifts": [{"name": "day", "start": "08:00", "end": "16:00"}],
                "signals": {
                    "running": "plc.run",
                    "total_count": "plc.total",
                    "energy": "plc.kwh",
                },
                **line,
            }
        ],
        "mqtt": {"host": "127.0.0.1"},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def shifts(text: str, days: list[date]) -> dict[date, dict[str, Any]]:
    """Each day: 100 kWh and 1,000 parts in its 08:00-16:00 shift."""
    rows, kwh, parts = [], 0, 0
    for day in days:
        for hour in (8, 15):
            t = datetime(day.year, day.month, day.day, hour, tzinfo=SEOUL).isoformat()
            if hour == 15:
                kwh, parts = kwh + 100, parts + 1_000
            rows += [f"{t},plc.run,true\n", f"{t},plc.total,{parts}\n", f"{t},plc.kwh,{kwh}\n"]
    last = days[-1]
    rows.append(
        f"{datetime(last.year, last.month, last.day, 17, tzinfo=SEOUL).isoformat()},plc.run,true\n"
    )
    result = replay(load_config_text(text), io.StringIO("timestamp,tag,value\n" + "".join(rows)))
    assert result.problems == []
    by_day = {date.fromisoformat(r["window"]["start"][:10]): r for r in result.closed}
    return {d: by_day[d] for d in days}


def test_each_shift_uses_and_cites_the_factor_in_force_at_its_start() -> None:
    days = [date(2020, 12, 31), date(2021, 1, 1), date(2022, 12, 31), date(2023, 1, 1)]
    days.append(date(2023, 6, 1))
    got = shifts(config_text(emission_factors=FACTORS), days)
    before = got[date(2020, 12, 31)]
    assert before["energy_kwh"] == 100
    assert before["co2e_kg"] is None and before["emission_factor"] is None
    assert before["energy_notes"] == [
        "no emission factor of this line is in force on 2020-12-31: CO2e not computed"
    ]
    expected = {
        date(2021, 1, 1): (0.4509, "KR 2021", "2021-01-01"),
        date(2022, 12, 31): (0.4312, "KR 2022", "2022-01-01"),
        date(2023, 1, 1): (0.4173, "KR 2023", "2023-01-01"),
        date(2023, 6, 1): (0.4173, "KR 2023", "2023-01-01"),  # the latest, carried forward
    }
    for day, (factor, source, valid_from) in expected.items():
        report = got[day]
        assert report["emission_factor"] == {
            "kg_co2e_per_kwh": factor,
            "source": source,
            "valid_from": valid_from,
        }
        assert report["co2e_kg"] == pytest.approx(100 * factor)
        assert report["co2e_per_good_part_kg"] == pytest.approx(0.1 * factor)


def test_the_single_undated_form_still_applies_always() -> None:
    text = config_text(emission_factor={"kg_co2e_per_kwh": 0.5, "source": "site contract"})
    [report] = shifts(text, [date(2019, 5, 2)]).values()
    assert report["co2e_kg"] == pytest.approx(50)
    assert report["emission_factor"] == {
        "kg_co2e_per_kwh": 0.5,
        "source": "site contract",
        "valid_from": None,
    }


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_shipped_configs_carry_the_current_national_figure_with_its_citation(name: str) -> None:
    cfg = load_config_text((ROOT / "config" / name).read_text())
    dated = [line for line in cfg.lines if line.emission_factors]
    assert dated
    for line in dated:
        values = {f.valid_from: f.kg_co2e_per_kwh for f in line.emission_factors}
        assert values == {
            date(2021, 1, 1): 0.4509,
            date(2022, 1, 1): 0.4312,
            date(2023, 1, 1): 0.4173,
        }
        current = max(line.emission_factors, key=lambda f: f.valid_from or date.min)
        assert "2023" in current.source and "confirmed 2025-12-17" in current.source
        assert "national GHG statistics committee" in current.source


def test_both_forms_or_two_factors_for_one_date_are_config_errors() -> None:
    one = {"kg_co2e_per_kwh": 0.5, "source": "x"}
    with pytest.raises(ConfigError) as err:
        load_config_text(config_text(emission_factor=one, emission_factors=[one]))
    assert (
        "lines[0].emission_factors: give emission_factor (one factor) or emission_factors"
        in (err.value.issues[0])
    )
    twice = [{**one, "valid_from": "2023-01-01"}, {**one, "valid_from": "2023-01-01"}]
    with pytest.raises(ConfigError) as err:
        load_config_text(config_text(emission_factors=twice))
    assert err.value.issues[0].endswith(
        "lines[0].emission_factors[1]: emission_factors[0] has the same valid_from (2023-01-01):"
        " one factor per date"
    )
