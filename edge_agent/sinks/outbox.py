"""The durable outbox: reports wait here, on disk, until the broker acknowledged them.

One SQLite file in the state directory holds three tables:

- ``messages``: the reports, oldest first (``id`` is AUTOINCREMENT, so ids are never reused and
  their order is the order of :meth:`Outbox.append`);
- ``line_seq``: the last ``seq`` given out per line. It is a table of its own, not ``MAX(seq)`` over
  ``messages``, because acknowledged rows are deleted and a line's numbering must never go back;
- ``state``: key/value blobs of the engine (counter baselines, open windows), written in the same
  transaction as the reports they produced, so a restart never counts a part twice or loses one.

Durability: WAL journal with ``synchronous=FULL``. With WAL, ``NORMAL`` survives a crash of the
agent but may lose the last commits on power loss, and an industrial PC does lose power. A report
(and the state that advanced with it) must survive that, so every append syncs the WAL: one
fsync per batch of reports (one append per publish interval at most, with nothing new).

Deleting acknowledged messages is not synced (``synchronous=NORMAL`` for that transaction only):
a delete lost to a power cut only means those messages are published again after the restart,
which the contract allows (at least once; subscribers de-duplicate by ``(line, seq)``). The
next append's sync makes it durable with everything before it, since the WAL is written in
order. So a published batch costs one fsync, not two.

Bounds (``storage.outbox``, :class:`OutboxConfig`): a broker outage must not fill the disk.
Above the soft limits (``max_messages`` / ``max_bytes``) the oldest live ``kpi`` snapshots are
deleted, keeping the newest one per line: each snapshot is superseded by the next one anyway,
and the ``kpi/shift``, ``kpi/hour`` and ``state`` messages are the ones a subscriber cannot
rebuild. Only above the hard
limits (``hard_max_messages`` / ``hard_max_bytes``) are the oldest messages of any topic deleted.
Every deleted message is counted by topic (:attr:`Outbox.dropped`) and leaves a gap in its line's
``seq``: a subscriber can tell it was dropped, never silently lost. Thinning and hard drops are
logged once when they start, and once when the outbox is back under its soft limits.

Storage trouble. A failed write (a full disk, a read-only file system) is logged once, as what it
is, for every caller (the engine's appends and the sink's deletes), and its recovery once; on a
full disk the WAL is given back to the file system and kept small from then on. A file found
damaged at open is moved aside (``outbox.sqlite.corrupt-YYYYMMDDTHHMMSSZ``) and what SQLite can
still read is salvaged into a fresh one (:attr:`Outbox.recovered`); a file deleted while open
is recreated with what it held (:meth:`Outbox.check_file`).

Thread-safety: an :class:`Outbox` is used from the event loop thread only (the engine appends, the
MQTT sink peeks and acks, both on the loop). SQLite's own same-thread check enforces it. The calls
are synchronous; each is one short transaction (an append of 1,000 messages takes milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.config.schema import OutboxConfig
from edge_agent.errors import StorageError
from edge_agent.model import OutMessage
from edge_agent.sinks.sqlite import (
    DESCRIBED,
    file_identity,
    give_back_wal,
    move_aside,
    storage_reason,
    transaction,
)

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL,
    topic_suffix TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS line_seq (
    line TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


LIVE_TOPIC = "kpi"  # the live snapshot: thinned first when the outbox is full
_LOW_WATER = 0.9  # thinning goes 10 % below a soft limit, so it does not run on every append
_DELETE_CHUNK = 500  # ids per DELETE statement (SQLite's variable limit is far above)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Dropping:
    """What the limit policy is doing now, for once-per-change logging."""

    thinning: bool = False
    hard: bool = False
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message in the outbox: its row ``id`` (for :meth:`Outbox.ack`), where it goes, and its
    payload as the exact bytes to publish (UTF-8 JSON with ``seq`` in it)."""

    id: int
    line: str
    topic_suffix: str
    payload: bytes
    qos: int
    retain: bool
    seq: int
    created: float


