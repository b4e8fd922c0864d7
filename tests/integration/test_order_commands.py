"""Order commands over MQTT: the agent (in process) subscribes to ``cmd/order`` on its broker
when ``mqtt.commands`` is true, applies valid commands, rejects invalid ones with a reply, and
the current order survives a restart through the engine state. Hostile commands and PLC order
values out of range against the agent as a real process, with the simulator as its PLC."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
from helpers.agent_process import AgentProcess
from helpers.mosquitto import Mosquitto
from helpers.subscriber import Received, Subscriber

from edge_agent.app import Agent
from edge_agent.config.loader import load_config_text
from edge_agent.metrics import Metrics
from simulators.runner import Simulation

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REPLY = json.loads((SCHEMAS / "cmd-reply.schema.json").read_text())
ORDER = json.loads((SCHEMAS / "order.schema.json").read_text())
BASE = "edge-agent/plant1/line1"


def config_text(port: int, state_dir: Path, *, commands: bool) -> str:
    return f"""
version: 1
site: plant1
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals:
      total_count: plc.total
mqtt:
  host: 127.0.0.1
  port: {port}
  publish_interval: 200ms
  commands: {"true" if commands else "false"}
prometheus:
  enabled: false
storage:
  dir: {state_dir}
"""


async def publish(port: int, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port, timeout=5.0) as client:
        await client.publish(f"{BASE}/cmd/order", payload, qos=1, retain=retain, timeout=5.0)


class Running:
    """The agent as a task; stops it (and waits) on exit."""

    def __init__(self, text: str) -> None:
        self.agent = Agent(load_config_text(text), metrics=Metrics())
        self.stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Agent:
        self.task = asyncio.create_task(self.agent.run(self.stop))
        async with asyncio.timeout(10.0):
            await self.agent.ready.wait()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        async with asyncio.timeout(20.0):
            assert await self.task == 0


def reply_of(r: Received) -> dict[str, Any]:
    doc: dict[str, Any] = r.json()
    jsonschema.validate(doc, REPLY)
    return doc


async def test_commands_are_applied_rejected_and_kept_across_a_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = mosquitto.port
    text = config_text(port, tmp_path / "state", commands=True)
    async with (
        Subscriber("127.0.0.1", port, f"{BASE}/cmd/order/reply") as replies,
        Running(text) as agent,
    ):
        # The sink subscribes once connected: wait for its retained online status first.
        async with Subscriber("127.0.0.1", port, "edge-agent/plant1/status") as status:
            await status.wait_for(lambda r: r.json()["status"] == "online")
        await _until_subscribed(port, replies)
        await publish(port, b'{"order_id": "PO-9", "target_quantity": 0}')
        await publish(port, b"not json")
        command = {"order_id": "PO-9", "product": "A-100", "target_quantity": 500}
        await publish(port, json.dumps({**command, "request_id": "r-1"}).encode())
        bad_target = reply_of(await replies.wait_for(lambda r: _errors(r, "must be an integer")))
        assert bad_target["ok"] is False
        assert bad_target["errors"] == ["target_quantity: must be an integer >= 1"]
        bad_json = reply_of(await replies.wait_for(lambda r: _errors(r, "not UTF-8 JSON")))
        assert bad_json["ok"] is False
        ok = reply_of(await replies.wait_for(lambda r: r.json().get("request_id") == "r-1"))
        assert (ok["ok"], ok["order_id"], ok["errors"]) == (True, "PO-9", [])
        assert agent.runner is not None
        assert agent.runner.engines["line1"].state_dict()["order"]["order_id"] == "PO-9"
    # After a restart the order is still current: the retained order topic says so.
    async with Running(text), Subscriber("127.0.0.1", port, f"{BASE}/order") as orders:
        fresh = await orders.wait_for(lambda r: r.json()["ts"] is not None)
        doc = fresh.json()
        jsonschema.validate({**doc}, ORDER)
        assert (doc["order_id"], doc["product"], doc["target_quantity"]) == (
            "PO-9",
            "A-100",
            500,
        )


def _errors(r: Received, text: str) -> bool:
    return any(text in e for e in r.json()["errors"])


async def _until_subscribed(port: int, replies: Subscriber, timeout_s: float = 10.0) -> None:
    """Publish probe commands until one is answered: the agent's subscription is active (a
    command sent before that would be lost: commands are not retained)."""
    async with asyncio.timeout(timeout_s):
        while True:
            await publish(port, b'{"probe": true}')
            try:
                await replies.wait_for(lambda r: _errors(r, "probe"), 0.5)
                return
            except TimeoutError:
                continue


async def test_without_commands_enabled_nothing_subscribes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = mosquitto.port
    text = config_text(port, tmp_path / "state", commands=False)
    async with (
        Subscriber("127.0.0.1", port, f"{BASE}/cmd/order/reply") as replies,
        Running(text) as agent,
    ):
        async with Subscriber("127.0.0.1", port, "edge-agent/plant1/status") as status:
            await status.wait_for(lambda r: r.json()["status"] == "online")
        await publish(port, b'{"order_id": "PO-1", "target_quantity": 5}')
        # A broker round trip later (a reply would have been published by then), nothing came.
        async with Subscriber("127.0.0.1", port, "edge-agent/plant1/line1/kpi") as kpi:
            await kpi.collect(2)
        assert replies.received == []
        assert agent.runner is not None
        assert agent.runner.engines["line1"].state_dict()["order"] is None


# -- hostile input against the agent as a real process, with the simulator as the PLC --------


def process_config(
    modbus_port: int, broker_port: int, state_dir: Path, *, order_tags: bool = False
) -> str:
    """line1 counts the simulator's parts; with ``order_tags`` its order comes from the PLC:
    the order number register (13) and, as the target, a uint64 over registers 5..8 (the
    float32 ideal cycle time and the energy register: about 4.6e18, as a tag with the wrong
    type reads)."""
    order = "\n      order: {id: plc.order, target: plc.target}" if order_tags else ""
    return f"""
