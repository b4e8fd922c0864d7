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

Counts. Parts count in the window in which the counter sample that shows them arrives; a
counter's baseline survives restarts, so parts made while the agent was down are counted once, in
the first window after the restart. With a product signal, parts count for the product in force
*before* the counter sample's time: a product change takes effect for counter samples later than
it, so the parts a poll shows alongside a new product code still count for the old product.

Downtime reasons. With a reason signal, availability-loss time is also booked by the reason
code in force; loss time with no known reason is ``unspecified``. A reason signal without data
makes the reason unknown, never the time: it is auxiliary, like the product signal.

Micro-stops. A *stop* starts when the state leaves ``running`` for a loss state (``idle``,
``fault``, ...) and ends when it is ``running`` again; going through a planned state or losing
data cancels it. A stop shorter (wall time) than ``micro_stop_max_s`` is a micro-stop, counted in
the window in which it ends with the part of its loss time that lies in that window. Micro-stops
stay availability losses; they are an extra breakdown.

Energy. An energy meter's deltas are handled like part counters (wrap, reset, restarts) and
count in the windows open when the meter sample that shows them arrives. A delta is split over
the states of the time since the previous meter sample in proportion to their durations, with the
same buckets and precedence as time (``running``, a loss state, ``planned_stop`` for calendar
stops and planned states, ``unknown`` without data).

Reliability. A fault *starts* when the state becomes ``fault`` from a known state other than
``fault`` (a fault seen again after an outage that began in ``fault`` is the same fault), at a
time inside the window's planned production time; it counts in each window in which it starts.

Orders. The current order comes from PLC tags (a new id starts a new order) or from
:meth:`LineEngine.command`; the latest wins. Parts and energy count for the order that is
current when they are counted. ``order/closed`` is emitted once per order: when its good
quantity reaches the target, or when it is replaced or cleared before that. An order tag whose
value cannot be an order's (a target that is negative, not a number or above
:data:`~edge_agent.engine.orders.MAX_ORDER_QUANTITY`, an id or product too long) is bad data: the
order stays as it was, the ``order`` payload carries the warning ``order_tag_invalid`` and one
notice says so. An ETA beyond the year 9999 is ``null`` with the warning ``eta_out_of_range``.

Readings. A counter or meter value of magnitude :data:`MAX_READING` or more is no PLC's count: it
is an unusable value (as bad quality is), so no sum or rate ever overflows.

Notices. What an operator should read in the agent's log (a rejected command, an order tag's
bad data and its recovery), once per event: :meth:`LineEngine.take_notices`. The engine itself
does no logging.

Reports. The engine returns typed reports (:mod:`edge_agent.engine.reports`); what they
become on the wire (topics, retain flags, QoS, JSON) is :mod:`edge_agent.contract`'s business.

Persistence contract: store :meth:`LineEngine.state_dict` (:mod:`edge_agent.engine.persist`)
together with (in the same transaction as) the reports that :meth:`LineEngine.tick` returned;
otherwise a crash in between repeats or loses a closed shift's report.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from edge_agent.config.schema import EnergyUnit, LineConfig, MachineState
from edge_agent.engine import persist
from edge_agent.engine.counters import CounterTracker, MeterTracker
from edge_agent.engine.oee import LOSS_STATES, Accounting, TimeBuckets, compute_kpis
from edge_agent.engine.orders import (
    RATE_WINDOW_S,
    EnergyFigures,
    Order,
    ParsedCommand,
    energy_fields,
    energy_figures,
    parse_order_command,
    time_to_complete_s,
)
from edge_agent.engine.payload import (
    iso,
    iso_if_representable,
    kpi_report,
    state_change,
    window_ref,
)
from edge_agent.engine.reports import (
    CommandReply,
    EnergyReport,
    KpiReport,
    OrderClosed,
    OrderReport,
    ProductRow,
    Report,
)
from edge_agent.engine.shifts import HOUR, OFF_SHIFT, SHIFT, ShiftCalendar, Window, hour_window
from edge_agent.engine.signals import (
    ORDER_KINDS,
    ORDER_TAG_NAMES,
    SIG_ENERGY,
    SIG_GOOD,
    SIG_ORDER_ID,
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
    order_value,
)
from edge_agent.engine.windows import OpenWindow
from edge_agent.model import Quality, Sample, Value

_REPORTED = (SHIFT, HOUR)  # the window kinds whose close makes a final report
# Micro-stop threshold without micro_stop_max: max(this, 2 × stop_after).
DEFAULT_MICRO_STOP_MIN_S = 60.0

