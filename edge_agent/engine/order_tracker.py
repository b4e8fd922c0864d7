"""The current production order of a line: from PLC order tags or order commands, its counts
and energy, its progress and ETAs, and its close (DESIGN §3, docs/kpi.md). Pure: no clock, no
I/O.

The current order comes from PLC tags (a new id starts a new order) or from an order command;
the latest wins. Parts and energy count for the order that is current when they are counted.
An order is closed (an :class:`~edge_agent.engine.reports.OrderClosed` report) once: when its
good quantity reaches the target, or when it is replaced or cleared before that.

Current throughput: good parts counted in the last :data:`RATE_WINDOW_S`, per hour. It is not
persisted: after a restart the rate is measured afresh (the first delta after it may hold the
parts of the whole gap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from edge_agent.engine.build import iso, iso_if_representable
from edge_agent.engine.energy import LineEnergy
from edge_agent.engine.orders import RATE_WINDOW_S, Order, time_to_complete_s
from edge_agent.engine.reports import OrderClosed, OrderReport, Report
from edge_agent.engine.signals import (
    ORDER_TAG_NAMES,
    SIG_GOOD,
    SIG_ORDER_ID,
    SIG_REJECT,
    order_value,
)
from edge_agent.model import Value


class OrderTracker:
    """The order side of one line engine."""

    def __init__(
        self,
        *,
        site: str,
        line: str,
        tz: ZoneInfo,
        second_counter: int | None,
        publish: bool,
        energy: LineEnergy,
        emit: Callable[[Report], None],
        notice: Callable[[str], None],
        shift_progress: Callable[[], tuple[int, float]],
    ) -> None:
        """``second_counter``: the line's reject or good counter kind (``None``: total only);
        ``publish``: emit an :class:`OrderReport` at every order change; ``emit``: takes the
        reports made; ``notice``: takes what the log should say; ``shift_progress``: the good
        count and start of the open shift window, for the shift-average rate."""
        self.site = site
        self.line = line
        self._tz = tz
        self._second = second_counter
        self.publish = publish
        self._energy = energy
        self._emit = emit
        self._notice = notice
        self._shift_progress = shift_progress
        self.order: Order | None = None
        self.plc_order: list[Any] = [None, None, None]  # id, target, product
        self.bad_tags: set[str] = set()  # order tags whose last value was bad data
        # (time, slot, delta) of the counter deltas of the last RATE_WINDOW_S and their sums by
        # slot (total, second counter).
        self.recent: deque[tuple[float, int, int]] = deque()
        self.recent_sums = [0, 0]
        self.rate_since: float | None = None
        self._rate_kinds: set[int] = set()  # counters seen since start: later deltas are rates

    def counter_seen(self, kind: int, t: float) -> bool:
        """A counter sample of ``kind`` at ``t``: whether its delta is a rate (the counter was
        seen before since the start, so the delta is not the parts of a gap)."""
        if self.rate_since is None:
            self.rate_since = t
        rate = kind in self._rate_kinds
        self._rate_kinds.add(kind)
        return rate

    def add_energy(self, shares: dict[str, float]) -> None:
        """kWh by state bucket, for the current order."""
        order = self.order
        if order is not None:
            for k, v in shares.items():
                order.energy_by_state_kwh[k] = order.energy_by_state_kwh.get(k, 0.0) + v
                order.energy_kwh += v

    def tag(self, kind: int, key: str, value: Value, t: float) -> None:
        """A PLC order tag's new value: a new id starts an order (the target and product tags
        of the same poll update it as they arrive); a target or product changes the order. A
        value that cannot be an order's is bad data: the order stays as it was."""
        slot = kind - SIG_ORDER_ID
        new, problem = order_value(kind, value)
        name = ORDER_TAG_NAMES[kind]
        if problem is not None:
            if key not in self.bad_tags:
                self.bad_tags.add(key)
                shown = ascii(value)
                shown = shown if len(shown) <= 40 else shown[:40] + "..."
                self._notice(
                    f"order {name} tag {key} reads {shown}: {problem}; ignored as bad data,"
                    " the order stays as it was"
                )
            return
        if key in self.bad_tags:
            self.bad_tags.discard(key)
            self._notice(f"order {name} tag {key} reads a usable value again")
        if self.plc_order[slot] == new:
            return
        self.plc_order[slot] = new
        order_id, target, product = self.plc_order
        current = self.order
        if kind == SIG_ORDER_ID:
            if order_id is None:
                self.set(None, None, None, "plc", t)
            else:
                self.set(order_id, product, target, "plc", t)
        elif current is not None and current.source == "plc" and current.order_id == order_id:
            self.set(current.order_id, product, target, "plc", t)

    def set(
        self, order_id: str | None, product: str | None, target: int | None, source: str, t: float
    ) -> None:
        """Make ``order_id`` the current order (``None``: no order). The same id keeps its
        counts and takes the new product and target; another id closes the current order."""
        current = self.order
        if current is not None and order_id == current.order_id:
            current.product, current.target, current.source = product, target, source
            self._check_target(t)
            return
        if current is not None:
            self._close(current, "order_changed" if order_id else "order_cleared", t)
        self.order = None if order_id is None else Order(order_id, product, target, source, t)
        if self.publish:
            self._emit(self.report(t))

    def count(self, slot: int, delta: int, t: float, rate: bool) -> None:
        order = self.order
        if order is not None:
            order.counts[slot] += delta
            self._check_target(t)
        if rate:
            self.recent.append((t, slot, delta))
            self.recent_sums[slot] += delta
            self._prune_recent(t)

    def _prune_recent(self, now: float) -> None:
        recent, sums = self.recent, self.recent_sums
        while recent and recent[0][0] <= now - RATE_WINDOW_S:
            _, slot, delta = recent.popleft()
            sums[slot] -= delta

    def good_of(self, total: int, second: int) -> int:
        if self._second == SIG_REJECT:
            return total - min(second, total)
        if self._second == SIG_GOOD:
            return min(second, total)
        return total

    def _check_target(self, t: float) -> None:
        order = self.order
        if order is None or order.closed or order.target is None:
            return
        if self.good_of(*order.counts) >= order.target:
            self._close(order, "target_reached", t)

    def _close(self, order: Order, reason: str, t: float) -> None:
        if order.closed:
            return
        order.closed = True
        total, second = order.counts
        good = self.good_of(total, second)
        self._emit(
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
                energy=self._energy.fields(order.energy_by_state_kwh, good, t),
            )
        )

    def current_throughput_good_per_h(self, now: float) -> float | None:
        """Good parts per hour counted in ``(now − RATE_WINDOW_S, now]``, over that span or the
        time since the first counter sample if shorter; ``None`` before it."""
        if self.rate_since is None:
            return None
        self._prune_recent(now)
        span_s = min(RATE_WINDOW_S, now - self.rate_since)
        if span_s <= 0:
            return None
        return self.good_of(*self.recent_sums) / span_s * 3600.0

    def report(self, t: float) -> OrderReport:
        order = self.order
        shift_good, shift_start = self._shift_progress()
        elapsed_h = (t - shift_start) / 3600.0
        shift_rate = shift_good / elapsed_h if elapsed_h > 0 else None
        current_rate = self.current_throughput_good_per_h(t)
        warnings = ["order_tag_invalid"] if self.bad_tags else []
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
                energy=self._energy.fields({}, 0, t),
            )
        total, second = order.counts
        good = self.good_of(total, second)
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
            energy=self._energy.fields(order.energy_by_state_kwh, good, t),
        )
