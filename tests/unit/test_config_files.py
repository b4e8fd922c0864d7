"""``check-config`` (and ``run``) check the files a configuration names: secret files exist, are
readable and not empty; certificates and private keys parse (PEM or DER); ``trust_dir`` is a
readable directory. Relative paths resolve as ``run`` resolves them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.tls import Pki, make_pki

from edge_agent.config.loader import EXIT_CONFIG, check_config_main, load_config
from edge_agent.errors import ConfigError

TEMPLATE = """\
version: 1
site: plant1
sources:
  - name: plc1
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840/
    username: agent
    password_file: {opcua_password}
    security:
      policy: Basic256Sha256
      cert_file: {opcua_cert}
      key_file: {opcua_key}
      trust_dir: {trust_dir}
    tags: [{{name: total, node: "ns=2;s=Total"}}]
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: plc1.total}}
mqtt:
  host: localhost
  username: agent
  password_file: {mqtt_password}
  tls: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}
prometheus:
  enabled: false
"""


def _good(directory: Path) -> dict[str, str]:
    pki: Pki = make_pki(directory)
    (directory / "mqtt.password").write_text("s3cret\n")
    (directory / "opcua.password").write_text("s3cret")
    (directory / "trust").mkdir(exist_ok=True)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o600)
    return {
        "opcua_password": "opcua.password",  # relative: next to the config file
        "opcua_cert": str(pki.client_cert),
        "opcua_key": str(pki.client_key),
        "trust_dir": "trust",
        "mqtt_password": "mqtt.password",
        "ca": str(pki.ca_cert),
        "cert": str(pki.client_cert),
        "key": str(pki.client_key),
    }


def _write(tmp_path: Path, **changes: str) -> Path:
    values = _good(tmp_path) | changes
    config = tmp_path / "agent.yaml"
    config.write_text(TEMPLATE.format(**values))
    config.chmod(0o600)
    return config


def test_good_files_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path)
    assert check_config_main(str(config)) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{config}: ok: ") and err == ""


def test_missing_files_are_config_errors_with_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(
        tmp_path,
        opcua_key="missing.key",
        mqtt_password="nope.password",
        ca="/nonexistent/ca.pem",
        trust_dir="no-such-dir",
    )
    assert check_config_main(str(config)) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{config}:12:17: sources[0].security.key_file: cannot read {tmp_path / 'missing.key'}: "
        "No such file or directory",
        f"{config}:13:18: sources[0].security.trust_dir: directory {tmp_path / 'no-such-dir'} "
        "does not exist",
        f"{config}:22:18: mqtt.password_file: cannot read {tmp_path / 'nope.password'}: "
        "No such file or directory",
        f"{config}:23:18: mqtt.tls.ca_file: cannot read /nonexistent/ca.pem: "
        "No such file or directory",
        "4 problems",
    ]


def test_files_that_do_not_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.password").write_text("\n")
    (tmp_path / "garbage.pem").write_bytes(b"not a certificate\n")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "locked.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    values = _good(tmp_path)
    config = _write(
        tmp_path,
        opcua_password="empty.password",
        opcua_cert=values["key"],  # a key where the certificate belongs
        cert=str(tmp_path / "garbage.pem"),
        key=str(tmp_path / "locked.key"),
    )
    assert check_config_main(str(config)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"sources[0].password_file: {tmp_path / 'empty.password'} is empty" in err
    assert (
        f"sources[0].security.cert_file: {values['key']} holds a private key, not a certificate"
    ) in err
    assert f"mqtt.tls.cert_file: {tmp_path / 'garbage.pem'} is not a PEM or DER certificate" in err
    assert f"mqtt.tls.key_file: {tmp_path / 'locked.key'} is an encrypted private key" in err
    assert "passphrase" not in err.replace("has no passphrase", "")
    assert err.splitlines()[-1] == "4 problems"


def test_der_files_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_agent.certs import make_opcua_certificate

    made = make_opcua_certificate(tmp_path / "opcua", application_uri="urn:x", hostnames=["x"])
    config = _write(tmp_path, opcua_cert=str(made.cert_file), opcua_key=str(made.key_file))
    assert str(made.cert_file).endswith(".der")
    assert check_config_main(str(config)) == 0, capsys.readouterr().err


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    config = _write(tmp_path)
    (tmp_path / "mqtt.password").chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        load_config(config)


def test_relative_paths_resolve_in_the_credentials_directory_as_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert f"cannot read {credentials / 'mqtt.password'}" in str(raised.value)
    for name in ("mqtt.password", "opcua.password"):
        (credentials / name).write_text("s3cret\n")
    (credentials / "trust").mkdir()
    cfg = load_config(config)
    assert cfg.mqtt.password_file == str(credentials / "mqtt.password")


def test_replay_and_structure_only_loads_skip_the_files(tmp_path: Path) -> None:
    config = _write(tmp_path, opcua_key="missing.key")
    cfg = load_config(config, check_files=False)
    assert cfg.sources[0].name == "plc1"
