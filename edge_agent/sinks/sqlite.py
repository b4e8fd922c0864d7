"""SQLite for the state directory (the outbox and the sample history): one write transaction,
and what a failure means, named once.

:func:`transaction` is the ``BEGIN IMMEDIATE`` / ``COMMIT`` of every write, with ``ROLLBACK``
on any error (a cancellation included). :func:`storage_reason` says what a sqlite or OS error
means for the state directory (a full disk, a read-only file system, a damaged file), and
:data:`DESCRIBED` how its log line names it. A full disk gets its WAL back
(:func:`give_back_wal`); a damaged file is moved aside (:func:`move_aside`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from edge_agent.errors import StorageError

log = logging.getLogger(__name__)

# The WAL's checkpoint interval once the disk was found full (SQLite's default is 1,000 pages).
_TIGHT_WAL_PAGES = 16

_REASONS = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}
_ERRNO_REASONS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only"}
# How a storage failure is named in its log line.
DESCRIBED = {
    "disk_full": "disk full",
    "read_only": "read-only file system",
    "corrupt": "damaged file",
    "other": "error",
}


def storage_reason(exc: BaseException) -> str:
    """What a sqlite or OS error means for the state directory: ``disk_full``, ``read_only``,
    ``corrupt`` or ``other`` (SQLite's primary result code, or the OS errno)."""
    if isinstance(exc, StorageError):
        return exc.reason
    if isinstance(exc, OSError):
        return _ERRNO_REASONS.get(exc.errno or 0, "other")
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return "other"
    return _REASONS.get(code & 0xFF, "other")  # the low byte: the primary result code


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``db`` (opened with ``isolation_level=None``: no implicit ones):
    ``BEGIN IMMEDIATE``, the block, ``COMMIT``. On any error in the block or in the COMMIT it is
    rolled back and the error goes on unchanged (a failing ROLLBACK is logged at DEBUG, so that
    the error reported is the one that happened)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.debug("rollback failed: %s", exc)
        raise


def give_back_wal(db: sqlite3.Connection, path: Path) -> bool:
    """On a full disk: checkpoint and truncate ``db``'s WAL (its space goes back to the file
    system) and keep it small from now on: with SQLite's default checkpoint interval the WAL
    grows to ~4 MiB before it is reused, and would eat a little freed space again at once.
    True when the WAL was truncated."""
    try:
        db.execute(f"PRAGMA wal_autocheckpoint={_TIGHT_WAL_PAGES}")
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error as exc:
        log.debug("%s: checkpoint on a full disk failed: %s", path, exc)
        return False
    return not busy


def file_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def damaged_name(path: Path, kind: str = "corrupt", now: float | None = None) -> Path:
    """``outbox.sqlite.corrupt-20261202T063000Z``: where a damaged file is moved (UTC time)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.{kind}-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{kind}-{stamp}-{n}")
        n += 1
    return target


def move_aside(path: Path, kind: str = "corrupt") -> Path:
    """Rename ``path`` and its ``-wal`` / ``-shm`` files to :func:`damaged_name` (the WAL keeps
    the name SQLite looks for next to the moved file)."""
    target = damaged_name(path, kind)
    try:
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        path.rename(target)
    except OSError as exc:
        raise StorageError(
            f"{path} is damaged and cannot be moved aside: {exc}",
            reason=storage_reason(exc),
        ) from exc
    return target
