"""Fault scenarios for the simulators, selectable per run (``edge-agent-sim --fault ...``).

A :class:`Scenario` repeats one fault: every ``every_s`` seconds of real time it is switched on
for ``duration_s``, then off again. The faults a PLC shows in the field:

- ``drop``: both servers stop (connections closed, new ones refused) and come back;
- ``restart``: the same, and the PLC's counters start again from 0 (a power cycle);
- ``stall``: Modbus requests are accepted but never answered (a hung PLC or gateway);
- ``busy``: Modbus requests are answered with exception 6 (server device busy);
- ``illegal``: Modbus requests are answered with exception 2 (illegal data address);
- ``bad-status``: OPC UA values carry the status ``BadDeviceFailure`` (no value);
- ``garbage``: Modbus answers are replaced by random bytes of the same length (line noise, a
  device speaking another protocol).

Faults between the agent and the PLC's network (latency, a silent partition, cut connections)
are the job of a TCP proxy in front of the servers (``tests/helpers/proxy.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Fault", "Scenario"]


class Fault(enum.StrEnum):
    DROP = "drop"
    RESTART = "restart"
    STALL = "stall"
    BUSY = "busy"
    ILLEGAL = "illegal"
    BAD_STATUS = "bad-status"
    GARBAGE = "garbage"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """``fault`` on for ``duration_s`` every ``every_s`` (the first time after ``every_s``)."""

    fault: Fault
    every_s: float = 30.0
    duration_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.duration_s > 0 or not self.every_s > self.duration_s:
            raise ValueError(
                f"need every_s > duration_s > 0, got every_s={self.every_s},"
                f" duration_s={self.duration_s}"
            )
