"""Production orders, order commands and energy figures (DESIGN §3, docs/kpi.md). Pure: no clock,
no I/O.

An order is what the line is making for a customer: an id, a product and a target (good)
quantity. It comes from PLC tags or from an order command (``cmd/order``); the engine counts the
parts and the energy of the current order and estimates when it will be done.

Order command (**contract**, ``docs/schemas/order-command.schema.json``)::

    {"order_id": "PO-4711", "product": "A-100", "target_quantity": 5000, "request_id": "42"}

``order_id`` (non-empty string, at most 64 characters) and ``target_quantity`` (integer >= 1) are
required; ``product`` (string or null) and ``request_id`` (string, echoed in the reply) are
optional; no other keys. :func:`validate_order_command` implements that schema without a
library, so that the engine stays dependency-free; a test checks both agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.config.schema import EmissionFactor

ORDER_SCHEMA = "edge-agent/order/1"
ORDER_CLOSED_SCHEMA = "edge-agent/order-closed/1"
ENERGY_SCHEMA = "edge-agent/energy/1"
COMMAND_REPLY_SCHEMA = "edge-agent/cmd-reply/1"

MAX_ORDER_ID_CHARS = 64
MAX_TEXT_CHARS = 256
MAX_COMMAND_BYTES = 4096

# Current throughput: good parts counted in the last RATE_WINDOW_S, per hour.
RATE_WINDOW_S = 900.0

NO_FACTOR_NOTE = "no emission_factor configured for this line: CO2e not computed"
NO_METER_NOTE = "no energy signal configured for this line"

_COMMAND_KEYS = {"order_id", "product", "target_quantity", "request_id"}


def validate_order_command(doc: Any) -> list[str]:
    """Errors of an order command against its schema (empty: valid). Messages name the key."""
    if not isinstance(doc, dict):
        return [f"the command must be a JSON object, got {type(doc).__name__}"]
    errors: list[str] = []
    for key in sorted(set(doc) - _COMMAND_KEYS):
        errors.append(f"{key}: unknown key")
    order_id = doc.get("order_id")
    if "order_id" not in doc:
        errors.append("order_id: required")
    elif not isinstance(order_id, str) or not order_id.strip():
        errors.append("order_id: must be a non-empty string")
    elif len(order_id) > MAX_ORDER_ID_CHARS:
        errors.append(f"order_id: at most {MAX_ORDER_ID_CHARS} characters")
    target = doc.get("target_quantity")
    if "target_quantity" not in doc:
        errors.append("target_quantity: required")
    elif isinstance(target, bool) or not isinstance(target, int) or target < 1:
        errors.append("target_quantity: must be an integer >= 1")
    product = doc.get("product")
    if product is not None and (not isinstance(product, str) or len(product) > MAX_TEXT_CHARS):
        errors.append(f"product: must be a string of at most {MAX_TEXT_CHARS} characters or null")
    request_id = doc.get("request_id")
    if "request_id" in doc and (
        not isinstance(request_id, str) or len(request_id) > MAX_TEXT_CHARS
    ):
        errors.append(f"request_id: must be a string of at most {MAX_TEXT_CHARS} characters")
    return errors


def parse_order_command(payload: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """``(command, [])`` for a valid command, ``(None, errors)`` otherwise."""
    if len(payload) > MAX_COMMAND_BYTES:
        return None, [f"the command is larger than {MAX_COMMAND_BYTES} bytes"]
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"not UTF-8 JSON: {exc}"]
    errors = validate_order_command(doc)
    return (None, errors) if errors else (doc, [])


@dataclass(frozen=True, slots=True)
class EnergyFigures:
    """Energy of a window or an order and what follows from it. ``energy_kwh`` is ``None``
    without an energy signal; ratios are ``None`` when their denominator is zero."""

    energy_kwh: float | None
    by_state_kwh: Mapping[str, float]
    per_good_part_kwh: float | None
    co2e_kg: float | None
    co2e_per_good_part_kg: float | None
    factor: EmissionFactor | None
    notes: tuple[str, ...]


def energy_figures(
    energy_kwh: float | None,
    by_state_kwh: Mapping[str, float],
    good_count: int,
    factor: EmissionFactor | None,
) -> EnergyFigures:
    """kWh per good part = energy ÷ good count; kgCO2e = energy × factor (docs/kpi.md)."""
    notes: list[str] = []
    if energy_kwh is None:
        notes.append(NO_METER_NOTE)
    elif factor is None:
        notes.append(NO_FACTOR_NOTE)
    per_part = energy_kwh / good_count if energy_kwh is not None and good_count > 0 else None
    co2e = energy_kwh * factor.kg_co2e_per_kwh if energy_kwh is not None and factor else None
    co2e_part = per_part * factor.kg_co2e_per_kwh if per_part is not None and factor else None
    return EnergyFigures(
        energy_kwh=energy_kwh,
        by_state_kwh=by_state_kwh,
        per_good_part_kwh=per_part,
        co2e_kg=co2e,
        co2e_per_good_part_kg=co2e_part,
        factor=factor,
        notes=tuple(notes),
    )


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def energy_fields(e: EnergyFigures) -> dict[str, Any]:
    """The energy fields shared by the kpi, energy, order and order/closed payloads."""
    return {
        "energy_kwh": _r(e.energy_kwh, 6),
        "energy_by_state_kwh": {k: round(v, 6) for k, v in sorted(e.by_state_kwh.items())},
        "energy_per_good_part_kwh": _r(e.per_good_part_kwh, 6),
        "co2e_kg": _r(e.co2e_kg, 6),
        "co2e_per_good_part_kg": _r(e.co2e_per_good_part_kg, 6),
        "emission_factor": (
            None
            if e.factor is None
            else {"kg_co2e_per_kwh": e.factor.kg_co2e_per_kwh, "source": e.factor.source}
        ),
        "energy_notes": list(e.notes),
    }


class Order:
    """The current order and what was counted for it since the engine saw it start."""

    __slots__ = (
        "closed",
        "counts",
        "energy_by_state_kwh",
        "energy_kwh",
        "order_id",
        "product",
        "source",
        "started",
        "target",
    )

    def __init__(
        self, order_id: str, product: str | None, target: int | None, source: str, started: float
    ) -> None:
        self.order_id = order_id
        self.product = product
        self.target = target
        self.source = source  # "plc" or "command"
        self.started = started
        self.counts = [0, 0]  # total, second counter (reject or good), like a window's
        self.energy_kwh = 0.0
        self.energy_by_state_kwh: dict[str, float] = {}
        self.closed = False  # the order/closed report was sent (target reached)

    def state_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "product": self.product,
            "target": self.target,
            "source": self.source,
            "started": self.started,
            "counts": list(self.counts),
            "energy_kwh": self.energy_kwh,
            "energy_by_state_kwh": dict(self.energy_by_state_kwh),
            "closed": self.closed,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Order:
        target = d.get("target")
        o = cls(
            str(d["order_id"]),
            d.get("product"),
            None if target is None else int(target),
            str(d.get("source", "plc")),
            float(d["started"]),
        )
        total, second = d.get("counts", (0, 0))
        o.counts = [int(total), int(second)]
        o.energy_kwh = float(d.get("energy_kwh", 0.0))
        o.energy_by_state_kwh = {
            k: float(v) for k, v in (d.get("energy_by_state_kwh") or {}).items()
        }
        o.closed = bool(d.get("closed", False))
        return o


def time_to_complete_s(remaining: int | None, good_per_h: float | None) -> float | None:
    """Seconds until ``remaining`` good parts are made at ``good_per_h`` (``None`` if unknown or
    the rate is zero; 0 when nothing remains)."""
    if remaining is None:
        return None
    if remaining == 0:
        return 0.0
    if good_per_h is None or good_per_h <= 0:
        return None
    return remaining / good_per_h * 3600.0
