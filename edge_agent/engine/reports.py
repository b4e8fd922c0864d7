"""Typed reports: what a line engine says (DESIGN §1, §4; **contract** for the field names).

Frozen values, one type per kind of report: :class:`KpiReport` (live snapshot or a closed
window's final report), :class:`StateChange`, :class:`EnergyReport`, :class:`OrderReport`,
:class:`OrderClosed` and :class:`CommandReply`. They know nothing of topics, retain flags, QoS or
JSON: :mod:`edge_agent.contract` maps each type to those.

Each field is declared once, here, with what a subscriber needs to know about it
(``Annotated[type, Doc(description, JSON Schema fragment)]``): the JSON Schemas in
``docs/schemas/``, the share filter's field list and the Sparkplug metrics are derived from these
declarations. Values are as they go on the wire: times as ISO 8601 strings with the line's UTC
offset, ratios rounded to 6 decimals and seconds to 3.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, ClassVar, Final, TypeVar

from edge_agent.engine.oee import LOSS_STATES

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Doc:
    """A wire field's description and JSON Schema fragment.

    ``required``: present in every payload of the type's current version (the schema lists it
    in the unshared payload's ``required``); a field added later is optional there, so that
    reports of earlier versions stay valid. ``omit_none``: left out of the payload when
    ``None`` (rather than written as ``null``). ``metric``: published as a Sparkplug metric
    (``unit``: its engineering unit)."""

    text: str = ""
    schema: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True
    omit_none: bool = False
    metric: bool | str = False  # a string: the metric's name, when it is not the field's
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Flatten:
    """The part's fields go to the top level of the payload (shared field groups)."""

    required: bool = True


# --- JSON Schema building blocks ($defs shared by the payload schemas) ----------------------

ISO_TIME_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?[+-]\d{2}:\d{2}$"
STATE_VALUES: Final = (
    "running",
    "idle",
    "fault",
    "planned_stop",
    "changeover",
    "starved",
    "blocked",
    "unknown",
)

DEFS: Final[Mapping[str, Mapping[str, Any]]] = {
    "ratio": {"type": ["number", "null"], "minimum": 0},
    "seconds": {"type": "number", "minimum": 0},
    "count": {"type": "integer", "minimum": 0},
    "isoTime": {"type": "string", "pattern": ISO_TIME_PATTERN},
    "state": {"enum": list(STATE_VALUES)},
    "kwh": {"type": "number", "minimum": 0},
    "kwhOrNull": {"type": ["number", "null"], "minimum": 0},
    "energyByState": {
        "type": "object",
        "description": "energy by the state the line was in while it was used (split in"
        " proportion to time between meter samples; planned_stop includes breaks and off-shift"
        " time, unknown is time without the line's data)",
        "propertyNames": {"enum": list(STATE_VALUES)},
        "additionalProperties": {"$ref": "#/$defs/kwh"},
    },
}


def _ref(name: str) -> Mapping[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


RATIO: Final = _ref("ratio")
SECONDS: Final = _ref("seconds")
COUNT: Final = _ref("count")
ISO_TIME: Final = _ref("isoTime")
STATE: Final = _ref("state")
KWH: Final = _ref("kwh")
KWH_OR_NULL: Final = _ref("kwhOrNull")
ENERGY_BY_STATE: Final = _ref("energyByState")
STRING: Final[Mapping[str, Any]] = {"type": "string"}
STRING_OR_NULL: Final[Mapping[str, Any]] = {"type": ["string", "null"]}
NUMBER_OR_NULL: Final[Mapping[str, Any]] = {"type": ["number", "null"]}
NON_NEGATIVE_OR_NULL: Final[Mapping[str, Any]] = {"type": ["number", "null"], "minimum": 0}
ISO_TIME_OR_NULL: Final[Mapping[str, Any]] = {"anyOf": [ISO_TIME, {"type": "null"}]}
STRINGS: Final[Mapping[str, Any]] = {"type": "array", "items": {"type": "string"}}
TARGET_QUANTITY: Final[Mapping[str, Any]] = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": 1_000_000_000,  # orders.MAX_ORDER_QUANTITY; a test keeps them in step
}