_AGENT = persist.AGENT_CAUSE  # unknown cause: the engine did not observe (not started or restarted)
_SOURCE = "source:"  # unknown cause prefix: a source is down
# After an outage longer than this the engine does not report every missed shift one by one.
MAX_CATCHUP_S = 14 * 86400.0
MAX_NOTICES = 100  # notices kept until take_notices()


class LineEngine:
    """KPIs of one production line. See the module docstring for the time model."""

    def __init__(self, cfg: LineConfig, *, site: str, orders: bool = False) -> None:
        """``orders``: publish the ``order`` topic even without an order signal (order
        commands are enabled)."""
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
        self._planned_states = frozenset(cfg.planned_states)

        sig = cfg.signals
        kinds: dict[str, int] = {}
        self._state_map: dict[int, MachineState] = {}
        if sig.state is not None:
            kinds[sig.state.tag] = SIG_STATE
            self._state_map = dict(sig.state.map)
            self._state_kind = SIG_STATE
        elif sig.running is not None:
            kinds[sig.running] = SIG_RUNNING
            self._state_kind = SIG_RUNNING
        else:
            self._state_kind = SIG_TOTAL  # inferred from the counter
        self._reason_map: dict[int, str] = dict(sig.reason.map) if sig.reason else {}
        if sig.reason is not None:
            kinds[sig.reason.tag] = SIG_REASON
        self._products = dict(sig.product.map) if sig.product is not None else None
        if sig.product is not None:
            kinds[sig.product.tag] = SIG_PRODUCT
        self._energy_sig = sig.energy
        self._kwh_per_unit = 0.001 if sig.energy and sig.energy.unit is EnergyUnit.WH else 1.0
        self._meter: MeterTracker | None = None
        if sig.energy is not None:
            kinds[sig.energy.tag] = SIG_ENERGY
            max_kw = sig.energy.max_power_kw
            self._meter = MeterTracker(
                sig.energy.rollover,
                None if max_kw is None else max_kw / 3600.0 / self._kwh_per_unit,
                # slack: a few seconds at full power, for polling jitter
                slack=0.0 if max_kw is None else 10.0 * max_kw / 3600.0 / self._kwh_per_unit,
            )
        if sig.power is not None:
            kinds[sig.power] = SIG_POWER
        self._emission = cfg.emission_factor
        self._orders_on = orders or sig.order is not None
        if sig.order is not None:
            for kind, tag in zip(
                ORDER_KINDS, (sig.order.id, sig.order.target, sig.order.product), strict=True
            ):
                if tag is not None:
                    kinds[tag] = kind
        kinds[sig.total_count.tag] = SIG_TOTAL
        counters = {SIG_TOTAL: sig.total_count}
        if sig.reject_count is not None:
            kinds[sig.reject_count.tag] = SIG_REJECT
            counters[SIG_REJECT] = sig.reject_count
        elif sig.good_count is not None:
            kinds[sig.good_count.tag] = SIG_GOOD
            counters[SIG_GOOD] = sig.good_count
        self._counter_signals = counters
        # Wrap plausibility uses the fastest rate the line may run at.
        self._fastest_s = min(
            [self._ideal_s, *(p.ideal_cycle_time_s for p in (self._products or {}).values())]
        )
        self._trackers = {
            k: CounterTracker(c.rollover, self._fastest_s) for k, c in counters.items()
        }
        self._second_counter = (
            SIG_REJECT if SIG_REJECT in counters else SIG_GOOD if SIG_GOOD in counters else None
        )

        # source -> tag -> (kind, key), for every way "SOURCE.TAG" can split at a dot, so that a
        # sample matches exactly when f"{source}.{tag}" == key, without building that string.
        self._lookup: dict[str, dict[str, tuple[int, str]]] = {}
        self._source_keys: dict[str, list[tuple[int, str]]] = {}
        for key, kind in kinds.items():
            for i, ch in enumerate(key):
                if ch == ".":
                    self._lookup.setdefault(key[:i], {})[key[i + 1 :]] = (kind, key)
                    self._source_keys.setdefault(key[:i], []).append((kind, key))

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
        # Energy: time by bucket since the last meter sample, to split the next delta over.
        self._energy_time: dict[str, float] = {}
        self._meter_kwh: float | None = None  # last reading, in kWh
        self._power_kw: float | None = None
        self._last_known_state = MachineState.UNKNOWN  # the state before an unknown spell
        # Orders: the current one, the PLC's order tags, good parts per minute bin.
        self._order: Order | None = None
        self._plc_order: list[Any] = [None, None, None]  # id, target, product
        self._bad_order_tags: set[str] = set()  # order tags whose last value was bad data
        self._notices: list[str] = []  # for the log: take_notices()
        # Current throughput: (time, slot, delta) of the counter deltas of the last
        # RATE_WINDOW_S and their sums by slot. Not persisted: after a restart the rate is
        # measured afresh (the first delta after it may hold the parts of the whole gap).
        self._recent: deque[tuple[float, int, int]] = deque()
        self._recent_sums = [0, 0]
        self._rate_kinds: set[int] = set()  # counters seen since start: later deltas are rates
        self._rate_since: float | None = None

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
            return
        entry = tags.get(sample.tag)
        if entry is None:
            return
        kind, key = entry
        t = self._advance(sample.agent_time)
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
            d = self._trackers[kind].update(count, t, reset_hint=hint)
            if d.wrapped:
                self._flag("counter_wrap")
            if d.reset:
                self._flag("counter_reset")
            if self._rate_since is None:
                self._rate_since = t
            if d.delta:
                self._count(kind, d.delta, t, rate=kind in self._rate_kinds)
            self._rate_kinds.add(kind)
            if kind == SIG_TOTAL and self._state_kind == SIG_TOTAL:
                self._infer(d.delta, t)
        elif kind == SIG_STATE:
            if not good:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            code = as_code(sample.value)
            state = self._state_map.get(code) if code is not None else None
            if state is None:
                self._flag("unmapped_state_code")
                state = MachineState.UNKNOWN
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
            self._power_kw = as_float(sample.value) if good else None
        elif good:  # order tags: a bad sample keeps the order as it was
            self._order_tag(kind, key, sample.value, t)

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
                    self._power_kw = None
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
        if self._energy_sig is not None:
            out.append(self.energy_snapshot(now))
        if self._orders_on:
            out.append(self.order_snapshot(now))
        return out

    def energy_snapshot(self, now: float) -> EnergyReport:
        """The live energy report of the open shift window."""
        t = self._advance(now)
        assert self._shift is not None
        o = self._shift
        good = sum(r[2] for r in self._product_rows(o))
        return EnergyReport(
            site=self.site,
            line=self.line,
            window=window_ref(o.window, self._tz),
            ts=iso(t, self._tz),
            state=str(self._state),
            meter_kwh=None if self._meter_kwh is None else round(self._meter_kwh, 6),
            power_kw=None if self._power_kw is None else round(self._power_kw, 6),
            good_count=good,
            energy=energy_fields(self._energy_of(o.energy, good)),
            warnings=tuple(sorted(f for f in o.flags if f.startswith("energy_"))),
        )

    def order_snapshot(self, now: float) -> OrderReport:
        """The live order report: the current order with remaining quantity and ETAs;
        ``order_id`` ``None`` when there is none."""
        return self._order_report(self._advance(now))

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
            self._set_order(
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

    def _advance(self, now: float) -> float:
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
        """Cut at the window's end, report it if it is a shift or an hour, and stop feeding it."""
        w = o.window
        self._cut(w.end)
        if w.kind in _REPORTED:
            self._pending.append(self._report(o, w.end, closed=True))
        if o is self._hour:
            self._hour = None
        elif o is self._shift:
            self._shift = None

    def _cut(self, t: float) -> None:
        """Close the current piece at ``t`` into every open window."""
        a = self._piece_start
        if t > a:
            unknown = bool(self._causes)
            stopping = self._stop_since is not None
            for o in self._opens():
                loss_s = o.acc.add(a, t, self._state, unknown, self._reason)
                if stopping:
                    o.micro_pending_s += loss_s
            if self._meter is not None and self._meter.last_value is not None and self._shift:
                # Time by bucket since the last meter sample: the next delta is split over it.
                bucket, in_plan, outside = self._shift.acc.classify(a, t, self._state, unknown)
                et = self._energy_time
                if in_plan > 0:
                    et[bucket] = et.get(bucket, 0.0) + in_plan
                if outside > 0:
                    et["planned_stop"] = et.get("planned_stop", 0.0) + outside
            self._piece_start = t

    def _open_piece(self) -> tuple[float, MachineState, bool, str | None]:
        return (self._piece_start, self._state, bool(self._causes), self._reason)

    def _set_state(self, state: MachineState, t: float) -> None:
        if state is self._state:
            return
        self._cut(t)
        previous = self._state
        self._state, self._state_since = state, t
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
        return state in LOSS_STATES and state not in self._planned_states

    def _track_stop(self, previous: MachineState, state: MachineState, t: float) -> None:
        """Micro-stop bookkeeping on a state change (see the module docstring)."""
        if state is MachineState.RUNNING:
            if self._stop_since is not None and t - self._stop_since < self._micro_max_s:
                for o in self._opens():
                    if o.micro_pending_s > 0:  # no loss time here: not this window's stop
                        o.micro_count += 1
                        o.micro_s += o.micro_pending_s
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

    def _count(self, kind: int, delta: int, t: float, *, rate: bool = True) -> None:
        product = self._current_product(t) if self._products is not None else None
        slot = 0 if kind == SIG_TOTAL else 1
        for o in self._opens():
            entry = o.counts.get(product)
            if entry is None:
                entry = o.counts[product] = [0, 0]
            entry[slot] += delta
        self._count_order(slot, delta, t, rate)
        if product is not None and self._products is not None and product not in self._products:
            self._flag("unmapped_product_code")

    def _add_cause(self, cause: str, t: float) -> None:
        if cause in self._causes:
            return
        if not self._causes:
            self._cut(t)
            self._cancel_stop()  # a stop whose end cannot be seen is not a micro-stop
        self._causes.add(cause)

    def _remove_cause(self, cause: str, t: float) -> None:
        if cause not in self._causes:
            return
        if len(self._causes) == 1:
            self._cut(t)
        self._causes.discard(cause)

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
        meter = self._meter
        assert meter is not None
        baseline = meter.last_value is None
        self._cut(t)  # the time up to t joins _energy_time
        d = meter.update(reading, t)
        self._meter_kwh = reading * self._kwh_per_unit
        if d.wrapped:
            self._flag("energy_meter_wrap")
        if d.reset:
            self._flag("energy_meter_reset")
        shares: dict[str, float] = {}
        if not baseline and d.delta > 0:
            kwh = d.delta * self._kwh_per_unit
            total_s = sum(self._energy_time.values())
            if total_s > 0:
                # Proportional split: each bucket gets the delta × its share of the time.
                shares = {k: kwh * v / total_s for k, v in self._energy_time.items() if v > 0}
            else:  # two readings at one instant: the state at that instant
                shares = {str(self._state): kwh}
        self._energy_time = {}
        for o in self._opens():
            for k, v in shares.items():
                o.energy[k] = o.energy.get(k, 0.0) + v
        order = self._order
        if order is not None:
            for k, v in shares.items():
                order.energy_by_state_kwh[k] = order.energy_by_state_kwh.get(k, 0.0) + v
                order.energy_kwh += v

    def _energy_of(self, by_state: dict[str, float], good: int) -> EnergyFigures:
        kwh = sum(by_state.values()) if self._energy_sig is not None else None
        return energy_figures(kwh, by_state, good, self._emission)

    # --- orders --------------------------------------------------------------------------------

    def _order_tag(self, kind: int, key: str, value: Value, t: float) -> None:
        """A PLC order tag's new value: a new id starts an order (the target and product tags
        of the same poll update it as they arrive); a target or product changes the order. A
        value that cannot be an order's is bad data: the order stays as it was."""
        slot = kind - SIG_ORDER_ID
        new, problem = order_value(kind, value)
        name = ORDER_TAG_NAMES[kind]
        if problem is not None:
            if key not in self._bad_order_tags:
                self._bad_order_tags.add(key)
                shown = ascii(value)
                shown = shown if len(shown) <= 40 else shown[:40] + "..."
                self._notice(
                    f"order {name} tag {key} reads {shown}: {problem}; ignored as bad data,"
                    " the order stays as it was"
                )
            return
        if key in self._bad_order_tags:
            self._bad_order_tags.discard(key)
            self._notice(f"order {name} tag {key} reads a usable value again")
        if self._plc_order[slot] == new:
            return
        self._plc_order[slot] = new
        order_id, target, product = self._plc_order
        current = self._order
        if kind == SIG_ORDER_ID:
            if order_id is None:
                self._set_order(None, None, None, "plc", t)
            else:
                self._set_order(order_id, product, target, "plc", t)
        elif current is not None and current.source == "plc" and current.order_id == order_id:
            self._set_order(current.order_id, product, target, "plc", t)

    def _set_order(
        self, order_id: str | None, product: str | None, target: int | None, source: str, t: float
    ) -> None:
        """Make ``order_id`` the current order (``None``: no order). The same id keeps its
        counts and takes the new product and target; another id closes the current order."""
        current = self._order
        if current is not None and order_id == current.order_id:
            current.product, current.target, current.source = product, target, source
            self._check_target(t)
            return
        if current is not None:
            self._close_order(current, "order_changed" if order_id else "order_cleared", t)
        self._order = None if order_id is None else Order(order_id, product, target, source, t)
        if self._orders_on:
            self._pending.append(self._order_report(t))

    def _count_order(self, slot: int, delta: int, t: float, rate: bool) -> None:
        order = self._order
        if order is not None:
            order.counts[slot] += delta
            self._check_target(t)
        if rate:
            self._recent.append((t, slot, delta))
            self._recent_sums[slot] += delta
            self._prune_recent(t)

    def _prune_recent(self, now: float) -> None:
        recent, sums = self._recent, self._recent_sums
        while recent and recent[0][0] <= now - RATE_WINDOW_S:
            _, slot, delta = recent.popleft()
            sums[slot] -= delta

    def _good_of(self, total: int, second: int) -> int:
        if self._second_counter == SIG_REJECT:
            return total - min(second, total)
        if self._second_counter == SIG_GOOD:
            return min(second, total)
        return total

    def _check_target(self, t: float) -> None:
        order = self._order
        if order is None or order.closed or order.target is None:
            return
        if self._good_of(*order.counts) >= order.target:
            self._close_order(order, "target_reached", t)

    def _close_order(self, order: Order, reason: str, t: float) -> None:
        if order.closed:
            return
        order.closed = True
        total, second = order.counts
        good = self._good_of(total, second)
        self._pending.append(
            OrderClosed(
                site=self.site,
                line=self.line,
                ts=iso(t, self._tz),
                order_id=order.order_id,
                product=order.product,
                source=order.source,
                reason=reason,
                target_quantity=order.target,
                total_count=total,
                good_count=good,
                reject_count=total - good,
                started=iso(order.started, self._tz),
                duration_s=round(max(t - order.started, 0.0), 3),
                energy=energy_fields(self._energy_of(order.energy_by_state_kwh, good)),
            )
        )

    def current_throughput_good_per_h(self, now: float) -> float | None:
        """Good parts per hour counted in ``(now − RATE_WINDOW_S, now]``, over that span or the
        time since the first counter sample if shorter; ``None`` before it."""
        if self._rate_since is None:
            return None
        self._prune_recent(now)
        span_s = min(RATE_WINDOW_S, now - self._rate_since)
        if span_s <= 0:
            return None
        return self._good_of(*self._recent_sums) / span_s * 3600.0

    def _order_report(self, t: float) -> OrderReport:
        order = self._order
        assert self._shift is not None
        shift_good = sum(r[2] for r in self._product_rows(self._shift))
        elapsed_h = (t - self._shift.window.start) / 3600.0
        shift_rate = shift_good / elapsed_h if elapsed_h > 0 else None
        current_rate = self.current_throughput_good_per_h(t)
        warnings = ["order_tag_invalid"] if self._bad_order_tags else []
        ts = iso(t, self._tz)
        current = None if current_rate is None else round(current_rate, 3)
        shift = None if shift_rate is None else round(shift_rate, 3)
        if order is None:
            return OrderReport(
                site=self.site,
                line=self.line,
                ts=ts,
                throughput_current_good_per_h=current,
                throughput_shift_good_per_h=shift,
                warnings=tuple(warnings),
                order_id=None,
                status="none",
                product=None,
                source=None,
                target_quantity=None,
                total_count=0,
                good_count=0,
                reject_count=0,
                remaining_quantity=None,
                started=None,
                time_to_complete_current_s=None,
                time_to_complete_shift_average_s=None,
                eta_current=None,
                eta_shift_average=None,
                energy=energy_fields(self._energy_of({}, 0)),
            )
        total, second = order.counts
        good = self._good_of(total, second)
        remaining = None if order.target is None else max(order.target - good, 0)
        ttc_current = time_to_complete_s(remaining, current_rate)
        ttc_shift = time_to_complete_s(remaining, shift_rate)
        # An ETA too far ahead to be written as a date: the time to complete stands, the ETA
        # is not invented.
        eta_current = (
            None if ttc_current is None else iso_if_representable(t + ttc_current, self._tz)
        )
        eta_shift = None if ttc_shift is None else iso_if_representable(t + ttc_shift, self._tz)
        if (eta_current is None and ttc_current is not None) or (
            eta_shift is None and ttc_shift is not None
        ):
            warnings.append("eta_out_of_range")
        return OrderReport(
            site=self.site,
            line=self.line,
            ts=ts,
            throughput_current_good_per_h=current,
            throughput_shift_good_per_h=shift,
            warnings=tuple(warnings),
            order_id=order.order_id,
            status="completed" if order.closed or remaining == 0 else "in_progress",
            product=order.product,
            source=order.source,
            target_quantity=order.target,
            total_count=total,
            good_count=good,
            reject_count=total - good,
            remaining_quantity=remaining,
            started=iso(order.started, self._tz),
            time_to_complete_current_s=None if ttc_current is None else round(ttc_current, 3),
            time_to_complete_shift_average_s=None if ttc_shift is None else round(ttc_shift, 3),
            eta_current=eta_current,
            eta_shift_average=eta_shift,
            energy=energy_fields(self._energy_of(order.energy_by_state_kwh, good)),
        )

    def _product_rows(self, o: OpenWindow) -> list[tuple[int | None, int, int, int]]:
        """(product code, total, good, reject) per product of a window. A reject (good) delta
        that arrives in the window before its total delta is capped so that good and reject are
        never negative."""
        rows = []
        for code, (total, second) in o.counts.items():
            if self._second_counter == SIG_REJECT:
                reject = min(second, total)
                rows.append((code, total, total - reject, reject))
            elif self._second_counter == SIG_GOOD:
                good = min(second, total)
                rows.append((code, total, good, total - good))
            else:
                rows.append((code, total, total, 0))
        rows.sort(key=lambda r: (r[0] is not None, r[0] or 0))
        return rows

    def _ideal_of(self, code: int | None) -> float:
        product = self._products.get(code) if self._products and code is not None else None
        return product.ideal_cycle_time_s if product is not None else self._ideal_s

    def _buckets(self, o: OpenWindow, until: float) -> TimeBuckets:
        return o.acc.buckets(until, self._open_piece())

    def _report(self, o: OpenWindow, now: float, *, closed: bool = False) -> KpiReport:
        w = o.window
        buckets = self._buckets(o, now)
        rows = self._product_rows(o)
        total = sum(r[1] for r in rows)
        good = sum(r[2] for r in rows)
        reject = sum(r[3] for r in rows)
        net_s = sum(self._ideal_of(r[0]) * r[1] for r in rows)
        fpt_s = sum(self._ideal_of(r[0]) * r[2] for r in rows)
        # The count-weighted ideal cycle time keeps performance = ideal × total / run true.
        ideal_s = net_s / total if self._products is not None and total > 0 else self._ideal_s
        kpis = compute_kpis(
            buckets,
            total_count=total,
            good_count=good,
            ideal_cycle_time_s=ideal_s,
            net_run_time_s=net_s,
            fully_productive_time_s=fpt_s,
            ratios=w.kind == SHIFT or (w.kind == HOUR and bool(o.acc.planned)),
            min_data_coverage=self._min_coverage,
        )
        products = None
        if self._products is not None:
            products = []
            for code, p_total, p_good, p_reject in rows:
                mapped = self._products.get(code) if code is not None else None
                products.append(
                    ProductRow(
                        product=mapped.name
                        if mapped
                        else (None if code is None else f"code {code}"),
                        code=code,
                        ideal_cycle_time_s=self._ideal_of(code),
                        total_count=p_total,
                        good_count=p_good,
                        reject_count=p_reject,
                    )
                )
        return kpi_report(
            site=self.site,
            line=self.line,
            tz=self._tz,
            window=w,
            now=now,
            state=self._state,
            planned_states=self._planned_states,
            ideal_cycle_time_s=ideal_s,
            buckets=buckets,
            kpis=kpis,
            total_count=total,
            good_count=good,
            reject_count=reject,
            net_run_time_s=net_s,
            fully_productive_time_s=fpt_s,
            micro_stop_count=o.micro_count,
            micro_stop_time_s=o.micro_s,
            products=products,
            flags=o.flags,
            energy=self._energy_of(o.energy, good),
            fault_count=o.fault_count,
            closed=closed,
        )
