"""The sample history: on change, keyframes, retention, failures survived, export for replay."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import HistoryConfig
from edge_agent.errors import ConfigError
from edge_agent.metrics import Metrics
from edge_agent.model import Quality, Sample, Value
from edge_agent.pipeline import Pipeline
from edge_agent.replay import replay
from edge_agent.samplecsv import SampleReader, format_time
from edge_agent.sinks import history as history_mod
from edge_agent.sinks.history import History, export_csv
from edge_agent.sinks.outbox import Outbox
from tests.helpers.aio import until

T0 = 1_714_608_000.0  # 2024-05-02T00:00:00Z
G, B = Quality.GOOD, Quality.BAD


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sample(key: str, value: Value, t: float, quality: Quality = G) -> Sample:
    source, tag = key.split(".", 1)
    return Sample(source, tag, value, quality, None, t)


def rows(path: Path) -> list[tuple[float, str, Any, int, int]]:
    """(t, SOURCE.TAG, value, quality code, keyframe) in time order."""
    with sqlite3.connect(path) as db:
        found = db.execute(
            "SELECT s.t, g.source || '.' || g.tag, s.value, s.quality, s.keyframe "
            "FROM samples s JOIN tags g ON g.id = s.tag_id ORDER BY s.t, s.id"
        ).fetchall()
    db.close()
    return found


def export(path: Path, **kw: Any) -> list[tuple[str, str, str]]:
    out = io.StringIO()
    export_csv(path, out, **kw)
    lines = out.getvalue().splitlines()
    assert lines[0] == "timestamp,tag,value"
    return [tuple(line.split(",")) for line in lines[1:]]  # type: ignore[misc]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hist(tmp_path: Path, clock: Clock) -> Iterator[History]:
    h = History(tmp_path / "history.sqlite", HistoryConfig(keyframe_interval_s=300), clock=clock)
    yield h
    h.close()


def test_records_on_change_of_value_or_quality_only(hist: History, clock: Clock) -> None:
    nan = math.nan
    feed = [
        ("p.total", [0, 0, 1, 1, 1, 2]),
        ("p.run", [True, True, 1, 1, False, False]),  # True then 1: a different value
        ("p.temp", [nan, nan, 20.5, 20.5, nan, nan]),  # NaN that stays NaN is no change
    ]
    for i in range(6):
        t = T0 + i
        hist.record([sample(key, values[i], t) for key, values in feed])
    hist.record([sample("p.total", 2, T0 + 6, B)])  # same value, bad quality: a change
    hist.record([sample("p.total", None, T0 + 7, B)])  # still bad: no change
    hist.record([sample("p.total", 2, T0 + 8)])  # good again: a change
    clock.t = T0 + 9
    assert hist.flush() == 11
    got = [(t - T0, key, value, q) for t, key, value, q, _kf in rows(hist.path)]
    totals = [(t, v, q) for t, key, v, q in got if key == "p.total"]
    assert totals == [(0, 0, 0), (2, 1, 0), (5, 2, 0), (6, 2, 2), (8, 2, 0)]
    assert [t for t, key, _v, _q in got if key == "p.run"] == [0, 2, 4]
    assert [t for t, key, _v, _q in got if key == "p.temp"] == [0, 2, 4]


def test_one_transaction_per_flush_not_per_sample(hist: History, clock: Clock) -> None:
    for i in range(100):
        hist.record([sample("p.total", i, T0 + i)])
    assert not hist.path.exists() or rows(hist.path) == []  # buffered: nothing written yet
    clock.t = T0 + 100
    assert hist.flush() == 100
    assert len(rows(hist.path)) == 100


def test_keyframe_rewrites_every_tag_at_its_interval(hist: History, clock: Clock) -> None:
    hist.record([sample("p.total", 5, T0), sample("p.state", 1, T0), sample("q.x", 1.5, T0)])
    hist.flush()
    for minute in range(1, 5):
        clock.t = T0 + minute * 60
        hist.record([sample("p.total", 5 + minute, clock.t)])
        hist.flush()
    clock.t = T0 + 299.9
    hist.flush()
    assert [r for r in rows(hist.path) if r[4]] == []  # 300 s after the first flush: not yet
    clock.t = T0 + 300.5
    hist.flush()
    keyframes = [(t, key, value) for t, key, value, _q, kf in rows(hist.path) if kf]
    assert keyframes == [
        (T0 + 300.5, "p.total", 9),
        (T0 + 300.5, "p.state", 1),
        (T0 + 300.5, "q.x", 1.5),
    ]
    clock.t = T0 + 400
    hist.flush()
    assert len([r for r in rows(hist.path) if r[4]]) == 3  # next one at 600.5
    clock.t = T0 + 1000
    hist.close()  # due, but the agent is stopping: a replay must not run past its last report
    assert len([r for r in rows(hist.path) if r[4]]) == 3


def test_retention_deletes_old_rows_in_batches(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_mod, "RETENTION_BATCH_ROWS", 4)
    h = History(
        tmp_path / "h.sqlite",
        HistoryConfig(keyframe_interval_s=10_000, retention_s=3600),
        clock=clock,
    )
    try:
        for i in range(10):
            h.record([sample("p.total", i, T0 + i)])
        h.record([sample("p.total", 100, T0 + 7200)])
        clock.t = T0 + 7200
        h.flush()  # first flush: retention runs, deletes one batch of 4 of the 10 old rows
        assert len(rows(h.path)) == 7
        clock.t += 1
        h.flush()  # a full batch means more may wait: the next flush deletes the next batch
        assert len(rows(h.path)) == 3
        clock.t += 1
        h.flush()
        assert [r[2] for r in rows(h.path)] == [100]
        h.record([sample("p.total", 101, clock.t)])
        clock.t += 1
        h.flush()  # retention now waits RETENTION_CHECK_S
        assert [r[2] for r in rows(h.path)] == [100, 101]
    finally:
        h.close()


def test_full_disk_is_logged_once_and_survived(
    hist: History, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    hist.record([sample("p.total", 0, T0), sample("p.state", 1, T0)])
    assert hist.flush() == 2
    assert hist._db is not None
    # The file may not grow any more: writes fail with SQLITE_FULL once its free space is used.
    pages = hist._db.execute("PRAGMA page_count").fetchone()[0]
    hist._db.execute(f"PRAGMA max_page_count={pages}")
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.history")
    written = []
    for i in range(1, 100):
        clock.t = T0 + i
        hist.record([sample("p.total", i, clock.t), sample(f"p.big{i}", "x" * 2000, clock.t)])
        written.append(hist.flush())
    first_failure = written.index(0)
    assert first_failure < 10 and set(written[first_failure:]) == {0}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "storage: disk full writing the history" in errors[0].getMessage()
    assert hist.rows_dropped >= 2 * 90
    hist._db.execute("PRAGMA max_page_count=1000000")  # the disk has room again
    clock.t = T0 + 500
    hist.record([sample("p.total", 500, clock.t)])
    assert hist.flush() > 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "writable again" in warnings[0].getMessage()
    # Recovery writes every tag's current value, so the record is whole again from here.
    recovered = {key: value for t, key, value, _q, kf in rows(hist.path) if kf and t == clock.t}
    assert recovered["p.total"] == 500 and recovered["p.state"] == 1


def test_time_the_agent_was_away_replays_as_unknown(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "history.sqlite"
    first = History(path, HistoryConfig(), clock=clock)
    first.record([sample("p.state", 1, T0), sample("p.total", 0, T0)])
    first.record([sample("p.total", 7, T0 + 5)])
    clock.t = T0 + 6
    first.close()
    second = History(path, HistoryConfig(), clock=clock)  # the agent starts again, an hour on
    clock.t = T0 + 3600
    second.record([sample("p.state", 1, clock.t), sample("p.total", 9, clock.t)])
    second.close()
    assert [(t - T0, key, q) for t, key, _v, q, _kf in rows(path)] == [
        (0, "p.state", 0),
        (0, "p.total", 0),
        (5, "p.total", 0),
        (5, "p.state", 2),  # away from the last recorded moment on
        (5, "p.total", 2),
        (3600, "p.state", 0),
        (3600, "p.total", 0),
    ]
    cfg = load_config_text(
        "version: 1\nsite: s\nmqtt: {host: h}\nlines:\n"
        "  - {name: l, ideal_cycle_time: 1s, signals: {state: {tag: p.state, map: {1: running}},"
        " total_count: {tag: p.total}}}\n"
    )
    out = io.StringIO()
    export_csv(path, out)
    (snapshot,) = replay(cfg, io.StringIO(out.getvalue())).open
    assert snapshot["unknown_time_s"] == 3595.0 and snapshot["total_count"] == 9


def test_unwritable_directory_does_not_raise(tmp_path: Path, clock: Clock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    h = History(blocker / "history.sqlite", HistoryConfig(), clock=clock)
    h.record([sample("p.total", 1, T0)])
    assert h.flush() == 0
    h.close()


def test_export_starts_with_the_last_value_before_from(hist: History, clock: Clock) -> None:
    hist.record([sample("p.state", 1, T0), sample("p.total", 0, T0), sample("p.name", "abc", T0)])
    hist.record([sample("p.total", 5, T0 + 10), sample("q.flag", True, T0 + 10)])
    hist.record([sample("p.state", 3, T0 + 20, B)])
    hist.record([sample("p.total", 9, T0 + 30), sample("p.state", 2, T0 + 30)])
    hist.record([sample("p.total", 12, T0 + 40)])
    clock.t = T0 + 41
    hist.flush()

    start, end = T0 + 25, T0 + 40
    got = export(hist.path, start=start, end=end)
    # At --from: each tag's last value before it (a bad one as an empty cell; text left out),
    # then the rows in [from, to).
    assert got == [
        (format_time(start), "p.state", ""),
        (format_time(start), "p.total", "5"),
        (format_time(start), "q.flag", "true"),
        (format_time(T0 + 30), "p.total", "9"),
        (format_time(T0 + 30), "p.state", "2"),
    ]
    assert export(hist.path, start=start, tags=["p.total"]) == [
        (format_time(start), "p.total", "5"),
        (format_time(T0 + 30), "p.total", "9"),
        (format_time(T0 + 40), "p.total", "12"),
    ]
    out = io.StringIO()
    result = export_csv(hist.path, out, tags=["p.name", "nope.x"])
    assert result.rows == 0 and result.skipped_text == 1
    assert result.unknown_tags == ("nope.x",)


def test_runner_hands_samples_over_in_time_order(tmp_path: Path, clock: Clock) -> None:
    cfg = load_config_text(CONFIG)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    h = History(tmp_path / "history.sqlite", HistoryConfig(), clock=clock)
    try:
        runner = Pipeline(cfg, outbox, metrics=Metrics(), clock=clock, history=h)
        clock.t = T0 + 10
        runner.step(snapshot=False)
        delivered = [sample("plc1.total", 1, T0 + 9), sample("plc1.state", 1, T0 + 11)]
        runner.deliver(delivered)
        runner.deliver([sample("plc1.rejects", 0, T0 + 10.5)])  # read before the last delivery
        assert delivered[0].agent_time == T0 + 9  # the caller's list is left alone
        h.flush()
        assert [(t - T0, key) for t, key, *_ in rows(h.path)] == [
            (10, "plc1.total"),
            (11, "plc1.state"),
            (11, "plc1.rejects"),
        ]
    finally:
        h.close()
        outbox.close()


CONFIG = """
version: 1
site: s1
lines:
  - name: line1
    timezone: UTC
    ideal_cycle_time: 1s
    shifts:
      - {name: a, start: "00:00", end: "00:10", breaks: [{start: "00:04", end: "00:05"}]}
      - {name: b, start: "00:10", end: "00:20"}
    signals:
      state: {tag: plc1.state, map: {1: running, 2: idle, 3: fault}}
      total_count: {tag: plc1.total, rollover: 1000}
      reject_count: {tag: plc1.rejects, rollover: 1000}
