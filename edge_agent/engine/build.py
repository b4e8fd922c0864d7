"""The KPI and state reports (:class:`~edge_agent.engine.reports.KpiReport`,
:class:`~edge_agent.engine.reports.StateChange`) built from the engine's figures.

Times become ISO 8601 with the line's UTC offset here (and in the order and energy reports) and
only there; ratios are rounded to 6 decimals, seconds to 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from edge_agent.config.schema import Product
from edge_agent.domain import Convention, MachineState
from edge_agent.engine.energy import EnergyFigures, LineEnergy, energy_fields, energy_figures
from edge_agent.engine.oee import Kpis, TimeBuckets, compute_kpis
from edge_agent.engine.reports import KpiReport, ProductRow, ReasonTime, StateChange, WindowRef
from edge_agent.engine.shifts import HOUR, SHIFT, Window
from edge_agent.engine.windows import OpenWindow

# The latest time written as ISO 8601 with a four-digit year in any time zone (a day's margin
# for the UTC offset). Times computed from measured values (an ETA) may lie beyond it.
LATEST_ISO_TIME = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def iso(t: float, tz: ZoneInfo, timespec: str = "milliseconds") -> str:
    """``t`` (POSIX seconds) as ISO 8601 with the offset of ``tz`` at that moment."""
    return datetime.fromtimestamp(t, tz).isoformat(timespec=timespec)


def iso_if_representable(t: float, tz: ZoneInfo) -> str | None:
    """:func:`iso` of ``t``, or ``None`` unless ``t`` lies between 1970 and the year 9999 (an
    infinite or NaN ``t`` included)."""
    return iso(t, tz) if 0.0 <= t <= LATEST_ISO_TIME else None


def convention_label(convention: Convention, planned_states: Iterable[MachineState]) -> str:
    """Names the loss convention of a report (docs/kpi.md, "Conventions"): ``iso22400`` and
    ``six_big_losses`` with the states excluded from planned time (``:planned=...``),
    ``planned_downtime_loss`` alone (no state is excluded)."""
    if convention is Convention.PLANNED_DOWNTIME_LOSS:
        return str(convention)
    return f"{convention}:planned=" + "+".join(sorted(str(s) for s in planned_states))


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def window_ref(window: Window, tz: ZoneInfo) -> WindowRef:
    """The report's view of ``window``: start and end to the second."""
    return WindowRef(
        kind=window.kind,
        name=window.name,
        start=iso(window.start, tz, "seconds"),
        end=iso(window.end, tz, "seconds"),
    )


def kpi_report(
    *,
    site: str,
    line: str,
    tz: ZoneInfo,
    window: Window,
    now: float,
    state: MachineState,
    convention: str,
    ideal_cycle_time_s: float,
    buckets: TimeBuckets,
    kpis: Kpis,
    total_count: int,
    good_count: int,
    reject_count: int,
    flags: Iterable[str],
    net_run_time_s: float | None = None,
    fully_productive_time_s: float | None = None,
    micro_stop_count: int = 0,
    micro_stop_time_s: float = 0.0,
    products: list[ProductRow] | None = None,
    energy: EnergyFigures | None = None,
    fault_count: int = 0,
    unknown_time_count: int = 0,
    closed: bool = False,
) -> KpiReport:
    """The KPI report of ``window`` at ``now`` (``closed``: its final report). Ratios: 6
    decimals; seconds: 3. ``products``: per-product rows, ``None`` without a product signal
    (an empty list). ``energy``: the window's energy figures (``None``: no energy
    signal). Reliability: MTBF = run time ÷ faults, MTTR = fault time ÷ faults, ``null`` without
    a fault; ``top_downtime_reasons`` are the largest entries of ``loss_time_by_reason_s``."""
    net_s = ideal_cycle_time_s * total_count if net_run_time_s is None else net_run_time_s
    fpt_s = (
        ideal_cycle_time_s * good_count
        if fully_productive_time_s is None
        else fully_productive_time_s
    )
    return KpiReport(
        site=site,
        line=line,
        window=window_ref(window, tz),
        ts=iso(now, tz),
        state=str(state),
        convention=convention,
        availability=_r(kpis.availability, 6),
        performance=_r(kpis.performance, 6),
        quality=_r(kpis.quality, 6),
        oee=_r(kpis.oee, 6),
        total_count=total_count,
        good_count=good_count,
        reject_count=reject_count,
        throughput_good_per_h=_r(kpis.throughput_good_per_h, 3),
        throughput_total_per_h=_r(kpis.throughput_total_per_h, 3),
        ideal_cycle_time_s=round(ideal_cycle_time_s, 6),
        elapsed_s=round(buckets.elapsed_s, 3),
        planned_time_s=round(buckets.planned_s, 3),
        run_time_s=round(buckets.run_s, 3),
        unknown_time_s=round(buckets.unknown_s, 3),
        planned_stop_s=round(buckets.planned_stop_s, 3),
        loss_time_s={k: round(v, 3) for k, v in buckets.loss_s.items()},
        loss_time_by_reason_s={k: round(v, 3) for k, v in sorted(buckets.loss_by_reason_s.items())},
        planned_stop_by_cause_s={
            k: round(v, 3) for k, v in sorted(buckets.planned_stop_by_cause_s.items())
        },
        micro_stop_count=micro_stop_count,
        micro_stop_time_s=round(micro_stop_time_s, 3),
        net_run_time_s=round(net_s, 3),
        fully_productive_time_s=round(fpt_s, 3),
        products=tuple(
            replace(row, ideal_cycle_time_s=round(row.ideal_cycle_time_s, 6))
            for row in (products or [])
        ),
        data_coverage=_r(kpis.data_coverage, 6),
        warnings=tuple(sorted(set(flags) | kpis.warnings)),
        energy=energy_fields(energy or energy_figures(None, {}, good_count, None)),
        fault_count=fault_count,
        mtbf_s=round(buckets.run_s / fault_count, 3) if fault_count else None,
        mttr_s=round(buckets.fault_s / fault_count, 3) if fault_count else None,
        top_downtime_reasons=top_reasons(buckets.loss_by_reason_s),
        unknown_time_count=unknown_time_count,
        throughput_good_per_known_h=_r(kpis.throughput_good_per_known_h, 3),
        closed=closed,
    )


