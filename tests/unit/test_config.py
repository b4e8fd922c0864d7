"""The configuration loader: every problem reported at once, with position and path."""

from __future__ import annotations

import copy
import math
import re
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config.durations import parse_duration
from edge_agent.config.loader import (
    EXIT_CONFIG,
    MAX_FILE_BYTES,
    check_config_main,
    load_config,
    load_config_text,
)
from edge_agent.config.schema import (
    AgentConfig,
    ByteOrder,
    DataType,
    MachineState,
    ModbusSourceConfig,
    ModbusTable,
    MqttProtocol,
    OpcuaSourceConfig,
)
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "testcases" / "config"
ISSUE = re.compile(r"(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<message>.+)")

BASE: dict[str, Any] = {
    "version": 1,
    "site": "plant",
    "sources": [
        {
            "name": "plc1",
            "protocol": "modbus",
            "host": "127.0.0.1",
            "tags": [
                {"name": "state", "address": 0},
                {"name": "total", "address": 1},
                {"name": "run", "table": "coil", "address": 0},
            ],
        },
        {
            "name": "plc2",
            "protocol": "opcua",
            "endpoint": "opc.tcp://127.0.0.1:4840/",
            "tags": [{"name": "total", "node": "ns=2;s=Line2.TotalCount"}],
        },
    ],
    "lines": [
        {
            "name": "line1",
            "ideal_cycle_time": "1s",
            "signals": {
                "state": {"tag": "plc1.state", "map": {1: "running", 2: "idle"}},
                "total_count": {"tag": "plc1.total", "rollover": 65536},
            },
        }
    ],
    "mqtt": {"host": "127.0.0.1"},
}


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "t.yaml")
    assert info.value.issues, "a ConfigError must carry its issues"
    for issue in info.value.issues:
        assert ISSUE.fullmatch(issue), f"malformed issue: {issue!r}"
    return info.value.issues


def with_changes(*changes: tuple[str, Any]) -> str:
    """BASE dumped to YAML after setting (dotted path, value) pairs; value DELETE removes."""
    data = copy.deepcopy(BASE)
    for path, value in changes:
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        target: Any = data
        for part in parts[:-1]:
            target = target[part]
        if value is DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return yaml.safe_dump(data, sort_keys=False)


DELETE = object()


def one_issue(*changes: tuple[str, Any]) -> tuple[str, str]:
    """The path and message of the single issue the changed BASE has."""
    issues = issues_of(with_changes(*changes))
    assert len(issues) == 1, issues
    match = ISSUE.fullmatch(issues[0])
    assert match is not None
    return match["path"], match["message"]


# --- whole files ------------------------------------------------------------------------------


