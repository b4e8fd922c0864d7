"""The Sparkplug B sink in process against a real Mosquitto, every payload decoded by Eclipse
Tahu's reference decoder: a rebirth while a backlog drains, the births' values after an
outage, and a stray retained NCMD."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from helpers.aio import until
from helpers.mosquitto import Mosquitto, MosquittoFactory
from helpers.subscriber import Received, Subscriber
from helpers.tahu import tahu_decode

from edge_agent.config.schema import MqttConfig, MqttEncoding
from edge_agent.model import OutMessage
from edge_agent.sinks import sparkplug as spb
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox

pytestmark = pytest.mark.integration

SITE = "plant1"  # the default group_id
NODE = "edge-agent"
LINES = ("line1", "line2")
NCMD = f"spBv1.0/{SITE}/NCMD/{NODE}"


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    # No bound on the subscriber's queue: the test reads it only after the drain.
    return mosquitto_factory(extra_conf="max_queued_messages 0\n")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.sqlite")
    yield box
    box.close()


def sink_for(broker: Mosquitto, outbox: Outbox, max_inflight: int = 8) -> MqttSink:
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        timeout_s=2.0,
        keepalive_s=5.0,
        max_inflight=max_inflight,
        encoding=MqttEncoding.SPARKPLUG_B,
    )
    return MqttSink(cfg, site=SITE, outbox=outbox, lines=LINES)


@asynccontextmanager
async def running(sink: MqttSink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sink.run(), name="mqtt-sink")
    try:
        yield task
    finally:
        if not task.done():
            await sink.close(5.0)
        await asyncio.wait([task], timeout=15.0)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()


def kind(r: Received) -> str:
    return r.topic.split("/")[2]


def kpi(line: str, n: int, *, topic: str = "kpi", oee: float = 0.5) -> OutMessage:
    ts = datetime.fromtimestamp(1_741_000_000 + n, UTC).isoformat()
    payload = {"ts": ts, "state": "running", "oee": oee, "total_count": n}
    if topic == "kpi/shift":
        payload["window"] = {"kind": "shift", "name": "A"}
    return OutMessage(line=line, topic_suffix=topic, payload=payload, retain=False)


def rebirth_request() -> bytes:
    return spb.encode(0, [spb.Metric(spb.REBIRTH_METRIC, spb.DataType.BOOLEAN, True)], None)


def check_session(received: list[Received], decoded: list[dict[str, Any]]) -> None:
    """From each NBIRTH on, seq goes 0, 1, 2, … mod 256 over every node message, and every
    DDATA metric was declared by its device's last DBIRTH."""
    declared: dict[str, set[str]] = {}
    for before, after in itertools.pairwise(zip(received, decoded, strict=True)):
        if kind(after[0]) == "NBIRTH":
            assert after[1]["seq"] == 0
        else:
            assert after[1]["seq"] == (before[1]["seq"] + 1) % 256, (
                before[0].topic,
                before[1]["seq"],
                after[0].topic,
                after[1]["seq"],
            )
    for r, doc in zip(received, decoded, strict=True):
        device = r.topic.rsplit("/", 1)[1]
        if kind(r) == "DBIRTH":
            declared[device] = {m["name"] for m in doc["metrics"]}
        elif kind(r) == "DDATA":
            assert {m["name"] for m in doc["metrics"]} <= declared[device]


async def test_rebirth_during_a_backlog_drain_keeps_seq_order_and_births_show_queued_values(
    broker: Mosquitto, outbox: Outbox
) -> None:
    rows = 1200
    outbox.append([kpi(LINES[i % 2], i) for i in range(rows)])
    # A shift closed during the outage: the newest queued kpi/shift row of line1.
    outbox.append([kpi("line1", rows, topic="kpi/shift", oee=0.42)])
    sink = sink_for(broker, outbox)
    async with (
        Subscriber(broker.host, broker.port, "spBv1.0/#") as sub,
        aiomqtt.Client(broker.host, broker.port, timeout=5.0) as cmd,
        running(sink),
    ):
        await sub.wait_for(lambda r: kind(r) == "DDATA")
        await cmd.publish(NCMD, rebirth_request(), qos=1)
        await until(lambda: outbox.depth() == 0, 30.0)
        await sub.wait_for(
            lambda _r: sum(kind(r) == "DDATA" for r in sub.received) >= rows + 1, 30.0
        )
    # Node messages only (the NCMD is ours, NDEATH has no seq).
    received = [r for r in sub.received if kind(r) not in {"NCMD", "NDEATH"}]
    decoded = tahu_decode([r.payload for r in received])
    assert kind(received[0]) == "NBIRTH"
    check_session(received, decoded)
    nbirths = [i for i, r in enumerate(received) if kind(r) == "NBIRTH"]
    assert len(nbirths) == 2
    # The rebirth came while the backlog drained: queued (historical) DDATA follow it.
    assert any(kind(r) == "DDATA" for r in received[nbirths[1] :])
    # The first DBIRTH of line1 carries the queued shift's values as current values; the row
    # itself still goes out as historical DDATA.
    dbirth1 = next(
        d
        for r, d in zip(received, decoded, strict=True)
        if r.topic.endswith(f"DBIRTH/{NODE}/line1")
    )
    values = {m["name"]: m["value"] for m in dbirth1["metrics"]}
    assert values["last_shift/oee"] == pytest.approx(0.42)
    assert values["total_count"] == rows - 2  # the newest queued kpi row of line1
    shift = [
        d
        for r, d in zip(received, decoded, strict=True)
        if kind(r) == "DDATA" and any(m["name"] == "last_shift/oee" for m in d["metrics"])
    ]
    assert len(shift) == 1 and all(m["isHistorical"] for m in shift[0]["metrics"])


async def test_a_retained_ncmd_is_ignored(
    broker: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.mqtt")
    async with aiomqtt.Client(broker.host, broker.port, timeout=5.0) as cmd:
        await cmd.publish(NCMD, rebirth_request(), qos=1, retain=True)
    sink = sink_for(broker, outbox)
    async with Subscriber(broker.host, broker.port, "spBv1.0/#") as sub, running(sink):
        await until(lambda: "ignoring a retained rebirth request" in caplog.text)
        outbox.append([kpi("line1", 1)])
        sink.notify()
        await sub.wait_for(lambda r: kind(r) == "DDATA")
        assert [kind(r) for r in sub.received].count("NBIRTH") == 1
