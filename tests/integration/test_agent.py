"""The whole chain: simulators (Modbus TCP + OPC UA) → agent process → Mosquitto → a subscriber.

The agent runs as a real process (``python -m edge_agent.cli run -c FILE``) so that signals, exit
codes and the last will are the real ones.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
from helpers.agent_process import AgentProcess
from helpers.contract import contract

from simulators.runner import Simulation

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
PREFIX = "edge-agent"
SITE = "it-site"
SPEED = 4.0
IDEAL_S = 1.0 / SPEED  # the simulated machines' ideal cycle time, in real seconds

pytestmark = pytest.mark.integration
_COLLECTORS = itertools.count(1)


def agent_config(
    sim: Simulation, broker_port: int, state_dir: Path, metrics_port: int | None = None
) -> str:
    # The simulated machines make a part every ~1 s of simulated time; at speed X that is 1/X s.
    ideal_ms = round(1000 * IDEAL_S)
    return f"""
version: 1
site: {SITE}
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {sim.modbus_port}
    unit_id: 1
    poll_interval: 200ms
    timeout: 1s
    backoff_initial: 200ms
    backoff_max: 1s
    tags:
      - {{name: state, table: holding, address: 0, type: uint16}}
      - {{name: total, table: holding, address: 1, type: uint16}}
      - {{name: rejects, table: holding, address: 2, type: uint16}}
  - name: plc2
    protocol: opcua
    endpoint: {sim.opcua_endpoint}
    poll_interval: 200ms
    timeout: 2s
    backoff_initial: 200ms
    backoff_max: 1s
    tags:
      - {{name: state, node: "ns=2;s=Line2.State"}}
      - {{name: total, node: "ns=2;s=Line2.TotalCount"}}
      - {{name: rejects, node: "ns=2;s=Line2.RejectCount"}}
lines:
  - name: line1
    timezone: Asia/Seoul
    ideal_cycle_time: {ideal_ms}ms
    signals:
      state:
        tag: plc1.state
        map: {{1: running, 2: idle, 3: fault, 4: planned_stop, 5: changeover}}
      total_count: {{tag: plc1.total, rollover: 65536}}
      reject_count: {{tag: plc1.rejects, rollover: 65536}}
  - name: line2
    timezone: Asia/Seoul
    ideal_cycle_time: {ideal_ms}ms
    signals:
      state:
        tag: plc2.state
        map: {{1: running, 2: idle, 3: fault, 4: planned_stop, 5: changeover}}
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
  enabled: {"true" if metrics_port else "false"}
  port: {metrics_port or 9108}
storage:
  dir: {state_dir}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


