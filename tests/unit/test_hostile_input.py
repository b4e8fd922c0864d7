"""Hostile input: whatever a PLC or a config file sends, only the agent's own errors escape.

Complements test_config_properties.py (random YAML) and test_decode.py (round trips of valid
values) with malformed register data, and checks the refusals that keep MQTT topics and the
process safe: YAML bombs, huge files, names that would inject topic wildcards or separators;
order commands of any bytes and PLC values of any size reach the line engine as errors and bad
data, never as exceptions.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.loader import MAX_FILE_BYTES, load_config, load_config_text
from edge_agent.config.schema import ByteOrder, DataType, LineConfig, ModbusTable, ModbusTag
from edge_agent.errors import ConfigError, DecodeError
from edge_agent.model import OutMessage, Quality, Sample, Value
from edge_agent.sources.decode import decode_bits, decode_registers, register_count
from tests.helpers.wire import WireEngine

REGISTER_TYPES = [t for t in DataType if t is not DataType.STRING]


@st.composite
def register_tags(draw: st.DrawFn) -> ModbusTag:
    kind = draw(st.sampled_from(list(DataType)))
    return ModbusTag(
        name="t",
        table=draw(st.sampled_from([ModbusTable.HOLDING, ModbusTable.INPUT])),
        address=0,
        type=kind,
        order=draw(st.sampled_from(list(ByteOrder))),
        length=draw(st.integers(1, 125)) if kind is DataType.STRING else 0,
        scale=draw(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0)),
        offset=draw(st.floats(allow_nan=False, allow_infinity=False)),
    )


@settings(max_examples=400, deadline=None)
@given(register_tags(), st.lists(st.integers(0, 0xFFFF), max_size=130))
def test_any_register_words_decode_or_raise_decode_error(tag: ModbusTag, words: list[int]) -> None:
    """Wrong lengths and arbitrary bit patterns (NaN, invalid UTF-8, huge scales)."""
    try:
        value = decode_registers(tag, words)
    except DecodeError:
        assert len(words) != register_count(tag) or tag.type is DataType.STRING
        return
    assert len(words) == register_count(tag)
    assert value is None or isinstance(value, bool | int | float | str)
    if isinstance(value, float) and tag.type in (DataType.INT16, DataType.UINT16):
        assert not math.isnan(value)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=4))
def test_any_bits_decode_or_raise_decode_error(bits: list[bool]) -> None:
    tag = ModbusTag(name="b", table=ModbusTable.COIL, address=0, type=DataType.BOOL)
    try:
        assert decode_bits(tag, bits) is bits[0]
    except DecodeError:
        assert len(bits) != 1


BASE = """\
version: 1
site: {site}
sources:
  - name: {source}
    protocol: modbus
    host: 127.0.0.1
    tags: [{{name: {tag}, address: 0}}]
lines:
  - name: {line}
    ideal_cycle_time: 1s
    signals: {{total_count: {ref}}}