mqtt: {host: 127.0.0.1}
storage: {history: {keyframe_interval: 1m, retention: 30d}}
"""


def test_export_then_replay_reproduces_the_live_shift_reports(tmp_path: Path, clock: Clock) -> None:
    """The runner and history as the agent wires them, driven second by second with a fake clock;
    then an export from a moment inside shift a, replayed: the reports of shift b are equal,
    and so are those of shift a when the export starts before the first sample."""
    cfg = load_config_text(CONFIG)
    assert cfg.storage.history.keyframe_interval_s == 60
    outbox = Outbox(tmp_path / "outbox.sqlite")
    h = History(tmp_path / "history.sqlite", cfg.storage.history, clock=clock)
    try:
        runner = Pipeline(cfg, outbox, metrics=Metrics(), clock=clock, history=h)
        total, rejects, state = 990, 0, 1
        clock.t = T0 - 30.0
        for step in range(1500):  # 25 minutes, from 30 s before shift a
            t = T0 - 30.0 + step * 1.0 + 0.013 * (step % 7)  # poll jitter
            clock.t = t
            if step % 97 == 50:
                state = {1: 3, 3: 2, 2: 1}[state]
            if state == 1:
                total = (total + 1) % 1000  # wraps at 1000
                rejects = (rejects + (step % 13 == 0)) % 1000
            polled = [
                sample("plc1.state", state, t),
                sample("plc1.total", total, t),
                sample("plc1.rejects", rejects, t),
            ]
            if 400 <= step < 420:  # the source is down for 20 s
                if step == 400:
                    runner.source_available("plc1", False)
                continue
            if step == 420:
                runner.source_available("plc1", True)
            runner.deliver(polled)
            runner.step(snapshot=step % 5 == 0)
            if step % 3 == 0:
                h.flush()
        h.flush()
        live = [
            json.loads(m.payload) for m in outbox.peek(100_000) if m.topic_suffix == "kpi/shift"
        ]
    finally:
        h.close()
        outbox.close()
    for report in live:
        report.pop("seq")
    assert [r["window"]["name"] for r in live] == ["a", "b"]
    assert live[0]["unknown_time_s"] > 19  # the outage
    assert any(r["warnings"] for r in live) or live[0]["total_count"] > 0

    for start, expected in ((None, live), (T0 + 300.0, live[1:])):
        out = io.StringIO()
        export_csv(tmp_path / "history.sqlite", out, start=start)
        assert SampleReader(io.StringIO(out.getvalue())) is not None
        result = replay(cfg, io.StringIO(out.getvalue()))
        assert result.problems == []
        got = [r for r in result.closed if start is None or r["window"]["name"] == "b"]
        assert got == expected


def test_history_config_defaults_short_form_and_errors() -> None:
    base = CONFIG.replace("storage: {history: {keyframe_interval: 1m, retention: 30d}}\n", "")
    cfg = load_config_text(base)
    assert cfg.storage.history == HistoryConfig(
        enabled=True, keyframe_interval_s=300.0, retention_s=30 * 86400.0
    )
    assert not load_config_text(base + "storage: {history: false}\n").storage.history.enabled
    with pytest.raises(ConfigError) as info:
        load_config_text(
            base + "storage:\n  history:\n    retention: 0d\n    keyframes: 5m\n", "a.yaml"
        )
    assert info.value.issues == [
        "a.yaml:18:16: storage.history.retention: must be a positive duration, got 0d",
        "a.yaml:19:5: storage.history.keyframes: unknown key (did you mean 'keyframe_interval'?)",
    ]


def test_a_damaged_file_is_moved_aside_and_recording_goes_on(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"not a database" * 1000)
    seen: list[str] = []
    h = History(path, HistoryConfig(), clock=clock, on_recovered=seen.append)
    try:
        caplog.set_level(logging.ERROR, logger="edge_agent.sinks.history")
        h.record([sample("p.total", 1, T0)])
        h.flush()  # finds the damage: moved aside
        clock.t = T0 + 1
        h.record([sample("p.total", 2, clock.t)])
        assert h.flush() > 0
    finally:
        h.close()
    assert seen == ["corrupt"]
    assert [p.name.startswith("history.sqlite.corrupt-") for p in tmp_path.iterdir()].count(True)
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "was damaged" in errors[0], errors
    assert {key: value for _t, key, value, _q, _kf in rows(path)}["p.total"] == 2


def test_a_file_deleted_while_open_is_noticed_and_recording_goes_on(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "history.sqlite"
    seen: list[str] = []
    h = History(path, HistoryConfig(), clock=clock, on_recovered=seen.append)
    try:
        h.record([sample("p.total", 1, T0), sample("p.state", 1, T0)])
        assert h.flush() == 2
        for p in tmp_path.iterdir():
            p.unlink()
        clock.t = T0 + 1
        h.record([sample("p.total", 2, clock.t)])
        assert h.flush() > 0
        assert seen == ["deleted"] and path.exists()
    finally:
        h.close()
    # Every tag's value is written first into the new file.
    assert {key: value for _t, key, value, _q, _kf in rows(path)} == {"p.total": 2, "p.state": 1}


def test_integers_beyond_64_bits_are_recorded_exactly(hist: History, clock: Clock) -> None:
    """A ``uint64`` tag with its top bit set is beyond SQLite's INTEGER: it used to raise
    OverflowError (not an sqlite3.Error) out of the flush and stop the agent."""
    big = [2**63, 2**64 - 1, -(2**63) - 1]
    for i, value in enumerate(big):
        hist.record([sample("p.total", value, T0 + i)])
    clock.t = T0 + 10
    assert hist.flush() == 3
    clock.t = T0 + 10 + 300  # the keyframe (every 300 s here) writes the last value again
    assert hist.flush() == 1
    assert [v for _t, _tag, v, *_ in export(hist.path)] == [str(v) for v in [*big, big[-1]]]


async def test_run_does_not_wake_while_nothing_changes(tmp_path: Path, clock: Clock) -> None:
    """An idle floor: with no changed value buffered, run() writes nothing and does not flush
    every interval (it waits for a row, a keyframe or a retention batch); a changed value is
    written one interval after it was buffered."""

    class Counting(History):
        flushes = 0

        def flush(self, *, keyframe: bool = True) -> int:
            self.flushes += 1
            return super().flush(keyframe=keyframe)

    h = Counting(
        tmp_path / "history.sqlite",
        HistoryConfig(keyframe_interval_s=300),
        clock=clock,
        flush_interval_s=0.01,
    )
    task = asyncio.create_task(h.run())
    try:
        h.record([sample("p.a", 1, T0)])
        await until(lambda: h.rows_written == 1)
        first = h.flushes
        for _ in range(20):  # unchanged values, as an idle PLC serves them
            h.record([sample("p.a", 1, T0)])
        # 30 flush intervals: the loop used to flush (and stat the file) on every one of them.
        await asyncio.sleep(0.3)
        assert h.flushes == first, h.flushes
        h.record([sample("p.a", 2, T0 + 1)])
        await until(lambda: h.rows_written == 2)
        assert h.flushes == first + 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        h.close()
    assert [r[2] for r in rows(tmp_path / "history.sqlite")] == [1, 2]
