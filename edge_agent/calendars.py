"""Public holidays of a country, from the maintained ``holidays`` package, with a site's
overrides (docs/kpi.md, "Calendar"). Pure: no clock, no I/O.

The package is imported only when a line names a ``calendar.country``: importing it and building
the KR calendar of a year costs ~0.15 s and ~12 MiB RSS (measured here), and an agent without
country calendars never loads it.

A line's days off in a year are: the country's public holidays, minus ``worked_holidays`` and
the holidays that a ``substitute_days`` entry gives another day for, plus the site's own
``holidays`` and the substitute days.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

COUNTRY_PATTERN = "^[A-Z]{2}$"
_COUNTRY = re.compile(COUNTRY_PATTERN)

# How a resolved day came about (the `calendar` command shows it).
PUBLIC = "public"
SITE = "site"
SUBSTITUTE = "substitute"
WORKED = "worked"


def _package() -> Any:
    import holidays  # noqa: PLC0415 (lazy: only lines with a country calendar need it)

    return holidays


def package_version() -> str:
    """The installed ``holidays`` release, cited with the resolved days."""
    return str(_package().__version__)


def country_problem(code: str) -> str | None:
    """Why ``code`` is not a country the ``holidays`` package has a calendar for, or ``None``."""
    if not _COUNTRY.match(code):
        return "must be a two-letter ISO 3166-1 country code in capitals, e.g. KR"
    package = _package()
    if code not in package.list_supported_countries():
        return f"must be a country the holidays package {package.__version__} has a calendar for"
    return None


def public_holidays(country: str, year: int) -> dict[date, str]:
    """The public holidays of ``country`` in ``year``, by date, with their names (English)."""
    package = _package()
    found = package.country_holidays(country, years=year)
    if "en_US" in found.supported_languages and found.default_language != "en_US":
        found = package.country_holidays(country, years=year, language="en_US")
    return {day: str(name) for day, name in sorted(found.items())}


@dataclass(frozen=True, slots=True)
class Day:
    """One resolved day of a line's calendar: ``off`` (no shift starts) or a worked holiday."""

    date: date
    kind: str  # PUBLIC, SITE, SUBSTITUTE (days off) or WORKED (a public holiday worked)
    name: str

    @property
    def off(self) -> bool:
        return self.kind != WORKED


def resolve(
    country: str | None,
    site_holidays: Iterable[date],
    worked: Iterable[date],
    substitutes: Iterable[tuple[date, date]],
    year: int,
) -> list[Day]:
    """The line's special days of ``year``, sorted: days off and worked public holidays.
    ``substitutes``: ``(day off, the public holiday it replaces)``."""
    public = public_holidays(country, year) if country else {}
    worked_set = set(worked)
    subs = list(substitutes)
    replaced = {holiday for _, holiday in subs}
    days: dict[date, Day] = {}
    for day, name in public.items():
        if day in worked_set or day in replaced:
            why = "worked_holidays" if day in worked_set else "substitute_days"
            days[day] = Day(day, WORKED, f"{name} (worked: {why})")
        else:
            days[day] = Day(day, PUBLIC, name)
    for day in site_holidays:
        if day.year == year:
            days[day] = Day(day, SITE, "site holiday")
    for day, holiday in subs:
        if day.year == year:
            days[day] = Day(day, SUBSTITUTE, f"instead of {holiday.isoformat()}")
    return [days[d] for d in sorted(days)]


def days_off(
    country: str | None,
    site_holidays: Iterable[date],
    worked: Iterable[date],
    substitutes: Iterable[tuple[date, date]],
    year: int,
) -> frozenset[date]:
    """The dates of ``year`` on which no shift starts."""
    return frozenset(
        d.date for d in resolve(country, site_holidays, worked, substitutes, year) if d.off
    )