mqtt: {{host: localhost}}
"""
NAMES = {"site": "plant1", "source": "plc1", "tag": "total", "line": "line1"}


def config_text(**names: str) -> str:
    """BASE with each name as a YAML double-quoted string (so any character can be tried)."""
    merged = {**NAMES, **names}

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\0", "\\0") + '"'

    ref = quoted(f"{merged['source']}.{merged['tag']}")
    return BASE.format(ref=ref, **{k: quoted(v) for k, v in merged.items()})


def test_the_base_config_is_valid() -> None:
    load_config_text(config_text())


@pytest.mark.parametrize("field", sorted(NAMES))
@pytest.mark.parametrize("bad", ["a+b", "a#", "a/b", "a\0b", "+", "#", "a b", "a.b", "$SYS", ""])
def test_names_cannot_inject_topic_levels_or_wildcards(field: str, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(config_text(**{field: bad}))
    assert any(
        rule in issue
        for issue in caught.value.issues
        for rule in ("it becomes an MQTT topic level", "NUL", "must not be empty")
    ), caught.value.issues


def test_a_yaml_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    bomb = "\n".join(lines) + "\n" + config_text()
    with pytest.raises(ConfigError, match="aliases add more than"):
        load_config_text(bomb)


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(config_text() + "#" * MAX_FILE_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ConfigError):
        load_config_text("x: " + "[" * 5000 + "]" * 5000 + "\n" + config_text())


def test_secrets_never_reach_the_log_or_the_dump(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_agent.config.dump import REDACTED, dump_config, redact
    from edge_agent.secrets import SecretError, read_secret

    secret = tmp_path / "mqtt.password"
    secret.write_text("hunter2-very-secret\n")
    text = config_text().replace(
        "mqtt: {host: localhost}",
        "mqtt: {host: localhost, username: u, password_file: mqtt.password}",
    )
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    caplog.set_level(logging.DEBUG)
    cfg = load_config(config)
    assert cfg.mqtt.password_file == str(secret)  # relative: next to the config file
    dumped = dump_config(cfg)
    assert "hunter2" not in dumped and "mqtt.password" in dumped
    assert redact({"a": {"password": "x", "api_token": "y", "password_file": "f"}}) == {
        "a": {"password": REDACTED, "api_token": REDACTED, "password_file": "f"}
    }
    assert read_secret(str(secret)) == "hunter2-very-secret"
    with pytest.raises(SecretError, match="cannot read secret file") as caught:
        read_secret(str(tmp_path / "missing"))
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in caplog.text


def test_relative_paths_resolve_in_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    text = config_text().replace(
        "mqtt: {host: localhost}",
        "mqtt: {host: h, username: u, password_file: mqtt.password,"
        " tls: {ca_file: /etc/ca.pem, cert_file: c.pem, key_file: c.key}}",
    )
    cfg = load_config_text(text, str(tmp_path / "agent.yaml"))
    assert cfg.mqtt.password_file == str(tmp_path / "creds" / "mqtt.password")
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.tls.ca_file == "/etc/ca.pem"
    assert cfg.mqtt.tls.key_file == str(tmp_path / "creds" / "c.key")


def test_loose_permissions_are_reported(tmp_path: Path) -> None:
    from edge_agent.config.loader import permission_warnings

    secret = tmp_path / "mqtt.password"
    secret.write_text("x\n")
    config = tmp_path / "agent.yaml"
    config.write_text(
        config_text().replace(
            "mqtt: {host: localhost}",
            "mqtt: {host: localhost, username: u, password_file: mqtt.password}",
        )
    )
    secret.chmod(0o600)
    config.chmod(0o644)  # readable by all is fine: it holds no secret
    assert permission_warnings(load_config(config)) == []
    secret.chmod(0o640)
    config.chmod(0o664)
    warnings = permission_warnings(load_config(config))
    assert len(warnings) == 2
    assert any("mqtt.password is readable by group or others (mode 0640)" in w for w in warnings)
    assert any("agent.yaml is writable by group or others (mode 0664)" in w for w in warnings)


# -- order commands and PLC values: any input gets an answer, never an exception ----------------

ENGINE_CONFIG = """\
version: 1
site: plant1
lines:
  - name: line1
    timezone: UTC
    ideal_cycle_time: 1s
    shifts: [{name: day, start: "06:00", end: "14:00"}]
    signals:
      state: {tag: plc.state, map: {1: running, 2: idle}}
      total_count: {tag: plc.total, rollover: 65536}
      reject_count: {tag: plc.rejects, rollover: 65536}
      energy: {tag: meter.energy, unit: kWh}
      order: {id: plc.order, target: plc.target, product: plc.product}
mqtt: {host: localhost}
"""
T0 = 1709532000.0  # Monday 2024-03-04 06:00 UTC
_SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
_VALIDATORS = {
    suffix: jsonschema.Draft202012Validator(
        json.loads((_SCHEMAS / f"{name}.schema.json").read_text())
    )
    for suffix, name in (
        ("kpi", "kpi"),
        ("kpi/shift", "kpi"),
        ("kpi/hour", "kpi"),
        ("state", "state"),
        ("energy", "energy"),
        ("order", "order"),
        ("order/closed", "order-closed"),
        ("cmd/order/reply", "cmd-reply"),
    )
}
COMMAND = jsonschema.Draft202012Validator(
    json.loads((_SCHEMAS / "order-command.schema.json").read_text())
)


@functools.cache
def _line() -> LineConfig:
    return load_config_text(ENGINE_CONFIG).lines[0]


def order_engine() -> WireEngine:
    """line1 running since 06:00 with the PLC's order PO-1 (target 500) and 60 parts."""
    engine = WireEngine(_line(), site="plant1", orders=True)
    for tag, value in (("state", 1), ("total", 0), ("rejects", 0), ("order", "PO-1")):
        feed(engine, T0, tag, value)
    feed(engine, T0, "target", 500)
    feed(engine, T0 + 60, "total", 60)
    return engine


