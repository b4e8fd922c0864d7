"""A line engine seen through the MQTT contract, as a subscriber sees it.

:class:`WireEngine` drives the very same :class:`~edge_agent.engine.line.LineEngine` and turns
its typed reports into the records the MQTT sink stores (:func:`edge_agent.contract.message`:
topic suffix, JSON payload, retain flag, QoS), so that engine tests assert on the wire payloads.
"""

from __future__ import annotations

from typing import Any

from edge_agent import contract
from edge_agent.engine.line import LineEngine
from edge_agent.model import OutMessage


class WireEngine:
    """A :class:`LineEngine` whose reports come out as :class:`OutMessage` records; every other
    attribute is the engine's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.engine = LineEngine(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def tick(self, now: float) -> list[OutMessage]:
        return contract.messages(self.engine.tick(now))

    def finish(self, now: float) -> list[OutMessage]:
        return contract.messages(self.engine.finish(now))

    def snapshot(self, now: float) -> OutMessage:
        return contract.message(self.engine.snapshot(now))

    def snapshots(self, now: float) -> list[OutMessage]:
        return contract.messages(self.engine.snapshots(now))

    def energy_snapshot(self, now: float) -> OutMessage:
        return contract.message(self.engine.energy_snapshot(now))

    def order_snapshot(self, now: float) -> OutMessage:
        return contract.message(self.engine.order_snapshot(now))
