"""Soak test: the demo-like setup for N minutes, watching the agent for leaks.

Runs a private Mosquitto and the PLC simulators (``edge-agent-sim``, Modbus TCP and OPC UA) as
subprocesses at high simulated speed, and the agent in this process (so its asyncio tasks can be
counted). Every 30 s it prints a row: RSS, open file descriptors, asyncio tasks, threads, engine
steps, messages the broker acknowledged, outbox depth. At the end: start vs end and the slope per
hour of each resource (least squares over the samples after the first minute, so that warm-up
does not count as a leak).

    python benchmarks/soak.py --minutes 10

Not run in CI. Needs /usr/sbin/mosquitto (or mosquitto on PATH). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.app import Agent
from edge_agent.broker import Mosquitto
from edge_agent.config.loader import load_config_text
from edge_agent.logs import setup_logging


@dataclass(frozen=True, slots=True)
class Row:
    t_s: float
    rss_mib: float
    fds: int
    tasks: int
    threads: int
    steps: int
    published: int
    outbox: int


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulators(speed: float) -> tuple[subprocess.Popen[str], int, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.cli",
            "--lines",
            "2",
            "--speed",
            str(speed),
            "--modbus-port",
            "0",
            "--opcua-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    modbus_port, endpoint = 0, ""
    while not (modbus_port and endpoint):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("simulators exited")
        if line.startswith("modbus "):
            modbus_port = int(line.split()[1].rsplit(":", 1)[1])
        elif line.startswith("opcua "):
            endpoint = line.split()[1]
    return proc, modbus_port, endpoint


def config(modbus_port: int, endpoint: str, broker_port: int, state: Path, speed: float) -> str:
    ideal_ms = max(1, round(1000 / speed))
    states = "{1: running, 2: idle, 3: fault, 4: planned_stop, 5: changeover}"
    return f"""
version: 1
site: soak
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    poll_interval: 100ms
    timeout: 1s
    tags:
      - {{name: state, address: 0}}
      - {{name: total, address: 1}}
      - {{name: rejects, address: 2}}
  - name: plc2
    protocol: opcua
    endpoint: {endpoint}
    poll_interval: 100ms
    timeout: 2s
    tags:
      - {{name: state, node: "ns=2;s=Line2.State"}}
      - {{name: total, node: "ns=2;s=Line2.TotalCount"}}
      - {{name: rejects, node: "ns=2;s=Line2.RejectCount"}}
lines:
  - name: line1
    ideal_cycle_time: {ideal_ms}ms
    signals:
      state: {{tag: plc1.state, map: {states}}}
      total_count: {{tag: plc1.total, rollover: 65536}}
      reject_count: {{tag: plc1.rejects, rollover: 65536}}
  - name: line2
    ideal_cycle_time: {ideal_ms}ms
    signals:
      state: {{tag: plc2.state, map: {states}}}
      total_count: {{tag: plc2.total, rollover: 4294967296}}
      reject_count: {{tag: plc2.rejects, rollover: 4294967296}}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  publish_interval: 200ms
prometheus: {{enabled: true, port: {free_port()}}}
storage: {{dir: {state}}}
logging: {{level: WARNING}}
"""


def slope_per_h(rows: list[Row], attr: str) -> float:
    pts = [(r.t_s, float(getattr(r, attr))) for r in rows if r.t_s >= 60] or [
        (r.t_s, float(getattr(r, attr))) for r in rows
    ]
    if len(pts) < 2:
        return 0.0
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    den = sum((x - mx) ** 2 for x, _ in pts)
    return 0.0 if den == 0 else 3600 * sum((x - mx) * (y - my) for x, y in pts) / den


async def soak(minutes: float, speed: float, every_s: float) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(None, work / "mosquitto")
        broker.start(attempts=3)
        broker_port = broker.port
        sims, modbus_port, endpoint = start_simulators(speed)
        try:
            cfg = load_config_text(
                config(modbus_port, endpoint, broker_port, work / "state", speed),
                str(work / "agent.yaml"),
            )
            agent = Agent(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            async with asyncio.timeout(30):
                await agent.ready.wait()
            started = time.monotonic()
            header = (
                f"{'t':>6} {'RSS MiB':>8} {'fds':>5} {'tasks':>6} {'threads':>7} "
                f"{'steps':>7} {'published':>10} {'outbox':>7}"
            )
            print(header, flush=True)
            end = started + minutes * 60
            next_row = started
            while True:
                now = time.monotonic()
                if now >= next_row:
                    row = Row(
                        t_s=now - started,
                        rss_mib=rss_mib(),
                        fds=fds(),
                        tasks=len(asyncio.all_tasks()),
                        threads=threading.active_count(),
                        steps=agent.runner.steps if agent.runner else 0,
                        published=agent.sink.published_total if agent.sink else 0,
                        outbox=_depth(agent),
                    )
                    rows.append(row)
                    print(
                        f"{row.t_s:6.0f} {row.rss_mib:8.1f} {row.fds:5d} {row.tasks:6d} "
                        f"{row.threads:7d} {row.steps:7d} {row.published:10d} {row.outbox:7d}",
                        flush=True,
                    )
                    next_row += every_s
                if now >= end or task.done():
                    break
                await asyncio.sleep(min(next_row, end) - now + 0.001)
            stop.set()
            code = await task
            print(f"agent exited with {code}", flush=True)
        finally:
            sims.send_signal(signal.SIGTERM)
            broker.stop()
            try:
                sims.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sims.kill()
    return rows


def _depth(agent: Agent) -> int:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_outbox_messages", {"sink": agent.cfg.mqtt.name}
    )
    return int(value or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--speed", type=float, default=20.0, help="simulated s per real s (20)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between rows (30)")
    args = parser.parse_args()
    setup_logging("WARNING", "text")
    rows = asyncio.run(soak(args.minutes, args.speed, args.every))
    if len(rows) < 2:
        print("too short for a summary")
        return 1
    first, last = rows[0], rows[-1]
    print("\nsummary (slope: least squares after the first minute, per hour)")
    for attr, unit in (("rss_mib", "MiB"), ("fds", ""), ("tasks", ""), ("threads", "")):
        a, b = getattr(first, attr), getattr(last, attr)
        print(
            f"  {attr:8} start {a:8.1f} end {b:8.1f} slope {slope_per_h(rows, attr):+8.2f}{unit}/h"
        )
    print(f"  published {last.published} messages in {last.t_s:.0f} s, outbox at end {last.outbox}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
