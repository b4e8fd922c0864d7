"""The one write transaction of the state directory (edge_agent.sinks.sqlite.transaction)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.sinks.sqlite import storage_reason, transaction


def _db(tmp_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "t.sqlite", isolation_level=None)
    db.execute("CREATE TABLE t (v INTEGER NOT NULL)")
    return db


def test_commits_the_block(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        assert db.in_transaction
    assert not db.in_transaction
    other = sqlite3.connect(tmp_path / "t.sqlite")  # another connection sees it: committed
    assert other.execute("SELECT v FROM t").fetchall() == [(1,)]


def test_an_error_rolls_back_and_goes_on_unchanged(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with pytest.raises(sqlite3.IntegrityError), transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (NULL)")  # NOT NULL
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)

    class Stop(BaseException):  # a cancellation is not an Exception either
        pass

    with pytest.raises(Stop), transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
        raise Stop
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    with transaction(db):  # and the connection is usable again
        db.execute("INSERT INTO t VALUES (3)")
    assert db.execute("SELECT v FROM t").fetchall() == [(3,)]


def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    db.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError), transaction(db):
        db.execute("INSERT INTO c VALUES (42)")  # checked at COMMIT only
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM c").fetchone() == (0,)


def test_failures_are_named_for_the_state_directory() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert storage_reason(full) == "disk_full"
    assert storage_reason(OSError(30, "Read-only file system")) == "read_only"
    damaged = sqlite3.DatabaseError("file is not a database")
    damaged.sqlite_errorcode = sqlite3.SQLITE_NOTADB  # type: ignore[attr-defined]
    assert storage_reason(damaged) == "corrupt"
