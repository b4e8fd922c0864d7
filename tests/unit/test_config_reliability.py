"""Config keys for reliability: storage.outbox, the MQTT session, per-tag min/max."""

from __future__ import annotations

import pytest

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import OutboxConfig
from edge_agent.errors import ConfigError

BASE = """
version: 1
site: s
sources:
  - name: p
    protocol: modbus
    host: h
    tags: [{name: t, address: 1, min: 0, max: 100}]
lines:
  - name: l1
    ideal_cycle_time: 1s
    signals: {total_count: {tag: p.t}}
mqtt: {host: 127.0.0.1, clean_session: false, session_expiry: 2h, max_inflight: 500}
storage:
  outbox: {max_messages: 10, max_bytes: 1MiB, hard_max_messages: 0, hard_max_bytes: 2GB}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "a.yaml")
    return [str(i) for i in info.value.issues]


def test_new_keys_load_with_units() -> None:
    cfg = load_config_text(BASE)
    assert cfg.storage.outbox == OutboxConfig(
        max_messages=10, max_bytes=1024**2, hard_max_messages=0, hard_max_bytes=2 * 1000**3
    )
    assert (cfg.mqtt.clean_session, cfg.mqtt.session_expiry_s, cfg.mqtt.max_inflight) == (
        False,
        7200.0,
        500,
    )
    tag = cfg.sources[0].tags[0]
    assert (tag.min_value, tag.max_value) == (0.0, 100.0)


def test_defaults_keep_old_configs_loading() -> None:
    text = BASE.replace(
        "mqtt: {host: 127.0.0.1, clean_session: false, session_expiry: 2h, max_inflight: 500}",
        "mqtt: {host: 127.0.0.1}",
    ).split("storage:")[0]
    cfg = load_config_text(text)
    assert cfg.storage.outbox == OutboxConfig()
    assert (cfg.mqtt.clean_session, cfg.mqtt.max_inflight) == (True, 100)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("max_bytes: 1MiB", "max_bytes: 1 lot", "storage.outbox.max_bytes: must be a size"),
        ("max_bytes: 1MiB", "max_bytes: 3GB", "hard_max_bytes (2000000000) must be >= max_bytes"),
        ("hard_max_messages: 0", "hard_max_messages: 5", "must be >= max_messages (10)"),
        ("max_inflight: 500", "max_inflight: 40000", "mqtt.max_inflight: must be 1..32767"),
        ("session_expiry: 2h", "session_expiry: 0s", "mqtt.session_expiry: must be a positive"),
        ("min: 0, max: 100", "min: 5, max: 1", "sources[0].tags[0].max: must be >= min (5)"),
        ("max: 100", "maxi: 100", "unknown key (did you mean 'max'?)"),
    ],
)
def test_bad_values_are_reported_with_their_path(old: str, new: str, message: str) -> None:
    assert old in BASE
    got = issues(BASE.replace(old, new))
    assert any(message in i for i in got), got