def test_base_loads_into_frozen_dataclasses() -> None:
    cfg = load_config_text(with_changes(), "base.yaml")
    assert isinstance(cfg, AgentConfig)
    assert cfg.path == "base.yaml"
    modbus, opcua = cfg.sources
    assert isinstance(modbus, ModbusSourceConfig)
    assert isinstance(opcua, OpcuaSourceConfig)
    assert modbus.tags[2].table is ModbusTable.COIL
    assert modbus.tags[2].type is DataType.BOOL  # a coil defaults to bool
    assert modbus.tags[0].type is DataType.UINT16
    line = cfg.lines[0]
    assert line.timezone == "UTC"
    assert line.ideal_cycle_time_s == 1.0
    assert line.stop_after_s is None
    assert line.planned_states == frozenset({MachineState.PLANNED_STOP})
    assert line.signals.state is not None
    assert line.signals.state.map == {1: MachineState.RUNNING, 2: MachineState.IDLE}
    assert line.signals.total_count.rollover == 65536
    assert cfg.mqtt.client_id is None
    assert cfg.mqtt.protocol is MqttProtocol.V311
    with pytest.raises(AttributeError):
        cfg.site = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "path", sorted(REPO.glob("config/**/*.yaml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_shipped_config_loads(path: Path) -> None:
    # The examples name the plant's own secret and certificate files, which are not shipped.
    cfg = load_config(path, check_files=False)
    assert cfg.path == str(path)
    assert cfg.lines


def test_shipped_configs_exist() -> None:
    names = {p.name for p in REPO.glob("config/**/*.yaml")}
    assert {"demo.yaml", "example.yaml"} <= names


def test_demo_config_matches_the_simulators() -> None:
    cfg = load_config(REPO / "config" / "demo.yaml")
    assert cfg.site == "demo-site"
    plc1, plc2 = cfg.sources
    assert isinstance(plc1, ModbusSourceConfig)
    assert isinstance(plc2, OpcuaSourceConfig)
    assert (plc1.host, plc1.port, plc1.unit_id, plc1.poll_interval_s) == ("127.0.0.1", 5020, 1, 0.5)
    tags = {tag.name: tag for tag in plc1.tags}
    assert (tags["state"].table, tags["state"].address) == (ModbusTable.HOLDING, 0)
    assert (tags["total"].address, tags["rejects"].address) == (1, 2)
    assert (tags["total32"].address, tags["total32"].type) == (3, DataType.UINT32)
    assert tags["ideal_cycle_time"].type is DataType.FLOAT32
    assert tags["ideal_cycle_time"].order is ByteOrder.ABCD
    assert (tags["running"].table, tags["running"].address) == (ModbusTable.COIL, 0)
    assert {t.node for t in plc2.tags} >= {"ns=2;s=Line2.State", "ns=2;s=Line2.TotalCount"}
    line1, line2 = cfg.lines
    assert line1.signals.total_count.rollover == 65536
    assert line2.signals.total_count.rollover == 2**32
    assert line2.signals.total_count.tag == "plc2.total"
    assert [s.name for s in line1.shifts] == ["day", "swing", "night"]
    assert line1.shifts[2].start == time(22) and line1.shifts[2].end == time(6)
    assert line1.timezone == "Asia/Seoul"
    assert cfg.mqtt.publish_interval_s == 2.0
    # Relative to the file, not the working directory: the repository's state/demo.
    assert cfg.storage.dir == str(REPO / "state" / "demo")


def _case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if p.is_dir())


@pytest.mark.parametrize("case", _case_dirs(), ids=lambda p: p.name)
def test_case(case: Path) -> None:
    path = case / "config.yaml"
    expected_errors = case / "expected_errors.txt"
    if expected_errors.exists():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        got = [issue.replace(str(path), "FILE", 1) for issue in info.value.issues]
        assert got == expected_errors.read_text().splitlines()
    else:
        cfg = load_config(path)
        tags = sum(len(s.tags) for s in cfg.sources)
        summary = f"site={cfg.site} sources={len(cfg.sources)} lines={len(cfg.lines)} tags={tags}"
        assert summary == (case / "expected_ok.txt").read_text().strip()


def test_many_mistakes_are_all_reported_with_positions() -> None:
    text = (
        "version: 1\n"  # 1
        "site: plant\n"  # 2
        "sources:\n"  # 3
        "  - name: plc1\n"  # 4
        "    protocol: modbus\n"  # 5
        "    host: 10.0.0.5\n"  # 6
        "    poll_intervall: 1s\n"  # 7
        "    tags:\n"  # 8
        "      - {name: total, address: 70000}\n"  # 9
        "lines:\n"  # 10
        "  - name: line1\n"  # 11
        "    ideal_cycle_time: 0s\n"  # 12
        "    signals: {total_count: plc1.totl}\n"  # 13
        "mqtt: {host: h, qos: 3}\n"  # 14
    )
    assert issues_of(text) == [
        "t.yaml:7:5: sources[0].poll_intervall: unknown key (did you mean 'poll_interval'?)",
        "t.yaml:9:32: sources[0].tags[0].address: must be 0..65535, got 70000",
        "t.yaml:12:23: lines[0].ideal_cycle_time: must be a positive duration, got 0s",
        "t.yaml:13:28: lines[0].signals.total_count: source 'plc1' has no tag 'totl'"
        " (did you mean 'plc1.total'?)",
        "t.yaml:14:22: mqtt.qos: must be 0..2, got 3",
    ]


# --- one validation at a time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (("version", 2), "version", "must be 1"),
        (("version", DELETE), "version", "required key missing"),
        (("site", "a/b"), "site", "must be 1 to 64 characters"),
        (("site", "x" * 65), "site", "must be 1 to 64 characters"),
        (("site", 12), "site", 'must be a string, got integer 12 (quote it: "12")'),
        (("mqtt", DELETE), "mqtt", "required key missing"),
        (("mqtt.host", ""), "mqtt.host", "must not be empty"),
        (("mqtt.port", 0), "mqtt.port", "must be 1..65535, got 0"),
        (("mqtt.port", 65536), "mqtt.port", "must be 1..65535, got 65536"),
        (("mqtt.max_inflight", 40000), "mqtt.max_inflight", "must be 1..32767, got 40000"),
        (("mqtt.port", "1883"), "mqtt.port", "must be an integer, got '1883'"),
        (("mqtt.qos", -1), "mqtt.qos", "must be 0..2"),
        (("mqtt.protocol", "4"), "mqtt.protocol", 'must be "3.1.1" or 5'),
        (("mqtt.protocol", 3.1), "mqtt.protocol", 'must be "3.1.1" or 5'),
        (("mqtt.password", "s3cret"), "mqtt.password", "inline secrets are not accepted"),
        (("mqtt.keepalive", "0s"), "mqtt.keepalive", "must be a positive duration"),
        (("mqtt.publish_interval", "5 sec"), "mqtt.publish_interval", "expected a duration"),
        (("mqtt.topic_prefix", "a/#"), "mqtt.topic_prefix", "without '+', '#'"),
        (("mqtt.tls", {"key_file": "k"}), "mqtt.tls.key_file", "needs cert_file"),
        (("mqtt.tls", {"ca": "x"}), "mqtt.tls.ca", "unknown key (did you mean 'ca_file'?)"),
        (("mqtt.backoff_max", "500ms"), "mqtt.backoff_max", "must be >= backoff_initial (1 s)"),
        (("prometheus", {"port": 99999}), "prometheus.port", "must be 1..65535"),
        (("prometheus", {"enabled": "yes"}), "prometheus.enabled", "must be true or false"),
        (("logging", {"level": "LOUD"}), "logging.level", "must be one of: DEBUG"),
        (("logging", {"format": "xml"}), "logging.format", "must be one of: text, json"),
        (("storage", {"dri": "x"}), "storage.dri", "did you mean 'dir'?"),
        (("sources.0.port", 0), "sources[0].port", "must be 1..65535"),
        (("sources.0.unit_id", 248), "sources[0].unit_id", "must be 0..247, got 248"),
        (("sources.0.timeout", -1), "sources[0].timeout", "must be a finite number >= 0"),
        (
            ("sources.0.on_startup_error", "die"),
            "sources[0].on_startup_error",
            "must be one of: retry, fail, disable; got 'die'",
        ),
        (("sources.0.protocol", "s7"), "sources[0].protocol", "must be one of: modbus, opcua"),
        (("sources.0.protocol", DELETE), "sources[0].protocol", "required key missing"),
        (
            ("sources.0.endpoint", "opc.tcp://x"),
            "sources[0].endpoint",
            "applies to opcua sources, not modbus",
        ),
        (("sources.0.tags", []), "sources[0].tags", "must list at least one tag"),
        (("sources.0.tags.0.address", -1), "sources[0].tags[0].address", "must be 0..65535"),
        (("sources.0.tags.0.address", 65535), "sources[0].tags[0].address", None),
        (("sources.0.tags.0.unit_id", 300), "sources[0].tags[0].unit_id", "must be 0..247"),
        (
            ("sources.0.tags.0.table", "holdings"),
            "sources[0].tags[0].table",
            "must be one of: holding, input, coil, discrete; got 'holdings'",
        ),
        (("sources.0.tags.0.type", "u16"), "sources[0].tags[0].type", "must be one of: bool"),
        (("sources.0.tags.0.order", "abcd"), "sources[0].tags[0].order", "must be one of: ABCD"),
        (("sources.0.tags.0.type", "string"), "sources[0].tags[0].length", "must be > 0"),
        (("sources.0.tags.0.length", 2), "sources[0].tags[0].length", "type string only"),
        (("sources.0.tags.0.scale", 0), "sources[0].tags[0].scale", "must not be 0"),
        (("sources.0.tags.0.scale", ".nan"), "sources[0].tags[0].scale", "must be a number"),
        (("sources.0.tags.2.scale", 2), "sources[0].tags[2].scale", "numeric types only"),
        (("sources.0.tags.2.type", "int16"), "sources[0].tags[2].type", "type must be bool"),
        (("sources.0.tags.0.name", "a.b"), "sources[0].tags[0].name", "must be 1 to 64"),
        (
            ("sources.0.tags.2.name", "state"),
            "sources[0].tags[2].name",
            "duplicate tag name 'state'",
        ),
        (
            ("sources.0.tags.0.node", "ns=1;i=5"),
            "sources[0].tags[0].node",
            "applies to opcua tags, not modbus",
        ),
        (("sources.1.name", "plc1"), "sources[1].name", "duplicate source name 'plc1'"),
        (
            ("sources.1.tags.0.node", "Line2.TotalCount"),
            "sources[1].tags[0].node",
            "must be an OPC UA node id",
        ),
        (("sources.1.endpoint", "tcp://h:4840"), "sources[1].endpoint", "opc.tcp:// URL"),
        (("sources.1.password", "x"), "sources[1].password", "use password_file"),
        (("sources.1.host", "h"), "sources[1].host", "applies to modbus sources, not opcua"),
        (("lines", []), "lines", "must list at least one line"),
        (("lines.0.name", "line 1"), "lines[0].name", "must be 1 to 64"),
        (("lines.0.timezone", "Europe/Atlantis"), "lines[0].timezone", "unknown time zone"),
        (("lines.0.timezone", "../../etc/passwd"), "lines[0].timezone", "unknown time zone"),
        (("lines.0.ideal_cycle_time", DELETE), "lines[0].ideal_cycle_time", "required key"),
        (("lines.0.ideal_cycle_time", "0ms"), "lines[0].ideal_cycle_time", "positive duration"),
        (("lines.0.stop_after", "1w"), "lines[0].stop_after", "expected a duration"),
        (("lines.0.planned_states", ["unknown"]), "lines[0].planned_states[0]", "must be one of"),
        (("lines.0.planned_states", ["running"]), "lines[0].planned_states[0]", "must be one of"),
        (("lines.0.signals.total_count", DELETE), "lines[0].signals.total_count", "required"),
        (
            ("lines.0.signals.total_count", "plc3.total"),
            "lines[0].signals.total_count",
            "no source named 'plc3'",
        ),
        (
            ("lines.0.signals.total_count", "plc1.nope"),
            "lines[0].signals.total_count",
            "source 'plc1' has no tag 'nope'",
        ),
        (
            ("lines.0.signals.total_count", "total"),
            "lines[0].signals.total_count",
            "must name a tag as SOURCE.TAG",
        ),
        (
            ("lines.0.signals.total_count.rollover", 1),
            "lines[0].signals.total_count.rollover",
            "must be >= 2, got 1",
        ),
        (
            ("lines.0.signals.total_count.rollover", 1.5),
            "lines[0].signals.total_count.rollover",
            "must be an integer",
        ),
        (
            ("lines.0.signals.reject_count", {"rollover": 10}),
            "lines[0].signals.reject_count.tag",
            "required key missing",
        ),
        (
            ("lines.0.signals.running", "plc1.run"),
            "lines[0].signals.running",
            "give state or running, not both",
        ),
        (
            ("lines.0.signals.state.map", {1: "runing"}),
            "lines[0].signals.state.map[1]",
            "must be one of: running, idle",
        ),
        (
            ("lines.0.signals.state.map", {1: "unknown"}),
            "lines[0].signals.state.map[1]",
            "must be one of",
        ),
        (
            ("lines.0.signals.state.map", {"one": "running"}),
            "lines[0].signals.state.map.one",
            "state codes must be integers",
        ),
        (("lines.0.signals.state.map", {}), "lines[0].signals.state.map", "at least one"),
        (
            ("lines.0.shifts", [{"name": "d", "start": "6", "end": "14:00"}]),
            "lines[0].shifts[0].start",
            'must be a time of day "HH:MM"',
        ),
        (
            ("lines.0.shifts", [{"name": "d", "start": "06:00", "end": "14:60"}]),
            "lines[0].shifts[0].end",
            'must be a time of day "HH:MM"',
        ),
        (
            ("lines.0.shifts", [{"name": "d", "start": "06:00"}]),
            "lines[0].shifts[0].end",
            "required key missing",
        ),
        (
            (
                "lines.0.shifts",
                [
                    {"name": "d", "start": "06:00", "end": "14:00"},
                    {"name": "d", "start": "14:00", "end": "22:00"},
                ],
            ),
            "lines[0].shifts[1].name",
            "duplicate shift name 'd'",
        ),
        (
            (
                "lines.0.shifts",
                [
                    {"name": "a", "start": "22:00", "end": "06:00"},
                    {"name": "b", "start": "05:00", "end": "12:00"},
                ],
            ),
            "lines[0].shifts[1]",
            "shift 'b' overlaps shift 'a'",
        ),
        (
            (
                "lines.0.shifts",
                [
                    {
                        "name": "a",
                        "start": "22:00",
                        "end": "06:00",
                        "breaks": [{"start": "05:50", "end": "06:10"}],
                    }
                ],
            ),
            "lines[0].shifts[0].breaks[0]",
            "break 05:50-06:10 is not inside the shift 22:00-06:00",
        ),
        (
            (
                "lines.0.shifts",
                [
                    {
                        "name": "a",
                        "start": "06:00",
                        "end": "14:00",
                        "breaks": [{"start": "09:00", "end": "09:00"}],
                    }
                ],
            ),
            "lines[0].shifts[0].breaks[0]",
            "is empty",
        ),
    ],
)
def test_validation(change: tuple[str, Any], path: str, message: str | None) -> None:
    if message is None:
        load_config_text(with_changes(change))
        return
    got_path, got_message = one_issue(change)
    assert got_path == path
    assert message in got_message


