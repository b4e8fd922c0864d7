"""The MQTT sinks while the agent runs: for each configured sink its outbox (for the agent's
whole run), its current broker client (replaced when a reload changes the link's settings), and
the figures the metrics read from them.

Each sink has its own outbox file: the first sink's is ``outbox.sqlite``, as with a single sink,
so a state directory keeps working when a single sink becomes the first of a list; the others'
are ``outbox-{name}.sqlite``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.schema import AgentConfig, MqttConfig
from edge_agent.errors import StorageError
from edge_agent.metrics import SinkFigures
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox
from edge_agent.supervisor import Backoff, Component, Health, Stage, link_held_after_s

log = logging.getLogger(__name__)

OLDEST_READ_EVERY_S = 1.0


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


def open_outboxes(cfg: AgentConfig) -> list[Outbox]:
    """One outbox per sink, the primary's first; all or none. Raises :class:`StorageError`."""
    directory = state_dir_for(cfg)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create state directory {directory}: {exc}") from exc
    opened: list[Outbox] = []
    try:
        for sink in cfg.mqtt_sinks:
            opened.append(Outbox(directory / outbox_file(cfg, sink), limits=cfg.storage.outbox))
    except StorageError:
        for outbox in opened:
            outbox.close()
        raise
    return opened


@dataclass(slots=True)
class SinkLink:
    """One MQTT sink while the agent runs: its outbox, and its current client and health."""

    cfg: MqttConfig
    outbox: Outbox
    component_name: str  # "mqtt" for the primary sink, "mqtt:{name}" for the others
    sink: MqttSink | None = None
    health: Health | None = None
    # Acknowledged by the clients this sink had before its current one (a reload relinks).
    published_before: int = 0
    unconfirmed_before: int = 0
    unsaved_acks: int = 0  # of the last client, when it stopped
    _oldest_created: float | None = None  # POSIX time of the oldest message, as last read
    _oldest_read_at: float = float("-inf")  # monotonic time of that read

    def connect(
        self,
        *,
        site: str,
        lines: list[str],
        single: bool,
        on_restart: Callable[[], None],
        prepare: Callable[[MqttSink], None] = lambda sink: None,
    ) -> Component:
        """A new client for this sink (``prepare`` subscribes it), as a component for the
        supervisor; ``single``: the only sink (its logs then say just "broker")."""
        sc, name = self.cfg, self.cfg.name
        held_after_s = link_held_after_s(sc.keepalive_s)
        # A link that drops before it held is summed up, at most once per backoff cap.
        self.health = health = Health(
            "broker" if single else f"broker '{name}'",
            f"{sc.host}:{sc.port}",
            held_after_s=held_after_s,
            summary_every_s=max(sc.backoff_max_s, held_after_s),
        )
        self.sink = sink = MqttSink(
            sc, site=site, outbox=self.outbox, lines=lines, on_link=health.ok
        )
        prepare(sink)

        async def drain(timeout_s: float) -> None:
            try:
                await sink.close(timeout_s)
            except Exception as exc:  # the broker may be gone: the outbox keeps what is left
                log.warning("could not close the link to broker '%s' cleanly: %s", name, exc)

        def after_stop() -> None:
            self.published_before += sink.published_total
            self.unconfirmed_before += sink.unconfirmed_total
            self.unsaved_acks = len(sink.unsaved_acks)
            self.sink = None

        sink.notify()  # whatever waits in the outbox goes out as soon as it connects
        return Component(
            name=self.component_name,
            stage=Stage.SINKS,
            run=sink.run,
            health=health,
            backoff=Backoff(sc.backoff_initial_s, sc.backoff_max_s),
            on_restart=on_restart,
            drain=drain,
            after_stop=after_stop,
        )

    def housekeeping(self) -> bool:
        """About once a second: tell a link that has lasted so ("stable again"). True when the
        outbox file was found deleted (and recreated; logged by it)."""
        if self.sink is not None and self.health is not None and self.sink.connected:
            self.health.ok()
        return self.outbox.check_file()

    def figures(self, *, held: int, lost: int) -> SinkFigures:
        """What the metrics show of this sink now; ``held`` and ``lost`` are the engine
        runner's reports for it that never reached the outbox."""
        sink, outbox = self.sink, self.outbox
        now = time.time()
        # The oldest message's time is read from the file at most once a second, however often
        # the metrics are scraped: many short reads keep SQLite from resetting its WAL, which
        # then grows, and on a nearly full disk that is room the outbox needs to recover.
        if outbox.depth() == 0:
            self._oldest_created = None
        elif time.monotonic() - self._oldest_read_at >= OLDEST_READ_EVERY_S:
            try:
                age = outbox.oldest_age_s(now)
            except StorageError:  # the pipeline logs storage trouble once; a metric can wait
                age = None
            self._oldest_created = None if age is None else now - age
            self._oldest_read_at = time.monotonic()
        oldest_age_s = 0.0 if self._oldest_created is None else max(0.0, now - self._oldest_created)
        return SinkFigures(
            connected=sink is not None and sink.connected,
            published=self.published_before + (sink.published_total if sink else 0),
            published_unconfirmed=self.unconfirmed_before + (sink.unconfirmed_total if sink else 0),
            delivery_unconfirmed=sink is not None and sink.status_echo_missing,
            outbox_messages=outbox.depth(),
            outbox_bytes=outbox.size_bytes,
            outbox_oldest_age_s=oldest_age_s,
            outbox_writable=not outbox.failing,
            held_in_memory=held,
            lost=lost,
            dropped=outbox.dropped,
        )

    def report_left_behind(self) -> None:
        """At stop: say what stays in the outbox for the next start."""
        name = self.cfg.name
        if self.unsaved_acks:
            log.warning(
                "storage: %d message(s) acknowledged by broker '%s' could not be deleted"
                " from its outbox; they will be sent again at the next start",
                self.unsaved_acks,
                name,
            )
        left = self.outbox.depth() - self.unsaved_acks
        if left:
            log.warning(
                "%d message(s) stay in the outbox of sink '%s' for the next start", left, name
            )


def subscribe_commands(
    sink: MqttSink, lines: list[str], command: Callable[[str, str, bytes], None]
) -> None:
    """Order commands of every line from ``{prefix}/{site}/{line}/cmd/order`` to
    ``command(line, "order", payload)`` (mqtt.commands: the plant's own broker only). A
    retained command is ignored: it would be applied again on every reconnect, possibly over a
    newer order."""
    for line in lines:

        def on_command(topic: str, payload: bytes, retained: bool, name: str = line) -> None:
            if retained:
                log.warning("line '%s': ignoring a retained command on %s", name, topic)
                return
            command(name, "order", payload)

        sink.subscribe(
            sink.topic(line, "cmd/order"),
            on_command,
            purpose=f"order commands for line '{line}' will not arrive",
        )
