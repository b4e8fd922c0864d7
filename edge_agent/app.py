"""The agent's composition root: builds the components from a config and hands them to the
:class:`~edge_agent.supervisor.Supervisor`, which owns their tasks, start and stop order, retries,
reload and systemd notification.

Several MQTT sinks (the list form of ``mqtt``): each has its own outbox file (the first sink's is
``outbox.sqlite``, as with a single sink, so a state directory keeps working when a single sink
becomes the first of a list; the others' are ``outbox-{name}.sqlite``), its own component with
its own backoff, and its own metrics (label ``sink``). A broker that is down holds up only its
own sink. Order commands (``mqtt.commands``) are taken from the primary (first) sink only, the
plant's broker, and their replies go there only.

Reload (SIGHUP, :meth:`Agent.request_reload`): the configuration file is loaded and validated
again; an invalid one is refused with its problems logged, and the running one stays. A valid
one is applied in place: sources that changed (or are new or gone) are restarted (or started,
stopped), lines whose configuration is unchanged keep their engine and its state, the broker link
is reconnected only when that sink's settings changed. ``site``, ``storage``, ``prometheus`` and
the list of sink names need a restart: a change to them is logged and not applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edge_agent import __version__
from edge_agent.config.schema import AgentConfig, MqttConfig, SourceConfig
from edge_agent.engine.runner import EngineRunner, SinkOutbox
from edge_agent.errors import ConfigError, StorageError
from edge_agent.exits import EXIT_CANTCREAT, EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from edge_agent.metrics import Metrics, MetricsServeError, MetricsServer, SinkFigures
from edge_agent.poller import Poller
from edge_agent.secrets import read_secret
from edge_agent.sinks.history import FILE_NAME as HISTORY_FILE
from edge_agent.sinks.history import History
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox
from edge_agent.sources import create_source
from edge_agent.supervisor import (
    Backoff,
    Component,
    Health,
    Stage,
    StartupFailedError,
    Supervisor,
    link_held_after_s,
)
from edge_agent.supervisor import run_until_signalled as _run_until_signalled
from edge_agent.systemd import Notifier

__all__ = ["Agent", "StartupFailedError", "outbox_file", "run_until_signalled", "state_dir_for"]

log = logging.getLogger(__name__)


def outbox_file(cfg: AgentConfig, sink: MqttConfig) -> str:
    """The outbox file name of ``sink`` (see the module docstring)."""
    return "outbox.sqlite" if sink.name == cfg.mqtt.name else f"outbox-{sink.name}.sqlite"


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


@dataclass(slots=True)
class _SinkRun:
    """One MQTT sink while the agent runs: its outbox, and its current client and health."""

    cfg: MqttConfig
    outbox: Outbox
    sink: MqttSink | None = None
    health: Health | None = None
    # Acknowledged by the clients this sink had before its current one (a reload relinks).
    published_before: int = 0
    unconfirmed_before: int = 0
    unsaved_acks: int = 0  # of the last client, when it stopped


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
        microsecond, so a replay sees exactly the times the live engine saw. ``stall_after_s``:
        how long without an engine step is a hang (default: 3 publish intervals, at least 5 s)."""
        self.cfg = cfg
        self.clock: Callable[[], float] = lambda: round(clock(), 6)
        self.metrics = metrics or Metrics()

        def stall_s() -> float:
            interval_s = self.runner.publish_interval_s if self.runner else 1.0
            return stall_after_s or max(3 * interval_s, 5.0)

        self.supervisor = Supervisor(
            notifier,
            drain_timeout_s=drain_timeout_s,
            stall_after_s=stall_s,
            housekeeping=self._housekeeping,
        )
        self.ready = self.supervisor.ready
        self.reload_done = self.supervisor.reload_done
        self.reloads = 0  # configurations applied by reload
        self.runner: EngineRunner | None = None
        self.history: History | None = None
        self.sinks: dict[str, _SinkRun] = {}  # by sink name, the primary first
        self.pollers: dict[str, Poller] = {}
        self._metrics_server: MetricsServer | None = None
        self.metrics.read_sinks(self._sink_figures)
        self.metrics.read_sources(lambda: [(n, p.health.up) for n, p in self.pollers.items()])

    @property
    def sink(self) -> MqttSink | None:
        """The primary (first) MQTT sink."""
        run = self.sinks.get(self.cfg.mqtt.name)
        return run.sink if run is not None else None

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` listens on, once it does."""
        return self._metrics_server.port if self._metrics_server is not None else None

    @property
    def engine_task(self) -> asyncio.Task[None] | None:
        engine = self.supervisor.components.get("engine")
        return engine.task if engine is not None else None

    def request_reload(self) -> None:
        """Reload the configuration file soon (the SIGHUP handler calls this)."""
        self.supervisor.request_reload()

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set, then shut down in order. Returns the process exit code."""
        try:
            outboxes = _open_outboxes(self.cfg)
        except StorageError as exc:
            log.error("%s", exc)
            return EXIT_CANTCREAT
        for sc, outbox in zip(self.cfg.mqtt_sinks, outboxes, strict=True):
            self.sinks[sc.name] = _SinkRun(sc, outbox)
            if outbox.recovered is not None:  # logged by the outbox
                self.metrics.storage_recovered.labels(file=outbox.path.name, reason="corrupt").inc()
        cfg = self.cfg
        try:
            self._compose(outboxes[0])
            await self.supervisor.run(
                stop,
                reload=self._reload,
                status=f"{len(cfg.sources)} sources, {len(cfg.lines)} lines",
                on_ready=lambda: log.info(
                    "agent started: site '%s', %d source(s), %d line(s), broker %s",
                    cfg.site,
                    len(cfg.sources),
                    len(cfg.lines),
                    ", ".join(_describe_sink(sc) for sc in cfg.mqtt_sinks),
                ),
            )
            self._left_behind()
        except BaseExceptionGroup as group:
            expected, rest = group.split((StartupFailedError, MetricsServeError))
            if rest is not None:
                raise rest from None
            for failure in expected.exceptions if expected else ():
                log.error("%s", failure)
            startup = expected is not None and expected.subgroup(StartupFailedError) is not None
            return EXIT_UNAVAILABLE if startup else EXIT_FAILURE
        finally:
            if self.history is not None:
                self.history.close()  # after a failed start; a clean stop closed it already
            for each in outboxes:
                each.close()
        log.info("stopped")
        return EXIT_OK

    def _left_behind(self) -> None:
        """At stop: say what could not be delivered and stays for the next start."""
        for target in self.runner.targets if self.runner is not None else ():
            target.give_up()
        for name, run in self.sinks.items():
            if run.unsaved_acks:
                log.warning(
                    "storage: %d message(s) acknowledged by broker '%s' could not be deleted"
                    " from its outbox; they will be sent again at the next start",
                    run.unsaved_acks,
                    name,
                )
            left = run.outbox.depth() - run.unsaved_acks
            if left:
                log.warning(
                    "%d message(s) stay in the outbox of sink '%s' for the next start", left, name
                )

    def _compose(self, outbox: Outbox) -> None:
        """Every component of ``self.cfg``, handed to the supervisor (it starts them)."""
        cfg, m, sup = self.cfg, self.metrics, self.supervisor
        m.info.labels(version=__version__, site=cfg.site).set(1)
        if cfg.prometheus.enabled:
            p = cfg.prometheus
            server = MetricsServer(
                m,
                p.host,
                p.port,
                cert_file=p.cert_file,
                key_file=p.key_file,
                username=p.username,
                password=read_secret(p.password_file) if p.password_file is not None else None,
            )
            self._metrics_server = server
            sup.add(
                Component(
                    name="metrics", stage=Stage.SINKS, run=server.run, listening=server.listening
                )
            )
        if cfg.storage.history.enabled:
            self.history = history = History(
                state_dir_for(cfg) / HISTORY_FILE,
                cfg.storage.history,
                clock=self.clock,
                on_recovered=lambda reason: m.storage_recovered.labels(
                    file=HISTORY_FILE, reason=reason
                ).inc(),
            )
            sup.add(
                Component(
                    name="history", stage=Stage.STORE, run=history.run, after_stop=history.close
                )
            )
        self.runner = runner = EngineRunner(
            cfg,
            outbox,
            metrics=m,
            notify_sink=self._notifier(cfg.mqtt.name),
            on_progress=sup.progress,
            clock=self.clock,
            history=self.history,
            more_sinks=[
                SinkOutbox(sc, self.sinks[sc.name].outbox, self._notifier(sc.name))
                for sc in cfg.mqtt_extra
            ],
        )
        for name in self.sinks:
            self._add_sink(name)

        def last_snapshot() -> None:
            runner.step(snapshot=True)

        sup.add(
            Component(name="engine", stage=Stage.ENGINE, run=runner.run, after_stop=last_snapshot)
        )
        for sc in cfg.sources:
            self._add_source(sc)

    def _notifier(self, name: str) -> Callable[[], None]:
        def notify() -> None:
            run = self.sinks.get(name)
            if run is not None and run.sink is not None:
                run.sink.notify()

        return notify

    def _sink_component_name(self, name: str) -> str:
        return "mqtt" if name == self.cfg.mqtt.name else f"mqtt:{name}"

    def _add_sink(self, name: str) -> None:
        run, m = self.sinks[name], self.metrics
        sc = run.cfg
        held_after_s = link_held_after_s(sc.keepalive_s)
        # A link that drops before it held is summed up, at most once per backoff cap.
        run.health = health = Health(
            "broker" if len(self.sinks) == 1 else f"broker '{name}'",
            f"{sc.host}:{sc.port}",
            held_after_s=held_after_s,
            summary_every_s=max(sc.backoff_max_s, held_after_s),
        )
        lines = [line.name for line in self.cfg.lines]
        run.sink = sink = MqttSink(
            sc, site=self.cfg.site, outbox=run.outbox, lines=lines, on_link=health.ok
        )
        # Commands only from the primary sink: the plant's broker (the loader refuses
        # `commands` on the others).
        if name == self.cfg.mqtt.name and sc.commands and self.runner is not None:
            self._subscribe_commands(sink, self.runner)
        component = self._sink_component_name(name)

        async def drain(timeout_s: float) -> None:
            try:
                await sink.close(timeout_s)
            except Exception as exc:  # the broker may be gone: the outbox keeps what is left
                log.warning("could not close the link to broker '%s' cleanly: %s", name, exc)

        def after_stop() -> None:
            run.published_before += sink.published_total
            run.unconfirmed_before += sink.unconfirmed_total
            run.unsaved_acks = len(sink.unsaved_acks)
            run.sink = None

        self.supervisor.add(
            Component(
                name=component,
                stage=Stage.SINKS,
                run=sink.run,
                health=health,
                backoff=Backoff(sc.backoff_initial_s, sc.backoff_max_s),
                on_restart=lambda: m.component_restarts.labels(component=component).inc(),
                drain=drain,
                after_stop=after_stop,
            )
        )
        sink.notify()  # whatever waits in the outbox goes out as soon as it connects

    def _add_source(self, sc: SourceConfig) -> None:
        runner, m = self.runner, self.metrics
        assert runner is not None

        def on_change(is_up: bool) -> None:
            runner.source_available(sc.name, is_up)

        poller = Poller(
            create_source(sc, clock=self.clock),
            sc,
            deliver=runner.deliver,
            health=Health("source", sc.name, on_change=on_change),
            metrics=m,
            on_source_restart=lambda: runner.source_restarted(sc.name),
            clock=self.clock,
        )
        self.pollers[sc.name] = poller
        component = f"source:{sc.name}"
        self.supervisor.add(
            Component(
                name=component,
                stage=Stage.SOURCES,
                run=poller.run,
                health=poller.health,
                backoff=Backoff(sc.backoff_initial_s, sc.backoff_max_s),
                on_restart=lambda: m.component_restarts.labels(component=component).inc(),
                on_startup_error=sc.on_startup_error.value,
                connected_once=lambda: poller.connected_once,
                on_disabled=lambda: on_change(False),
            )
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
        await self.supervisor.remove(*(f"source:{n}" for n in stop))
        for name in stop:
            self.pollers.pop(name, None)
            if name not in new_sources:
                self.runner.source_available(name, False)

        self.cfg = new
        kept, fresh = self.runner.reconfigure(new)
        start = [sc for n, sc in new_sources.items() if old_sources.get(n) != sc]
        for sc in start:
            self._add_source(sc)

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
                timeout_s = min(self.supervisor.drain_timeout_s, mc.timeout_s)
                await self.supervisor.remove(
                    self._sink_component_name(mc.name), drain_timeout_s=timeout_s
                )
                self._add_sink(mc.name)
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

    def _housekeeping(self) -> None:
        """About once a second: a state file found deleted (and recreated, logged by it) is
        counted; a broker link that has lasted is told so ("stable again")."""
        for run in self.sinks.values():
            if run.outbox.check_file():
                self.metrics.storage_recovered.labels(
                    file=run.outbox.path.name, reason="deleted"
                ).inc()
            if run.sink is not None and run.health is not None and run.sink.connected:
                run.health.ok()

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


def _open_outboxes(cfg: AgentConfig) -> list[Outbox]:
    """One outbox per sink, the primary's first; all or none."""
    directory = state_dir_for(cfg)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create state directory {directory}: {exc}") from exc
    opened: list[Outbox] = []
    try:
        for sink in cfg.mqtt_sinks:
            opened.append(
                Outbox(state_dir_for(cfg) / outbox_file(cfg, sink), limits=cfg.storage.outbox)
            )
    except StorageError:
        for outbox in opened:
            outbox.close()
        raise
    return opened


def _describe_sink(sc: MqttConfig) -> str:
    shared = " (shared)" if sc.share is not None else ""
    return f"'{sc.name}' {sc.host}:{sc.port}{shared}"


async def run_until_signalled(agent: Agent, *, extra_stop: Callable[[], None] | None = None) -> int:
    """Run ``agent`` until SIGTERM or SIGINT; SIGHUP reloads its configuration file."""
    return await _run_until_signalled(
        agent.run, on_reload=agent.request_reload, extra_stop=extra_stop
    )
