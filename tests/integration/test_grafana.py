"""docs/grafana/edge-agent.json: every metric its queries use is served by a running agent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.app import Agent
from edge_agent.config.loader import load_config_text
from edge_agent.metrics import Metrics
from simulators.runner import Simulation

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "edge-agent.json"

pytestmark = pytest.mark.integration


def queries(node: Any) -> list[str]:
    """Every PromQL text in the dashboard: panel targets and template variables."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found += queries(value)
    elif isinstance(node, list):
        for item in node:
            found += queries(item)
    return found


def served_names(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names a scrape can return (families with or without samples yet), and the
    values seen per label name."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ())
        names.update(family.name + s for s in suffixes)
        for sample in family.samples:
            names.add(sample.name)
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return names, labels


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_dashboard_queries_use_metrics_the_agent_serves(
    tmp_path: Path, mosquitto: Any
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    texts = queries(dashboard)
    used = {m for q in texts for m in re.findall(r"\bedge_agent_[a-z0-9_]+", q)}
    assert len(used) >= 15, used
    async with Simulation(lines=2, seed=5, speed=4.0) as sim:
        cfg = load_config_text(
            f"""
version: 1
site: graf
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {sim.modbus_port}
    poll_interval: 200ms
    tags:
      - {{name: state, address: 0}}
      - {{name: total, address: 1}}
      - {{name: rejects, address: 2}}
lines:
  - name: line1
    ideal_cycle_time: 250ms
    signals:
      state: {{tag: plc1.state, map: {{1: running, 2: idle, 3: fault}}}}
      total_count: {{tag: plc1.total, rollover: 65536}}
      reject_count: {{tag: plc1.rejects, rollover: 65536}}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, publish_interval: 500ms}}
prometheus: {{host: 127.0.0.1, port: 1}}
storage: {{dir: {tmp_path / "state"}}}
"""
        )
        # A free port: the loader (rightly) refuses port 0 in a file.
        cfg = dataclasses.replace(cfg, prometheus=dataclasses.replace(cfg.prometheus, port=0))
        agent = Agent(cfg, metrics=Metrics())
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with asyncio.timeout(10):
                await agent.ready.wait()
            url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
            # Until the source answered and a KPI report was produced.
            async with asyncio.timeout(30):
                while True:
                    text = await asyncio.to_thread(_get, url)
                    names, labels = served_names(text)
                    up = 'edge_agent_source_up{source="plc1"} 1.0' in text
                    if up and {"oee", "availability"} <= labels.get("kpi", set()):
                        break
                    await asyncio.sleep(0.2)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                assert await task == 0
    assert sorted(used - names) == [], "the dashboard queries metrics the agent does not serve"
    # Label values the dashboard filters on exist too.
    for q in texts:
        for key, values in re.findall(r'\b(kpi|kind|topic|state)=~?"([^"$]+)"', q):
            for value in values.split("|"):
                assert value in labels.get(key, set()), (key, value, q)
    # The MQTT panels' legends name the sink: a single sink's metrics carry its name.
    legends = [t.get("legendFormat", "") for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any("{{sink}}" in legend for legend in legends)
    assert labels.get("sink") == {"default"}
