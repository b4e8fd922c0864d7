"""The outbox's limit policy and a full disk: what is kept, what is dropped, and that the agent
survives both."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import OutboxConfig
from edge_agent.errors import StorageError
from edge_agent.metrics import Metrics
from edge_agent.model import OutMessage
from edge_agent.pipeline import Pipeline
from edge_agent.sinks.outbox import Outbox


def msg(line: str, suffix: str = "kpi", **payload: object) -> OutMessage:
    return OutMessage(
        line=line, topic_suffix=suffix, payload={"line": line, **payload}, retain=suffix == "kpi"
    )


def limits(**kw: int) -> OutboxConfig:
    base = {"max_messages": 0, "max_bytes": 0, "hard_max_messages": 0, "hard_max_bytes": 0}
    return OutboxConfig(**(base | kw))


def rows(path: Path) -> list[tuple[str, str, int]]:
    """(line, topic, seq) of every stored message, read with a second connection."""
    with sqlite3.connect(path) as db:
        got = db.execute("SELECT line, topic_suffix, seq FROM messages ORDER BY id").fetchall()
    return [(str(a), str(b), int(c)) for a, b, c in got]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def small(path: Path) -> Iterator[Outbox]:
    box = Outbox(path, limits=limits(max_messages=10, hard_max_messages=20))
    yield box
    box.close()


def test_over_the_soft_limit_old_live_snapshots_go_first(small: Outbox, path: Path) -> None:
    small.append([msg("l1", "kpi/shift", n=0)])
    for i in range(12):
        small.append([msg("l1", n=i), msg("l2", n=i)])
    small.append([msg("l2", "state", state="fault")])
    stored = rows(path)
    assert small.depth() == len(stored) <= 10
    # Every report that is not a live snapshot is kept ...
    assert [(line, t) for line, t, _ in stored if t != "kpi"] == [
        ("l1", "kpi/shift"),
        ("l2", "state"),
    ]
    # ... and so is each line's newest snapshot.
    newest = {
        line: max(s for ln, t, s in stored if ln == line and t == "kpi") for line in ("l1", "l2")
    }
    last = small.peek(100)
    for line in ("l1", "l2"):
        kpis = [m for m in last if m.line == line and m.topic_suffix == "kpi"]
        assert json.loads(kpis[-1].payload)["n"] == 11
        assert kpis[-1].seq == newest[line]
    assert small.dropped["kpi"] == 2 * 12 + 2 - len(stored)
    assert set(small.dropped) == {"kpi"}


def test_at_the_hard_limit_the_oldest_reports_of_any_topic_go(path: Path) -> None:
    box = Outbox(path, limits=limits(max_messages=5, hard_max_messages=8))
    try:
        seqs = [box.append([msg("l1", "kpi/shift", n=i)])[0] for i in range(12)]
        assert box.depth() == 8
        assert [s for _, _, s in rows(path)] == seqs[-8:]
        assert box.dropped == {"kpi/shift": 4}
    finally:
        box.close()


def test_byte_limits_count_payload_bytes(path: Path) -> None:
    box = Outbox(path, limits=limits(max_bytes=2_000, hard_max_bytes=4_000))
    try:
        for i in range(40):
            box.append([msg("l1", pad="x" * 80, n=i)])
        assert box.size_bytes <= 2_000
        with sqlite3.connect(path) as db:
            (size,) = db.execute("SELECT SUM(length(payload)) FROM messages").fetchone()
        assert box.size_bytes == size
        for i in range(60):
            box.append([msg("l1", "kpi/hour", pad="x" * 80, n=i)])
        assert 0 < box.size_bytes <= 4_000
        assert box.dropped["kpi/hour"] > 0
    finally:
        box.close()


def test_counts_stay_true_across_ack_thinning_and_reopen(small: Outbox, path: Path) -> None:
    for i in range(15):
        small.append([msg("l1", n=i)])
    batch = small.peek(3)
    small.append([msg("l1", n=99)] * 3)  # thins, possibly rows of the batch in flight
    small.ack([m.id for m in batch])
    assert small.depth() == len(rows(path))
    small.close()
    again = Outbox(path, limits=limits(max_messages=3, hard_max_messages=3))
    try:
        # Lower limits apply at once on open.
        assert again.depth() == len(rows(path)) <= 3
    finally:
        again.close()


def test_back_under_the_limit_is_logged_once(
    small: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.outbox")
    for i in range(30):
        small.append([msg("l1", n=i), msg("l2", n=i)])
    over = [r for r in caplog.records if "over its limit" in r.getMessage()]
    assert len(over) == 1
    small.ack([m.id for m in small.peek(100)])
    small.ack([])
    back = [r for r in caplog.records if "back under" in r.getMessage()]
    assert len(back) == 1


# -- a full disk ------------------------------------------------------------------------------

CONFIG = """
version: 1
site: s
lines:
  - name: l1
    ideal_cycle_time: 1s
    signals: {total_count: {tag: plc.total}}
mqtt: {host: 127.0.0.1, publish_interval: 1s}
"""


def fill_up(box: Outbox) -> None:
    """Make the database file full for real: cap it at its current size."""
    db = box._conn()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count={pages}")


def test_full_disk_is_real_and_a_storage_error(path: Path) -> None:
    box = Outbox(path, limits=limits())
    try:
        box.append([msg("l1", pad="y" * 3000)])
        fill_up(box)
        with pytest.raises(StorageError, match="full"):
            for _ in range(20):
                box.append([msg("l1", pad="y" * 3000)])
        stored = box.depth()
        assert stored == len(rows(path))  # counts untouched by the failed transaction
    finally:
        box.close()


def test_runner_holds_reports_in_memory_while_the_disk_is_full(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = load_config_text(CONFIG)
    box = Outbox(path, limits=limits())
    clock = [1_700_000_000.0]
    progress: list[float] = []
    try:
        runner = Pipeline(
            cfg,
            box,
            metrics=Metrics(),
            clock=lambda: clock[0],
            on_progress=lambda: progress.append(clock[0]),
        )
        # Fill the file with one big backlog, then cap it there.
        box.append([msg("l1", "kpi/shift", pad="z" * 3000) for _ in range(30)])
        fill_up(box)
        for _ in range(50):  # the last free bytes of the last page take a few reports
            clock[0] += 1.0
            runner.step(snapshot=True)
            if runner.held:
                break
        stored_before = box.depth()
        progress.clear()
        for _ in range(50):
            clock[0] += 1.0
            runner.step(snapshot=True)
        assert box.depth() == stored_before
        errors = [
            r for r in caplog.records if "storage: disk full writing the outbox" in r.getMessage()
        ]
        assert len(errors) == 1  # logged once, not per step
        # The engine still makes progress, so the watchdog keeps the process alive.
        assert len(progress) == 50
        # Only the newest live snapshot is held, not fifty.
        assert runner.held == 1

        # The broker acknowledges the backlog: pages free up, the held reports get stored.
        box.ack([m.id for m in box.peek(1000)])
        clock[0] += 1.0
        assert runner.step(snapshot=True) == 2
        assert runner.held == 0
        assert any("writable again" in r.getMessage() for r in caplog.records)
        seqs = [m.seq for m in box.peek(10)]
        assert seqs == sorted(seqs) and len(seqs) == 2
    finally:
        box.close()
