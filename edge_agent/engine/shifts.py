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

Dated exceptions (:class:`~edge_agent.config.schema.Calendar`): a shift is held on the local
dates on which it *starts*: its weekdays (``days``), never on a day off (the country's public
holidays less the worked ones, the site's holidays and substitute days:
:mod:`edge_agent.calendars`), and on an extra working
day if that day follows all shifts or the shifts of the weekday it is ``like``. A night shift that
starts the evening before a holiday is held in full. Dated maintenance windows (local wall time,
resolved like shift times) are planned stops: they are cut out of planned time like breaks.

Any time span, not only a shift, has a *plan* (:meth:`ShiftCalendar.plan`): its planned intervals
and its planned-stop time by cause (``off_shift``, ``break``, ``maintenance``); hourly windows use
it, since a clock hour can hold the end of one shift and the start of the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from edge_agent.calendars import days_off
from edge_agent.config.schema import Calendar, Shift
from edge_agent.engine.intervals import Interval, clip, intersect, normalize, subtract, union

SHIFT = "shift"
OFF_SHIFT = "off_shift"
HOUR = "hour"
# Planned-stop causes that the calendar knows (planned machine states are the engine's).
CAUSE_OFF_SHIFT = "off_shift"
CAUSE_BREAK = "break"
CAUSE_MAINTENANCE = "maintenance"
CALENDAR_CAUSES = (CAUSE_OFF_SHIFT, CAUSE_BREAK, CAUSE_MAINTENANCE)

_WHOLE_DAY = Shift(name="day", start=time(0, 0), end=time(0, 0))
_ONE_DAY = timedelta(days=1)
# How far off_shift_window() looks for the neighbouring shifts (weekends, holiday weeks).
_SEARCH_DAYS = 16
_CACHE_MAX = 64


@dataclass(frozen=True, slots=True)
class Window:
    """A reporting window ``[start, end)`` in POSIX seconds.

    ``kind`` is ``"shift"``, ``"off_shift"`` (from the end of one shift to the start of the next)
    or ``"hour"`` (a local clock hour, named ``"HH:00"``).
    """

    kind: str
    name: str
    start: float
    end: float

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class Plan:
    """What the calendar says about a span: planned intervals and planned stops by cause
    (disjoint; together with ``planned`` they cover the span)."""

    planned: list[Interval]
    stops: dict[str, list[Interval]]


def _local_ts(tz: ZoneInfo, day: date, wall: time) -> float:
    return datetime.combine(day, wall.replace(tzinfo=None), tzinfo=tz).timestamp()


def hour_window(t: float, tz: ZoneInfo) -> Window:
    """The local clock hour containing ``t``. Across a DST change the hours stay one real hour
    long (02:00 does not exist in spring; 02:00 comes twice in autumn, with two offsets)."""
    local = datetime.fromtimestamp(t, tz)
    start = local.replace(minute=0, second=0, microsecond=0).timestamp()
    if start > t:  # a zone whose offset is not whole hours around a change: cannot happen often
        start -= 3600.0
    nxt = datetime.fromtimestamp(start + 3600.0, tz)
    end = nxt.replace(minute=0, second=0, microsecond=0).timestamp()
    if end <= start:
        end = start + 3600.0
    name = f"{datetime.fromtimestamp(start, tz):%H}:00"
    return Window(kind=HOUR, name=name, start=start, end=end)


class ShiftCalendar:
    """Shift instances of one line. Pure: every answer depends only on the arguments."""

    def __init__(
        self, timezone: str, shifts: Sequence[Shift], calendar: Calendar | None = None
    ) -> None:
        self.tz = ZoneInfo(timezone)
        self.shifts: tuple[Shift, ...] = tuple(shifts) if shifts else (_WHOLE_DAY,)
        cal = calendar or Calendar()
        self._country = cal.country
        self._site_holidays = cal.holidays
        self._worked = cal.worked_holidays
        self._substitutes = tuple((s.date, s.instead_of) for s in cal.substitute_days)
        self._off_by_year: dict[int, frozenset[date]] = {}
        self._extra = {x.date: x.like for x in cal.extra_days}
        self.maintenance: list[Interval] = normalize(
            (m.start.replace(tzinfo=self.tz).timestamp(), m.end.replace(tzinfo=self.tz).timestamp())
            for m in cal.maintenance
        )
        self._day_cache: dict[date, tuple[Window, ...]] = {}

    def _held(self, shift: Shift, day: date) -> bool:
        """Whether ``shift`` starts on local date ``day``."""
        if day in self.days_off(day.year):
            return False
        if day in self._extra:
            like = self._extra[day]
            return like is None or like in shift.days
        return day.weekday() in shift.days

    def days_off(self, year: int) -> frozenset[date]:
        """The local dates of ``year`` on which no shift starts (:mod:`edge_agent.calendars`)."""
        off = self._off_by_year.get(year)
        if off is None:
            off = days_off(
                self._country, self._site_holidays, self._worked, self._substitutes, year
            )
            self._off_by_year[year] = off
        return off

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
        found = [
            w
            for s in self.shifts
            if self._held(s, day) and (w := self._instance(s, day)) is not None
        ]
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
        """The window minus its breaks and maintenance, as normalised UTC intervals. Off-shift
        windows have none."""
        if window.kind == OFF_SHIFT:
            return []
        return self.plan(window.start, window.end).planned

    def plan(self, start: float, end: float) -> Plan:
        """Planned intervals of ``[start, end)`` and its planned stops by cause: outside every
        held shift ``off_shift``; inside one, ``break``, then ``maintenance`` (a maintenance
        window over a break counts once, as the break)."""
        span = [(start, end)] if end > start else []
        shift_iv: list[Interval] = []
        break_iv: list[Interval] = []
        first, last = self.local_date(start), self.local_date(end)
        day = first - _ONE_DAY
        while day <= last:
            for shift in self.shifts:
                if not self._held(shift, day):
                    continue
                inst = self._instance(shift, day)
                if inst is None or inst.end <= start or inst.start >= end:
                    continue
                shift_iv.append((inst.start, inst.end))
                break_iv.extend(self._breaks(shift, day))
            day += _ONE_DAY
        shifts = clip(normalize(shift_iv), start, end)
        breaks = intersect(normalize(break_iv), shifts)
        maint = subtract(intersect(self.maintenance, shifts), breaks)
        planned = subtract(shifts, union(breaks, maint))
        return Plan(
            planned=planned,
            stops={
                CAUSE_OFF_SHIFT: subtract(span, shifts),
                CAUSE_BREAK: breaks,
                CAUSE_MAINTENANCE: maint,
            },
        )

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
