"""Country calendars (``calendar.country``) from the holidays package, the site's overrides,
their config errors, ``edge-agent calendar``, and shifts through ``edge-agent replay``."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from edge_agent import calendars
from edge_agent.cli import main
from edge_agent.config.loader import load_config_text
from edge_agent.errors import ConfigError
from edge_agent.replay import replay

SEOUL = ZoneInfo("Asia/Seoul")
SEOLLAL = [date(2026, 2, 16), date(2026, 2, 17), date(2026, 2, 18)]
LABOUR_DAY = date(2026, 5, 1)
CHUSEOK = [date(2026, 9, 24), date(2026, 9, 25), date(2026, 9, 26)]


def config_text(calendar: dict[str, Any]) -> str:
    line = {
        "name": "line1",
        "timezone": "Asia/Seoul",
        "ideal_cycle_time": "1s",
        "shifts": [{"name": "day", "start": "08:00", "end": "17:00"}],  # every day of the week
        "calendar": calendar,
        "signals": {"running": "plc.run", "total_count": "plc.total"},
    }
    doc = {"version": 1, "site": "s1", "lines": [line], "mqtt": {"host": "127.0.0.1"}}
    return yaml.safe_dump(doc, sort_keys=False)


def test_the_pinned_release_has_the_korean_holidays_of_2026() -> None:
    public = calendars.public_holidays("KR", 2026)
    for day in [*SEOLLAL, LABOUR_DAY, *CHUSEOK]:
        assert day in public, day
    assert public[LABOUR_DAY] == "Labor Day"
    assert date(2026, 5, 4) not in public


def shift_reports(calendar: dict[str, Any], days: list[date]) -> dict[date, dict[str, Any]]:
    """The kpi/shift report of each day in ``days``, the line running 08:00-17:00 every day."""
    cfg = load_config_text(config_text(calendar))
    rows = []
    total = 0
    for day in days:
        for hour in (8, 17):
            t = datetime(day.year, day.month, day.day, hour, tzinfo=SEOUL)
            total += 100 if hour == 17 else 0
            rows += [f"{t.isoformat()},plc.run,true\n", f"{t.isoformat()},plc.total,{total}\n"]
    end = datetime(days[-1].year, days[-1].month, days[-1].day, 23, tzinfo=SEOUL)
    rows.append(f"{end.isoformat()},plc.run,true\n")
    result = replay(cfg, io.StringIO("timestamp,tag,value\n" + "".join(rows)))
    assert result.problems == []
    # Replay also closes the shifts of the days in between: keep the days asked about.
    by_day = {date.fromisoformat(r["window"]["start"][:10]): r for r in result.closed}
    return {day: r for day, r in by_day.items() if day in days}


def test_no_shift_on_seollal_labour_day_and_chuseok_through_replay() -> None:
    days = [date(2026, 2, 13) + timedelta(days=k) for k in range(7)]  # Fri 13 .. Thu 19
    days += [date(2026, 4, 30), LABOUR_DAY, date(2026, 5, 2)]
    days += [date(2026, 9, 23) + timedelta(days=k) for k in range(5)]  # Wed 23 .. Sun 27
    held = shift_reports({"country": "KR"}, days)
    off = set(SEOLLAL) | {LABOUR_DAY} | set(CHUSEOK)
    assert set(held) == set(days) - off
    assert all(held[d]["planned_time_s"] == 9 * 3600 for d in held)


def test_site_overrides_worked_holidays_substitutes_and_site_days() -> None:
    cal = {
        "country": "KR",
        "holidays": ["2026-04-30"],
        "worked_holidays": ["2026-05-01"],
        "substitute_days": [{"date": "2026-09-28", "instead_of": "2026-09-24"}],
    }
    days = [date(2026, 4, 30), LABOUR_DAY, *CHUSEOK, date(2026, 9, 27), date(2026, 9, 28)]
    held = shift_reports(cal, days)
    assert set(held) == {LABOUR_DAY, date(2026, 9, 24), date(2026, 9, 27)}
    resolved = {d.date: d.kind for d in calendars.resolve("KR", [], [LABOUR_DAY], [], 2026)}
    assert resolved[LABOUR_DAY] == calendars.WORKED
    assert resolved[date(2026, 9, 25)] == calendars.PUBLIC


def test_calendar_mistakes_are_config_errors_naming_the_day() -> None:
    bad = {
        "country": "KR",
        "worked_holidays": ["2026-05-04"],
        "substitute_days": [{"date": "2026-09-28", "instead_of": "2026-09-29"}],
        "extra_days": ["2026-10-03"],
    }
    with pytest.raises(ConfigError) as err:
        load_config_text(config_text(bad))
    text = "\n".join(err.value.issues)
    assert "lines[0].calendar.worked_holidays[0]: 2026-05-04 is not a public holiday of KR" in text
    assert "lines[0].calendar.substitute_days[0].instead_of: 2026-09-29 is not a public" in text
    assert (
        "lines[0].calendar.extra_days[0]: 2026-10-03 is a public holiday of KR (National"
        " Foundation Day): list it under worked_holidays to work it" in text
    )
    with pytest.raises(ConfigError) as err:
        load_config_text(config_text({"country": "ZZ"}))
    assert "lines[0].calendar.country: must be a country the holidays package" in str(
        err.value.issues
    )
    with pytest.raises(ConfigError) as err:
        load_config_text(config_text({"worked_holidays": ["2026-05-01"]}))
    assert "needs calendar.country" in str(err.value.issues)


def test_calendar_command_shows_the_resolved_days_of_a_year(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(config_text({"country": "KR", "worked_holidays": ["2026-05-01"]}))
    assert main(["calendar", "-c", str(path), "--year", "2026"]) == 0
    out = capsys.readouterr().out
    assert "line1 (Asia/Seoul), 2026: public holidays of KR (holidays 0.109" in out
    assert "2026-02-17 Tue  public      Korean New Year" in out
    assert "2026-05-01 Fri  worked      Labor Day (worked: worked_holidays)" in out
    assert "2026-09-25 Fri  public      Chuseok" in out
    assert "  21 days off" in out
    assert main(["calendar", "-c", str(path), "--line", "nope"]) == 64


def test_the_holidays_package_is_imported_only_for_a_country_calendar() -> None:
    code = (
        "import sys\n"
        "from edge_agent.config.loader import load_config_text\n"
        "from edge_agent.engine.line import LineEngine\n"
        f"cfg = load_config_text({config_text({'holidays': ['2026-05-01']})!r})\n"
        "e = LineEngine(cfg.lines[0], site='s1')\n"
        "e.tick(1780000000.0)\n"
        "print('holidays' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
