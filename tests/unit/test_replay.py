"""``edge-agent replay``: the samples CSV, time driven by the samples, the output formats."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge_agent.cli import main
from edge_agent.config.loader import load_config_text
from edge_agent.model import Quality, Sample
from edge_agent.replay import EXIT_DATAERR, format_table, replay
from edge_agent.samplecsv import SampleReader, format_time, format_value, parse_value
from tests.helpers.wire import WireEngine

SEOUL = ZoneInfo("Asia/Seoul")

# No `sources`: the signal tags simply name the CSV's tags.
CONFIG = """
version: 1
site: s1
lines:
  - name: line1
    timezone: Asia/Seoul
    ideal_cycle_time: 1s
    shifts:
      - {name: day, start: "06:00", end: "14:00", breaks: [{start: "10:00", end: "10:30"}]}
      - {name: swing, start: "14:00", end: "22:00"}
    signals:
      state: {tag: plc1.state, map: {1: running, 2: idle, 3: fault}}
      total_count: {tag: plc1.total, rollover: 65536}
      reject_count: {tag: plc1.rejects, rollover: 65536}
  - name: line2
    timezone: UTC
    ideal_cycle_time: 2s
    signals:
      running: plc2.run
      total_count: {tag: plc2.total}
mqtt: {host: 127.0.0.1}
"""


def ts(hour: int, minute: int = 0, second: int = 0, day: int = 2) -> str:
    return datetime(2024, 5, day, hour, minute, second, tzinfo=SEOUL).isoformat()


def csv_text(rows: list[tuple[str, str, str]]) -> str:
    return "timestamp,tag,value\n" + "".join(f"{t},{tag},{v}\n" for t, tag, v in rows)


SPARSE = [
    (ts(5, 59), "plc1.state", "1"),
    (ts(5, 59), "plc1.total", "0"),
    (ts(5, 59), "plc1.rejects", "0"),
    (ts(5, 59), "plc2.run", "true"),
    (ts(5, 59), "plc2.total", "10"),
    (ts(12, 0), "plc1.total", "100"),
    (ts(12, 0), "plc1.rejects", "4"),
    (ts(12, 0), "plc2.total", "20"),
    # Nothing for more than 11 hours: both of line1's shifts and line2's day end in between.
    (ts(23, 30), "plc1.state", "2"),
    (ts(23, 30), "plc1.total", "150"),
]


def test_sources_may_be_left_out_and_tags_name_the_csv() -> None:
    cfg = load_config_text(CONFIG)
    assert cfg.sources == ()
    result = replay(cfg, io.StringIO(csv_text(SPARSE)))
    assert result.problems == []
    assert result.samples == len(SPARSE)
    line2 = [p for p in result.open if p["line"] == "line2"]
    assert line2[0]["state"] == "running"


def test_tag_splits_at_the_first_dot() -> None:
    reader = SampleReader(io.StringIO("timestamp,tag,value\n2024-05-02T06:00:00Z,a.b.c,1\n"))
    (sample,) = list(reader)
    assert (sample.source, sample.tag) == ("a", "b.c")


def test_windows_close_at_their_boundaries_with_sparse_samples() -> None:
    result = replay(load_config_text(CONFIG), io.StringIO(csv_text(SPARSE)))
    closed = [(p["line"], p["window"]["name"], p["window"]["end"], p["ts"]) for p in result.closed]
    # In time order across lines: line2's UTC day ends at 09:00 Seoul, between line1's shifts.
    assert closed == [
        ("line2", "day", "2024-05-02T00:00:00+00:00", "2024-05-02T00:00:00.000+00:00"),
        ("line1", "day", ts(14), "2024-05-02T14:00:00.000+09:00"),
        ("line1", "swing", ts(22), "2024-05-02T22:00:00.000+09:00"),
    ]
    day = result.closed[[p["line"] for p in result.closed].index("line1")]
    assert day["window"]["name"] == "day"
    # Running the whole shift; the 30-minute break is planned stop time, not run time.
    assert day["elapsed_s"] == 8 * 3600
    assert day["planned_stop_s"] == 1800
    assert day["run_time_s"] == 7.5 * 3600
    assert (day["total_count"], day["good_count"], day["reject_count"]) == (100, 96, 4)
    swing = next(p for p in result.closed if p["window"]["name"] == "swing")
    assert swing["run_time_s"] == 8 * 3600 and swing["total_count"] == 0
    # The open windows at the last sample's time: line1 off shift, with the parts counted then.
    open1 = next(p for p in result.open if p["line"] == "line1")
    assert open1["window"]["kind"] == "off_shift"
    assert open1["ts"] == "2024-05-02T23:30:00.000+09:00"
    assert open1["total_count"] == 50 and open1["state"] == "idle"


def test_replay_equals_the_engine_ticked_every_second() -> None:
    """Ticking only at samples and boundaries gives the reports of a live engine ticked every
    second: the window accounting does not depend on the tick cadence."""
    cfg = load_config_text(CONFIG)
    result = replay(cfg, io.StringIO(csv_text(SPARSE)))
    engine = WireEngine(cfg.lines[0], site=cfg.site)
    reader = SampleReader(io.StringIO(csv_text(SPARSE)))
    samples = [s for s in reader if s.source == "plc1"]
    live: list[dict[str, Any]] = []
    t = samples[0].agent_time
    for s in samples:
        while t < s.agent_time:
            live += [m.payload for m in engine.tick(t) if m.topic_suffix == "kpi/shift"]
            t += 1.0
        engine.ingest(s)
    assert live == [p for p in result.closed if p["line"] == "line1"]


def test_bad_rows_are_all_reported_with_their_line_numbers() -> None:
    text = (
        "timestamp,tag,value\n"  # line 1
        f"{ts(6)},plc1.total,1\n"  # 2 ok
        "yesterday,plc1.total,2\n"  # 3
        "2024-05-02T06:00:01,plc1.total,2\n"  # 4: no offset
        f"{ts(6, 0, 2)},plc1,3\n"  # 5: no dot
        f"{ts(6, 0, 2)},.total,3\n"  # 6: empty source
        f"{ts(6, 0, 3)},plc1.total,12abc\n"  # 7
        f"{ts(6, 0, 3)},plc1.total\n"  # 8: two fields
        "\n"  # 9: blank, ignored
        f"{ts(6, 0, 5)},plc1.total,\n"  # 10 ok: bad quality
        f'{ts(6, 0, 4)},"plc1.total",4\n'  # 11: earlier than line 10
        f"{ts(6, 0, 6)},plc1.state,TRUE\n"  # 12 ok
    )
    reader = SampleReader(io.StringIO(text))
    samples = list(reader)
    assert [p.line for p in reader.problems] == [3, 4, 5, 6, 7, 8, 11]
    messages = [p.message for p in reader.problems]
    assert "not ISO 8601" in messages[0]
    assert "no UTC offset" in messages[1]
    assert "not SOURCE.TAG" in messages[2] and "not SOURCE.TAG" in messages[3]
    assert "'12abc' is not a number" in messages[4]
    assert "expected 3 fields" in messages[5]
    assert "earlier than line 10's" in messages[6]
    assert [s.value for s in samples] == [1, None, True]
    assert samples[1].quality is Quality.BAD


def test_bad_header_is_an_error() -> None:
    reader = SampleReader(io.StringIO("time,tag,value\n2024-05-02T06:00:00Z,a.b,1\n"))
    assert list(reader) == []
    assert [p.line for p in reader.problems] == [1]
    reader = SampleReader(io.StringIO("\ufefftimestamp,tag,value\n2024-05-02T06:00:00Z,a.b,1\n"))
    assert len(list(reader)) == 1 and reader.problems == []


def test_cli_exit_65_names_file_and_line_and_caps_the_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    samples = tmp_path / "samples.csv"
    samples.write_text(
        "timestamp,tag,value\n" + "".join(f"{ts(6)},plc1.total,x{i}\n" for i in range(25))
    )
    assert main(["replay", "-c", str(cfg), str(samples)]) == EXIT_DATAERR
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{samples}:2: value 'x0'" in err
    assert f"{samples}:21: value 'x19'" in err
    assert f"{samples}:22:" not in err
    assert "... and 5 more bad row(s)" in err
    assert "25 bad row(s)" in err


def test_cli_json_lines_then_open_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    samples = tmp_path / "samples.csv"
    samples.write_text(csv_text(SPARSE))
    assert main(["replay", "-c", str(cfg), str(samples)]) == 0
    out = capsys.readouterr().out
    reports = [json.loads(line) for line in out.splitlines()]
    assert all(r["schema"] == "edge-agent/kpi/1" for r in reports)
    kinds = [(r["line"], r["window"]["name"]) for r in reports]
    # Closed shifts first (in time order), then one open window per configured line.
    assert kinds[-2:] == [("line1", "off_shift"), ("line2", "day")]
    assert ("line1", "day") in kinds[:-2] and ("line1", "swing") in kinds[:-2]


def test_cli_missing_csv_and_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    assert main(["replay", "-c", str(cfg), str(tmp_path / "nope.csv")]) == 66
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsite: s1\nlines: []\nmqtt: {host: h}\n")
    assert main(["replay", "-c", str(bad), str(tmp_path / "nope.csv")]) == 78


def test_table_format() -> None:
    result = replay(load_config_text(CONFIG), io.StringIO(csv_text(SPARSE)))
    table = format_table(result).splitlines()
    assert table[0].split() == [
        "LINE",
        "WINDOW",
        "START",
        "END",
        "STATUS",
        "A",
        "P",
        "Q",
        "OEE",
        "TOTAL",
        "GOOD",
        "REJECT",
        "COVERAGE",
    ]
    day = next(row for row in table if row.startswith("line1") and " day " in row).split()
    assert day[4] == "closed"
    assert day[5] == "100.0%"  # availability
    assert day[9:12] == ["100", "96", "4"]
    assert day[12] == "100.0%"
    off = next(row for row in table if "off_shift" in row).split()
    assert off[4] == "open" and off[5] == "-"  # no ratios off shift
    assert len(table) == 1 + len(result.closed) + len(result.open)


@pytest.mark.parametrize(
    ("value", "quality"),
    [
        (0, Quality.GOOD),
        (-17, Quality.GOOD),
        (2**40, Quality.GOOD),
        (1.5, Quality.GOOD),
        (1e20, Quality.GOOD),
        (float("inf"), Quality.GOOD),
        (True, Quality.GOOD),
        (False, Quality.GOOD),
        (None, Quality.BAD),
    ],
)
def test_values_round_trip(value: object, quality: Quality) -> None:
    cell = format_value(value, quality)  # type: ignore[arg-type]
    assert cell is not None
    back, q = parse_value(cell)
    assert q is quality
    assert back == value and type(back) is type(value)


def test_times_round_trip_to_the_microsecond() -> None:
    t = 1714600800.123456
    reader = SampleReader(io.StringIO(f"timestamp,tag,value\n{format_time(t)},a.b,1\n"))
    (sample,) = list(reader)
    assert sample == Sample("a", "b", 1, Quality.GOOD, None, pytest.approx(t, abs=1e-6))
