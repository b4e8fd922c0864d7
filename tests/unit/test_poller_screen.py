"""The poller's value screen: NaN, infinities and values outside a tag's min/max become BAD."""

from __future__ import annotations

import logging
import math

import pytest

from edge_agent.config.schema import ModbusSourceConfig, ModbusTag
from edge_agent.metrics import Metrics
from edge_agent.model import Quality, Sample
from edge_agent.poller import Poller
from edge_agent.supervisor import Health


class NeverSource:
    name = "plc"

    async def connect(self) -> None:
        raise AssertionError("not used")

    async def read(self) -> list[Sample]:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


def poller() -> Poller:
    cfg = ModbusSourceConfig(
        name="plc",
        host="127.0.0.1",
        tags=(
            ModbusTag(name="state", address=0, min_value=1, max_value=5),
            ModbusTag(name="speed", address=1, max_value=100.0),
            ModbusTag(name="total", address=2),
        ),
    )
    return Poller(
        NeverSource(),
        cfg,
        deliver=lambda s: None,
        health=Health("source", "plc"),
        metrics=Metrics(),
    )


def sample(tag: str, value: object, quality: Quality = Quality.GOOD) -> Sample:
    return Sample("plc", tag, value, quality, None, 1.0)  # type: ignore[arg-type]


def test_out_of_range_and_non_finite_values_become_bad_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.poller")
    p = poller()
    good = [sample("state", 1), sample("speed", 99.5), sample("total", 123)]
    assert p.screen(good) is good  # nothing to change: no copy on the hot path

    for _ in range(3):
        out = p.screen([sample("state", 9), sample("speed", math.nan), sample("total", math.inf)])
        assert [(s.value, s.quality) for s in out] == [(None, Quality.BAD)] * 3
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        "source 'plc': tag 'speed': non-finite value nan; reported as bad",
        "source 'plc': tag 'state': value 9 above its max 5; reported as bad",
        "source 'plc': tag 'total': non-finite value inf; reported as bad",
    ]
    caplog.clear()
    out = p.screen([sample("state", 0), sample("speed", 100.0), sample("total", 5)])
    assert [s.quality for s in out] == [Quality.BAD, Quality.GOOD, Quality.GOOD]
    # 'state' is still bad (now below its min): no new line for it.
    assert sorted(r.getMessage() for r in caplog.records) == [
        "source 'plc': tag 'speed' is in range again",
        "source 'plc': tag 'total' is in range again",
    ]


def test_bools_strings_and_already_bad_samples_pass_untouched() -> None:
    p = poller()
    given = [
        sample("state", True),  # a bool is not compared with min/max
        sample("speed", "fast"),
        sample("total", None, Quality.BAD),
        sample("speed", 1e9, Quality.BAD),
    ]
    assert p.screen(given) is given
