"""The samples CSV that ``edge-agent replay`` reads and ``edge-agent history export`` writes.

Format (**contract**, DESIGN §5): a header ``timestamp,tag,value``, then one sample per row.

- ``timestamp``: ISO 8601 with a UTC offset (``2024-05-02T06:00:00.250+09:00``, ``...Z``).
- ``tag``: ``SOURCE.TAG``; split at the *first* dot into the source and the tag name.
- ``value``: a number (``12``, ``-3.5``, ``1e3``, ``nan``, ``inf``), ``true`` or ``false``
  (any case), or empty for a bad-quality sample (the PLC reported the value as bad, or its source
  was down).

Rows are in time order (equal timestamps keep their order); a row earlier than the one before it
is an error, like any row that does not parse. :class:`SampleReader` streams: it holds one row
at a time, whatever the file's size.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from edge_agent.model import Quality, Sample, Value

HEADER = ("timestamp", "tag", "value")

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


@dataclass(frozen=True, slots=True)
class CsvProblem:
    """A row that cannot be replayed: its physical line number in the file (1-based) and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def format_time(t: float) -> str:
    """POSIX seconds as ISO 8601 in UTC with microseconds (what :func:`parse_time` reads back)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def format_value(value: Value, quality: Quality) -> str | None:
    """The ``value`` cell of a sample; ``None`` for a value the format cannot carry (text)."""
    if quality is not Quality.GOOD or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float: nan, inf, 1e+20
    return None


def parse_time(text: str) -> float:
    """ISO 8601 with an offset to POSIX seconds; ``ValueError`` with a readable message."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not ISO 8601") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset (add +09:00, Z, ...)")
    return dt.timestamp()


def parse_value(text: str) -> tuple[Value, Quality]:
    """The ``value`` cell: ``(value, GOOD)``, or ``(None, BAD)`` when empty."""
    if text == "":
        return None, Quality.BAD
    low = text.lower()
    if low == "true":
        return True, Quality.GOOD
    if low == "false":
        return False, Quality.GOOD
    if _INT.fullmatch(text):
        return int(text), Quality.GOOD
    if _FLOAT.fullmatch(text):
        return float(text), Quality.GOOD
    special = _SPECIAL.get(low)
    if special is not None:
        return special, Quality.GOOD
    raise ValueError(f"value {text!r} is not a number, true, false or empty")


def split_tag(text: str) -> tuple[str, str]:
    """``SOURCE.TAG`` split at the first dot; ``ValueError`` unless both parts are non-empty."""
    source, dot, tag = text.partition(".")
    if not dot or not source or not tag:
        raise ValueError(f"tag {text!r} is not SOURCE.TAG")
    return source, tag


class SampleReader:
    """Iterates over the samples of a CSV stream, in file order.

    A bad row is recorded in :attr:`problems` and skipped; iteration goes on so that every bad
    row is found in one pass. :attr:`rows` counts the data rows read.
    """

    def __init__(self, stream: TextIO) -> None:
        self._reader = csv.reader(stream)
        self.problems: list[CsvProblem] = []
        self.rows = 0

    def __iter__(self) -> Iterator[Sample]:
        reader = self._reader
        try:
            header = next(reader, None)
        except csv.Error as exc:
            self.problems.append(CsvProblem(reader.line_num, str(exc)))
            return
        if header is None:
            self.problems.append(
                CsvProblem(1, "empty file: expected the header timestamp,tag,value")
            )
            return
        if header and header[0].startswith("\ufeff"):  # a byte order mark from a spreadsheet
            header[0] = header[0][1:]
        if tuple(h.strip() for h in header) != HEADER:
            self.problems.append(
                CsvProblem(
                    reader.line_num, f"header must be timestamp,tag,value, got {','.join(header)!r}"
                )
            )
            return
        previous_t: float | None = None
        previous_line = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.problems.append(CsvProblem(reader.line_num, str(exc)))
                continue
            line = reader.line_num
            if not row:  # a blank line
                continue
            self.rows += 1
            if len(row) != 3:
                self.problems.append(
                    CsvProblem(line, f"expected 3 fields (timestamp,tag,value), got {len(row)}")
                )
                continue
            try:
                t = parse_time(row[0].strip())
                source, tag = split_tag(row[1].strip())
                value, quality = parse_value(row[2].strip())
            except ValueError as exc:
                self.problems.append(CsvProblem(line, str(exc)))
                continue
            if previous_t is not None and t < previous_t:
                self.problems.append(
                    CsvProblem(
                        line,
                        f"timestamp {row[0].strip()} is earlier than line {previous_line}'s: "
                        "rows must be in time order",
                    )
                )
                continue
            previous_t, previous_line = t, line
            yield Sample(source, tag, value, quality, None, t)


class SampleWriter:
    """Writes the header, then one row per :meth:`write`."""

    def __init__(self, out: TextIO) -> None:
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(HEADER)
        self.rows = 0

    def write(self, t: float, key: str, cell: str) -> None:
        """One sample: time, ``SOURCE.TAG``, and a cell from :func:`format_value`."""
        self._writer.writerow((format_time(t), key, cell))
        self.rows += 1
