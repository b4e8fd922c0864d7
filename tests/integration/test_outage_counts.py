"""A Modbus outage mid-run on a running line (issue: performance 1.48 after a 15 s outage):
the PLC goes on counting while the agent cannot read it; the parts it made then are counted
(``unknown_time_count``) but not paired with run time, so no ``performance_above_ideal``
comes from the outage alone. Real parts: the Modbus simulator behind a TCP proxy that cuts the
link, the agent in this process, a real Mosquitto."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.proxy import Proxy
from helpers.subscriber import Subscriber

from edge_agent.app import Agent
from edge_agent.config.loader import load_config
from simulators.model import LineParams
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

PREFIX = "edge-agent"
SITE = "outage"
SPEED = 4.0  # the simulated line: a 1 s cycle at 4× speed (the agent's 250 ms), 2 % slower
STEADY = LineParams(
    jitter=(1.02, 1.02),
    reject_probability=0.0,
    mean_time_between_microstops_s=math.inf,
    mean_time_between_faults_s=math.inf,
    mean_time_between_planned_stops_s=math.inf,
    mean_time_between_changeovers_s=math.inf,
)
OUTAGE_S = 5.0  # about 20 parts made unseen


def config(modbus_port: int, broker_port: int, state_dir: Path) -> str:
    return f"""
version: 1
site: {SITE}
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    poll_interval: 100ms
    timeout: 300ms
    backoff_initial: 100ms
    backoff_max: 500ms
    tags:
      - {{name: state1, address: 0}}
      - {{name: total1, address: 1}}
lines:
  - name: line1
    ideal_cycle_time: 250ms
    signals:
      state: {{tag: plc1.state1, map: {{1: running, 2: idle, 3: fault, 4: planned_stop}}}}
      total_count: {{tag: plc1.total1, rollover: 65536}}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  topic_prefix: {PREFIX}
  publish_interval: 200ms
  backoff_initial: 100ms
  backoff_max: 1s
prometheus: {{enabled: false}}
storage:
  dir: {state_dir}
"""


async def test_a_modbus_outage_on_a_running_line_is_not_performance_above_ideal(
    mosquitto: Any, tmp_path: Path
) -> None:
    async with (
        Simulation(lines=1, seed=5, speed=SPEED, opcua_port=None, params=STEADY) as sim,
        Proxy("127.0.0.1", sim.modbus_port or 0) as proxy,
    ):
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(config(proxy.port, mosquitto.port, tmp_path / "state"))
        agent = Agent(load_config(cfg), drain_timeout_s=5.0)
        stop = asyncio.Event()
        topic = f"{PREFIX}/{SITE}/line1/kpi"
        async with Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/{SITE}/#") as sub:
            run = asyncio.create_task(agent.run(stop))
            try:

                def kpi(pred: Any) -> Any:
                    return lambda r: r.topic == topic and pred(r.json())

                # Running for a while, the data known.
                before = await sub.wait_for(kpi(lambda p: p["run_time_s"] >= 8), timeout_s=30)
                # The link is cut and new connections refused: the PLC goes on counting.
                proxy.refuse = True
                proxy.cut()
                down = await sub.wait_for(kpi(lambda p: p["state"] == "unknown"), timeout_s=15)
                await asyncio.sleep(OUTAGE_S)  # the outage lasts this long
                proxy.refuse = False
                up_at = time.time()
                back = await sub.wait_for(
                    kpi(lambda p: p["state"] == "running" and p["unknown_time_count"] > 0),
                    timeout_s=15,
                )
                # A few more seconds of production after the outage.
                run_s = back.json()["run_time_s"]
                await sub.wait_for(kpi(lambda p: p["run_time_s"] >= run_s + 8), timeout_s=15)
            finally:
                stop.set()
                code = await run
            assert code == 0
        after: list[dict[str, Any]] = [
            r.json() for r in sub.received[sub.received.index(down) :] if r.topic == topic
        ]
    last = after[-1]
    # The time before the agent started is unknown too: the outage is the difference.
    outage_s = last["unknown_time_s"] - before.json()["unknown_time_s"]
    print(
        f"\noutage {outage_s:.1f} s (reconnected {time.time() - up_at:.1f} s ago): total"
        f" {last['total_count']}, unknown_time_count {last['unknown_time_count']}, run_time_s"
        f" {last['run_time_s']}, performance {last['performance']}"
    )
    # The outage's parts are counted: about its length at the line's rate (4 / 1.02 per s).
    assert outage_s >= OUTAGE_S
    rate = 1 / 0.25 / 1.02
    assert outage_s * rate * 0.7 <= last["unknown_time_count"] <= (outage_s + 1) * rate * 1.3
    # Paired with run time, the parts made in known time keep the line's rate (0.98); paired
    # as before, the outage's parts would have pushed performance far above 1.
    assert last["performance"] is not None and 0.9 <= last["performance"] <= 1.0
    assert all("performance_above_ideal" not in p["warnings"] for p in after), [
        (p["ts"], p["performance"]) for p in after if "performance_above_ideal" in p["warnings"]
    ]
