"""Data that crosses component boundaries: samples in, messages out.

Times are POSIX seconds (UTC) as ``float`` everywhere inside the agent; they become ISO 8601 with
an offset only in payloads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

Value = bool | int | float | str | None


class Quality(enum.Enum):
    """Data quality of one sample, after OPC UA's good / uncertain / bad."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Sample(NamedTuple):
    """One tag value read from one source. Immutable.

    ``tag`` is the tag's name inside its source; ``key`` is the ``SOURCE.TAG`` name that line
    signals refer to. ``source_time`` is the PLC's own timestamp when the protocol gives one.

    A named tuple rather than a frozen dataclass: a 1,000-tag scan makes 1,000 of them, and a
    frozen dataclass costs ~0.85 µs each to build against ~0.3 µs (docs/performance.md).
    """

    source: str
    tag: str
    value: Value
    quality: Quality
    source_time: float | None
    agent_time: float

    @property
    def key(self) -> str:
        return f"{self.source}.{self.tag}"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message for the MQTT sink, before the outbox gives it its per-line ``seq``: made from
    a report by :func:`edge_agent.contract.message`.

    ``topic_suffix`` is relative to ``{topic_prefix}/{site}/{line}/`` (``kpi``, ``kpi/shift``,
    ``state``, ...: :data:`edge_agent.contract.LINE_TOPICS`). ``payload`` is JSON-serialisable
    and has no ``seq`` yet.
    """

    line: str
    topic_suffix: str
    payload: dict[str, Any]
    retain: bool
    qos: int = 1


class Source(Protocol):
    """A PLC connection. No retry, scheduling or logging policy lives behind this interface.

    ``read`` raises :class:`edge_agent.errors.NotConnectedError` when the connection is gone
    ("reconnect me"); a value the PLC reports as bad comes back as a sample with bad quality.
    """

    name: str

    async def connect(self) -> None: ...

    async def read(self) -> list[Sample]: ...

    async def close(self) -> None: ...
