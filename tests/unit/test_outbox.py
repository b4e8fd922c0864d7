"""The durable outbox: seq per line, atomic state, order, ack, reopen, storage errors."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.errors import StorageError
from edge_agent.model import OutMessage
from edge_agent.sinks.outbox import Outbox


def msg(line: str, suffix: str = "kpi", *, retain: bool = True, **payload: object) -> OutMessage:
    return OutMessage(
        line=line, topic_suffix=suffix, payload={"line": line, **payload}, retain=retain
    )


class FixedClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.sqlite", clock=FixedClock(1_700_000_000.0))
    yield box
    box.close()


def test_seq_is_one_counter_per_line_across_topics(outbox: Outbox) -> None:
    seqs = outbox.append(
        [msg("l1"), msg("l2"), msg("l1", "state"), msg("l1", "kpi/shift", retain=False), msg("l2")]
    )
    l1 = [seqs[0], seqs[2], seqs[3]]
    l2 = [seqs[1], seqs[4]]
    assert l1 == list(range(l1[0], l1[0] + 3))
    assert l2 == [l2[0], l2[0] + 1]
    more = outbox.append([msg("l2"), msg("l1")])
    assert more == [l2[1] + 1, l1[2] + 1]


def test_first_seq_of_a_line_is_seeded_from_the_clock_in_ms(outbox: Outbox) -> None:
    # So that numbering keeps increasing even if the state directory is lost and recreated.
    assert outbox.append([msg("l1")]) == [1_700_000_000_000]


def test_payload_is_compact_utf8_json_with_seq(outbox: Outbox) -> None:
    (seq,) = outbox.append([msg("línea", "state", state="running", oee=None)])
    (stored,) = outbox.peek(10)
    assert (
        stored.payload == (f'{{"line":"línea","state":"running","oee":null,"seq":{seq}}}').encode()
    )
    assert json.loads(stored.payload)["seq"] == stored.seq == seq
    assert (stored.line, stored.topic_suffix, stored.qos, stored.retain) == (
        "línea",
        "state",
        1,
        True,
    )
    assert stored.created == 1_700_000_000.0


def test_peek_is_oldest_first_and_ack_deletes(outbox: Outbox) -> None:
    outbox.append([msg("l1", n=i) for i in range(5)])
    outbox.append([msg("l2", n=i) for i in range(5, 8)])
    rows = outbox.peek(100)
    assert [json.loads(r.payload)["n"] for r in rows] == list(range(8))
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert outbox.depth() == 8
    assert len(outbox.peek(3)) == 3
    outbox.ack([r.id for r in rows[:3]])
    assert outbox.depth() == 5
    assert [json.loads(r.payload)["n"] for r in outbox.peek(100)] == [3, 4, 5, 6, 7]
    outbox.ack([])
    assert outbox.depth() == 5


def test_oldest_age(tmp_path: Path) -> None:
    clock = FixedClock(1000.0)
    box = Outbox(tmp_path / "o.sqlite", clock=clock)
    try:
        assert box.oldest_age_s(2000.0) is None
        box.append([msg("l1")])
        clock.t = 1500.0
        box.append([msg("l1")])
        assert box.oldest_age_s(1600.0) == pytest.approx(600.0)
        box.ack([box.peek(1)[0].id])
        assert box.oldest_age_s(1600.0) == pytest.approx(100.0)
    finally:
        box.close()


def test_state_is_upserted_with_the_messages(outbox: Outbox) -> None:
    assert outbox.load_state() == {}
    outbox.append([msg("l1")], state={"l1": "a", "l2": "b"})
    outbox.append([], state={"l1": "c"})
    assert outbox.load_state() == {"l1": "c", "l2": "b"}


def test_append_is_all_or_nothing(outbox: Outbox) -> None:
    outbox.append([msg("l1")], state={"l1": "before"})
    (before,) = outbox.peek(1)
    bad = OutMessage(line="l1", topic_suffix="kpi", payload={"oee": float("nan")}, retain=True)
    with pytest.raises(ValueError):
        outbox.append([msg("l1"), bad], state={"l1": "after"})
    assert outbox.depth() == 1
    assert outbox.load_state() == {"l1": "before"}
    # The failed append did not consume seqs.
    assert outbox.append([msg("l1")]) == [before.seq + 1]


def test_seq_never_repeats_after_ack_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    first = box.append([msg("l1"), msg("l1")], state={"k": "v"})
    box.ack([r.id for r in box.peek(10)])  # table empty: seq must still not go back
    box.close()
    box = Outbox(path)
    try:
        assert box.depth() == 0
        assert box.append([msg("l1")]) == [first[1] + 1]
        assert box.load_state() == {"k": "v"}
    finally:
        box.close()


def test_messages_survive_reopen_in_order(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    seqs = box.append([msg("l1", n=i) for i in range(10)])
    box.close()
    box = Outbox(path)
    try:
        assert [r.seq for r in box.peek(100)] == seqs
    finally:
        box.close()


def test_durability_settings(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.close()
    db = sqlite3.connect(tmp_path / "o.sqlite")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_append_1000_messages_is_fast(outbox: Outbox) -> None:
    messages = [msg(f"l{i % 4}", oee=0.5, total_count=i, state="running") for i in range(1000)]
    start = time.perf_counter()
    seqs = outbox.append(messages)
    elapsed_s = time.perf_counter() - start
    assert len(seqs) == 1000
    assert outbox.depth() == 1000
    assert elapsed_s < 0.5, f"append of 1,000 messages took {elapsed_s:.3f} s"


def test_closed_outbox_raises_storage_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.close()
    box.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        box.depth()


def test_directory_as_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=str(tmp_path)):
        Outbox(tmp_path)


def test_parent_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "outbox.sqlite"
    with pytest.raises(StorageError, match=r"outbox\.sqlite"):
        Outbox(path)


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path,
) -> None:
    # It used to be a StorageError: the agent exited 73 on every start.
    path = tmp_path / "o.sqlite"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    box = Outbox(path)
    try:
        assert box.recovered is not None and box.recovered.messages == 0
        assert box.recovered.damage == "file is not a database"
        assert box.recovered.moved_to.name.startswith("o.sqlite.corrupt-")
        assert box.recovered.moved_to.read_bytes() == junk  # kept as found
        assert box.append([msg("l1")]) and box.depth() == 1
    finally:
        box.close()


def test_a_truncated_file_is_salvaged_seqs_and_state_kept(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    seqs = box.append([msg("l1", "kpi/shift", pad="x" * 200) for _ in range(300)])
    box.append([], state={"engine:l1": '{"k": 1}'})
    box.close()
    # Cut inside a page: SQLite reads the rest of that page as zeros, and a plain SELECT
    # returns rows whose payload is cut short; those must not be salvaged.
    os.truncate(path, path.stat().st_size // 2 + 1234)
    box = Outbox(path)
    try:
        rec = box.recovered
        assert rec is not None and not rec.complete and rec.state_keys == 1
        kept = box.peek(1000)
        assert 0 < len(kept) == rec.messages < 300 == len(seqs)
        # Salvaged rows are whole rows of the old file, in their order, with their seq.
        kept_seqs = [m.seq for m in kept]
        assert kept_seqs == sorted(set(kept_seqs)) and set(kept_seqs) <= set(seqs)
        assert all(json.loads(m.payload)["seq"] == m.seq for m in kept)
        assert box.load_state() == {"engine:l1": '{"k": 1}'}
        # Numbering never goes back: the line's counter was salvaged too.
        assert box.append([msg("l1")]) == [seqs[-1] + 1]
    finally:
        box.close()


def test_a_file_deleted_while_open_is_recreated_with_what_it_held(tmp_path: Path) -> None:
    path = tmp_path / "state" / "o.sqlite"
    box = Outbox(path)
    try:
        box.append([msg("l1") for _ in range(3)], state={"engine:l1": "{}"})
        box.ack([m.id for m in box.peek(1)])
        held = box.peek(10)
        assert not box.check_file()  # nothing happened: nothing done
        for p in path.parent.iterdir():
            p.unlink()
        path.parent.rmdir()
        assert box.check_file() and box.recreated == 1
        assert path.exists() and not box.check_file()
        assert box.peek(10) == held  # the same ids: a sink's pump goes on where it was
        assert box.load_state() == {"engine:l1": "{}"}
        (new,) = box.append([msg("l1")])
        assert new == held[-1].seq + 1 and box.peek(10)[-1].id == held[-1].id + 1
        box.ack([m.id for m in box.peek(10)])
        path.unlink()
        assert box.check_file()  # empty: ids still go on after the highest ever given
        box.append([msg("l1")])
        assert box.peek(10)[0].id == held[-1].id + 2
    finally:
        box.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_is_a_storage_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="ro"):
            Outbox(ro / "o.sqlite")
    finally:
        ro.chmod(0o700)


def test_read_only_database_is_a_storage_error(tmp_path: Path) -> None:
    # A read-only file system, simulated in a way that also holds for root: the file is fine
    # but sqlite may not write to it.
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    box = Outbox(path)
    try:
        box._conn().execute("PRAGMA query_only=ON")
        with pytest.raises(StorageError, match=r"o\.sqlite.*cannot append"):
            box.append([msg("l1")])
        assert box.depth() == 0
    finally:
        box.close()


_FSYNC_SCRIPT = """
import sys
from edge_agent.model import OutMessage
from edge_agent.sinks.outbox import Outbox
box = Outbox(sys.argv[1])
m = [OutMessage(line="l1", topic_suffix="kpi", payload={"line": "l1"}, retain=True)]
for _ in range(3):
    sys.stderr.write("MARK append\\n"); sys.stderr.flush()
    box.append(m, state={"engine:l1": "{}"})
    sys.stderr.write("MARK ack\\n"); sys.stderr.flush()
    box.ack([s.id for s in box.peek(10)])
sys.stderr.write("MARK end\\n"); sys.stderr.flush()
box.close()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_one_fsync_per_appended_batch_none_per_ack(tmp_path: Path) -> None:
    """A published batch costs one fsync (its append); deleting what the broker acknowledged is
    not synced (a lost delete only means a duplicate). Counted by strace in a real process."""
    trace = tmp_path / "trace"
    subprocess.run(
        [
            *("strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,write", "-o", str(trace)),
            *(sys.executable, "-c", _FSYNC_SCRIPT, str(tmp_path / "o.sqlite")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    phase, syncs = "open", {"open": 0, "append": 0, "ack": 0}
    for line in trace.read_text().splitlines():
        if "MARK " in line:
            phase = line.split("MARK ", 1)[1].split("\\", 1)[0]
            syncs.setdefault(phase, 0)
        elif "fsync(" in line or "fdatasync(" in line:
            syncs[phase] += 1
    assert syncs["append"] == 3, syncs  # one per batch, each durable before append() returns
    assert syncs["ack"] == 0, syncs
