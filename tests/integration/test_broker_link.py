"""The broker link as a real installation meets it: a link that drops right after CONNACK, and a
broker whose ACL silently drops the agent's messages (MQTT 3.1.1). The agent runs as a real
process against a real Mosquitto (behind a TCP proxy, or with an ACL file) and a Modbus
simulator."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers.agent_process import AgentProcess
from helpers.aio import until
from helpers.configs import two_lines_on_one_plc
from helpers.mosquitto import Mosquitto, MosquittoFactory
from helpers.net import free_port, metric
from helpers.proxy import Proxy

from simulators.runner import Simulation

pytestmark = pytest.mark.integration

FLAP_S = 20.0  # how long the proxy drops every link 1 s after it opened


def agent_config(
    modbus_port: int, broker_port: int, state: Path, *, metrics_port: int | None = None
) -> str:
    metrics = f"{{enabled: true, port: {metrics_port}}}" if metrics_port else "{enabled: false}"
    return (
        two_lines_on_one_plc(modbus_port)
        + f"""
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  publish_interval: 500ms
  keepalive: 2s
  timeout: 2s
  backoff_initial: 100ms
  backoff_max: 4s
prometheus: {metrics}
storage: {{dir: {state}}}
"""
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=5, speed=2.0, opcua_port=None) as s:
        yield s


def _broker_lines(log: str) -> list[str]:
    """The agent's log lines about its broker link (not the sources', not the shutdown's)."""
    return [
        line
        for line in log.splitlines()
        if "broker" in line and "source" not in line and "shutting down" not in line
    ]


async def test_a_link_dropped_after_every_connack_backs_off_and_logs_a_bounded_summary(
    sim: Simulation, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    async with Proxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.close_after_s = 1.0
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(agent_config(sim.modbus_port, proxy.port, tmp_path / "state"))
        agent = AgentProcess(cfg, stop_timeout_s=40)
        await agent.start()
        try:
            await until(lambda: proxy.connections > 0, 30)
            await asyncio.sleep(FLAP_S)  # the fault: a broker that drops every link for 20 s
            opened = list(proxy.accepted_at)
            flapping_log = agent.output()
            # The broker behaves again: the link holds and the agent says so, once.
            proxy.close_after_s = None
            await until(lambda: "stable again" in agent.output(), 60)
        finally:
            code = await agent.stop()
        assert code == 0, agent.output()
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(opened)]
    lines = _broker_lines(flapping_log)
    print(f"\nflapping {FLAP_S:g} s: {len(opened)} connections, gaps {gaps}, {len(lines)} lines:")
    print("\n".join(lines))
    # Today's backoff reset on every CONNACK made this ~34 links a minute, 3 lines each.
    assert len(opened) <= 10, gaps
    assert gaps[-1] > 2 * gaps[0], gaps  # the delay grew
    assert len(lines) <= 5, "\n".join(lines)
    log = agent.output()
    assert "Future exception was never retrieved" not in log, log
    assert "Traceback" not in log, log
    assert log.count("unstable") >= 1, log
    assert log.count("stable again") == 1, log
    assert re.search(r"unstable: \d+ drop\(s\) in \d+ s", log), log


async def test_an_acl_that_silently_drops_our_messages_is_reported_once_and_counted(
    sim: Simulation, mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """MQTT 3.1.1 (the agent's default) and a topic prefix outside the broker's ACL: Mosquitto
    acknowledges every publish and delivers none. The agent says so once, in words, and its
    metrics count what went into the void."""
    assert sim.modbus_port is not None
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite another-prefix/#\n")
    broker = mosquitto_factory(extra_conf=f"acl_file {acl}\n")
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        agent_config(sim.modbus_port, broker.port, tmp_path / "state", metrics_port=port)
    )
    agent = AgentProcess(cfg, stop_timeout_s=40)
    labels = 'sink="default"'
    await agent.start()
    try:
        await until(lambda: "never delivered our own 'online'" in agent.output(), 30)
        await until(lambda: metric(port, "edge_agent_mqtt_delivery_unconfirmed", labels) == 1, 15)
        await until(
            lambda: (metric(port, "edge_agent_mqtt_published_unconfirmed_total", labels) or 0) >= 5,
            30,
        )
        unconfirmed = metric(port, "edge_agent_mqtt_published_unconfirmed_total", labels)
        published = metric(port, "edge_agent_mqtt_published_total", labels)
    finally:
        code = await agent.stop()
    assert code == 0, agent.output()
    log = agent.output()
    print(f"\nACL drops everything: published {published}, unconfirmed {unconfirmed}")
    assert log.count("never delivered our own 'online'") == 1, log
    assert "the broker's ACL probably denies publishing to edge-agent/sup/status" in log, log
    assert "Traceback" not in log, log
