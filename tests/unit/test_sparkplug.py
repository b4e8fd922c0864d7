"""Sparkplug B encoding (edge_agent.sinks.sparkplug) and its configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.tahu import tahu_decode

from edge_agent.config.loader import load_config
from edge_agent.config.schema import MqttConfig, MqttEncoding, ShareConfig
from edge_agent.domain import sparkplug_id_problem
from edge_agent.errors import ConfigError
from edge_agent.sinks import sparkplug as spb
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox


def test_every_datatype_round_trips_through_protobuf_and_tahu() -> None:
    ms = [
        spb.Metric("i", spb.DataType.INT64, 12, 1000),
        spb.Metric("neg", spb.DataType.INT64, -3, 1000),
        spb.Metric("d", spb.DataType.DOUBLE, 0.875, 1000, is_historical=True),
        spb.Metric("b", spb.DataType.BOOLEAN, True, 1000),
        spb.Metric("s", spb.DataType.STRING, "läuft", 1000, eng_unit="s"),
        spb.Metric("t", spb.DataType.DATETIME, 1741051800000, 1000),
        spb.Metric("n", spb.DataType.DOUBLE, None, 1000),
    ]
    data = spb.encode(1234, ms, 7)
    msg = spb.decode(data)
    assert (msg.timestamp, msg.seq) == (1234, 7)
    got = {m.name: m for m in msg.metrics}
    assert got["i"].long_value == 12 and got["i"].datatype == 4
    assert got["neg"].long_value == (1 << 64) - 3  # two's complement in the uint64 field
    assert got["d"].double_value == 0.875 and got["d"].is_historical
    assert got["b"].boolean_value is True
    assert got["s"].string_value == "läuft"
    assert list(got["s"].properties.keys) == ["engUnit"]
    assert got["t"].long_value == 1741051800000 and got["t"].datatype == 13
    assert got["n"].is_null and got["n"].WhichOneof("value") is None
    (doc,) = tahu_decode([data])
    tahu = {m["name"]: m for m in doc["metrics"]}
    assert [tahu[n]["type"] for n in ["i", "neg", "d", "b", "s", "t", "n"]] == [
        "Int64", "Int64", "Double", "Boolean", "String", "DateTime", "Double"
    ]  # fmt: skip
    assert tahu["neg"]["value"] == -3 and tahu["n"]["value"] is None
    assert tahu["s"]["properties"]["engUnit"]["value"] == "s"


def test_seq_wraps_255_to_0_and_births_restart_it(tmp_path: Path) -> None:
    session = spb.SparkplugSession(spb.Topics("g", "n"), ["l1"], spb.BdSeqStore(tmp_path / "bd"))
    session.new_session(100.0)
    births = session.births(100.0)
    assert [spb.decode(p).seq for _, p in births] == [0, 1]
    seqs = [session.next_seq() for _ in range(256)]
    assert seqs[:2] == [2, 3] and seqs[253] == 255 and seqs[254] == 0
    assert spb.decode(session.births(101.0)[0][1]).seq == 0


def test_bdseq_persists_and_wraps(tmp_path: Path) -> None:
    store = spb.BdSeqStore(tmp_path / "bd")
    assert store.last() is None and store.next() == 0 and store.next() == 1
    assert spb.BdSeqStore(tmp_path / "bd").next() == 2  # a restart goes on
    (tmp_path / "bd").write_text(json.dumps({"bdSeq": 255}))
    assert store.next() == 0
    (tmp_path / "bd").write_text("garbage")
    assert store.next() == 0


def test_will_and_nbirth_carry_the_same_bdseq(tmp_path: Path) -> None:
    session = spb.SparkplugSession(spb.Topics("g", "n"), ["l1"], spb.BdSeqStore(tmp_path / "bd"))
    for expected in (0, 1):
        topic, will = session.new_session(1.0)
        assert topic == "spBv1.0/g/NDEATH/n"
        (nbirth_topic, nbirth), (dbirth_topic, _) = session.births(2.0)
        assert (nbirth_topic, dbirth_topic) == ("spBv1.0/g/NBIRTH/n", "spBv1.0/g/DBIRTH/n/l1")
        bd = [m.long_value for m in spb.decode(will).metrics if m.name == "bdSeq"]
        assert bd == [m.long_value for m in spb.decode(nbirth).metrics if m.name == "bdSeq"]
        assert bd == [expected] and not spb.decode(will).HasField("seq")


def test_historical_reports_do_not_change_birth_values(tmp_path: Path) -> None:
    session = spb.SparkplugSession(spb.Topics("g", "n"), ["l1"], spb.BdSeqStore(tmp_path / "bd"))
    session.new_session(10.0)
    session.births(10.0)
    live = json.dumps({"ts": "2025-03-04T10:30:00+00:00", "oee": 0.5}).encode()
    old = json.dumps({"ts": "2025-03-04T10:00:00+00:00", "oee": 0.1}).encode()
    out = session.data("l1", "kpi", live, created=11.0, now=11.0)
    assert out is not None and out[0] == "spBv1.0/g/DDATA/n/l1"
    (m,) = spb.decode(out[1]).metrics
    assert (m.name, m.double_value, m.is_historical, m.timestamp) == (
        "oee",
        0.5,
        False,
        1741084200000,
    )
    out = session.data("l1", "kpi", old, created=9.0, now=12.0)
    assert out is not None and spb.decode(out[1]).metrics[0].is_historical
    dbirth = spb.decode(session.births(13.0)[1][1])
    assert {m.name: m.double_value for m in dbirth.metrics}["oee"] == 0.5
    assert session.data("l1", "order", live, created=11.0, now=11.0) is None


def test_rebirth_request() -> None:
    yes = spb.encode(0, [spb.Metric(spb.REBIRTH_METRIC, spb.DataType.BOOLEAN, True)], None)
    no = spb.encode(0, [spb.Metric(spb.REBIRTH_METRIC, spb.DataType.BOOLEAN, False)], None)
    assert spb.SparkplugSession.is_rebirth(yes)
    assert not spb.SparkplugSession.is_rebirth(no)
    assert not spb.SparkplugSession.is_rebirth(b"\xff\xff not protobuf")


@pytest.mark.parametrize(
    ("value", "problem"),
    [("a/b", "'/'"), ("x+", "'+'"), ("#", "'#'"), ("", "empty"), ("ok-1 x", None)],
)
def test_id_rules(value: str, problem: str | None) -> None:
    got = sparkplug_id_problem(value)
    assert (got is None) if problem is None else (got is not None and problem in got)


CONFIG = """version: 1
site: busan
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{running: plc.run, total_count: plc.total}}
sources:
  - name: plc
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {{name: run, address: 0, table: coil}}
      - {{name: total, address: 1}}
