"""Shared fixtures: a real Mosquitto broker (or either of two broker implementations), and a
guard against leaked tasks and threads."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.amqtt_broker import Amqtt
from helpers.mosquitto import Mosquitto, MosquittoFactory, find_mosquitto
from hypothesis import settings as hypothesis_settings

# The property tests replay the same examples on every run, so that a test run (and CI) never
# fails at random; a counterexample the search finds is kept as an explicit @example. Set
# HYPOTHESIS_PROFILE=explore to search new examples.
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore")
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

_LEAK_GRACE_S = 2.0  # a thread that is finishing may take a moment to end


# -- leak guard -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running that it started.

    Torn down after the test's event loop is closed (which joins the loop's executor threads).
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _LEAK_GRACE_S
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if leaked:
        pytest.fail(f"test leaked thread(s): {[t.name for t in leaked]}", pytrace=False)


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest, _no_leaked_threads: None) -> Iterator[None]:
    """Fail an async test that leaves asyncio tasks pending that it (or its fixtures) started.

    For async tests this fixture asks for the test's event loop runner first, so its teardown
    runs after the test's async fixtures are torn down and before the loop is closed (which
    would cancel leftovers silently).
    """
    from pytest_asyncio import is_async_test

    if not is_async_test(request.node):
        yield
        return
    scope = getattr(request.node, "_loop_scope", "function")
    runner: asyncio.Runner = request.getfixturevalue(f"_{scope}_scoped_runner")
    loop = runner.get_loop()
    before = {t for t in asyncio.all_tasks(loop) if not t.done()}
    yield
    leaked = [t for t in asyncio.all_tasks(loop) if not t.done() and t not in before]
    if leaked:
        for t in leaked:
            t.cancel()
        names = [f"{t.get_name()} {t.get_coro()!r}" for t in leaked]
        pytest.fail(f"test leaked asyncio task(s): {names}", pytrace=False)


# -- Mosquitto --------------------------------------------------------------------------------


def _mosquitto_binary() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.fail(
            "mosquitto is not installed: the MQTT tests need a real broker "
            "(apt-get install mosquitto)",
            pytrace=False,
        )
    return binary


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Start brokers with extra config: ``mosquitto_factory(extra_conf="...")``. Every broker
    started through it is killed in teardown, whatever the test's outcome."""
    binary = _mosquitto_binary()
    brokers: list[Mosquitto] = []

    def start(*, extra_conf: str = "") -> Mosquitto:
        broker = Mosquitto(binary, tmp_path / f"mosquitto{len(brokers)}", extra_conf=extra_conf)
        brokers.append(broker)
        broker.start(attempts=3)
        return broker

    yield start
    for broker in brokers:
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """An anonymous Mosquitto on 127.0.0.1 and a free port, for this test only.
    ``stop()`` / ``start()`` restart it on the same port; ``pause()`` freezes it."""
    return mosquitto_factory()


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One anonymous Mosquitto shared by a module's tests (do not stop it in a test)."""
    broker = Mosquitto(_mosquitto_binary(), tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start(attempts=3)
        yield broker
    finally:
        broker.close()


# -- any broker -------------------------------------------------------------------------------

BROKERS = ("mosquitto", "amqtt")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mosquitto | Amqtt]:
    """An anonymous broker on 127.0.0.1 and a free port, once per implementation: Mosquitto and
    amqtt (pure Python), so that nothing depends on one broker's quirks. Same interface as
    ``mosquitto`` (``host``, ``port``, ``stop()``, ``start()``, ``pause()``, ``resume()``)."""
    instance: Mosquitto | Amqtt
    if request.param == "mosquitto":
        instance = Mosquitto(_mosquitto_binary(), tmp_path / "mosquitto")
    else:
        pytest.importorskip("amqtt", reason="amqtt (the 'demo' extra) is the second broker")
        instance = Amqtt(tmp_path / "amqtt")
    try:
        instance.start(attempts=3)
        yield instance
    finally:
        instance.close()