TOP_REASONS = 5


def top_reasons(by_reason: Mapping[str, float], n: int = TOP_REASONS) -> tuple[ReasonTime, ...]:
    """The ``n`` reasons with the most loss time, largest first (ties by name), without zeros."""
    ranked = sorted(
        ((k, v) for k, v in by_reason.items() if round(v, 3) > 0), key=lambda kv: (-kv[1], kv[0])
    )
    return tuple(ReasonTime(reason=k, time_s=round(v, 3)) for k, v in ranked[:n])


def state_change(
    *,
    site: str,
    line: str,
    tz: ZoneInfo,
    ts: float,
    state: MachineState,
    previous_state: MachineState,
    since: float,
) -> StateChange:
    """The report of a change of the machine state."""
    return StateChange(
        site=site,
        line=line,
        ts=iso(ts, tz),
        state=str(state),
        previous_state=str(previous_state),
        since=iso(since, tz),
    )


def window_report(
    o: OpenWindow,
    buckets: TimeBuckets,
    *,
    site: str,
    line: str,
    tz: ZoneInfo,
    now: float,
    state: MachineState,
    convention: str,
    ideal_cycle_time_s: float,
    products: Mapping[int, Product] | None,
    second_counter: int | None,
    min_data_coverage: float,
    energy: LineEnergy,
    closed: bool = False,
) -> KpiReport:
    """The KPI report of the open window ``o`` with its time ``buckets`` at ``now``.
    ``products``: the product signal's map (``None``: no product signal); performance then uses
    each product's ideal cycle time (``ideal_cycle_time_s`` for an unmapped code)."""

    def ideal_of(code: int | None) -> float:
        product = products.get(code) if products and code is not None else None
        return product.ideal_cycle_time_s if product is not None else ideal_cycle_time_s

    w = o.window
    rows = o.product_rows(second_counter)
    total = sum(r[1] for r in rows)
    good = sum(r[2] for r in rows)
    reject = sum(r[3] for r in rows)
    net_s = sum(ideal_of(r[0]) * r[1] for r in rows)
    fpt_s = sum(ideal_of(r[0]) * r[2] for r in rows)
    # Parts placed in unknown time: counted, not paired with run time (docs/kpi.md).
    known_rows = o.product_rows(second_counter, known=True)
    unknown_net_s = net_s - sum(ideal_of(r[0]) * r[1] for r in known_rows)
    # The count-weighted ideal cycle time keeps performance = ideal × total / run true.
    ideal_s = net_s / total if products is not None and total > 0 else ideal_cycle_time_s
    kpis = compute_kpis(
        buckets,
        total_count=total,
        good_count=good,
        ideal_cycle_time_s=ideal_s,
        net_run_time_s=net_s,
        fully_productive_time_s=fpt_s,
        ratios=w.kind == SHIFT or (w.kind == HOUR and bool(o.acc.planned)),
        min_data_coverage=min_data_coverage,
        unknown_net_run_time_s=unknown_net_s,
        known_good_count=sum(r[2] for r in known_rows),
    )
    product_rows = None
    if products is not None:
        product_rows = []
        for code, p_total, p_good, p_reject in rows:
            mapped = products.get(code) if code is not None else None
            product_rows.append(
                ProductRow(
                    product=mapped.name if mapped else (None if code is None else f"code {code}"),
                    code=code,
                    ideal_cycle_time_s=ideal_of(code),
                    total_count=p_total,
                    good_count=p_good,
                    reject_count=p_reject,
                )
            )
    return kpi_report(
        site=site,
        line=line,
        tz=tz,
        window=w,
        now=now,
        state=state,
        convention=convention,
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
        products=product_rows,
        flags=o.flags,
        energy=energy.figures(o.energy, good, w.start),
        fault_count=o.fault_count,
        unknown_time_count=o.unknown_time_count(),
        closed=closed,
    )
