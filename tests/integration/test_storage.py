"""Storage faults against the whole agent (a real process), real Mosquitto and the simulators:
the state directory on a disk that fills up, a damaged outbox, a state directory deleted while
the agent runs.

A full disk is real: a small tmpfs mounted as ``storage.dir`` (root only; CI runs as root) and
filled with a file until the kernel says ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers.agent_process import AgentProcess
from helpers.aio import until
from helpers.net import free_port
from test_faults import PersistentSubscriber, agent_config, metric, sim

from edge_agent.config.schema import HistoryConfig
from edge_agent.model import Quality, Sample
from edge_agent.sinks.history import RESUME_FREE_BYTES, History
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

__all__ = ["sim"]  # the simulation fixture, shared with the fault tests

_CHUNK = b"\0" * 65536
KPI_SCHEMA = Path(__file__).parents[2] / "docs" / "schemas" / "kpi.schema.json"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted in teardown whatever the test did."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as a full disk needs root (CI runs as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file on ``disk`` until the kernel refuses: the disk is then full."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(_CHUNK)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Page by page for the last partial chunk.
    with filler.open("ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def sink_metric(port: int, name: str) -> float:
    try:
        return metric(port, name, 'sink="default"') or 0.0
    except OSError:
        return -1.0


def test_history_leaves_room_freed_on_a_full_disk_to_the_outbox(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Room an operator frees on a full disk goes to the outbox first: the history writes
    samples again only once ``RESUME_FREE_BYTES`` are free (it used to take the freed room with
    its next flush, so the outbox stayed full)."""
    t = [1_767_000_000.0]
    history = History(small_disk / "state" / "history.sqlite", HistoryConfig(), clock=lambda: t[0])

    def second(value: int) -> int:
        t[0] += 1
        history.record([Sample("press1", "total", value, Quality.GOOD, None, t[0])])
        return history.flush()

    try:
        assert second(0) > 0
        filler = fill(small_disk)
        value = 1
        while second(value) > 0:  # what SQLite had allocated fills first
            value += 1
        assert "disk full writing the history" in caplog.text
        os.truncate(filler, filler.stat().st_size - 100 * 1024)
        free = shutil.disk_usage(small_disk).free
        for later in range(value + 1, value + 6):
            assert second(later) == 0
        assert shutil.disk_usage(small_disk).free == free, "the history took the freed room"
        assert "recovered" not in caplog.text
        os.truncate(filler, filler.stat().st_size - RESUME_FREE_BYTES)
        assert second(value + 6) > 0
        assert "history at" in caplog.text and "recovered: writable again" in caplog.text
    finally:
        history.close()


