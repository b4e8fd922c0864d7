"""Modicon-style Modbus addresses (40003, 30001, 10001, 400001): the 5-digit forms are valid
protocol addresses on a large PLC, so ``check-config`` warns and says what they most likely mean;
the 6-digit forms are out of range, and the error says the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.loader import EXIT_CONFIG, check_config_main, load_config_text, modicon
from edge_agent.config.schema import ModbusTable

CONFIG = """\
version: 1
site: s1
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    tags:
{tags}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: plc1.t0}}
mqtt: {{host: 127.0.0.1}}
"""


def _config(tmp_path: Path, *tags: str) -> Path:
    path = tmp_path / "agent.yaml"
    lines = "\n".join(f"      - {{name: t{i}, {tag}}}" for i, tag in enumerate(tags))
    path.write_text(CONFIG.format(tags=lines))
    return path


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (40003, (ModbusTable.HOLDING, 3)),
        (40001, (ModbusTable.HOLDING, 1)),
        (49999, (ModbusTable.HOLDING, 9999)),
        (400001, (ModbusTable.HOLDING, 1)),
        (465536, (ModbusTable.HOLDING, 65536)),
        (30001, (ModbusTable.INPUT, 1)),
        (300100, (ModbusTable.INPUT, 100)),
        (10001, (ModbusTable.DISCRETE, 1)),
        (0, None),
        (3, None),
        (9999, None),
        (40000, None),
        (20001, None),
        (50001, None),
        (465537, None),
    ],
)
def test_modicon_reading(address: int, expected: tuple[ModbusTable, int] | None) -> None:
    assert modicon(address) == expected


def test_five_digit_modicon_address_is_a_warning_naming_the_protocol_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, "address: 40003", "table: input, address: 30001", "address: 7")
    assert check_config_main(str(path)) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok: ")
    assert err.splitlines() == [
        f"warning: {path}:8:29: sources[0].tags[0].address: address 40003 looks like Modicon "
        "notation for holding register 3 (protocol address 2); write table: holding, address: 2 "
        "(if the PLC's manual lists 0-based protocol addresses, 40003 is right: ignore this)",
        f"warning: {path}:9:43: sources[0].tags[1].address: address 30001 looks like Modicon "
        "notation for input register 1 (protocol address 0); write table: input, address: 0 "
        "(if the PLC's manual lists 0-based protocol addresses, 30001 is right: ignore this)",
    ]


def test_six_digit_modicon_address_is_an_error_saying_what_it_means(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, "address: 400001")
    assert check_config_main(str(path)) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:8:29: sources[0].tags[0].address: must be 0..65535, got 400001: address 400001 "
        "looks like Modicon notation for holding register 1 (protocol address 0); write table: "
        "holding, address: 0",
        "1 problem",
    ]


def test_plain_addresses_give_no_warning() -> None:
    warnings: list[str] = []
    load_config_text(CONFIG.format(tags="      - {name: t0, address: 65535}"), warnings=warnings)
    assert warnings == []
