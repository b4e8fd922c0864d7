"""Production orders and order commands (DESIGN §3, docs/kpi.md). Pure: no clock, no I/O.

An order is what the line is making for a customer: an id, a product and a target (good)
quantity. It comes from PLC tags or from an order command (``cmd/order``); the engine counts the
parts and the energy of the current order and estimates when it will be done.

Order command (**contract**, ``docs/schemas/order-command.schema.json``)::

    {"order_id": "PO-4711", "product": "A-100", "target_quantity": 5000, "request_id": "42"}

``order_id`` (non-empty string, at most 64 characters) and ``target_quantity`` (integer from 1
to :data:`MAX_ORDER_QUANTITY`) are required; ``product`` (string or null) and ``request_id``
(string, echoed in the reply) are optional; no other keys. :func:`validate_order_command`
implements that schema without a library, so that the engine stays dependency-free; a test checks
both agree. :func:`parse_order_command` turns any payload into a command or into errors: it never
raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeGuard

MAX_ORDER_ID_CHARS = 64
MAX_TEXT_CHARS = 256
MAX_COMMAND_BYTES = 4096
# An order command is one flat object: deeper nesting is refused before the JSON is parsed (the
# parser recurses once per level).
MAX_COMMAND_DEPTH = 2
# The largest order target, from a command or a PLC tag (docs/schemas/order-command.schema.json
# says the same; a test keeps them in step). 10^9 parts is more than 30 years of a line making
# a part a second, fits a PLC's signed 32-bit DINT and is exact in every JSON implementation;
# and ETAs and rates computed from it stay ordinary numbers.
MAX_ORDER_QUANTITY = 1_000_000_000

# Current throughput: good parts counted in the last RATE_WINDOW_S, per hour.
RATE_WINDOW_S = 900.0


_COMMAND_KEYS = {"order_id", "product", "target_quantity", "request_id"}
_MAX_UNKNOWN_SHOWN = 5  # unknown keys named in a reply; the others are counted


def validate_order_command(doc: Any) -> list[str]:
    """Errors of an order command against its schema (empty: valid). Messages name the key."""
    if not isinstance(doc, dict):
        return [f"the command must be a JSON object, got {type(doc).__name__}"]
    errors: list[str] = []
    unknown = sorted(set(doc) - _COMMAND_KEYS)
    for key in unknown[:_MAX_UNKNOWN_SHOWN]:
        errors.append(f"{_shown(key)}: unknown key")
    if len(unknown) > _MAX_UNKNOWN_SHOWN:
        errors.append(f"and {len(unknown) - _MAX_UNKNOWN_SHOWN} more unknown keys")
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
    elif not _is_integer(target) or target < 1:
        errors.append("target_quantity: must be an integer >= 1")
    elif target > MAX_ORDER_QUANTITY:
        errors.append(f"target_quantity: at most {MAX_ORDER_QUANTITY}")
    product = doc.get("product")
    if product is not None and (not isinstance(product, str) or len(product) > MAX_TEXT_CHARS):
        errors.append(f"product: must be a string of at most {MAX_TEXT_CHARS} characters or null")
    request_id = doc.get("request_id")
    if "request_id" in doc and (
        not isinstance(request_id, str) or len(request_id) > MAX_TEXT_CHARS
    ):
        errors.append(f"request_id: must be a string of at most {MAX_TEXT_CHARS} characters")
    return errors


def _is_integer(x: Any) -> TypeGuard[int | float]:
    """An integer as JSON Schema counts them: ``5`` and ``5.0``, not ``true``."""
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, int) and not isinstance(x, bool)


def _shown(key: str) -> str:
    """A key of the sender's, safe to echo in a reply and a log line: printable and short."""
    if len(key) <= MAX_ORDER_ID_CHARS and key.isprintable():
        return key
    return ascii(key[:MAX_ORDER_ID_CHARS]) + ("..." if len(key) > MAX_ORDER_ID_CHARS else "")


def _depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (JSON; brackets inside strings are not
    counted). Stops counting past :data:`MAX_COMMAND_DEPTH`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_COMMAND_DEPTH:
                    break
        elif ch in "]}":
            depth -= 1
    return deepest


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """An order command's payload, parsed: ``command`` when it is valid (``errors`` empty),
    else ``None`` and what is wrong with it. ``request_id``: the sender's, when the payload is
    an object with a valid one (echoed in the reply also when the command is rejected)."""

    command: dict[str, Any] | None
    errors: tuple[str, ...]
    request_id: str | None = None


def parse_order_command(payload: bytes) -> ParsedCommand:
    """The command in ``payload``, or the errors that reject it. Never raises: a payload too
    large (:data:`MAX_COMMAND_BYTES`), not UTF-8, nested too deeply, not JSON or not a valid
    command is an error, named in plain words."""
    if len(payload) > MAX_COMMAND_BYTES:
        return ParsedCommand(None, (f"the command is larger than {MAX_COMMAND_BYTES} bytes",))
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ParsedCommand(None, (f"not UTF-8 JSON: {exc}",))
    if _depth(text) > MAX_COMMAND_DEPTH:
        return ParsedCommand(
            None,
            (
                f"the command nests arrays or objects more than {MAX_COMMAND_DEPTH} levels deep:"
                " it must be one flat JSON object",
            ),
        )
    try:
        doc = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
        return ParsedCommand(None, (f"not UTF-8 JSON: {exc}",))
    request_id = doc.get("request_id") if isinstance(doc, dict) else None
    if not isinstance(request_id, str) or len(request_id) > MAX_TEXT_CHARS:
        request_id = None
    errors = validate_order_command(doc)
    if errors:
        return ParsedCommand(None, tuple(errors), request_id)
    return ParsedCommand({**doc, "target_quantity": int(doc["target_quantity"])}, (), request_id)


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
        if target is not None and not 1 <= int(target) <= MAX_ORDER_QUANTITY:
            target = None  # saved by a version without the bound: the target is not known
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
