"""``edge-agent`` command line: every subcommand that reads a configuration takes it as ``FILE``,
``-c FILE`` or ``--config FILE``; ``--log-level`` goes before or after the subcommand; each
subcommand's ``--help`` has a description and examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import _build_parser, _config_path, main

DEMO = str(Path(__file__).resolve().parents[2] / "config" / "demo.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["check-config", DEMO],
        ["check-config", "-c", DEMO],
        ["check-config", "--config", DEMO],
        ["check-config", DEMO, "-c", DEMO],  # the same file twice is one file
        ["--log-level", "DEBUG", "check-config", DEMO],
        ["check-config", DEMO, "--log-level", "DEBUG"],
    ],
)
def test_check_config_takes_each_form(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"{DEMO}: ok: ")


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (["run", "-c", DEMO], DEMO),  # the systemd unit's form
        (["run", DEMO], DEMO),
        (["run", "--config", DEMO, "--once"], DEMO),
        (["history", "export", DEMO], DEMO),
        (["history", "export", "-c", DEMO], DEMO),
    ],
)
def test_config_forms_parse_alike(argv: list[str], config: str) -> None:
    parser = _build_parser()
    args = parser.parse_args(argv)
    assert _config_path(parser, args) == config


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "ERROR", "run", "-c", DEMO],
        ["run", "-c", DEMO, "--log-level", "ERROR"],
        ["run", "--log-level", "ERROR", DEMO],
    ],
)
def test_log_level_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert _build_parser().parse_args(argv).log_level == "ERROR"


def test_log_level_before_the_subcommand_is_kept() -> None:
    args = _build_parser().parse_args(["--log-format", "json", "run", "-c", DEMO])
    assert args.log_format == "json" and args.log_level is None


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "-c", "CFG", "samples.csv"],
        ["replay", "--config", "CFG", "samples.csv"],
        ["replay", "CFG", "samples.csv"],
    ],
)
def test_replay_config_forms(argv: list[str], tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("version: 1\nsite: s\n")  # invalid: replay reports it, exit 78
    argv = [str(cfg) if a == "CFG" else a for a in argv]
    assert main([*argv[:-1], str(tmp_path / "nope.csv")]) == 78


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check-config"], "give the configuration file"),
        (["run"], "give the configuration file"),
        (["check-config", "a.yaml", "-c", "b.yaml"], "two configuration files given"),
        (["replay", "-c", "a.yaml", "x.csv", "y.csv"], "give the configuration and one CSV"),
    ],
)
def test_usage_errors_say_how(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["check-config"],
        ["replay"],
        ["history", "export"],
        ["config-schema"],
        ["certs"],
        ["demo"],
        ["watch"],
    ],
)
def test_every_subcommand_help_has_a_description_and_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert "examples:\n  edge-agent " + command[0] in out
    assert "--log-level" in out
