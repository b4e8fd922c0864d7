"""A Sparkplug B sink end to end: the agent as a process, a real Mosquitto, the simulator, and
every payload decoded by Eclipse Tahu's reference decoder (not the agent's own code).

One run walks the node's life: births, data, an NCMD rebirth, a lost link (NDEATH by will,
reports queued, then replayed as historical after the new births), kill -9 (NDEATH by will),
a restart (bdSeq + 1) and a clean stop (DDEATH, NDEATH)."""

from __future__ import annotations

import itertools
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from helpers.agent_process import AgentProcess
from helpers.aio import until
from helpers.configs import two_lines_on_one_plc
from helpers.proxy import Proxy
from helpers.subscriber import Received, Subscriber
from helpers.tahu import tahu_decode

from edge_agent.sinks import sparkplug
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

GROUP, NODE = "sup", "edge-agent"
LINES = ("line1", "line2")


def config_text(modbus_port: int, broker_port: int, state: Path) -> str:
    return (
        two_lines_on_one_plc(modbus_port)
        + f"""
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  encoding: sparkplug_b
  publish_interval: 200ms
  timeout: 2s
  keepalive: 5s
  backoff_initial: 100ms
  backoff_max: 300ms
prometheus: {{enabled: false}}
storage: {{dir: {state}}}
"""
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    async with Simulation(lines=2, seed=3, speed=4.0, opcua_port=None) as s:
        yield s


def kind(r: Received) -> str:
    return r.topic.split("/")[2]


def metrics(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in doc["metrics"]}


def outbox_depth(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        db.close()


async def births(sub: Subscriber, after: int) -> tuple[int, list[Received]]:
    """Wait for an NBIRTH after index ``after`` and the DBIRTHs of both lines that follow it;
    return the NBIRTH's index and the births."""
    nb = await sub.wait_for(lambda r: kind(r) == "NBIRTH" and sub.received.index(r) >= after)
    start = sub.received.index(nb)
    await sub.wait_for(
        lambda _r: (
            {r.topic.rsplit("/", 1)[1] for r in sub.received[start:] if kind(r) == "DBIRTH"}
            == set(LINES)
        )
    )
    return start, sub.received[start:]


def check_seq(decoded: list[dict[str, Any]]) -> None:
    """From an NBIRTH (seq 0) on, every node message's seq is the previous one + 1 mod 256."""
    assert decoded[0]["seq"] == 0
    for before, after in itertools.pairwise(decoded):
        assert after["seq"] == (before["seq"] + 1) % 256, (before["seq"], after["seq"])


def check_declared(received: list[Received], decoded: list[dict[str, Any]]) -> None:
    """Every DDATA metric is declared by its device's last DBIRTH (a host rejects others)."""
    declared: dict[str, set[str]] = {}
    for r, doc in zip(received, decoded, strict=True):
        device = r.topic.rsplit("/", 1)[1]
        if kind(r) == "DBIRTH":
            declared[device] = {m["name"] for m in doc["metrics"]}
        elif kind(r) == "DDATA":
            assert {m["name"] for m in doc["metrics"]} <= declared[device], r.topic


def check_dbirth(doc: dict[str, Any]) -> None:
    ms = metrics(doc)
    expected = {sparkplug.TOPIC_FOLDERS[t] + s.name: s for t, s in sparkplug.LINE_METRICS}
    assert set(ms) == set(expected)
    for name, spec in expected.items():
        assert ms[name]["type"] == spec.datatype.name.title().replace("Datetime", "DateTime")
    assert ms["run_time_s"]["properties"]["engUnit"]["value"] == "s"


def check_ddata(doc: dict[str, Any], *, historical: bool) -> None:
    ms = metrics(doc)
    oee = ms["oee"]
    assert oee["type"] == "Double"
    # The simulator runs 4x faster than the agent's clock, so performance (not clamped) and
    # OEE exceed 1 here; availability and quality are ratios in [0, 1], OEE their product.
    a, p, q = (ms[n]["value"] for n in ("availability", "performance", "quality"))
    if oee["value"] is not None:
        assert 0.0 <= a <= 1.0 and 0.0 <= q <= 1.0
        assert oee["value"] == pytest.approx(a * p * q, rel=1e-4, abs=1e-5)
    assert ms["total_count"]["type"] == "Int64"
    assert isinstance(ms["total_count"]["value"], int) and ms["total_count"]["value"] >= 0
    assert ms["state"]["type"] == "String"
    assert ms["window/start"]["type"] == "DateTime"
    assert ms["window/start"]["value"] <= oee["timestamp"] <= doc["timestamp"]
    # Timestamps in ms since 1970, within a day of now.
    assert abs(doc["timestamp"] - oee["timestamp"]) < 86_400_000
    for m in doc["metrics"]:
        assert bool(m.get("isHistorical", False)) is historical, m


async def test_sparkplug_b_node_lifecycle_decoded_by_tahu(
    sim: Simulation, mosquitto: Any, tmp_path: Path
) -> None:
    assert sim.modbus_port is not None
    state = tmp_path / "state"
    ncmd = f"spBv1.0/{GROUP}/NCMD/{NODE}"
    async with (
        Proxy(mosquitto.host, mosquitto.port) as proxy,
        Subscriber(mosquitto.host, mosquitto.port, "spBv1.0/#") as sub,
    ):
        path = tmp_path / "agent.yaml"
        path.write_text(config_text(sim.modbus_port, proxy.port, state))
        agent = AgentProcess(path)
        await agent.start()
        try:
            # Births, then live data of both lines.
            first, _ = await births(sub, 0)
            await sub.wait_for(
                lambda _r: sum(kind(r) == "DDATA" for r in sub.received[first:]) >= 6, 20
            )
            session1 = sub.received[first:]
            decoded = tahu_decode([r.payload for r in session1])
            assert session1[0].topic == f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
            nbirth = metrics(decoded[0])
            bdseq1 = nbirth["bdSeq"]["value"]
            assert nbirth["Node Control/Rebirth"]["type"] == "Boolean"
            assert nbirth["Node Control/Rebirth"]["value"] is False
            check_seq(decoded)
            check_declared(session1, decoded)
            for r, doc in zip(session1, decoded, strict=True):
                assert not r.retain
                if kind(r) == "DBIRTH":
                    check_dbirth(doc)
                elif kind(r) == "DDATA":
                    assert r.topic.rsplit("/", 1)[1] in LINES
                    if "oee" in metrics(doc):
                        # Reports made before the first NBIRTH (the engine starts with the
                        # link) are historical too.
                        check_ddata(doc, historical=bool(doc["metrics"][0].get("isHistorical")))
            flags = [bool(d["metrics"][0].get("isHistorical")) for d in decoded[3:]]
            assert flags == sorted(flags, reverse=True) and not flags[-1]

            # NCMD rebirth: NBIRTH (same bdSeq, seq 0) and both DBIRTHs again, with values.
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=5) as cmd:
                rebirth = sparkplug.encode(
                    0,
                    [sparkplug.Metric(sparkplug.REBIRTH_METRIC, sparkplug.DataType.BOOLEAN, True)],
                    None,
                )
                await cmd.publish(ncmd, rebirth, qos=1)
            _, reborn = await births(sub, len(sub.received))
            docs = tahu_decode([r.payload for r in reborn if kind(r) in {"NBIRTH", "DBIRTH"}])
            assert metrics(docs[0])["bdSeq"]["value"] == bdseq1 and docs[0]["seq"] == 0
            for doc in docs[1:]:
                check_dbirth(doc)
                assert metrics(doc)["total_count"]["value"] is not None

            # The link breaks: the broker sends the will, NDEATH with the session's bdSeq.
            proxy.refuse = True
            proxy.cut()
            death = await sub.wait_for(lambda r: kind(r) == "NDEATH", 20)
            assert metrics(tahu_decode([death.payload])[0])["bdSeq"]["value"] == bdseq1
            # Reports queue on disk meanwhile.
            await until(lambda: outbox_depth(state / "outbox.sqlite") >= 6, timeout_s=20.0)
            mark = len(sub.received)
            proxy.refuse = False
            third, _ = await births(sub, mark)
            await sub.wait_for(
                # (the agent's own decoder only to wait; the checks below use Tahu's)
                lambda _r: any(
                    kind(r) == "DDATA" and not sparkplug.decode(r.payload).metrics[0].is_historical
                    for r in sub.received[third:]
                ),
                20,
            )
            session3 = sub.received[third:]
            decoded = tahu_decode([r.payload for r in session3])
            bdseq2 = metrics(decoded[0])["bdSeq"]["value"]
            # One bdSeq per CONNECT: the refused attempts in between used some.
            assert 1 <= (bdseq2 - bdseq1) % 256 < 128
            check_seq(decoded)
            check_declared(session3, decoded)
            data = [(r, d) for r, d in zip(session3, decoded, strict=True) if kind(r) == "DDATA"]
            flags = [bool(d["metrics"][0].get("isHistorical")) for _, d in data]
            # The queued reports first, all historical, then the live ones.
            assert flags[0] is True and flags == sorted(flags, reverse=True)
            for line in LINES:
                stamps = [
                    metrics(d)["oee"]["timestamp"]
                    for r, d in data
                    if r.topic.endswith("/" + line) and "oee" in metrics(d)
                ]
                assert stamps == sorted(stamps)  # in order
            for _, d in data:
                if "oee" in metrics(d):
                    check_ddata(d, historical=bool(d["metrics"][0].get("isHistorical")))

            # kill -9: the broker delivers this session's NDEATH.
            mark = len(sub.received)
            await agent.stop(signal.SIGKILL)
            death = await sub.wait_for(
                lambda r: kind(r) == "NDEATH" and sub.received.index(r) >= mark, 20
            )
            assert metrics(tahu_decode([death.payload])[0])["bdSeq"]["value"] == bdseq2

            # Restart: the next bdSeq, from the state directory.
            mark = len(sub.received)
            await agent.start()
            fourth, _ = await births(sub, mark)
            nb = tahu_decode([sub.received[fourth].payload])[0]
            assert metrics(nb)["bdSeq"]["value"] == (bdseq2 + 1) % 256

            # A clean stop: DDEATH per line, then NDEATH.
            mark = len(sub.received)
            assert await agent.stop() == 0
            await sub.wait_for(lambda r: kind(r) == "NDEATH" and sub.received.index(r) >= mark, 20)
            ends = [kind(r) for r in sub.received[mark:] if kind(r) in {"DDEATH", "NDEATH"}]
            assert ends == ["DDEATH", "DDEATH", "NDEATH"]
        finally:
            if agent.alive:
                await agent.stop(signal.SIGKILL)