def test_modbus_value_may_not_run_past_the_last_register() -> None:
    path, message = one_issue(
        ("sources.0.tags.0.address", 65534), ("sources.0.tags.0.type", "uint64")
    )
    assert path == "sources[0].tags[0].address"
    assert "past 65535" in message
    path, message = one_issue(("sources.0.tags.0.type", "string"), ("sources.0.tags.0.length", 0))
    assert path == "sources[0].tags[0].length"


def test_reject_and_good_count_are_exclusive() -> None:
    path, message = one_issue(
        ("lines.0.signals.reject_count", "plc1.state"), ("lines.0.signals.good_count", "plc1.state")
    )
    assert (path, message) == (
        "lines[0].signals.good_count",
        "give reject_count or good_count, not both",
    )


def test_without_sources_any_tag_name_is_accepted() -> None:
    cfg = load_config_text(
        with_changes(("sources", DELETE), ("lines.0.signals.total_count", "csv.count"))
    )
    assert cfg.sources == ()
    assert cfg.lines[0].signals.total_count.tag == "csv.count"
    # The form is still checked.
    path, message = one_issue(("sources", DELETE), ("lines.0.signals.state.tag", "nodot"))
    assert (path, message.split(",")[0]) == (
        "lines[0].signals.state.tag",
        "must name a tag as SOURCE.TAG",
    )


