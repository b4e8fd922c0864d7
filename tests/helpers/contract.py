"""The MQTT contract as tests see it: docs/asyncapi.yaml and the payload schemas it refers to.

``Contract().validate(topic, payload)`` finds the channel whose address matches the topic and
checks the payload against that channel's JSON Schema, so every test that receives messages can
hold them to the published contract with one call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ASYNCAPI = DOCS / "asyncapi.yaml"


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    address: str
    pattern: re.Pattern[str]
    schema: dict[str, Any]
    qos: int
    retain: bool


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
        node = _resolve(doc, node["$ref"])
    return node


def _address_pattern(address: str) -> re.Pattern[str]:
    # {topic_prefix} may span several topic levels; {site} and {line} are one level each.
    out = ""
    for part in re.split(r"(\{[a-z_]+\})", address):
        if part == "{topic_prefix}":
            out += r"(?P<topic_prefix>[^+#]+?)"
        elif part.startswith("{"):
            out += rf"(?P<{part[1:-1]}>[^/+#]+)"
        else:
            out += re.escape(part)
    return re.compile(out)


class Contract:
    def __init__(self, path: Path = ASYNCAPI) -> None:
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text())
        self.channels: dict[str, Channel] = {}
        ops = {
            _deref(self.doc, op["channel"])["address"]: op for op in self.doc["operations"].values()
        }
        for name, ch in self.doc["channels"].items():
            messages = list(ch["messages"].values())
            assert len(messages) == 1, name
            message = _deref(self.doc, messages[0])
            schema_path = (path.parent / message["payload"]["$ref"]).resolve()
            binding = _deref(self.doc, ops[ch["address"]]["bindings"])["mqtt"]
            self.channels[name] = Channel(
                name=name,
                address=ch["address"],
                pattern=_address_pattern(ch["address"]),
                schema=json.loads(schema_path.read_text()),
                qos=binding["qos"],
                retain=binding["retain"],
            )

    def channel(self, topic: str) -> Channel:
        """The channel ``topic`` belongs to; AssertionError when it belongs to none."""
        matches = [c for c in self.channels.values() if c.pattern.fullmatch(topic)]
        # 'p/s/l/kpi/shift' also matches '{topic_prefix}/{site}/{line}/kpi' with a two-level
        # prefix: the most specific address (most literal text) wins.
        matches.sort(key=lambda c: -len(re.sub(r"\{[a-z_]+\}", "", c.address)))
        assert matches, f"topic {topic!r} is not a channel of {ASYNCAPI.name}"
        return matches[0]

    def validate(self, topic: str, payload: Any) -> Channel:
        """Check ``payload`` (decoded JSON, or bytes) against its channel's schema."""
        if isinstance(payload, bytes | bytearray):
            payload = json.loads(payload)
        channel = self.channel(topic)
        jsonschema.validate(payload, channel.schema)
        return channel


@cache
def contract() -> Contract:
    return Contract()
