"""Live run → history → export → replay: replay recomputes exactly what the agent published.

Clock. Shifts are wall-clock ``HH:MM`` and last at least a minute, so a live test on real time
would wait for minutes. Instead the agent runs in this process on an injected clock that runs
``SPEED`` times faster than real time, starting at 05:59:00 Seoul time on a fixed date, and the
simulated machines run at the same speed: one agent second is one simulated second, and a
one-minute shift closes in 3 s of real time. Nothing depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers.subscriber import Received, Subscriber

from edge_agent.app import Agent
from edge_agent.config.loader import load_config
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

SPEED = 20.0
SITE = "replay-site"
PREFIX = "edge-agent"
SEOUL = ZoneInfo("Asia/Seoul")
BASE = datetime(2024, 5, 2, 5, 59, tzinfo=SEOUL).timestamp()  # 60 agent s (3 real s) before 06:00
POLL_S = 0.2  # real seconds
POLL_AGENT_S = POLL_S * SPEED

RATIOS = ("availability", "performance", "quality", "oee", "data_coverage")
COUNTS = ("total_count", "good_count", "reject_count")


def config(sim: Simulation, broker_port: int, state_dir: Path) -> str:
    return f"""
version: 1
site: {SITE}
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {sim.modbus_port}
    poll_interval: {int(POLL_S * 1000)}ms
    timeout: 1s
    backoff_initial: 200ms
    backoff_max: 1s
    tags:
      - {{name: state, table: holding, address: 0, type: uint16}}
      - {{name: total, table: holding, address: 1, type: uint16}}
      - {{name: rejects, table: holding, address: 2, type: uint16}}
      - {{name: ideal_cycle_time, table: holding, address: 5, type: float32}}
  - name: plc2
    protocol: opcua
    endpoint: {sim.opcua_endpoint}
    poll_interval: {int(POLL_S * 1000)}ms
    timeout: 2s
    backoff_initial: 200ms
    backoff_max: 1s
    tags:
      - {{name: state, node: "ns=2;s=Line2.State"}}
      - {{name: total, node: "ns=2;s=Line2.TotalCount"}}
      - {{name: rejects, node: "ns=2;s=Line2.RejectCount"}}
      - {{name: running, node: "ns=2;s=Line2.Running"}}
x-states: &states {{1: running, 2: idle, 3: fault, 4: planned_stop, 5: changeover}}
x-line: &line
  timezone: Asia/Seoul
  ideal_cycle_time: 1s
  shifts:
    - {{name: first, start: "06:00", end: "06:01"}}
    - {{name: second, start: "06:01", end: "06:05"}}
lines:
  - name: line1
    <<: *line
    signals:
      state: {{tag: plc1.state, map: *states}}
      total_count: {{tag: plc1.total, rollover: 65536}}
      reject_count: {{tag: plc1.rejects, rollover: 65536}}
  - name: line2
    <<: *line
    signals:
      state: {{tag: plc2.state, map: *states}}
      total_count: {{tag: plc2.total, rollover: 4294967296}}
      reject_count: {{tag: plc2.rejects, rollover: 4294967296}}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  topic_prefix: {PREFIX}
  publish_interval: 500ms
  backoff_initial: 200ms
  backoff_max: 1s
prometheus:
  enabled: false
storage:
  dir: {state_dir}
  history: {{keyframe_interval: 30s, retention: 30d}}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_same_report(live: dict[str, Any], replayed: dict[str, Any]) -> None:
    """Counts and everything but ratios exactly; ratios to 1e-6 (the payload's last digit; the
    float slack only absorbs that 0.221631 - 0.22163 is not exactly 1e-6). The agent's times are
    whole microseconds, which the CSV carries exactly, so in practice ratios are equal too."""
    live = {k: v for k, v in live.items() if k != "seq"}
    for key in RATIOS:
        a, b = live.pop(key), replayed[key]
        assert (a is None) == (b is None), key
        assert a is None or math.isclose(a, b, rel_tol=0, abs_tol=1e-6 + 1e-12), key
    assert live == {k: v for k, v in replayed.items() if k in live}
    assert set(live) | set(RATIOS) == set(replayed)


