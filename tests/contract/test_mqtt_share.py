"""The MQTT sink's publish-time share check, against Mosquitto: messages queued under a wider
agreement (or by another sink) never leave the plant once the share is narrower."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.subscriber import Subscriber

from edge_agent.config.schema import MqttConfig, ShareConfig
from edge_agent.model import OutMessage
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox
from tests.contract.test_mqtt_sink import running

SITE = "plant1"


def full(line: str, suffix: str, n: int) -> OutMessage:
    payload = {"schema": "edge-agent/kpi/1", "site": SITE, "line": line, "ts": "t", "n": n}
    return OutMessage(line, suffix, {**payload, "oee": 0.5, "quality": 0.9}, retain=False)


async def test_queued_messages_outside_the_share_are_withheld(
    mosquitto: Any, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "outbox-sponsor.sqlite")
    try:
        # Queued before the agreement was narrowed: two lines, three topics, every field.
        box.append([full("l1", "kpi", 1), full("l2", "kpi", 2), full("l1", "state", 3)])
        box.append([full("l1", "kpi/shift", 4)])
        share = ShareConfig(
            lines=frozenset({"l1"}),
            topics=frozenset({"kpi", "kpi/shift"}),
            fields=frozenset({"oee"}),
        )
        cfg = MqttConfig(name="sponsor", host=mosquitto.host, port=mosquitto.port, share=share)
        sink = MqttSink(cfg, site=SITE, outbox=box)
        async with Subscriber(mosquitto.host, mosquitto.port, "#") as sub:
            async with running(sink):
                sink.notify()
                await sub.collect(3)
            # `offline` follows everything the sink published, on the same connection.
            await sub.wait_for(lambda r: r.topic.endswith("/status") and b"offline" in r.payload)
        got = [r for r in sub.received if not r.topic.endswith("/status")]
        assert [r.topic for r in got] == [
            f"edge-agent/{SITE}/l1/kpi",
            f"edge-agent/{SITE}/l1/kpi/shift",
        ]
        for r in got:
            doc = json.loads(r.payload)
            assert set(doc) == {"schema", "site", "line", "ts", "seq", "oee", "shared"}
        assert box.depth() == 0  # the withheld ones are deleted, not kept forever
        assert sink.withheld_total == 2
    finally:
        box.close()


async def test_a_window_of_withheld_rows_does_not_stall_the_pipeline(
    mosquitto: Any, tmp_path: Path
) -> None:
    """More withheld rows than the pipeline peeks at once, then a shared one: it still goes."""
    box = Outbox(tmp_path / "outbox-sponsor.sqlite")
    try:
        box.append([full("l2", "kpi", n) for n in range(5)] + [full("l1", "kpi", 5)])
        share = ShareConfig(lines=frozenset({"l1"}))
        cfg = MqttConfig(
            name="sponsor", host=mosquitto.host, port=mosquitto.port, share=share, max_inflight=1
        )
        sink = MqttSink(cfg, site=SITE, outbox=box)
        topic = f"edge-agent/{SITE}/+/kpi"
        async with Subscriber(mosquitto.host, mosquitto.port, topic) as sub, running(sink):
            sink.notify()
            (got,) = await sub.collect(1)
        assert got.topic == f"edge-agent/{SITE}/l1/kpi"
        assert json.loads(got.payload)["n"] == 5
        assert box.depth() == 0 and sink.withheld_total == 5
    finally:
        box.close()
