"""The line engine: samples and ``now`` in, KPI reports and state changes out (DESIGN §1, §3).

Pure and synchronous: no clock, no I/O, no asyncio. The live agent and ``edge-agent replay`` drive
the very same code, the first with the wall clock, the second with the samples' own timestamps.

Time model. The engine keeps one open *window* (a shift, or the off-shift time between two) and
a *piece*: the time since the last change of machine state or of data availability. Every change
closes the piece into the window's :class:`~edge_agent.engine.oee.Accounting`; windows close when
time passes their end, whichever call moves time forward (``ingest``, ``tick``, ``snapshot``,
``source_available``). Time never runs backwards: an input older than the engine's time is taken
as happening now. Samples are timed by ``agent_time`` (one clock with ``now``), not by the PLC's
clock.

Unknown time. The line's data is unavailable while any *cause* holds: a source of one of its
signal tags is down, a signal tag's last sample had bad or uncertain quality (or an unusable
value), or the engine was not running (before its first input, and between a persisted
:meth:`LineEngine.state_dict` and the first input after :meth:`LineEngine.restore`). When the
signal that carries the machine state is unavailable, the state itself becomes ``unknown``.

Windows. Two windows are open at any time and every piece of time and every part lands in
both: the *shift* window (a shift, or the off-shift time between two: ``kpi`` snapshots and the
``kpi/shift`` report) and the *hour* window (the local clock hour: ``kpi/hour`` reports). The
piece is cut at whichever window ends first, so no piece ever crosses a window's end.

Counts (:mod:`edge_agent.engine.placement`). A counter delta observed at ``t`` covers
``(t_prev, t]``, the time since the counter's value last changed (an unchanged reading ends
nothing, as in the on-change history that replay reads): it is placed over the windows of that
time in proportion to the running time in each (unknown time counts as possibly running; by
elapsed time when the line neither ran nor was unknown), in whole parts by the largest-remainder
rule, so a sample exactly at a window's end closes that window and a delta across window
boundaries is split. Parts placed in unknown time count in the totals, but not in performance
and OEE (``unknown_time_count``). An ended window is therefore reported when time next moves on
after the total (or good) counter and the meter have changed since its last running or unknown
time, or ``settle_s`` after its end, whichever comes first; parts of a window already reported
go to the next one. A counter's baseline survives restarts, so parts made while the agent was
down are counted once. With a product signal, parts count for the product in force *before*
the counter sample's time: a product change takes effect for counter samples later than it, so
the parts a poll shows alongside a new product code still count for the old product. Orders get
the whole delta when it is seen.

Downtime reasons. With a reason signal, availability-loss time is also booked by the reason
code in force; loss time with no known reason is ``unspecified``. A reason signal without data
makes the reason unknown, never the time: it is auxiliary, like the product signal.

Micro-stops. A *stop* starts when the state leaves ``running`` for a loss state (``idle``,
``fault``, ...) and ends when it is ``running`` again; going through a planned state or losing
data cancels it. A stop shorter (wall time) than ``micro_stop_max_s`` is a micro-stop, counted in
the window in which it ends with the part of its loss time that lies in that window. Micro-stops
stay availability losses, an extra breakdown; under the six big losses convention their loss time
in the windows still open when they end becomes run time (a performance loss).

Conventions. ``planned_downtime_loss`` excludes no state from planned production time; a
state not excluded is a loss (``planned_stop`` has its own loss bucket). A state code missing
from the map becomes the state signal's ``unmapped`` state.

Energy. An energy meter's deltas are handled like part counters (wrap, reset, restarts) and
placed like them over the time since the previous meter sample: split over its windows and
states in proportion to their durations, with the same buckets and precedence as time
(``running``, a loss state, ``planned_stop`` for calendar stops and planned states, ``unknown``
without data).

Reliability. A fault *starts* when the state becomes ``fault`` from a known state other than
``fault`` (a fault seen again after an outage that began in ``fault`` is the same fault), at a
time inside the window's planned production time; it counts in each window in which it starts.

Orders (:mod:`edge_agent.engine.order_tracker`). The current order comes from PLC tags (a new
id starts a new order) or from :meth:`LineEngine.command`; the latest wins. Parts and energy
count for the order that is current when they are counted. An :class:`OrderClosed` report is
made once per order: when its good quantity reaches the target, or when it is replaced or
cleared before that. An order tag whose value cannot be an order's (a target that is negative,
not a number or above :data:`~edge_agent.engine.orders.MAX_ORDER_QUANTITY`, an id or product
too long) is bad data: the order stays as it was, the order report carries the warning
``order_tag_invalid`` and one notice says so. An ETA beyond the year 9999 is ``null`` with the
warning ``eta_out_of_range``.

Readings. A counter or meter value of magnitude :data:`MAX_READING` or more is no PLC's count: it
is an unusable value (as bad quality is), so no sum or rate ever overflows.

Notices. What an operator should read in the agent's log (a rejected command, an order tag's
bad data and its recovery), once per event: :meth:`LineEngine.take_notices`. The engine itself
does no logging.

Modules. The meter and the energy figures are :mod:`edge_agent.engine.energy`; signal kinds and
value parsing :mod:`edge_agent.engine.signals`; an open window :mod:`edge_agent.engine.windows`;
the KPI report's assembly :mod:`edge_agent.engine.build`.

Reports. The engine returns typed reports (:mod:`edge_agent.engine.reports`); what they
become on the wire (topics, retain flags, QoS, JSON) is :mod:`edge_agent.contract`'s business.

Persistence contract: store :meth:`LineEngine.state_dict` (:mod:`edge_agent.engine.persist`)
together with (in the same transaction as) the reports that :meth:`LineEngine.tick` returned;
otherwise a crash in between repeats or loses a closed shift's report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edge_agent.config.schema import LineConfig
from edge_agent.domain import Convention, MachineState
from edge_agent.engine import persist
from edge_agent.engine.build import (
    convention_label,
    iso,
    state_change,
    window_ref,
    window_report,
)
from edge_agent.engine.counters import CounterTracker
from edge_agent.engine.energy import LineEnergy
from edge_agent.engine.oee import LOSS_STATES, Accounting, TimeBuckets
from edge_agent.engine.order_tracker import OrderTracker
from edge_agent.engine.orders import (
    ParsedCommand,
    parse_order_command,
)
from edge_agent.engine.placement import (
    RUNNING,
    UNKNOWN,
    Ledger,
    PlacedParts,
    WindowKey,
    place_parts,
)
from edge_agent.engine.reports import (
    CommandReply,
    EnergyReport,
    KpiReport,
    OrderReport,
    Report,
)
from edge_agent.engine.shifts import HOUR, OFF_SHIFT, SHIFT, ShiftCalendar, Window, hour_window
from edge_agent.engine.signals import (
    SIG_ENERGY,
    SIG_GOOD,
    SIG_POWER,
    SIG_PRODUCT,
    SIG_REASON,
    SIG_REJECT,
    SIG_RUNNING,
    SIG_STATE,
    SIG_TOTAL,
    as_bool,
    as_code,
    as_count,
    as_float,
    counter_signals,
    signal_kinds,
    state_kind,
    tag_lookup,
)
from edge_agent.engine.stops import ACTION_TAGS, OPERATOR_SOURCE, StopBook
from edge_agent.engine.windows import OpenWindow
from edge_agent.model import Quality, Sample

_REPORTED = (SHIFT, HOUR)  # the window kinds whose close makes a final report
# Micro-stop threshold without micro_stop_max: max(this, 2 × stop_after).
DEFAULT_MICRO_STOP_MIN_S = 60.0

_AGENT = persist.AGENT_CAUSE  # unknown cause: the engine did not observe (not started or restarted)
_SOURCE = "source:"  # unknown cause prefix: a source is down
# After an outage longer than this the engine does not report every missed shift one by one.
MAX_CATCHUP_S = 14 * 86400.0
MAX_NOTICES = 100  # notices kept until take_notices()
# A window whose end has passed waits this long at most for the counter and meter samples that
# show what was made in it (a sparse subscription, a late poll, a 5-minute export).
SETTLE_S = 600.0


class LineEngine:
    """KPIs of one production line. See the module docstring for the time model."""

    def __init__(
        self, cfg: LineConfig, *, site: str, orders: bool = False, settle_s: float = SETTLE_S
    ) -> None:
        """``orders``: publish the ``order`` topic even without an order signal (order
        commands are enabled). ``settle_s``: how long an ended window waits at most for the
        counter and meter samples that show what was made in it."""
        self._settle_s = settle_s
        self.cfg = cfg
        self.site = site
        self.line = cfg.name
        self.calendar = ShiftCalendar(cfg.timezone, cfg.shifts, cfg.calendar)
        self._tz = self.calendar.tz
        self._ideal_s = cfg.ideal_cycle_time_s
        self._stop_after_s = (
            cfg.stop_after_s if cfg.stop_after_s is not None else 5.0 * cfg.ideal_cycle_time_s
        )
        self._micro_max_s = (
            cfg.micro_stop_max_s
            if cfg.micro_stop_max_s is not None
            else max(DEFAULT_MICRO_STOP_MIN_S, 2.0 * self._stop_after_s)
        )
        self._min_coverage = cfg.min_data_coverage
        self._convention = cfg.convention
        # Planned downtime as a loss: no state is excluded from planned production time.
        self._planned_states = (
            frozenset()
            if cfg.convention is Convention.PLANNED_DOWNTIME_LOSS
            else frozenset(cfg.planned_states)
        )
        self._convention_label = convention_label(cfg.convention, self._planned_states)
        # Six big losses: a micro-stop's time is run time (a performance loss).
        self._micro_as_run = cfg.convention is Convention.SIX_BIG_LOSSES

        sig = cfg.signals
        kinds = signal_kinds(sig)
        self._state_kind = state_kind(sig)
        self._state_map: dict[int, MachineState] = dict(sig.state.map) if sig.state else {}
        self._unmapped_state = sig.state.unmapped if sig.state else MachineState.UNKNOWN
        self._reason_map: dict[int, str] = dict(sig.reason.map) if sig.reason else {}
        self._products = dict(sig.product.map) if sig.product is not None else None
        factors = (cfg.emission_factor,) if cfg.emission_factor else cfg.emission_factors
        self._energy = LineEnergy(sig.energy, factors, self._tz)
        counters = counter_signals(sig)
        self._counter_signals = counters
        # Wrap plausibility uses the fastest rate the line may run at.
        self._fastest_s = min(
            [self._ideal_s, *(p.ideal_cycle_time_s for p in (self._products or {}).values())]
        )
        self._trackers = {
            k: CounterTracker(c.rollover, self._fastest_s) for k, c in counters.items()
        }
        # The time since each counter's last sample, to place its next delta over.
        self._ledgers = {k: Ledger() for k in counters}
        # Windows that ended and wait for their counts, with the state at their end, in end order.
        self._closing: list[tuple[OpenWindow, MachineState]] = []
        self._second_counter = (
            SIG_REJECT if SIG_REJECT in counters else SIG_GOOD if SIG_GOOD in counters else None
        )
        self._lookup, self._source_keys = tag_lookup(kinds)

        self._now: float | None = None
        self._shift: OpenWindow | None = None
        self._hour: OpenWindow | None = None
        self._piece_start = 0.0
        self._state = MachineState.UNKNOWN
        self._state_since: float | None = None
        self._causes: set[str] = {_AGENT}
        self._idle_at: float | None = None  # inferred state: idle at this time without a part
        self._reset_hints: set[int] = set()
        self._reason: str | None = None
        self._product: int | None = None
        self._product_next: tuple[float, int | None] | None = None  # (since, code), deferred
        self._stop_since: float | None = None  # the stop in progress (micro-stop candidate)
        self._pending: list[Report] = []
        self._last_report: KpiReport | None = None
        self._last_known_state = MachineState.UNKNOWN  # the state before an unknown spell
        self._notices: list[str] = []  # for the log: take_notices()
        self.stops = StopBook(
            tuple(r.name for r in cfg.stop_reasons), operator_wins=cfg.operator_reason_wins
        )
        # The operators' notes on shifts not yet reported, by the shift window's start.
        self.shift_notes: dict[float, str] = {}
        self._orders = OrderTracker(
            site=site,
            line=self.line,
            tz=self._tz,
            second_counter=self._second_counter,
            publish=orders or sig.order is not None,
            energy=self._energy,
            emit=self._emit,
            notice=self._notice,
            shift_progress=self._shift_progress,
        )

    # ----------------------------------------------------------------------------- public API

    @property
    def state(self) -> MachineState:
        """The current machine state (``unknown`` while the state's signal is unavailable)."""
        return self._state

    @property
    def last_report(self) -> KpiReport | None:
        """The last :meth:`snapshot`, for metrics."""
        return self._last_report

    @property
    def window(self) -> Window | None:
        """The open shift (or off-shift) window (``None`` before the first input)."""
        return self._shift.window if self._shift is not None else None

    @property
    def hour(self) -> Window | None:
        """The open hour window (``None`` before the first input)."""
        return self._hour.window if self._hour is not None else None

    def time_buckets(self) -> TimeBuckets | None:
        """The open shift window's time buckets at the engine's time, unrounded (``None`` before
        the first input). Read-only: does not move time."""
        if self._now is None or self._shift is None:
            return None
        return self._buckets(self._shift, self._now)

    def hour_buckets(self) -> TimeBuckets | None:
        """Like :meth:`time_buckets`, for the open hour window."""
        if self._now is None or self._hour is None:
            return None
        return self._buckets(self._hour, self._now)

    def ingest(self, sample: Sample) -> None:
        """Take one sample. Samples of other tags are ignored at the cost of two dict lookups."""
        tags = self._lookup.get(sample.source)
        if tags is None:
            if sample.source == OPERATOR_SOURCE:
                self._operator_input(sample)
            return
        entry = tags.get(sample.tag)
        if entry is None:
            return
        kind, key = entry
        # Ended windows are settled when time moves on, so that every sample of one instant
        # (one poll) is in first: the reject delta of the poll that closes a shift belongs to it.
        moved = self._now is None or sample.agent_time > self._now
        t = self._advance(sample.agent_time, settle=moved)
        self._apply(kind, key, sample, t)

    def _apply(self, kind: int, key: str, sample: Sample, t: float) -> None:
        good = sample.quality is Quality.GOOD
        if kind >= SIG_TOTAL:
            count = as_count(sample.value) if good else None
            if count is None:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            hint = kind in self._reset_hints
            if hint:
                self._reset_hints.discard(kind)
            tracker = self._trackers[kind]
            ledger = self._ledgers[kind]
            if tracker.last_value is not None:  # the delta covers the time up to t
                self._book(ledger, t)
            ledger.since = t
            d = tracker.update(count, t, reset_hint=hint)
            # An unchanged value does not end the interval: a delta covers the time since the
            # value last changed (the part's making), which is also what the history records
            # (on change), so that replay of an export places parts as the live engine did.
            placed = place_parts(ledger.take(), d.delta) if d.delta or d.reset or d.wrapped else []
            if d.wrapped:
                self._flag("counter_wrap")
            if d.reset:
                self._flag("counter_reset")
            rate = self._orders.counter_seen(kind, t)
            if d.delta:
                self._count(kind, placed, d.delta, t, rate=rate)
            if kind == SIG_TOTAL and self._state_kind == SIG_TOTAL:
                self._infer(d.delta, t)
        elif kind == SIG_STATE:
            if not good:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            code = as_code(sample.value)
            mapped = self._state_map.get(code) if code is not None else None
            if mapped is None:
                self._flag("unmapped_state_code")
                # A value that is not an integer is no code at all: unknown.
                mapped = self._unmapped_state if code is not None else MachineState.UNKNOWN
            state = mapped
            self._set_state(state, t)
        elif kind == SIG_RUNNING:
            running = as_bool(sample.value) if good else None
            if running is None:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            self._set_state(MachineState.RUNNING if running else MachineState.IDLE, t)
        elif kind == SIG_REASON:
            code = as_code(sample.value) if good else None
            self._set_reason(
                None if code is None else self._reason_map.get(code, f"code {code}"), t
            )
        elif kind == SIG_PRODUCT:
            self._set_product(as_code(sample.value) if good else None, t)
        elif kind == SIG_ENERGY:
            reading = as_float(sample.value) if good else None
            if reading is not None:  # energy while the meter is unseen counts when it is back
                self._meter_sample(reading, t)
        elif kind == SIG_POWER:
            self._energy.power_kw = as_float(sample.value) if good else None
        elif good:  # order tags: a bad sample keeps the order as it was
            self._orders.tag(kind, key, sample.value, t)

    def source_available(self, source: str, available: bool, now: float) -> None:
        """The supervisor's word that ``source`` went down or came back. While it is down, all
        time is unknown for this line (if it reads a state or counter signal from it); after it
        comes back, the state stays unknown until a fresh sample of the state's signal. A reason
        or product signal of a source that is down becomes unknown; the time does not."""
        keys = self._source_keys.get(source)
        if not keys:
            return
        t = self._advance(now)
        if not available:
            for kind, _ in keys:
                if kind == SIG_REASON:
                    self._set_reason(None, t)
                elif kind == SIG_PRODUCT:
                    self._set_product(None, t)
                elif kind == SIG_POWER:
                    self._energy.power_kw = None
        if not any(kind in (SIG_STATE, SIG_RUNNING) or kind >= SIG_TOTAL for kind, _ in keys):
            return
        cause = _SOURCE + source
        if available:
            self._remove_cause(cause, t)
            return
        self._add_cause(cause, t)
        if any(kind == self._state_kind for kind, _ in keys):
            self._idle_at = None
            self._set_state(MachineState.UNKNOWN, t)

    def source_restarted(self, source: str, now: float) -> None:
        """The source's PLC restarted (e.g. an OPC UA server start time changed): the next value of
        each of its counters is a count since the restart, whatever it is."""
        self._advance(now)
        for kind, _ in self._source_keys.get(source, ()):
            if kind >= SIG_TOTAL:
                self._reset_hints.add(kind)

    def flag(self, warning: str, now: float) -> None:
        """Add ``warning`` to the reports of the windows open at ``now`` (the agent's own
        trouble, e.g. ``storage_recovered``: its state files were damaged and salvaged)."""
        self._advance(now)
        self._flag(warning)

    def tick(self, now: float) -> list[Report]:
        """Advance time to ``now``; return the reports due since the last call, in time order:
        the final :class:`KpiReport` (``closed``) of each closed clock hour and shift (at a
        common end the hour comes first), a :class:`StateChange` for each state change, and
        the order reports and command replies."""
        self._advance(now)
        out, self._pending = self._pending, []
        return out

    def snapshot(self, now: float) -> KpiReport:
        """The live KPI report of the open shift window at ``now``, also off shift.

        Reports due from advancing time are kept for the next :meth:`tick`."""
        t = self._advance(now)
        assert self._shift is not None
        report = self._report(self._shift, t)
        self._last_report = report
        return report

    def snapshots(self, now: float) -> list[Report]:
        """The live reports at ``now``: the KPIs (:meth:`snapshot`), then the energy with an
        energy signal and the order with an order signal or commands."""
        out: list[Report] = [self.snapshot(now)]
        if self._energy.signal is not None:
            out.append(self.energy_snapshot(now))
        if self._orders.publish:
            out.append(self.order_snapshot(now))
        return out

    def energy_snapshot(self, now: float) -> EnergyReport:
        """The live energy report of the open shift window."""
        t = self._advance(now)
        assert self._shift is not None
        o = self._shift
        good = sum(r[2] for r in o.product_rows(self._second_counter))
        return self._energy.report(
            site=self.site,
            line=self.line,
            window=window_ref(o.window, self._tz),
            ts=iso(t, self._tz),
            state=str(self._state),
            good=good,
            by_state=o.energy,
            flags=o.flags,
            window_start=o.window.start,
        )

    def order_snapshot(self, now: float) -> OrderReport:
        """The live order report: the current order with remaining quantity and ETAs;
        ``order_id`` ``None`` when there is none."""
        return self._orders.report(self._advance(now))

    def command(self, name: str, payload: bytes, now: float) -> None:
        """Apply a command received on ``cmd/{name}`` (only ``order`` exists). Any payload is
        taken: invalid commands are never applied, and a notice says why. Either way a reply on
        ``cmd/{name}/reply`` (a :class:`CommandReply`) follows with the next :meth:`tick`. Commands
        are inputs like samples: persisted through :meth:`state_dict` with the state they
        change."""
        t = self._advance(now)
        if name == "order":
            parsed = parse_order_command(payload)
        else:
            parsed = ParsedCommand(None, (f"unknown command {name!r}",))
        doc = parsed.command
        if doc is None:
            request = "" if parsed.request_id is None else f" {parsed.request_id!a}"
            self._notice(
                f"{name} command{request} rejected, not applied: {'; '.join(parsed.errors)}"
            )
        else:
            self._orders.set(
                doc["order_id"], doc.get("product"), doc["target_quantity"], "command", t
            )
        self._pending.append(
            CommandReply(
                site=self.site,
                line=self.line,
                ts=iso(t, self._tz),
                command=name,
                ok=doc is not None,
                errors=parsed.errors,
                request_id=parsed.request_id,
                order_id=None if doc is None else doc["order_id"],
            )
        )

    def _operator_input(self, sample: Sample) -> None:
        """An operator action (a sample of source ``operator``, :mod:`edge_agent.engine.stops`):
        applied to the open shift, or a notice says why not."""
        line, _, tag = sample.tag.rpartition(".")
        if line != self.line or tag not in ACTION_TAGS:
            return
        t = self._advance(sample.agent_time)
        if sample.quality is not Quality.GOOD:
            return  # an outage mark of the history: no action
        value = as_float(sample.value)
        assert self._shift is not None
        if value is None:
            self._notice(f"operator action {tag}: not a number")
            return
        self._cut(t)  # the pieces up to now belong to their stops
        problem = self.stops.take(tag, value, self._shift.acc)
        if problem is not None:
            self._notice(f"operator action not applied: {problem}")

    def _emit(self, report: Report) -> None:
        self._pending.append(report)

    def _notice(self, text: str) -> None:
        if len(self._notices) < MAX_NOTICES:  # a caller that never takes them (replay)
            self._notices.append(text)

    def take_notices(self) -> list[str]:
        """What happened since the last call that the agent's log should say, once each, in
        plain words (without the line's name): a rejected command and why, an order tag's bad
        data and its recovery."""
        out, self._notices = self._notices, []
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, JSON-serialisable: counter baselines,
        the open windows' accumulators and counts, the current state, undelivered reports
        (:mod:`edge_agent.engine.persist`)."""
        return persist.save(self)

    def restore(self, d: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (this version's or an earlier one's). Time between
        the saved moment and the next input is unknown (the agent was not observing); a stop in
        progress is not a micro-stop. Call before the first input.

        Raises ``ValueError`` if ``d`` is from another line or another format version."""
        persist.restore(self, d)

    # ------------------------------------------------------------------------------ internals

    def _opens(self) -> list[OpenWindow]:
        return [o for o in (self._shift, self._hour) if o is not None]

    def _flag(self, name: str) -> None:
        for o in self._opens():
            o.flags.add(name)

    def _advance(self, now: float, *, settle: bool = True) -> float:
        """Move time to ``now`` (never backwards): apply inferred idle transitions and close
        windows that ended, in time order. Returns the engine's time."""
        t = now if self._now is None or now >= self._now else self._now
        if self._shift is None:
            self._piece_start = t
            self._shift = self._new_open(SHIFT, t)
        if self._hour is None:
            self._hour = self._new_open(HOUR, self._piece_start)
        while True:
            shift, hour = self._shift, self._hour
            boundary = min(shift.window.end, hour.window.end)
            idle_at = self._idle_at
            if idle_at is not None and idle_at <= t and idle_at <= boundary:
                self._idle_at = None
                self._set_state(MachineState.IDLE, idle_at)
                continue
            if boundary > t:
                break
            # After a long gap, close what ended and open the windows of ``t`` directly.
            jump = t - boundary > MAX_CATCHUP_S
            until = t if jump else boundary
            ending = [o for o in (hour, shift) if o.window.end <= until]
            ending.sort(key=lambda o: o.window.end)  # stable: the hour before the shift
            for o in ending:
                self._close(o)
            if jump:
                self._cut(t)
            for o in ending:
                reopen = self._new_open(HOUR if o is hour else SHIFT, t if jump else o.window.end)
                if o is hour:
                    self._hour = reopen
                else:
                    self._shift = reopen
        self._now = t
        if _AGENT in self._causes:
            self._remove_cause(_AGENT, t)
        if settle and self._closing:
            self._settle(t)
        return t

    def _new_open(self, kind: str, t: float) -> OpenWindow:
        """The window of ``kind`` (SHIFT: shift or off-shift) containing ``t``. Its time before
        ``t`` was not observed: unknown."""
        w = hour_window(t, self._tz) if kind == HOUR else self.calendar.window_or_off_shift(t)
        plan = self.calendar.plan(w.start, w.end)
        planned = [] if w.kind == OFF_SHIFT else plan.planned
        acc = Accounting(w.start, w.end, planned, self._planned_states, plan.stops)
        acc.add(w.start, t, MachineState.UNKNOWN, True)
        return OpenWindow(w, acc)

    def _close(self, o: OpenWindow) -> None:
        """Cut at the window's end and stop feeding it time; it waits for its counts
        (:meth:`_settle`)."""
        self._cut(o.window.end)
        self._closing.append((o, self._state))
        if o is self._hour:
            self._hour = None
        elif o is self._shift:
            self._shift = None
            self.stops.new_shift()

    def _held(self, o: OpenWindow) -> bool:
        """Whether the total (or good) counter or the meter has not changed since running or
        unknown time of ``o``: its next delta may hold parts or energy of ``o``."""
        index = 1 if o.window.kind == HOUR else 0
        start = o.window.start
        if self._energy.measuring and self._energy.ledger.holds(index, start, parts=True):
            return True
        # Not the reject counter: rejects are rare, so its ledger often spans many windows.
        return any(
            ledger.holds(index, start, parts=True)
            for k, ledger in self._ledgers.items()
            if k != SIG_REJECT and self._trackers[k].last_value is not None
        )

    def _settle(self, t: float, *, final: bool = False) -> None:
        """Report the ended windows (shift, hour) whose counts are complete (see :meth:`_held`),
        or ``settle_s`` after their end (``final``: now)."""
        while self._closing:
            o, state = self._closing[0]
            if not final and t <= o.window.end + self._settle_s and self._held(o):
                break
            del self._closing[0]
            if o.window.kind in _REPORTED:
                self._pending.append(
                    self._report(o, o.window.end, closed=True, state=state, open_piece=False)
                )

    def finish(self, now: float) -> list[Report]:
        """Like :meth:`tick`, and report the ended windows still waiting for counts now: no
        more samples will come (the end of a replay)."""
        t = self._advance(now)
        self._settle(t, final=True)
        return self.tick(t)

    def _window_for(self, index: int, start: float) -> OpenWindow:
        """The window of a ledger's key (``index`` 0: shift or off-shift, 1: hour); a window
        already reported (``SETTLE_S`` passed) gives its parts to the next one."""
        current = self._hour if index else self._shift
        assert current is not None
        later: OpenWindow | None = None
        for o, _ in self._closing:
            if (o.window.kind == HOUR) != bool(index):
                continue
            if o.window.start == start:
                return o
            if later is None and o.window.start > start:
                later = o
        return later or current

    def _cut(self, t: float) -> None:
        """Close the current piece at ``t`` into every open window."""
        a = self._piece_start
        if t > a:
            unknown = bool(self._causes)
            stopping = self._stop_since is not None
            for o in self._opens():
                loss_s = o.acc.add(a, t, self._state, unknown, self._reason, stop=stopping)
                if stopping:
                    o.micro_pending_s += loss_s
            if not unknown and self._is_loss(self._state):
                self.stops.piece(a, t, self._state, self._reason)
            # Time since the last counter and meter samples: their next deltas are placed over
            # it (edge_agent.engine.placement).
            for k, ledger in self._ledgers.items():
                if self._trackers[k].last_value is not None:
                    self._book(ledger, t)
            if self._energy.measuring:
                self._book(self._energy.ledger, t, energy=True)
            self._piece_start = t

    def _book(self, ledger: Ledger, t: float, *, energy: bool = False) -> None:
        """Book the piece in progress up to ``t`` into ``ledger``, from where the ledger is
        (``ledger.since``); ``energy``: by the time accounting's buckets (the meter)."""
        a = max(self._piece_start, ledger.since)
        shift, hour = self._shift, self._hour
        if t <= a or shift is None or hour is None:
            return
        unknown = bool(self._causes)
        key = (shift.window.start, hour.window.start)
        if energy:
            bucket, in_plan, outside = shift.acc.classify(a, t, self._state, unknown)
            ledger.add(key, bucket, in_plan)
            ledger.add(key, "planned_stop", outside)
        else:
            ledger.add(key, self._part_bucket(unknown), t - a)
        ledger.since = t

    def _open_piece(self) -> tuple[float, MachineState, bool, str | None]:
        return (self._piece_start, self._state, bool(self._causes), self._reason)

    def _set_state(self, state: MachineState, t: float) -> None:
        if state is self._state:
            return
        self._cut(t)
        previous = self._state
        self._state, self._state_since = state, t
        self.stops.state_changed(state, t, loss=self._is_loss(state), known=not self._causes)
        self._track_stop(previous, state, t)
        self._track_fault(previous, state, t)
        self._pending.append(
            state_change(
                site=self.site,
                line=self.line,
                tz=self._tz,
                ts=t,
                state=state,
                previous_state=previous,
                since=t,
            )
        )

    def _track_fault(self, previous: MachineState, state: MachineState, t: float) -> None:
        """Count a fault that starts at ``t`` (see the module docstring)."""
        before = self._last_known_state if previous is MachineState.UNKNOWN else previous
        if state is not MachineState.UNKNOWN:
            self._last_known_state = state
        if (
            state is not MachineState.FAULT
            or before is MachineState.FAULT
            or MachineState.FAULT in self._planned_states
        ):
            return
        for o in self._opens():
            if any(ps <= t < pe for ps, pe in o.acc.planned):
                o.fault_count += 1

    def _is_loss(self, state: MachineState) -> bool:
        """Whether ``state`` can be part of a stop (a micro-stop candidate): an availability
        loss other than planned downtime counted as a loss."""
        return (
            state in LOSS_STATES
            and state not in self._planned_states
            and state is not MachineState.PLANNED_STOP
        )

    def _track_stop(self, previous: MachineState, state: MachineState, t: float) -> None:
        """Micro-stop bookkeeping on a state change (see the module docstring)."""
        if state is MachineState.RUNNING:
            if self._stop_since is not None and t - self._stop_since < self._micro_max_s:
                for o in self._opens():
                    if o.micro_pending_s > 0:  # no loss time here: not this window's stop
                        o.micro_count += 1
                        o.micro_s += o.micro_pending_s
                    o.acc.stop_ended(as_run=self._micro_as_run)
            self._cancel_stop()
        elif self._is_loss(state) and not self._causes:
            if previous is MachineState.RUNNING:
                self._cancel_stop()
                self._stop_since = t
        else:
            self._cancel_stop()

    def _cancel_stop(self) -> None:
        self._stop_since = None
        for o in self._opens():
            o.micro_pending_s = 0.0
            o.acc.stop_ended(as_run=False)

    def _set_reason(self, reason: str | None, t: float) -> None:
        if reason != self._reason:
            self._cut(t)
            self._reason = reason

    def _set_product(self, code: int | None, t: float) -> None:
        self._current_product(t)  # an earlier change takes effect first
        if self._product_next is None and code == self._product:
            return
        self._product_next = (t, code)

    def _current_product(self, t: float) -> int | None:
        nxt = self._product_next
        if nxt is not None and t > nxt[0]:
            self._product, self._product_next = nxt[1], None
        return self._product

    def _count(
        self, kind: int, placed: list[PlacedParts], delta: int, t: float, *, rate: bool = True
    ) -> None:
        """``delta`` parts of counter ``kind`` seen at ``t``, ``placed`` over the windows."""
        product = self._current_product(t) if self._products is not None else None
        slot = 0 if kind == SIG_TOTAL else 1
        for p in placed:
            self._add_parts(p.key, product, slot, p.known, p.unknown)
        self._orders.count(slot, delta, t, rate)
        if product is not None and self._products is not None and product not in self._products:
            self._flag("unmapped_product_code")

    def _part_bucket(self, unknown: bool) -> str:
        """Where parts of the current piece are placed: the machine's own state, whatever the
        calendar says (a line that runs through a break makes parts in the break)."""
        if unknown or self._state is MachineState.UNKNOWN:
            return UNKNOWN
        return RUNNING if self._state is MachineState.RUNNING else "stopped"

    def _with_open_piece(self, ledger: Ledger, active: bool, *, energy: bool = False) -> Ledger:
        """A copy of ``ledger`` with the piece in progress booked (``active``: the signal has
        a baseline; ``energy``: the meter's ledger), for persistence."""
        copy = Ledger.from_state(ledger.state_dict())
        copy.since = ledger.since
        if active and self._now is not None:
            self._book(copy, self._now, energy=energy)
        return copy

    def _add_parts(
        self, key: WindowKey | None, product: int | None, slot: int, known: int, unknown: int
    ) -> None:
        if key is None:  # no time since the previous sample: the windows open now
            if self._causes:
                known, unknown = 0, known + unknown
            for o in self._opens():
                o.add(product, slot, known, unknown)
            return
        self._window_for(0, key[0]).add(product, slot, known, unknown)
        self._window_for(1, key[1]).add(product, slot, known, unknown)

    def _add_cause(self, cause: str, t: float) -> None:
        if cause in self._causes:
            return
        if not self._causes:
            self._cut(t)
            self._cancel_stop()  # a stop whose end cannot be seen is not a micro-stop
            self.stops.state_changed(self._state, t, loss=False, known=False)
        self._causes.add(cause)

    def _remove_cause(self, cause: str, t: float) -> None:
        if cause not in self._causes:
            return
        if len(self._causes) == 1:
            self._cut(t)
        self._causes.discard(cause)
        if not self._causes:
            self.stops.state_changed(self._state, t, loss=self._is_loss(self._state), known=True)

    def _data_lost(self, key: str, kind: int, t: float) -> None:
        self._add_cause(key, t)
        if kind == self._state_kind:
            self._idle_at = None
            self._set_state(MachineState.UNKNOWN, t)

    def _data_ok(self, key: str, t: float) -> None:
        if key in self._causes:
            self._remove_cause(key, t)

    def _infer(self, delta: int, t: float) -> None:
        """State from the counter: running while parts arrive, idle ``stop_after_s`` after the
        last part (or after the first reading, when the state is not known yet)."""
        if delta > 0:
            self._set_state(MachineState.RUNNING, t)
            self._idle_at = t + self._stop_after_s
        elif self._state is MachineState.UNKNOWN and self._idle_at is None:
            self._idle_at = t + self._stop_after_s

    # --- energy --------------------------------------------------------------------------------

    def _meter_sample(self, reading: float, t: float) -> None:
        """An energy meter reading (in the meter's unit) at ``t``."""
        ledger = self._energy.ledger
        if self._energy.measuring:  # the time up to t is split over this reading's delta
            self._book(ledger, t, energy=True)
        ledger.since = t
        r = self._energy.reading(reading, t, str(self._state))
        if r.wrapped:
            self._flag("energy_meter_wrap")
        if r.reset:
            self._flag("energy_meter_reset")
        for key, bucket, kwh in r.shares:
            opens = (
                self._opens()
                if key is None
                else (self._window_for(0, key[0]), self._window_for(1, key[1]))
            )
            for o in opens:
                o.energy[bucket] = o.energy.get(bucket, 0.0) + kwh
        self._orders.add_energy(r.by_bucket())

    def _shift_progress(self) -> tuple[int, float]:
        """The good count and start of the open shift window."""
        assert self._shift is not None
        return sum(
            r[2] for r in self._shift.product_rows(self._second_counter)
        ), self._shift.window.start

    def _buckets(self, o: OpenWindow, until: float) -> TimeBuckets:
        return o.acc.buckets(until, self._open_piece())

    def clear_order(self, now: float) -> None:
        """No current order any more (the operator page): the order closes as
        ``order_cleared`` with the next :meth:`tick`. Persisted with the state."""
        self._orders.set(None, None, None, "command", self._advance(now))

    def set_shift_note(self, note: str | None, now: float) -> None:
        """The operators' note on the shift open at ``now`` (``None``: none), carried in its
        reports (``shift_note``) until it closes. Persisted with the state."""
        self._advance(now)
        assert self._shift is not None
        window = self._shift.window
        if window.kind != SHIFT:
            return
        if note:
            self.shift_notes[window.start] = note
        else:
            self.shift_notes.pop(window.start, None)

    def _report(
        self,
        o: OpenWindow,
        now: float,
        *,
        closed: bool = False,
        state: MachineState | None = None,
        open_piece: bool = True,
    ) -> KpiReport:
        """The window's report, with the operators' note on it (a shift's; the final report
        takes it along)."""
        report = self._window_report(o, now, closed=closed, state=state, open_piece=open_piece)
        if o.window.kind != SHIFT:
            return report
        note = self.shift_notes.pop(o.window.start, None) if closed else None
        if not closed:
            note = self.shift_notes.get(o.window.start)
        return report if note is None else dataclasses.replace(report, shift_note=note)

    def _window_report(
        self,
        o: OpenWindow,
        now: float,
        *,
        closed: bool = False,
        state: MachineState | None = None,
        open_piece: bool = True,
    ) -> KpiReport:
        """``open_piece``: count the piece in progress (``False``: ``o`` has ended, its time is
        all booked); ``state``: the state to report (default: now)."""
        return window_report(
            o,
            self._buckets(o, now) if open_piece else o.acc.buckets(now),
            site=self.site,
            line=self.line,
            tz=self._tz,
            now=now,
            state=self._state if state is None else state,
            convention=self._convention_label,
            ideal_cycle_time_s=self._ideal_s,
            products=self._products,
            second_counter=self._second_counter,
            min_data_coverage=self._min_coverage,
            energy=self._energy,
            closed=closed,
        )
