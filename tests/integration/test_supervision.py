"""The agent in-process: configuration reload and the systemd watchdog, with real parts (a Modbus
simulator, Mosquitto, a unix datagram socket standing in for systemd's notify socket)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import aio
from helpers.configs import two_lines_on_one_plc
from helpers.net import free_port

from edge_agent.app import Agent
from edge_agent.config.loader import load_config
from edge_agent.systemd import Notifier
from simulators.runner import Simulation

pytestmark = pytest.mark.integration


def config_text(modbus_port: int, broker_port: int, state: Path, *, line2_ideal: str = "1s") -> str:
    return (
        two_lines_on_one_plc(
            modbus_port,
            line2_ideal=line2_ideal,
            source_extra="backoff_initial: 100ms\nbackoff_max: 500ms",
        )
        + f"""
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  publish_interval: 200ms
  backoff_initial: 100ms
  backoff_max: 500ms
prometheus: {{enabled: false}}
storage: {{dir: {state}}}
"""
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=3, speed=4.0, opcua_port=None) as s:
        yield s


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    """helpers.aio.until with this module's deadline (an agent in the same process)."""
    await aio.until(predicate, timeout_s)


async def test_reload_keeps_unchanged_lines_and_refuses_a_bad_file(
    sim: Simulation, mosquitto: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert sim.modbus_port is not None
    path = tmp_path / "agent.yaml"
    path.write_text(config_text(sim.modbus_port, mosquitto.port, tmp_path / "state"))
    agent = Agent(load_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.runner is not None and agent.runner.steps > 3)
        assert agent.runner is not None
        line1, line2 = agent.runner.engines["line1"], agent.runner.engines["line2"]
        sink = agent.sink

        # A valid change of line2 only: line1 keeps its engine (and its counts), line2 restarts.
        path.write_text(
            config_text(sim.modbus_port, mosquitto.port, tmp_path / "state", line2_ideal="2s")
        )
        agent.reload_done.clear()
        agent.request_reload()
        await until(agent.reload_done.is_set)
        assert agent.reloads == 1
        assert agent.runner.engines["line1"] is line1
        assert agent.runner.engines["line2"] is not line2
        assert agent.runner.engines["line2"].cfg.ideal_cycle_time_s == 2.0
        assert agent.sink is sink  # broker settings unchanged: the link stays
        # Samples still reach the kept and the new engine.
        steps = agent.runner.steps
        await until(lambda: agent.runner is not None and agent.runner.steps > steps + 3)

        # An invalid file is refused with its position; the running configuration stays.
        path.write_text(path.read_text().replace("poll_interval: 200ms", "poll_intervall: 1s"))
        agent.reload_done.clear()
        agent.request_reload()
        await until(agent.reload_done.is_set)
        assert agent.reloads == 1
        assert agent.cfg.sources[0].poll_interval_s == 0.2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(f"{path}:" in e and "poll_intervall: unknown key" in e for e in errors), errors
        assert any("reload refused" in e for e in errors)
        assert agent.runner.engines["line1"] is line1
    finally:
        stop.set()
        assert await task == 0


class NotifySocket:
    """A unix datagram socket that records what the agent sends, like systemd's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


async def test_watchdog_is_fed_only_while_the_engine_makes_progress(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    # No sources and an unreachable broker: the engine alone decides about the watchdog.
    text = config_text(1, 1, tmp_path / "state").split("lines:", 1)[1]
    path = tmp_path / "agent.yaml"
    path.write_text("version: 1\nsite: wd\nlines:" + text.replace("plc1.", "plcx."))
    cfg = load_config(path)
    notifier = Notifier(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"})
    assert notifier.watchdog_interval_s == 0.2
    agent = Agent(cfg, notifier=notifier, stall_after_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:

        def pings() -> list[float]:
            return [t for t, m in notify_socket.drain() if m == "WATCHDOG=1"]

        await until(lambda: len(pings()) >= 5)
        assert notify_socket.received[0][1].startswith("READY=1")

        # The engine stops making progress (here: its task is gone).
        assert agent.engine_task is not None
        agent.engine_task.cancel()
        stalled_at = time.monotonic()
        # Keep listening well past the stall limit (an absence can only be observed over
        # time): the pings stop and do not come back.
        listen_until = stalled_at + 2.5
        while time.monotonic() < listen_until:
            notify_socket.drain()
            await asyncio.sleep(0.05)
        after = [t for t in pings() if t > stalled_at]
        assert after, "the watchdog was fed until the stall limit"
        assert max(after) < stalled_at + 1.0 + 0.5, "fed after the engine stalled"
    finally:
        stop.set()
        assert await task == 0
    assert any(m == "STOPPING=1" for _, m in notify_socket.drain())


@pytest.mark.parametrize("policy", ["retry", "fail", "disable"])
async def test_plc_unreachable_at_start_follows_on_startup_error(
    policy: str, mosquitto: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    path = tmp_path / "agent.yaml"
    text = config_text(port, mosquitto.port, tmp_path / "state")
    path.write_text(text.replace("    tags:\n", f"    on_startup_error: {policy}\n    tags:\n", 1))
    agent = Agent(load_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        if policy == "fail":
            async with asyncio.timeout(20):
                assert await task == 69  # EX_UNAVAILABLE
            assert any("on_startup_error is 'fail'" in r.getMessage() for r in caplog.records)
            return
        await until(lambda: any("plc1" in r.getMessage() for r in caplog.records))
        # The PLC comes up late, on the configured port.
        async with Simulation(lines=2, seed=3, speed=4.0, modbus_port=port, opcua_port=None):
            if policy == "retry":
                await until(
                    lambda: (
                        agent.metrics.registry.get_sample_value(
                            "edge_agent_source_up", {"source": "plc1"}
                        )
                        == 1
                    )
                )
                assert any("'plc1' recovered" in r.getMessage() for r in caplog.records)
            else:
                await until(lambda: any("disabled" in r.getMessage() for r in caplog.records))
                assert "plc1" not in agent.pollers or not agent.pollers["plc1"].connected_once
                assert agent.runner is not None and agent.runner.steps > 0  # still running
    finally:
        if not task.done():
            stop.set()
            assert await task == 0
