"""Sharing filter and the pipeline feeding several sinks' outboxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import ShareConfig
from edge_agent.metrics import Metrics
from edge_agent.model import OutMessage, Quality, Sample
from edge_agent.pipeline import STATE_KEY_PREFIX, Pipeline, SinkOutbox
from edge_agent.sharing import CORE_FIELDS, SHARED_MARK, ShareFilter
from edge_agent.sinks.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "schemas"

CONFIG = """
version: 1
site: s
lines:
  - name: l1
    ideal_cycle_time: 1s
    signals: {total_count: {tag: plc.t1}}
  - name: l2
    ideal_cycle_time: 1s
    signals: {total_count: {tag: plc.t2}}
mqtt:
  - {name: plant, host: 127.0.0.1, publish_interval: 1s}
  - name: sponsor
    host: 127.0.0.1
    client_id: to-sponsor
    qos: 0
    publish_interval: 3s
    share: {lines: [l1], topics: [kpi, kpi/shift, state], fields: [oee, availability, state]}
"""

SPONSOR_KPI_KEYS = {"schema", "site", "line", "window", "ts", "seq", "oee", "availability"}
SPONSOR_KPI_KEYS |= {"state", SHARED_MARK}


def test_filter_reduces_and_marks() -> None:
    f = ShareFilter(ShareConfig(fields=frozenset({"oee"})))
    payload = {"schema": "x", "site": "s", "line": "l", "ts": "t", "oee": 0.5, "quality": 1.0}
    assert f.reduce(payload) == {
        "schema": "x",
        "site": "s",
        "line": "l",
        "ts": "t",
        "oee": 0.5,
        SHARED_MARK: True,
    }
    # Nothing withheld: no mark.
    assert SHARED_MARK not in f.reduce({"schema": "x", "oee": 0.5})
    assert ShareFilter(None).reduce(payload) is payload
    everything = ShareFilter(ShareConfig())
    assert everything.allows("any", "kpi/hour") and everything.reduce(payload) == payload


def test_filter_lines_and_topics() -> None:
    f = ShareFilter(ShareConfig(lines=frozenset({"l1"}), topics=frozenset({"kpi"})))
    assert f.allows("l1", "kpi")
    assert not f.allows("l2", "kpi")
    assert not f.allows("l1", "kpi/shift")
    msgs = [OutMessage("l1", "kpi", {"a": 1}, True), OutMessage("l2", "kpi", {"a": 1}, True)]
    assert [m.line for m in f.select(msgs)] == ["l1"]


def test_reduce_stored_rechecks_serialised_payloads() -> None:
    f = ShareFilter(ShareConfig(fields=frozenset({"oee"})))
    ok = b'{"schema":"x","oee":1,"seq":4}'
    assert f.reduce_stored(ok) is ok
    wider = b'{"schema":"x","oee":1,"quality":1,"seq":4}'
    assert json.loads(f.reduce_stored(wider)) == {
        "schema": "x",
        "oee": 1,
        "seq": 4,
        SHARED_MARK: True,
    }


def _samples(now: float, t1: int, t2: int) -> list[Sample]:
    return [
        Sample("plc", "t1", t1, Quality.GOOD, None, now),
        Sample("plc", "t2", t2, Quality.GOOD, None, now),
    ]


@pytest.fixture
def boxes(tmp_path: Path) -> Any:
    plant, sponsor = Outbox(tmp_path / "outbox.sqlite"), Outbox(tmp_path / "outbox-sponsor.sqlite")
    yield plant, sponsor
    plant.close()
    sponsor.close()


def test_runner_writes_each_sink_its_share(boxes: tuple[Outbox, Outbox]) -> None:
    plant, sponsor = boxes
    cfg = load_config_text(CONFIG)
    clock = [1_700_000_000.0]
    runner = Pipeline(
        cfg,
        plant,
        metrics=Metrics(),
        clock=lambda: clock[0],
        more_sinks=[SinkOutbox(cfg.mqtt_extra[0], sponsor)],
    )
    for i in range(7):
        clock[0] += 1.0
        runner.deliver(_samples(clock[0], 10 + i, 20 + 2 * i))
        runner.step(snapshot=True)

    full = plant.peek(1000)
    assert {m.line for m in full} == {"l1", "l2"}
    kpi_schema = json.loads((SCHEMAS / "kpi.schema.json").read_text())
    state_schema = json.loads((SCHEMAS / "state.schema.json").read_text())
    for m in full:
        doc = json.loads(m.payload)
        assert SHARED_MARK not in doc
        jsonschema.validate(doc, kpi_schema if m.topic_suffix.startswith("kpi") else state_schema)
        assert m.qos == 1

    shared = sponsor.peek(1000)
    assert shared and {m.line for m in shared} == {"l1"}
    for m in shared:
        assert m.topic_suffix in {"kpi", "kpi/shift", "state"} and m.qos == 0
        doc = json.loads(m.payload)
        if m.topic_suffix.startswith("kpi"):
            assert set(doc) == SPONSOR_KPI_KEYS
            jsonschema.validate(doc, kpi_schema)
        else:
            assert set(doc) <= (CORE_FIELDS | {"state", SHARED_MARK})
            jsonschema.validate(doc, state_schema)
    # Snapshots every 3 s for the sponsor (steps of 1 s: at 1, 4 and 7 s), every 1 s for the plant.
    assert len([m for m in shared if m.topic_suffix == "kpi"]) == 3
    assert len([m for m in full if m.topic_suffix == "kpi" and m.line == "l1"]) == 7
    # Each sink numbers its own messages: no gaps in either.
    for box in (plant, sponsor):
        seqs = [m.seq for m in box.peek(1000) if m.line == "l1"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # The engine state lives in the primary's outbox only.
    assert STATE_KEY_PREFIX + "l1" in plant.load_state()
    assert sponsor.load_state() == {}


def test_a_failing_sink_outbox_does_not_hold_up_the_others(
    boxes: tuple[Outbox, Outbox],
) -> None:
    plant, sponsor = boxes
    cfg = load_config_text(CONFIG)
    clock = [1_700_000_000.0]
    runner = Pipeline(
        cfg,
        plant,
        metrics=Metrics(),
        clock=lambda: clock[0],
        more_sinks=[SinkOutbox(cfg.mqtt_extra[0], sponsor)],
    )
    sponsor._conn().execute("PRAGMA query_only=1")  # every write now fails: a StorageError
    for _ in range(4):
        clock[0] += 1.0
        assert runner.step(snapshot=True) > 0  # the primary stores its batch all the same
    assert runner.held_by_sink()["sponsor"] == 1  # only the newest live snapshot is held
    assert runner.held_by_sink()["plant"] == 0
    sponsor._conn().execute("PRAGMA query_only=0")
    clock[0] += 3.0
    runner.step(snapshot=True)
    assert runner.held == 0
    assert [m.topic_suffix for m in sponsor.peek(10)] == ["kpi", "kpi"]


def test_order_replies_go_to_the_primary_only_and_snapshots_thin_per_topic(
    boxes: tuple[Outbox, Outbox],
) -> None:
    plant, sponsor = boxes
    # The plant takes order commands; the sponsor shares everything but is not the plant's
    # broker: replies to commands are not its business, order snapshots are.
    text = CONFIG.replace("publish_interval: 1s}", "publish_interval: 1s, commands: true}")
    text = text[: text.index("    share:")]
    cfg = load_config_text(text)
    assert cfg.mqtt.commands and cfg.mqtt_extra[0].share is None
    clock = [1_700_000_000.0]
    runner = Pipeline(
        cfg,
        plant,
        metrics=Metrics(),
        clock=lambda: clock[0],
        more_sinks=[SinkOutbox(cfg.mqtt_extra[0], sponsor)],
    )
    runner.command("l1", "order", b'{"order_id": "PO-1", "target_quantity": 10}')
    for i in range(7):
        clock[0] += 1.0
        runner.deliver(_samples(clock[0], 10 + i, 20 + 2 * i))
        runner.step(snapshot=True)

    def topics(box: Outbox, line: str = "l1") -> list[str]:
        return [m.topic_suffix for m in box.peek(1000) if m.line == line]

    assert topics(plant).count("cmd/order/reply") == 1
    assert "cmd/order/reply" not in topics(sponsor)
    reply = next(m for m in plant.peek(1000) if m.topic_suffix == "cmd/order/reply")
    assert json.loads(reply.payload)["ok"] is True
    # Live snapshots follow each sink's publish_interval (7 and 3 in 7 s); the order message
    # published at the order change is no snapshot: every sink gets it.
    assert (topics(plant).count("kpi"), topics(plant).count("order")) == (7, 8)
    assert (topics(sponsor).count("kpi"), topics(sponsor).count("order")) == (3, 4)
    assert topics(sponsor)[0] == "order"  # the change, before any snapshot