def test_a_broken_source_name_does_not_pile_up_unknown_source_errors() -> None:
    issues = issues_of(with_changes(("sources.0.name", "plc 1")))
    assert len(issues) == 1
    assert "sources[0].name" in issues[0]


def test_duplicate_mapping_keys() -> None:
    text = with_changes() + "site: again\n"
    (issue,) = issues_of(text)
    assert issue.endswith("site: duplicate key (first at line 2)")


def test_optional_values_and_conversions() -> None:
    cfg = load_config_text(
        with_changes(
            ("mqtt.client_id", "agent-7"),
            ("mqtt.protocol", 5),
            ("mqtt.tls", True),
            ("mqtt.keepalive", "1m"),
            ("sources.0.poll_interval", "250ms"),
            ("sources.0.timeout", 3),
            ("lines.0.stop_after", "1.5s"),
            ("lines.0.timezone", "Asia/Seoul"),
            ("lines.0.planned_states", ["planned_stop", "changeover"]),
            ("lines.0.signals.reject_count", "plc1.state"),
            ("logging", {"level": "debug", "format": "json"}),
        )
    )
    assert cfg.mqtt.client_id == "agent-7"
    assert cfg.mqtt.protocol is MqttProtocol.V5
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file is None
    assert cfg.mqtt.keepalive_s == 60.0
    source = cfg.sources[0]
    assert (source.poll_interval_s, source.timeout_s) == (0.25, 3.0)
    line = cfg.lines[0]
    assert line.stop_after_s == 1.5
    assert line.planned_states == {MachineState.PLANNED_STOP, MachineState.CHANGEOVER}
    assert line.signals.reject_count is not None
    assert line.signals.reject_count.rollover is None
    assert cfg.logging.level == "DEBUG"
    assert (
        load_config_text(with_changes(("mqtt.protocol", "3.1.1"))).mqtt.protocol
        is MqttProtocol.V311
    )


