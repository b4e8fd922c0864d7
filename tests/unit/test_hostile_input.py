"""Hostile input: whatever a PLC or a config file sends, only the agent's own errors escape.

Complements test_config_properties.py (random YAML) and test_decode.py (round trips of valid
values) with malformed register data, and checks the refusals that keep MQTT topics and the
process safe: YAML bombs, huge files, names that would inject topic wildcards or separators.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.loader import MAX_FILE_BYTES, load_config, load_config_text
from edge_agent.config.schema import ByteOrder, DataType, ModbusTable, ModbusTag
from edge_agent.errors import ConfigError, DecodeError
from edge_agent.sources.decode import decode_bits, decode_registers, register_count

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
