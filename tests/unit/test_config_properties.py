"""Property tests: whatever the input, the loader returns a config or raises ConfigError."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import AgentConfig
from edge_agent.errors import ConfigError

ISSUE = re.compile(r"[^\n]+:\d+:\d+: [^\n]+: [^\n]+")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["5s", "500ms", "06:00", "plc1.total", "running", "modbus", "opcua", "ABCD"]),
)
data = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)


def check(text: str) -> None:
    try:
        cfg = load_config_text(text, "p.yaml")
    except ConfigError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert ISSUE.fullmatch(issue), issue
    else:
        assert isinstance(cfg, AgentConfig)


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    check(text)


yaml_pieces = st.sampled_from(
    [
        "version: 1\n",
        "site: s\n",
        "lines:\n",
        "  - ",
        "name: x\n",
        "{",
        "}",
        "[",
        "]",
        ", ",
        "&a ",
        "*a ",
        "<<: ",
        "!!int ",
        "!!python/object ",
        "? ",
        ": ",
        "- ",
        "  ",
        "\n",
        "'",
        '"',
        "#",
        "---\n",
        "06:00",
        "0x1F",
        ".nan",
        "~",
        "mqtt: {host: h}\n",
        "\t",
        "%YAML 1.1\n",
    ]
)


@SETTINGS
@given(st.lists(yaml_pieces, max_size=40).map("".join))
def test_yamlish_text(text: str) -> None:
    check(text)


@SETTINGS
@given(data)
def test_arbitrary_data_dumped_to_yaml(value: Any) -> None:
    check(yaml.safe_dump(value))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


# The demo configuration (aliases resolved by safe_load) is the valid file that gets mutated.
BASE = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "demo.yaml").read_text())
BASE_PATHS = _paths(BASE)[1:]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(BASE_PATHS), data), min_size=1, max_size=3))
def test_valid_config_with_parts_replaced(changes: list[tuple[tuple[Any, ...], Any]]) -> None:
    config = copy.deepcopy(BASE)
    for path, value in changes:
        target: Any = config
        try:
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this path
    check(yaml.safe_dump(config))