def test_syntax_error_has_a_position() -> None:
    (issue,) = issues_of("version: 1\nsite: [plant\nmqtt: {host: h}\n")
    match = ISSUE.fullmatch(issue)
    assert match is not None
    assert match["line"] != "1"
    assert "YAML syntax error" in match["message"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "must be a mapping, got a list"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("a: *undefined\n", "found undefined alias"),
        ("version: 1\n\tsite: x\n", "found character '\\t'"),
        ("a: \x00\n", "is not allowed in YAML"),
        ("[" * 3000 + "]" * 3000, "nesting is too deep"),
    ],
)
def test_documents_that_are_not_configurations(text: str, message: str) -> None:
    issues = issues_of(text)
    assert any(message in issue for issue in issues), issues


def test_recursive_and_exploding_aliases_are_refused() -> None:
    (issue,) = issues_of("version: 1\nmqtt: &m {host: h, tls: *m}\n")
    assert "recursive alias" in issue
    levels = ['x-a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        levels.append(
            f"x-{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ", ".join([f"*{prev}"] * 10) + "]"
        )
    (issue,) = issues_of("\n".join(levels) + "\n")
    assert "aliases add more than" in issue


def test_unsafe_tags_are_not_constructed() -> None:
    issues = issues_of(
        with_changes()
        + "x-evil: !!python/object/apply:os.system [echo hi]\n".replace("x-evil", "storage")
    )
    assert any("storage" in issue for issue in issues)
    (issue,) = issues_of(with_changes().replace("site: plant", "site: !!python/name:os.system x"))
    assert "site: must be a string" in issue


