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
(and the state that advanced with it) must survive that, so every commit syncs the WAL; one append
per publish interval makes the cost irrelevant.

Thread-safety: an :class:`Outbox` is used from the event loop thread only (the engine appends, the
MQTT sink peeks and acks, both on the loop). SQLite's own same-thread check enforces it. The calls
are synchronous; each is one short transaction (an append of 1,000 messages takes milliseconds).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import StorageError
from edge_agent.model import OutMessage

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

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"outbox {self.path}: cannot create its directory: {exc}") from exc
        try:
            # isolation_level=None: no implicit transactions; every write below says BEGIN itself.
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: {exc}") from exc
        try:
            self._prepare(db)
        except sqlite3.Error as exc:
            db.close()
            raise StorageError(f"outbox {self.path}: {exc}") from exc
        except StorageError:
            db.close()
            raise
        self._db = db
        log.debug("outbox %s open, %d message(s) waiting", self.path, self.depth())

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
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        db.execute("COMMIT")

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
        """
        db = self._conn()
        now = self._clock()
        seqs: list[int] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
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
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot append: {exc}") from exc
        return seqs

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
        try:
            rows = (
                self._conn()
                .execute(
                    "SELECT id, line, topic_suffix, payload, qos, retain, seq, created"
                    " FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot read: {exc}") from exc
        return [
            StoredMessage(
                id=int(r[0]),
                line=str(r[1]),
                topic_suffix=str(r[2]),
                payload=bytes(r[3]),
                qos=int(r[4]),
                retain=bool(r[5]),
                seq=int(r[6]),
                created=float(r[7]),
            )
            for r in rows
        ]

    def ack(self, ids: Sequence[int]) -> None:
        """Delete the messages with these ids (the broker acknowledged them), in one transaction."""
        if not ids:
            return
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot delete: {exc}") from exc

    def depth(self) -> int:
        """Number of messages waiting."""
        try:
            row = self._conn().execute("SELECT COUNT(*) FROM messages").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"outbox {self.path}: cannot read: {exc}") from exc
        return int(row[0])

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
