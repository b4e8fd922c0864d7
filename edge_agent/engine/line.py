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

Counts. Parts count in the window in which the counter sample that shows them arrives; a
counter's baseline survives restarts, so parts made while the agent was down are counted once, in
the first window after the restart.

Persistence contract: store :meth:`LineEngine.state_dict` together with (in the same transaction
as) the messages that :meth:`LineEngine.tick` returned; otherwise a crash in between repeats or
loses a ``kpi/shift`` report.
"""

from __future__ import annotations

import math
from typing import Any

from edge_agent.config.schema import LineConfig, MachineState
from edge_agent.engine.counters import CounterTracker
from edge_agent.engine.oee import Accounting, TimeBuckets, compute_kpis
from edge_agent.engine.payload import kpi_payload, state_payload
from edge_agent.engine.shifts import SHIFT, ShiftCalendar, Window
from edge_agent.model import OutMessage, Quality, Sample, Value

STATE_VERSION = 1

# Signal kinds (small ints: ingest() is on the hot path).
_STATE, _RUNNING, _TOTAL, _REJECT, _GOOD = range(5)
_COUNTER_NAMES = {_TOTAL: "total", _REJECT: "reject", _GOOD: "good"}

_AGENT = "agent"  # unknown cause: the engine did not observe (not started yet, or restarted)
_SOURCE = "source:"  # unknown cause prefix: a source is down
# After an outage longer than this the engine does not report every missed shift one by one.
MAX_CATCHUP_S = 14 * 86400.0


def _as_count(value: Value) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value) if math.isfinite(value) else None
    try:
        return round(float(value))
    except ValueError:
        return None


def _as_code(value: Value) -> int | None:
    if isinstance(value, int):  # bool included: True is 1
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _as_bool(value: Value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
    return None


class LineEngine:
    """KPIs of one production line. See the module docstring for the time model."""

    def __init__(self, cfg: LineConfig, *, site: str) -> None:
        self.cfg = cfg
        self.site = site
        self.line = cfg.name
        self.calendar = ShiftCalendar(cfg.timezone, cfg.shifts)
        self._tz = self.calendar.tz
        self._ideal_s = cfg.ideal_cycle_time_s
        self._stop_after_s = (
            cfg.stop_after_s if cfg.stop_after_s is not None else 5.0 * cfg.ideal_cycle_time_s
        )
        self._planned_states = frozenset(cfg.planned_states)

        sig = cfg.signals
        kinds: dict[str, int] = {}
        self._state_map: dict[int, MachineState] = {}
        if sig.state is not None:
            kinds[sig.state.tag] = _STATE
            self._state_map = dict(sig.state.map)
            self._state_kind = _STATE
        elif sig.running is not None:
            kinds[sig.running] = _RUNNING
            self._state_kind = _RUNNING
        else:
            self._state_kind = _TOTAL  # inferred from the counter
        kinds[sig.total_count.tag] = _TOTAL
        counters = {_TOTAL: sig.total_count}
        if sig.reject_count is not None:
            kinds[sig.reject_count.tag] = _REJECT
            counters[_REJECT] = sig.reject_count
        elif sig.good_count is not None:
            kinds[sig.good_count.tag] = _GOOD
            counters[_GOOD] = sig.good_count
        self._counter_signals = counters
        self._trackers = {k: CounterTracker(c.rollover, self._ideal_s) for k, c in counters.items()}
        self._second_counter = (
            _REJECT if _REJECT in counters else _GOOD if _GOOD in counters else None
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
        self._window: Window | None = None
        self._acc: Accounting | None = None
        self._piece_start = 0.0
        self._state = MachineState.UNKNOWN
        self._state_since: float | None = None
        self._causes: set[str] = {_AGENT}
        self._idle_at: float | None = None  # inferred state: idle at this time without a part
        self._reset_hints: set[int] = set()
        self._counts = {_TOTAL: 0, _REJECT: 0, _GOOD: 0}
        self._flags: set[str] = set()
        self._pending: list[OutMessage] = []
        self._last_report: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- public API

    @property
    def state(self) -> MachineState:
        """The current machine state (``unknown`` while the state's signal is unavailable)."""
        return self._state

    @property
    def last_report(self) -> dict[str, Any] | None:
        """The payload of the last :meth:`snapshot`, for metrics."""
        return self._last_report

    @property
    def window(self) -> Window | None:
        """The open window (``None`` before the first input)."""
        return self._window

    def time_buckets(self) -> TimeBuckets | None:
        """The open window's time buckets at the engine's time, unrounded (``None`` before the
        first input). Read-only: does not move time."""
        if self._now is None or self._window is None:
            return None
        return self._buckets(self._now)

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
        if kind >= _TOTAL:
            count = _as_count(sample.value) if good else None
            if count is None:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            hint = kind in self._reset_hints
            if hint:
                self._reset_hints.discard(kind)
            d = self._trackers[kind].update(count, t, reset_hint=hint)
            if d.wrapped:
                self._flags.add("counter_wrap")
            if d.reset:
                self._flags.add("counter_reset")
            self._counts[kind] += d.delta
            if kind == _TOTAL and self._state_kind == _TOTAL:
                self._infer(d.delta, t)
        elif kind == _STATE:
            if not good:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            code = _as_code(sample.value)
            state = self._state_map.get(code) if code is not None else None
            if state is None:
                self._flags.add("unmapped_state_code")
                state = MachineState.UNKNOWN
            self._set_state(state, t)
        else:  # _RUNNING
            running = _as_bool(sample.value) if good else None
            if running is None:
                self._data_lost(key, kind, t)
                return
            self._data_ok(key, t)
            self._set_state(MachineState.RUNNING if running else MachineState.IDLE, t)

    def source_available(self, source: str, available: bool, now: float) -> None:
        """The supervisor's word that ``source`` went down or came back. While it is down, all
        time is unknown for this line (if it uses the source); after it comes back, the state
        stays unknown until a fresh sample of the state's signal."""
        keys = self._source_keys.get(source)
        if not keys:
            return
        t = self._advance(now)
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
            if kind >= _TOTAL:
                self._reset_hints.add(kind)

    def tick(self, now: float) -> list[OutMessage]:
        """Advance time to ``now``; return the messages due since the last call, in time order:
        ``kpi/shift`` for each closed shift (QoS 1, not retained) and ``state`` for each state
        change (retained)."""
        self._advance(now)
        out, self._pending = self._pending, []
        return out

    def snapshot(self, now: float) -> OutMessage:
        """The live ``kpi`` report of the open window at ``now`` (retained), also off shift.

        Messages due from advancing time are kept for the next :meth:`tick`."""
        t = self._advance(now)
        payload = self._report(t)
        self._last_report = payload
        return OutMessage(line=self.line, topic_suffix="kpi", payload=payload, retain=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, JSON-serialisable: counter baselines,
        the open window's accumulators and counts, the current state, undelivered messages."""
        d: dict[str, Any] = {
            "version": STATE_VERSION,
            "line": self.line,
            "now": self._now,
            "state": str(self._state),
            "state_since": self._state_since,
            "idle_at": self._idle_at,
            "counters": {
                _COUNTER_NAMES[k]: {"tag": self._counter_signals[k].tag, **tr.state_dict()}
                for k, tr in self._trackers.items()
            },
            "pending": [
                {
                    "topic_suffix": m.topic_suffix,
                    "payload": m.payload,
                    "retain": m.retain,
                    "qos": m.qos,
                }
                for m in self._pending
            ],
            "window": None,
        }
        if self._window is not None and self._acc is not None and self._now is not None:
            w = self._window
            acc = self._acc.folded(self._now, (self._piece_start, self._state, bool(self._causes)))
            d["window"] = {"kind": w.kind, "name": w.name, "start": w.start, "end": w.end}
            d["accounting"] = acc.state_dict()
            d["counts"] = {_COUNTER_NAMES[k]: v for k, v in self._counts.items()}
            d["flags"] = sorted(self._flags)
        return d

    def restore(self, d: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`. Time between the saved moment and the next input is
        unknown (the agent was not observing). Call before the first input.

        Raises ``ValueError`` if ``d`` is from another line or another format version."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported engine state version {d.get('version')!r}")
        if d.get("line") != self.line:
            raise ValueError(f"engine state is for line {d.get('line')!r}, not {self.line!r}")
        names = {v: k for k, v in _COUNTER_NAMES.items()}
        for name, saved in (d.get("counters") or {}).items():
            kind = names.get(name)
            sig = self._counter_signals.get(kind) if kind is not None else None
            if kind is None or sig is None or saved.get("tag") != sig.tag:
                continue  # the counter was reconfigured: its old baseline means nothing
            self._trackers[kind] = CounterTracker.from_state(saved, sig.rollover, self._ideal_s)
        self._pending = [
            OutMessage(
                line=self.line,
                topic_suffix=m["topic_suffix"],
                payload=m["payload"],
                retain=bool(m["retain"]),
                qos=int(m["qos"]),
            )
            for m in d.get("pending", [])
        ]
        now = d.get("now")
        if now is None:
            return
        self._now = float(now)
        self._state = MachineState(d.get("state", "unknown"))
        since = d.get("state_since")
        self._state_since = float(since) if since is not None else None
        idle_at = d.get("idle_at")
        self._idle_at = float(idle_at) if idle_at is not None else None
        self._causes = {_AGENT}
        self._piece_start = self._now
        w = d.get("window")
        if w is not None:
            self._window = Window(
                kind=w["kind"], name=w["name"], start=float(w["start"]), end=float(w["end"])
            )
            self._acc = Accounting.from_state(d["accounting"], self._planned_states)
            counts = d.get("counts", {})
            self._counts = {k: int(counts.get(n, 0)) for k, n in _COUNTER_NAMES.items()}
            self._flags = set(d.get("flags", []))

    # ------------------------------------------------------------------------------ internals

    def _advance(self, now: float) -> float:
        """Move time to ``now`` (never backwards): apply inferred idle transitions and close
        windows that ended, in time order. Returns the engine's time."""
        t = now if self._now is None or now >= self._now else self._now
        if self._window is None:
            self._open_window(t)
        while True:
            w = self._window
            assert w is not None
            idle_at = self._idle_at
            if idle_at is not None and idle_at <= t and idle_at <= w.end:
                self._idle_at = None
                self._set_state(MachineState.IDLE, idle_at)
                continue
            if w.end > t:
                break
            self._close_window(jump_to=t if t - w.end > MAX_CATCHUP_S else None)
        self._now = t
        if _AGENT in self._causes:
            self._remove_cause(_AGENT, t)
        return t

    def _open_window(self, t: float) -> None:
        w = self.calendar.window_or_off_shift(t)
        acc = Accounting(w.start, w.end, self.calendar.planned_intervals(w), self._planned_states)
        # Time of the window before the engine saw it: not observed, hence unknown.
        acc.add(w.start, t, MachineState.UNKNOWN, True)
        self._window, self._acc, self._piece_start = w, acc, t
        self._counts = dict.fromkeys(self._counts, 0)
        self._flags = set()

    def _close_window(self, *, jump_to: float | None) -> None:
        w = self._window
        assert w is not None
        self._cut(w.end)
        if w.kind == SHIFT:
            payload = self._report(w.end)
            self._pending.append(
                OutMessage(line=self.line, topic_suffix="kpi/shift", payload=payload, retain=False)
            )
        self._open_window(w.end if jump_to is None else jump_to)

    def _cut(self, t: float) -> None:
        """Close the current piece at ``t``."""
        if t > self._piece_start:
            assert self._acc is not None
            self._acc.add(self._piece_start, t, self._state, bool(self._causes))
            self._piece_start = t

    def _set_state(self, state: MachineState, t: float) -> None:
        if state is self._state:
            return
        self._cut(t)
        previous = self._state
        self._state, self._state_since = state, t
        payload = state_payload(
            site=self.site,
            line=self.line,
            tz=self._tz,
            ts=t,
            state=state,
            previous_state=previous,
            since=t,
        )
        self._pending.append(
            OutMessage(line=self.line, topic_suffix="state", payload=payload, retain=True)
        )

    def _add_cause(self, cause: str, t: float) -> None:
        if cause in self._causes:
            return
        if not self._causes:
            self._cut(t)
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

    def _counts_out(self) -> tuple[int, int, int]:
        """(total, good, reject) of the open window. A reject (good) delta that arrives in the
        window before its total delta is capped so that good and reject are never negative."""
        total = self._counts[_TOTAL]
        if self._second_counter == _REJECT:
            reject = min(self._counts[_REJECT], total)
            return total, total - reject, reject
        if self._second_counter == _GOOD:
            good = min(self._counts[_GOOD], total)
            return total, good, total - good
        return total, total, 0

    def _buckets(self, until: float) -> TimeBuckets:
        assert self._acc is not None
        return self._acc.buckets(until, (self._piece_start, self._state, bool(self._causes)))

    def _report(self, now: float) -> dict[str, Any]:
        w = self._window
        assert w is not None
        buckets = self._buckets(now)
        total, good, reject = self._counts_out()
        kpis = compute_kpis(
            buckets,
            total_count=total,
            good_count=good,
            ideal_cycle_time_s=self._ideal_s,
            ratios=w.kind == SHIFT,
        )
        return kpi_payload(
            site=self.site,
            line=self.line,
            tz=self._tz,
            window=w,
            now=now,
            state=self._state,
            planned_states=self._planned_states,
            ideal_cycle_time_s=self._ideal_s,
            buckets=buckets,
            kpis=kpis,
            total_count=total,
            good_count=good,
            reject_count=reject,
            flags=self._flags,
        )