version: 1
site: plant1
sources:
  - name: plc
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    poll_interval: 200ms
    timeout: 1s
    tags:
      - {{name: total, address: 1}}
      - {{name: order, address: 13}}
      - {{name: target, address: 5, type: uint64}}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals:
      total_count: {{tag: plc.total, rollover: 65536}}{order}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  publish_interval: 200ms
  commands: true
prometheus:
  enabled: false
storage:
  dir: {state_dir}
"""


# name -> (payload, a words of the error the reply must carry)
HOSTILE = {
    "4,000 [": (b"[" * 4000, "nests arrays or objects more than 2 levels deep"),
    "5,000 bytes": (
        b'{"order_id": "PO-1", "target_quantity": 5, "x": "' + b"x" * 5000 + b'"}',
        "larger than 4096 bytes",
    ),
    "bad UTF-8": (b'{"order_id": "PO-\xff\xfe", "target_quantity": 5}', "not UTF-8 JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object, got list"),
    "wrong types": (b'{"order_id": 5, "target_quantity": "x"}', "order_id: must be a non-empty"),
    "target 10^12": (
        b'{"order_id": "PO-BIG", "target_quantity": 1000000000000, "request_id": "big"}',
        "target_quantity: at most 1000000000",
    ),
    "target 10^309": (
        b'{"order_id": "PO-BIG", "target_quantity": 1' + b"0" * 309 + b"}",
        "target_quantity: at most 1000000000",
    ),
}


async def test_hostile_commands_get_error_replies_and_the_agent_keeps_publishing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = mosquitto.port
    async with Simulation(lines=1, seed=3, speed=4.0, opcua_port=None) as sim:
        assert sim.modbus_port is not None
        config = tmp_path / "agent.yaml"
        config.write_text(process_config(sim.modbus_port, port, tmp_path / "state"))
        agent = AgentProcess(config)
        async with (
            Subscriber("127.0.0.1", port, f"{BASE}/cmd/order/reply") as replies,
            Subscriber("127.0.0.1", port, f"{BASE}/kpi") as kpis,
        ):
            await agent.start()
            try:
                await _until_subscribed(port, replies, timeout_s=60.0)
                for name, (payload, error) in HOSTILE.items():
                    await publish(port, payload)
                    reply = reply_of(await replies.wait_for(lambda r, e=error: _errors(r, e), 20.0))
                    assert reply["ok"] is False and "order_id" not in reply, name
                    assert agent.alive, agent.output()
                big = next(
                    r.json() for r in replies.received if r.json().get("request_id") == "big"
                )
                assert big["errors"] == ["target_quantity: at most 1000000000"]
                # Still applying commands, and still publishing the line's KPIs.
                await publish(
                    port, b'{"order_id": "PO-9", "target_quantity": 500, "request_id": "ok"}'
                )
                ok = reply_of(
                    await replies.wait_for(lambda r: r.json().get("request_id") == "ok", 20.0)
                )
                assert (ok["ok"], ok["order_id"]) == (True, "PO-9")
                seen = len(kpis.received)
                await kpis.collect(seen + 3, 20.0)
                assert agent.alive, agent.output()
            finally:
                code = await agent.stop()
    log = agent.output()
    assert code == 0, log
    assert "Traceback" not in log, log
    rejected = [
        line for line in log.splitlines() if "order command" in line and "probe" not in line
    ]
    # One line per hostile command, each naming what was wrong.
    assert len(rejected) == len(HOSTILE), rejected
    for line, (_, error) in zip(rejected, HOSTILE.values(), strict=True):
        assert "line 'line1': order command" in line and error in line, line


async def test_a_plc_order_target_out_of_range_is_bad_data_across_a_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The order target tag reads ~4.6e18: the order is published without a target and with
    the warning, the agent says so once per start, and survives a restart (no restart loop)."""
    port = mosquitto.port
    async with Simulation(lines=1, seed=4, speed=4.0, opcua_port=None) as sim:
        assert sim.modbus_port is not None
        config = tmp_path / "agent.yaml"
        config.write_text(
            process_config(sim.modbus_port, port, tmp_path / "state", order_tags=True)
        )
        agent = AgentProcess(config)
        async with Subscriber("127.0.0.1", port, f"{BASE}/#") as line_topics:
            for run in (1, 2):
                started = time.time()
                await agent.start()
                try:
                    # Messages of this run: published live (not retained) since its start.
                    def fresh(r: Received, topic: str, since: float = started) -> bool:
                        return (
                            r.topic == f"{BASE}/{topic}"
                            and not r.retain
                            and datetime.fromisoformat(r.json()["ts"]).timestamp() >= since
                        )

                    order = (
                        await line_topics.wait_for(
                            lambda r: fresh(r, "order") and r.json().get("warnings"),
                            60.0,
                        )
                    ).json()
                    jsonschema.validate(order, ORDER)
                    assert order["order_id"] is not None, order
                    assert order["target_quantity"] is None, order
                    assert order["remaining_quantity"] is None
                    assert order["warnings"] == ["order_tag_invalid"]
                    # The agent goes on: more KPI snapshots after the order.
                    after = datetime.fromisoformat(order["ts"]).timestamp()
                    await line_topics.wait_for(lambda r, a=after: fresh(r, "kpi", a), 20.0)
                    assert agent.alive, agent.output()
                finally:
                    code = await agent.stop()
                assert code == 0, agent.output()
                notices = [
                    line
                    for line in agent.output().splitlines()
                    if "order target tag plc.target reads" in line
                ]
                assert len(notices) == run, notices  # once per start
    log = agent.output()
    assert "Traceback" not in log, log
    assert "ignored as bad data, the order stays as it was" in notices[0]
    assert "4575657" in notices[0]  # the value read, for whoever checks the tag's type
