"""logs.setup_logging: the libraries' records only when the agent runs at DEBUG (text and JSON)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from edge_agent.logs import setup_logging

LIBRARIES = ("asyncua", "pymodbus", "paho", "aiomqtt")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (*LIBRARIES, "amqtt", "transitions")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def emit() -> None:
    logging.getLogger("asyncua.client.ua_client").error(
        "parsing message from server", exc_info=ValueError("Not enough data left in buffer")
    )
    logging.getLogger("pymodbus.logging").error("Cancel send\n>>>>> send: 0x0 0x7 0x0 0x0")
    logging.getLogger("paho.mqtt.client").warning("paho warning")
    logging.getLogger("aiomqtt").info("aiomqtt info")
    logging.getLogger("asyncua").critical("asyncua critical")
    logging.getLogger("edge_agent.supervisor").warning("source 'press1' unavailable")
    logging.getLogger("edge_agent.supervisor").debug("source 'press1' still unavailable")


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_library_records_below_critical_are_dropped(
    level: str, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    setup_logging(level, "json")
    emit()
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["logger"], r["msg"]) for r in records] == [
        ("asyncua", "asyncua critical"),
        ("edge_agent.supervisor", "source 'press1' unavailable"),
    ]


def test_at_debug_every_library_record_is_written(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    setup_logging("DEBUG", "json")
    emit()
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["logger"].split(".")[0] for r in records] == [
        "asyncua",
        "pymodbus",
        "paho",
        "aiomqtt",
        "asyncua",
        "edge_agent",
        "edge_agent",
    ]
    assert "ValueError: Not enough data" in records[0]["exc"]  # the detail is all there


def test_text_format_obeys_the_same_levels(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    setup_logging("INFO", "text")
    emit()
    err = capsys.readouterr().err
    assert "asyncua critical" in err and "source 'press1' unavailable" in err
    assert "Not enough data" not in err and "0x0" not in err and "paho" not in err