# Availability-loss time by state: every loss state, always present.
LOSS_TIME: Final[Mapping[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": [str(s) for s in LOSS_STATES],
    "properties": {str(s): SECONDS for s in LOSS_STATES},
}


def _warnings(*names: str) -> Mapping[str, Any]:
    return {"type": "array", "uniqueItems": True, "items": {"enum": list(names)}}


# --- parts of reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowRef:
    """The reporting window a report belongs to."""

    kind: Annotated[
        str, Doc('hour: a local clock hour, name "HH:00"', {"enum": ["shift", "off_shift", "hour"]})
    ]
    name: Annotated[str, Doc("", STRING)]
    start: Annotated[str, Doc("ISO 8601, seconds, line's UTC offset", ISO_TIME)]
    end: Annotated[str, Doc("", ISO_TIME)]


@dataclass(frozen=True, slots=True)
class ProductRow:
    """Parts of one product in a window."""

    product: Annotated[
        str | None,
        Doc(
            "the product's name, 'code N' for an unmapped code, null while the product was not"
            " known",
            STRING_OR_NULL,
        ),
    ]
    code: Annotated[int | None, Doc("", {"type": ["integer", "null"]})]
    ideal_cycle_time_s: Annotated[float, Doc("", {"type": "number", "exclusiveMinimum": 0})]
    total_count: Annotated[int, Doc("", COUNT)]
    good_count: Annotated[int, Doc("", COUNT)]
    reject_count: Annotated[int, Doc("", COUNT)]


@dataclass(frozen=True, slots=True)
class ReasonTime:
    """Loss time of one downtime reason."""

    reason: Annotated[str, Doc("", STRING)]
    time_s: Annotated[float, Doc("", SECONDS)]


@dataclass(frozen=True, slots=True)
class EmissionFactorRef:
    """The emission factor the CO2e figures used: the line's factor in force at the window's
    start (an order's: at the report's time), cited with every CO2e figure."""

    kg_co2e_per_kwh: Annotated[float, Doc("", {"type": "number", "minimum": 0})]
    source: Annotated[str, Doc("", STRING)]
    valid_from: Annotated[
        str | None,
        Doc(
            "the local date (YYYY-MM-DD) from which the factor is in force; null: no date given",
            {"type": ["string", "null"], "format": "date"},
        ),
    ]


@dataclass(frozen=True, slots=True)
class EnergyFields:
    """The energy fields shared by the kpi, energy, order and order/closed payloads."""

    energy_kwh: Annotated[
        float | None,
        Doc(
            "active energy in the window (meter deltas counted in the window in which the meter"
            " sample arrives); null without an energy signal",
            KWH_OR_NULL,
            metric=True,
            unit="kWh",
        ),
    ]
    energy_by_state_kwh: Annotated[Mapping[str, float], Doc("", ENERGY_BY_STATE)]
    energy_per_good_part_kwh: Annotated[
        float | None,
        Doc(
            "energy_kwh ÷ good_count; null without energy or good parts",
            KWH_OR_NULL,
            metric=True,
            unit="kWh",
        ),
    ]
    co2e_kg: Annotated[
        float | None,
        Doc(
            "energy_kwh × emission_factor.kg_co2e_per_kwh; null without a factor (see"
            " energy_notes)",
            NON_NEGATIVE_OR_NULL,
            metric=True,
            unit="kg",
        ),
    ]
    co2e_per_good_part_kg: Annotated[
        float | None,
        Doc(
            "energy_per_good_part_kwh × emission factor",
            NON_NEGATIVE_OR_NULL,
            metric=True,
            unit="kg",
        ),
    ]
    emission_factor: Annotated[
        EmissionFactorRef | None,
        Doc(
            "the line's emission factor in force for these figures (emission_factor, or the"
            " latest of emission_factors whose valid_from is not after the window's start),"
            " cited with every CO2e figure; null when none is configured or in force"
        ),
    ]
    energy_notes: Annotated[tuple[str, ...], Doc("why energy or CO2e fields are null", STRINGS)]


# --- the reports ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KpiReport:
    """KPIs of a window: the live snapshot of the open shift or off-shift window, or the final
    report of a closed shift or hour (``closed``)."""

    SCHEMA: ClassVar[str] = "edge-agent/kpi/1"
    SCHEMA_FILE: ClassVar[str] = "kpi.schema.json"
    TITLE: ClassVar[str] = "edge-agent KPI report (topics kpi, kpi/shift and kpi/hour)"
    DESCRIPTION: ClassVar[str] = (
        "Live snapshot of the open shift or off-shift window (kpi, retained), final report of a"
        " closed shift (kpi/shift) or of a closed local clock hour (kpi/hour); window.kind says"
        " which. Ratios are null when their denominator is zero. Times in seconds. Time buckets"
        " add up: run_time_s + sum(loss_time_s) + planned_stop_s + unknown_time_s = elapsed_s"
        " (up to rounding). planned_time_s = run_time_s + sum(loss_time_s) + unknown_time_s."
        " sum(loss_time_by_reason_s) = sum(loss_time_s); sum(planned_stop_by_cause_s) ="
        " planned_stop_s. Roll-ups over windows or lines: sum the times and counts, then"
        " availability = run / (planned - unknown), performance = net_run_time / run, quality ="
        " good / total, oee = fully_productive_time / (planned - unknown)."
    )

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    window: Annotated[WindowRef, Doc("", metric=True)]
    ts: Annotated[
        str, Doc("as-of time, milliseconds; a closed shift's end for kpi/shift", ISO_TIME)
    ]
    state: Annotated[str, Doc("", STATE, metric=True)]
    convention: Annotated[
        str,
        Doc(
            "loss convention (the line's convention): iso22400:planned=STATES or"
            " six_big_losses:planned=STATES (STATES: the states excluded from planned time,"
            " joined by +), or planned_downtime_loss (planned states are availability losses)",
            STRING,
            metric=True,
        ),
    ]
    availability: Annotated[float | None, Doc("", {**RATIO, "maximum": 1}, metric=True)]
    performance: Annotated[
        float | None,
        Doc("not clamped: above 1 adds warning performance_above_ideal", RATIO, metric=True),
    ]
    quality: Annotated[float | None, Doc("", {**RATIO, "maximum": 1}, metric=True)]
    oee: Annotated[
        float | None,
        Doc(
            "fully_productive_time_s / (planned_time_s - unknown_time_s); equals availability x"
            " performance x quality with one ideal cycle time",
            RATIO,
            metric=True,
        ),
    ]
    total_count: Annotated[int, Doc("", COUNT, metric=True)]
    good_count: Annotated[int, Doc("", COUNT, metric=True)]
    reject_count: Annotated[int, Doc("", COUNT, metric=True)]
    throughput_good_per_h: Annotated[
        float | None, Doc("", NON_NEGATIVE_OR_NULL, metric=True, unit="parts/h")
    ]
    throughput_total_per_h: Annotated[
        float | None, Doc("", NON_NEGATIVE_OR_NULL, metric=True, unit="parts/h")
    ]
    ideal_cycle_time_s: Annotated[
        float,
        Doc(
            "the line's ideal cycle time; with a product signal and parts counted, the"
            " count-weighted mean of the products' ideal cycle times (net_run_time_s /"
            " total_count)",
            {"type": "number", "exclusiveMinimum": 0},
            metric=True,
            unit="s",
        ),
    ]
    elapsed_s: Annotated[float, Doc("", SECONDS, metric=True, unit="s")]
    planned_time_s: Annotated[
        float,
        Doc("planned production time, unknown time included", SECONDS, metric=True, unit="s"),
    ]
    run_time_s: Annotated[float, Doc("", SECONDS, metric=True, unit="s")]
    unknown_time_s: Annotated[
        float, Doc("planned production time without data", SECONDS, metric=True, unit="s")
    ]
    planned_stop_s: Annotated[
        float,
        Doc(
            "off-shift time, breaks, maintenance and time in planned states",
            SECONDS,
            metric=True,
            unit="s",
        ),
    ]
    loss_time_s: Annotated[
        Mapping[str, float],
        Doc(
            "availability-loss time by state; planned_stop: time in state planned_stop where it"
            " is not a planned state (convention planned_downtime_loss, or planned_states"
            " without it)",
            LOSS_TIME,
            metric=True,
            unit="s",
        ),
    ]
    loss_time_by_reason_s: Annotated[
        Mapping[str, float],
        Doc(
            "availability-loss time by downtime reason (reason signal's map, 'code N' when"
            " unmapped, a line's stop_reasons name an operator gave, 'unspecified' when no"
            " reason was known)",
            {"type": "object", "additionalProperties": SECONDS},
        ),
    ]
    planned_stop_by_cause_s: Annotated[
        Mapping[str, float],
        Doc(
            "planned_stop_s by cause: off_shift, break, maintenance, and each planned state",
            {
                "type": "object",
                "required": ["off_shift", "break", "maintenance"],
                "additionalProperties": SECONDS,
            },
        ),
    ]
    micro_stop_count: Annotated[
        int,
        Doc(
            "stops shorter than the line's micro_stop_max that ended in this window",
            COUNT,
            metric=True,
        ),
    ]
    micro_stop_time_s: Annotated[
        float,
        Doc(
            "their loss time inside this window (part of loss_time_s; under convention"
            " six_big_losses part of run_time_s instead, a performance loss)",
            SECONDS,
            metric=True,
            unit="s",
        ),
    ]
    net_run_time_s: Annotated[
        float,
        Doc("sum over products of ideal cycle time x total count", SECONDS, metric=True, unit="s"),
    ]
    fully_productive_time_s: Annotated[
        float,
        Doc("sum over products of ideal cycle time x good count", SECONDS, metric=True, unit="s"),
    ]
    products: Annotated[
        tuple[ProductRow, ...], Doc("parts per product (empty without a product signal)")
    ]
    data_coverage: Annotated[float | None, Doc("", {**RATIO, "maximum": 1}, metric=True)]
    warnings: Annotated[
        tuple[str, ...],
        Doc(
            "",
            _warnings(
                "performance_above_ideal",
                "counter_wrap",
                "counter_reset",
                "unmapped_state_code",
                "low_data_coverage",
                "unmapped_product_code",
                "energy_meter_wrap",
                "energy_meter_reset",
                "storage_recovered",
            ),
            metric=True,
        ),
    ]
    energy: Annotated[EnergyFields, Flatten(required=False)]
    fault_count: Annotated[
        int,
        Doc(
            "faults that started in the window's planned production time",
            COUNT,
            required=False,
            metric=True,
        ),
    ]
    mtbf_s: Annotated[
        float | None,
        Doc(
            "run_time_s ÷ fault_count; null without a fault",
            NON_NEGATIVE_OR_NULL,
            required=False,
            metric=True,
            unit="s",
        ),
    ]
    mttr_s: Annotated[
        float | None,
        Doc(
            "loss_time_s.fault ÷ fault_count; null without a fault",
            NON_NEGATIVE_OR_NULL,
            required=False,
            metric=True,
            unit="s",
        ),
    ]
    top_downtime_reasons: Annotated[
        tuple[ReasonTime, ...],
        Doc(
            "the largest entries of loss_time_by_reason_s, largest first",
            {"maxItems": 5},
            required=False,
        ),
    ]
    shift_note: Annotated[
        str | None,
        Doc(
            "the operators' note on this shift (the operator page; shift windows only), at most"
            " 500 characters; absent without one",
            {"type": "string", "maxLength": 500},
            required=False,
            omit_none=True,
        ),
    ] = None
    unknown_time_count: Annotated[
        int,
        Doc(
            "parts of total_count made while the line's data was unknown (a counter delta is"
            " placed over the time it covers, docs/kpi.md): counted in total_count, good_count"
            " and order progress, but not paired with run time in performance and oee",
            COUNT,
            required=False,
            metric=True,
        ),
    ]
    throughput_good_per_known_h: Annotated[
        float | None,
        Doc(
            "good parts made in known time per hour of the window's time with data"
            " (elapsed_s - unknown_time_s); throughput_good_per_h counts every hour of the"
            " window, also those before the agent ran; null without known time",
            NON_NEGATIVE_OR_NULL,
            required=False,
            metric=True,
            unit="parts/h",
        ),
    ]
    # Not on the wire: a closed window's final report (kpi/shift, kpi/hour), not a snapshot.
    closed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """A change of the line's machine state."""

    SCHEMA: ClassVar[str] = "edge-agent/state/1"
    SCHEMA_FILE: ClassVar[str] = "state.schema.json"
    TITLE: ClassVar[str] = "edge-agent machine state change (topic state, retained)"
    DESCRIPTION: ClassVar[str] = ""

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    ts: Annotated[str, Doc("", ISO_TIME)]
    state: Annotated[
        str,
        Doc(
            "unknown: the state's signal is unavailable (source down, bad quality, unmapped code)",
            STATE,
            metric=True,
        ),
    ]
    previous_state: Annotated[str, Doc("", STATE)]
    since: Annotated[
        str,
        Doc("when the state began (ISO 8601, milliseconds)", ISO_TIME, metric="state_since"),
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergyReport:
    """The live energy figures of the open shift (or off-shift) window."""

    SCHEMA: ClassVar[str] = "edge-agent/energy/1"
    SCHEMA_FILE: ClassVar[str] = "energy.schema.json"
    TITLE: ClassVar[str] = "edge-agent live energy snapshot (topic energy, retained)"
    DESCRIPTION: ClassVar[str] = (
        "Energy of the open shift (or off-shift) window so far, with the meter and power"
        " readings; published with every kpi snapshot when the line has an energy signal. The"
        " same energy fields appear in kpi, kpi/shift and kpi/hour."
    )

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    window: Annotated[WindowRef, Doc("")]
    ts: Annotated[str, Doc("", ISO_TIME)]
    state: Annotated[str, Doc("", STATE)]
    meter_kwh: Annotated[
        float | None,
        Doc(
            "the meter's last reading in kWh (absolute counter); null before the first reading",
            NUMBER_OR_NULL,
        ),
    ]
    power_kw: Annotated[
        float | None,
        Doc(
            "last active power sample in kW; null without a power signal or while it is"
            " unavailable",
            NUMBER_OR_NULL,
        ),
    ]
    good_count: Annotated[
        int, Doc("good parts in the window, the denominator of the per-part figures", COUNT)
    ]
    energy: Annotated[EnergyFields, Flatten()]
    warnings: Annotated[
        tuple[str, ...], Doc("", _warnings("energy_meter_wrap", "energy_meter_reset"))
    ]


_ORDER_TARGET_DOC: Final = (
    "target good quantity (at most 10^9); null when the PLC gives none or its order target tag"
    " has never read a valid quantity"
)
_ORDER_TOTAL_DOC: Final = "parts counted for the order since the agent saw it start"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderReport:
    """The line's current production order (``order_id`` ``None``: there is none)."""

    SCHEMA: ClassVar[str] = "edge-agent/order/1"
    SCHEMA_FILE: ClassVar[str] = "order.schema.json"
    TITLE: ClassVar[str] = "edge-agent current production order (topic order, retained)"
    DESCRIPTION: ClassVar[str] = (
        "The line's current order with progress and estimated completion; published with every"
        " kpi snapshot and at every order change. ETAs are linear extrapolations in wall time:"
        " they do not skip breaks or off-shift time."
    )

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    ts: Annotated[str, Doc("", ISO_TIME)]
    throughput_current_good_per_h: Annotated[
        float | None,
        Doc(
            "good parts per hour counted in the last 15 minutes (or since the agent started, if"
            " shorter)",
            NON_NEGATIVE_OR_NULL,
        ),
    ]
    throughput_shift_good_per_h: Annotated[
        float | None,
        Doc("good parts per hour of the open shift window so far", NON_NEGATIVE_OR_NULL),
    ]
    warnings: Annotated[
        tuple[str, ...],
        Doc(
            "always present in this version, optional in the schema so that reports of earlier"
            " versions (without it) stay valid. eta_out_of_range: an ETA lies beyond the year"
            " 9999 and is null (its time_to_complete_*_s is given); order_tag_invalid: a PLC"
            " order tag (id, target, product) reads a value that cannot be an order's (a target"
            " that is negative, above 10^9 or not a number; an id over 64 or a product over 256"
            " characters), taken as bad data: the order is shown as it was before",
            _warnings("eta_out_of_range", "order_tag_invalid"),
            required=False,
        ),
    ]
    order_id: Annotated[
        str | None, Doc("the current order; null when there is none", STRING_OR_NULL)
    ]
    status: Annotated[str, Doc("", {"enum": ["none", "in_progress", "completed"]})]
    product: Annotated[str | None, Doc("", STRING_OR_NULL)]
    source: Annotated[
        str | None,
        Doc(
            "where the order came from: PLC tags or an order command",
            {"enum": ["plc", "command", None]},
        ),
    ]
    target_quantity: Annotated[int | None, Doc(_ORDER_TARGET_DOC, TARGET_QUANTITY)]
    total_count: Annotated[int, Doc(_ORDER_TOTAL_DOC, COUNT)]
    good_count: Annotated[int, Doc("", COUNT)]
    reject_count: Annotated[int, Doc("", COUNT)]
    remaining_quantity: Annotated[
        int | None,
        Doc(
            "max(target − good, 0); null without a target",
            {"type": ["integer", "null"], "minimum": 0},
        ),
    ]
    started: Annotated[str | None, Doc("when the agent saw the order start", ISO_TIME_OR_NULL)]
    time_to_complete_current_s: Annotated[float | None, Doc("", NON_NEGATIVE_OR_NULL)]
    time_to_complete_shift_average_s: Annotated[float | None, Doc("", NON_NEGATIVE_OR_NULL)]
    eta_current: Annotated[
        str | None,
        Doc(
            "ts + remaining ÷ current throughput; null when that throughput is zero or unknown",
            ISO_TIME_OR_NULL,
        ),
    ]
    eta_shift_average: Annotated[
        str | None, Doc("ts + remaining ÷ shift-average throughput", ISO_TIME_OR_NULL)
    ]
    energy: Annotated[EnergyFields, Flatten()]


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderClosed:
    """An order's final figures, once per order."""

    SCHEMA: ClassVar[str] = "edge-agent/order-closed/1"
    SCHEMA_FILE: ClassVar[str] = "order-closed.schema.json"
    TITLE: ClassVar[str] = (
        "edge-agent closed order report (topic order/closed, QoS 1, not retained)"
    )
    DESCRIPTION: ClassVar[str] = (
        "Sent once per order: when its good count reaches the target, or when it is replaced or"
        " cleared before. Counts and energy are those booked while the order was current."
    )

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    ts: Annotated[str, Doc("", ISO_TIME)]
    order_id: Annotated[str, Doc("", STRING)]
    product: Annotated[str | None, Doc("", STRING_OR_NULL)]
    source: Annotated[str, Doc("", {"enum": ["plc", "command"]})]
    reason: Annotated[
        str,
        Doc(
            "target_reached: good_count reached target_quantity; order_changed: another order"
            " replaced it first; order_cleared: the PLC's order id became empty",
            {"enum": ["target_reached", "order_changed", "order_cleared"]},
        ),
    ]
    target_quantity: Annotated[int | None, Doc(_ORDER_TARGET_DOC, TARGET_QUANTITY)]
    total_count: Annotated[int, Doc(_ORDER_TOTAL_DOC, COUNT)]
    good_count: Annotated[int, Doc("", COUNT)]
    reject_count: Annotated[int, Doc("", COUNT)]
    started: Annotated[str, Doc("", ISO_TIME)]
    duration_s: Annotated[float, Doc("", {"type": "number", "minimum": 0})]
    energy: Annotated[EnergyFields, Flatten()]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandReply:
    """The answer to a command (``cmd/{command}``): applied, or rejected and why."""

    SCHEMA: ClassVar[str] = "edge-agent/cmd-reply/1"
    SCHEMA_FILE: ClassVar[str] = "cmd-reply.schema.json"
    TITLE: ClassVar[str] = "edge-agent command reply (topic cmd/order/reply, QoS 1, not retained)"
    DESCRIPTION: ClassVar[str] = ""

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    ts: Annotated[str, Doc("", ISO_TIME)]
    command: Annotated[str, Doc("the command's name: order", STRING)]
    ok: Annotated[
        bool,
        Doc(
            "true: the command was applied; false: rejected and not applied",
            {"type": "boolean"},
        ),
    ]
    errors: Annotated[
        tuple[str, ...],
        Doc(
            "why the command was rejected, in plain words (empty when ok): a payload over 4,096"
            " bytes, not UTF-8, nested more than 2 levels, not JSON or not an object, or each"
            " key that breaks order-command.schema.json (at most 5 unknown keys are named)",
            STRINGS,
        ),
    ]
    request_id: Annotated[
        str | None,
        Doc(
            "echoed from the command, also when it is rejected (if it is a JSON object with a"
            " valid request_id)",
            STRING,
            required=False,
            omit_none=True,
        ),
    ] = None
    order_id: Annotated[
        str | None,
        Doc("the order applied (ok true only)", STRING, required=False, omit_none=True),
    ] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorEvent:
    """An action an operator took on the operator page (docs/operator.md), for audit."""

    SCHEMA: ClassVar[str] = "edge-agent/operator/1"
    SCHEMA_FILE: ClassVar[str] = "operator.schema.json"
    TITLE: ClassVar[str] = "edge-agent operator action (topic operator, QoS 1, not retained)"
    DESCRIPTION: ClassVar[str] = (
        "One per action an operator took on the operator page and the agent applied: which"
        " station, what, and on which stop or order. The action itself shows in the next kpi"
        " report (loss_time_by_reason_s) or order report."
    )

    site: Annotated[str, Doc("", STRING)]
    line: Annotated[str, Doc("", STRING)]
    ts: Annotated[str, Doc("when the agent applied it", ISO_TIME)]
    station: Annotated[str, Doc("the operator station's name (operator.stations)", STRING)]
    action: Annotated[
        str,
        Doc(
            "classify: a stop got reasons; unclassify: its reasons were undone; order: the"
            " current order was set; order_cleared: it was cleared; note: the shift note was"
            " set (empty: removed)",
            {"enum": ["classify", "unclassify", "order", "order_cleared", "note"]},
        ),
    ]
    stop_start: Annotated[
        str | None,
        Doc("the stop's start (classify, unclassify)", ISO_TIME, required=False, omit_none=True),
    ] = None
    reasons: Annotated[
        tuple[str, ...],
        Doc(
            "the stop's reasons, in time order: one, or two when split (classify)",
            STRINGS,
            required=False,
        ),
    ] = ()
    split_at: Annotated[
        str | None,
        Doc(
            "where the second reason begins (a split stop)",
            ISO_TIME,
            required=False,
            omit_none=True,
        ),
    ] = None
    order_id: Annotated[
        str | None, Doc("the order set (order)", STRING, required=False, omit_none=True)
    ] = None
    note: Annotated[
        str | None, Doc("the shift note set (note)", STRING, required=False, omit_none=True)
    ] = None


Report = (
    KpiReport
    | StateChange
    | EnergyReport
    | OrderReport
    | OrderClosed
    | CommandReply
    | OperatorEvent
)
REPORT_TYPES: Final = (
    KpiReport,
    StateChange,
    EnergyReport,
    OrderReport,
    OrderClosed,
    CommandReply,
    OperatorEvent,
)


# --- field declarations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireField:
    """One top-level payload field of a report type."""

    name: str
    doc: Doc
    tp: Any  # the Python type (without Annotated)
    group: str | None = None  # the flattened part's attribute it lives in
    required: bool = True


def part_type(tp: Any) -> type | None:
    """The report part (a dataclass) that ``tp`` is, or is ``| None`` of."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if isinstance(tp, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(parts) == 1:
            return part_type(parts[0])
    return None


def items_part(tp: Any) -> type | None:
    """The part type of ``tuple[Part, ...]``."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
            return args[0]
    return None


def _annotated(cls: type) -> Iterator[tuple[str, Any, Any]]:
    """(name, Python type, the Doc or Flatten) of each declared field of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is not typing.Annotated:
            continue  # not on the wire (e.g. KpiReport.closed)
        tp, *meta = typing.get_args(hint)
        yield f.name, tp, meta[0]


@cache
def wire_fields(cls: type) -> tuple[WireField, ...]:
    """The payload fields of a report type (or part), in payload order; a flattened part's
    fields in its place."""
    out: list[WireField] = []
    for name, tp, meta in _annotated(cls):
        if isinstance(meta, Flatten):
            for sub in wire_fields(tp):
                out.append(
                    dataclasses.replace(sub, group=name, required=sub.required and meta.required)
                )
        else:
            out.append(WireField(name, meta, tp, required=meta.required))
    return tuple(out)


# --- to and from plain dicts ------------------------------------------------------------


def _encoder(tp: Any) -> Callable[[Any], Any]:
    part = part_type(tp)
    if part is not None:
        encode = _part_encoder(part)
        return lambda v: None if v is None else encode(v)
    items = items_part(tp)
    if items is not None:
        encode_item = _part_encoder(items)
        return lambda v: [encode_item(x) for x in v]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return list
    if origin is Mapping or origin is dict:
        return dict
    return lambda v: v


@cache
def _part_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """A function from a report (or part) to its plain dict: ``schema`` first (for a report
    type), then its fields in declaration order, flattened parts in their place."""
    steps: list[tuple[str, str | None, Callable[[Any], Any], bool]] = [
        (f.name, f.group, _encoder(f.tp), f.doc.omit_none) for f in wire_fields(cls)
    ]
    schema_id = getattr(cls, "SCHEMA", None)

    def encode(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {} if schema_id is None else {"schema": schema_id}
        for name, group, enc, omit_none in steps:
            holder = obj if group is None else getattr(obj, group)
            value = getattr(holder, name)
            if value is None and omit_none:
                continue
            out[name] = enc(value)
        return out

    return encode


def to_dict(report: Any) -> dict[str, Any]:
    """``report`` (or a part) as a plain, JSON-serialisable dict: the payload, without ``seq``."""
    cls: Any = type(report)
    return _part_encoder(cls)(report)


def _decode(tp: Any, value: Any) -> Any:
    part = part_type(tp)
    if part is not None:
        return None if value is None else from_dict(part, value)
    items = items_part(tp)
    if items is not None:
        return tuple(from_dict(items, x) for x in value)
    origin = typing.get_origin(tp)
    if origin is tuple:
        return tuple(value)
    if origin is Mapping or origin is dict:
        return dict(value)
    return value


def from_dict(cls: type[_T], d: Mapping[str, Any], **extra: Any) -> _T:
    """The report (or part) of type ``cls`` that :func:`to_dict` made ``d`` of; ``extra``:
    attributes that are not on the wire (``closed``). Raises ``KeyError`` for a missing field,
    ``TypeError`` for a wrong one."""
    kwargs: dict[str, Any] = {}
    for name, tp, meta in _annotated(cls):
        if isinstance(meta, Flatten):
            kwargs[name] = from_dict(tp, d)
        elif name in d or not meta.omit_none:
            kwargs[name] = _decode(tp, d[name])
    return cls(**kwargs, **extra)
