"""docs/schemas/config.schema.json: generated from the model, and in step with the loader."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edge_agent.config.json_schema import config_schema, config_schema_text, with_reference
from edge_agent.config.loader import load_config_text
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "schemas" / "config.schema.json"
CONFIG_DOC = ROOT / "docs" / "config.md"
CONFIGS = sorted((ROOT / "config").glob("**/*.yaml"))

VALIDATOR = jsonschema.Draft202012Validator(config_schema())


class _Yaml12ishLoader(yaml.SafeLoader):
    """Reads dates and times as strings, as an editor's YAML 1.2 language server does."""


_Yaml12ishLoader.yaml_implicit_resolvers = {
    key: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12ishLoader)  # a SafeLoader subclass


def schema_errors(doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)
    ]


def loader_errors(doc: Any) -> list[str]:
    try:
        load_config_text(yaml.safe_dump(doc, sort_keys=False))
    except ConfigError as exc:
        return list(exc.issues)
    return []


def test_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == config_schema_text(), (
        "docs/schemas/config.schema.json is out of date: regenerate it (and the key reference "
        "in docs/config.md) with: python -m edge_agent.config.json_schema"
    )


def test_key_reference_in_the_docs_is_the_generated_one() -> None:
    page = CONFIG_DOC.read_text()
    assert "<!-- key reference: generated" in page
    assert page == with_reference(page), (
        "the key reference in docs/config.md is out of date: regenerate it with: "
        "python -m edge_agent.config.json_schema"
    )


def test_config_schema_command_prints_it() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "config-schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(res.stdout) == config_schema()


def test_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(config_schema())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path: Path) -> None:
    # The files quote their times of day, so YAML 1.1 (PyYAML) and 1.2 (editors) read them alike.
    doc = read_yaml(path.read_text())
    assert schema_errors(doc) == []
    assert loader_errors(doc) == []


def minimal() -> dict[str, Any]:
    return {
        "version": 1,
        "site": "busan",
        "sources": [
            {
                "name": "plc1",
                "protocol": "modbus",
                "host": "10.0.0.5",
                "poll_interval": "1s",
                "tags": [{"name": "total", "address": 10, "type": "uint32"}],
            },
            {
                "name": "plc2",
                "protocol": "opcua",
                "endpoint": "opc.tcp://10.0.0.6:4840",
                "tags": [{"name": "state", "node": 'ns=3;s="DB_Line"."State"'}],
            },
        ],
        "lines": [
            {
                "name": "line1",
                "ideal_cycle_time": "1.5s",
                "shifts": [
                    {
                        "name": "day",
                        "start": "06:00",
                        "end": "14:00",
                        "breaks": [{"start": "09:00", "end": "09:15"}],
                    }
                ],
                "signals": {
                    "state": {"tag": "plc2.state", "map": {1: "running", 2: "fault"}},
                    "total_count": {"tag": "plc1.total", "rollover": 4294967296},
                },
            }
        ],
        "mqtt": {"host": "broker.example", "tls": True, "protocol": 5, "keepalive": 30},
        "logging": {"level": "debug", "format": "json"},
    }


def test_minimal_document_is_valid_for_both() -> None:
    assert loader_errors(minimal()) == []
    assert schema_errors(minimal()) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()

INVALID = {
    "version 2": _set("version", 2),
    "missing site": _set("site", _DELETE),
    "site with a slash": _set("site", "a/b"),
    "port out of range": _set("sources.0.port", 70000),
    "misspelt key": _set("sources.0.poll_intervall", "1s"),
    "opcua key on modbus": _set("sources.0.endpoint", "opc.tcp://x:4840"),
    "bad protocol": _set("sources.0.protocol", "profinet"),
    "bad duration": _set("sources.0.poll_interval", "5 minutes"),
    "negative duration": _set("sources.0.timeout", -1),
    "bad data type": _set("sources.0.tags.0.type", "int24"),
    "address too high": _set("sources.0.tags.0.address", 65536),
    "node id without identifier": _set("sources.1.tags.0.node", "ns=3;Line1"),
    "endpoint without port": _set("sources.1.endpoint", "opc.tcp://plc"),
    "no lines": _set("lines", []),
    "bad clock": _set("lines.0.shifts.0.start", "25:00"),
    "unknown state": _set("lines.0.signals.state.map", {1: "broken"}),
    "state and running": _set("lines.0.signals.running", "plc1.total"),
    "tag without source": _set("lines.0.signals.total_count", "total"),
    "qos 3": _set("mqtt.qos", 3),
    "mqtt 4": _set("mqtt.protocol", 4),
    "topic prefix with wildcard": _set("mqtt.topic_prefix", "a/#"),
    "inline password": _set("mqtt.password", "secret"),
    "key without cert": _set("mqtt.tls", {"key_file": "k.pem"}),
    "log level": _set("logging.level", "verbose"),
}


@pytest.mark.parametrize("mutate", INVALID.values(), ids=INVALID.keys())
def test_loader_and_schema_reject_the_same_mistakes(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    doc = minimal()
    mutate(doc)
    assert loader_errors(doc), "the loader accepted it"
    assert schema_errors(doc), "the schema accepted it"


def _mappings(node: Any, path: str = "") -> Iterator[tuple[str, dict[Any, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if not str(key).startswith("x-"):
                yield from _mappings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _mappings(value, f"{path}[{index}]")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_an_unknown_key_anywhere_is_rejected_by_both(path: Path) -> None:
    original = read_yaml(path.read_text())
    count = sum(1 for _ in _mappings(original))
    assert count > 10
    for index in range(count):
        doc = copy.deepcopy(original)
        where, mapping = list(_mappings(doc))[index]
        mapping["bogus_key"] = 1
        assert loader_errors(doc), f"loader accepted bogus_key at {where or '/'}"
        assert schema_errors(doc), f"schema accepted bogus_key at {where or '/'}"
