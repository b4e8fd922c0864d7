"""Prometheus metrics: the agent's own registry, ``edge_agent_`` prefix, bounded labels.

Labels are only ``source``, ``line`` and small fixed enums (``kind``, ``topic``); a tag value is
never a label. The HTTP endpoint is prometheus-client's own server (one small thread, started by
:meth:`Metrics.serve` and stopped by :meth:`Metrics.stop_serving`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the agent exports. Components never touch metrics: the supervisor and the
    engine runner update them from what the components report."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge(
            "edge_agent_info", "Agent build information", ["version", "site"], registry=r
        )
        # Sources
        self.poll_duration = Histogram(
            "edge_agent_poll_duration_seconds",
            "Time to read all tags of a source once",
            ["source"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.poll_errors = Counter(
            "edge_agent_poll_errors_total",
            "Failed polls and connection attempts",
            ["source"],
            registry=r,
        )
        self.skipped_ticks = Counter(
            "edge_agent_poll_skipped_ticks_total",
            "Poll ticks skipped because the previous poll overran",
            ["source"],
            registry=r,
        )
        self.source_up = Gauge(
            "edge_agent_source_up",
            "1 while the source is connected and answering",
            ["source"],
            registry=r,
        )
        self.bad_samples = Counter(
            "edge_agent_bad_samples_total",
            "Samples with bad or uncertain quality",
            ["source"],
            registry=r,
        )
        self.tag_age = Gauge(
            "edge_agent_source_last_good_read_age_seconds",
            "Seconds since the source's last complete good read (at the last poll)",
            ["source"],
            registry=r,
        )
        self.last_good_read = Gauge(
            "edge_agent_source_last_good_read_timestamp_seconds",
            "POSIX time of the source's last good read",
            ["source"],
            registry=r,
        )
        # Lines
        self.line_ratio = Gauge(
            "edge_agent_line_kpi_ratio",
            "Current shift KPI ratio (availability, performance, quality, oee, data_coverage)",
            ["line", "kpi"],
            registry=r,
        )
        self.line_throughput = Gauge(
            "edge_agent_line_throughput_parts_per_hour",
            "Current shift throughput in parts per hour",
            ["line", "kind"],
            registry=r,
        )
        self.line_parts = Counter(
            "edge_agent_line_parts_total",
            "Parts counted since the agent started",
            ["line", "kind"],
            registry=r,
        )
        self.line_running = Gauge(
            "edge_agent_line_running", "1 while the line is in state running", ["line"], registry=r
        )
        self.line_state = Gauge(
            "edge_agent_line_state", "1 for the line's current state", ["line", "state"], registry=r
        )
        # MQTT
        self.outbox_depth = Gauge(
            "edge_agent_outbox_messages",
            "Messages waiting in the outbox for the broker",
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "edge_agent_outbox_oldest_age_seconds",
            "Age of the oldest message in the outbox",
            registry=r,
        )
        self.outbox_bytes = Gauge(
            "edge_agent_outbox_bytes",
            "Payload bytes waiting in the outbox",
            registry=r,
        )
        self.outbox_dropped = Counter(
            "edge_agent_outbox_dropped_total",
            "Messages the outbox deleted unsent because it was over its limits",
            ["topic"],
            registry=r,
        )
        self.outbox_held = Gauge(
            "edge_agent_outbox_held_in_memory",
            "Messages held in memory because the outbox cannot be written (disk full)",
            registry=r,
        )
        self.broker_connected = Gauge(
            "edge_agent_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.published = Counter(
            "edge_agent_mqtt_published_total",
            "Messages acknowledged by the broker",
            registry=r,
        )
        self.reports = Counter(
            "edge_agent_reports_total",
            "Reports produced by the engine",
            ["line", "topic"],
            registry=r,
        )
        self.engine_ticks = Counter(
            "edge_agent_engine_ticks_total", "Engine evaluation cycles completed", registry=r
        )
        self.component_restarts = Counter(
            "edge_agent_component_restarts_total",
            "Times the supervisor restarted a failed component",
            ["component"],
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; return the bound port (``port=0``: a free one)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
