"""The benchmark run: starts simulated PLCs and a Mosquitto broker, measures, prints the table.

Every figure is measured in this run beside its reference, and printed with its target and
PASS/MISS. Client-side CPU is measured in worker processes (:mod:`benchmarks.workers`); the whole
agent runs as ``python -m edge_agent run`` in a process of its own, its CPU and RSS read from
``/proc``. Servers run in processes of their own (:mod:`benchmarks.servers`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.maps import MAX_GAP, all_tags, minimum_requests, modbus_map
from edge_agent.sources.planner import plan_reads
from simulators.model import LineParams

HOST = "127.0.0.1"
PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Settings:
    quick: bool
    modbus_rounds: int
    modbus_calls: int
    opcua_rounds: int
    opcua_calls: int
    subscribe_s: float
    mode_cpu_s: float
    latency_changes: int
    cpu_warmup_s: float
    cpu_s: float
    drain_messages: int
    scale_plcs: int
    scale_tags: int
    scale_warmup_s: float
    scale_s: float
    idle_s: float
    fsync_s: float


QUICK = Settings(
    quick=True,
    modbus_rounds=5,
    modbus_calls=20,
    opcua_rounds=5,
    opcua_calls=6,
    subscribe_s=1.0,
    mode_cpu_s=2.0,
    latency_changes=25,
    cpu_warmup_s=1.5,
    cpu_s=4.0,
    drain_messages=3000,
    scale_plcs=50,
    scale_tags=200,
    scale_warmup_s=1.0,
    scale_s=3.0,
    idle_s=4.0,
    fsync_s=6.0,
)
FULL = Settings(
    quick=False,
    modbus_rounds=15,
    modbus_calls=50,
    opcua_rounds=11,
    opcua_calls=20,
    subscribe_s=10.0,
    mode_cpu_s=20.0,
    latency_changes=300,
    cpu_warmup_s=5.0,
    cpu_s=60.0,
    drain_messages=20000,
    scale_plcs=50,
    scale_tags=200,
    scale_warmup_s=5.0,
    scale_s=60.0,
    idle_s=60.0,
    fsync_s=60.0,
)


@dataclass(frozen=True)
class Figure:
    key: str
    name: str
    value: float
    unit: str
    reference: str
    target: str
    passed: bool | None  # None: information, no target

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")


# -- processes --------------------------------------------------------------------------------


class Proc:
    """A child process with a stdin pipe (closing it ends the servers) and its first JSON line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, stderr: Any = None) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
        return cls(proc)

    async def line(self, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"{self.proc.pid} ended without output")
        result: dict[str, Any] = json.loads(raw)
        return result

    async def send(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.line()

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(timeout_s):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def worker(name: str, **args: Any) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "benchmarks.workers",
        name,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    async with asyncio.timeout(600):
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_fine_s(pid: int) -> float:
    """CPU seconds of ``pid``'s live threads to the nanosecond (``/proc/PID/task/*/schedstat``):
    an idle agent uses a few clock ticks a minute, too few for :func:`cpu_s` to resolve."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * _PAGE / 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- the agent as a process -------------------------------------------------------------------


def _yaml(obj: Any) -> str:
    import yaml

    return str(yaml.safe_dump(obj, sort_keys=False))


def agent_config(
    tmp: Path,
    broker_port: int,
    sources: list[dict[str, Any]],
    lines: list[dict[str, Any]],
    *,
    metrics_port: int | None = None,
    publish_interval: str = "5s",
) -> Path:
    cfg = {
        "version": 1,
        "site": "bench",
        "sources": sources,
        "lines": lines,
        "mqtt": {"host": HOST, "port": broker_port, "publish_interval": publish_interval},
        "prometheus": {"enabled": metrics_port is not None, "port": metrics_port or 9108},
        "storage": {"dir": str(tmp / "state")},
        "logging": {"level": "WARNING"},
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "agent.yaml"
    path.write_text(_yaml(cfg))
    return path


@contextlib.asynccontextmanager
async def agent_process(
    config: Path, log: Path, *extra_args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-c",
            "import sys; from edge_agent.cli import main; sys.exit(main())",
            "run",
            "-c",
            str(config),
            *extra_args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(15):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format → {series: value} (labels kept in the key)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


async def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(poll_s)


def _sources_up(port: int, count: int) -> bool:
    try:
        return metric_sum(scrape(port), "edge_agent_source_up") >= count
    except OSError:
        return False


# -- figures ----------------------------------------------------------------------------------


def figure_requests() -> Figure:
    areas = modbus_map()
    tags = all_tags(areas)
    planned = len(plan_reads(tags, unit_id=1, max_gap=MAX_GAP))
    minimum = minimum_requests(areas)
    ratio = planned / minimum
    return Figure(
        "modbus_requests_ratio",
        f"Modbus requests per scan, {len(tags)} tags in {len(areas)} areas",
        ratio,
        "x",
        f"{planned} requests vs protocol minimum {minimum}",
        "= 1.00",
        planned == minimum,
    )


async def figure_modbus_cpu(s: Settings, port: int) -> Figure:
    r = await worker("modbus-overhead", port=port, rounds=s.modbus_rounds, calls=s.modbus_calls)
    ratio = r["agent_s"] / r["raw_s"]
    return Figure(
        "modbus_cpu_ratio",
        f"Modbus CPU per scan (ModbusSource.read, {r['tags']} tags)",
        ratio,
        "x",
        f"agent {r['agent_s'] * 1e3:.2f} ms vs raw pymodbus {r['raw_s'] * 1e3:.2f} ms "
        f"({r['raw_requests']} reads)",
        "<= 1.25",
        ratio <= 1.25,
    )


async def figure_opcua_cpu(s: Settings, endpoint: str) -> Figure:
    r = await worker(
        "opcua-overhead", endpoint=endpoint, rounds=s.opcua_rounds, calls=s.opcua_calls
    )
    ratio = r["agent_s"] / r["raw_s"]
    return Figure(
        "opcua_cpu_ratio",
        "OPC UA CPU per poll (OpcuaSource.read, 1000 nodes)",
        ratio,
        "x",
        f"agent {r['agent_s'] * 1e3:.2f} ms vs raw asyncua Read {r['raw_s'] * 1e3:.2f} ms",
        "<= 1.25",
        ratio <= 1.25,
    )


async def figures_subscribe(s: Settings, server: Proc, endpoint: str) -> list[Figure]:
    # 200 of the 1,000 variables change every 100 ms: 2,000 changes per second.
    await server.send("change 200 100")
    r = await worker(
        "opcua-subscribe", endpoint=endpoint, seconds=s.subscribe_s, publishing_ms=100, poll_s=0.1
    )
    agent_us = r["agent_cpu_s"] / max(1, r["agent_notifications"]) * 1e6
    raw_us = r["raw_cpu_s"] / max(1, r["raw_notifications"]) * 1e6
    rate = r["agent_notifications"] / r["seconds"]
    ratio = agent_us / raw_us
    # A plant-like load: 20 changes per second among 1,000 tags, polled every second.
    await server.send("change 2 100")
    poll = await worker("opcua-mode-cpu", endpoint=endpoint, seconds=s.mode_cpu_s, mode="poll")
    sub = await worker("opcua-mode-cpu", endpoint=endpoint, seconds=s.mode_cpu_s, mode="subscribe")
    await server.send("still")
    poll_pct = 100 * poll["cpu_s"] / poll["seconds"]
    sub_pct = 100 * sub["cpu_s"] / sub["seconds"]
    return [
        Figure(
            "opcua_subscribe_notifications_per_s",
            "OPC UA subscription: notifications per second taken",
            rate,
            "/s",
            f"{agent_us:.1f} µs CPU each (incl. 10 reads/s) vs raw asyncua handler "
            f"{raw_us:.1f} µs; ratio {ratio:.2f}",
            "CPU ratio <= 1.25",
            ratio <= 1.25,
        ),
        Figure(
            "opcua_subscribe_vs_poll_cpu_pct",
            "OPC UA 1000 tags at 1 s, 20 changes/s: CPU subscribe",
            sub_pct,
            "% core",
            f"poll mode {poll_pct:.2f} % core",
            "< poll",
            sub_pct < poll_pct,
        ),
    ]


async def figure_latency(s: Settings, tmp: Path, broker_port: int) -> list[Figure]:
    """Latency: the simulator writes a new state code (t0); the agent polls it (100 ms), the
    engine emits a `state` message, the outbox stores it (fsync), the sink publishes it, and an
    MQTT subscriber receives it (t1). t1 - t0 over alternating running/idle changes at random
    phases relative to the poll."""
    import aiomqtt

    from simulators.modbus_server import ModbusSimServer

    class Plc:  # the attributes ModbusSimServer reads from a line model
        state_code = 1
        total_count = 0
        reject_count = 0
        ideal_cycle_time_s = 1.0
        running = True
        energy_kwh = 0.0
        power_kw = 0.0
        order_number = 0
        params = LineParams()

    plc = Plc()
    server = ModbusSimServer([plc], HOST, 0)  # type: ignore[list-item]
    port = await server.start()
    sources = [
        {
            "name": "plc1",
            "protocol": "modbus",
            "host": HOST,
            "port": port,
            "poll_interval": "100ms",
            "tags": [{"name": "state", "address": 0}, {"name": "total", "address": 1}],
        }
    ]
    lines = [
        {
            "name": "line1",
            "ideal_cycle_time": "1s",
            "signals": {
                "state": {"tag": "plc1.state", "map": {1: "running", 2: "idle"}},
                "total_count": {"tag": "plc1.total"},
            },
        }
    ]
    config = agent_config(tmp / "latency", broker_port, sources, lines)
    latencies: list[float] = []
    try:
        async with (
            aiomqtt.Client(HOST, broker_port, identifier="bench-sub") as client,
            agent_process(config, tmp / "latency" / "agent.log"),
        ):
            await client.subscribe("edge-agent/bench/line1/state", qos=1)
            messages = client.messages

            async def next_state(want: str, timeout_s: float) -> None:
                async with asyncio.timeout(timeout_s):
                    async for message in messages:
                        payload = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                        if payload.get("state") == want:
                            return

            await next_state("running", 30.0)  # the agent is up and polling
            rnd = random.Random(7)
            want = "running"
            for _ in range(s.latency_changes):
                await asyncio.sleep(0.05 + rnd.random() * 0.15)
                want = "idle" if want == "running" else "running"
                plc.state_code = 2 if want == "idle" else 1
                server.update()
                t0 = time.monotonic()
                await next_state(want, 5.0)
                latencies.append(time.monotonic() - t0)
    finally:
        await server.stop()
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3
    return [
        Figure(
            "latency_p50_ms",
            "Latency PLC state change -> MQTT `state` message, p50",
            p50,
            "ms",
            f"{len(latencies)} changes, 100 ms poll",
            "info",
            None,
        ),
        Figure(
            "latency_p99_ms",
            "Latency PLC state change -> MQTT `state` message, p99",
            p99,
            "ms",
            f"max {latencies[-1] * 1e3:.0f} ms",
            "<= 150 ms (poll + 50 ms)",
            p99 <= 150.0,
        ),
    ]


def _line(name: str, source: str, state_tag: str, total_tag: str) -> dict[str, Any]:
    return {
        "name": name,
        "ideal_cycle_time": "1s",
        "signals": {
            "state": {"tag": f"{source}.{state_tag}", "map": {1: "running", 2: "idle"}},
            "total_count": {"tag": f"{source}.{total_tag}", "rollover": 65536},
        },
    }


async def floor_rss() -> float:
    """RSS of a bare Python importing what the Modbus-only agent imports."""
    code = (
        "import asyncio, sqlite3, json, logging, yaml, pymodbus.client, "
        "paho.mqtt.client, prometheus_client, aiohttp.web, sys; print('ready', flush=True); "
        "sys.stdin.read()"
    )
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    await proc.stdout.readline()
    rss = rss_mib(proc.pid)
    proc.stdin.close()
    await proc.wait()
    return rss


async def _agent_cpu(
    s: Settings, tmp: Path, broker_port: int, port: int, *extra_args: str
) -> tuple[float, float, float, float]:
    """The agent with one 1,000-tag Modbus source at 1 Hz: CPU seconds over the window, the
    window, RSS after it, polls done."""
    tags = [
        {"name": t.name, "address": t.address, "type": t.type.value} for t in all_tags(modbus_map())
    ]
    sources = [{"name": "plc1", "protocol": "modbus", "host": HOST, "port": port, "tags": tags}]
    metrics_port = free_port()
    config = agent_config(
        tmp,
        broker_port,
        sources,
        [_line("line1", "plc1", "t0", "t1")],
        metrics_port=metrics_port,
    )
    async with agent_process(config, tmp / "agent.log", *extra_args) as proc:
        await wait_for(lambda: _sources_up(metrics_port, 1), 30.0, "the agent's source")
        await asyncio.sleep(s.cpu_warmup_s)
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        await asyncio.sleep(s.cpu_s)
        used, elapsed = cpu_s(proc.pid) - c0, time.monotonic() - t0
        rss = rss_mib(proc.pid)
        polls = metric_sum(scrape(metrics_port), "edge_agent_poll_duration_seconds_count")
    return used, elapsed, rss, polls


async def figures_cpu_rss(s: Settings, tmp: Path, broker_port: int, port: int) -> list[Figure]:
    used, elapsed, rss, polls = await _agent_cpu(s, tmp / "cpu", broker_port, port)
    uv_used, uv_elapsed, _, _ = await _agent_cpu(
        s, tmp / "cpu-uvloop", broker_port, port, "--event-loop", "uvloop"
    )
    floor = await floor_rss()
    pct = 100 * used / elapsed
    uv_pct = 100 * uv_used / uv_elapsed
    return [
        Figure(
            "cpu_1000_modbus_tags_1hz_pct",
            f"Agent CPU, 1000 Modbus tags at 1 Hz over {elapsed:.0f} s",
            pct,
            "% core",
            f"whole agent process (poll, engine, outbox, MQTT, metrics); {polls:.0f} polls",
            "<= 1 %",
            pct <= 1.0,
        ),
        Figure(
            "cpu_1000_modbus_tags_1hz_uvloop_pct",
            "The same with --event-loop uvloop",
            uv_pct,
            "% core",
            f"{uv_pct / pct:.2f} x the asyncio loop's figure in this run",
            "info",
            None,
        ),
        Figure(
            "rss_mib",
            "Agent RSS after warm-up (1000 Modbus tags)",
            rss,
            "MiB",
            f"bare process importing the same libraries {floor:.1f} MiB (+{rss - floor:.1f})",
            "<= floor + 25 MiB",
            rss <= floor + 25.0,
        ),
    ]


async def figure_drain(s: Settings, broker_port: int) -> Figure:
    r = await worker("drain", port=broker_port, messages=s.drain_messages)
    agent_rate = r["messages"] / r["agent_s"]
    raw_rate = r["messages"] / r["raw_s"]
    ratio = agent_rate / raw_rate
    return Figure(
        "drain_ratio",
        f"Backlog drain, {r['messages']} messages QoS 1 (outbox -> broker)",
        ratio,
        "x",
        f"agent {agent_rate:,.0f} msg/s vs raw paho {raw_rate:,.0f} msg/s",
        ">= 0.5",
        ratio >= 0.5,
    )


async def figures_scale(s: Settings, tmp: Path, broker_port: int) -> list[Figure]:
    plcs = await Proc.start(
        "-m", "benchmarks.servers", "plcs", str(s.scale_plcs), str(s.scale_tags)
    )
    try:
        ports = (await plcs.line())["ports"]
        sources = [
            {
                "name": f"plc{i}",
                "protocol": "modbus",
                "host": HOST,
                "port": p,
                "poll_interval": "1s",
                "tags": [{"name": f"r{a}", "address": a} for a in range(s.scale_tags)],
            }
            for i, p in enumerate(ports)
        ]
        lines = [_line(f"line{i}", f"plc{i}", "r0", "r1") for i in range(len(ports))]
        metrics_port = free_port()
        config = agent_config(tmp / "scale", broker_port, sources, lines, metrics_port=metrics_port)
        async with agent_process(config, tmp / "scale" / "agent.log") as proc:
            await wait_for(lambda: _sources_up(metrics_port, len(ports)), 60.0, "50 sources")
            await asyncio.sleep(s.scale_warmup_s)
            skipped0 = metric_sum(scrape(metrics_port), "edge_agent_poll_skipped_ticks_total")
            c0, t0 = cpu_s(proc.pid), time.monotonic()
            await asyncio.sleep(s.scale_s)
            used, elapsed = cpu_s(proc.pid) - c0, time.monotonic() - t0
            after = scrape(metrics_port)
            skipped = metric_sum(after, "edge_agent_poll_skipped_ticks_total") - skipped0
            rss = rss_mib(proc.pid)
    finally:
        await plcs.stop()
    pct = 100 * used / elapsed
    n = len(ports)
    return [
        Figure(
            "scale_cpu_pct",
            f"Scale: {n} PLCs x {s.scale_tags} tags at 1 s, {elapsed:.0f} s: CPU",
            pct,
            "% core",
            f"{int(skipped)} skipped ticks; RSS {rss:.1f} MiB",
            "< 15 % and 0 skipped",
            pct < 15.0 and skipped == 0,
        ),
        Figure(
            "scale_skipped_ticks",
            "Scale: skipped poll ticks",
            skipped,
            "",
            f"{n} sources",
            "= 0",
            skipped == 0,
        ),
        Figure(
            "scale_rss_mib",
            "Scale: agent RSS",
            rss,
            "MiB",
            f"{n * s.scale_tags} tags",
            "info",
            None,
        ),
    ]


async def _count_fsyncs(pid: int, seconds: float, trace: Path) -> tuple[int, int] | None:
    """fsync/fdatasync calls of ``pid`` over ``seconds`` (strace attached to the running
    process): (commits, the syncs of the outbox's WAL; other syncs, checkpoints and the
    history's). ``None`` when strace is not installed (``apt-get install strace``)."""
    import shutil

    if shutil.which("strace") is None:
        return None
    tracer = await asyncio.create_subprocess_exec(
        *("strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace)),
        *("-p", str(pid)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(seconds)
    finally:
        tracer.terminate()
        await tracer.wait()
    return _fsyncs_in(trace)


def _fsyncs_in(trace: Path) -> tuple[int, int]:
    """(syncs of the outbox's WAL, other syncs) in an ``strace -y`` output."""
    commits = other = 0
    for line in trace.read_text().splitlines():
        if "fsync(" in line or "fdatasync(" in line:
            if "outbox.sqlite-wal>" in line:
                commits += 1
            else:
                other += 1
    return commits, other


def _counter_line(name: str) -> dict[str, Any]:
    """A line with a part counter only (state inferred from it), as an idle PLC has."""
    return {
        "name": name,
        "ideal_cycle_time": "1s",
        "signals": {"total_count": {"tag": "plc1.r0", "rollover": 65536}},
    }


async def _block_agent(
    s: Settings, tmp: Path, broker_port: int, registers: int, *, window_s: float, fsync_s: float
) -> tuple[float, float, int, float, tuple[int, int] | None]:
    """The agent polling one PLC of ``registers`` holding registers (one tag each) every second:
    CPU seconds over ``window_s``, the window, polls in it, then over ``fsync_s`` more the
    report batches stored and the fsyncs (:func:`_count_fsyncs`; not during the CPU window,
    since strace slows the process it traces)."""
    plcs = await Proc.start("-m", "benchmarks.servers", "plcs", "1", str(registers))
    try:
        (port,) = (await plcs.line())["ports"]
        source = {
            "name": "plc1",
            "protocol": "modbus",
            "host": HOST,
            "port": port,
            "poll_interval": "1s",
            "tags": [{"name": f"r{a}", "address": a} for a in range(registers)],
        }
        metrics_port = free_port()
        config = agent_config(
            tmp, broker_port, [source], [_counter_line("line1")], metrics_port=metrics_port
        )
        async with agent_process(config, tmp / "agent.log") as proc:
            await wait_for(lambda: _sources_up(metrics_port, 1), 30.0, "the agent's source")
            await asyncio.sleep(s.cpu_warmup_s)
            before = scrape(metrics_port)
            c0, t0 = cpu_fine_s(proc.pid), time.monotonic()
            await asyncio.sleep(window_s)
            used, elapsed = cpu_fine_s(proc.pid) - c0, time.monotonic() - t0
            after = scrape(metrics_port)
            polls = metric_sum(after, "edge_agent_poll_duration_seconds_count") - metric_sum(
                before, "edge_agent_poll_duration_seconds_count"
            )
            batches = 0.0
            syncs = None
            if fsync_s > 0:
                # One line: each stored batch holds one `kpi` snapshot or one `state` change
                # (a step that makes both stores them together, and is counted twice here).
                topics = ('{line="line1",topic="kpi"}', '{line="line1",topic="state"}')
                key = "edge_agent_reports_total"
                b0 = sum(after.get(key + t, 0.0) for t in topics)
                syncs = await _count_fsyncs(proc.pid, fsync_s, tmp / "fsyncs.trace")
                batches = sum(scrape(metrics_port).get(key + t, 0.0) for t in topics) - b0
    finally:
        await plcs.stop()
    return used, elapsed, int(polls), batches, syncs


async def figures_idle(s: Settings, tmp: Path, broker_port: int) -> list[Figure]:
    """The idle floor (one PLC, one register, polled every second: what the agent costs when
    there is nothing to do), and 1,000 registers of one PLC polled every second in 125-register
    reads (the load of the low-code gateways plants use instead), with its fsyncs."""
    used, elapsed, polls, _, _ = await _block_agent(
        s, tmp / "idle", broker_port, 1, window_s=s.idle_s, fsync_s=0
    )
    idle_pct = 100 * used / elapsed
    used, elapsed, block_polls, batches, syncs = await _block_agent(
        s, tmp / "block", broker_port, 1000, window_s=s.cpu_s, fsync_s=s.fsync_s
    )
    pct = 100 * used / elapsed
    figures = [
        Figure(
            "idle_cpu_pct",
            f"Idle floor: 1 Modbus register at 1 Hz over {s.idle_s:.0f} s: CPU",
            idle_pct,
            "% core",
            f"whole agent process, 1 line, MQTT and /metrics on; {polls} polls",
            "<= 0.15 %",
            idle_pct <= 0.15,
        ),
        Figure(
            "cpu_1000_registers_1hz_pct",
            f"Agent CPU, 1000 Modbus registers in one block at 1 Hz over {elapsed:.0f} s",
            pct,
            "% core",
            f"8 reads of 125 registers per poll; {block_polls} polls",
            "<= 0.5 %",
            pct <= 0.5,
        ),
        Figure(
            "tags_per_core_1hz",
            "Sizing: Modbus tags per core at 1 Hz (125-register reads)",
            1000 * 100 / pct,
            "tags",
            "1000 / the figure above, the idle floor included",
            "info",
            None,
        ),
    ]
    if syncs is None:
        figures.append(
            Figure(
                "fsyncs_per_batch_1000_tags",
                "fsyncs per stored report batch, 1000 tags at 1 Hz",
                float("nan"),
                "",
                "not measured: strace is not installed (apt-get install strace)",
                "<= 1.00",
                None,
            )
        )
    else:
        commits, other = syncs
        per_min = 60 * (commits + other) / s.fsync_s
        ratio = commits / max(1.0, batches)
        figures.append(
            Figure(
                "fsyncs_per_batch_1000_tags",
                "fsyncs per stored report batch, 1000 tags at 1 Hz",
                ratio,
                "",
                f"{commits} commit syncs for {batches:.0f} batches in {s.fsync_s:.0f} s; "
                f"{per_min:.1f} fsyncs/min in all ({other} checkpoint or history syncs)",
                "<= 1.00",
                ratio <= 1.0,
            )
        )
    return figures


# -- main -------------------------------------------------------------------------------------


def print_table(figures: list[Figure], seconds: float, settings: Settings) -> None:
    mode = "quick" if settings.quick else "full"
    print(
        f"\nedge-agent benchmarks ({mode} run, {seconds:.0f} s; Python "
        f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()})\n"
    )
    name_w = max(len(f.name) for f in figures)
    print(f"{'figure':<{name_w}}  {'value':>12}  {'target':<26}  verdict  reference")
    for f in figures:
        value = f"{f.value:,.2f} {f.unit}".strip()
        print(f"{f.name:<{name_w}}  {value:>12}  {f.target:<26}  {f.verdict:<7}  {f.reference}")
    misses = sum(1 for f in figures if f.passed is False)
    print(f"\n{len(figures)} figures, {misses} missed target(s)")


async def run(settings: Settings) -> tuple[list[Figure], float]:
    from edge_agent.broker import LocalBroker

    started = time.monotonic()
    figures: list[Figure] = []
    last = [started]

    def progress(what: str) -> None:
        now = time.monotonic()
        print(f"[{now - started:5.1f} s] {what} ({now - last[0]:.1f} s)", file=sys.stderr)
        last[0] = now

    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp_name:
        tmp = Path(tmp_name)
        opcua = await Proc.start("-m", "benchmarks.servers", "opcua", "1000")
        modbus = await Proc.start("-m", "benchmarks.servers", "modbus-map")
        try:
            async with LocalBroker(prefer="mosquitto") as broker:
                figures.append(figure_requests())
                # Both servers listening (and done building) before anything is measured.
                modbus_port = (await modbus.line())["port"]
                endpoint = (await opcua.line())["endpoint"]
                progress("figure_requests, servers up")
                figures.append(await figure_modbus_cpu(settings, modbus_port))
                progress("figure_modbus_cpu")
                figures.append(await figure_drain(settings, broker.port))
                progress("figure_drain")
                figures.append(await figure_opcua_cpu(settings, endpoint))
                progress("figure_opcua_cpu")
                figures.extend(await figures_subscribe(settings, opcua, endpoint))
                progress("figures_subscribe")
                await opcua.stop()
                figures.extend(await figure_latency(settings, tmp, broker.port))
                progress("figure_latency")
                figures.extend(await figures_cpu_rss(settings, tmp, broker.port, modbus_port))
                progress("figures_cpu_rss")
                await modbus.stop()
                figures.extend(await figures_scale(settings, tmp, broker.port))
                progress("figures_scale")
                figures.extend(await figures_idle(settings, tmp, broker.port))
                progress("figures_idle")
        finally:
            await opcua.stop()
            await modbus.stop()
    return figures, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the agent against the raw protocol libraries; print a table.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    figures, seconds = asyncio.run(run(settings))
    print_table(figures, seconds, settings)
    if args.json:
        doc = {
            "mode": "quick" if settings.quick else "full",
            "seconds": seconds,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "figures": [{**asdict(f), "verdict": f.verdict} for f in figures],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
