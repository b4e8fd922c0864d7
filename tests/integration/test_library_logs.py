"""What the log says when a PLC misbehaves: the agent's own lines, not its libraries' detail.

The agent runs as a real process against the simulators (OPC UA in subscribe mode restarted;
Modbus answering noise, then not answering at all). At the default level each outage costs one
``unavailable`` warning and one ``recovered after`` line at INFO, with no traceback and no hex
dump; at ``--log-level debug`` the libraries' own records are there for whoever digs.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.agent_process import AgentProcess
from helpers.aio import until
from helpers.net import free_port, metric
from helpers.node_opcua import node_opcua_server

from edge_agent.certs import load_certificate, make_opcua_certificate, thumbprint
from simulators.runner import Simulation
from simulators.scenarios import Fault

pytestmark = pytest.mark.integration

LIBRARIES = ("asyncua", "pymodbus", "paho", "aiomqtt")
# A line as logs.setup_logging writes it on a terminal: "12:00:00 WARNING name: message".
LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<msg>.*)$")
HEX_DUMP = re.compile(r"0x[0-9a-f]{1,2}( 0x[0-9a-f]{1,2}){3,}")
MAX_LINES_PER_OUTAGE = 6


def config(
    tmp_path: Path, sim: Simulation, broker_port: int, metrics_port: int, *, level: str = "INFO"
) -> Path:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"""
version: 1
site: logs
sources:
  - name: press1
    protocol: opcua
    endpoint: {sim.opcua_endpoint}
    mode: subscribe
    poll_interval: 200ms
    timeout: 2s
    backoff_initial: 200ms
    backoff_max: 1s
    tags:
      - {{name: total, node: "ns=2;s=Line1.TotalCount"}}
  - name: press2
    protocol: modbus
    host: 127.0.0.1
    port: {sim.modbus_port}
    poll_interval: 200ms
    timeout: 500ms
    backoff_initial: 200ms
    backoff_max: 1s
    tags:
      - {{name: total, address: 101}}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: {{tag: press1.total, rollover: 4294967296}}}}
  - name: line2
    ideal_cycle_time: 1s
    signals: {{total_count: {{tag: press2.total, rollover: 65536}}}}
mqtt: {{host: 127.0.0.1, port: {broker_port}}}
prometheus: {{enabled: true, port: {metrics_port}}}
storage: {{dir: {tmp_path / "state"}}}
logging: {{level: {level}}}
"""
    )
    return cfg


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=4, speed=4.0) as s:
        yield s


def errors(metrics_port: int, source: str = "press1") -> float:
    """The source's failed polls and connects so far (0 until the endpoint answers)."""
    try:
        found = metric(metrics_port, "edge_agent_poll_errors_total", f'source="{source}"')
    except OSError:  # the endpoint is not up yet
        return 0.0
    return found or 0.0


