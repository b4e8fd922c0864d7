"""Order commands over MQTT: the agent (in process) subscribes to ``cmd/order`` on its broker
when ``mqtt.commands`` is true, applies valid commands, rejects invalid ones with a reply, and
the current order survives a restart through the engine state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
from helpers.mosquitto import Mosquitto
from helpers.subscriber import Received, Subscriber

from edge_agent.app import Agent
from edge_agent.config.loader import load_config_text
from edge_agent.sinks.prometheus import Metrics

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


async def _until_subscribed(port: int, replies: Subscriber) -> None:
    """Publish probe commands until one is answered: the agent's subscription is active (a
    command sent before that would be lost: commands are not retained)."""
    async with asyncio.timeout(10.0):
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
