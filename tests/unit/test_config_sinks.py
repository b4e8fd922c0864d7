"""Several MQTT sinks with sharing controls: the list form of `mqtt`, names, `share`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.dump import dump_config
from edge_agent.config.loader import load_config, load_config_text, secret_files
from edge_agent.config.schema import DEFAULT_SINK_NAME, ShareConfig
from edge_agent.sharing import CORE_FIELDS, LINE_TOPICS, PAYLOAD_FIELDS
from tests.unit.test_config import ISSUE, issues_of, with_changes

REPO = Path(__file__).resolve().parents[2]

SPONSOR: dict[str, Any] = {
    "name": "sponsor",
    "host": "broker.sponsor.example",
    "share": {"lines": ["line1"], "topics": ["kpi", "kpi/shift"], "fields": ["oee"]},
}


def test_single_mapping_is_still_one_default_sink() -> None:
    cfg = load_config_text(with_changes())
    assert cfg.mqtt.name == DEFAULT_SINK_NAME
    assert cfg.mqtt.share is None
    assert cfg.mqtt_extra == ()
    assert cfg.mqtt_sinks == (cfg.mqtt,)


def test_list_of_sinks_primary_first() -> None:
    cfg = load_config_text(
        with_changes(("mqtt", [{"name": "plant", "host": "127.0.0.1", "qos": 0}, SPONSOR]))
    )
    assert [s.name for s in cfg.mqtt_sinks] == ["plant", "sponsor"]
    assert cfg.mqtt.name == "plant" and cfg.mqtt.qos == 0
    assert cfg.mqtt_extra[0].share == ShareConfig(
        lines=frozenset({"line1"}),
        topics=frozenset({"kpi", "kpi/shift"}),
        fields=frozenset({"oee"}),
    )


def test_share_keys_are_optional() -> None:
    cfg = load_config_text(
        with_changes(
            ("mqtt", [{"name": "a", "host": "h"}, {"name": "b", "host": "i", "share": {}}])
        )
    )
    assert cfg.mqtt_extra[0].share == ShareConfig()


def test_sink_problems_reported_with_position() -> None:
    bad_share = {"lines": ["line1", "line9"], "fields": ["oee", "oea"], "topics": ["kpi/day"]}
    text = with_changes(
        (
            "mqtt",
            [
                {"name": "plant", "host": "h"},
                {"host": "h2"},
                {"name": "plant", "host": "h3", "share": bad_share},
            ],
        )
    )
    issues = issues_of(text)
    found = {(m["path"], m["message"]) for i in issues if (m := ISSUE.fullmatch(i))}
    assert found == {
        ("mqtt[1].name", "required key missing"),
        (
            "mqtt[2].name",
            "duplicate sink name 'plant' (first at line " + _line_of(text, "name: plant") + ")",
        ),
        ("mqtt[2].share.lines[1]", "unknown line 'line9' (did you mean 'line1'?)"),
        ("mqtt[2].share.fields[1]", "unknown payload field 'oea' (did you mean 'oee'?)"),
        ("mqtt[2].share.topics[0]", "unknown topic 'kpi/day' (did you mean 'kpi'?)"),
    }


def _line_of(text: str, needle: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return str(number)
    raise AssertionError(needle)


def test_empty_sink_list_and_unknown_share_key() -> None:
    assert [ISSUE.fullmatch(i)["message"] for i in issues_of(with_changes(("mqtt", [])))] == [  # type: ignore[index]
        "must list at least one sink (or be a mapping for a single one)"
    ]
    (issue,) = issues_of(with_changes(("mqtt", {"host": "h", "share": {"line": ["line1"]}})))
    assert issue.endswith("mqtt.share.line: unknown key (did you mean 'lines'?)")


def test_secret_files_of_every_sink(tmp_path: Path) -> None:
    cfg = load_config_text(
        with_changes(
            (
                "mqtt",
                [
                    {"name": "a", "host": "h", "username": "u", "password_file": "/p/a"},
                    {"name": "b", "host": "i", "username": "u", "password_file": "/p/b"},
                ],
            )
        )
    )
    assert {"/p/a", "/p/b"} <= set(secret_files(cfg))


def test_dump_round_trips_the_list_form() -> None:
    cfg = load_config_text(with_changes(("mqtt", [{"name": "plant", "host": "h"}, SPONSOR])))
    again = load_config_text(dump_config(cfg))
    assert again.mqtt_sinks == cfg.mqtt_sinks
    single = load_config_text(with_changes())
    assert load_config_text(dump_config(single)).mqtt_sinks == single.mqtt_sinks


def test_example_config_several_sinks_block_is_valid(tmp_path: Path) -> None:
    """The commented list form in config/example.yaml loads in place of the single sink."""
    text = (REPO / "config" / "example.yaml").read_text()
    begin, end = text.index("# -- begin several sinks\n"), text.index("# -- end several sinks")
    block = text[begin:end].splitlines()[1:]
    listed = "\n".join(line.removeprefix("# ") for line in block) + "\n"
    start = text.index("\nmqtt:\n") + 1
    stop = text.index("\n\n", start)
    path = tmp_path / "example.yaml"
    path.write_text(text[:start] + listed + text[stop:])
    cfg = load_config(path, check_files=False)  # the plant's secret files are not shipped
    sponsor = cfg.mqtt_extra[0]
    assert sponsor.share is not None and sponsor.share.fields is not None
    assert sponsor.share.lines == frozenset({"press-line"})
    assert cfg.mqtt.share is None


def test_shareable_fields_match_the_payload_schemas() -> None:
    """PAYLOAD_FIELDS and LINE_TOPICS follow docs/schemas: a new payload field must be listed
    there to be shareable."""
    fields: set[str] = set()
    for name in ("kpi", "state", "energy", "order", "order-closed", "cmd-reply", "operator"):
        schema = json.loads((REPO / "docs" / "schemas" / f"{name}.schema.json").read_text())
        fields |= set(schema["properties"])
        assert set(schema["required"]) <= CORE_FIELDS, name
    assert fields - {"shared"} == PAYLOAD_FIELDS
    assert CORE_FIELDS <= PAYLOAD_FIELDS
    assert set(LINE_TOPICS) == {
        "kpi",
        "kpi/shift",
        "kpi/hour",
        "state",
        "energy",
        "order",
        "order/closed",
        "cmd/order/reply",
        "operator",
    }


@pytest.mark.parametrize("sink", [{"name": "x y", "host": "h"}, {"name": "", "host": "h"}])
def test_sink_names_are_plain(sink: dict[str, Any]) -> None:
    (issue,) = issues_of(with_changes(("mqtt", [sink])))
    assert ": mqtt[0].name: " in issue


def test_two_sinks_on_one_broker_need_distinct_client_ids() -> None:
    same = [{"name": "a", "host": "h"}, {"name": "b", "host": "h"}]
    (issue,) = issues_of(with_changes(("mqtt", same)))
    assert "mqtt[1]: sink 'b' connects to h:1883 with the same client id as sink 'a'" in issue
    same[1]["client_id"] = "other"
    assert len(load_config_text(with_changes(("mqtt", same))).mqtt_sinks) == 2


def test_order_commands_only_on_the_first_sink() -> None:
    sinks = [
        {"name": "plant", "host": "h", "commands": True},
        {"name": "sponsor", "host": "s", "commands": True},
    ]
    (issue,) = issues_of(with_changes(("mqtt", sinks)))
    assert "mqtt[1].commands: order commands are taken from the first sink only" in issue
    sinks[1]["commands"] = False
    cfg = load_config_text(with_changes(("mqtt", sinks)))
    assert cfg.mqtt.commands and not cfg.mqtt_extra[0].commands
