"""Fault injection against the whole agent (a real process), real Mosquitto and the simulators.

Each test prints what it measured (messages published and received, gaps, duplicates, reconnect
times); run with ``-s`` to see it. Gaps must be 0: a subscriber that holds a persistent session
sees every line's ``seq`` without a hole, whatever happened to the broker or the agent.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from helpers.agent_process import AgentProcess
from helpers.mosquitto import Mosquitto
from helpers.net import free_port, metric
from helpers.proxy import Proxy

from simulators.runner import Simulation

pytestmark = pytest.mark.integration

PREFIX = "edge-agent"
SITE = "faults"
SPEED = 4.0
OUTAGE_S = 20.0  # how long the broker stays down under load


def agent_config(
    modbus_port: int,
    broker_port: int,
    state_dir: Path,
    *,
    metrics_port: int | None = None,
    publish_interval: str = "200ms",
    extra_storage: str = "",
) -> str:
    metrics = f"{{enabled: true, port: {metrics_port}}}" if metrics_port else "{enabled: false}"
    return f"""
version: 1
site: {SITE}
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    poll_interval: 100ms
    timeout: 500ms
    backoff_initial: 100ms
    backoff_max: 1s
    tags:
      - {{name: state1, address: 0}}
      - {{name: total1, address: 1}}
      - {{name: state2, address: 100}}
      - {{name: total2, address: 101}}
lines:
  - name: line1
    ideal_cycle_time: 250ms
    signals:
      state: {{tag: plc1.state1, map: {{1: running, 2: idle, 3: fault, 4: planned_stop}}}}
      total_count: {{tag: plc1.total1, rollover: 65536}}
  - name: line2
    ideal_cycle_time: 250ms
    signals:
      state: {{tag: plc1.state2, map: {{1: running, 2: idle, 3: fault, 4: planned_stop}}}}
      total_count: {{tag: plc1.total2, rollover: 65536}}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  topic_prefix: {PREFIX}
  publish_interval: {publish_interval}
  keepalive: 5s
  timeout: 2s
  backoff_initial: 100ms
  backoff_max: 1s
