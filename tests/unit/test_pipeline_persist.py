"""The pipeline writes the engine state with the reports it belongs to, not on every tick."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.config.loader import load_config_text
from edge_agent.metrics import Metrics
from edge_agent.model import Quality, Sample
from edge_agent.pipeline import STATE_KEY_PREFIX, Pipeline
from edge_agent.sinks.outbox import Outbox

CONFIG = """
version: 1
site: s1
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {name: total, address: 1}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals:
      total_count: {tag: plc1.total}
mqtt:
  host: 127.0.0.1
  publish_interval: 1h
"""

T0 = 1_700_000_000.0


def _saved_baseline(outbox: Outbox) -> int | None:
    saved = json.loads(outbox.load_state()[STATE_KEY_PREFIX + "line1"])
    value = saved["counters"]["total"]["value"]
    return None if value is None else int(value)


def test_a_tick_without_reports_writes_nothing_and_a_report_carries_the_state(
    tmp_path: Path,
) -> None:
    clock = [T0]
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        pipeline = Pipeline(
            load_config_text(CONFIG), outbox, metrics=Metrics(), clock=lambda: clock[0]
        )
        pipeline.deliver([Sample("plc1", "total", 10, Quality.GOOD, None, T0)])
        clock[0] = T0 + 1.0
        pipeline.deliver([Sample("plc1", "total", 11, Quality.GOOD, None, T0 + 1.0)])
        assert pipeline.step(snapshot=True) == 2  # state (running) and kpi, with the state
        assert _saved_baseline(outbox) == 11
        stored = len(outbox.peek(100))

        clock[0] = T0 + 2.0
        pipeline.deliver([Sample("plc1", "total", 12, Quality.GOOD, None, T0 + 2.0)])
        assert pipeline.step(snapshot=False) == 0  # nothing to report: nothing written
        assert _saved_baseline(outbox) == 11
        assert len(outbox.peek(100)) == stored

        clock[0] = T0 + 3.0
        pipeline.deliver([Sample("plc1", "total", 13, Quality.GOOD, None, T0 + 3.0)])
        assert pipeline.step(snapshot=True) == 1  # the kpi snapshot, with the state
        assert _saved_baseline(outbox) == 13
        kpi = [m for m in outbox.peek(100) if m.topic_suffix == "kpi"][-1]
        assert json.loads(kpi.payload)["total_count"] == 3
    finally:
        outbox.close()