def feed(engine: WireEngine, t: float, tag: str, value: Value) -> None:
    source = "meter" if tag == "energy" else "plc"
    engine.ingest(Sample(source, tag, value, Quality.GOOD, None, t))


def published(messages: list[OutMessage]) -> list[OutMessage]:
    """``messages`` as the outbox writes them (strict JSON: no NaN or infinity), each valid
    against its schema."""
    for seq, m in enumerate(messages, 1):
        doc = json.loads(json.dumps({**m.payload, "seq": seq}, allow_nan=False))
        _VALIDATORS[m.topic_suffix].validate(doc)
    return messages


def everything(engine: WireEngine, t: float) -> dict[str, dict[str, Any]]:
    """The payloads due at ``t`` (tick, then the live snapshots), by topic; the engine state
    stays strict JSON."""
    out = {m.topic_suffix: m.payload for m in published(engine.tick(t) + engine.snapshots(t))}
    json.dumps(engine.state_dict(), allow_nan=False)
    return out


HOSTILE_COMMANDS = {
    "deeply nested array": b"[" * 4000,
    "deeply nested object": b'{"a":' * 2000,
    "nested within the limit": b'{"order_id": "PO-2", "target_quantity": [[1]]}',
    "larger than 4 KB": b'{"order_id": "PO-2", "target_quantity": 5, "product": "'
    + b"x" * 5000
    + b'"}',
    "not UTF-8": b'{"order_id": "PO-\xff", "target_quantity": 5}',
    "not JSON": b"order PO-2 please",
    "empty": b"",
    "an array": b'[{"order_id": "PO-2", "target_quantity": 5}]',
    "a string": b'"PO-2"',
    "null": b"null",
    "a number": b"5",
    "target 10^12": b'{"order_id": "PO-BIG", "target_quantity": 1000000000000}',
    "target 10^309": b'{"order_id": "PO-BIG", "target_quantity": 1' + b"0" * 309 + b"}",
    "target of 4,000 digits": b'{"order_id": "PO-BIG", "target_quantity": ' + b"9" * 4000 + b"}",
    "target 1e999": b'{"order_id": "PO-BIG", "target_quantity": 1e999}',
    "target NaN": b'{"order_id": "PO-BIG", "target_quantity": NaN}',
    "target a string": b'{"order_id": "PO-2", "target_quantity": "5"}',
    "order_id a number": b'{"order_id": 2, "target_quantity": 5}',
    "a key with a line break": b'{"order_id": "PO-2", "target_quantity": 5, "a\\nb": 1}',
    "a long key": b'{"order_id": "PO-2", "target_quantity": 5, "' + b"k" * 3000 + b'": 1}',
    "many unknown keys": b"{" + b",".join(b'"k%d": 0' % i for i in range(400)) + b"}",
}


@pytest.mark.parametrize("payload", HOSTILE_COMMANDS.values(), ids=HOSTILE_COMMANDS.keys())
def test_a_hostile_command_gets_an_error_reply_and_one_notice(payload: bytes) -> None:
    engine = order_engine()
    engine.take_notices()
    engine.command("order", payload, T0 + 61)
    replies = [m for m in published(engine.tick(T0 + 61)) if m.topic_suffix == "cmd/order/reply"]
    assert len(replies) == 1
    reply = replies[0].payload
    assert reply["ok"] is False and reply["errors"], reply
    assert 0 < len(reply["errors"]) <= 10 and all(len(e) < 300 for e in reply["errors"])
    notices = engine.take_notices()
    assert len(notices) == 1 and notices[0].startswith("order command rejected, not applied: ")
    assert notices[0].isprintable() and len(notices[0]) < 1000, notices
    # Nothing changed, and the engine goes on.
    order = everything(engine, T0 + 62)["order"]
    assert (order["order_id"], order["target_quantity"], order["good_count"]) == ("PO-1", 500, 60)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
        ).map(lambda doc: json.dumps(doc).encode()),
        st.fixed_dictionaries(
            {"order_id": st.text(max_size=70), "target_quantity": st.integers() | st.floats()},
            optional={"product": st.text(max_size=300) | st.none(), "request_id": st.text()},
        ).map(lambda doc: json.dumps(doc).encode()),
    )
)
def test_any_command_payload_gets_one_reply(payload: bytes) -> None:
    """Any bytes: one schema-valid reply; applied only if the order-command schema accepts it."""
    engine = order_engine()
    engine.command("order", payload, T0 + 61)
    messages = published(engine.tick(T0 + 61))
    replies = [m.payload for m in messages if m.topic_suffix == "cmd/order/reply"]
    assert len(replies) == 1
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    assert replies[0]["ok"] is (doc is not None and COMMAND.is_valid(doc))
    assert len(engine.take_notices()) == (0 if replies[0]["ok"] else 1)


