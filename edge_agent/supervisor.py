"""The one owner of the lifecycle: tasks, start and stop order, retries, reload, signals, and
systemd notification.

Components offer ``async def run(self) -> None`` and raise when they fail; none starts a task of
its own. The :class:`Supervisor` starts each :class:`Component` in its :class:`Stage` (sinks
first, so that nothing produced is lost; sources last) inside one ``asyncio.TaskGroup``, and
stops them in the reverse order: sources stop first, the engine writes a last snapshot, the
history writes what it holds, and the sinks drain last (all at once, within the drain time).

A component with a :class:`Backoff` is run again after a failure, after a capped exponential
backoff with jitter (:func:`supervise`). A failing component is logged once when it starts
failing and once when it recovers, at DEBUG in between; a link that keeps dropping right after
it came up is logged as unstable, with a summary at most once a period.

``READY=1`` goes to systemd once every stage started, ``WATCHDOG=1`` while the engine makes
progress (:meth:`Supervisor.progress`), ``STOPPING=1`` when the stop begins. SIGTERM and SIGINT
stop (:func:`run_until_signalled`); SIGHUP asks for a reload, which the supervisor runs between
other work, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.systemd import Notifier

log = logging.getLogger(__name__)

# A broker link has held once it lasted this many keepalive periods (at least LINK_HELD_MIN_S):
# it then carried keepalive exchanges both ways, so a broker, proxy or firewall that drops links
# after a while has had its chance. Only a link that held resets the backoff.
LINK_HELD_KEEPALIVES = 2
LINK_HELD_MIN_S = 10.0


# How often the supervisor does its housekeeping (a link that has held is told so; a state file
# deleted by hand is noticed), and feeds the watchdog unless systemd asks for more often. None
# of it needs a wake every second: an idle agent should wake for its polls only.
HOUSEKEEPING_S = 5.0


def link_held_after_s(keepalive_s: float) -> float:
    """How long a broker link must last to count as held (see ``LINK_HELD_KEEPALIVES``)."""
    return max(LINK_HELD_MIN_S, LINK_HELD_KEEPALIVES * keepalive_s)


class Backoff:
    """Capped exponential backoff with full jitter on the upper half: delays grow
    initial, 2·initial, 4·initial … up to ``max_s``, each drawn from [d/2, d]."""

    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        self.initial_s = max(initial_s, 0.001)
        self.max_s = max(max_s, self.initial_s)
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 62)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class Health:
    """Failure / recovery bookkeeping for one component, with state-change logging.

    ``held_after_s``: a link that fails sooner than this after it came up has not held: the
    component is *unstable* (flapping) rather than recovered and lost again. The first such drop
    is logged with how long the link lasted, later ones are summed up at most once every
    ``summary_every_s`` ("unstable: 5 drops in 60 s"), and once a link holds, "stable again" is
    logged once. The supervisor resets its backoff only for a link that held. ``0`` (the
    default, for sources): every success counts as held, every failure after it is a new outage.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        held_after_s: float = 0.0,
        summary_every_s: float = 60.0,
    ) -> None:
        self.kind = kind
        self.name = name
        self.up = False
        self.failures = 0
        self.held_after_s = held_after_s
        self.summary_every_s = summary_every_s
        self._failing_since: float | None = None
        self._up_since = 0.0
        # While unstable: when it started, drops since then and since the last summary.
        self._unstable_since: float | None = None
        self._drops = 0
        self._drops_unsummed = 0
        self._summary_at = 0.0
        self._on_change = on_change
        self._clock = clock
        # Structured context for JSON logs (edge_agent.logs.JsonFormatter).
        self.log_extra: dict[str, str] = (
            {"source": name} if kind == "source" else {"component": kind}
        )

    @property
    def held(self) -> bool:
        """Up, for at least ``held_after_s``."""
        return self.up and self._clock() - self._up_since >= self.held_after_s

    def ok(self) -> None:
        """The component did useful work (a good poll, a link that is up); cheap to repeat."""
        if self.up:
            if self._unstable_since is not None and self.held:
                log.info(
                    "%s '%s' stable again: the link has held %.0f s, after %d drop(s) in %.0f s",
                    self.kind,
                    self.name,
                    self._clock() - self._up_since,
                    self._drops,
                    self._up_since - self._unstable_since,
                    extra=self.log_extra,
                )
                self._unstable_since = None
            return
        self.up = True
        self._up_since = self._clock()
        if self._unstable_since is not None:
            log.debug("%s '%s' up again (unstable)", self.kind, self.name, extra=self.log_extra)
        elif self._failing_since is not None:
            # Good news, and the unavailable warning before it already drew attention.
            log.info(
                "%s '%s' recovered after %.1f s",
                self.kind,
                self.name,
                self._up_since - self._failing_since,
                extra=self.log_extra,
            )
            self._failing_since = None
        else:
            log.info("%s '%s' up", self.kind, self.name, extra=self.log_extra)
        if self._on_change:
            self._on_change(True)

    def failed(self, exc: BaseException, retry_in_s: float) -> None:
        self.failures += 1
        reason = str(exc) or type(exc).__name__
        now = self._clock()
        was_up = self.up
        dropped = was_up and not self.held  # up, but not for long: not a new outage
        if self._unstable_since is not None:
            if was_up:
                self._drops += 1
                self._drops_unsummed += 1
            if self._drops_unsummed and now - self._summary_at >= self.summary_every_s:
                log.warning(
                    "%s '%s' unstable: %d drop(s) in %.0f s (last: %s); retrying in %.1f s",
                    self.kind,
                    self.name,
                    self._drops_unsummed,
                    now - self._summary_at,
                    reason,
                    retry_in_s,
                    extra=self.log_extra,
                )
                self._summary_at = now
                self._drops_unsummed = 0
            else:
                log.debug(
                    "%s '%s' still unstable: %s; retrying in %.1f s",
                    self.kind,
                    self.name,
                    reason,
                    retry_in_s,
                    extra=self.log_extra,
                )
        elif dropped:
            self._unstable_since = self._up_since
            self._summary_at = now
            self._drops = 1
            self._drops_unsummed = 0
            self._failing_since = None
            log.warning(
                "%s '%s' unstable: the link dropped %.1f s after it came up: %s; retrying in "
                "%.1f s (further drops are summed up)",
                self.kind,
                self.name,
                now - self._up_since,
                reason,
                retry_in_s,
                extra=self.log_extra,
            )
        elif self._failing_since is None:
            self._failing_since = now
            log.warning(
                "%s '%s' unavailable: %s; retrying in %.1f s",
                self.kind,
                self.name,
                reason,
                retry_in_s,
                extra=self.log_extra,
            )
        else:
            log.debug(
                "%s '%s' still unavailable: %s; retrying in %.1f s",
                self.kind,
                self.name,
                reason,
                retry_in_s,
                extra=self.log_extra,
            )
        self.up = False
        if self._on_change and (was_up or self.failures == 1):
            self._on_change(False)


