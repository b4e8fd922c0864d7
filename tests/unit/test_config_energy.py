"""Config keys of energy, orders and commands: signals.energy / power / order, a line's
emission_factor and mqtt.commands (docs/config.md)."""

from __future__ import annotations

from typing import Any

import pytest
from test_config import BASE, ISSUE, issues_of, with_changes

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import EmissionFactor, EnergySignal, EnergyUnit, OrderSignal

TAGS = [
    {"name": "state", "address": 0},
    {"name": "total", "address": 1},
    {"name": "wh", "address": 7, "type": "uint32"},
    {"name": "kw", "address": 11, "type": "float32"},
    {"name": "order", "address": 13},
    {"name": "qty", "address": 14},
]


def load(*changes: tuple[str, Any]) -> Any:
    return load_config_text(with_changes(("sources.0.tags", TAGS), *changes), "t.yaml")


def issues(*changes: tuple[str, Any]) -> list[tuple[str, str]]:
    out = []
    for issue in issues_of(with_changes(("sources.0.tags", TAGS), *changes)):
        m = ISSUE.fullmatch(issue)
        assert m is not None
        out.append((m["path"], m["message"]))
    return out


def test_defaults_keep_existing_configs_loading() -> None:
    cfg = load()
    line = cfg.lines[0]
    assert (line.signals.energy, line.signals.power, line.signals.order) == (None, None, None)
    assert line.emission_factor is None
    assert cfg.mqtt.commands is False
    assert "energy" not in BASE["lines"][0]["signals"]


def test_energy_power_order_factor_and_commands() -> None:
    cfg = load(
        (
            "lines.0.signals.energy",
            {"tag": "plc1.wh", "unit": "Wh", "rollover": 4294967296, "max_power": 30},
        ),
        ("lines.0.signals.power", "plc1.kw"),
        ("lines.0.signals.order", {"id": "plc1.order", "target": "plc1.qty"}),
        (
            "lines.0.emission_factor",
            {"kg_co2e_per_kwh": 0.4594, "source": "Korea grid 2023, GIR"},
        ),
        ("mqtt.commands", True),
    )
    line = cfg.lines[0]
    assert line.signals.energy == EnergySignal(
        tag="plc1.wh", unit=EnergyUnit.WH, rollover=4294967296.0, max_power_kw=30.0
    )
    assert line.signals.power == "plc1.kw"
    assert line.signals.order == OrderSignal(id="plc1.order", target="plc1.qty")
    assert line.emission_factor == EmissionFactor(
        kg_co2e_per_kwh=0.4594, source="Korea grid 2023, GIR"
    )
    assert cfg.mqtt.commands is True
    # A bare tag is a kWh counter that never wraps.
    short = load(("lines.0.signals.energy", "plc1.wh")).lines[0].signals.energy
    assert short == EnergySignal(tag="plc1.wh")


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            ("lines.0.emission_factor", {"kg_co2e_per_kwh": 0.45}),
            "lines[0].emission_factor.source",
            "required key missing",
        ),
        (
            ("lines.0.emission_factor", {"kg_co2e_per_kwh": -1, "source": "x"}),
            "lines[0].emission_factor.kg_co2e_per_kwh",
            "must be >= 0, got -1",
        ),
        (
            ("lines.0.signals.energy", {"tag": "plc1.wh", "unit": "MWh"}),
            "lines[0].signals.energy.unit",
            "must be one of: kWh, Wh; got 'MWh'",
        ),
        (
            ("lines.0.signals.energy", {"tag": "plc1.wh", "rollover": 0}),
            "lines[0].signals.energy.rollover",
            "must be > 0, got 0",
        ),
        (
            ("lines.0.signals.order", {"target": "plc1.qty"}),
            "lines[0].signals.order.id",
            "required key missing",
        ),
        (
            ("lines.0.signals.power", "plc1.kww"),
            "lines[0].signals.power",
            "source 'plc1' has no tag 'kww' (did you mean 'plc1.kw'?)",
        ),
        (("mqtt.commands", "yes"), "mqtt.commands", "must be true or false, got 'yes'"),
    ],
)
def test_mistakes_are_reported(change: tuple[str, Any], path: str, message: str) -> None:
    assert issues(change) == [(path, message)]


def test_an_explicit_null_factor_is_no_factor() -> None:
    assert load(("lines.0.emission_factor", None)).lines[0].emission_factor is None