class Collector:
    """Subscribes to everything under the site and keeps the decoded messages."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        # One client id per collector: the late one must not take over the first one's
        # session (amqtt then delivers the retained messages twice).
        self.identifier = f"it-collector-{next(_COLLECTORS)}"
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def _run(self) -> None:
        async with aiomqtt.Client(self.host, self.port, identifier=self.identifier) as client:
            await client.subscribe(f"{PREFIX}/{SITE}/#", qos=1)
            self._subscribed.set()
            async for msg in client.messages:
                payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                self.messages.append((str(msg.topic), payload, bool(msg.retain)))
                self._changed.set()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._subscribed.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def kpis(self, line: str) -> list[dict[str, Any]]:
        return [p for t, p, _ in self.messages if t == f"{PREFIX}/{SITE}/{line}/kpi"]

    def status(self) -> list[str]:
        return [p["status"] for t, p, _ in self.messages if t == f"{PREFIX}/{SITE}/status"]


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=7, speed=SPEED) as s:
        yield s


async def test_kpis_flow_end_to_end_and_sigterm_leaves_offline(
    sim: Simulation, broker: Any, tmp_path: Path
) -> None:
    # Against Mosquitto and amqtt (the `broker` fixture): nothing may depend on one broker.
    cfg = tmp_path / "agent.yaml"
    metrics_port = free_port()
    cfg.write_text(agent_config(sim, broker.port, tmp_path / "state", metrics_port))
    kpi_schema = json.loads((SCHEMAS / "kpi.schema.json").read_text())
    api = contract()

    async with Collector(broker.host, broker.port) as col:
        agent = AgentProcess(cfg)
        await agent.start()
        try:

            def enough() -> bool:
                return all(
                    len(col.kpis(line)) >= 3
                    and any(k["total_count"] > 0 and k["oee"] is not None for k in col.kpis(line))
                    for line in ("line1", "line2")
                )

            await col.wait_for(enough, timeout_s=60)
            assert "online" in col.status()
            # Gauges are mirrored about once a second: poll until they show, with a deadline.
            expected = (
                'edge_agent_source_up{source="plc1"} 1.0',
                'edge_agent_source_up{source="plc2"} 1.0',
                'edge_agent_mqtt_connected{sink="default"} 1.0',
            )
            async with asyncio.timeout(15):
                while True:
                    metrics = await asyncio.to_thread(scrape, metrics_port)
                    if all(sample in metrics for sample in expected):
                        break
                    await asyncio.sleep(0.2)  # the next scrape, not synchronisation
            for name in (
                'edge_agent_poll_duration_seconds_count{source="plc1"}',
                'edge_agent_line_kpi_ratio{kpi="oee",line="line1"}',
                'edge_agent_line_parts_total{kind="good",line="line2"}',
                "edge_agent_outbox_messages",
                "edge_agent_mqtt_published_total",
            ):
                assert name in metrics, name
        finally:
            code = await agent.stop()
        assert code == 0, agent.output()
        await col.wait_for(lambda: bool(col.status()) and col.status()[-1] == "offline", 10)

    for line in ("line1", "line2"):
        kpis = col.kpis(line)
        seqs = [k["seq"] for k in kpis]
        assert seqs == sorted(set(seqs)), f"{line}: seq not strictly increasing: {seqs}"
        for k in kpis:
            jsonschema.validate(k, kpi_schema)
            assert k["site"] == SITE and k["line"] == line
            if k["oee"] is not None:
                # OEE = good × ideal / known planned time, measured, not clamped. The simulated
                # machine never beats its ideal cycle, so OEE exceeds 1 only by counting
                # granularity: at most the parts of one poll and one simulator step (2 parts).
                known_s = k["planned_time_s"] - k["unknown_time_s"]
                assert k["oee"] >= 0.0
                assert k["good_count"] * IDEAL_S <= known_s + 2 * IDEAL_S, k
        assert kpis[-1]["total_count"] >= kpis[0]["total_count"]
    # Every message (kpi, state, status) holds to its channel's schema in docs/asyncapi.yaml.
    for topic, payload, _ in col.messages:
        api.validate(topic, payload)
    assert {api.channel(t).name for t, _, _ in col.messages} >= {"kpi", "status"}

    # The retained status a newcomer sees after the agent left is 'offline'.
    async with Collector(broker.host, broker.port) as late:

        def retained_kpis() -> list[str]:
            return sorted(t for t, _, retain in late.messages if t.endswith("/kpi") and retain)

        await late.wait_for(lambda: bool(late.status()) and len(retained_kpis()) >= 2, 10)
        assert late.status() == ["offline"]
        # What the broker kept is exactly what the contract says is retained.
        for topic, payload, retain in late.messages:
            assert retain and api.validate(topic, payload).retain, topic
        assert retained_kpis() == [
            f"{PREFIX}/{SITE}/line1/kpi",
            f"{PREFIX}/{SITE}/line2/kpi",
        ]

    # The SCM-side view of the same broker: both lines, their agent gone offline.
    watch = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "edge_agent.cli", "watch", "--once", "--port", str(broker.port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await watch.communicate()
    assert watch.returncode == 0, err.decode()
    table = [r.split() for r in out.decode().splitlines()]
    assert table[0][:3] == ["SITE", "LINE", "AGENT"], out
    assert [r[:3] for r in table[1:]] == [[SITE, "line1", "offline"], [SITE, "line2", "offline"]]
    assert all(r[-1].startswith("OFFLINE") for r in table[1:]), out


async def test_seq_continues_across_agent_restarts(
    sim: Simulation, mosquitto: Any, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(agent_config(sim, mosquitto.port, tmp_path / "state"))
    per_line: dict[str, list[int]] = defaultdict(list)
    async with Collector(mosquitto.host, mosquitto.port) as col:
        agent = AgentProcess(cfg)
        # The second run on uvloop (`--event-loop uvloop`): the same agent, signals included.
        for loop in ("asyncio", "uvloop"):
            before = len(col.kpis("line1"))
            offline_before = col.status().count("offline")
            await agent.start("--event-loop", loop)
            try:
                await col.wait_for(lambda b=before: len(col.kpis("line1")) >= b + 2, 60)
            finally:
                code = await agent.stop()
            assert code == 0, agent.output()
            await col.wait_for(lambda n=offline_before: col.status().count("offline") > n, 10)
        assert "event loop: uvloop" in agent.output()
        for topic, payload, _ in col.messages:
            if "seq" in payload:
                per_line[topic.split("/")[2]].append(payload["seq"])
    seqs = per_line["line1"]
    # One subscription across both runs: every message of the line, in order, seq never repeats.
    assert seqs == sorted(set(seqs)), seqs
    assert len(seqs) >= 4


async def test_run_once_prints_samples_and_kpis(sim: Simulation, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(agent_config(sim, 1, tmp_path / "state"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "run",
        "--once",
        "-c",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "plc1.total\t" in text and "plc2.total\t" in text
    reports = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [r["line"] for r in reports] == ["line1", "line2"]
    assert all(r["schema"] == "edge-agent/kpi/1" for r in reports)


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\n"
        "site: s1\n"
        "sources:\n"
        "  - name: plc1\n"
        "    protocol: modbus\n"
        "    host: 127.0.0.1\n"
        "    port: 70000\n"
        "    poll_intervall: 1s\n"
        "    tags: [{name: t, address: 1}]\n"
        "lines: []\n"
        "mqtt: {host: 127.0.0.1, qos: 7}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 78
    assert f"{bad}:7:" in res.stderr and "sources[0].port" in res.stderr
    assert f"{bad}:8:" in res.stderr and "did you mean 'poll_interval'" in res.stderr
    assert "mqtt.qos" in res.stderr
