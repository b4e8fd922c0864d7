"""``--log-format json``: one JSON object per line, with the failing source's name in it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from helpers.net import free_port


async def test_json_log_line_names_the_failing_source(tmp_path: Path, mosquitto: Any) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"""
version: 1
site: s1
sources:
  - name: press7
    protocol: modbus
    host: 127.0.0.1
    port: {free_port()}
    timeout: 500ms
    backoff_initial: 5s
    tags: [{{name: total, address: 0}}]
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: press7.total}}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}
prometheus: {{enabled: false}}
storage: {{dir: {tmp_path / "state"}}}
"""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "--log-format",
        "json",
        "run",
        "-c",
        str(cfg),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    records: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while not (
                any(r.get("source") == "press7" for r in records)
                and any(r.get("component") == "broker" for r in records)
            ):
                raw = await proc.stderr.readline()
                assert raw, f"the agent exited; its log: {records}"
                records.append(json.loads(raw))  # every line is one JSON object
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
    assert proc.returncode == 0
    records += [json.loads(line) for line in rest.decode().splitlines()]
    failed = next(r for r in records if r.get("source") == "press7")
    assert failed["level"] == "warning"
    assert "source 'press7' unavailable" in failed["msg"]
    assert failed["ts"].endswith("+00:00")
    assert {"ts", "level", "logger", "msg"} <= failed.keys()
    # The broker link is logged with its component.
    broker = next(r for r in records if r.get("component") == "broker")
    assert broker["msg"].startswith("broker '127.0.0.1:")
