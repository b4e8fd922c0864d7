"""The ``operator`` section (docs/operator.md): off by default; stations name configured lines;
an enabled page needs a station; TLS needs both files; PIN files are read at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_config import ISSUE, issues_of, with_changes

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import OperatorLanguage
from edge_agent.operator.server import OperatorServeError, read_pin

STATION = {"name": "press-a", "lines": ["line1"], "pin_file": "/run/pin"}


def issues(*changes: tuple[str, Any]) -> list[tuple[str, str]]:
    out = []
    for issue in issues_of(with_changes(*changes)):
        m = ISSUE.fullmatch(issue)
        assert m is not None
        out.append((m["path"], m["message"]))
    return out


def test_off_by_default_and_a_station_loads() -> None:
    assert load_config_text(with_changes(), "t.yaml").operator.enabled is False
    cfg = load_config_text(
        with_changes(("operator", {"enabled": True, "language": "ko", "stations": [STATION]})),
        "t.yaml",
    ).operator
    assert (cfg.enabled, cfg.host, cfg.port, cfg.language) == (
        True,
        "127.0.0.1",
        8088,
        OperatorLanguage.KO,
    )
    assert cfg.stations[0].lines == frozenset({"line1"})


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            ("operator", {"enabled": True}),
            "operator.enabled",
            "needs at least one station (operator.stations)",
        ),
        (
            ("operator", {"stations": [{**STATION, "lines": ["line9"]}]}),
            "operator.stations[0].lines[0]",
            "unknown line 'line9' (did you mean 'line1'?)",
        ),
        (
            ("operator", {"stations": [{"name": "a", "lines": ["line1"]}]}),
            "operator.stations[0].pin_file",
            "required key missing",
        ),
        (
            ("operator", {"cert_file": "/etc/c.pem", "stations": [STATION]}),
            "operator.cert_file",
            "needs key_file as well",
        ),
        (
            ("operator", {"language": "de", "stations": [STATION]}),
            "operator.language",
            "must be one of: auto, en, ko; got 'de'",
        ),
    ],
)
def test_mistakes_are_reported(change: tuple[str, Any], path: str, message: str) -> None:
    assert issues(change) == [(path, message)]


def test_a_pin_file_must_hold_a_pin(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("012345\n")
    assert read_pin(str(good), "operator.stations[0].pin_file") == "012345"
    bad = tmp_path / "bad"
    bad.write_text("secret\n")
    with pytest.raises(OperatorServeError) as info:
        read_pin(str(bad), "operator.stations[0].pin_file")
    assert str(info.value) == (
        f"operator: the PIN in {bad} (operator.stations[0].pin_file) must be 4 to 12 digits"
    )
    assert "secret" not in str(info.value)
    with pytest.raises(OperatorServeError, match="cannot read secret file"):
        read_pin(str(tmp_path / "missing"), "operator.stations[0].pin_file")


def test_the_operator_source_name_is_reserved() -> None:
    found = issues(("sources.0.name", "operator"))
    assert (
        "sources[0].name",
        "'operator' is reserved for the operator page's actions: rename it",
    ) in found
