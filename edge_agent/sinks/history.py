"""The sample history: raw samples in ``history.sqlite``, for replay and audit (DESIGN §1, §5).

What is recorded. Every tag of every source, *on change*: a sample is written when its value or
its quality differs from the last one written for that tag (``True`` and ``1`` differ; NaN equals
NaN). Every ``keyframe_interval`` each tag's current value is written again (``keyframe = 1``),
so that an export starting at any moment knows every value, and retention can delete old rows
without losing the value of a tag that has not changed for weeks. When a source goes down, each
of its tags gets a bad-quality row: a replay then sees the outage as unknown time, as the live
engine did. Likewise for the agent itself: when the history is opened again after the agent
stopped or crashed, every known tag first gets a bad-quality row at the time of the last row
recorded, so that the time the agent was not observing replays as unknown, as the engine counts
it after a restart.

Times are the agent's (``Sample.agent_time``), the clock the engine uses; ``source_time`` is kept
for audit. Rows are appended in time order (the engine runner hands samples over in
non-decreasing time), so ``ORDER BY t, id`` is the order in which the engine saw them.

Cost. Samples are buffered in memory and written a second after the first of them in one
transaction (WAL, ``synchronous=NORMAL``: a power loss may cost the last second, which a
best-effort record can afford). While no value changes nothing is buffered and the history does
not wake at all, except when a keyframe or a retention batch is due. Retention deletes rows
older than ``retention`` in batches of :data:`RETENTION_BATCH_ROWS`, one batch per flush, so no
write holds the event loop for long.

Best effort. The outbox is what must not lose data; the history must not stop the agent. Any
SQLite failure (disk full, read-only file system, corrupt file) is logged once, the buffered
samples are dropped and counted, and the next flush tries again; after a recovery every tag's
current value is written at once (a keyframe), so the record is consistent again from there.
A damaged file is moved aside (``history.sqlite.corrupt-YYYYMMDDTHHMMSSZ``, still exportable as
far as it is readable) and one deleted while open is noticed at the next flush; either way
recording goes on in a new file, every tag's value first. On a full disk the WAL is given back,
so that the outbox, which matters more, gets the room, and recording resumes only once
:data:`RESUME_FREE_BYTES` are free again.

Thread-safety: used from the event loop thread only, like the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge_agent.config.schema import HistoryConfig
from edge_agent.errors import StorageError
from edge_agent.model import Quality, Sample, Value
from edge_agent.samplecsv import SampleWriter, format_value
from edge_agent.sinks.sqlite import (
    DESCRIBED,
    file_identity,
    give_back_wal,
    move_aside,
    storage_reason,
    transaction,
)

log = logging.getLogger(__name__)

FILE_NAME = "history.sqlite"
RETENTION_BATCH_ROWS = 5_000
# Retention runs this often (agent time) once it has caught up.
RETENTION_CHECK_S = 600.0
# After a full disk, samples are recorded again only once this much is free: room freed by an
# operator goes to the outbox (the reports) first, not to the next second of samples.
RESUME_FREE_BYTES = 1 << 20
# With nothing buffered, :meth:`History.run` sleeps until the next keyframe or retention batch,
# but checks at least this often (the agent's clock may run faster than the loop's in tests).
IDLE_CHECK_S = 30.0
# A flush is forced when this many rows wait (normally the once-a-second flush comes first).
MAX_BUFFERED_ROWS = 20_000

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    tag TEXT NOT NULL,
    UNIQUE (source, tag)
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    tag_id INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    value,
    quality INTEGER NOT NULL,
    source_time REAL,
    keyframe INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS samples_t ON samples (t);
CREATE INDEX IF NOT EXISTS samples_tag_t ON samples (tag_id, t);
"""

# ``kind`` keeps the Python type: SQLite stores a bool as an integer, and the engine reads
# ``True`` and ``1`` differently for a counter.
_NONE, _BOOL, _INT, _FLOAT, _STR = range(5)
_QUALITY_CODE = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
_QUALITY = {code: q for q, code in _QUALITY_CODE.items()}

