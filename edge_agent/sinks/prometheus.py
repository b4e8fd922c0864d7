"""The metrics moved to :mod:`edge_agent.metrics`; this name stays importable for code that
still imports it from here."""

from __future__ import annotations

from edge_agent.metrics import Metrics, MetricsServer, SinkFigures

__all__ = ["Metrics", "MetricsServer", "SinkFigures"]
