"""Line signals: the kinds of signal a line reads, and PLC values as what each kind needs.

Pure: a value that cannot be what its signal needs is ``None`` (bad data), never an exception.
"""

from __future__ import annotations

import math
from typing import Any

from edge_agent.config.schema import CounterSignal, Signals
from edge_agent.engine.orders import MAX_ORDER_ID_CHARS, MAX_ORDER_QUANTITY, MAX_TEXT_CHARS
from edge_agent.model import Value

# Signal kinds (small ints: ingest() is on the hot path). Counters are the kinds >= SIG_TOTAL;
# the kinds from SIG_REASON to SIG_ORDER_PRODUCT are auxiliary: without their data the time is still
# known.
(
    SIG_STATE,
    SIG_RUNNING,
    SIG_REASON,
    SIG_PRODUCT,
    SIG_ENERGY,
    SIG_POWER,
    SIG_ORDER_ID,
    SIG_ORDER_TARGET,
    SIG_ORDER_PRODUCT,
    SIG_TOTAL,
    SIG_REJECT,
    SIG_GOOD,
) = range(12)
ORDER_KINDS = (SIG_ORDER_ID, SIG_ORDER_TARGET, SIG_ORDER_PRODUCT)
ORDER_TAG_NAMES = {SIG_ORDER_ID: "id", SIG_ORDER_TARGET: "target", SIG_ORDER_PRODUCT: "product"}
COUNTER_NAMES = {SIG_TOTAL: "total", SIG_REJECT: "reject", SIG_GOOD: "good"}
# Counter and meter readings at or beyond this magnitude are unusable: 2^64 is past the largest
# integer register (uint64); only a misread float (wrong type or byte order) shows such a value.
MAX_READING = 2**64


def as_count(value: Value) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if -MAX_READING < value < MAX_READING else None
    try:
        x = value if isinstance(value, float) else float(value)
    except ValueError:
        return None
    return round(x) if math.isfinite(x) and abs(x) < MAX_READING else None


def as_code(value: Value) -> int | None:
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


def as_float(value: Value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond the float range
        return None
    return x if math.isfinite(x) and abs(x) < MAX_READING else None


def as_text(value: Value) -> str | None:
    """An order id or product from a string or number tag; empty, 0 or false mean none."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    text = str(value).strip()
    return None if text in ("", "0") else text


def order_value(kind: int, value: Value) -> tuple[Any, str | None]:
    """A PLC order tag's value as the order's id, target or product: ``(value, None)``, with
    ``None`` for "none" (empty, 0); or ``(None, problem)`` when it cannot be an order's."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, "not a finite number"
    if kind != SIG_ORDER_TARGET:
        text = as_text(value)
        limit = MAX_ORDER_ID_CHARS if kind == SIG_ORDER_ID else MAX_TEXT_CHARS
        if text is not None and len(text) > limit:
            return None, f"longer than {limit} characters"
        return text, None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    number: int | float
    if isinstance(value, bool):
        return None, "not a number of parts"
    if isinstance(value, int | float):
        number = value
    else:
        try:
            number = float(value)
        except ValueError:
            return None, "not a number of parts"
        if not math.isfinite(number):
            return None, "not a finite number"
    if number < 0:
        return None, "negative"
    if number > MAX_ORDER_QUANTITY:
        return None, f"above the largest order target, {MAX_ORDER_QUANTITY}"
    return (round(number) or None), None


def as_bool(value: Value) -> bool | None:
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


def state_kind(sig: Signals) -> int:
    """The kind of the signal that carries the machine state (the total counter: inferred)."""
    if sig.state is not None:
        return SIG_STATE
    return SIG_RUNNING if sig.running is not None else SIG_TOTAL


def counter_signals(sig: Signals) -> dict[int, CounterSignal]:
    """The line's counters by kind: total, and reject or good if configured."""
    counters = {SIG_TOTAL: sig.total_count}
    if sig.reject_count is not None:
        counters[SIG_REJECT] = sig.reject_count
    elif sig.good_count is not None:
        counters[SIG_GOOD] = sig.good_count
    return counters


def signal_kinds(sig: Signals) -> dict[str, int]:
    """``SOURCE.TAG`` -> signal kind, for every tag the line reads."""
    kinds: dict[str, int] = {}
    if sig.state is not None:
        kinds[sig.state.tag] = SIG_STATE
    elif sig.running is not None:
        kinds[sig.running] = SIG_RUNNING
    if sig.reason is not None:
        kinds[sig.reason.tag] = SIG_REASON
    if sig.product is not None:
        kinds[sig.product.tag] = SIG_PRODUCT
    if sig.energy is not None:
        kinds[sig.energy.tag] = SIG_ENERGY
    if sig.power is not None:
        kinds[sig.power] = SIG_POWER
    if sig.order is not None:
        order_tags = (sig.order.id, sig.order.target, sig.order.product)
        for kind, tag in zip(ORDER_KINDS, order_tags, strict=True):
            if tag is not None:
                kinds[tag] = kind
    for kind, counter in counter_signals(sig).items():
        kinds[counter.tag] = kind
    return kinds


TagLookup = dict[str, dict[str, tuple[int, str]]]


def tag_lookup(kinds: dict[str, int]) -> tuple[TagLookup, dict[str, list[tuple[int, str]]]]:
    """``source -> tag -> (kind, key)`` for every way ``SOURCE.TAG`` can split at a dot, so
    that a sample matches exactly when ``f"{source}.{tag}" == key`` without building that
    string; and ``source -> [(kind, key)]``."""
    lookup: TagLookup = {}
    by_source: dict[str, list[tuple[int, str]]] = {}
    for key, kind in kinds.items():
        for i, ch in enumerate(key):
            if ch == ".":
                lookup.setdefault(key[:i], {})[key[i + 1 :]] = (kind, key)
                by_source.setdefault(key[:i], []).append((kind, key))
    return lookup, by_source
