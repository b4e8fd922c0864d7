"""The pipeline: the async shell between the sources, the pure line engines and the sinks.

Routes samples to the lines that use them, ticks the engines on a fixed schedule, and hands their
messages to the outbox together with the engines' state, in one transaction: a report and the
counter baselines that produced it are durable together, so a restart neither loses nor
double-counts parts. Feeds the systemd watchdog only while this makes progress.

The state is written with the reports it belongs to, not on every tick: a tick that produced no
message writes nothing (no transaction, no fsync). Between two writes the engines keep counting
in memory; after a crash they resume from the last written state, whose counter baselines and
window counts agree with each other and with every report already stored, so nothing is counted
twice or lost: parts made since then show up in the first counter delta after the restart, and
the time since then is unknown time (the agent did not observe it). With the default
``publish_interval`` (5 s) every live snapshot carries the state, so that is at most a few
seconds.

Reports. The engines return typed reports; :mod:`edge_agent.contract` turns each into the
message its sinks store (topic suffix, payload, retain flag), with the sink's QoS, once per step.
The line metrics are set from the live :class:`~edge_agent.engine.reports.KpiReport`.

Time order. The pipeline hands samples to the engines, and to the history, in non-decreasing
``agent_time``: a sample stamped before the latest time the pipeline has passed on (a tick, or a
sample of another source delivered first) is restamped with that time. The engine would take it
as happening then anyway; restamping it here makes the history record exactly what the engine
saw, so that ``edge-agent replay`` of an export reproduces the live ``kpi/shift`` reports.

Several MQTT sinks: each has its own outbox file and gets each batch filtered by its ``share``
(:mod:`edge_agent.sharing`), with its own ``qos``, and live snapshots (``kpi``, ``energy``,
``order``) at most every its own ``publish_interval``. Replies to order commands
(``cmd/order/reply``) go to the primary sink only: the commands come from its broker. The engine
state is written once, in the primary (first) sink's transaction. The other sinks' outboxes are
written *before* it: two SQLite files cannot commit atomically together (WAL mode makes an
attached-database transaction atomic per file only), so the order decides what a crash between the
commits costs. With this order nothing is lost for any sink: a crash after a secondary commit and
before the primary's leaves the state where it was, so on restart the engine makes that batch again
and the secondary sink may carry a report of the same window twice (with a new ``seq``; a closed
window's report is the same figures). The other order would lose that batch for the secondary sinks
for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import replace

from edge_agent import contract
from edge_agent.config.schema import AgentConfig, LineConfig, MqttConfig
from edge_agent.domain import MachineState
from edge_agent.engine.line import LineEngine
from edge_agent.engine.reports import KpiReport, Report
from edge_agent.engine.stops import ACTION_TAGS, OPERATOR_SOURCE
from edge_agent.errors import StorageError
from edge_agent.metrics import Metrics
from edge_agent.model import OutMessage, Sample
from edge_agent.sharing import ShareFilter
from edge_agent.sinks.history import History
from edge_agent.sinks.outbox import Outbox

log = logging.getLogger(__name__)

STATE_KEY_PREFIX = "engine:"
_MAX_PENDING = 10_000  # messages held in memory while the outbox cannot be written
# The live topics (engine.snapshots() every publish interval; `order` also at an order change):
# each message is superseded by the next of its line and topic, so while an outbox cannot be
# written only the newest are held in memory. (Thinning per sink applies to snapshots only.)
LIVE_TOPICS: frozenset[str] = frozenset({"kpi", "energy", "order"})
# Topics that only the primary sink receives: replies to order commands belong to the broker the
# commands came from (the plant's, ``mqtt.commands`` on the first sink).
PRIMARY_ONLY_PREFIX = "cmd/"
# The warning in the reports of the windows open when a damaged outbox was moved aside and
# salvaged at start (docs/mqtt.md).
STORAGE_RECOVERED = "storage_recovered"


def signal_tags(line: LineConfig) -> list[str]:
    """The ``SOURCE.TAG`` names a line reads."""
    s = line.signals
    tags = [s.total_count.tag]
    if s.state is not None:
        tags.append(s.state.tag)
    if s.running is not None:
        tags.append(s.running)
    for counter in (s.reject_count, s.good_count):
        if counter is not None:
            tags.append(counter.tag)
    for aux in (s.reason, s.product, s.energy):
        if aux is not None:
            tags.append(aux.tag)
    if s.power is not None:
        tags.append(s.power)
    if s.order is not None:
        tags.extend(t for t in (s.order.id, s.order.target, s.order.product) if t is not None)
    return tags


class SinkOutbox:
    """One MQTT sink's side of the pipeline: its outbox, its filter, and the messages held in
    memory while that outbox cannot be written."""

    def __init__(
        self, cfg: MqttConfig, outbox: Outbox, notify: Callable[[], None] = lambda: None
    ) -> None:
        self.outbox = outbox
        self.notify = notify
        self.pending: list[OutMessage] = []
        self.failing = False
        self.lost = 0  # held reports that could not be kept (too many, or held at stop)
        # (line, topic) -> time of the last live snapshot taken
        self._last_live: dict[tuple[str, str], float] = {}
        self.configure(cfg)

    def configure(self, cfg: MqttConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.filter = ShareFilter(cfg.share)

    def select(
        self,
        messages: list[OutMessage],
        now: float,
        slack_s: float,
        *,
        live: Collection[int] = (),
        replies: bool = True,
    ) -> list[OutMessage]:
        """The messages for this sink: shared ones only, its QoS, its snapshot interval.

        ``live``: the indexes in ``messages`` of the periodic snapshots, thinned to this sink's
        ``publish_interval`` per line and topic; an ``order`` published at an order change is
        not one of them and is never thinned. ``replies``: whether command replies
        (``cmd/...``) are for this sink (the primary's only)."""
        share = self.filter
        qos = self.cfg.qos
        out = []
        for i, msg in enumerate(messages):
            if not share.allows(msg.line, msg.topic_suffix):
                continue
            if not replies and msg.topic_suffix.startswith(PRIMARY_ONLY_PREFIX):
                continue
            if i in live:
                key = (msg.line, msg.topic_suffix)
                last = self._last_live.get(key)
                if last is not None and now - last < self.cfg.publish_interval_s - slack_s:
                    continue  # superseded by a later snapshot: this sink wants fewer
                self._last_live[key] = now
            payload = share.reduce(msg.payload)
            if payload is msg.payload and msg.qos == qos:
                out.append(msg)
            else:
                out.append(replace(msg, payload=payload, qos=qos))
        return out

    def store(self, messages: list[OutMessage], state: dict[str, str] | None = None) -> bool:
        """Append the held messages and ``messages`` (with ``state``); on a storage error hold
        them in memory instead (live snapshots only the newest). True when stored.

        The outbox logs the failure and the recovery itself, once each; what cannot be held
        (above :data:`_MAX_PENDING`) is counted in :attr:`lost` and logged."""
        batch = self.pending + messages
        try:
            self.outbox.append(batch, state=state)
        except StorageError:
            self.failing = True
            # Live snapshots are superseded by the next one; keep everything else.
            kept = [m for m in batch if m.topic_suffix not in LIVE_TOPICS] + [
                m for m in messages if m.topic_suffix in LIVE_TOPICS
            ]
            if len(kept) > _MAX_PENDING:
                log.error(
                    "storage: %d held report(s) of sink '%s' lost: its outbox has not been"
                    " writable for too long",
                    len(kept) - _MAX_PENDING,
                    self.name,
                )
                self.lost += len(kept) - _MAX_PENDING
            self.pending = kept[-_MAX_PENDING:]
            return False
        if self.failing:
            log.info(
                "sink '%s': %d report(s) held in memory stored in the outbox",
                self.name,
                len(self.pending),
            )
            self.failing = False
        self.pending = []
        if batch:
            self.notify()
        return True

    def give_up(self) -> int:
        """At stop: the held reports cannot be kept; count them in :attr:`lost`, say so once
        (they would otherwise vanish with the process) and return how many."""
        n = len(self.pending)
        if n:
            log.error(
                "storage: %d report(s) held in memory for sink '%s' are lost: its outbox at %s"
                " could not be written up to the stop",
                n,
                self.name,
                self.outbox.path,
            )
            self.lost += n
            self.pending = []
        return n


class Pipeline:
    def __init__(
        self,
        cfg: AgentConfig,
        outbox: Outbox,
        *,
        metrics: Metrics,
        notify_sink: Callable[[], None] = lambda: None,
        on_progress: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        tick_interval_s: float = 1.0,
        history: History | None = None,
        more_sinks: list[SinkOutbox] | None = None,
    ) -> None:
        """``outbox`` belongs to the primary sink (``cfg.mqtt``) and holds the engine state;
        ``more_sinks`` are the further sinks (``cfg.mqtt_extra``), in order."""
        self._outbox = outbox
        self._history = history
        self._time = -math.inf  # the latest time handed to the engines
        self.primary = SinkOutbox(cfg.mqtt, outbox, notify_sink)
        self.more_sinks = list(more_sinks or [])
        self._metrics = metrics
        self._on_progress = on_progress
        self._clock = clock
        self.publish_interval_s = cfg.mqtt.publish_interval_s
        self._qos = cfg.mqtt.qos
        self._tick_base_s = tick_interval_s
        self.tick_interval_s = min(tick_interval_s, self.publish_interval_s)
        self._overran = False  # a step has taken longer than the tick (logged once)
        self.engines: dict[str, LineEngine] = {}
        self._lines: dict[str, LineConfig] = {}
        self._site = cfg.site
        self._orders = cfg.mqtt.commands  # lines accept order commands
        self._routes: dict[str, list[LineEngine]] = {}
        self._by_source: dict[str, list[LineEngine]] = {}
        self._routes_by_source: dict[str, dict[str, list[LineEngine]]] = {}
        saved = outbox.load_state()
        for line in cfg.lines:
            self.engines[line.name] = self._new_engine(line, saved)
            self._lines[line.name] = line
        self._route()
        if any(t.outbox.recovered is not None for t in self.targets):
            # Reports (or the engine state) may be missing: say so in the open windows' reports.
            now = self._now()
            for engine in self.engines.values():
                engine.flag(STORAGE_RECOVERED, now)
        self._window_totals: dict[str, tuple[str, int, int, int]] = {}
        self.steps = 0
        # Set by deliver() when a line's state changed: run() steps at once, so a `state`
        # message leaves one poll after the change instead of up to a tick later. Also set by
        # deliver() once the next tick is due (loop time ``_due_at``): the step then shares the
        # poll's wake-up instead of waking the process on a timer of its own.
        self._wake = asyncio.Event()
        # Every report of every step, as the engines made them (the operator page's boards).
        self.on_reports: Callable[[list[Report]], None] | None = None
        self._due_at = math.inf
        self._loop_time: Callable[[], float] = time.monotonic

    def _new_engine(self, line: LineConfig, saved: dict[str, str]) -> LineEngine:
        engine = LineEngine(line, site=self._site, orders=self._orders)
        blob = saved.get(STATE_KEY_PREFIX + line.name)
        if blob:
            try:
                engine.restore(json.loads(blob))
                log.info("line '%s': engine state restored", line.name, extra={"line": line.name})
            except Exception as exc:  # a state from an incompatible config: start afresh
                log.warning(
                    "line '%s': saved engine state not usable (%s)",
                    line.name,
                    exc,
                    extra={"line": line.name},
                )
                engine = LineEngine(line, site=self._site, orders=self._orders)
        return engine

    def _route(self) -> None:
        self._routes = {}
        self._by_source = {}
        for line in self._lines.values():
            engine = self.engines[line.name]
            for tag in signal_tags(line):
                self._routes.setdefault(tag, []).append(engine)
                source = tag.split(".", 1)[0]
                engines = self._by_source.setdefault(source, [])
                if engine not in engines:
                    engines.append(engine)
        # Operator actions (edge_agent.engine.stops): source `operator`, tags `LINE.ACTION`.
        for line in self._lines.values():
            for action in ACTION_TAGS:
                key = f"{OPERATOR_SOURCE}.{line.name}.{action}"
                self._routes.setdefault(key, []).append(self.engines[line.name])
        self._routes_by_source = {}
        for key, engines in self._routes.items():
            source_name, tag_name = key.split(".", 1)
            self._routes_by_source.setdefault(source_name, {})[tag_name] = engines

    def reconfigure(self, cfg: AgentConfig) -> tuple[list[str], list[str]]:
        """Adopt a reloaded configuration; return the lines (kept, started afresh).

        A line whose :class:`LineConfig` is equal keeps its engine, and with it its counter
        baselines and open windows. A changed line gets a new engine restored from the state it
        last stored, if that state fits the new configuration, else a fresh one; a removed line's
        engine is dropped (its last reports are already in the outbox).
        """
        self.publish_interval_s = cfg.mqtt.publish_interval_s
        self.tick_interval_s = min(self._tick_base_s, self.publish_interval_s)
        self._qos = cfg.mqtt.qos
        self._orders = cfg.mqtt.commands
        # The set of sinks is fixed for the process (the app refuses to change it on reload);
        # their filters, QoS and intervals follow the new configuration.
        self.primary.configure(cfg.mqtt)
        by_name = {sink.name: sink for sink in cfg.mqtt_extra}
        for target in self.more_sinks:
            if target.name in by_name:
                target.configure(by_name[target.name])
        kept: list[str] = []
        fresh: list[str] = []
        saved: dict[str, str] | None = None
        engines: dict[str, LineEngine] = {}
        for line in cfg.lines:
            old = self._lines.get(line.name)
            if old == line and cfg.site == self._site:
                engines[line.name] = self.engines[line.name]
                kept.append(line.name)
                continue
            if saved is None:
                # Store the current state first, so that a changed line resumes from now.
                self._persist([], force_state=True)
                saved = self._outbox.load_state()
            engines[line.name] = self._new_engine(line, saved)
            fresh.append(line.name)
        self.engines = engines
        self._lines = {line.name: line for line in cfg.lines}
        self._window_totals = {k: v for k, v in self._window_totals.items() if k in engines}
        self._route()
        return kept, fresh

    def deliver(self, samples: list[Sample]) -> None:
        """Hand a poll's samples to the lines that read them (hot path: one dict lookup each,
        no allocation: most tags of a source feed no line), and to the history, in
        non-decreasing time (see the module docstring)."""
        latest = self._time
        ordered = samples
        for i, s in enumerate(samples):
            if s.agent_time >= latest:
                latest = s.agent_time
                continue
            if ordered is samples:  # copy on first need: the caller's list stays as it was
                ordered = list(samples)
            ordered[i] = s._replace(agent_time=latest)
        samples = ordered
        self._time = latest
        if self._history is not None:
            self._history.record(samples)
        if self._loop_time() >= self._due_at:
            self._wake.set()
        by_source = self._routes_by_source
        routes: dict[str, list[LineEngine]] | None = None
        source: str | None = None
        for sample in samples:
            if sample.source != source:
                source = sample.source
                routes = by_source.get(source)
            engines = routes.get(sample.tag) if routes else None
            if engines:
                for engine in engines:
                    before = engine.state
                    engine.ingest(sample)
                    if engine.state is not before:
                        self._wake.set()

    def source_available(self, source: str, available: bool) -> None:
        now = self._now()
        if not available and self._history is not None:
            self._history.source_down(source, now)
        for engine in self._by_source.get(source, ()):
            engine.source_available(source, available, now)

    def source_restarted(self, source: str) -> None:
        """The PLC behind ``source`` restarted: its next counter values are resets."""
        now = self._now()
        for engine in self._by_source.get(source, ()):
            engine.source_restarted(source, now)

    def command(self, line: str, name: str, payload: bytes) -> None:
        """A command for ``line`` received on ``cmd/{name}``: applied by the engine (or rejected),
        and its reply made durable with the engine state at once."""
        engine = self.engines.get(line)
        if engine is None:
            return
        now = self._clock()
        engine.command(name, payload, now)
        self._log_notices(line, engine)
        reports = engine.tick(now)
        self._persist(contract.messages(reports, qos=self._qos))
        if self.on_reports is not None:
            self.on_reports(reports)

    def clear_order(self, line: str) -> None:
        """Clear ``line``'s current order (the operator page): its reports made durable with
        the engine state at once, like a command's."""
        engine = self.engines.get(line)
        if engine is None:
            return
        now = self._now()
        engine.clear_order(now)
        reports = engine.tick(now)
        self._persist(contract.messages(reports, qos=self._qos), force_state=True)
        if self.on_reports is not None:
            self.on_reports(reports)

    def shift_note(self, line: str, note: str | None) -> None:
        """Set the operators' note on ``line``'s open shift, stored with the engine state at
        once (docs/operator.md)."""
        engine = self.engines.get(line)
        if engine is not None:
            engine.set_shift_note(note, self._now())
            self._persist([], force_state=True)

    def publish(self, reports: list[Report]) -> None:
        """Make reports that are not the engines' durable at once, with the engine state (the
        operator page's audit events: they follow the action they record)."""
        self._persist(contract.messages(reports, qos=self._qos))

    def step(self, *, snapshot: bool) -> int:
        """Tick every engine; with ``snapshot`` add the live ``kpi`` reports. Returns the number of
        messages made durable (0 while the outbox cannot be written: they wait in memory)."""
        now = self._now()
        qos = self._qos
        messages: list[OutMessage] = []
        live: set[int] = set()  # indexes of the snapshots: other sinks may want fewer
        watch = self.on_reports
        for line, engine in self.engines.items():
            self._log_notices(line, engine)
            reports = engine.tick(now)
            messages.extend(contract.messages(reports, qos=qos))
            if watch is not None and reports:
                watch(reports)
            if snapshot:
                snapshots = engine.snapshots(now)
                if watch is not None:
                    watch(snapshots)
                live.update(range(len(messages), len(messages) + len(snapshots)))
                messages.extend(contract.messages(snapshots, qos=qos))
                for report in snapshots:
                    if isinstance(report, KpiReport):
                        self._update_line_metrics(report)
        self.steps += 1
        for msg in messages:
            self._metrics.reports.labels(line=msg.line, topic=msg.topic_suffix).inc()
        return self._persist(messages, live)

    @staticmethod
    def _log_notices(line: str, engine: LineEngine) -> None:
        """The engine's notices (a rejected command, an order tag's bad data), one line each."""
        for text in engine.take_notices():
            log.warning("line '%s': %s", line, text, extra={"line": line})

    def _now(self) -> float:
        """The clock, never before a time already handed to the engines."""
        self._time = max(self._time, self._clock())
        return self._time

    def _persist(
        self, messages: list[OutMessage], live: Collection[int] = (), *, force_state: bool = False
    ) -> int:
        """Store ``messages`` for every sink, the engine state with the primary's; ``live``:
        the indexes of the periodic snapshots among them (see :meth:`SinkOutbox.select`).

        The state goes with ``messages`` and with held reports (or when ``force_state``);
        without any of them nothing is written."""
        now = self._clock()
        # Half a snapshot period of slack, so that scheduling jitter does not skip a snapshot.
        slack_s = self.publish_interval_s / 2
        # The other sinks first, the primary with the state last: see the module docstring.
        for target in self.more_sinks:
            batch = target.select(messages, now, slack_s, live=live, replies=False)
            if batch or target.pending:
                target.store(batch)
        primary = self.primary
        batch = primary.select(messages, now, slack_s, live=live) if primary.cfg.share else messages
        held = len(primary.pending)
        stored = True
        # Held reports were made by the engines before their current state: they are stored
        # with it, or a crash right after would make them again.
        if messages or held or force_state:
            state = {
                STATE_KEY_PREFIX + name: json.dumps(engine.state_dict(), separators=(",", ":"))
                for name, engine in self.engines.items()
            }
            stored = primary.store(batch, state=state)
        # The engine itself still makes progress even while storage fails: the watchdog must
        # not restart the agent and throw away the reports held here.
        self._on_progress()
        return held + len(batch) if stored else 0

    @property
    def held(self) -> int:
        """Messages held in memory because an outbox could not be written (all sinks)."""
        return len(self.primary.pending) + sum(len(t.pending) for t in self.more_sinks)

    def held_by_sink(self) -> dict[str, int]:
        """Messages held in memory, by sink name."""
        return {t.name: len(t.pending) for t in self.targets}

    @property
    def targets(self) -> list[SinkOutbox]:
        """Every sink's side, the primary first."""
        return [self.primary, *self.more_sinks]

    def _update_line_metrics(self, report: KpiReport) -> None:
        m = self._metrics
        line = report.line
        for kpi, value in (
            ("availability", report.availability),
            ("performance", report.performance),
            ("quality", report.quality),
            ("oee", report.oee),
            ("data_coverage", report.data_coverage),
        ):
            m.line_ratio.labels(line=line, kpi=kpi).set(float("nan") if value is None else value)
        m.line_throughput.labels(line=line, kind="good").set(report.throughput_good_per_h or 0)
        m.line_throughput.labels(line=line, kind="total").set(report.throughput_total_per_h or 0)
        state = report.state
        m.line_running.labels(line=line).set(1 if state == MachineState.RUNNING.value else 0)
        for st in MachineState:
            m.line_state.labels(line=line, state=st.value).set(1 if st.value == state else 0)
        window = report.window
        key = f"{window.name}@{window.start}"
        counts = (report.total_count, report.good_count, report.reject_count)
        prev = self._window_totals.get(line)
        if prev is not None:
            same_window = prev[0] == key
            for kind, new, old in zip(("total", "good", "reject"), counts, prev[1:], strict=True):
                delta = new - old if same_window else new
                if delta > 0:
                    m.line_parts.labels(line=line, kind=kind).inc(delta)
        self._window_totals[line] = (key, *counts)

    async def run(self) -> None:
        """Tick every ``tick_interval_s``; snapshot every ``publish_interval_s``; and step at once
        (without a snapshot, off the tick schedule) when a delivered sample changed a line's
        state.

        A due tick (or snapshot) is taken with the first poll delivered after it is due, in the
        same wake-up of the process; only when no poll comes within half a tick more does a
        timer take it. With sources polling every second or faster, an idle agent thus wakes
        for its polls only, and the tick schedule itself does not drift."""
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        next_tick = loop.time()
        next_snapshot = next_tick
        while True:
            now = loop.time()
            snapshot = now >= next_snapshot
            if snapshot:
                next_snapshot += self.publish_interval_s
                if next_snapshot <= now:  # fell behind: do not publish in a burst
                    next_snapshot = now + self.publish_interval_s
            self._wake.clear()
            started = loop.time()
            self.step(snapshot=snapshot)
            step_s = loop.time() - started
            self._metrics.engine_ticks.inc()
            if now >= next_tick:
                next_tick += self.tick_interval_s
                if next_tick <= loop.time():
                    next_tick = loop.time() + self.tick_interval_s
            due = min(next_tick, next_snapshot)
            delay_s = due - loop.time()
            if delay_s > 0:
                self._due_at = due
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s + self.tick_interval_s / 2):
                        await self._wake.wait()
                self._due_at = math.inf
            else:
                # The step took longer than the tick (thousands of lines): leave the loop half
                # as long again for the sources, the sinks and a stop signal before the next
                # one. Without this pause nothing else runs and SIGTERM waits forever.
                if not self._overran:
                    self._overran = True
                    log.warning(
                        "engine: one step over %d line(s) took %.1f s, longer than the %.1f s "
                        "tick: ticks are skipped (docs/performance.md: supported size)",
                        len(self.engines),
                        step_s,
                        self.tick_interval_s,
                    )
                await asyncio.sleep(min(step_s / 2, self.tick_interval_s))
