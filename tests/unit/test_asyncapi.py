"""docs/asyncapi.yaml: a valid AsyncAPI 3.0 document that says what the agent does.

Two validators check the document: the AsyncAPI parser (the spec's JSON Schema plus its semantic
rules, run with node) and the AsyncAPI 3.0.0 JSON Schema from ``@asyncapi/specs`` (run here with
jsonschema). Both come from ``scripts/asyncapi/package-lock.json``; ``scripts/test`` installs
them with ``npm ci``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml
from helpers.contract import ASYNCAPI, DOCS, ROOT, Contract

from edge_agent import contract

TOOL_DIR = ROOT / "scripts" / "asyncapi"
SPECS = TOOL_DIR / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
INSTALL_HINT = "run ./scripts/test, or: npm ci --ignore-scripts --prefix scripts/asyncapi"


def _require_tools() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: the AsyncAPI check needs it ({INSTALL_HINT})")
    if not (TOOL_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"the AsyncAPI parser is not installed ({INSTALL_HINT})")
    return node


def _parse(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_require_tools(), str(TOOL_DIR / "validate.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_asyncapi_parser_accepts_the_document() -> None:
    res = _parse(ASYNCAPI)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid AsyncAPI 3.0.0" in res.stdout


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("retain: false", "retained: false", '"retained" is not expected'),
        ("./schemas/state.schema.json", "./schemas/missing.schema.json", "missing.schema.json"),
        ("action: send", "action: publish", "action"),
    ],
)
def test_asyncapi_parser_rejects_a_broken_document(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    # The validator must be able to fail.
    shutil.copytree(DOCS / "schemas", tmp_path / "schemas")
    text = ASYNCAPI.read_text()
    broken = text.replace(old, new, 1)
    assert broken != text
    (tmp_path / "asyncapi.yaml").write_text(broken)
    res = _parse(tmp_path / "asyncapi.yaml")
    assert res.returncode == 1, res.stdout + res.stderr
    assert expected in res.stdout


def _spec_validator() -> jsonschema.Draft7Validator:
    _require_tools()
    spec = json.loads(SPECS.read_text())
    # The spec's definitions carry their own $id: register each so that refs resolve offline.
    resources = [(spec["$id"], referencing.Resource.from_contents(spec))]
    resources += [
        (
            key,
            referencing.Resource.from_contents(
                value, default_specification=referencing.jsonschema.DRAFT7
            ),
        )
        for key, value in spec["definitions"].items()
    ]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    return jsonschema.Draft7Validator(spec, registry=registry)


def test_document_matches_the_asyncapi_3_json_schema() -> None:
    validator = _spec_validator()
    doc = yaml.safe_load(ASYNCAPI.read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    assert errors == []
    doc["operations"]["publishKpi"]["action"] = "publish"  # AsyncAPI 2 wording: not 3.0
    assert list(validator.iter_errors(doc))


def test_channels_are_the_topics_the_agent_publishes() -> None:
    api = Contract()
    got = {
        c.address: (c.qos, c.retain, c.schema["properties"].get("schema", {}).get("const"))
        for c in api.channels.values()
    }
    assert got == {
        "{topic_prefix}/{site}/status": (1, True, "edge-agent/status/1"),
        "{topic_prefix}/{site}/{line}/kpi": (1, True, "edge-agent/kpi/1"),
        "{topic_prefix}/{site}/{line}/kpi/shift": (1, False, "edge-agent/kpi/1"),
        "{topic_prefix}/{site}/{line}/kpi/hour": (1, False, "edge-agent/kpi/1"),
        "{topic_prefix}/{site}/{line}/state": (1, True, "edge-agent/state/1"),
        "{topic_prefix}/{site}/{line}/energy": (1, True, "edge-agent/energy/1"),
        "{topic_prefix}/{site}/{line}/order": (1, True, "edge-agent/order/1"),
        "{topic_prefix}/{site}/{line}/order/closed": (1, False, "edge-agent/order-closed/1"),
        # Received by the agent (mqtt.commands), and its reply.
        "{topic_prefix}/{site}/{line}/cmd/order": (1, False, None),
        "{topic_prefix}/{site}/{line}/cmd/order/reply": (1, False, "edge-agent/cmd-reply/1"),
        "{topic_prefix}/{site}/{line}/operator": (1, False, "edge-agent/operator/1"),
    }
    # Every line topic of the contract module has a channel, with its retain flag, QoS and
    # payload schema.
    assert len(contract.TOPICS) == len(got) - 2  # all but status and the command itself
    for topic in contract.TOPICS:
        channel = api.channel(f"p/s/l/{topic.suffix}")
        assert channel.address.endswith("{line}/" + topic.suffix)
        assert channel.retain == topic.retain, topic.suffix
        assert channel.qos == topic.qos, topic.suffix
        assert channel.schema["properties"]["schema"]["const"] == topic.report.SCHEMA


def test_topics_resolve_to_the_right_channel() -> None:
    api = Contract()
    assert api.channel("edge-agent/busan/line1/kpi").name == "kpi"
    assert api.channel("a/b/busan/line1/kpi/shift").name == "kpiShift"
    assert api.channel("edge-agent/busan/line1/kpi/hour").name == "kpiHour"
    assert api.channel("edge-agent/busan/line1/state").name == "state"
    assert api.channel("edge-agent/busan/status").name == "status"
    with pytest.raises(AssertionError):
        api.channel("edge-agent/busan/line1/other")


def test_examples_hold_to_their_payload_schemas() -> None:
    api = Contract()
    checked = 0
    for channel in api.channels.values():
        for ref in api.doc["channels"][channel.name]["messages"].values():
            name = ref["$ref"].rsplit("/", 1)[1]
            for example in api.doc["components"]["messages"][name].get("examples", []):
                jsonschema.validate(example["payload"], channel.schema)
                checked += 1
    assert checked >= 3