prometheus: {metrics}
storage:
  dir: {state_dir}
{extra_storage}
"""


class PersistentSubscriber:
    """QoS 1 subscriber with a persistent session (clean_session false) that reconnects by
    itself, so a broker outage loses nothing on its side either."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.kpis: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        self.status: list[str] = []
        self.connects = 0
        self._changed = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier="faults-subscriber",
                    clean_session=False,
                    timeout=5.0,
                ) as client:
                    await client.subscribe(f"{PREFIX}/{SITE}/#", qos=1)
                    self.connects += 1
                    self._subscribed.set()
                    async for msg in client.messages:
                        self._take(str(msg.topic), bytes(msg.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _take(self, topic: str, raw: bytes) -> None:
        payload = json.loads(raw)
        parts = topic.split("/")
        if parts[-1] == "status":
            self.status.append(payload["status"])
        else:
            line = parts[2]
            self.seqs[line].append(payload["seq"])
            if parts[3:] == ["kpi"]:
                self.kpis[line].append((time.monotonic(), payload))
        self._changed.set()

    async def __aenter__(self) -> PersistentSubscriber:
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

    def count(self) -> int:
        return sum(len(v) for v in self.seqs.values())

    def report(self) -> dict[str, dict[str, int]]:
        """Per line: received, distinct seqs, duplicates, gaps (missing seqs in the range)."""
        out: dict[str, dict[str, int]] = {}
        for line, seqs in self.seqs.items():
            distinct = sorted(set(seqs))
            span = distinct[-1] - distinct[0] + 1
            out[line] = {
                "received": len(seqs),
                "distinct": len(distinct),
                "duplicates": len(seqs) - len(distinct),
                "gaps": span - len(distinct),
            }
            # In order, apart from resends: a resent run starts again lower, never skips ahead.
            high = seqs[0] - 1
            for s in seqs:
                assert s <= high + 1, f"{line}: seq {s} arrived before {high + 1}"
                high = max(high, s)
        return out


def persistent_broker(factory: Any, tmp_path: Path) -> Mosquitto:
    store = tmp_path / "mosquitto-store"
    store.mkdir()
    # The subscriber's session and its queued messages survive a broker restart.
    broker: Mosquitto = factory(
        extra_conf=f"persistence true\npersistence_location {store}/\nautosave_interval 1\n"
    )
    return broker


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=11, speed=SPEED, opcua_port=None) as s:
        yield s


async def test_broker_down_20s_under_load_loses_nothing(
    sim: Simulation, mosquitto_factory: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    broker = persistent_broker(mosquitto_factory, tmp_path)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(agent_config(sim.modbus_port, broker.port, tmp_path / "state"))
    agent = AgentProcess(cfg, stop_timeout_s=40)
    async with PersistentSubscriber(broker.host, broker.port) as sub:
        await agent.start()
        try:
            await sub.wait_for(lambda: all(len(sub.seqs[x]) >= 5 for x in ("line1", "line2")), 60)
            broker.stop()
            before = sub.count()
            await asyncio.sleep(OUTAGE_S)  # the fault itself: the broker stays away this long
            assert agent.alive, agent.output()
            restarted = time.monotonic()
            broker.start(attempts=1)
            await sub.wait_for(lambda: sub.count() > before, 60)
            first_after_s = time.monotonic() - restarted
            # Let the agent catch up and make fresh reports, then stop it (it drains).
            await sub.wait_for(
                lambda: all(t > restarted + 2 for t, _ in sub.kpis["line1"][-1:]), 60
            )
        finally:
            code = await agent.stop()
        assert code == 0, agent.output()
        await sub.wait_for(lambda: bool(sub.status) and sub.status[-1] == "offline", 20)
    report = sub.report()
    print(
        f"\nbroker outage {OUTAGE_S:.0f} s: {report}; first message {first_after_s:.2f} s after"
        f" the broker restart; received during/after the outage: {sub.count() - before}"
    )
    for line in ("line1", "line2"):
        assert report[line]["gaps"] == 0, report
        # An outage of 20 s at 200 ms per snapshot: ~100 reports per line went through the outbox.
        assert report[line]["distinct"] >= OUTAGE_S / 0.2 * 0.8, report


async def test_sigkill_mid_publish_then_restart_loses_nothing(
    sim: Simulation, mosquitto_factory: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    broker = persistent_broker(mosquitto_factory, tmp_path)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        agent_config(sim.modbus_port, broker.port, tmp_path / "state", publish_interval="100ms")
    )
    agent = AgentProcess(cfg, stop_timeout_s=40)
    async with PersistentSubscriber(broker.host, broker.port) as sub:
        await agent.start()
        try:
            await sub.wait_for(lambda: len(sub.seqs["line1"]) >= 20, 60)
            killed_at = sub.count()
            assert await agent.stop(signal.SIGKILL) == -signal.SIGKILL
            # No DISCONNECT was sent: the broker publishes the last will.
            await sub.wait_for(lambda: "offline" in sub.status, 30)
            await agent.start()
            restarted = time.monotonic()
            await sub.wait_for(lambda: sub.status[-1] == "online", 30)
            reconnect_s = time.monotonic() - restarted
            await sub.wait_for(lambda: sub.count() >= killed_at + 40, 60)
        finally:
            code = await agent.stop()
        assert code == 0, agent.output()
        await sub.wait_for(lambda: sub.status[-1] == "offline", 20)
    report = sub.report()
    print(
        f"\nSIGKILL + restart: {report}; 'online' again {reconnect_s:.2f} s after the restart;"
        f" status sequence {sub.status}"
    )
    assert sub.status[:3] == ["online", "offline", "online"], sub.status
    for line in ("line1", "line2"):
        assert report[line]["gaps"] == 0, report


async def test_plc_killed_and_restarted_counts_unknown_time(mosquitto: Any, tmp_path: Path) -> None:
    plc_port = free_port()
    metrics_port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        agent_config(plc_port, mosquitto.port, tmp_path / "state", metrics_port=metrics_port)
    )
    agent = AgentProcess(cfg, stop_timeout_s=40)
    async with PersistentSubscriber(mosquitto.host, mosquitto.port) as sub:
        async with Simulation(lines=2, seed=5, speed=SPEED, modbus_port=plc_port, opcua_port=None):
            await agent.start()
            try:
                await sub.wait_for(
                    lambda: any(p["total_count"] > 0 for _, p in sub.kpis["line1"]), 60
                )
            except BaseException:
                await agent.stop()
                raise
        # The PLC is gone (its process state with it): the line's time becomes unknown.
        try:
            down_at = time.monotonic()
            await sub.wait_for(
                lambda: any(
                    t > down_at + 1 and p["state"] == "unknown" for t, p in sub.kpis["line1"]
                ),
                30,
            )
            async with Simulation(
                lines=2, seed=6, speed=SPEED, modbus_port=plc_port, opcua_port=None
            ):
                up_at = time.monotonic()

                def source_up() -> bool:
                    return metric(metrics_port, "edge_agent_source_up", 'source="plc1"') == 1

                async with asyncio.timeout(30):
                    while not source_up():  # noqa: ASYNC110 - a metric, polled with a deadline
                        await asyncio.sleep(0.05)
                reconnect_s = time.monotonic() - up_at
                await sub.wait_for(
                    lambda: any(
                        t > up_at + 1 and p["state"] != "unknown" for t, p in sub.kpis["line1"]
                    ),
                    30,
                )
                last = sub.kpis["line1"][-1][1]
        finally:
            code = await agent.stop()
        assert code == 0, agent.output()
    print(
        f"\nPLC restart: source up {reconnect_s:.2f} s after the PLC came back (backoff cap 1 s);"
        f" unknown_time_s {last['unknown_time_s']}, data_coverage {last['data_coverage']}"
    )
    assert last["unknown_time_s"] > 0
    assert last["data_coverage"] is not None and last["data_coverage"] < 1
    # One warning when the PLC went away, one when it came back; not one per retry.
    log = agent.output()
    # (The simulator stops before the agent at the end of the test: a second loss may follow
    # the recovery; only the outage up to the recovery is counted.)
    outage = log.split("source 'plc1' recovered", 1)
    assert len(outage) == 2, log
    assert outage[0].count("source 'plc1' unavailable") == 1, log


async def test_outbox_at_its_limit_thins_live_snapshots_and_keeps_running(
    sim: Simulation, mosquitto_factory: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    broker = mosquitto_factory()
    broker.stop()  # the agent starts with the broker away
    metrics_port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        agent_config(
            sim.modbus_port,
            broker.port,
            tmp_path / "state",
            metrics_port=metrics_port,
            publish_interval="100ms",
            extra_storage="  outbox: {max_messages: 40, hard_max_messages: 400}",
        )
    )
    agent = AgentProcess(cfg, stop_timeout_s=40)
    await agent.start()
    try:

        def dropped() -> float:
            try:
                return (
                    metric(
                        metrics_port,
                        "edge_agent_outbox_dropped_total",
                        'sink="default",topic="kpi"',
                    )
                    or 0
                )
            except OSError:
                return 0.0

        async with asyncio.timeout(60):
            while dropped() < 40:  # noqa: ASYNC110 - a metric, polled with a deadline
                await asyncio.sleep(0.1)
        depth = metric(metrics_port, "edge_agent_outbox_messages", 'sink="default"')
        assert depth is not None and depth <= 40
        assert agent.alive
        broker.start(attempts=1)
        async with PersistentSubscriber(broker.host, broker.port) as sub:
            await sub.wait_for(lambda: len(sub.kpis["line1"]) >= 5, 30)
        async with asyncio.timeout(30):
            while metric(metrics_port, "edge_agent_outbox_messages", 'sink="default"') != 0:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        code = await agent.stop()
    assert code == 0, agent.output()
    log = agent.output()
    assert log.count("over its limit") == 1, log
    assert "back under its limits" in log


async def test_broker_link_partitioned_then_cut_recovers_through_a_proxy(
    sim: Simulation, mosquitto: Any, tmp_path: Path
) -> None:
    """A network that silently stops (no FIN, no RST) is noticed by the PUBACK deadline."""
    assert sim.modbus_port is not None
    async with Proxy(mosquitto.host, mosquitto.port) as proxy:
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(agent_config(sim.modbus_port, proxy.port, tmp_path / "state"))
        agent = AgentProcess(cfg, stop_timeout_s=40)
        async with PersistentSubscriber(mosquitto.host, mosquitto.port) as sub:
            await agent.start()
            try:
                await sub.wait_for(lambda: len(sub.seqs["line1"]) >= 5, 60)
                proxy.partition("drop")
                before = sub.count()
                await asyncio.sleep(3.0)  # the fault: 3 s of a silent network
                connections = proxy.connections
                proxy.cut()
                proxy.heal()
                await sub.wait_for(lambda: sub.count() > before + 10, 60)
                assert proxy.connections > connections  # the agent reconnected
            finally:
                code = await agent.stop()
            assert code == 0, agent.output()
            await sub.wait_for(lambda: bool(sub.status) and sub.status[-1] == "offline", 20)
    report = sub.report()
    print(f"\nsilent partition 3 s then cut: {report}")
    for line in ("line1", "line2"):
        assert report[line]["gaps"] == 0, report