async def supervise(
    run: Callable[[], Awaitable[None]],
    health: Health,
    backoff: Backoff,
    *,
    fatal: tuple[type[BaseException], ...] = (ConfigError,),
    on_restart: Callable[[], None] | None = None,
) -> None:
    """Run ``run()`` until it returns; after a failure wait a backoff delay and run it again.

    The backoff starts over only when the component had held (``health.held``: up, for
    ``health.held_after_s``) before failing: a link that drops right after it came up keeps
    backing off, instead of being retried at the initial delay forever.
    Exceptions in ``fatal`` propagate (they are not fixed by retrying). Cancellation propagates.
    """
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except fatal:
            raise
        except Exception as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The component failed while being cancelled (a library turned the
                # cancellation into its own error): stop, do not retry.
                raise asyncio.CancelledError from exc
            if health.held:
                backoff.reset()
            delay = backoff.next_delay()
            if health.failures == 0 or health.held:
                log.debug(
                    "%s '%s' failed",
                    health.kind,
                    health.name,
                    exc_info=True,
                    extra=health.log_extra,
                )
            health.failed(exc, delay)
            if on_restart:
                on_restart()
            await asyncio.sleep(delay)


# A component still running this long after its cancellation swallowed it: cancel it again.
_RECANCEL_AFTER_S = 1.0


class StartupFailedError(EdgeAgentError):
    """A component configured with ``on_startup_error: fail`` could not start."""


class Stage(enum.IntEnum):
    """When a component starts; stages stop in the reverse order."""

    SINKS = 0  # the metrics endpoint and the MQTT links: up first, drained last
    STORE = 1  # the sample history
    ENGINE = 2  # the line engines
    SOURCES = 3  # the PLCs: started last, stopped first


@dataclass(slots=True, kw_only=True)
class Component:
    """One supervised part of the agent.

    ``backoff``: run again after a failure (``health`` says how it is doing); without one a
    failure ends the agent. ``on_startup_error`` (``retry``, ``fail``, ``disable``, as the
    config key) says what a failure before the first connection (``connected_once``) means.
    ``listening``: the next stage starts once it is set (or the task ended). ``drain`` runs
    before the task is cancelled at stop, with the drain time; ``after_stop`` once it ended.
    """

    name: str
    stage: Stage
    run: Callable[[], Awaitable[None]]
    health: Health | None = None
    backoff: Backoff | None = None
    on_restart: Callable[[], None] | None = None
    on_startup_error: str = "retry"
    connected_once: Callable[[], bool] = lambda: False
    on_disabled: Callable[[], None] | None = None
    listening: asyncio.Event | None = None
    drain: Callable[[float], Awaitable[None]] | None = None
    after_stop: Callable[[], None] | None = None
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, restarts and stops :class:`Component` s (see the module docstring).

    ``stall_after_s()``: how long without :meth:`progress` is a hang (no ``WATCHDOG=1`` then,
    so systemd restarts the agent). ``housekeeping()`` runs every :data:`HOUSEKEEPING_S`.
    """

    def __init__(
        self,
        notifier: Notifier | None = None,
        *,
        drain_timeout_s: float = 10.0,
        stall_after_s: Callable[[], float] = lambda: 5.0,
        housekeeping: Callable[[], None] = lambda: None,
    ) -> None:
        self.notifier = notifier or Notifier()
        self.drain_timeout_s = drain_timeout_s
        self.components: dict[str, Component] = {}
        self.ready = asyncio.Event()
        self.reload_done = asyncio.Event()  # set after every reload attempt, applied or refused
        self._reload_requested = asyncio.Event()
        self._stall_after_s = stall_after_s
        self._housekeeping = housekeeping
        self._last_progress = time.monotonic()
        self._tg: asyncio.TaskGroup | None = None

    def progress(self) -> None:
        """The engine made progress (it stepped): the watchdog is fed while it does."""
        self._last_progress = time.monotonic()

    def request_reload(self) -> None:
        """Reload soon (the SIGHUP handler calls this); the reload runs in :meth:`run`."""
        self._reload_requested.set()

    def add(self, component: Component) -> None:
        """Supervise ``component``: started with its stage, or at once when running."""
        if component.name in self.components:
            raise ValueError(f"component '{component.name}' is supervised already")
        self.components[component.name] = component
        if self._tg is not None:
            self._start(component)

    async def remove(self, *names: str, drain_timeout_s: float | None = None) -> None:
        """Stop the named components (all at once, as at stop) and forget them."""
        found = [self.components.pop(n) for n in names if n in self.components]
        await self._stop(
            found, self.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        )

    async def run(
        self,
        stop: asyncio.Event,
        *,
        reload: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(0),
        status: str = "",
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        """Start every stage in order, tell systemd, run reloads until ``stop`` is set, then
        stop every stage in the reverse order. A component that fails without a backoff ends
        the run (its exception, in an ``ExceptionGroup``, after the others were cancelled)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for stage in Stage:
                    started = [c for c in self.components.values() if c.stage == stage]
                    for component in started:
                        self._start(component)
                    for component in started:
                        if component.listening is not None and component.task is not None:
                            await _event_or_end(component.listening, component.task)
                watchdog = tg.create_task(self._watch(), name="watchdog")
                self.notifier.ready(status)
                self.ready.set()
                on_ready()
                while await _first_of(stop, self._reload_requested) is self._reload_requested:
                    self._reload_requested.clear()
                    try:
                        await reload()
                    finally:
                        self.reload_done.set()
                log.info("stopping: sources first, then the engine, then the broker link")
                self.notifier.stopping()
                for stage in reversed(Stage):
                    await self._stop(
                        [c for c in self.components.values() if c.stage == stage],
                        self.drain_timeout_s,
                    )
                watchdog.cancel()
            finally:
                self._tg = None

    def _start(self, component: Component) -> None:
        assert self._tg is not None
        component.task = self._tg.create_task(self._body(component), name=component.name)

    async def _body(self, c: Component) -> None:
        if c.backoff is None or c.health is None:
            await c.run()
            return
        health, backoff = c.health, c.backoff
        if c.on_startup_error != "retry":
            try:
                await c.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if c.connected_once():
                    health.failed(exc, backoff.initial_s)
                elif c.on_startup_error == "fail":
                    raise StartupFailedError(
                        f"{health.kind} '{health.name}' could not start ({exc}) and"
                        " on_startup_error is 'fail'"
                    ) from exc
                else:
                    log.error(
                        "%s '%s' could not start (%s); disabled (on_startup_error: disable)",
                        health.kind,
                        health.name,
                        exc,
                        extra=health.log_extra,
                    )
                    if c.on_disabled is not None:
                        c.on_disabled()
                    return
                await asyncio.sleep(backoff.initial_s)
        await supervise(c.run, health, backoff, on_restart=c.on_restart)

    async def _stop(self, components: list[Component], drain_timeout_s: float) -> None:
        """Drain ``components`` at once, then cancel them, then their ``after_stop``."""

        async def drain(c: Component) -> None:
            if c.drain is None or c.task is None or c.task.done():
                return
            try:
                await c.drain(drain_timeout_s)
            except Exception as exc:  # e.g. a broker that is gone: what is left stays stored
                log.warning("could not stop %s cleanly: %s", c.name, exc)

        await asyncio.gather(*(drain(c) for c in components))
        pending = {c.task for c in components if c.task is not None}
        for task in pending:
            task.cancel()
        while pending:
            done, pending = await asyncio.wait(pending, timeout=_RECANCEL_AFTER_S)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: it failed while stopping, nothing to retry
            for task in pending:
                # A library took our cancellation for one of its own errors and carried on.
                log.debug("%s did not stop when cancelled; cancelling it again", task.get_name())
                task.cancel()
        for c in components:
            c.task = None
            if c.after_stop is not None:
                c.after_stop()

    async def _watch(self) -> None:
        """Housekeeping, and ``WATCHDOG=1`` while the engine makes progress."""
        interval = HOUSEKEEPING_S
        if self.notifier.watchdog_interval_s:
            interval = min(interval, self.notifier.watchdog_interval_s / 4)
        while True:
            self._housekeeping()
            if time.monotonic() - self._last_progress < self._stall_after_s():
                self.notifier.watchdog()
            await asyncio.sleep(interval)


async def _event_or_end(event: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Wait until ``event`` is set or ``task`` ended (the TaskGroup then says why)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


async def _first_of(*events: asyncio.Event) -> asyncio.Event:
    """Wait until one of ``events`` is set; return the first one that is (in argument order)."""
    for event in events:
        if event.is_set():
            return event
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.wait(waiters)
    return next(e for e in events if e.is_set())


def describe_tasks() -> list[str]:
    """Each pending task as ``name: file:line function <- ...`` (innermost await last)."""
    out = []
    current = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        frames: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(frames) < 12:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                name = frame.f_code.co_filename.rsplit("/", 1)[-1]
                frames.append(f"{name}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        out.append(f"{task.get_name()}: {' <- '.join(frames)}")
    return sorted(out)


async def run_until_signalled(
    run: Callable[[asyncio.Event], Awaitable[int]],
    *,
    on_reload: Callable[[], None] | None = None,
    extra_stop: Callable[[], None] | None = None,
) -> int:
    """``run(stop)`` until SIGTERM or SIGINT sets ``stop``; SIGHUP calls ``on_reload``. A second
    stop request while stopping says what the shutdown is waiting for."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal() -> None:
        if stop.is_set():
            log.warning("still stopping; waiting for: %s", "; ".join(describe_tasks()))
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    if on_reload is not None:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        return await run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if extra_stop:
            extra_stop()
