"""The shift calendar: windows, breaks, midnight and DST (DESIGN §2)."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from edge_agent.config.schema import Break, Shift
from edge_agent.engine.shifts import OFF_SHIFT, SHIFT, ShiftCalendar, Window


def ts(tz: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


SEOUL = "Asia/Seoul"
NIGHT = Shift(
    name="night",
    start=time(22, 0),
    end=time(6, 0),
    breaks=(Break(start=time(23, 45), end=time(0, 15)), Break(start=time(3, 0), end=time(3, 30))),
)


def test_overnight_shift_in_seoul_with_a_break_across_midnight() -> None:
    cal = ShiftCalendar(SEOUL, [NIGHT])
    start = ts(SEOUL, 2024, 5, 1, 22, 0)  # = 13:00 UTC
    assert start == 1714568400.0
    for probe in (start, ts(SEOUL, 2024, 5, 2, 0, 0), ts(SEOUL, 2024, 5, 2, 5, 59)):
        w = cal.window_at(probe)
        assert w == Window(kind=SHIFT, name="night", start=start, end=start + 8 * 3600)
    assert w is not None
    planned = cal.planned_intervals(w)
    # 22:00–23:45, 00:15–03:00, 03:30–06:00: 105 + 165 + 150 min = 420 min = 8 h − 2 × 30 min.
    assert planned == [
        (start, start + 105 * 60),
        (start + 135 * 60, start + 300 * 60),
        (start + 330 * 60, start + 480 * 60),
    ]
    assert sum(e - s for s, e in planned) == 7 * 3600


def test_off_shift_is_none_and_the_off_shift_window_spans_the_gap() -> None:
    cal = ShiftCalendar(SEOUL, [NIGHT])
    noon = ts(SEOUL, 2024, 5, 2, 12, 0)
    assert cal.window_at(noon) is None
    assert cal.window_at(ts(SEOUL, 2024, 5, 2, 6, 0)) is None  # end is exclusive
    off = cal.off_shift_window(noon)
    assert off == Window(
        kind=OFF_SHIFT,
        name=OFF_SHIFT,
        start=ts(SEOUL, 2024, 5, 2, 6, 0),
        end=ts(SEOUL, 2024, 5, 2, 22, 0),
    )
    assert cal.planned_intervals(off) == []
    assert cal.window_or_off_shift(noon) == off


def test_adjacent_shifts_hand_over_exactly() -> None:
    shifts = [
        Shift(name="day", start=time(6), end=time(14)),
        Shift(name="late", start=time(14), end=time(22)),
        Shift(name="night", start=time(22), end=time(6)),
    ]
    cal = ShiftCalendar("UTC", shifts)
    t = ts("UTC", 2024, 1, 10, 14, 0)
    day = cal.window_at(t - 0.001)
    late = cal.window_at(t)
    assert day is not None and late is not None
    assert (day.name, late.name) == ("day", "late")
    assert day.end == late.start == t
    night = cal.window_at(ts("UTC", 2024, 1, 11, 1, 0))
    assert night is not None and night.name == "night"
    assert night.start == ts("UTC", 2024, 1, 10, 22, 0)


def test_no_shifts_means_the_whole_local_day() -> None:
    cal = ShiftCalendar(SEOUL, [])
    w = cal.window_at(ts(SEOUL, 2024, 5, 2, 0, 30))
    assert w == Window(
        kind=SHIFT, name="day", start=ts(SEOUL, 2024, 5, 2, 0, 0), end=ts(SEOUL, 2024, 5, 3, 0, 0)
    )
    assert cal.planned_intervals(w) == [(w.start, w.end)]


def test_start_equal_end_is_24_hours() -> None:
    cal = ShiftCalendar("UTC", [Shift(name="all", start=time(6), end=time(6))])
    w = cal.window_at(ts("UTC", 2024, 1, 10, 5, 0))
    assert w is not None
    assert (w.start, w.end) == (ts("UTC", 2024, 1, 9, 6), ts("UTC", 2024, 1, 10, 6))


def test_night_shift_across_dst_changes_follows_the_wall_clock() -> None:
    berlin = "Europe/Berlin"
    cal = ShiftCalendar(berlin, [Shift(name="night", start=time(22), end=time(6))])
    # 2024-10-27 03:00 CEST → 02:00 CET: the night of 26/27 October lasts 9 h.
    autumn = cal.window_at(ts(berlin, 2024, 10, 27, 1, 0))
    assert autumn is not None and autumn.end - autumn.start == 9 * 3600
    # 2024-03-31 02:00 CET → 03:00 CEST: the night of 30/31 March lasts 7 h.
    spring = cal.window_at(ts(berlin, 2024, 3, 31, 4, 0))
    assert spring is not None and spring.end - spring.start == 7 * 3600
    assert spring.end == datetime(2024, 3, 31, 4, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def test_break_outside_its_shift_is_clipped() -> None:
    shift = Shift(
        name="day",
        start=time(6),
        end=time(14),
        breaks=(Break(start=time(13, 50), end=time(14, 10)),),
    )
    cal = ShiftCalendar("UTC", [shift])
    w = cal.window_at(ts("UTC", 2024, 1, 10, 7))
    assert w is not None
    assert cal.planned_intervals(w) == [(w.start, w.end - 600)]
