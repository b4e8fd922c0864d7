"""``edge-agent run --event-loop``: the choice is checked before anything starts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from edge_agent.cli import EXIT_CONFIG, _loop_factory, main

ROOT = Path(__file__).resolve().parents[2]


def test_asyncio_is_the_default_loop() -> None:
    assert _loop_factory("asyncio") is None


def test_uvloop_factory_makes_a_uvloop_loop() -> None:
    factory = _loop_factory("uvloop")
    assert callable(factory)
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()


def test_missing_uvloop_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    code = main(["run", "-c", str(ROOT / "config" / "demo.yaml"), "--event-loop", "uvloop"])
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "uvloop is not installed" in err and "edge-agent[uvloop]" in err