# A buffered row: t, (source, tag), kind, value, quality code, source_time, keyframe.
_Row = tuple[float, tuple[str, str], int, Value, int, float | None, int]


def _kind(value: Value) -> int:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return _FLOAT
    return _STR


def _decode(kind: int, value: object) -> Value:
    if kind == _NONE or value is None:
        return None
    if kind == _BOOL:
        return bool(value)
    if kind == _INT and isinstance(value, int | float | str):
        return int(value)  # text: an integer beyond SQLite's 64 bits (see _stored)
    if kind == _FLOAT and isinstance(value, int | float):
        return float(value)
    return str(value)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _stored(kind: int, value: Value) -> Value:
    """``value`` as SQLite can hold it: an integer beyond 64 bits (a ``uint64`` tag with its top
    bit set) is kept exactly as text, which :func:`_decode` reads back as the integer."""
    if kind == _INT and not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
        return str(value)
    return value


def _same(a: tuple[int, Value, Quality], b: tuple[int, Value, Quality]) -> bool:
    if a == b:
        return True
    if a[2] is b[2] is Quality.BAD:
        return True  # a bad value means nothing: bad stays bad whatever the PLC sends with it
    # NaN != NaN, yet a NaN that stays NaN has not changed.
    return (
        a[0] == b[0] == _FLOAT
        and a[2] is b[2]
        and isinstance(a[1], float)
        and isinstance(b[1], float)
        and math.isnan(a[1])
        and math.isnan(b[1])
    )


