"""The shipped systemd unit: hardening directives, and systemd's own exposure rating."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "edge-agent.service"
MAX_EXPOSURE = 2.0


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_has_the_hardening_the_docs_promise() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "edge-agent",
        "ConfigurationDirectory": "edge-agent",
        "Type": "notify",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["RestartPreventExitStatus"] == ["78 243"]


def test_a_bad_config_is_refused_by_the_main_process_and_by_reload() -> None:
    d = directives(UNIT.read_text())
    # RestartPreventExitStatus= applies to the main process only: a failing ExecStartPre= check
    # would be restarted every RestartSec= (tests/system/test_systemd_unit_live.py shows it).
    assert "ExecStartPre" not in d
    assert d["ExecStart"][0].split()[1:3] == ["run", "-c"]
    # systemd runs ExecReload= lines in order; a failing check fails `systemctl reload`.
    first, signal = d["ExecReload"]
    assert first.split()[1] == "check-config"
    assert "kill -HUP" in signal


def test_documentation_is_a_page_the_install_steps_create() -> None:
    d = directives(UNIT.read_text())
    install = (SYSTEMD.parent / "docs" / "install.md").read_text()
    for url in d["Documentation"]:
        path = url.removeprefix("file://")
        assert f" {path}" in install, f"docs/install.md installs nothing at {path}"


def test_modbus_rtu_drop_in_opens_one_device_only() -> None:
    d = directives((SYSTEMD / "modbus-rtu.conf").read_text())
    assert d["PrivateDevices"] == ["no"]
    assert d["SupplementaryGroups"] == ["dialout"]
    assert len(d["DeviceAllow"]) == 1 and d["DeviceAllow"][0].startswith("/dev/")


def exposure(unit_dir: Path) -> float:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", "edge-agent.service"],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for edge-agent\.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found[1])


def test_systemd_rates_the_unit_2_or_lower(tmp_path: Path) -> None:
    shutil.copy(UNIT, tmp_path / UNIT.name)
    assert exposure(tmp_path) <= MAX_EXPOSURE


def test_systemd_rates_the_unit_with_the_rtu_drop_in_2_or_lower(tmp_path: Path) -> None:
    shutil.copy(UNIT, tmp_path / UNIT.name)
    (tmp_path / "edge-agent.service.d").mkdir()
    shutil.copy(SYSTEMD / "modbus-rtu.conf", tmp_path / "edge-agent.service.d")
    assert exposure(tmp_path) <= MAX_EXPOSURE


def test_credentials_are_named_after_their_file_in_the_config_directory() -> None:
    """A relative ``*_file`` is read from ``$CREDENTIALS_DIRECTORY`` under systemd and from the
    config file's directory by hand: the examples keep both on the same file."""
    install = (SYSTEMD.parent / "docs" / "install.md").read_text()
    for where, text in (("unit", UNIT.read_text()), ("docs/install.md", install)):
        found = re.findall(r"LoadCredential=([^:\s]+):(\S+)", text)
        assert found, where
        for name, source in found:
            assert source == f"/etc/edge-agent/{name}", f"{where}: {name} from {source}"