@pytest.mark.parametrize(
    "value",
    [
        4575657221408423936,  # uint64 over a float32 1.0 and an energy register: ~4.6e18
        4.6e18,
        2**64,
        10**309,
        1_000_000_001,
        -5,
        -1.0,
        math.nan,
        math.inf,
        -math.inf,
        "lots",
        "1e999",
        True,
    ],
    ids=lambda value: repr(value)[:24],
)
def test_an_order_target_tag_out_of_range_is_bad_data(value: Value) -> None:
    engine = order_engine()
    assert engine.take_notices() == []
    feed(engine, T0 + 70, "target", value)
    feed(engine, T0 + 71, "target", value)  # read again: no second notice
    notices = engine.take_notices()
    assert len(notices) == 1, notices
    assert notices[0].startswith("order target tag plc.target reads ")
    assert notices[0].endswith("ignored as bad data, the order stays as it was")
    order = everything(engine, T0 + 72)["order"]
    assert (order["order_id"], order["target_quantity"]) == ("PO-1", 500)
    assert order["warnings"] == ["order_tag_invalid"]
    # A valid quantity again: one notice, the warning goes.
    feed(engine, T0 + 80, "target", 800)
    assert engine.take_notices() == ["order target tag plc.target reads a usable value again"]
    order = everything(engine, T0 + 81)["order"]
    assert (order["target_quantity"], order["warnings"]) == (800, [])


def test_an_order_id_or_product_too_long_is_bad_data() -> None:
    engine = order_engine()
    feed(engine, T0 + 70, "order", "P" * 65)
    feed(engine, T0 + 71, "product", "x" * 257)
    feed(engine, T0 + 72, "order", math.nan)
    notices = engine.take_notices()
    assert [n.split(" reads ")[0] for n in notices] == [
        "order id tag plc.order",
        "order product tag plc.product",
    ]
    messages = everything(engine, T0 + 73)
    assert messages["order"]["order_id"] == "PO-1" and "order/closed" not in messages
    assert messages["order"]["warnings"] == ["order_tag_invalid"]


@pytest.mark.parametrize(
    "reading",
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, 1e19, 1.7e308, -1.7e308, math.inf, math.nan],
    ids=repr,
)
def test_huge_counter_and_meter_readings_never_break_a_payload(reading: Value) -> None:
    """Counters and the energy meter read near and past 2^64, twice around a reset: every
    payload stays strict JSON and valid, whatever the figures."""
    engine = order_engine()
    for i, value in enumerate((reading, 0, reading, 7, reading)):
        t = T0 + 120 + 60 * i
        for tag in ("total", "rejects", "energy"):
            feed(engine, t, tag, value)
        everything(engine, t)
    kpi = everything(engine, T0 + 9 * 3600)["kpi/shift"]
    assert kpi["total_count"] >= 0


def test_an_order_target_out_of_range_in_a_saved_state_is_not_restored() -> None:
    """A state saved while the PLC had no order id and its target tag read ~4.6e18 (a version
    without the bound kept that value): after the restart the next order has no target."""
    engine = order_engine()
    feed(engine, T0 + 70, "order", "")
    saved = json.loads(json.dumps(engine.state_dict()))
    saved["plc_order"] = [None, 4575657221408423936, None]
    engine = WireEngine(_line(), site="plant1", orders=True)
    engine.restore(saved)
    feed(engine, T0 + 80, "order", "PO-7")
    feed(engine, T0 + 140, "total", 90)
    order = everything(engine, T0 + 141)["order"]
    assert (order["order_id"], order["target_quantity"], order["eta_current"]) == (
        "PO-7",
        None,
        None,
    )
