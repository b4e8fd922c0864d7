"""The agent: builds the components from a config and runs them under one supervisor.

Start order: outbox, metrics, MQTT sink, engine, then sources. Stop order is the reverse: sources
stop first, the engine writes a last snapshot, the sink drains the outbox and publishes ``offline``,
then everything closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent import __version__
from edge_agent.config.schema import AgentConfig, OnStartupError, SourceConfig
from edge_agent.engine.runner import EngineRunner
from edge_agent.errors import EdgeAgentError, StorageError
from edge_agent.poller import Poller
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox
from edge_agent.sinks.prometheus import Metrics
from edge_agent.sources import create_source
from edge_agent.supervisor import Backoff, Health, supervise
from edge_agent.systemd import Notifier

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a source with on_startup_error: fail could not start
EXIT_CANTCREAT = 73  # EX_CANTCREAT: the state directory cannot be used
EXIT_CONFIG = 78  # EX_CONFIG


class StartupFailedError(EdgeAgentError):
    """A source configured with ``on_startup_error: fail`` could not connect at start."""


def state_dir_for(cfg: AgentConfig) -> Path:
    """``storage.dir``, else systemd's ``$STATE_DIRECTORY``, else ``./state``."""
    if cfg.storage.dir:
        return Path(cfg.storage.dir)
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path("state")


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier()
        self.drain_timeout_s = drain_timeout_s
        self.runner: EngineRunner | None = None
        self.sink: MqttSink | None = None
        self.pollers: dict[str, Poller] = {}
        self.metrics_port: int | None = None
        self.ready = asyncio.Event()
        self._last_progress = time.monotonic()

    def _open_outbox(self) -> Outbox:
        directory = state_dir_for(self.cfg)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {directory}: {exc}") from exc
        return Outbox(directory / "outbox.sqlite")

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set, then shut down in order. Returns the process exit code."""
        try:
            outbox = self._open_outbox()
        except StorageError as exc:
            log.error("%s", exc)
            return EXIT_CANTCREAT
        try:
            return await self._run(stop, outbox)
        except BaseExceptionGroup as group:
            startup, rest = group.split(StartupFailedError)
            if rest is not None:
                raise rest from None
            for failure in startup.exceptions if startup else ():
                log.error("%s", failure)
            return EXIT_UNAVAILABLE
        finally:
            outbox.close()
            self.metrics.stop_serving()

    async def _run(self, stop: asyncio.Event, outbox: Outbox) -> int:
        cfg = self.cfg
        m = self.metrics
        m.info.labels(version=__version__, site=cfg.site).set(1)
        if cfg.prometheus.enabled:
            self.metrics_port = m.serve(cfg.prometheus.host, cfg.prometheus.port)

        sink = MqttSink(cfg.mqtt, site=cfg.site, outbox=outbox)
        self.sink = sink
        runner = EngineRunner(
            cfg, outbox, metrics=m, notify_sink=sink.notify, on_progress=self._progress
        )
        self.runner = runner
        sink_health = Health("broker", f"{cfg.mqtt.host}:{cfg.mqtt.port}")

        async def run_sink() -> None:
            try:
                await sink.run()
            finally:
                m.broker_connected.set(0)

        async with asyncio.TaskGroup() as tg:
            sink_task = tg.create_task(
                supervise(
                    run_sink,
                    sink_health,
                    Backoff(cfg.mqtt.backoff_initial_s, cfg.mqtt.backoff_max_s),
                    on_restart=lambda: m.component_restarts.labels(component="mqtt").inc(),
                ),
                name="mqtt",
            )
            status_task = tg.create_task(self._watch(sink, sink_health, outbox), name="status")
            engine_task = tg.create_task(runner.run(), name="engine")
            source_tasks = [
                tg.create_task(self._run_source(sc, runner), name=f"source:{sc.name}")
                for sc in cfg.sources
            ]
            self.notifier.ready(f"{len(cfg.sources)} sources, {len(cfg.lines)} lines")
            self.ready.set()
            log.info(
                "agent started: site '%s', %d source(s), %d line(s), broker %s:%d",
                cfg.site,
                len(cfg.sources),
                len(cfg.lines),
                cfg.mqtt.host,
                cfg.mqtt.port,
            )
            await stop.wait()

            log.info("stopping: sources first, then the engine, then the broker link")
            self.notifier.stopping()
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            engine_task.cancel()
            await asyncio.gather(engine_task, return_exceptions=True)
            runner.step(snapshot=True)
            try:
                await sink.close(self.drain_timeout_s)
            except Exception as exc:  # the broker may be gone: the outbox keeps what is left
                log.warning("could not close the broker link cleanly: %s", exc)
            sink_task.cancel()
            status_task.cancel()
            await asyncio.gather(sink_task, status_task, return_exceptions=True)
            left = outbox.depth()
            if left:
                log.warning("%d message(s) stay in the outbox for the next start", left)
        log.info("stopped")
        return EXIT_OK

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    async def _watch(self, sink: MqttSink, health: Health, outbox: Outbox) -> None:
        """Mirror component state into metrics and feed the watchdog while the engine progresses."""
        m = self.metrics
        interval = 1.0
        if self.notifier.watchdog_interval_s:
            interval = min(interval, self.notifier.watchdog_interval_s / 4)
        published = 0
        while True:
            connected = sink.connected
            m.broker_connected.set(1 if connected else 0)
            if connected:
                health.ok()
            m.published.inc(max(0, sink.published_total - published))
            published = sink.published_total
            m.outbox_depth.set(outbox.depth())
            age = outbox.oldest_age_s(time.time())
            m.outbox_oldest_age.set(age or 0.0)
            # The engine ticks every second; 3 publish intervals without progress is a hang.
            stale_after = max(3 * (self.runner.publish_interval_s if self.runner else 1.0), 5.0)
            if time.monotonic() - self._last_progress < stale_after:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _run_source(self, sc: SourceConfig, runner: EngineRunner) -> None:
        m = self.metrics
        up = m.source_up.labels(source=sc.name)
        up.set(0)

        def on_change(is_up: bool) -> None:
            up.set(1 if is_up else 0)
            runner.source_available(sc.name, is_up)

        health = Health("source", sc.name, on_change=on_change)
        source = create_source(sc)
        poller = Poller(
            source,
            sc,
            deliver=runner.deliver,
            health=health,
            metrics=m,
            on_source_restart=lambda: runner.source_restarted(sc.name),
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


async def run_until_signalled(agent: Agent, *, extra_stop: Callable[[], None] | None = None) -> int:
    """Run ``agent`` until SIGTERM or SIGINT (or, on SIGHUP for now, a logged notice)."""
    import signal  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("SIGHUP: configuration reload is not supported yet")
        )
    try:
        return await agent.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if extra_stop:
            extra_stop()