async def test_disk_full_keeps_the_link_sends_nothing_twice_and_recovers(
    sim: Simulation, mosquitto: Any, small_disk: Path, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    metrics_port = free_port()
    state = small_disk / "state"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(agent_config(sim.modbus_port, mosquitto.port, state, metrics_port=metrics_port))
    agent = AgentProcess(cfg, stop_timeout_s=40)
    async with PersistentSubscriber(mosquitto.host, mosquitto.port) as sub:
        await agent.start()
        try:
            await sub.wait_for(lambda: len(sub.kpis["line1"]) >= 5, 60)
            filler = fill(small_disk)
            # Reports pile up in memory while the outbox cannot be written.
            await until(
                lambda: sink_metric(metrics_port, "edge_agent_outbox_held_in_memory") >= 5, 60
            )
            assert sink_metric(metrics_port, "edge_agent_mqtt_connected") == 1, agent.output()
            during = {line: max(seqs) for line, seqs in sub.seqs.items()}
            # 100 KiB of room again (as an operator deleting an old log file would make).
            os.truncate(filler, filler.stat().st_size - 100 * 1024)
            # New reports flow again, and the outbox empties.
            try:
                await sub.wait_for(
                    lambda: all(max(sub.seqs[line]) > during[line] + 5 for line in during), 60
                )
                await until(
                    lambda: (
                        sink_metric(metrics_port, "edge_agent_outbox_held_in_memory") == 0
                        and sink_metric(metrics_port, "edge_agent_outbox_messages") == 0
                    ),
                    60,
                )
            except TimeoutError:
                raise AssertionError(f"no recovery:\n{agent.output()}") from None
            assert sink_metric(metrics_port, "edge_agent_mqtt_connected") == 1, agent.output()
        finally:
            code = await agent.stop()
    log = agent.output()
    assert code == 0, log
    report = sub.report()
    print(report, *[line for line in log.splitlines() if "storage" in line], sep="\n")
    for line, figures in report.items():
        assert figures["duplicates"] == 0, (line, figures, log)
        assert figures["gaps"] == 0, (line, figures, log)
    assert log.count("storage: disk full writing the outbox") == 1, log
    assert log.count("storage: outbox at") == 1, log
    assert "recovered: writable again" in log.split("storage: disk full writing the outbox")[1]
    assert "connection to broker" not in log and "Traceback" not in log, log
    assert sub.connects == 1


async def test_disk_full_at_stop_says_what_was_lost(
    sim: Simulation, mosquitto: Any, small_disk: Path, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    metrics_port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        agent_config(
            sim.modbus_port, mosquitto.port, small_disk / "state", metrics_port=metrics_port
        )
    )
    agent = AgentProcess(cfg, stop_timeout_s=40)
    async with PersistentSubscriber(mosquitto.host, mosquitto.port) as sub:
        await agent.start()
        try:
            await sub.wait_for(lambda: len(sub.kpis["line1"]) >= 3, 60)
            fill(small_disk)
            await until(
                lambda: sink_metric(metrics_port, "edge_agent_outbox_held_in_memory") >= 3, 60
            )
        finally:
            code = await agent.stop()
    log = agent.output()
    assert code == 0, log
    lost = [line for line in log.splitlines() if "held in memory" in line and "lost" in line]
    assert len(lost) == 1, log
    assert "ERROR" in lost[0], lost


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.write_bytes(os.urandom(path.stat().st_size))


def recorded(history: Path) -> bool:
    """The history holds samples (written by the agent, read here on the side)."""
    if not history.exists():
        return False
    try:
        with sqlite3.connect(f"{history.as_uri()}?mode=ro", uri=True) as db:
            n = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        db.close()
    except sqlite3.Error:
        return False
    return bool(n)


@pytest.mark.parametrize("how", ["truncated", "junk"])
async def test_a_damaged_outbox_is_moved_aside_salvaged_and_said(
    how: str, sim: Simulation, mosquitto_factory: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    broker = mosquitto_factory()
    broker.stop()  # reports wait in the outbox
    metrics_port = free_port()
    state = tmp_path / "state"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        agent_config(
            sim.modbus_port, broker.port, state, metrics_port=metrics_port, publish_interval="100ms"
        )
    )
    outbox = state / "outbox.sqlite"
    agent = AgentProcess(cfg, stop_timeout_s=40)
    await agent.start()
    try:
        await until(lambda: sink_metric(metrics_port, "edge_agent_outbox_messages") >= 150, 60)
    finally:
        assert await agent.stop() == 0, agent.output()
    with sqlite3.connect(outbox) as db:
        queued = {(line, seq) for line, seq in db.execute("SELECT line, seq FROM messages")}
    db.close()
    damage(outbox, how)
    broker.start(attempts=1)
    async with PersistentSubscriber(broker.host, broker.port) as sub:
        await agent.start()
        try:
            # The agent runs and publishes, with the warning in the reports of the open windows.
            try:
                await sub.wait_for(
                    lambda: any("storage_recovered" in k["warnings"] for _, k in sub.kpis["line1"]),
                    60,
                )
            except TimeoutError:
                raise AssertionError(
                    f"no warned report: {sub.report()} {sub.kpis['line1'][-1:]}\n{agent.output()}"
                ) from None
            recovered = metric(
                metrics_port,
                "edge_agent_storage_recovered_total",
                'file="outbox.sqlite",reason="corrupt"',
            )
            assert recovered == 1, agent.output()
            await until(lambda: sink_metric(metrics_port, "edge_agent_outbox_messages") == 0, 60)
            # An empty outbox means the broker acknowledged everything; the subscriber may still
            # be receiving the last of it: wait until it has every salvaged message the log names.
            said = re.search(r"what could be read: (\d+) message", agent.output())
            if said is not None:

                def salvaged_seen() -> int:
                    return len({(ln, s) for ln, seqs in sub.seqs.items() for s in seqs} & queued)

                await sub.wait_for(lambda: salvaged_seen() >= int(said.group(1)), 30)
        finally:
            code = await agent.stop()
    log = agent.output()
    assert code == 0, log
    assert "Traceback" not in log, log
    aside = list(state.glob("outbox.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0, list(state.iterdir())
    lines = [line for line in log.splitlines() if "was damaged" in line]
    assert len(lines) == 1 and "ERROR" in lines[0] and aside[0].name in lines[0], log
    warned = [k for _, k in sub.kpis["line1"] if "storage_recovered" in k["warnings"]]
    jsonschema.validate(warned[0], json.loads(KPI_SCHEMA.read_text()))  # a documented warning
    delivered = {(line, seq) for line, seqs in sub.seqs.items() for seq in seqs}
    salvaged = queued & delivered
    print(f"{how}: {len(queued)} queued, {len(salvaged)} salvaged and delivered", lines[0])
    if how == "truncated":
        assert salvaged, (len(queued), log)
        assert f"{len(salvaged)} message(s)" in lines[0], lines[0]
    else:
        assert "0 message(s)" in lines[0], lines[0]
    # Numbering never goes back: the new reports come after everything queued before.
    for line in ("line1", "line2"):
        fresh = [seq for seq in sub.seqs[line] if (line, seq) not in queued]
        assert min(fresh) > max(seq for ln, seq in queued if ln == line)


async def test_state_directory_deleted_while_running_is_recreated(
    sim: Simulation, mosquitto: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    metrics_port = free_port()
    state = tmp_path / "state"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(agent_config(sim.modbus_port, mosquitto.port, state, metrics_port=metrics_port))
    agent = AgentProcess(cfg, stop_timeout_s=40)
    async with PersistentSubscriber(mosquitto.host, mosquitto.port) as sub:
        await agent.start()
        try:
            await sub.wait_for(lambda: len(sub.kpis["line1"]) >= 3, 60)
            await until(lambda: recorded(state / "history.sqlite"), 30)
            shutil.rmtree(state)
            await until((state / "outbox.sqlite").exists, 30)
            await until((state / "history.sqlite").exists, 30)
            seen = len(sub.kpis["line1"])
            await sub.wait_for(lambda: len(sub.kpis["line1"]) >= seen + 5, 60)

            def recovered(file: str) -> float | None:
                labels = f'file="{file}",reason="deleted"'
                return metric(metrics_port, "edge_agent_storage_recovered_total", labels)

            assert recovered("outbox.sqlite") == 1, agent.output()
            assert recovered("history.sqlite") == 1, agent.output()
            assert sink_metric(metrics_port, "edge_agent_mqtt_connected") == 1
        finally:
            code = await agent.stop()
    log = agent.output()
    assert code == 0, log
    assert log.count("was deleted while the agent ran") == 2, log
    report = sub.report()
    for line, figures in report.items():
        assert figures["gaps"] == 0 and figures["duplicates"] == 0, (line, figures)
    # What the agent stored after the deletion is in the new file.
    with sqlite3.connect(state / "outbox.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM state").fetchone()[0] == 2
    db.close()
