"""The pipeline steps at once when a delivered sample changes a line's state."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edge_agent.config.loader import load_config_text
from edge_agent.metrics import Metrics
from edge_agent.model import Quality, Sample
from edge_agent.pipeline import Pipeline
from edge_agent.sinks.outbox import Outbox
from tests.helpers.aio import until

CONFIG = """
version: 1
site: s1
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {name: state, address: 0}
      - {name: total, address: 1}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals:
      state: {tag: plc1.state, map: {1: running, 2: idle}}
      total_count: {tag: plc1.total}
mqtt:
  host: 127.0.0.1
  publish_interval: 1h
"""


async def test_a_state_change_is_stored_without_waiting_for_the_next_tick(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    # Ticks and snapshots an hour apart: only the wake-up can store the state message.
    runner = Pipeline(load_config_text(CONFIG), outbox, metrics=Metrics(), tick_interval_s=3600.0)
    task = asyncio.create_task(runner.run())
    try:
        deadline = time.monotonic() + 5.0
        while runner.steps < 1:  # the first step (and snapshot) happens at start
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        before = {m.topic_suffix for m in outbox.peek(100)}
        assert "state" not in before
        now = time.time()
        runner.deliver(
            [
                Sample("plc1", "state", 1, Quality.GOOD, None, now),
                Sample("plc1", "total", 5, Quality.GOOD, None, now),
            ]
        )
        while not any(m.topic_suffix == "state" for m in outbox.peek(100)):
            assert time.monotonic() < deadline, "the state change was not stored"
            await asyncio.sleep(0.01)
        assert runner.steps == 2
        # A sample that changes nothing does not wake the runner.
        runner.deliver([Sample("plc1", "state", 1, Quality.GOOD, None, time.time())])
        await asyncio.sleep(0)
        assert not runner._wake.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()


async def test_a_due_tick_is_taken_with_the_next_poll_not_on_a_timer_of_its_own(
    tmp_path: Path,
) -> None:
    """An idle floor: a poll delivered after the tick is due takes the tick in the same wake-up
    (no extra wake of the process per tick); without polls a timer still takes it, at most half
    a tick late."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    tick_s = 0.4
    runner = Pipeline(load_config_text(CONFIG), outbox, metrics=Metrics(), tick_interval_s=tick_s)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: runner.steps >= 1)
        first_due = runner._due_at
        await until(lambda: loop.time() >= first_due)
        runner.deliver([Sample("plc1", "total", 5, Quality.GOOD, None, time.time())])
        await until(lambda: runner.steps >= 2)
        # Taken by the delivery: well before the timer's fallback (due + tick / 2).
        assert loop.time() < first_due + tick_s / 2, loop.time() - first_due
        # No poll: the timer takes the next tick, half a tick after it was due.
        second_due = runner._due_at
        assert second_due == first_due + tick_s
        await until(lambda: runner.steps >= 3)
        assert loop.time() >= second_due + tick_s / 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()
