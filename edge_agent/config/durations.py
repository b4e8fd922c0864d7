"""Durations as written in the configuration: ``500ms``, ``5s``, ``15m``, ``8h``, ``30d`` or plain
seconds.

A duration is one number followed by one unit; compound forms (``1h30m``) are not accepted, so
that every duration in a file reads the same way. Plain numbers mean seconds.
"""

from __future__ import annotations

import math
import re
from typing import Final

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# One number and one unit, in a syntax both Python and JSON Schema (ECMA-262) read.
NUMBER: Final = r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+"
UNITS: Final = "|".join(_UNIT_S)
_DURATION = re.compile(f"(?P<number>{NUMBER})\\s*(?P<unit>{UNITS})")

# Anything longer than a year in a polling or shift configuration is a typo, and bounding the
# value keeps every later float computation finite.
MAX_DURATION_S = 366 * 24 * 3600.0


def parse_duration(text: str | int | float) -> float:
    """Return the duration ``text`` stands for, in seconds (a finite float >= 0).

    Accepts ``"<number><unit>"`` with unit ``ms``, ``s``, ``m``, ``h`` or ``d`` (``"1.5s"``,
    ``"500ms"``, ``"30d"``), or a plain number of seconds (``5``, ``0.5``, ``"5"``). Raises
    :class:`ValueError` with a message fit to show a user otherwise. Whether zero is acceptable
    is the caller's decision.
    """
    # bool is an int subclass, but `true` is never a duration: it goes down the text path and fails.
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        stripped = str(text).strip()
        match = _DURATION.fullmatch(stripped)
        if match is not None:
            value = float(match["number"]) * _UNIT_S[match["unit"]]
        else:
            try:
                value = float(stripped)
            except ValueError:
                raise ValueError(
                    f"expected a duration like '5s', '500ms', '15m' or '8h', got {text!r}"
                ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be a finite number >= 0, got {text!r}")
    if value > MAX_DURATION_S:
        raise ValueError(f"a duration must be at most 366 days, got {text!r}")
    return value