def test_huge_text_is_refused_before_parsing() -> None:
    (issue,) = issues_of("a: " + "x" * MAX_FILE_BYTES)
    assert "larger than" in issue


def test_load_config_files(tmp_path: Path) -> None:
    good = tmp_path / "agent.yaml"
    good.write_text(with_changes())
    assert load_config(good).path == str(good)

    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)

    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\nsite: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(latin)
    assert info.value.issues == [
        f"{latin}:2:10: (root): file is not UTF-8: invalid continuation byte"
    ]

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.issues[0].startswith(f"{tmp_path / 'missing.yaml'}: cannot read: ")


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("15m", 900.0),
        ("8h", 28800.0),
        ("30d", 2592000.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("0s", 0.0),
        (" 2s ", 2.0),
        ("3", 3.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "s",
        "5 sec",
        "1h30m",
        "-1s",
        "5w",
        "367d",
        "1e999",
        "nan",
        "inf",
        "5S",
        True,
        -1.0,
        math.inf,
        "9999h",
    ],
)
def test_parse_duration_rejects(text: str | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- check-config -----------------------------------------------------------------------------


def test_check_config_main_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(with_changes())
    assert check_config_main(str(path)) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok: site 'plant', 2 sources, 1 line, 4 tags\n"
    assert err == ""


def test_check_config_main_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(with_changes(("mqtt.qos", 5), ("site", "a b")))
    assert check_config_main(str(path)) == EXIT_CONFIG == 78
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:2:7: site: ")
    assert ": mqtt.qos: must be 0..2, got 5" in lines[1]
    assert lines[2] == "2 problems"


def test_check_config_main_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(tmp_path / "nope.yaml")) == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err.splitlines()[0] == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    )
    assert check_config_main(str(tmp_path)) == 78  # a directory
    assert ": cannot read: " in capsys.readouterr().err


def test_opcua_endpoint_needs_a_port_and_string_fits_one_request() -> None:
    text = """
version: 1
site: s1
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    tags: [{name: t, address: 0, type: string, length: 126}]
  - name: plc2
    protocol: opcua
    endpoint: opc.tcp://10.0.0.5/
    tags: [{name: n, node: "ns=2;s=A"}]
lines:
  - name: l1
    ideal_cycle_time: 1s
    signals: {total_count: plc1.t}
mqtt: {host: 127.0.0.1}
"""
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "limits.yaml")
    joined = "\n".join(err.value.issues)
    assert "sources[1].endpoint: needs a port" in joined
    assert "sources[0].tags[0].length: must be" in joined


# --- line calendars, products, reasons, KPI options -------------------------------------------