class Outbox:
    """A durable FIFO of MQTT messages, with per-line sequence numbers and the engine's state.

    Every sqlite failure (disk full, read-only file system, corrupt file, closed outbox) is raised
    as :class:`StorageError` naming the file. ``clock`` gives POSIX seconds for ``created`` and to
    seed a new line's ``seq`` counter (see :meth:`append`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        limits: OutboxConfig | None = None,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self.limits = limits or OutboxConfig()
        self._db: sqlite3.Connection | None = None
        self._count = 0
        self._bytes = 0
        self._policy = _Dropping()
        self._failing_since: float | None = None  # monotonic; while writes fail
        self.write_failures = 0  # times writing started to fail
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"outbox {self.path}: cannot create its directory: {exc}") from exc
        # Set when the file was found damaged at open: moved aside, salvaged, started afresh.
        self.recovered: Recovered | None = None
        try:
            db = self._open()
        except StorageError as exc:
            if exc.reason != "corrupt":
                raise
            db = self._recover(exc)
        self._ident = file_identity(self.path)
        self.recreated = 0  # times the file was found deleted while open, and recreated
        self._db = db
        log.debug("outbox %s open, %d message(s) waiting", self.path, self.depth())
        if self._count:
            # Limits may have been lowered since the last run.
            self._enforce_limits_now()

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the file and its schema; count what waits in it."""
        try:
            # isolation_level=None: no implicit transactions; every write below is a transaction().
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: {exc}", reason=storage_reason(exc)) from exc
        try:
            self._prepare(db)
        except sqlite3.Error as exc:
            db.close()
            raise StorageError(f"outbox {self.path}: {exc}", reason=storage_reason(exc)) from exc
        except StorageError:
            db.close()
            raise
        return db

    def _recover(self, damage: StorageError) -> sqlite3.Connection:
        """The file is damaged (truncated, overwritten, not a database): move it aside (with
        its WAL), salvage what SQLite can still read, and start a fresh file holding it.

        Salvage is plain SELECTs with ``writable_schema`` on, which makes SQLite ignore a
        damaged schema entry instead of refusing the whole file; rows are read in id order,
        stepping over unreadable pages. (The sqlite3 shell's ``.recover`` is not available from
        Python's sqlite3 module: it needs the ``sqlite_dbpage`` table, which Python's SQLite
        build does not have.) Every salvaged message keeps its payload and ``seq``; the line
        counters keep going up from the highest seq seen, so numbering never goes back."""
        moved = move_aside(self.path)
        salvaged = _salvage(moved)
        db = self._open()
        try:
            with transaction(db):
                db.executemany(
                    "INSERT INTO messages (line, topic_suffix, payload, qos, retain, seq, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    salvaged.messages,
                )
                db.executemany(
                    "INSERT INTO line_seq (line, last_seq) VALUES (?, ?)"
                    " ON CONFLICT(line) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                    list(salvaged.line_seq.items()),
                )
                db.executemany(
                    "INSERT INTO state (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    list(salvaged.state.items()),
                )
        except sqlite3.Error as exc:
            db.close()
            raise StorageError(
                f"outbox {self.path}: cannot write the salvaged rows: {exc}",
                reason=storage_reason(exc),
            ) from exc
        self._count = len(salvaged.messages)
        self._bytes = sum(len(m[2]) for m in salvaged.messages)
        self.recovered = Recovered(
            moved_to=moved,
            damage=str(damage.__cause__ or damage),
            messages=len(salvaged.messages),
            state_keys=len(salvaged.state),
            complete=salvaged.complete,
        )
        log.error(
            "storage: outbox at %s was damaged (%s); moved aside to %s and started a fresh file"
            " with what could be read: %d message(s), %d engine state key(s)%s; reports of the"
            " windows open now carry the warning storage_recovered",
            self.path,
            self.recovered.damage,
            moved.name,
            self.recovered.messages,
            self.recovered.state_keys,
            "" if salvaged.complete else " (the rest was unreadable)",
        )
        return db

    def check_file(self) -> bool:
        """Notice a file deleted while open (the state directory removed by hand): the open
        connection still reads the deleted file, so everything in it is copied into a new file
        at :attr:`path`. Logged once per event, counted in :attr:`recreated`. Cheap (one
        ``stat``); call it on an existing periodic tick. True when the file was recreated."""
        if self._db is None:
            return False
        try:
            current = file_identity(self.path)
        except FileNotFoundError:
            current = None
        except OSError:
            return False  # cannot tell (permissions): the writes will say what is wrong
        if current is not None and current == self._ident:
            return False
        old = self._db
        try:
            # With their ids: the sink's pump goes on after the last id it read.
            messages = old.execute(
                "SELECT id, line, topic_suffix, payload, qos, retain, seq, created FROM messages"
                " ORDER BY id"
            ).fetchall()
            line_seq = old.execute("SELECT line, last_seq FROM line_seq").fetchall()
            state = old.execute("SELECT key, value FROM state").fetchall()
            row = old.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
            high = int(row[0]) if row is not None else 0
        except sqlite3.Error as exc:
            log.debug("outbox %s: reading the deleted file failed: %s", self.path, exc)
            messages, line_seq, state, high = [], [], [], 0
        if current is not None:  # something else is at the path now: keep it, aside
            move_aside(self.path, kind="replaced")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._open()
            with transaction(db):
                db.executemany(
                    "INSERT INTO messages"
                    " (id, line, topic_suffix, payload, qos, retain, seq, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    messages,
                )
                # AUTOINCREMENT goes on after the highest id ever given, as before (an explicit
                # id above it moves it up by itself; an empty table does not).
                if not db.execute(
                    "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'messages'", (high,)
                ).rowcount:
                    db.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)", (high,)
                    )
                db.executemany("INSERT INTO line_seq (line, last_seq) VALUES (?, ?)", line_seq)
                db.executemany("INSERT INTO state (key, value) VALUES (?, ?)", state)
        except (OSError, sqlite3.Error, StorageError) as exc:
            log.debug("outbox %s: recreating failed: %s", self.path, exc)
            return False  # retried on the next check
        self._db = db
        self._ident = file_identity(self.path)
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self._count = len(messages)
        self._bytes = sum(len(m[3]) for m in messages)
        self.recreated += 1
        log.error(
            "storage: outbox at %s was %s while the agent ran; recreated it with the %d"
            " message(s) and the engine state it held",
            self.path,
            "deleted" if current is None else "replaced",
            len(messages),
        )
        return True

    def _prepare(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"outbox {self.path}: cannot use WAL journal (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        # Another process (an operator's sqlite3 shell) may hold a lock briefly.
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise StorageError(
                f"outbox {self.path}: schema version {version} is newer than this agent's "
                f"({_SCHEMA_VERSION})"
            )
        with transaction(db):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        # length() of a BLOB reads the record header only, not the payload pages.
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM messages"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"outbox {self.path}: closed")
        return self._db

    def append(
        self, messages: Sequence[OutMessage], *, state: Mapping[str, str] | None = None
    ) -> list[int]:
        """Store ``messages`` and upsert ``state``, all in one transaction; return their seqs.

        Each message gets its line's next ``seq`` (one counter per line across all of that line's
        topics, strictly increasing by 1, never reused even after rows are deleted). A line's
        first counter value is seeded from the clock in milliseconds, so numbering keeps
        increasing even if the state directory is lost and recreated. The payload is stored as
        compact UTF-8 JSON with ``seq`` added. Returns once the transaction is durable; on any
        error nothing is stored. Raises ``ValueError``/``TypeError`` for a payload that is not
        JSON (NaN included), :class:`StorageError` for sqlite failures.

        When the outbox goes over its limits, older messages are deleted in the same transaction
        (see the module docstring); the messages just appended are kept unless they alone exceed
        a hard limit.
        """
        now = self._clock()

        def body(db: sqlite3.Connection) -> tuple[list[int], int, int, dict[str, int]]:
            seqs: list[int] = []
            count, size = self._count, self._bytes
            dropped: dict[str, int] = {}
            next_seq: dict[str, int] = {}
            rows: list[tuple[str, str, bytes, int, int, int, float]] = []
            for msg in messages:
                seq = next_seq.get(msg.line)
                if seq is None:
                    row = db.execute(
                        "SELECT last_seq FROM line_seq WHERE line = ?", (msg.line,)
                    ).fetchone()
                    seq = int(row[0]) + 1 if row is not None else max(1, int(now * 1000))
                next_seq[msg.line] = seq + 1
                payload = json.dumps(
                    {**msg.payload, "seq": seq},
                    separators=(",", ":"),
                    ensure_ascii=False,
                    allow_nan=False,
                ).encode("utf-8")
                rows.append(
                    (msg.line, msg.topic_suffix, payload, msg.qos, int(msg.retain), seq, now)
                )
                seqs.append(seq)
            db.executemany(
                "INSERT INTO messages (line, topic_suffix, payload, qos, retain, seq, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO line_seq (line, last_seq) VALUES (?, ?)"
                " ON CONFLICT(line) DO UPDATE SET last_seq = excluded.last_seq",
                [(line, seq - 1) for line, seq in next_seq.items()],
            )
            if state:
                db.executemany(
                    "INSERT INTO state (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    list(state.items()),
                )
            count += len(rows)
            size += sum(len(r[2]) for r in rows)
            count, size = self._enforce(db, count, size, dropped)
            return seqs, count, size, dropped

        seqs, count, size, dropped = self._transaction("cannot append", body)
        self._count, self._bytes = count, size
        self._note_dropped(dropped)
        return seqs

    # -- write health -----------------------------------------------------------------------------

    def _transaction(
        self, what: str, body: Callable[[sqlite3.Connection], _T], *, sync: bool = True
    ) -> _T:
        """Run ``body`` in one write transaction (rolled back on any error) and return its
        result; with ``sync`` false its commit is not fsync'd (see the module docstring: only
        for deletes of acknowledged messages). On a full disk the WAL is given back to the file
        system first and ``body`` tried once more; see :meth:`_make_room`. Raises
        :class:`StorageError`."""
        db = self._conn()
        for attempt in (1, 2):
            try:
                if sync:
                    with transaction(db):
                        result = body(db)
                else:
                    db.execute("PRAGMA synchronous=NORMAL")
                    try:
                        with transaction(db):
                            result = body(db)
                    finally:
                        db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                if attempt == 1 and storage_reason(exc) == "disk_full" and self._make_room(db):
                    continue
                raise self._write_failed(what, exc) from exc
            self._write_ok()
            return result
        raise AssertionError("unreachable")

    def _make_room(self, db: sqlite3.Connection) -> bool:
        """After a write failed on a full disk: checkpoint and truncate the WAL (its space goes
        back to the file system), and keep it small from now on. With the default checkpoint
        interval the WAL grows to ~4 MiB before it is reused, so on a disk that filled up, a
        little freed space would be eaten by the WAL again at once. True when the WAL was
        truncated."""
        return give_back_wal(db, self.path)

    @property
    def failing(self) -> bool:
        """True from a failed write until the next one succeeds."""
        return self._failing_since is not None

    def _write_failed(self, what: str, exc: sqlite3.Error) -> StorageError:
        """The error for a failed write; the first failure of a run of them is logged, once,
        for every caller (the engine's appends and the sink's deletes)."""
        reason = storage_reason(exc)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self.write_failures += 1
            log.error(
                "storage: %s writing the outbox at %s: %s; new reports are held in memory and"
                " acknowledged ones are not sent again until it can be written (retrying)",
                DESCRIBED[reason],
                self.path,
                exc,
            )
        return StorageError(f"outbox {self.path}: {what}: {exc}", reason=reason)

    def _write_ok(self) -> None:
        if self._failing_since is not None:
            log.warning(
                "storage: outbox at %s recovered: writable again after %.1f s",
                self.path,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    # -- limits -----------------------------------------------------------------------------------

    @staticmethod
    def _over(count: int, size: int, max_count: int, max_size: int) -> bool:
        return bool((max_count and count > max_count) or (max_size and size > max_size))

    def _enforce(
        self, db: sqlite3.Connection, count: int, size: int, dropped: dict[str, int]
    ) -> tuple[int, int]:
        """Apply the limit policy inside the caller's transaction; return the new totals."""
        lim = self.limits
        if self._over(count, size, lim.max_messages, lim.max_bytes):
            target_count = int(lim.max_messages * _LOW_WATER)
            target_size = int(lim.max_bytes * _LOW_WATER)
            # The oldest live snapshots first, never a line's newest one.
            rows = db.execute(
                "SELECT id, length(payload) FROM messages WHERE topic_suffix = ?"
                " AND id NOT IN (SELECT MAX(id) FROM messages WHERE topic_suffix = ? GROUP BY line)"
                " ORDER BY id",
                (LIVE_TOPIC, LIVE_TOPIC),
            )
            victims: list[int] = []
            for row_id, length in rows:
                if not self._over(count, size, target_count, target_size):
                    break
                victims.append(int(row_id))
                count -= 1
                size -= int(length)
            if victims:
                self._delete(db, victims)
                dropped[LIVE_TOPIC] = dropped.get(LIVE_TOPIC, 0) + len(victims)
                if not self._policy.thinning:
                    self._policy.thinning = True
                    log.warning(
                        "outbox %s over its limit (%d messages / %d bytes allowed): dropping the"
                        " oldest live kpi snapshots, keeping each line's newest and every other"
                        " report",
                        self.path,
                        lim.max_messages,
                        lim.max_bytes,
                    )
        if self._over(count, size, lim.hard_max_messages, lim.hard_max_bytes):
            rows = db.execute("SELECT id, topic_suffix, length(payload) FROM messages ORDER BY id")
            victims = []
            for row_id, topic, length in rows:
                if not self._over(count, size, lim.hard_max_messages, lim.hard_max_bytes):
                    break
                victims.append(int(row_id))
                dropped[str(topic)] = dropped.get(str(topic), 0) + 1
                count -= 1
                size -= int(length)
            self._delete(db, victims)
            if victims and not self._policy.hard:
                self._policy.hard = True
                log.error(
                    "outbox %s at its hard limit (%d messages / %d bytes): dropping the oldest"
                    " reports of every topic; is the broker unreachable for that long?",
                    self.path,
                    lim.hard_max_messages,
                    lim.hard_max_bytes,
                )
        return count, size

    @staticmethod
    def _delete(db: sqlite3.Connection, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = ids[start : start + _DELETE_CHUNK]
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)

    def _enforce_limits_now(self) -> None:
        def body(db: sqlite3.Connection) -> tuple[int, int, dict[str, int]]:
            dropped: dict[str, int] = {}
            count, size = self._enforce(db, self._count, self._bytes, dropped)
            return count, size, dropped

        count, size, dropped = self._transaction("cannot apply its limits", body)
        self._count, self._bytes = count, size
        self._note_dropped(dropped)

    def _note_dropped(self, dropped: Mapping[str, int]) -> None:
        totals = self._policy.dropped
        for topic, n in dropped.items():
            totals[topic] = totals.get(topic, 0) + n
        lim = self.limits
        policy = self._policy
        if (
            (policy.thinning or policy.hard)
            and not self._over(
                self._count,
                self._bytes,
                int(lim.max_messages * _LOW_WATER),
                int(lim.max_bytes * _LOW_WATER),
            )
            and not dropped
        ):
            policy.thinning = policy.hard = False
            log.warning("outbox %s back under its limits; nothing dropped since", self.path)

    @property
    def dropped(self) -> dict[str, int]:
        """Messages deleted by the limit policy since this outbox was opened, by topic suffix."""
        return dict(self._policy.dropped)

    @property
    def size_bytes(self) -> int:
        """Payload bytes waiting (the file itself is larger: rows, indexes, free pages)."""
        return self._bytes

    def load_state(self) -> dict[str, str]:
        """Every state key/value written by :meth:`append`."""
        try:
            rows = self._conn().execute("SELECT key, value FROM state").fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot read state: {exc}") from exc
        return {str(k): str(v) for k, v in rows}

    def peek(self, limit: int, *, after_id: int = 0) -> list[StoredMessage]:
        """Up to ``limit`` messages with an id above ``after_id``, oldest first. They stay until
        :meth:`ack`."""
        return self._select("WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def newest_per_topic(self, created_before: float) -> list[StoredMessage]:
        """The newest message of each (line, topic suffix) among those created before
        ``created_before``, oldest first (read only; one statement). They stay until
        :meth:`ack`."""
        return self._select(
            "WHERE id IN (SELECT MAX(id) FROM messages WHERE created < ?"
            " GROUP BY line, topic_suffix) ORDER BY id",
            (created_before,),
        )

    def _select(self, where: str, params: tuple[float, ...]) -> list[StoredMessage]:
        try:
            rows = (
                self._conn()
                .execute(
                    "SELECT id, line, topic_suffix, payload, qos, retain, seq, created"
                    " FROM messages " + where,
                    params,
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot read: {exc}") from exc
        return [_stored(r) for r in rows]

    def ack(self, ids: Sequence[int]) -> None:
        """Delete the messages with these ids (the broker acknowledged them), in one transaction
        (not fsync'd: see the module docstring)."""
        if not ids:
            return

        def body(db: sqlite3.Connection) -> tuple[int, int]:
            count = size = 0
            # Ids the limit policy deleted meanwhile are simply not found.
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = list(ids[start : start + _DELETE_CHUNK])
                marks = ",".join("?" * len(chunk))
                for (length,) in db.execute(
                    f"DELETE FROM messages WHERE id IN ({marks}) RETURNING length(payload)",
                    chunk,
                ).fetchall():
                    count += 1
                    size += int(length)
            return count, size

        # Not synced: a lost delete only means a message is published twice.
        count, size = self._transaction("cannot delete", body, sync=False)
        self._count = max(0, self._count - count)
        self._bytes = max(0, self._bytes - size)
        self._note_dropped({})

    def depth(self) -> int:
        """Number of messages waiting (counted in memory: never touches the disk)."""
        self._conn()
        return self._count

    def oldest_age_s(self, now: float) -> float | None:
        """Seconds since the oldest waiting message was appended; ``None`` when empty."""
        try:
            row = (
                self._conn().execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot read: {exc}") from exc
        return None if row is None else max(0.0, now - float(row[0]))

    def close(self) -> None:
        """Close the file. Idempotent; any later call raises :class:`StorageError`."""
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except sqlite3.Error as exc:
                raise StorageError(f"outbox {self.path}: cannot close: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Recovered:
    """What :class:`Outbox` did with a damaged file at open."""

    moved_to: Path  # the damaged file, kept for inspection
    damage: str  # SQLite's words for it
    messages: int  # messages salvaged into the fresh file
    state_keys: int  # engine state keys salvaged
    complete: bool  # False: some rows could not be read


@dataclass(slots=True)
class _Salvaged:
    messages: list[tuple[str, str, bytes, int, int, int, float]]
    line_seq: dict[str, int]
    state: dict[str, str]
    complete: bool


_SALVAGE_SKIPS = 40  # unreadable spots stepped over per table, at doubling distances


def _salvage(path: Path) -> _Salvaged:
    """Read what SQLite can still read from a damaged outbox (see :meth:`Outbox._recover`)."""
    out = _Salvaged(messages=[], line_seq={}, state={}, complete=True)
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error:
        out.complete = False
        return out
    try:
        try:
            db.execute("PRAGMA writable_schema=ON")  # read past a damaged schema entry
            db.execute("PRAGMA query_only=ON")
        except sqlite3.Error:
            out.complete = False
            return out
        after, step, skips = 0, 1, 0
        while True:
            try:
                for r in db.execute(
                    "SELECT id, line, topic_suffix, payload, qos, retain, seq, created"
                    " FROM messages WHERE id > ? ORDER BY id",
                    (after,),
                ):
                    after, step = int(r[0]), 1
                    row = _salvaged_row(r)
                    if row is None:
                        out.complete = False
                    else:
                        out.messages.append(row)
                break
            except (sqlite3.Error, TypeError, ValueError):
                out.complete = False
                skips += 1
                if skips > _SALVAGE_SKIPS:
                    break
                after += step
                step *= 2
        for table, sink in (("line_seq", out.line_seq), ("state", out.state)):
            try:
                for key, value in db.execute(f"SELECT * FROM {table}"):
                    sink[str(key)] = value
            except (sqlite3.Error, ValueError):
                out.complete = False
        out.line_seq = {k: int(v) for k, v in out.line_seq.items() if isinstance(v, int)}
        out.state = {k: str(v) for k, v in out.state.items()}
        # The counters go on from the highest seq salvaged, whatever the counter table said.
        for line, _t, _p, _q, _r, seq, _c in out.messages:
            out.line_seq[line] = max(out.line_seq.get(line, 0), seq)
    finally:
        db.close()
    return out


def _salvaged_row(r: Sequence[Any]) -> tuple[str, str, bytes, int, int, int, float] | None:
    """A message row read from a damaged file, or ``None`` when it is not whole: a page cut
    short reads as zeros, so the payload must still be the JSON object carrying the row's seq."""
    _id, line, topic, payload, qos, retain, seq, created = r
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if not (
        isinstance(line, str)
        and isinstance(topic, str)
        and isinstance(payload, bytes)
        and qos in (0, 1, 2)
        and retain in (0, 1)
        and isinstance(seq, int)
        and isinstance(created, int | float)
    ):
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("seq") != seq:
        return None
    return line, topic, payload, int(qos), int(retain), seq, float(created)


def _stored(r: Sequence[Any]) -> StoredMessage:
    """A :class:`StoredMessage` from a row of ``SELECT id, line, topic_suffix, payload, qos,
    retain, seq, created``."""
    return StoredMessage(
        id=int(r[0]),
        line=str(r[1]),
        topic_suffix=str(r[2]),
        payload=bytes(r[3]),
        qos=int(r[4]),
        retain=bool(r[5]),
        seq=int(r[6]),
        created=float(r[7]),
    )
