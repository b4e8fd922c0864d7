"""``edge-agent demo`` end to end, and the local broker it starts.

The demo runs as a real subprocess (``python -m edge_agent.cli demo``) with ``TMPDIR`` and the
working directory inside ``tmp_path``: whatever it starts (a Mosquitto with its temporary
config, a temporary state directory) names a path under ``tmp_path``, so a leftover is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import re
import signal
import socket
import sys
import zoneinfo
from dataclasses import dataclass, field
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from helpers.contract import contract

from edge_agent.broker import LocalBroker
from edge_agent.config.loader import load_config
from edge_agent.config.schema import ModbusSourceConfig, OpcuaSourceConfig
from edge_agent.demo import (
    BrokerView,
    DemoEndpoints,
    add_arguments,
    default_config_path,
    demo_config,
    render_table,
    run_demo,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFIX = "edge-agent/demo-site"
LINES = ("line1", "line2")


# -- helpers ---------------------------------------------------------------------------------


async def _port_closed(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return True
    writer.close()
    return False


def _pid_alive(pid: int) -> bool:
    # A zombie still has a /proc entry; it is gone for our purpose once it exited.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _pid_alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline}")
    return found


async def _roundtrip(host: str, port: int) -> None:
    async with aiomqtt.Client(host, port, identifier="test-roundtrip", timeout=5) as client:
        await client.subscribe("t/#", qos=1)
        await client.publish("t/x", b"hello", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.payload == b"hello"
                break


@dataclass
class Seen:
    """Messages a test subscriber received on ``#``."""

    kpi: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {ln: [] for ln in LINES})
    status: list[str] = field(default_factory=list)
    raw: list[tuple[str, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, topic: str, payload: bytes) -> None:
        self.raw.append((topic, payload))
        if topic == f"{PREFIX}/status":
            self.status.append(json.loads(payload)["status"])
        else:
            for line in LINES:
                if topic == f"{PREFIX}/{line}/kpi":
                    self.kpi[line].append(json.loads(payload))
        self.changed.set()

    async def wait_for(self, condition: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def _follow(host: str, port: int, seen: Seen, subscribed: asyncio.Event) -> None:
    async with aiomqtt.Client(host, port, identifier=f"test-follow-{port}", timeout=5) as client:
        await client.subscribe("#", qos=1)
        subscribed.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            seen.add(str(message.topic), message.payload)


def _assert_kpis(seen: Seen) -> None:
    # Everything the demo's agent published holds to the published contract.
    for topic, payload in seen.raw:
        contract().validate(topic, payload)
    for line in LINES:
        # Retained copies from an earlier connection can repeat a seq: de-duplicate as the
        # contract tells subscribers to, then it must be strictly increasing.
        seqs = [m["seq"] for m in seen.kpi[line]]
        deduped = [s for i, s in enumerate(seqs) if i == 0 or s != seqs[i - 1]]
        assert len(deduped) >= 3, f"{line}: only {len(deduped)} kpi snapshots: {seqs}"
        assert all(a < b for a, b in itertools.pairwise(deduped)), seqs
        oees = [m["oee"] for m in seen.kpi[line] if m["oee"] is not None]
        assert oees, f"{line}: OEE never defined"
        assert all(x >= 0.0 for x in oees), oees
        for m in seen.kpi[line]:
            # OEE = good × ideal / known planned time, not clamped. The simulated machines never
            # beat their ideal cycle, so a snapshot may exceed 1 only by counting granularity
            # (parts of one poll seen just after a window starts): at most 2 parts.
            known_s = m["planned_time_s"] - m["unknown_time_s"]
            ideal_s = m["ideal_cycle_time_s"]
            assert m["good_count"] * ideal_s <= known_s + 2 * ideal_s, m
        for m in seen.kpi[line]:
            assert m["site"] == "demo-site"
            assert m["line"] == line


def _workdir(tmp_path: Path) -> Path:
    """The demo's cwd and TMPDIR: apart from the Mosquitto fixture's files, so that a process
    naming this directory can only be something the demo started."""
    work = tmp_path / "demo"
    work.mkdir()
    return work


async def _start_demo(work: Path, *extra: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, TMPDIR=str(work), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "demo",
        "--config",
        str(REPO / "config" / "demo.yaml"),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=work,
        env=env,
    )


class Output:
    """Collects a subprocess's output lines; lets a test wait for one matching a pattern."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._proc = proc
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._new.set()
        self._new.set()

    async def wait_match(self, pattern: str, timeout_s: float) -> re.Match[str]:
        async with asyncio.timeout(timeout_s):
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                if self.task.done():
                    raise AssertionError(f"no {pattern!r} in output:\n" + "\n".join(self.lines))
                self._new.clear()
                await self._new.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def _demo_process(work: Path, *extra: str) -> Any:
    proc = await _start_demo(work, *extra)
    out = Output(proc)
    try:
        yield proc, out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await out.task


def _assert_nothing_left(work: Path) -> None:
    assert _processes_mentioning(str(work)) == []
    leftovers = [p.name for p in work.iterdir() if p.name.startswith("edge-agent-")]
    assert leftovers == [], leftovers


# -- LocalBroker -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefer", ["auto", "amqtt"])
async def test_local_broker_serves_then_stops(prefer: str) -> None:
    async with LocalBroker(prefer=prefer) as broker:  # type: ignore[arg-type]
        assert broker.host == "127.0.0.1"
        assert broker.port > 0
        expected = "amqtt" if prefer == "amqtt" else "mosquitto"  # Mosquitto is installed here
        assert broker.kind == expected
        pid = broker.pid
        assert (pid is not None) == (expected == "mosquitto")
        await _roundtrip(broker.host, broker.port)
        port = broker.port
    assert await _port_closed("127.0.0.1", port)
    if pid is not None:
        assert not _pid_alive(pid)


async def test_local_broker_stops_mosquitto_when_cancelled() -> None:
    started: asyncio.Future[LocalBroker] = asyncio.get_running_loop().create_future()

    async def hold() -> None:
        async with LocalBroker(prefer="mosquitto") as broker:
            started.set_result(broker)
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    async with asyncio.timeout(15):
        broker = await started
    pid, port = broker.pid, broker.port
    assert pid is not None and _pid_alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _pid_alive(pid)
    assert await _port_closed("127.0.0.1", port)


# -- the view --------------------------------------------------------------------------------


def test_view_counts_gaps_and_tracks_presence() -> None:
    view = BrokerView(prefix="edge-agent", site="s")
    kpi = {"seq": 1, "state": "running", "oee": 0.5, "total_count": 10}
    view.receive("edge-agent/s/status", b'{"status": "online"}', now_monotonic=0.0)
    assert not view.offline.is_set()
    view.receive("edge-agent/s/l1/kpi", json.dumps(kpi).encode(), now_monotonic=1.0)
    view.receive("edge-agent/s/l1/state", b'{"state": "idle", "seq": 2}', now_monotonic=2.0)
    text = view.receive(
        "edge-agent/s/l1/kpi", json.dumps(kpi | {"seq": 5}).encode(), now_monotonic=3.0
    )
    view.receive("edge-agent/s/status", b'{"status": "offline"}', now_monotonic=4.0)
    line = view.lines["l1"]
    assert (line.messages, line.kpi_messages, line.last_seq, line.seq_gaps) == (3, 2, 5, 2)
    assert text is not None and "seq=5" in text
    assert view.offline.is_set()
    rows = render_table(view, ["l1", "l2"], now_monotonic=10.0)
    assert rows[1].split()[:3] == ["l1", "running", "50.0%"]
    assert rows[1].split()[-2:] == ["5", "7s"]
    assert rows[2].split()[:2] == ["l2", "-"]


def test_demo_config_points_everything_at_the_demo_parts() -> None:
    base = load_config(str(default_config_path()))
    ep = DemoEndpoints(
        modbus_host="127.0.0.1",
        modbus_port=15020,
        opcua_endpoint="opc.tcp://127.0.0.1:14840/",
        mqtt_host="127.0.0.1",
        mqtt_port=11883,
        state_dir="/somewhere/state",
        speed=2.0,
        shift_minutes=5,
    )
    cfg = demo_config(base, ep)
    modbus = [s for s in cfg.sources if isinstance(s, ModbusSourceConfig)]
    opcua = [s for s in cfg.sources if isinstance(s, OpcuaSourceConfig)]
    assert modbus and opcua
    assert all((s.host, s.port) == ("127.0.0.1", 15020) for s in modbus)
    assert all(s.endpoint == "opc.tcp://127.0.0.1:14840/" for s in opcua)
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", 11883)
    assert cfg.mqtt.topic_prefix == base.mqtt.topic_prefix
    assert cfg.prometheus.port == 0
    assert cfg.storage.dir == "/somewhere/state"
    # Twice the simulated speed: parts come twice as fast, so the ideal cycle halves.
    for line, before in zip(cfg.lines, base.lines, strict=True):
        assert line.ideal_cycle_time_s == before.ideal_cycle_time_s / 2
        # 5-minute shifts back to back: 288 a day, each starting where the previous ended.
        assert len(line.shifts) == 288
        assert line.shifts[0].start == dt_time(0, 0) and line.shifts[0].end == dt_time(0, 5)
        assert line.shifts[-1].start == dt_time(23, 55) and line.shifts[-1].end == dt_time(0, 0)
        assert all(a.end == b.start for a, b in zip(line.shifts, line.shifts[1:], strict=False))
    assert demo_config(base, dataclasses.replace(ep, shift_minutes=0)).lines[0].shifts == (
        base.lines[0].shifts
    )


async def test_demo_missing_config_is_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "nope.yaml"), "--no-table"])
    assert await run_demo(args) == 78
    assert "nope.yaml" in capsys.readouterr().err


# -- the demo, end to end --------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["auto", "amqtt"])
async def test_demo_with_its_own_broker(tmp_path: Path, broker: str) -> None:
    work = _workdir(tmp_path)
    seen = Seen()
    extra = ("--duration", "12", "--no-table", "--seed", "3", "--broker", broker)
    async with _demo_process(work, *extra) as (proc, out):
        m = await out.wait_match(r"broker\s+(\w+) at 127\.0\.0\.1:(\d+)", timeout_s=30)
        assert m.group(1) == ("amqtt" if broker == "amqtt" else "mosquitto")
        port = int(m.group(2))
        subscribed = asyncio.Event()
        follower = asyncio.create_task(_follow("127.0.0.1", port, seen, subscribed))
        try:
            async with asyncio.timeout(5):
                await subscribed.wait()
            await seen.wait_for(lambda: "offline" in seen.status, timeout_s=40)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        async with asyncio.timeout(30):
            code = await proc.wait()
        await out.task
    assert code == 0, out.text
    assert "online" in seen.status
    assert seen.status[-1] == "offline"
    _assert_kpis(seen)
    assert re.search(r"line1: \d+ message", out.text), out.text
    assert re.search(r"line2: \d+ message", out.text), out.text
    # One time zone on the screen, named: the lines' (Asia/Seoul), not the host's.
    assert re.search(r"^\s+times\s+Asia/Seoul: ", out.text, re.M), out.text
    clocks = re.findall(r"^(\d\d):(\d\d):\d\d line1 ", out.text, re.M)
    assert clocks, out.text
    seoul = datetime.datetime.now(zoneinfo.ZoneInfo("Asia/Seoul"))
    minutes = {int(h) * 60 + int(m) for h, m in clocks}
    now_minutes = seoul.hour * 60 + seoul.minute
    assert all((now_minutes - m) % 1440 <= 2 for m in minutes), (clocks, seoul)
    # The demo's broker is gone with it.
    assert await _port_closed("127.0.0.1", port)
    _assert_nothing_left(work)


async def test_demo_on_an_existing_broker_stops_on_sigint(tmp_path: Path, mosquitto: Any) -> None:
    host, port = mosquitto.host, mosquitto.port
    seen = Seen()
    subscribed = asyncio.Event()
    follower = asyncio.create_task(_follow(host, port, seen, subscribed))
    state_dir = tmp_path / "state"
    work = _workdir(tmp_path)
    try:
        async with asyncio.timeout(5):
            await subscribed.wait()
        # No --no-table: stdout is a pipe, so the plain output must be chosen on its own.
        extra = ("--mqtt-host", host, "--mqtt-port", str(port), "--state-dir", str(state_dir))
        async with _demo_process(work, *extra) as (proc, out):
            await out.wait_match(rf"broker\s+existing broker at {host}:{port}", timeout_s=30)
            # The operator page is up, its PIN printed and kept in the state directory.
            page = await out.wait_match(
                r"operator\s+http://127\.0\.0\.1:(\d+)/  \(PIN (\d{6})\)", timeout_s=30
            )
            assert (state_dir / "operator-pin").read_text().strip() == page[2]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{page[1]}/", timeout=aiohttp.ClientTimeout(5)) as r,
            ):
                assert "/static/app.js" in await r.text()
            await seen.wait_for(lambda: "online" in seen.status, timeout_s=30)
            await seen.wait_for(
                lambda: (
                    all(len(seen.kpi[ln]) >= 3 for ln in LINES)
                    and all(any(m["oee"] is not None for m in seen.kpi[ln]) for ln in LINES)
                ),
                timeout_s=60,
            )
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                code = await proc.wait()
            await out.task
        assert code == 0, out.text
        assert "line1 kpi seq=" in out.text  # one plain line per received KPI message
        assert "\x1b[" not in out.text  # no live table on a pipe
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    _assert_kpis(seen)
    # Presence is retained: a client arriving after the demo sees it offline.
    async with aiomqtt.Client(host, port, identifier="test-after", timeout=5) as client:
        await client.subscribe(f"{PREFIX}/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                assert isinstance(message.payload, bytes)
                assert json.loads(message.payload)["status"] == "offline"
                break
    # The state directory was kept, for a later demo to resume from.
    assert (state_dir / "outbox.sqlite").exists()
    _assert_nothing_left(work)


async def test_demo_table_mode_renders_on_a_terminal(tmp_path: Path) -> None:
    """On a TTY the demo redraws the table in place (ANSI), and still exits 0 after --duration."""
    import pty

    work = _workdir(tmp_path)
    leader, follower_fd = pty.openpty()
    env = dict(os.environ, TMPDIR=str(work), PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "demo",
        "--duration",
        "5",
        stdout=follower_fd,
        stderr=follower_fd,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=work,
        env=env,
    )
    os.close(follower_fd)
    chunks: list[bytes] = []
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end closed, the demo exited
            data = b""
        if data:
            chunks.append(data)
        else:
            loop.remove_reader(leader)
            closed.set()

    os.set_blocking(leader, False)
    loop.add_reader(leader, readable)
    try:
        async with asyncio.timeout(60):
            await closed.wait()
            code = await proc.wait()
    finally:
        loop.remove_reader(leader)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert code == 0, text
    assert "\x1b[J" in text  # redrawn in place
    assert "LINE" in text and "OEE" in text
    assert "summary" in text
    _assert_nothing_left(work)


async def test_killed_demo_takes_its_broker_along(tmp_path: Path) -> None:
    """Even SIGKILL (no cleanup code runs) leaves no Mosquitto behind: it dies with its parent."""
    work = _workdir(tmp_path)
    async with _demo_process(work, "--no-table") as (proc, out):
        m = await out.wait_match(r"broker\s+mosquitto at 127\.0\.0\.1:(\d+)", timeout_s=30)
        port = int(m.group(1))
        assert _processes_mentioning(str(work)) != []  # the broker runs from the demo's TMPDIR
        proc.kill()
        await proc.wait()
    # The kernel delivers the parent-death signal; there is nothing to wait on but /proc.
    async with asyncio.timeout(10):
        while _processes_mentioning(str(work)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await _port_closed("127.0.0.1", port)


async def test_demo_with_an_unreachable_broker_fails_cleanly(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        extra = ("--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--duration", "30")
        async with _demo_process(work, *extra) as (proc, out):
            async with asyncio.timeout(40):
                code = await proc.wait()
            await out.task
    assert code == 1, out.text
    assert f"cannot reach the MQTT broker at 127.0.0.1:{port}" in out.text
    assert "Traceback" not in out.text
    _assert_nothing_left(work)
