"""Retry policy, health logging and the fixed-rate poller, with fakes of our own Source protocol."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from edge_agent.config.schema import ModbusSourceConfig, ModbusTag
from edge_agent.errors import NotConnectedError, SinkError, SourceError
from edge_agent.metrics import Metrics
from edge_agent.model import Quality, Sample
from edge_agent.poller import Poller
from edge_agent.supervisor import Backoff, Health, supervise


def test_backoff_grows_to_cap_with_jitter_and_resets() -> None:
    b = Backoff(1.0, 8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for d, c in zip(delays, ceilings, strict=True):
        assert c / 2 <= d <= c
    b.reset()
    assert 0.5 <= b.next_delay() <= 1.0


def test_health_logs_failure_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    t = [100.0]
    changes: list[bool] = []
    h = Health("source", "press1", on_change=changes.append, clock=lambda: t[0])
    caplog.set_level(logging.DEBUG)
    h.failed(NotConnectedError("connection refused"), 1.0)
    h.failed(NotConnectedError("connection refused"), 2.0)
    h.failed(NotConnectedError("connection refused"), 4.0)
    t[0] = 137.2
    h.ok()
    h.ok()
    above_debug = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG
    ]
    assert above_debug == [
        ("WARNING", "source 'press1' unavailable: connection refused; retrying in 1.0 s"),
        ("INFO", "source 'press1' recovered after 37.2 s"),
    ]
    assert changes == [False, True]


async def test_supervise_retries_until_success_and_propagates_cancel() -> None:
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise NotConnectedError("down")

    h = Health("source", "x")
    await supervise(flaky, h, Backoff(0.001, 0.002))
    assert attempts == 3
    assert h.failures == 2

    async def forever() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise(forever, Health("source", "y"), Backoff(0.001, 0.01)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FakeSource:
    """Implements edge_agent.model.Source; each read takes ``read_s`` of a fake clock."""

    def __init__(self, clock: list[float], read_s: float, fail_after: int | None = None) -> None:
        self.name = "fake"
        self.clock = clock
        self.read_s = read_s
        self.reads = 0
        self.fail_after = fail_after
        self.closed = 0
        self.busy_on: set[int] = set()

    async def connect(self) -> None:
        return None

    async def read(self) -> list[Sample]:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise NotConnectedError("gone")
        if self.reads in self.busy_on:
            raise SourceError("device busy")
        self.clock[0] += self.read_s
        return [Sample("fake", "t", self.reads, Quality.GOOD, None, self.clock[0])]

    async def close(self) -> None:
        self.closed += 1


def _cfg(interval_s: float) -> ModbusSourceConfig:
    return ModbusSourceConfig(
        name="fake",
        host="127.0.0.1",
        poll_interval_s=interval_s,
        tags=(ModbusTag(name="t", address=0),),
    )


async def test_poller_skips_ticks_when_a_poll_overruns() -> None:
    # A virtual monotonic clock that only reads advance (sleeps cost no virtual time); each read
    # costs 2.5 intervals (exact binary fractions). Ticks fall on k × 0.125; after a poll the
    # next tick is the one after the last tick used, and every tick already passed is skipped:
    #   poll 1 ends 0.3125: ticks 0.125, 0.25 passed   -> skip 2, next 0.375
    #   poll 2 ends 0.625:  ticks 0.5, 0.625 passed    -> skip 2, next 0.75
    #   poll 3 ends 0.9375: tick 0.875 passed          -> skip 1, next 1.0
    #   poll 4 ends 1.25:   ticks 1.125, 1.25 passed   -> skip 2
    clock = [0.0]
    src = FakeSource(clock, read_s=0.3125, fail_after=4)
    got: list[list[Sample]] = []
    poller = Poller(
        src,
        _cfg(0.125),
        deliver=got.append,
        health=Health("source", "fake"),
        metrics=Metrics(),
        monotonic=lambda: clock[0],
        clock=lambda: clock[0],
    )
    with pytest.raises(NotConnectedError):
        await poller.run()
    assert len(got) == 4
    assert poller.skipped_ticks == 2 + 2 + 1 + 2
    assert src.closed == 1


async def test_poller_keeps_connection_on_transient_error() -> None:
    clock = [0.0]
    src = FakeSource(clock, read_s=0.0, fail_after=5)
    src.busy_on = {2, 3}
    got: list[list[Sample]] = []
    poller = Poller(
        src,
        _cfg(0.001),
        deliver=got.append,
        health=Health("source", "fake"),
        metrics=Metrics(),
    )
    with pytest.raises(NotConnectedError):
        await poller.run()
    assert [batch[0].value for batch in got] == [1, 4, 5]


async def test_supervise_does_not_retry_a_component_whose_cancellation_was_swallowed() -> None:
    # A library that turns our cancellation into its own error (or, like Python 3.11's
    # wait_for, loses it) must not make the supervisor start the component again.
    started = asyncio.Event()
    attempts = 0

    async def swallows_cancel() -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise NotConnectedError("connection closed") from None

    task = asyncio.create_task(
        supervise(swallows_cancel, Health("source", "z"), Backoff(0.001, 0.01))
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1


def test_a_link_that_drops_before_it_held_is_unstable_summed_up_then_stable_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = [0.0]
    h = Health("broker", "b:1883", clock=lambda: t[0], held_after_s=10.0, summary_every_s=30.0)
    caplog.set_level(logging.DEBUG)
    h.ok()  # the first link
    for _ in range(12):  # every link drops 1 s after it came up, then 4 s of backoff
        t[0] += 1.0
        assert not h.held
        h.failed(SinkError("connection lost"), 4.0)
        t[0] += 4.0
        h.ok()
    t[0] += 10.0
    assert h.held
    h.ok()
    h.ok()
    above_debug = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG
    ]
    assert above_debug == [
        ("INFO", "broker 'b:1883' up"),
        (
            "WARNING",
            "broker 'b:1883' unstable: the link dropped 1.0 s after it came up: connection lost; "
            "retrying in 4.0 s (further drops are summed up)",
        ),
        (
            "WARNING",
            "broker 'b:1883' unstable: 6 drop(s) in 30 s (last: connection lost); "
            "retrying in 4.0 s",
        ),
        ("INFO", "broker 'b:1883' stable again: the link has held 10 s, after 12 drop(s) in 60 s"),
    ]


async def test_supervise_resets_the_backoff_only_after_the_link_held() -> None:
    """A component that comes up and fails at once keeps backing off (it did not hold)."""
    delays: list[float] = []

    class Recording(Backoff):
        def next_delay(self) -> float:
            delay = super().next_delay()
            delays.append(delay)
            return delay

    h = Health("broker", "b", held_after_s=3600.0)
    attempts = 0

    async def up_then_down() -> None:
        nonlocal attempts
        attempts += 1
        if attempts > 5:
            return
        h.ok()
        raise SinkError("connection lost")

    await supervise(up_then_down, h, Recording(0.001, 1.0, rng=random.Random(2)))
    ceilings = [0.001, 0.002, 0.004, 0.008, 0.016]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
