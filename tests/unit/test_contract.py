"""The contract module: report types to topics and payloads, and the shipped JSON Schemas
generated from the types' field declarations."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from edge_agent import contract
from edge_agent.engine import reports
from edge_agent.engine.orders import MAX_ORDER_QUANTITY
from edge_agent.engine.reports import (
    REPORT_TYPES,
    CommandReply,
    EnergyFields,
    KpiReport,
    ReasonTime,
    StateChange,
    WindowRef,
    from_dict,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
ENGINE = ROOT / "edge_agent" / "engine"

ENERGY = EnergyFields(
    energy_kwh=None,
    energy_by_state_kwh={},
    energy_per_good_part_kwh=None,
    co2e_kg=None,
    co2e_per_good_part_kg=None,
    emission_factor=None,
    energy_notes=("no energy signal configured for this line",),
)


def kpi(*, closed: bool, kind: str = "shift") -> KpiReport:
    return KpiReport(
        site="s",
        line="l1",
        window=WindowRef(
            kind=kind,
            name="day",
            start="2024-03-04T06:00:00+00:00",
            end="2024-03-04T14:00:00+00:00",
        ),
        ts="2024-03-04T14:00:00.000+00:00",
        state="running",
        convention="iso22400:planned=planned_stop",
        availability=0.5,
        performance=None,
        quality=1.0,
        oee=None,
        total_count=3,
        good_count=3,
        reject_count=0,
        throughput_good_per_h=1.5,
        throughput_total_per_h=1.5,
        ideal_cycle_time_s=1.0,
        elapsed_s=8.0,
        planned_time_s=8.0,
        run_time_s=4.0,
        unknown_time_s=0.0,
        planned_stop_s=0.0,
        loss_time_s={
            "idle": 4.0,
            "fault": 0.0,
            "changeover": 0.0,
            "starved": 0.0,
            "blocked": 0.0,
            "planned_stop": 0.0,
        },
        loss_time_by_reason_s={"unspecified": 4.0},
        planned_stop_by_cause_s={"off_shift": 0.0, "break": 0.0, "maintenance": 0.0},
        micro_stop_count=0,
        micro_stop_time_s=0.0,
        net_run_time_s=3.0,
        fully_productive_time_s=3.0,
        products=(),
        data_coverage=1.0,
        warnings=(),
        energy=ENERGY,
        fault_count=0,
        mtbf_s=None,
        mttr_s=None,
        top_downtime_reasons=(ReasonTime(reason="unspecified", time_s=4.0),),
        unknown_time_count=0,
        throughput_good_per_known_h=1.5,
        closed=closed,
    )


@pytest.mark.parametrize("cls", REPORT_TYPES, ids=lambda c: c.SCHEMA_FILE)
def test_the_shipped_schemas_are_the_generated_ones(cls: type) -> None:
    shipped = (SCHEMAS / cls.SCHEMA_FILE).read_text(encoding="utf-8")
    assert shipped == contract.schema_text(cls), (
        f"docs/schemas/{cls.SCHEMA_FILE} is stale: the report types changed;"
        " regenerate it with: python -m edge_agent.contract docs/schemas"
    )


def test_every_declared_field_has_a_schema_and_the_parts_their_fields() -> None:
    for cls in REPORT_TYPES:
        schema = contract.json_schema(cls)
        jsonschema.Draft202012Validator.check_schema(schema)
        names = [f.name for f in reports.wire_fields(cls)]
        assert set(schema["properties"]) == {"schema", "seq", "shared", *names}
        assert len(names) == len(set(names)), cls
    window = contract.json_schema(KpiReport)["properties"]["window"]
    assert window["required"] == [f.name for f in dataclasses.fields(WindowRef)]
    # Descriptions are carried over from the declarations.
    assert contract.json_schema(KpiReport)["properties"]["planned_time_s"]["description"] == (
        "planned production time, unknown time included"
    )
    order = contract.json_schema(reports.OrderReport)["properties"]["target_quantity"]
    assert order["maximum"] == MAX_ORDER_QUANTITY


def test_topics_retain_and_qos_come_from_the_report_type() -> None:
    live, shift, hour = kpi(closed=False), kpi(closed=True), kpi(closed=True, kind="hour")
    assert [(m.topic_suffix, m.retain, m.qos) for m in contract.messages([live, shift, hour])] == [
        ("kpi", True, 1),
        ("kpi/shift", False, 1),
        ("kpi/hour", False, 1),
    ]
    reply = CommandReply(site="s", line="l1", ts="t", command="order", ok=False, errors=("x",))
    msg = contract.message(reply, qos=2)
    assert (msg.topic_suffix, msg.retain, msg.qos) == ("cmd/order/reply", False, 2)
    # Optional fields are left out when absent, not written as null.
    assert msg.payload == {
        "schema": "edge-agent/cmd-reply/1",
        "site": "s",
        "line": "l1",
        "ts": "t",
        "command": "order",
        "ok": False,
        "errors": ["x"],
    }
    assert tuple(t.suffix for t in contract.TOPICS) == contract.LINE_TOPICS
    assert "energy_kwh" in contract.PAYLOAD_FIELDS and "closed" not in contract.PAYLOAD_FIELDS


def test_a_payload_validates_and_reads_back_as_the_same_report() -> None:
    report = kpi(closed=True)
    payload = contract.payload(report)
    assert list(payload)[:6] == ["schema", "site", "line", "window", "ts", "state"]
    assert payload["energy_kwh"] is None and "energy" not in payload  # flattened
    assert payload["top_downtime_reasons"] == [{"reason": "unspecified", "time_s": 4.0}]
    schema = json.loads((SCHEMAS / "kpi.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate({**payload, "seq": 1}, schema)
    back = from_dict(KpiReport, json.loads(json.dumps(payload)), closed=True)
    assert back == report
    change = StateChange(
        site="s", line="l", ts="a", state="idle", previous_state="running", since="a"
    )
    assert from_dict(StateChange, to_dict(change)) == change


def test_the_engine_imports_no_asyncio_sink_config_loader_or_contract() -> None:
    forbidden = ("asyncio", "edge_agent.sinks", "edge_agent.config.loader", "edge_agent.contract")
    for path in sorted(ENGINE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
