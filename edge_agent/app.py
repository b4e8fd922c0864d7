"""The agent's composition root: builds the components from a config and hands them to the
:class:`~edge_agent.supervisor.Supervisor`, which owns their tasks, start and stop order, retries,
reload and systemd notification.

Several MQTT sinks (the list form of ``mqtt``): each has its own outbox (:mod:`edge_agent.links`),
its own component with its own backoff, and its own metrics (label ``sink``). A broker that is
down holds up only its own sink. Order commands (``mqtt.commands``) are taken from the primary
(first) sink only, the plant's broker, and their replies go there only. Reload (SIGHUP): see
:mod:`edge_agent.reload`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from edge_agent import __version__
from edge_agent.config.schema import AgentConfig, SourceConfig
from edge_agent.errors import StorageError
from edge_agent.exits import EXIT_CANTCREAT, EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from edge_agent.links import (
    SinkLink,
    open_outboxes,
    outbox_file,
    state_dir_for,
    subscribe_commands,
)
from edge_agent.metrics import Metrics, MetricsServeError, MetricsServer, SinkFigures
from edge_agent.operator.server import OperatorServeError, OperatorServer
from edge_agent.pipeline import Pipeline, SinkOutbox
from edge_agent.poller import Poller
from edge_agent.reload import load_for_reload, plan_reload
from edge_agent.sinks.history import FILE_NAME as HISTORY_FILE
from edge_agent.sinks.history import History
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sources import create_source
from edge_agent.supervisor import Backoff, Component, Health, Stage, StartupFailedError, Supervisor
from edge_agent.supervisor import run_until_signalled as _run_until_signalled
from edge_agent.systemd import Notifier

__all__ = ["Agent", "StartupFailedError", "outbox_file", "run_until_signalled", "state_dir_for"]

log = logging.getLogger(__name__)


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
        self.ready, self.reload_done = self.supervisor.ready, self.supervisor.reload_done
        self.reloads = 0  # configurations applied by reload
        self.runner: Pipeline | None = None
        self.history: History | None = None
        self.sinks: dict[str, SinkLink] = {}  # by sink name, the primary first
        self.pollers: dict[str, Poller] = {}
        self._metrics_server: MetricsServer | None = None
        self.operator: OperatorServer | None = None
        self.metrics.read_sinks(self._sink_figures)
        self.metrics.read_sources(lambda: [(n, p.health.up) for n, p in self.pollers.items()])

    @property
    def sink(self) -> MqttSink | None:
        """The primary (first) MQTT sink's current client."""
        link = self.sinks.get(self.cfg.mqtt.name)
        return link.sink if link is not None else None

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
        cfg, m = self.cfg, self.metrics
        try:
            outboxes = open_outboxes(cfg)
        except StorageError as exc:
            log.error("%s", exc)
            return EXIT_CANTCREAT
        for sc, outbox in zip(cfg.mqtt_sinks, outboxes, strict=True):
            primary = sc.name == cfg.mqtt.name
            self.sinks[sc.name] = SinkLink(sc, outbox, "mqtt" if primary else f"mqtt:{sc.name}")
            if outbox.recovered is not None:  # logged by the outbox
                m.storage_recovered.labels(file=outbox.path.name, reason="corrupt").inc()
        sinks = ", ".join(
            f"'{sc.name}' {sc.host}:{sc.port}{' (shared)' if sc.share is not None else ''}"
            for sc in cfg.mqtt_sinks
        )
        try:
            self._compose()
            await self.supervisor.run(
                stop,
                reload=self._reload,
                status=f"{len(cfg.sources)} sources, {len(cfg.lines)} lines",
                on_ready=lambda: log.info(
                    "agent started: site '%s', %d source(s), %d line(s), broker %s",
                    *(cfg.site, len(cfg.sources), len(cfg.lines), sinks),
                ),
            )
            for target in self.runner.targets if self.runner else ():
                target.give_up()
            for link in self.sinks.values():
                link.report_left_behind()
        except (MetricsServeError, OperatorServeError) as exc:  # before anything started
            log.error("%s", exc)
            return EXIT_FAILURE
        except BaseExceptionGroup as group:
            expected, rest = group.split(
                (StartupFailedError, MetricsServeError, OperatorServeError)
            )
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

    def _compose(self) -> None:
        """Every component of the configuration, handed to the supervisor (it starts them)."""
        cfg, m, sup = self.cfg, self.metrics, self.supervisor
        m.info.labels(version=__version__, site=cfg.site).set(1)
        if cfg.prometheus.enabled:
            self._metrics_server = server = MetricsServer.from_config(m, cfg.prometheus)
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
                on_recovered=lambda why: m.storage_recovered.labels(HISTORY_FILE, why).inc(),
            )
            sup.add(
                Component(
                    name="history", stage=Stage.STORE, run=history.run, after_stop=history.close
                )
            )
        primary = self.sinks[cfg.mqtt.name]
        self.runner = runner = Pipeline(
            cfg,
            primary.outbox,
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
        if cfg.operator.enabled:
            self._add_operator(runner)
        for name in self.sinks:
            self._connect(name)

        def last_snapshot() -> None:
            runner.step(snapshot=True)

        sup.add(
            Component(name="engine", stage=Stage.ENGINE, run=runner.run, after_stop=last_snapshot)
        )
        for sc in cfg.sources:
            self._add_source(sc)

    def _add_operator(self, runner: Pipeline) -> None:
        """The operator page (docs/operator.md): its boards follow the pipeline's reports; its
        actions are commands to the engines, like the MQTT ``cmd/order`` topic's."""
        from edge_agent.operator.board import Boards  # noqa: PLC0415

        boards = Boards(line.name for line in self.cfg.lines)
        runner.on_reports = boards.take
        self.operator = server = OperatorServer.from_config(
            self.cfg.operator,
            boards,
            runner.command,
            engines=lambda: runner.engines,
            deliver=runner.deliver,
            publish=runner.publish,
            note=runner.shift_note,
            clear_order=runner.clear_order,
            agent_clock=self.clock,
        )
        self.supervisor.add(
            Component(
                name="operator", stage=Stage.SINKS, run=server.run, listening=server.listening
            )
        )

    def _notifier(self, name: str) -> Callable[[], None]:
        def notify() -> None:
            link = self.sinks.get(name)
            if link is not None and link.sink is not None:
                link.sink.notify()

        return notify

    def _connect(self, name: str) -> None:
        link, m = self.sinks[name], self.metrics

        def prepare(sink: MqttSink) -> None:
            # Commands only from the primary sink: the plant's broker (the loader refuses
            # `commands` on the others).
            if name == self.cfg.mqtt.name and link.cfg.commands and self.runner is not None:
                subscribe_commands(
                    sink, [line.name for line in self.cfg.lines], self.runner.command
                )

        self.supervisor.add(
            link.connect(
                site=self.cfg.site,
                lines=[line.name for line in self.cfg.lines],
                single=len(self.sinks) == 1,
                on_restart=lambda: m.component_restarts.labels(link.component_name).inc(),
                prepare=prepare,
            )
        )

    def _add_source(self, sc: SourceConfig) -> None:
        runner, m = self.runner, self.metrics
        assert runner is not None

        def on_change(is_up: bool) -> None:
            runner.source_available(sc.name, is_up)

        self.pollers[sc.name] = poller = Poller(
            create_source(sc, clock=self.clock),
            sc,
            deliver=runner.deliver,
            health=Health("source", sc.name, on_change=on_change),
            metrics=m,
            on_source_restart=lambda: runner.source_restarted(sc.name),
            clock=self.clock,
        )
        component = f"source:{sc.name}"
        self.supervisor.add(
            Component(
                name=component,
                stage=Stage.SOURCES,
                run=poller.run,
                health=poller.health,
                backoff=Backoff(sc.backoff_initial_s, sc.backoff_max_s),
                on_restart=lambda: m.component_restarts.labels(component).inc(),
                on_startup_error=sc.on_startup_error.value,
                connected_once=lambda: poller.connected_once,
                on_disabled=lambda: on_change(False),
            )
        )

    async def _reload(self) -> None:
        new = load_for_reload(self.cfg.path)
        if new is not None:
            await self.apply(new)

    async def apply(self, new: AgentConfig) -> None:
        """Apply a validated configuration to the running agent (see :mod:`edge_agent.reload`)."""
        assert self.runner is not None
        plan = plan_reload(self.cfg, new)
        if plan.cfg.logging.level != self.cfg.logging.level:
            logging.getLogger().setLevel(plan.cfg.logging.level)
        # Sources first: a stopped source must not feed an engine that is being replaced.
        await self.supervisor.remove(*(f"source:{n}" for n in plan.stop_sources))
        for name in plan.stop_sources:
            self.pollers.pop(name, None)
        for name in plan.gone_sources:
            self.runner.source_available(name, False)
        if plan.cfg.operator != self.cfg.operator:
            log.warning("reload: the operator section changed; it takes effect at a restart")
        self.cfg = plan.cfg
        kept, fresh = self.runner.reconfigure(plan.cfg)
        for sc in plan.start_sources:
            self._add_source(sc)
        for mc in plan.cfg.mqtt_sinks:
            self.sinks[mc.name].cfg = mc
        for name in plan.relink:
            log.info("reload: settings of broker '%s' changed; reconnecting", name)
            link = self.sinks[name]
            timeout_s = min(self.supervisor.drain_timeout_s, link.cfg.timeout_s)
            await self.supervisor.remove(link.component_name, drain_timeout_s=timeout_s)
            self._connect(name)
        self.reloads += 1
        log.info(
            "configuration reloaded: %d line(s) kept, %d started afresh; %d source(s) restarted"
            " or started, %d stopped; broker links %s",
            *(len(kept), len(fresh), len(plan.start_sources), len(plan.gone_sources)),
            f"reconnected: {', '.join(plan.relink)}" if plan.relink else "kept",
        )

    def _housekeeping(self) -> None:
        for link in self.sinks.values():
            if link.housekeeping():  # a state file found deleted (recreated, logged by it)
                self.metrics.storage_recovered.labels(link.outbox.path.name, "deleted").inc()

    def _sink_figures(self) -> list[tuple[str, SinkFigures]]:
        """Each sink's figures, read at scrape time."""
        held = self.runner.held_by_sink() if self.runner else {}
        lost = {t.name: t.lost for t in self.runner.targets} if self.runner else {}
        return [
            (name, link.figures(held=held.get(name, 0), lost=lost.get(name, 0)))
            for name, link in self.sinks.items()
        ]


async def run_until_signalled(agent: Agent, *, extra_stop: Callable[[], None] | None = None) -> int:
    """Run ``agent`` until SIGTERM or SIGINT; SIGHUP reloads its configuration file."""
    return await _run_until_signalled(
        agent.run, on_reload=agent.request_reload, extra_stop=extra_stop
    )
