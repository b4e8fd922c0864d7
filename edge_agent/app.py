"""The agent: builds the components from a config and runs them under one supervisor.

Start order: outboxes, metrics, MQTT sinks, history, engine, then sources. Stop order is the
reverse: sources stop first, the engine writes a last snapshot, the history writes what it holds,
the sinks drain their outboxes (all at once, each within the drain time) and publish ``offline``,
then everything closes.

Several MQTT sinks (the list form of ``mqtt``): each has its own outbox file (the first sink's is
``outbox.sqlite``, as with a single sink, so a state directory keeps working when a single sink
becomes the first of a list; the others' are ``outbox-{name}.sqlite``), its own task under the
supervisor with its own backoff, and its own metrics (label ``sink``). A broker that is down holds
up only its own sink. Order commands (``mqtt.commands``) are taken from the primary (first) sink
only, the plant's broker, and their replies go there only.

Reload (SIGHUP, :meth:`Agent.request_reload`): the configuration file is loaded and validated
again; an invalid one is refused with its problems logged, and the running one stays. A valid
one is applied in place: sources that changed (or are new or gone) are restarted (or started,
stopped), lines whose configuration is unchanged keep their engine and its state, the broker link
is reconnected only when that sink's settings changed. ``site``, ``storage``, ``prometheus`` and
the list of sink names need a restart: a change to them is logged and not applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config.schema import AgentConfig, MqttConfig, OnStartupError, SourceConfig
from edge_agent.engine.runner import EngineRunner, SinkOutbox
from edge_agent.errors import ConfigError, EdgeAgentError, StorageError
from edge_agent.exits import EXIT_CANTCREAT, EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from edge_agent.metrics import Metrics, MetricsServeError, MetricsServer, SinkFigures
from edge_agent.poller import Poller
from edge_agent.secrets import read_secret
from edge_agent.sinks.history import FILE_NAME as HISTORY_FILE
from edge_agent.sinks.history import History
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox
from edge_agent.sources import create_source
from edge_agent.supervisor import Backoff, Health, link_held_after_s, supervise
from edge_agent.systemd import Notifier

log = logging.getLogger(__name__)


class StartupFailedError(EdgeAgentError):
    """A source configured with ``on_startup_error: fail`` could not connect at start."""


def outbox_file(cfg: AgentConfig, sink: MqttConfig) -> str:
    """The outbox file name of ``sink`` (see the module docstring)."""
    return "outbox.sqlite" if sink.name == cfg.mqtt.name else f"outbox-{sink.name}.sqlite"


@dataclass(slots=True)
class _SinkRun:
    """One MQTT sink while the agent runs: its outbox, its client and its supervised task."""

    cfg: MqttConfig
    outbox: Outbox
    sink: MqttSink | None = None
    task: asyncio.Task[None] | None = None
    health: Health | None = None
    # Acknowledged by the clients this sink had before its current one (a reload relinks).
    published_before: int = 0
    unconfirmed_before: int = 0


def state_dir_for(cfg: AgentConfig) -> Path:
    """``storage.dir`` (the loader made it absolute), else systemd's ``$STATE_DIRECTORY``, else
    ``state`` next to the configuration file: never the working directory, which changes with
    whoever starts the agent."""
    if cfg.storage.dir:
        return Path(cfg.storage.dir)
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    base = Path(cfg.path).absolute().parent if not cfg.path.startswith("<") else Path.cwd()
    return base / "state"


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        drain_timeout_s: float = 10.0,
        stall_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` is the agent's time in POSIX seconds (samples, engine, history); tests run
        it faster than the wall clock together with simulators at the same speed. The agent
        reads it in whole microseconds: the history's CSV export carries times to the
        microsecond, so a replay sees exactly the times the live engine saw."""
        self.cfg = cfg
        self.clock: Callable[[], float] = lambda: round(clock(), 6)
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier()
        self.drain_timeout_s = drain_timeout_s
        self.runner: EngineRunner | None = None
        self.history: History | None = None
        self.sinks: dict[str, _SinkRun] = {}  # by sink name, the primary first
        self.pollers: dict[str, Poller] = {}
        self._source_health: dict[str, Health] = {}
        self.metrics.read_sinks(self._sink_figures)
        self.metrics.read_sources(self._source_states)
        self.metrics_port: int | None = None
        self.ready = asyncio.Event()
        self._last_progress = time.monotonic()
        # None: 3 publish intervals, at least 5 s, without an engine step is a hang.
        self.stall_after_s = stall_after_s
        self.reloads = 0  # configurations applied by reload
        self.reload_done = asyncio.Event()  # set after every reload attempt, applied or refused
        self._reload_requested = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self.engine_task: asyncio.Task[None] | None = None

    @property
    def sink(self) -> MqttSink | None:
        """The primary (first) MQTT sink."""
        run = self.sinks.get(self.cfg.mqtt.name)
        return run.sink if run is not None else None

    def request_reload(self) -> None:
        """Reload the configuration file soon (the SIGHUP handler calls this)."""
        self._reload_requested.set()

    def _open_outboxes(self) -> list[Outbox]:
        """One outbox per sink, the primary's first; all or none."""
        directory = state_dir_for(self.cfg)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {directory}: {exc}") from exc
        opened: list[Outbox] = []
        try:
            for sink in self.cfg.mqtt_sinks:
                path = directory / outbox_file(self.cfg, sink)
                opened.append(Outbox(path, limits=self.cfg.storage.outbox))
        except StorageError:
            for outbox in opened:
                outbox.close()
            raise
        return opened

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set, then shut down in order. Returns the process exit code."""
        try:
            outboxes = self._open_outboxes()
        except StorageError as exc:
            log.error("%s", exc)
            return EXIT_CANTCREAT
        self.sinks = {
            sc.name: _SinkRun(sc, outbox)
            for sc, outbox in zip(self.cfg.mqtt_sinks, outboxes, strict=True)
        }
        for each in outboxes:
            if each.recovered is not None:  # logged by the outbox
                self.metrics.storage_recovered.labels(file=each.path.name, reason="corrupt").inc()
        outbox = outboxes[0]
        try:
            return await self._run(stop, outbox)
        except BaseExceptionGroup as group:
            serve, rest = group.split(MetricsServeError)
            for bad in serve.exceptions if serve else ():
                log.error("%s", bad)
            if serve is not None and rest is None:
                return EXIT_FAILURE
            startup, others = (rest or group).split(StartupFailedError)
            if others is not None:
                raise others from None
            for failure in startup.exceptions if startup else ():
                log.error("%s", failure)
            return EXIT_UNAVAILABLE
        finally:
            if self.history is not None:
                self.history.close()  # after a failed start; a clean stop closed it already
            for each in outboxes:
                each.close()

    async def _run(self, stop: asyncio.Event, outbox: Outbox) -> int:
        cfg = self.cfg
        m = self.metrics
        m.info.labels(version=__version__, site=cfg.site).set(1)
        server = None
        if cfg.prometheus.enabled:
            p = cfg.prometheus
            password = read_secret(p.password_file) if p.password_file is not None else None
            server = MetricsServer(
                m,
                p.host,
                p.port,
                cert_file=p.cert_file,
                key_file=p.key_file,
                username=p.username,
                password=password,
            )

        history = None
        if cfg.storage.history.enabled:
            history = History(
                state_dir_for(cfg) / HISTORY_FILE,
                cfg.storage.history,
                clock=self.clock,
                on_recovered=lambda reason: m.storage_recovered.labels(
                    file=HISTORY_FILE, reason=reason
                ).inc(),
            )
        self.history = history
        runner = EngineRunner(
            cfg,
            outbox,
            metrics=m,
            notify_sink=self._notifier(cfg.mqtt.name),
            on_progress=self._progress,
            clock=self.clock,
            history=history,
            more_sinks=[
                SinkOutbox(sc, self.sinks[sc.name].outbox, self._notifier(sc.name))
                for sc in cfg.mqtt_extra
            ],
        )
        self.runner = runner

        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            metrics_task = None
            if server is not None:
                metrics_task = tg.create_task(server.run(), name="metrics")
                await _first_of_task(server.listening, metrics_task)
                self.metrics_port = server.port
            for name in self.sinks:
                self._start_sink(name)
            status_task = tg.create_task(self._watch(), name="status")
            history_task = tg.create_task(history.run(), name="history") if history else None
            self.engine_task = tg.create_task(runner.run(), name="engine")
            for sc in cfg.sources:
                self._start_source(sc)
            self.notifier.ready(f"{len(cfg.sources)} sources, {len(cfg.lines)} lines")
            self.ready.set()
            log.info(
                "agent started: site '%s', %d source(s), %d line(s), broker %s",
                cfg.site,
                len(cfg.sources),
                len(cfg.lines),
                ", ".join(_describe_sink(sc) for sc in cfg.mqtt_sinks),
            )
            while await _first_of(stop, self._reload_requested) is self._reload_requested:
                self._reload_requested.clear()
                try:
                    await self._reload()
                finally:
                    self.reload_done.set()

            log.info("stopping: sources first, then the engine, then the broker link")
            self.notifier.stopping()
            source_tasks = list(self._source_tasks.values())
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            self.engine_task.cancel()
            await asyncio.gather(self.engine_task, return_exceptions=True)
            runner.step(snapshot=True)
            if history is not None and history_task is not None:
                history_task.cancel()
                await asyncio.gather(history_task, return_exceptions=True)
                history.close()
            # All sinks drain at once: a broker that is down costs the drain time only once.
            await asyncio.gather(*(self._stop_sink(n, self.drain_timeout_s) for n in self.sinks))
            status_task.cancel()
            await asyncio.gather(status_task, return_exceptions=True)
            for target in runner.targets:
                target.give_up()
            if metrics_task is not None:
                metrics_task.cancel()
                await asyncio.gather(metrics_task, return_exceptions=True)
            for name, run in self.sinks.items():
                unsaved = len(run.sink.unsaved_acks) if run.sink is not None else 0
                if unsaved:
                    log.warning(
                        "storage: %d message(s) acknowledged by broker '%s' could not be deleted"
                        " from its outbox; they will be sent again at the next start",
                        unsaved,
                        name,
                    )
                left = run.outbox.depth() - unsaved
                if left:
                    log.warning(
                        "%d message(s) stay in the outbox of sink '%s' for the next start",
                        left,
                        name,
                    )
        self._tg = None
        log.info("stopped")
        return EXIT_OK

    def _notifier(self, name: str) -> Callable[[], None]:
        def notify() -> None:
            run = self.sinks.get(name)
            if run is not None and run.sink is not None:
                run.sink.notify()

        return notify

    def _start_sink(self, name: str) -> None:
        assert self._tg is not None
        run = self.sinks[name]
        sc = run.cfg
        m = self.metrics
        what = "broker" if len(self.sinks) == 1 else f"broker '{name}'"
        held_after_s = link_held_after_s(sc.keepalive_s)
        # A link that drops before it held is summed up, at most once per backoff cap.
        health = Health(
            what,
            f"{sc.host}:{sc.port}",
            held_after_s=held_after_s,
            summary_every_s=max(sc.backoff_max_s, held_after_s),
        )
        run.health = health
        sink = MqttSink(
            sc,
            site=self.cfg.site,
            outbox=run.outbox,
            lines=[line.name for line in self.cfg.lines],
            on_link=health.ok,
        )
        run.sink = sink
        # Commands only from the primary sink: the plant's broker (the loader refuses
        # `commands` on the others).
        if name == self.cfg.mqtt.name and sc.commands and self.runner is not None:
            self._subscribe_commands(sink, self.runner)
        component = "mqtt" if name == self.cfg.mqtt.name else f"mqtt:{name}"

        run.task = self._tg.create_task(
            supervise(
                sink.run,
                health,
                Backoff(sc.backoff_initial_s, sc.backoff_max_s),
                on_restart=lambda: m.component_restarts.labels(component=component).inc(),
            ),
            name=component,
        )
        sink.notify()  # whatever waits in the outbox goes out as soon as it connects

    async def _stop_sink(self, name: str, drain_timeout_s: float) -> None:
        run = self.sinks[name]
        sink, task = run.sink, run.task
        if sink is not None:
            try:
                await sink.close(drain_timeout_s)
            except Exception as exc:  # the broker may be gone: the outbox keeps what is left
                log.warning("could not close the link to broker '%s' cleanly: %s", name, exc)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if sink is not None:
            run.published_before += sink.published_total
            run.unconfirmed_before += sink.unconfirmed_total
        run.sink = None
        run.task = None

    def _start_source(self, sc: SourceConfig) -> None:
        assert self._tg is not None and self.runner is not None
        self._source_tasks[sc.name] = self._tg.create_task(
            self._run_source(sc, self.runner), name=f"source:{sc.name}"
        )

    async def _reload(self) -> None:
        from edge_agent.config.loader import load_config  # noqa: PLC0415

        path = self.cfg.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("%s", issue)
            log.error(
                "configuration reload refused: %d problem(s) in %s; the running configuration"
                " stays",
                len(exc.issues),
                path,
            )
            return
        except OSError as exc:
            log.error("configuration reload refused: cannot read %s: %s", path, exc)
            return
        await self.apply(new)

    async def apply(self, new: AgentConfig) -> None:
        """Apply a validated configuration to the running agent (see the module docstring)."""
        old = self.cfg
        assert self.runner is not None
        for key in ("site", "storage", "prometheus"):
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: a change of '%s' needs a restart; not applied", key)
        new = replace(new, site=old.site, storage=old.storage, prometheus=old.prometheus)
        if [sc.name for sc in new.mqtt_sinks] != [sc.name for sc in old.mqtt_sinks]:
            log.warning("reload: a change of the list of mqtt sinks needs a restart; not applied")
            new = replace(new, mqtt=old.mqtt, mqtt_extra=old.mqtt_extra)
        if new.logging.level != old.logging.level:
            logging.getLogger().setLevel(new.logging.level)

        # Sources first: a stopped source must not feed an engine that is being replaced.
        old_sources = {sc.name: sc for sc in old.sources}
        new_sources = {sc.name: sc for sc in new.sources}
        stop = [n for n, sc in old_sources.items() if new_sources.get(n) != sc]
        tasks = [self._source_tasks.pop(n) for n in stop if n in self._source_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in stop:
            self.pollers.pop(name, None)
            if name not in new_sources:
                self.runner.source_available(name, False)
                self._source_health.pop(name, None)

        self.cfg = new
        kept, fresh = self.runner.reconfigure(new)

        start = [sc for n, sc in new_sources.items() if old_sources.get(n) != sc]
        for sc in start:
            self._start_source(sc)

        # publish_interval, qos and share are applied by the engine runner before the outbox;
        # anything else of a sink is its link's. The sink re-checks the share when publishing,
        # so it restarts on a share change too.
        def link(c: MqttConfig) -> object:
            return replace(c, publish_interval_s=0.0, qos=0)

        relinked = []
        for mc, before in zip(new.mqtt_sinks, old.mqtt_sinks, strict=True):
            self.sinks[mc.name].cfg = mc
            if link(mc) != link(before):
                log.info("reload: settings of broker '%s' changed; reconnecting", mc.name)
                await self._stop_sink(mc.name, min(self.drain_timeout_s, mc.timeout_s))
                self._start_sink(mc.name)
                relinked.append(mc.name)
        self.reloads += 1
        log.info(
            "configuration reloaded: %d line(s) kept, %d started afresh; %d source(s) restarted"
            " or started, %d stopped; broker links %s",
            len(kept),
            len(fresh),
            len(start),
            len([n for n in stop if n not in new_sources]),
            f"reconnected: {', '.join(relinked)}" if relinked else "kept",
        )

    def _subscribe_commands(self, sink: MqttSink, runner: EngineRunner) -> None:
        """Order commands of every line from ``{prefix}/{site}/{line}/cmd/order`` (mqtt.commands:
        the plant's own broker only). A retained command is ignored: it would be applied again
        on every reconnect, possibly over a newer order."""
        for line in self.cfg.lines:

            def on_command(
                topic: str, payload: bytes, retained: bool, name: str = line.name
            ) -> None:
                if retained:
                    log.warning("line '%s': ignoring a retained command on %s", name, topic)
                    return
                runner.command(name, "order", payload)

            sink.subscribe(
                sink.topic(line.name, "cmd/order"),
                on_command,
                purpose=f"order commands for line '{line.name}' will not arrive",
            )

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    async def _watch(self) -> None:
        """Check the state files and feed the watchdog while the engine progresses."""
        interval = 1.0
        if self.notifier.watchdog_interval_s:
            interval = min(interval, self.notifier.watchdog_interval_s / 4)
        while True:
            for run in self.sinks.values():
                self._check_storage(run.outbox.path.name, run.outbox.check_file())
                if run.sink is not None and run.health is not None and run.sink.connected:
                    run.health.ok()  # a link that has lasted becomes "stable again"
            # The engine ticks every second; 3 publish intervals without progress is a hang.
            stale_after = self.stall_after_s or max(
                3 * (self.runner.publish_interval_s if self.runner else 1.0), 5.0
            )
            if time.monotonic() - self._last_progress < stale_after:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _check_storage(self, file: str, recreated: bool) -> None:
        """Count a state file found deleted while running (and recreated; logged by it)."""
        if recreated:
            self.metrics.storage_recovered.labels(file=file, reason="deleted").inc()

    def _sink_figures(self) -> list[tuple[str, SinkFigures]]:
        """Each sink's figures, read at scrape time."""
        held = self.runner.held_by_sink() if self.runner else {}
        lost = {t.name: t.lost for t in self.runner.targets} if self.runner else {}
        figures = []
        for name, run in self.sinks.items():
            sink, outbox = run.sink, run.outbox
            try:
                age = outbox.oldest_age_s(time.time())
            except StorageError:  # the runner logs storage trouble once; a metric can wait
                age = None
            figures.append(
                (
                    name,
                    SinkFigures(
                        connected=sink is not None and sink.connected,
                        published=run.published_before + (sink.published_total if sink else 0),
                        published_unconfirmed=run.unconfirmed_before
                        + (sink.unconfirmed_total if sink else 0),
                        delivery_unconfirmed=sink is not None and sink.status_echo_missing,
                        outbox_messages=outbox.depth(),
                        outbox_bytes=outbox.size_bytes,
                        outbox_oldest_age_s=age or 0.0,
                        outbox_writable=not outbox.failing,
                        held_in_memory=held.get(name, 0),
                        lost=lost.get(name, 0),
                        dropped=outbox.dropped,
                    ),
                )
            )
        return figures

    def _source_states(self) -> list[tuple[str, bool]]:
        """Whether each running source is up, read at scrape time."""
        return [(name, health.up) for name, health in self._source_health.items()]

    async def _run_source(self, sc: SourceConfig, runner: EngineRunner) -> None:
        m = self.metrics

        def on_change(is_up: bool) -> None:
            runner.source_available(sc.name, is_up)

        health = Health("source", sc.name, on_change=on_change)
        self._source_health[sc.name] = health
        source = create_source(sc, clock=self.clock)
        poller = Poller(
            source,
            sc,
            deliver=runner.deliver,
            health=health,
            metrics=m,
            on_source_restart=lambda: runner.source_restarted(sc.name),
            clock=self.clock,
        )
        self.pollers[sc.name] = poller

        if sc.on_startup_error is not OnStartupError.RETRY:
            try:
                await poller.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if poller.connected_once:
                    health.failed(exc, sc.backoff_initial_s)
                elif sc.on_startup_error is OnStartupError.FAIL:
                    raise StartupFailedError(
                        f"source '{sc.name}' could not start ({exc}) and on_startup_error is 'fail'"
                    ) from exc
                else:
                    log.error(
                        "source '%s' could not start (%s); disabled (on_startup_error: disable)",
                        sc.name,
                        exc,
                        extra={"source": sc.name},
                    )
                    on_change(False)
                    return
                await asyncio.sleep(sc.backoff_initial_s)
        await supervise(
            poller.run,
            health,
            Backoff(sc.backoff_initial_s, sc.backoff_max_s),
            on_restart=lambda: m.component_restarts.labels(component=f"source:{sc.name}").inc(),
        )


def _describe_sink(sc: MqttConfig) -> str:
    shared = " (shared)" if sc.share is not None else ""
    return f"'{sc.name}' {sc.host}:{sc.port}{shared}"


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


async def _first_of_task(event: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Wait until ``event`` is set or ``task`` ended (the TaskGroup then says why)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


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


async def run_until_signalled(agent: Agent, *, extra_stop: Callable[[], None] | None = None) -> int:
    """Run ``agent`` until SIGTERM or SIGINT; SIGHUP reloads its configuration file."""
    import signal  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal() -> None:
        if stop.is_set():
            # A second request while stopping: say what the shutdown is waiting for.
            log.warning("still stopping; waiting for: %s", "; ".join(describe_tasks()))
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    try:
        return await agent.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if extra_stop:
            extra_stop()
