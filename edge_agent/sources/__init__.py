"""PLC sources. Protocol libraries are imported only by their own module, and only when a source of
that protocol is configured (asyncua alone costs ~48 MiB and 0.3 s to import)."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_agent.config.schema import ModbusSourceConfig, OpcuaSourceConfig, SourceConfig
from edge_agent.model import Source


def create_source(cfg: SourceConfig, *, clock: Callable[[], float] = time.time) -> Source:
    """Build the source for ``cfg``, importing its protocol library only now."""
    if isinstance(cfg, ModbusSourceConfig):
        from edge_agent.sources.modbus import ModbusSource  # noqa: PLC0415

        return ModbusSource(cfg, clock=clock)
    if isinstance(cfg, OpcuaSourceConfig):
        from edge_agent.sources.opcua import OpcuaSource  # noqa: PLC0415

        return OpcuaSource(cfg, clock=clock)
    raise TypeError(f"unknown source config {type(cfg).__name__}")
