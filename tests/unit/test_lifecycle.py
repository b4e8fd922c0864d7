"""The supervisor as the one owner of the lifecycle: start order (sinks first), stop order
(sources first, sinks drain last), systemd notifications, reload, components added and removed
while running, and a component that swallows its cancellation; and the reload plan."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from helpers.configs import two_lines_on_one_plc
from helpers.net import free_port

from edge_agent.app import Agent
from edge_agent.config.loader import load_config_text
from edge_agent.config.schema import AgentConfig
from edge_agent.errors import NotConnectedError
from edge_agent.exits import EXIT_FAILURE
from edge_agent.reload import plan_reload
from edge_agent.supervisor import (
    Backoff,
    Component,
    Health,
    Stage,
    StartupFailedError,
    Supervisor,
)
from edge_agent.systemd import Notifier


class RecordingNotifier(Notifier):
    """Our own notifier, keeping what it would send to systemd."""

    def __init__(self) -> None:
        super().__init__(env={})
        self.sent: list[str] = []

    def notify(self, message: str) -> None:
        self.sent.append(message.split("\n", maxsplit=1)[0])


def recorded(name: str, log: list[str], started: asyncio.Event | None = None) -> Component:
    """A component that runs until cancelled and records its start and its cancellation."""

    async def run() -> None:
        log.append(f"start {name}")
        if started is not None:
            started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.append(f"cancelled {name}")
            raise

    return Component(name=name, stage=Stage.SINKS, run=run)


async def run_until(
    sup: Supervisor,
    condition: Callable[[], Awaitable[None]],
    **kwargs: object,
) -> None:
    """Run ``sup`` until ``condition()`` returned, then stop it; within 10 s."""
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop, **kwargs))  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        await sup.ready.wait()
        await condition()
        stop.set()
        await task


async def test_stages_start_in_order_and_stop_in_reverse_sinks_draining_last() -> None:
    log: list[str] = []
    notifier = RecordingNotifier()
    sup = Supervisor(notifier)
    listening = asyncio.Event()
    sink = recorded("sink", log, listening)
    sink.listening = listening

    async def drain(timeout_s: float) -> None:
        log.append(f"drain sink within {timeout_s:g} s")

    sink.drain = drain
    sink.after_stop = lambda: log.append("after sink")
    # Added out of order: the stage decides, not the order of adding.
    for name, stage in (("source", Stage.SOURCES), ("engine", Stage.ENGINE)):
        c = recorded(name, log)
        c.stage = stage
        c.after_stop = lambda name=name: log.append(f"after {name}")  # type: ignore[misc]
        sup.add(c)
    history = recorded("history", log)
    history.stage = Stage.STORE
    sup.add(history)
    sup.add(sink)

    async def all_started() -> None:
        while len(log) < 4:  # noqa: ASYNC110 -- the components' starts are the condition
            await asyncio.sleep(0)
        assert [m for m in notifier.sent if m != "WATCHDOG=1"] == ["READY=1"]

    await run_until(sup, all_started)
    assert log == [
        "start sink",
        "start history",
        "start engine",
        "start source",
        "cancelled source",
        "after source",
        "cancelled engine",
        "after engine",
        "cancelled history",
        "drain sink within 10 s",
        "cancelled sink",
        "after sink",
    ]
    sent = [m for m in notifier.sent if m != "WATCHDOG=1"]
    assert sent == ["READY=1", "STOPPING=1"]


async def test_the_next_stage_waits_until_a_component_listens() -> None:
    log: list[str] = []
    sup = Supervisor(RecordingNotifier())
    listening = asyncio.Event()
    may_listen = asyncio.Event()

    async def slow_server() -> None:
        log.append("binding")
        await may_listen.wait()
        log.append("listening")
        listening.set()
        await asyncio.Event().wait()

    sup.add(Component(name="metrics", stage=Stage.SINKS, run=slow_server, listening=listening))
    source = recorded("source", log)
    source.stage = Stage.SOURCES
    sup.add(source)

    async def release() -> None:
        assert log == ["binding", "listening", "start source"]

    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    for _ in range(20):  # the loop runs other work meanwhile; the source must not start
        await asyncio.sleep(0)
    assert log == ["binding"] and not sup.ready.is_set()
    may_listen.set()
    async with asyncio.timeout(10):
        await sup.ready.wait()
        while "start source" not in log:  # noqa: ASYNC110
            await asyncio.sleep(0)
        await release()
        stop.set()
        await task


async def test_a_component_that_swallows_its_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    swallowed = 0
    running = asyncio.Event()

    async def stubborn() -> None:
        nonlocal swallowed
        running.set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # as a library that turned the cancellation into its own error
                raise

    sup = Supervisor(RecordingNotifier())
    sup.add(Component(name="source:stubborn", stage=Stage.SOURCES, run=stubborn))
    caplog.set_level(logging.DEBUG, "edge_agent.supervisor")
    await run_until(sup, running.wait)
    assert swallowed == 2
    assert "source:stubborn did not stop when cancelled; cancelling it again" in caplog.text


async def test_a_failure_without_backoff_ends_the_run_and_stops_the_others() -> None:
    log: list[str] = []

    async def broken() -> None:
        raise RuntimeError("engine bug")

    sup = Supervisor(RecordingNotifier())
    sup.add(recorded("sink", log))
    sup.add(Component(name="engine", stage=Stage.ENGINE, run=broken))
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(10):
            await sup.run(asyncio.Event())
    assert [str(e) for e in caught.value.exceptions] == ["engine bug"]
    assert log == ["start sink", "cancelled sink"]


async def test_startup_error_fail_raises_and_disable_gives_up_quietly() -> None:
    async def refused() -> None:
        raise NotConnectedError("connection refused")

    def source(name: str, policy: str, disabled: list[str]) -> Component:
        return Component(
            name=f"source:{name}",
            stage=Stage.SOURCES,
            run=refused,
            health=Health("source", name),
            backoff=Backoff(0.001, 0.01),
            on_startup_error=policy,
            on_disabled=lambda: disabled.append(name),
        )

    disabled: list[str] = []
    sup = Supervisor(RecordingNotifier())
    sup.add(source("press1", "disable", disabled))
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    async with asyncio.timeout(10):
        while not disabled:  # noqa: ASYNC110 -- the component's callback is the condition
            await asyncio.sleep(0)
        components = sup.components["source:press1"]
        assert components.task is not None
        await components.task  # returned: not retried
        stop.set()
        await task
    assert disabled == ["press1"]

    sup = Supervisor(RecordingNotifier())
    sup.add(source("press2", "fail", disabled))
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(10):
            await sup.run(asyncio.Event())
    (failure,) = caught.value.exceptions
    assert isinstance(failure, StartupFailedError)
    assert str(failure) == (
        "source 'press2' could not start (connection refused) and on_startup_error is 'fail'"
    )


async def test_reloads_run_one_at_a_time_and_components_come_and_go() -> None:
    log: list[str] = []
    sup = Supervisor(RecordingNotifier(), drain_timeout_s=3.0)
    reloads = 0

    async def reload() -> None:
        nonlocal reloads
        reloads += 1
        await sup.remove("old")
        late = recorded("new", log)
        late.stage = Stage.SOURCES
        sup.add(late)

    old = recorded("old", log)

    async def drain(timeout_s: float) -> None:
        log.append(f"drain old within {timeout_s:g} s")

    old.drain = drain
    sup.add(old)

    async def reload_twice() -> None:
        sup.request_reload()
        sup.request_reload()  # while one is pending: one reload
        await sup.reload_done.wait()
        while "start new" not in log:  # noqa: ASYNC110
            await asyncio.sleep(0)

    await run_until(sup, reload_twice, reload=reload)
    assert reloads == 1
    assert log == [
        "start old",
        "drain old within 3 s",
        "cancelled old",
        "start new",
        "cancelled new",
    ]
    assert set(sup.components) == {"new"}
    with pytest.raises(ValueError, match="supervised already"):
        sup.add(recorded("new", log))


# -- the reload plan -----------------------------------------------------------------------------

BASE = two_lines_on_one_plc(5020) + "mqtt: {host: 127.0.0.1, port: 1883}\n"


def test_reload_plan_restarts_only_what_changed(caplog: pytest.LogCaptureFixture) -> None:
    old = load_config_text(BASE)
    same = plan_reload(old, load_config_text(BASE))
    assert (same.stop_sources, same.start_sources, same.relink) == ((), (), ())

    moved = plan_reload(old, load_config_text(BASE.replace("port: 5020", "port: 5021")))
    assert moved.stop_sources == ("plc1",) and moved.gone_sources == ()
    assert [sc.name for sc in moved.start_sources] == ["plc1"]

    # A publish interval is the engine runner's; a host is the link's.
    slower = BASE.replace("port: 1883}", "port: 1883, publish_interval: 10s}")
    assert plan_reload(old, load_config_text(slower)).relink == ()
    elsewhere = BASE.replace("host: 127.0.0.1, port: 1883", "host: 127.0.0.2, port: 1883")
    assert plan_reload(old, load_config_text(elsewhere)).relink == ("default",)

    caplog.set_level(logging.WARNING, "edge_agent.reload")
    renamed = plan_reload(old, load_config_text(BASE.replace("site: sup", "site: other")))
    assert renamed.cfg.site == "sup"
    assert "reload: a change of 'site' needs a restart; not applied" in caplog.text


def test_reload_plan_stops_a_source_that_is_gone() -> None:
    two = BASE.replace(
        "lines:",
        "  - name: plc2\n    protocol: modbus\n    host: 127.0.0.1\n    port: 5022\n"
        "    tags: [{name: t, address: 1}]\nlines:",
    )
    plan = plan_reload(load_config_text(two), load_config_text(BASE))
    assert plan.stop_sources == ("plc2",) and plan.gone_sources == ("plc2",)
    assert plan.start_sources == ()


# -- the agent when /metrics cannot be served --------------------------------------------------


def _agent_config(tmp_path: Path, metrics_port: int) -> AgentConfig:
    # Nothing listens on the PLC and broker ports: the start fails before either matters.
    return load_config_text(
        two_lines_on_one_plc(free_port())
        + f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}\n"
        + f"prometheus: {{host: 127.0.0.1, port: {metrics_port}}}\n"
        + f"storage: {{dir: {tmp_path / 'state'}}}\n"
    )


async def test_a_metrics_port_in_use_stops_the_start_with_one_line_and_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = Agent(_agent_config(tmp_path, port))
        async with asyncio.timeout(20):
            code = await agent.run(asyncio.Event())
    assert code == EXIT_FAILURE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"metrics: cannot listen on 127.0.0.1:{port} (prometheus.host, prometheus.port):"
        " Address already in use"
    ]
    assert not agent.ready.is_set()  # READY=1 was never sent
    assert all(c.task is None or c.task.done() for c in agent.supervisor.components.values())


async def test_an_unreadable_metrics_password_stops_the_start_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _agent_config(tmp_path, free_port())
    missing = tmp_path / "metrics.password"
    prometheus = dataclasses.replace(cfg.prometheus, username="prom", password_file=str(missing))
    agent = Agent(dataclasses.replace(cfg, prometheus=prometheus))
    async with asyncio.timeout(20):
        assert await agent.run(asyncio.Event()) == EXIT_FAILURE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"metrics: cannot read secret file {missing}: No such file or directory"
        " (prometheus.password_file)"
    ]