CALENDAR_LINE = """
version: 1
site: plant
lines:
  - name: line1
    timezone: Asia/Seoul
    ideal_cycle_time: 1s
    micro_stop_max: 30s
    min_data_coverage: 0.8
    shifts:
      - {name: day, start: "08:00", end: "17:00", days: [mon, tue, wed, thu, fri]}
      - {name: weekend, start: "08:00", end: "12:00", days: [sat, sun]}
    calendar:
      holidays: [2026-01-01, "2026-02-17"]
      extra_days: ["2026-01-03", {date: 2026-01-10, like: mon}]
      maintenance:
        - {start: "2026-12-01T08:00", end: "2026-12-01T12:00", reason: press overhaul}
    signals:
      total_count: plc.total
      reason: {tag: plc.reason, map: {12: jam, 31: no material}}
      product:
        tag: plc.recipe
        map:
          1: {name: A-100, ideal_cycle_time: 1.2s}
          2: {name: B-200, ideal_cycle_time: 2s}
mqtt: {host: 127.0.0.1}
"""


def test_calendar_products_and_reasons_load() -> None:
    line = load_config_text(CALENDAR_LINE).lines[0]
    assert (line.micro_stop_max_s, line.min_data_coverage) == (30.0, 0.8)
    day, weekend = line.shifts
    assert day.days == frozenset({0, 1, 2, 3, 4}) and weekend.days == frozenset({5, 6})
    cal = line.calendar
    assert cal.holidays == (date(2026, 1, 1), date(2026, 2, 17))
    assert [(x.date, x.like) for x in cal.extra_days] == [
        (date(2026, 1, 3), None),
        (date(2026, 1, 10), 0),
    ]
    (m,) = cal.maintenance
    assert (m.start, m.end, m.reason) == (
        datetime(2026, 12, 1, 8),
        datetime(2026, 12, 1, 12),
        "press overhaul",
    )
    sig = line.signals
    assert sig.reason is not None and sig.reason.map == {12: "jam", 31: "no material"}
    assert sig.product is not None
    assert {c: (p.name, p.ideal_cycle_time_s) for c, p in sig.product.map.items()} == {
        1: ("A-100", 1.2),
        2: ("B-200", 2.0),
    }


def test_defaults_of_the_new_line_keys() -> None:
    line = load_config_text(with_changes()).lines[0]
    assert (line.micro_stop_max_s, line.min_data_coverage) == (None, 0.9)
    assert line.calendar.holidays == line.calendar.extra_days == line.calendar.maintenance == ()
    assert line.signals.reason is None and line.signals.product is None


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        ("days: [sat, sun]", "days: [sat, sunday]", "lines[0].shifts[1].days[1]", "must be one of"),
        ("days: [sat, sun]", "days: []", "lines[0].shifts[1].days", "at least 1"),
        ("days: [sat, sun]", "days: [fri]", "lines[0].shifts[1]", "overlaps shift 'day'"),
        ('"2026-02-17"', '"2026-02-30"', "lines[0].calendar.holidays[1]", "YYYY-MM-DD"),
        ('"2026-01-03"', '"2026-01-01"', "lines[0].calendar.extra_days[0]", "also listed"),
        ("like: mon", "like: 1", "lines[0].calendar.extra_days[1].like", "must be one of"),
        ('end: "2026-12-01T12:00"', 'end: "2026-12-01T07:00"', "maintenance[0].end", "after"),
        ('end: "2026-12-01T12:00"', 'end: "2026-12-01"', "maintenance[0].end", "YYYY-MM-DDTHH"),
        ("min_data_coverage: 0.8", "min_data_coverage: 80", "min_data_coverage", "between 0"),
        ("micro_stop_max: 30s", "micro_stop_max: 0s", "micro_stop_max", "positive"),
        ("ideal_cycle_time: 2s}", "ideal_time: 2s}", "product.map[2]", "ideal_cycle_time"),
        ("12: jam", "x: jam", "reason.map.x", "codes must be integers"),
        ("holidays:", "holiday:", "lines[0].calendar.holiday", "did you mean 'holidays'"),
    ],
)
def test_calendar_and_signal_validation(old: str, new: str, path: str, message: str) -> None:
    assert old in CALENDAR_LINE
    issues = issues_of(CALENDAR_LINE.replace(old, new))
    assert any(path in i and message in i for i in issues), issues


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "config").glob("**/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_dumps_and_loads_back_equal(path: Path) -> None:
    # An RTU source's dump once carried host '' and port 502, which rtu refuses.
    from edge_agent.config.dump import dump_config

    cfg = load_config(path, check_files=False)
    assert load_config_text(dump_config(cfg), path=cfg.path) == cfg