def records(text: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every log line; a line that is not a record (a traceback's
    continuation, a hex dump's second line) is kept with level ``""``."""
    out: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match is None:
            out.append(("", "", line))
        else:
            out.append((match["level"], match["logger"], match["msg"]))
    return out


def count(log: str, needle: str) -> int:
    return log.count(needle)


RETRIES = 3  # failed attempts an outage lasts at least, so that retries are logged too


async def outage(
    agent: AgentProcess, sim: Simulation, fault: Fault, source: str, metrics_port: int
) -> list[tuple[str, str, str]]:
    """Switch ``fault`` on until ``source`` is unavailable and failed RETRIES more times, then
    off until it recovered; return the log lines written meanwhile."""
    start = len(agent.output())
    await sim.fault_on(fault)
    await until(lambda: f"source '{source}' unavailable" in agent.output()[start:], 60)
    failed = errors(metrics_port, source)
    await until(lambda: errors(metrics_port, source) >= failed + RETRIES, 60)
    await sim.fault_off(fault)
    await until(lambda: f"source '{source}' recovered after" in agent.output()[start:], 60)
    return records(agent.output()[start:])


def check_outage(lines: list[tuple[str, str, str]], source: str) -> None:
    text = "\n".join(f"{level} {logger}: {msg}" for level, logger, msg in lines)
    print(f"outage of {source}: {len(lines)} log line(s)\n{text}")  # shown with -s
    assert "Traceback" not in text, text
    assert not HEX_DUMP.search(text), text
    assert not [line for line in lines if line[0] == ""], text  # no multi-line record
    assert not [line for line in lines if line[1].split(".")[0] in LIBRARIES], text
    down = [line for line in lines if f"source '{source}' unavailable" in line[2]]
    up = [line for line in lines if f"source '{source}' recovered after" in line[2]]
    assert [line[0] for line in down] == ["WARNING"], text
    assert [line[0] for line in up] == ["INFO"], text
    mine = [line for line in lines if f"'{source}'" in line[2] or source in line[2]]
    assert len(mine) <= MAX_LINES_PER_OUTAGE, text


async def test_plc_faults_cost_one_line_each_way_and_no_library_detail(
    sim: Simulation, mosquitto: Any, tmp_path: Path
) -> None:
    metrics_port = free_port()
    agent = AgentProcess(config(tmp_path, sim, mosquitto.port, metrics_port))
    await agent.start()
    try:
        await until(
            lambda: (
                "source 'press1' up" in agent.output() and "source 'press2' up" in agent.output()
            ),
            60,
        )
        # A PLC restart under a subscription (asyncua logged a ~20-line ERROR traceback).
        lines = await outage(agent, sim, Fault.RESTART, "press1", metrics_port)
        check_outage(lines, "press1")
        # Modbus noise, then silence (pymodbus logged hex dumps on each).
        for fault in (Fault.GARBAGE, Fault.STALL):
            lines = await outage(agent, sim, fault, "press2", metrics_port)
            check_outage(lines, "press2")
    finally:
        assert await agent.stop() == 0
    log = agent.output()
    assert "Traceback" not in log, log


async def test_at_debug_the_library_detail_is_there(
    sim: Simulation, mosquitto: Any, tmp_path: Path
) -> None:
    # The level from the configuration: the same set-up as ``--log-level debug``.
    metrics_port = free_port()
    agent = AgentProcess(config(tmp_path, sim, mosquitto.port, metrics_port, level="DEBUG"))
    await agent.start()
    try:
        await until(lambda: "source 'press2' up" in agent.output(), 60)
        lines = await outage(agent, sim, Fault.GARBAGE, "press2", metrics_port)
    finally:
        assert await agent.stop() == 0
    loggers = {logger.split(".")[0] for _, logger, _ in records(agent.output())}
    assert {"asyncua", "pymodbus"} <= loggers
    assert any(level == "DEBUG" and logger.startswith("pymodbus") for level, logger, _ in lines)


async def test_a_refused_client_certificate_is_one_line_until_trusted(
    mosquitto: Any, tmp_path: Path
) -> None:
    """node-opcua refuses the agent's certificate at every retry; the log says so once, in the
    agent's words, and says it recovered once the certificate is trusted on the server."""
    client = make_opcua_certificate(tmp_path / "agent", hostnames=["localhost"])
    metrics_port = free_port()
    async with node_opcua_server(tmp_path / "pki") as plc:
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            f"""
version: 1
site: logs
sources:
  - name: press1
    protocol: opcua
    endpoint: {plc.endpoint}
    poll_interval: 200ms
    timeout: 5s
    backoff_initial: 200ms
    backoff_max: 500ms
    security:
      policy: Basic256Sha256
      cert_file: {client.cert_file}
      key_file: {client.key_file}
      server_cert_file: {plc.server_cert}
    tags:
      - {{name: state, node: "i=2259"}}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: press1.state}}  # ServerState: 0, running
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}
prometheus: {{enabled: true, port: {metrics_port}}}
storage: {{dir: {tmp_path / "state"}}}
"""
        )
        agent = AgentProcess(cfg)
        await agent.start()
        try:
            cert = load_certificate(client.cert_file.read_bytes())
            # Refused at several attempts in a row (node-opcua files it at the first).
            await until(lambda: errors(metrics_port) >= 1 + RETRIES, 90)
            (path,) = plc.rejected.glob(f"*{thumbprint(cert)}*")
            plc.trusted.mkdir(parents=True, exist_ok=True)
            shutil.move(path, plc.trusted / path.name)
            await until(lambda: "source 'press1' recovered after" in agent.output(), 60)
        finally:
            assert await agent.stop() == 0
    lines = records(agent.output())
    check_outage(lines, "press1")
    refused = [m for _, _, m in lines if "refused the agent's client certificate" in m]
    assert len(refused) == 1, agent.output()
    assert "AssertionError" not in agent.output()
    assert str(client.cert_file) in refused[0]