async def test_replay_of_the_exported_history_equals_the_live_reports(
    mosquitto: Any, tmp_path: Path
) -> None:
    async with Simulation(lines=2, seed=11, speed=SPEED) as sim:
        cfg_path = tmp_path / "agent.yaml"
        cfg_path.write_text(config(sim, mosquitto.port, tmp_path / "state"))
        real0 = time.time()

        def clock() -> float:
            return BASE + (time.time() - real0) * SPEED

        agent = Agent(load_config(cfg_path), clock=clock, drain_timeout_s=5.0)
        stop = asyncio.Event()
        async with Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/{SITE}/#") as sub:
            run = asyncio.create_task(agent.run(stop))
            try:

                def topic_is(suffix: str, line: str) -> Any:
                    return lambda r: r.topic == f"{PREFIX}/{SITE}/{line}/{suffix}"

                for line in ("line1", "line2"):
                    # The first shift closes 60 + 60 agent s = 6 real s after the start.
                    await sub.wait_for(topic_is("kpi/shift", line), timeout_s=40)

                # Replay knows time only from samples: it closes the first shift if samples of
                # the second shift were recorded. Polls come every 4 agent s: wait for 10 s.
                later = datetime(2024, 5, 2, 6, 1, 10, tzinfo=SEOUL)

                def well_into_second_shift(r: Received) -> bool:
                    return (
                        r.topic.endswith("/kpi") and datetime.fromisoformat(r.json()["ts"]) >= later
                    )

                await sub.wait_for(well_into_second_shift, timeout_s=20)
            finally:
                stop.set()
                code = await run
            assert code == 0
            await sub.wait_for(lambda r: r.topic.endswith("/status") and b"offline" in r.payload)
        live = [(r.topic.split("/", 2)[2], r.json()) for r in sub.received if "seq" in r.json()]

    start = datetime.fromtimestamp(BASE - 60, SEOUL).isoformat()
    end = datetime.fromtimestamp(BASE + 3600, SEOUL).isoformat()
    csv = tmp_path / "samples.csv"
    exported = cli(
        "history", "export", "-c", str(cfg_path), "--from", start, "--to", end, "-o", str(csv)
    )
    assert exported.returncode == 0, exported.stderr
    replayed = cli("replay", "-c", str(cfg_path), str(csv))
    assert replayed.returncode == 0, replayed.stderr
    reports = [json.loads(line) for line in replayed.stdout.splitlines()]
    closed, still_open = reports[:-2], reports[-2:]

    for line in ("line1", "line2"):
        live_shifts = [p for t, p in live if t == f"{line}/kpi/shift"]
        replay_shifts = [p for p in closed if p["line"] == line]
        assert [p["window"]["name"] for p in live_shifts] == ["first"]
        assert len(replay_shifts) == 1
        assert live_shifts[0]["total_count"] > 0
        assert_same_report(live_shifts[0], replay_shifts[0])

        # The open window: the agent's last snapshot (at its stop) against replay's at the last
        # sample. Counts are equal; the live one is d later, and time buckets differ by d in
        # total, none by more than d, where d is at most one poll interval plus the time the
        # agent took to stop its sources (bounded at one poll + 2 real s here).
        last_live = [p for t, p in live if t == f"{line}/kpi"][-1]
        (snap,) = [p for p in still_open if p["line"] == line]
        assert snap["window"] == last_live["window"]
        assert {k: snap[k] for k in COUNTS} == {k: last_live[k] for k in COUNTS}
        d = datetime.fromisoformat(last_live["ts"]).timestamp() - (
            datetime.fromisoformat(snap["ts"]).timestamp()
        )
        assert 0 <= d <= POLL_AGENT_S + 2 * SPEED, d
        assert math.isclose(last_live["elapsed_s"] - snap["elapsed_s"], d, abs_tol=2e-3)
        buckets = [
            last_live[k] - snap[k] for k in ("run_time_s", "unknown_time_s", "planned_stop_s")
        ]
        buckets += [last_live["loss_time_s"][k] - v for k, v in snap["loss_time_s"].items()]
        assert all(-2e-3 <= b <= d + 2e-3 for b in buckets), buckets
        assert math.isclose(sum(buckets), d, abs_tol=5e-3)