class History:
    """Records samples on change plus periodic keyframes; see the module docstring.

    ``record`` and ``source_down`` only buffer (hot path, no I/O); :meth:`flush` writes, and
    :meth:`run` flushes ``flush_interval_s`` after the first row buffered. ``clock`` gives the
    agent's time (the same clock as the samples') for keyframes and retention.
    """

    def __init__(
        self,
        path: str | Path,
        cfg: HistoryConfig,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval_s: float = 1.0,
        on_recovered: Callable[[str], None] = lambda reason: None,
    ) -> None:
        """``on_recovered(reason)``: the file was found ``corrupt`` (moved aside) or ``deleted``
        while open, and recording goes on in a new file (logged here)."""
        self.path = Path(path)
        self._on_recovered = on_recovered
        self._ident: tuple[int, int] | None = None
        self.cfg = cfg
        self._clock = clock
        self.flush_interval_s = flush_interval_s
        self._db: sqlite3.Connection | None = None
        self._tag_ids: dict[tuple[str, str], int] = {}
        # Last value written (or buffered) per tag: (kind, value, quality), and its source time.
        self._last: dict[tuple[str, str], tuple[int, Value, Quality]] = {}
        self._rows: list[_Row] = []
        self._last_t = -math.inf
        self._next_keyframe: float | None = None
        self._next_retention = -math.inf
        self._keyframe_now = False
        self._failing = False
        self._disk_full = False  # the last failure was a full disk: wait for room to spare
        self._closed = False
        self._mark_restart = True  # first write of this run: mark the time the agent was away
        self.rows_written = 0
        self.rows_dropped = 0
        self._buffered = asyncio.Event()  # set when a row is buffered: run() flushes soon

    # ------------------------------------------------------------------------------ buffering

    def record(self, samples: Iterable[Sample]) -> None:
        """Buffer the samples that changed. Samples must come in non-decreasing ``agent_time``."""
        last = self._last
        rows = self._rows
        for s in samples:
            key = (s.source, s.tag)
            value = s.value
            previous = last.get(key)
            # Fast path for the common case, an unchanged value: equal, of the same type (so of
            # the same kind) and the same quality.
            if (
                previous is not None
                and previous[2] is s.quality
                and previous[1] == value
                and type(previous[1]) is type(value)
            ):
                continue
            kind = _kind(value)
            current = (kind, value, s.quality)
            if previous is not None and _same(previous, current):
                continue
            last[key] = current
            rows.append(
                (
                    s.agent_time,
                    key,
                    kind,
                    _stored(kind, value),
                    _QUALITY_CODE[s.quality],
                    s.source_time,
                    0,
                )
            )
            self._last_t = max(self._last_t, s.agent_time)
        if rows:
            self._buffered.set()
            if len(rows) >= MAX_BUFFERED_ROWS:
                self.flush()

    def source_down(self, source: str, now: float) -> None:
        """``source`` went down: each of its known tags gets a bad-quality row at ``now``."""
        t = max(now, self._last_t)
        for key, last in list(self._last.items()):
            if key[0] == source and last[2] is not Quality.BAD:
                self._last[key] = (_NONE, None, Quality.BAD)
                self._rows.append((t, key, _NONE, None, _QUALITY_CODE[Quality.BAD], None, 0))
                self._last_t = t
                self._buffered.set()

    # -------------------------------------------------------------------------------- writing

    def flush(self, *, keyframe: bool = True) -> int:
        """Write what is buffered, a keyframe if one is due (unless ``keyframe`` is false), and
        one retention batch if due, in one transaction. Returns the number of rows written (0
        on failure: logged once, and after :meth:`close`)."""
        if self._closed:
            return 0
        self._check_file()
        now = self._clock()
        keyframe = keyframe and (
            self._keyframe_now or (self._next_keyframe is not None and now >= self._next_keyframe)
        )
        if self._next_keyframe is None and self._last:
            self._next_keyframe = now + self.cfg.keyframe_interval_s
        retention = now >= self._next_retention
        if not self._rows and not keyframe and not retention:
            return 0
        rows = self._rows
        self._rows = []
        if self._disk_full and not self._room_to_spare():
            # The outbox gets the room freed on a full disk first: the reports matter more.
            self.rows_dropped += len(rows)
            return 0
        if keyframe:
            t = max(now, self._last_t)
            self._last_t = t
            rows.extend(
                (t, key, kind, _stored(kind, value), _QUALITY_CODE[quality], None, 1)
                for key, (kind, value, quality) in self._last.items()
            )
        try:
            db = self._open()
            deleted = self._write(db, rows, now - self.cfg.retention_s if retention else None)
        except (sqlite3.Error, StorageError, OSError) as exc:
            self.rows_dropped += len(rows)
            reason = storage_reason(exc)
            if reason == "corrupt" and self._move_damaged(exc):
                return 0
            self._disk_full = reason == "disk_full"
            if self._disk_full and self._db is not None:
                # Leave the room to the outbox: the reports matter more than the samples.
                give_back_wal(self._db, self.path)
            if not self._failing:
                log.error(
                    "storage: %s writing the history at %s: %s; samples are not recorded until"
                    " it can be written (KPIs and reports are not affected)",
                    DESCRIBED[storage_reason(exc)],
                    self.path,
                    exc,
                )
                self._failing = True
            self._keyframe_now = True  # once writable again, re-establish every tag's value
            return 0
        self._disk_full = False
        if self._failing:
            log.warning(
                "storage: history at %s recovered: writable again; %d sample row(s) were not"
                " recorded",
                self.path,
                self.rows_dropped,
            )
            self._failing = False
        if keyframe:
            self._keyframe_now = False
            self._next_keyframe = now + self.cfg.keyframe_interval_s
        if retention:
            # A full batch means more old rows wait: delete the next batch at the next flush.
            self._next_retention = (
                now if deleted >= RETENTION_BATCH_ROWS else now + RETENTION_CHECK_S
            )
        self.rows_written += len(rows)
        return len(rows)

    def _room_to_spare(self) -> bool:
        """Whether the history's file system has :data:`RESUME_FREE_BYTES` free, so that
        writing samples again leaves room for the outbox."""
        try:
            return shutil.disk_usage(self.path.parent).free >= RESUME_FREE_BYTES
        except OSError:
            return True  # the write itself will say what is wrong

    def _write(self, db: sqlite3.Connection, rows: Sequence[_Row], cutoff: float | None) -> int:
        deleted = 0
        with transaction(db):
            if self._mark_restart:
                db.execute(
                    "INSERT INTO samples (t, tag_id, kind, value, quality, keyframe) "
                    "SELECT (SELECT MAX(t) FROM samples), id, ?, NULL, ?, 0 FROM tags "
                    "WHERE EXISTS (SELECT 1 FROM samples) ORDER BY id",
                    (_NONE, _QUALITY_CODE[Quality.BAD]),
                )
            ids = self._tag_ids
            for key in dict.fromkeys(r[1] for r in rows if r[1] not in ids):
                db.execute("INSERT OR IGNORE INTO tags (source, tag) VALUES (?, ?)", key)
                (ids[key],) = db.execute(
                    "SELECT id FROM tags WHERE source = ? AND tag = ?", key
                ).fetchone()
            db.executemany(
                "INSERT INTO samples (t, tag_id, kind, value, quality, source_time, keyframe) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((t, ids[key], kind, value, q, st, kf) for t, key, kind, value, q, st, kf in rows),
            )
            if cutoff is not None:
                deleted = db.execute(
                    "DELETE FROM samples WHERE id IN "
                    "(SELECT id FROM samples WHERE t < ? ORDER BY t LIMIT ?)",
                    (cutoff, RETENTION_BATCH_ROWS),
                ).rowcount
        self._mark_restart = False
        return deleted

    def _check_file(self) -> None:
        """The file deleted while open (the state directory removed by hand): record into a
        new one from the next flush on, with every tag's value first. One ``stat`` a flush."""
        if self._db is None or self._ident is None:
            return
        try:
            if file_identity(self.path) == self._ident:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        self._close_db()
        self._keyframe_now = True
        log.error(
            "storage: history at %s was deleted while the agent ran; recording into a new file"
            " (the samples before are gone)",
            self.path,
        )
        self._on_recovered("deleted")

    def _move_damaged(self, exc: BaseException) -> bool:
        """The file is damaged: move it aside and record into a fresh one (the next flush).
        The moved file keeps what is readable for ``history export``. True when moved."""
        self._close_db()
        try:
            moved = move_aside(self.path)
        except StorageError as err:
            log.debug("history %s: %s", self.path, err)
            return False
        self._keyframe_now = True
        self._mark_restart = False
        self._failing = False
        log.error(
            "storage: history at %s was damaged (%s); moved aside to %s, recording into a"
            " fresh file",
            self.path,
            exc,
            moved.name,
        )
        self._on_recovered("corrupt")
        return True

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        try:
            self._ident = file_identity(self.path)
        except OSError:
            db.close()
            raise
        self._db = db
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"cannot use WAL journal (got {mode!r})")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=2000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise StorageError(f"schema version {version} is newer than this agent's")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._tag_ids = {
            (source, tag): tag_id
            for tag_id, source, tag in db.execute("SELECT id, source, tag FROM tags")
        }

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):  # a broken connection: nothing more to do
                self._db.close()
            self._db = None

    async def run(self) -> None:
        """Flush ``flush_interval_s`` after the first row buffered since the last flush (rows
        buffered meanwhile go in the same transaction); with nothing buffered, wake only for a
        due keyframe or retention batch. Until cancelled (then :meth:`close` writes the rest)."""
        while True:
            if not self._rows:
                self._buffered.clear()
                wait_s = min(IDLE_CHECK_S, max(self.flush_interval_s, self._due_in_s()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._buffered.wait()
            if self._rows:
                await asyncio.sleep(self.flush_interval_s)
            self.flush()

    def _due_in_s(self) -> float:
        """Seconds (of the agent's clock) until a keyframe or a retention batch is due."""
        if self._keyframe_now:
            return 0.0
        due = self._next_retention
        if self._next_keyframe is not None:
            due = min(due, self._next_keyframe)
        elif self._last:
            return 0.0  # the first flush with values sets the keyframe schedule
        return due - self._clock()

    def close(self) -> None:
        """Write what is buffered and close the file. Idempotent; later calls record nothing.

        No keyframe now: the engine's last report came before this, and a replay must not run
        past it on rows that only repeat values."""
        if self._closed:
            return
        self.flush(keyframe=False)
        self._closed = True
        self._close_db()


# ---------------------------------------------------------------------------------- export


@dataclass(frozen=True, slots=True)
class ExportResult:
    rows: int
    skipped_text: int  # samples of text values, which the CSV format cannot carry
    unknown_tags: tuple[str, ...]  # --tag names never recorded


def export_csv(
    path: str | Path,
    out: TextIO,
    *,
    start: float | None = None,
    end: float | None = None,
    tags: Sequence[str] = (),
) -> ExportResult:
    """Write the samples recorded in ``[start, end)`` as the replay CSV (see
    :mod:`edge_agent.samplecsv`).

    With ``start``, the export begins with the last value of every tag recorded before ``start``,
    stamped ``start``: a replay of the export knows every value from its first row. ``tags``
    (``SOURCE.TAG`` names) limits the export to those tags. Raises :class:`StorageError` when
    the history cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"history {path}: no such file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"history {path}: {exc}") from exc
    try:
        return _export(db, out, start=start, end=end, tags=tags)
    except sqlite3.Error as exc:
        raise StorageError(f"history {path}: {exc}") from exc
    finally:
        db.close()


def _export(
    db: sqlite3.Connection,
    out: TextIO,
    *,
    start: float | None,
    end: float | None,
    tags: Sequence[str],
) -> ExportResult:
    names = {
        tag_id: f"{source}.{tag}"
        for tag_id, source, tag in db.execute(
            "SELECT id, source, tag FROM tags ORDER BY source, tag"
        )
    }
    unknown: tuple[str, ...] = ()
    if tags:
        wanted = set(tags)
        unknown = tuple(t for t in tags if t not in names.values())
        names = {tag_id: name for tag_id, name in names.items() if name in wanted}
    writer = SampleWriter(out)
    skipped = 0

    def emit(t: float, tag_id: int, kind: int, value: object, quality: int) -> None:
        nonlocal skipped
        cell = format_value(_decode(kind, value), _QUALITY.get(quality, Quality.BAD))
        if cell is None:
            skipped += 1
        else:
            writer.write(t, names[tag_id], cell)

    if start is not None:
        for tag_id in names:
            row = db.execute(
                "SELECT kind, value, quality FROM samples WHERE tag_id = ? AND t < ? "
                "ORDER BY t DESC, id DESC LIMIT 1",
                (tag_id, start),
            ).fetchone()
            if row is not None:
                emit(start, tag_id, *row)
    for t, tag_id, kind, value, quality in _rows(db, start, end, list(names) if tags else None):
        emit(t, tag_id, kind, value, quality)
    return ExportResult(rows=writer.rows, skipped_text=skipped, unknown_tags=unknown)


def _rows(
    db: sqlite3.Connection, start: float | None, end: float | None, tag_ids: list[int] | None
) -> Iterator[tuple[float, int, int, object, int]]:
    where = ["1"]
    args: list[object] = []
    if start is not None:
        where.append("t >= ?")
        args.append(start)
    if end is not None:
        where.append("t < ?")
        args.append(end)
    if tag_ids is not None:
        if not tag_ids:
            return
        where.append(f"tag_id IN ({','.join('?' * len(tag_ids))})")
        args.extend(tag_ids)
    yield from db.execute(
        "SELECT t, tag_id, kind, value, quality FROM samples WHERE "
        + " AND ".join(where)
        + " ORDER BY t, id",
        args,
    )
