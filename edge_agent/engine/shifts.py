"""The shift calendar of a line: which window a moment belongs to, and its planned time.

Shifts and breaks are local wall-clock times in the line's time zone. Each shift *instance* is
computed per local date and converted to UTC through :mod:`zoneinfo`, so a night shift across a
DST change is 7 or 9 hours long, as the clock on the wall says. A wall time that does not exist
(spring forward) resolves with the offset in force before the change, an ambiguous one (fall back)
to its first occurrence (``fold=0``).

Rules (DESIGN §2): ``end <= start`` crosses midnight, ``start == end`` is 24 hours, no shifts means
the whole local day is one window named ``day``. Breaks lie inside their shift; a break before the
shift's start time belongs to the next local date (a night shift's 02:00 break), and a break whose
end is before its start crosses midnight. Breaks are clipped to their shift.

Extension point: :meth:`ShiftCalendar.day_windows` lists the shift instances that start on one
local date; weekdays and holidays filter there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from edge_agent.config.schema import Shift
from edge_agent.engine.intervals import Interval, clip, normalize, subtract

SHIFT = "shift"
OFF_SHIFT = "off_shift"

_WHOLE_DAY = Shift(name="day", start=time(0, 0), end=time(0, 0))
_ONE_DAY = timedelta(days=1)
# How far off_shift_window() looks for the neighbouring shifts (weekends, holidays later).
_SEARCH_DAYS = 8
_CACHE_MAX = 32


@dataclass(frozen=True, slots=True)
class Window:
    """A reporting window ``[start, end)`` in POSIX seconds.

    ``kind`` is ``"shift"`` or ``"off_shift"`` (from the end of one shift to the start of the next).
    """

    kind: str
    name: str
    start: float
    end: float

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


def _local_ts(tz: ZoneInfo, day: date, wall: time) -> float:
    return datetime.combine(day, wall.replace(tzinfo=None), tzinfo=tz).timestamp()


class ShiftCalendar:
    """Shift instances of one line. Pure: every answer depends only on the arguments."""

    def __init__(self, timezone: str, shifts: Sequence[Shift]) -> None:
        self.tz = ZoneInfo(timezone)
        self.shifts: tuple[Shift, ...] = tuple(shifts) if shifts else (_WHOLE_DAY,)
        self._day_cache: dict[date, tuple[Window, ...]] = {}

    def local_date(self, t: float) -> date:
        return datetime.fromtimestamp(t, self.tz).date()

    def _instance(self, shift: Shift, day: date) -> Window | None:
        start = _local_ts(self.tz, day, shift.start)
        end_day = day if shift.end > shift.start else day + _ONE_DAY
        end = _local_ts(self.tz, end_day, shift.end)
        if end <= start:  # only possible for odd DST corner cases: no such instance
            return None
        return Window(kind=SHIFT, name=shift.name, start=start, end=end)

    def day_windows(self, day: date) -> tuple[Window, ...]:
        """The shift instances that start on local date ``day``, sorted by start."""
        cached = self._day_cache.get(day)
        if cached is not None:
            return cached
        found = [w for s in self.shifts if (w := self._instance(s, day)) is not None]
        windows = tuple(sorted(found, key=lambda w: (w.start, w.end)))
        if len(self._day_cache) >= _CACHE_MAX:
            self._day_cache.clear()
        self._day_cache[day] = windows
        return windows

    def window_at(self, now: float) -> Window | None:
        """The shift window containing ``now``, or ``None`` off shift.

        Overlapping shifts are a configuration error; should they occur, the one that started
        first wins.
        """
        today = self.local_date(now)
        best: Window | None = None
        # A shift lasts at most 25 h (24 h across a fall-back): it started today or yesterday.
        for day in (today - _ONE_DAY, today):
            for w in self.day_windows(day):
                if w.start <= now < w.end and (best is None or w.start < best.start):
                    best = w
        return best

    def off_shift_window(self, now: float) -> Window:
        """The off-shift window around ``now``: from the end of the previous shift to the start of
        the next. Only meaningful when :meth:`window_at` returns ``None``; if no shift is found
        within ``_SEARCH_DAYS``, the local day bounds are used."""
        today = self.local_date(now)
        prev_end: float | None = None
        next_start: float | None = None
        for k in range(-_SEARCH_DAYS, _SEARCH_DAYS + 1):
            for w in self.day_windows(today + timedelta(days=k)):
                if w.end <= now and (prev_end is None or w.end > prev_end):
                    prev_end = w.end
                if w.start > now and (next_start is None or w.start < next_start):
                    next_start = w.start
        if prev_end is None:
            prev_end = _local_ts(self.tz, today, time(0, 0))
        if next_start is None:
            next_start = _local_ts(self.tz, today + _ONE_DAY, time(0, 0))
        return Window(kind=OFF_SHIFT, name=OFF_SHIFT, start=prev_end, end=next_start)

    def window_or_off_shift(self, now: float) -> Window:
        """The window that ``now`` belongs to: a shift, else the off-shift window."""
        return self.window_at(now) or self.off_shift_window(now)

    def planned_intervals(self, window: Window) -> list[Interval]:
        """The window minus its breaks, as normalised UTC intervals. Off-shift windows have none."""
        if window.kind != SHIFT:
            return []
        first = self.local_date(window.start)
        for day in (first - _ONE_DAY, first, first + _ONE_DAY):
            for shift in self.shifts:
                if shift.name != window.name:
                    continue
                inst = self._instance(shift, day)
                if inst is not None and inst.start == window.start and inst.end == window.end:
                    breaks = self._breaks(shift, day)
                    return subtract([(window.start, window.end)], breaks)
        # A window from another calendar (e.g. restored after a config change): no known breaks.
        return [(window.start, window.end)]

    def _breaks(self, shift: Shift, day: date) -> list[Interval]:
        out: list[Interval] = []
        inst = self._instance(shift, day)
        if inst is None:
            return out
        for brk in shift.breaks:
            if brk.start == brk.end:
                continue
            # A break earlier in the day than the shift's start lies after midnight.
            b_day = day if brk.start >= shift.start else day + _ONE_DAY
            e_day = b_day if brk.end > brk.start else b_day + _ONE_DAY
            start = _local_ts(self.tz, b_day, brk.start)
            end = _local_ts(self.tz, e_day, brk.end)
            out.extend(clip([(start, end)], inst.start, inst.end) if end > start else [])
        return normalize(out)
