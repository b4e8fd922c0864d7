"""A configuration far past the supported size (docs/performance.md): the engine's step takes
longer than its tick, and SIGTERM must still stop the real agent well inside systemd's
TimeoutStopSec (30 s)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers.agent_process import AgentProcess
from helpers.aio import until
from helpers.net import free_port

from edge_agent.config.loader import MAX_LINES_SUPPORTED, load_config_text

pytestmark = pytest.mark.integration

TIMEOUT_STOP_S = 30  # systemd/edge-agent.service TimeoutStopSec


def big_config(lines: int, *, per_source: int = 1000, publish_interval: str = "200ms") -> str:
    """``lines`` lines, each counting one Modbus tag; the PLCs and the broker are on closed
    ports, so the agent retries them while its engine ticks every line."""
    plc_port, broker_port = free_port(), free_port()
    out = ["version: 1", "site: big", "sources:"]
    for s in range((lines + per_source - 1) // per_source):
        out += [f"  - name: p{s}", "    protocol: modbus", "    host: 127.0.0.1"]
        out += [f"    port: {plc_port}", "    tags:"]
        for i in range(s * per_source, min(lines, (s + 1) * per_source)):
            out.append(f"      - {{name: t{i}, address: {i % per_source}}}")
    out.append("lines:")
    for i in range(lines):
        tag = f"p{i // per_source}.t{i}"
        out.append(f"  - {{name: l{i}, ideal_cycle_time: 1s, signals: {{total_count: {tag}}}}}")
    out.append(
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}, publish_interval: {publish_interval}}}"
    )
    out += ["prometheus: {enabled: false}", "storage: {dir: state}"]
    return "\n".join(out) + "\n"


def test_check_config_warns_past_the_supported_size() -> None:
    warnings: list[str] = []
    load_config_text(big_config(MAX_LINES_SUPPORTED), warnings=warnings)
    assert warnings == []
    load_config_text(big_config(MAX_LINES_SUPPORTED + 1), warnings=warnings)
    assert len(warnings) == 1
    assert (
        f"lines: {MAX_LINES_SUPPORTED + 1} lines: more than the {MAX_LINES_SUPPORTED}"
        in (warnings[0])
    )


async def test_sigterm_during_start_up_with_a_slow_engine_step_stops_in_time(
    tmp_path: Path,
) -> None:
    # 2,000 lines snapshotted every 200 ms: every step takes longer than the tick. Before the
    # runner paused after such a step, the loop never ran the signal handler again.
    config = tmp_path / "agent.yaml"
    config.write_text(big_config(2000))
    agent = AgentProcess(config, stop_timeout_s=TIMEOUT_STOP_S)
    await agent.start()
    try:
        await until(lambda: "agent started" in agent.output(), 120)
    finally:
        # AgentProcess.stop fails the test when the agent is still running after 30 s.
        code = await agent.stop(signal.SIGTERM)
    assert code == 0, agent.output()[-3000:]
    output = agent.output()
    assert "stopped" in output
    assert output.count("longer than the 0.2 s tick: ticks are skipped") == 1, output[-3000:]
