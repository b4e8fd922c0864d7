"""``edge-agent demo``: one time zone per screen, named in the header. The payloads' ETAs (in
the line's zone, e.g. +09:00), the log lines and the message lines' clocks are all shown in it;
the host's own zone is never mixed in."""

from __future__ import annotations

import datetime
import json
import logging
import zoneinfo
from pathlib import Path

from edge_agent.config.loader import load_config, load_config_text
from edge_agent.demo import BrokerView, _Recent, display_zone, render_table

REPO = Path(__file__).resolve().parents[2]
SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")

ORDER = {
    "seq": 3,
    "order_id": "A-1",
    "status": "running",
    "good_count": 10,
    "target_quantity": 100,
    "remaining_quantity": 90,
    "eta_current": "2026-03-02T14:30:00+09:00",
    "eta_shift_average": "2026-03-02T15:00:00+09:00",
}


def test_the_demo_shows_the_lines_zone() -> None:
    tz, name = display_zone(load_config(REPO / "config" / "demo.yaml"))
    assert name == "Asia/Seoul" and tz == SEOUL


def test_lines_in_several_zones_are_shown_in_utc() -> None:
    text = (REPO / "config" / "demo.yaml").read_text()
    first = text.index("timezone: Asia/Seoul")
    text = text[:first] + "timezone: Europe/Berlin" + text[first + len("timezone: Asia/Seoul") :]
    tz, name = display_zone(load_config_text(text, check_files=False))
    assert (tz, name) == (datetime.UTC, "UTC")


def test_etas_are_converted_to_the_screen_zone() -> None:
    view = BrokerView(prefix="p", site="s", tz=datetime.UTC)
    text = view.receive("p/s/l1/order", json.dumps(ORDER).encode(), now_monotonic=0.0)
    # 14:30 in Seoul (+09:00) is 05:30 UTC: the screen's zone, not the payload's offset.
    assert text is not None and "ETA 05:30:00 (current rate), 06:00:00 (shift average)" in text
    rows = render_table(view, ["l1"], now_monotonic=1.0)
    assert "05:30:00" in rows[1].split() and "14:30:00" not in rows[1]
    view.tz = SEOUL
    rows = render_table(view, ["l1"], now_monotonic=1.0)
    assert "14:30:00" in rows[1].split()


def test_log_lines_under_the_table_use_the_screen_zone() -> None:
    recent = _Recent(SEOUL)
    record = logging.LogRecord("edge_agent", logging.WARNING, __file__, 1, "broker lost", (), None)
    record.created = datetime.datetime(2026, 3, 2, 5, 30, 7, tzinfo=datetime.UTC).timestamp()
    recent.emit(record)
    assert list(recent.records) == ["14:30:07 WARNING edge_agent: broker lost"]
