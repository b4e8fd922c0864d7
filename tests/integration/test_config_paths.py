"""Paths in the configuration, seen by the real agent process: the state directory and the secret
and certificate files resolve the same way whichever directory the agent is started from."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.agent_process import AgentProcess
from helpers.aio import until
from helpers.configs import two_lines_on_one_plc
from helpers.mosquitto import Mosquitto
from helpers.net import free_port

pytestmark = pytest.mark.integration


def _config(broker_port: int, storage: str = "storage: {dir: state}\n") -> str:
    # The PLC's port is closed: the agent retries it; the outbox opens before any source.
    return (
        two_lines_on_one_plc(free_port())
        + f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\n"
        + "prometheus: {enabled: false}\n"
        + storage
    )


@pytest.mark.parametrize("storage", ["storage: {dir: state}\n", ""], ids=["relative", "default"])
async def test_relative_state_dir_is_next_to_the_config_not_the_cwd(
    tmp_path: Path, mosquitto: Mosquitto, storage: str
) -> None:
    conf_dir = tmp_path / "etc"
    elsewhere = tmp_path / "elsewhere"
    conf_dir.mkdir()
    elsewhere.mkdir()
    config = conf_dir / "agent.yaml"
    config.write_text(_config(mosquitto.port, storage))
    agent = AgentProcess(config, cwd=elsewhere)
    await agent.start()
    try:
        await until((conf_dir / "state" / "outbox.sqlite").exists, 60)
        await until(lambda: "state directory" in agent.output(), 30)
    finally:
        code = await agent.stop()
    assert code == 0, agent.output()
    assert not (elsewhere / "state").exists()
    lines = [line for line in agent.output().splitlines() if "state directory" in line]
    assert len(lines) == 1, agent.output()
    assert f"state directory {conf_dir / 'state'} (outbox, engine state, history)" in lines[0]


def test_run_refuses_a_missing_key_file_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        _config(free_port()).replace(
            "mqtt: {host: 127.0.0.1,",
            "mqtt: {tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client.key}, "
            "host: 127.0.0.1,",
        )
    )
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=elsewhere,
    )
    assert res.returncode == 78, res.stderr
    # FILE:LINE:COL of the mqtt line (21), then the path and what is wrong.
    assert [re.sub(r":21:\d+: ", ":21:C: ", line) for line in res.stderr.splitlines()] == [
        f"{config}:21:C: mqtt.tls.ca_file: {tmp_path / 'ca.pem'} is not a PEM or DER "
        "CA certificate file",
        f"{config}:21:C: mqtt.tls.cert_file: cannot read {tmp_path / 'client.pem'}: "
        "No such file or directory",
        f"{config}:21:C: mqtt.tls.key_file: cannot read {tmp_path / 'client.key'}: "
        "No such file or directory",
        "3 problem(s); nothing was started",
    ]
    assert not (tmp_path / "state").exists()
