"""What the plant's things are, independent of how they are configured or published.

The engine, the sinks and the configuration all speak of machine states, energy units and
Sparkplug ids; they import them from here, so the engine need not import the configuration to
know what a state is.
"""

from __future__ import annotations

import enum
from typing import Final


class MachineState(enum.StrEnum):
    """Machine state categories (DESIGN §3; ISO 22400 loss model)."""

    RUNNING = "running"
    IDLE = "idle"
    FAULT = "fault"
    PLANNED_STOP = "planned_stop"
    CHANGEOVER = "changeover"
    STARVED = "starved"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"  # no data: never configured, produced by the engine only


class Convention(enum.StrEnum):
    """Which time counts against availability (docs/kpi.md, "Conventions")."""

    ISO22400 = "iso22400"  # planned states and breaks are outside planned production time
    PLANNED_DOWNTIME_LOSS = "planned_downtime_loss"  # planned states are availability losses
    SIX_BIG_LOSSES = "six_big_losses"  # micro-stops are performance losses (TPM, Nakajima)


class EnergyUnit(enum.StrEnum):
    """Unit of an active-energy meter counter."""

    KWH = "kWh"
    WH = "Wh"


# Weekday names as written in a configuration, index = date.weekday() (0 = Monday).
WEEKDAY_NAMES: Final[tuple[str, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS: Final[frozenset[int]] = frozenset(range(7))

# Characters a Sparkplug group, edge node or device id must not contain (topic levels).
FORBIDDEN_SPARKPLUG_ID_CHARS: Final = "+#/"


def sparkplug_id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Sparkplug id (group, edge node, device), or ``None``."""
    if not value:
        return "must not be empty"
    bad = sorted({c for c in value if c in FORBIDDEN_SPARKPLUG_ID_CHARS})
    if bad:
        return f"must not contain {', '.join(repr(c) for c in bad)} (it is a topic level)"
    return None
