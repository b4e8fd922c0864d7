"""Config keys for security: OPC UA secure channels, Prometheus TLS and basic auth."""

from __future__ import annotations

import pytest

from edge_agent.config.loader import load_config_text, normalize_fingerprint
from edge_agent.config.schema import (
    OpcuaSecurityMode,
    OpcuaSecurityPolicy,
    OpcuaSourceConfig,
)
from edge_agent.errors import ConfigError

FP = ":".join(["AB"] * 32)

CONFIG = """\
version: 1
site: plant1
sources:
  - name: plc1
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840/
    security: {security}
    tags: [{{name: total, node: "ns=2;s=Total"}}]
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: plc1.total}}
mqtt: {{host: localhost}}
prometheus: {prometheus}
"""


def load(security: str = "{policy: None}", prometheus: str = "{}") -> OpcuaSourceConfig:
    cfg = load_config_text(CONFIG.format(security=security, prometheus=prometheus), "/etc/a.yaml")
    source = cfg.sources[0]
    assert isinstance(source, OpcuaSourceConfig)
    return source


def issues(**kw: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**kw)
    return "\n".join(caught.value.issues)


def test_security_defaults_to_none() -> None:
    text = CONFIG.format(security="{policy: None}", prometheus="{}").replace(
        "    security: {policy: None}\n", ""
    )
    source = load_config_text(text).sources[0]
    assert isinstance(source, OpcuaSourceConfig)
    assert source.security.policy is OpcuaSecurityPolicy.NONE


def test_a_full_security_block_loads_with_paths_resolved() -> None:
    sec = load(
        "{policy: Aes256_Sha256_RsaPss, mode: Sign, cert_file: c.der, key_file: /k/c.key,"
        f" server_fingerprint: 'sha256:{FP.replace(':', '').lower()}'}}"
    ).security
    assert sec.policy is OpcuaSecurityPolicy.AES256_SHA256_RSAPSS
    assert sec.mode is OpcuaSecurityMode.SIGN
    assert sec.cert_file == "/etc/c.der"  # relative to the config file's directory
    assert sec.key_file == "/k/c.key"
    assert sec.server_fingerprint == FP


def test_no_trust_on_first_use() -> None:
    found = issues(security="{policy: Basic256Sha256, cert_file: c, key_file: k}")
    assert "never trusted on first use" in found


def test_only_one_way_to_trust_the_server() -> None:
    found = issues(
        security=f"{{policy: Basic256Sha256, cert_file: c, key_file: k, trust_dir: t,"
        f" server_fingerprint: '{FP}'}}"
    )
    assert "give only one of" in found


def test_certificate_and_key_are_required_and_policies_are_named() -> None:
    found = issues(security="{policy: Basic256, trust_dir: t}")
    assert "must be one of: None, Basic256Sha256, Aes128_Sha256_RsaOaep" in found
    found = issues(security="{policy: Basic256Sha256, trust_dir: t}")
    assert "security.cert_file: required key missing" in found
    assert "edge-agent certs opcua" in found


def test_policy_none_takes_no_other_key_and_fingerprints_are_checked() -> None:
    assert "applies only when policy is not None" in issues(security="{policy: None, mode: Sign}")
    found = issues(security="{policy: Basic256Sha256, cert_file: c, key_file: k, "
                   "server_fingerprint: 'AB:CD'}")  # fmt: skip
    assert "must be a SHA-256 fingerprint" in found


def test_normalize_fingerprint() -> None:
    assert normalize_fingerprint(FP.lower()) == FP
    assert normalize_fingerprint("SHA256:" + "ab " * 32) == FP
    assert normalize_fingerprint("AB" * 31) is None
    assert normalize_fingerprint("ZZ" * 32) is None


def test_prometheus_tls_and_basic_auth_come_in_pairs() -> None:
    load(prometheus="{cert_file: m.pem, key_file: m.key, username: p, password_file: p.pw}")
    found = issues(prometheus="{cert_file: m.pem, username: p}")
    assert "prometheus.cert_file: needs key_file as well" in found
    assert "prometheus.username: needs password_file as well" in found


def test_cli_certs_opcua_makes_a_certificate_with_the_uri(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from cryptography import x509

    from edge_agent.certs import CERT_FILE, KEY_FILE
    from edge_agent.cli import main

    out = Path(str(tmp_path)) / "certs"
    assert main(["certs", "opcua", "--out", str(out), "--hostname", "ipc1"]) == 0
    cert = x509.load_der_x509_certificate((out / CERT_FILE).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:edge-agent:client"]
    assert san.get_values_for_type(x509.DNSName) == ["ipc1"]
    assert (out / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert "sha256" in capsys.readouterr().out
    assert main(["certs", "opcua", "--out", str(out)]) == 1  # never silently replaced


def test_cli_check_config_dump(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from edge_agent.cli import main

    path = Path(str(tmp_path)) / "agent.yaml"
    path.write_text(CONFIG.format(security="{policy: None}", prometheus="{}"))
    assert main(["check-config", "--dump", str(path)]) == 0
    dumped = capsys.readouterr().out
    assert dumped.startswith("# ")
    cfg = load_config_text(dumped, str(path))
    assert cfg == load_config_text(path.read_text(), str(path))