mqtt:
  host: 127.0.0.1
{mqtt}
"""


def test_config_defaults_and_errors_with_positions(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(CONFIG.format(mqtt="  encoding: sparkplug_b"))
    sink = load_config(path).mqtt
    assert sink.encoding is MqttEncoding.SPARKPLUG_B
    assert (sink.sparkplug.group_id, sink.sparkplug.edge_node_id) == (None, "edge-agent")
    path.write_text(
        CONFIG.format(
            mqtt="  encoding: sparkplug_b\n  commands: true\n"
            "  sparkplug: {group_id: a/b, edge_node_id: 'n#'}"
        )
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = "\n".join(str(i) for i in err.value.issues)
    assert f"{path}:17:13: mqtt.commands: order commands need encoding: json" in text
    assert f"{path}:18:25: mqtt.sparkplug.group_id: must not contain '/'" in text
    assert "mqtt.sparkplug.edge_node_id: must not contain '#'" in text
    path.write_text(CONFIG.format(mqtt="  encoding: protobuf"))
    with pytest.raises(ConfigError, match="must be one of: json, sparkplug_b"):
        load_config(path)


def test_config_without_protobuf_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own function, replaced: the loader asks it whether protobuf can be imported.
    monkeypatch.setattr(spb, "protobuf_missing", lambda: True)
    path = tmp_path / "a.yaml"
    path.write_text(CONFIG.format(mqtt="  encoding: sparkplug_b"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "pip install 'edge-agent[sparkplug]'" in str(err.value.issues[0])


def test_config_rejects_a_persistent_session(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    for protocol in ("'3.1.1'", "'5'"):
        path.write_text(
            CONFIG.format(
                mqtt=f"  encoding: sparkplug_b\n  protocol: {protocol}\n  clean_session: false"
            )
        )
        with pytest.raises(ConfigError) as err:
            load_config(path)
        (issue,) = err.value.issues
        assert str(issue).startswith(f"{path}:18:18: mqtt.clean_session: sparkplug_b needs")
    path.write_text(CONFIG.format(mqtt="  encoding: sparkplug_b\n  clean_session: true"))
    assert load_config(path).mqtt.clean_session


def _sink_session(tmp_path: Path, share: ShareConfig | None, lines: list[str]) -> MqttSink:
    cfg = MqttConfig(host="127.0.0.1", encoding=MqttEncoding.SPARKPLUG_B, share=share)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    return MqttSink(cfg, site="s", outbox=outbox, lines=lines)


def test_a_metric_is_declared_when_any_topic_that_makes_it_is_shared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `state` comes from the kpi and the state topics; only the state topic is shared here.
    sink = _sink_session(tmp_path, ShareConfig(topics=frozenset({"state"})), ["l1"])
    session = sink.sparkplug
    assert session is not None
    session.new_session(10.0)
    (_, dbirth) = session.births(10.0)[1]
    declared = {m.name for m in spb.decode(dbirth).metrics}
    assert declared == {"state", "state_since"}
    state = json.dumps({"ts": "2025-03-04T10:30:00+00:00", "state": "running"}).encode()
    out = session.data("l1", "state", state, created=11.0, now=11.0)
    assert out is not None
    assert {m.name for m in spb.decode(out[1]).metrics} <= declared
    # The safety net: a report with metrics the DBIRTH did not declare (the kpi topic is not
    # shared, but a session may be handed one) loses them, logged once per name.
    report = json.dumps({"ts": "2025-03-04T10:30:00+00:00", "state": "idle", "oee": 0.5})
    for _ in range(2):
        out = session.data("l1", "kpi", report.encode(), created=11.0, now=11.0)
        assert out is not None
        assert [m.name for m in spb.decode(out[1]).metrics] == ["state"]
    assert caplog.text.count("metric 'oee' is not in its DBIRTH") == 1
    sink._outbox.close()


def test_ddeath_only_for_lines_that_got_a_dbirth(tmp_path: Path) -> None:
    allowed = {"l1"}
    session = spb.SparkplugSession(
        spb.Topics("g", "n"),
        ["l1", "l2"],
        spb.BdSeqStore(tmp_path / "bd"),
        allow_metric=lambda line, _topic, _field: line in allowed,
    )
    session.new_session(1.0)
    assert [t for t, _ in session.deaths(1.5)] == ["spBv1.0/g/NDEATH/n"]  # no births yet
    assert [t for t, _ in session.births(2.0)][1:] == ["spBv1.0/g/DBIRTH/n/l1"]
    report = json.dumps({"ts": "2025-03-04T10:30:00+00:00", "oee": 0.5}).encode()
    assert session.data("l2", "kpi", report, created=3.0, now=3.0) is None
    assert [t for t, _ in session.deaths(4.0)] == ["spBv1.0/g/DDEATH/n/l1", "spBv1.0/g/NDEATH/n"]


def test_births_take_queued_reports_as_current_values(tmp_path: Path) -> None:
    session = spb.SparkplugSession(spb.Topics("g", "n"), ["l1"], spb.BdSeqStore(tmp_path / "bd"))
    session.new_session(10.0)
    shift = json.dumps({"ts": "2025-03-04T10:00:00+00:00", "oee": 0.42}).encode()
    session.seed("l1", "kpi/shift", shift)
    session.seed("l9", "kpi/shift", shift)  # not a device of this node: ignored
    dbirth = spb.decode(session.births(10.0)[1][1])
    assert {m.name: m.double_value for m in dbirth.metrics}["last_shift/oee"] == 0.42
    out = session.data("l1", "kpi/shift", shift, created=9.0, now=11.0)
    assert out is not None and spb.decode(out[1]).metrics[0].is_historical
