"""Two MQTT sinks, the plant's broker and a sponsor's, each a real Mosquitto: the plant receives
everything, the sponsor exactly what its `share` allows, and one broker's outage does not hold
up the other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import aio
from helpers.configs import two_lines_on_one_plc
from helpers.subscriber import Received, Subscriber

from edge_agent.app import Agent
from edge_agent.config.loader import load_config
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = {
    name: json.loads((REPO / "docs" / "schemas" / f"{name}.schema.json").read_text())
    for name in ("kpi", "state", "status")
}
CORE = {"schema", "site", "line", "ts", "seq"}
AGREED = {"oee", "availability", "total_count"}
# Exactly these keys, per topic, reach the sponsor: the agreed fields, the core ones, the mark.
SPONSOR_KEYS = {
    "kpi": CORE | {"window", "shared"} | AGREED,
    "kpi/shift": CORE | {"window", "shared"} | AGREED,
    "state": CORE | {"shared"},
}


def config_text(modbus_port: int, plant_port: int, sponsor_port: int, state: Path) -> str:
    return (
        two_lines_on_one_plc(modbus_port)
        + f"""
mqtt:
  - name: plant
    host: 127.0.0.1
    port: {plant_port}
    publish_interval: 200ms
    timeout: 2s
    backoff_initial: 100ms
    backoff_max: 300ms
  - name: sponsor
    host: 127.0.0.1
    port: {sponsor_port}
    client_id: busan-to-sponsor
    publish_interval: 200ms
    timeout: 2s
    backoff_initial: 100ms
    backoff_max: 300ms
    share:
      lines: [line1]
      topics: [kpi, kpi/shift, state]
      fields: [oee, availability, total_count]
prometheus: {{enabled: false}}
storage: {{dir: {state}}}
"""
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=5, speed=4.0, opcua_port=None) as s:
        yield s


def lines_of(received: list[Received], topic_suffix: str) -> set[str]:
    return {r.topic.split("/")[2] for r in received if r.topic.endswith("/" + topic_suffix)}


def check_plant(received: list[Received]) -> None:
    for r in received:
        doc = r.json()
        schema = doc["schema"].split("/")[1]
        jsonschema.validate(doc, SCHEMAS[schema])
        assert "shared" not in doc


def check_sponsor(received: list[Received]) -> None:
    """Every message the sponsor's broker saw: line1 only, agreed topics, exact key sets."""
    for r in received:
        doc = r.json()
        if r.topic == "edge-agent/sup/status":
            jsonschema.validate(doc, SCHEMAS["status"])
            continue
        prefix, site, line, *suffix = r.topic.split("/")
        assert (prefix, site, line) == ("edge-agent", "sup", "line1"), r.topic
        topic = "/".join(suffix)
        assert set(doc) == SPONSOR_KEYS[topic], (r.topic, sorted(doc))
        jsonschema.validate(doc, SCHEMAS["kpi" if topic.startswith("kpi") else "state"])


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    """helpers.aio.until with this module's deadline (an agent in the same process)."""
    await aio.until(predicate, timeout_s)


async def test_plant_gets_everything_sponsor_only_the_agreed_share(
    sim: Simulation, mosquitto_factory: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    plant, sponsor = mosquitto_factory(), mosquitto_factory()
    path = tmp_path / "agent.yaml"
    state = tmp_path / "state"
    path.write_text(config_text(sim.modbus_port, plant.port, sponsor.port, state))
    agent = Agent(load_config(path), drain_timeout_s=2.0)
    stop = asyncio.Event()
    task: asyncio.Task[int] | None = None
    try:
        async with (
            Subscriber(plant.host, plant.port, "#") as at_plant,
            Subscriber(sponsor.host, sponsor.port, "#") as at_sponsor,
        ):
            task = asyncio.create_task(agent.run(stop))
            await at_plant.wait_for(
                lambda _r: lines_of(at_plant.received, "kpi") == {"line1", "line2"}
            )
            await at_sponsor.wait_for(lambda r: r.topic.endswith("line1/kpi"))
            await at_sponsor.collect(len(at_sponsor.received) + 5)
        check_plant(at_plant.received)
        check_sponsor(at_sponsor.received)
        assert not any("line2" in r.topic for r in at_sponsor.received)
        assert (state / "outbox.sqlite").exists() and (state / "outbox-sponsor.sqlite").exists()

        # The sponsor's broker goes away: the plant's keeps getting everything meanwhile.
        sponsor.stop()
        sponsor_sink = agent.sinks["sponsor"]
        await until(lambda: sponsor_sink.sink is not None and not sponsor_sink.sink.connected)
        async with Subscriber(plant.host, plant.port, "edge-agent/sup/+/kpi") as at_plant:
            await at_plant.collect(20)
            assert lines_of(at_plant.received, "kpi") == {"line1", "line2"}
        assert sponsor_sink.outbox.depth() > 0  # waiting for its broker, on disk

        # Back: the sponsor's backlog drains, still reduced to the share.
        sponsor.start(attempts=3)
        async with Subscriber(sponsor.host, sponsor.port, "#") as at_sponsor:
            await until(lambda: sponsor_sink.sink is not None and sponsor_sink.sink.connected)
            await at_sponsor.collect(5)
        check_sponsor(at_sponsor.received)
        await until(lambda: sponsor_sink.outbox.depth() < 5)
    finally:
        stop.set()
        if task is not None:
            assert await task == 0
