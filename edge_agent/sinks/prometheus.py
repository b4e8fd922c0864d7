"""Prometheus metrics: the agent's own registry, ``edge_agent_`` prefix, bounded labels.

Labels are only ``source``, ``line``, ``sink`` (the configured MQTT sink names) and small fixed
enums (``kind``, ``topic``); a tag value is never a label. The HTTP endpoint is
prometheus-client's WSGI app on its threading WSGI server
(started by :meth:`Metrics.serve`, stopped by :meth:`Metrics.stop_serving`), optionally behind
TLS and HTTP basic auth. prometheus-client 0.26's ``start_http_server`` offers TLS but no basic
auth on the serving side (its ``basic_auth_handler`` is for pushing to a Pushgateway), so the
app is wrapped here: a request without the right ``Authorization: Basic`` header gets 401. The
comparison is constant-time; the password is read once at start.
"""

from __future__ import annotations

import base64
import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

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
            ["sink"],
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "edge_agent_outbox_oldest_age_seconds",
            "Age of the oldest message in the outbox",
            ["sink"],
            registry=r,
        )
        self.outbox_bytes = Gauge(
            "edge_agent_outbox_bytes",
            "Payload bytes waiting in the outbox",
            ["sink"],
            registry=r,
        )
        self.outbox_dropped = Counter(
            "edge_agent_outbox_dropped_total",
            "Messages the outbox deleted unsent because it was over its limits",
            ["sink", "topic"],
            registry=r,
        )
        self.outbox_held = Gauge(
            "edge_agent_outbox_held_in_memory",
            "Messages held in memory because the outbox cannot be written (disk full)",
            ["sink"],
            registry=r,
        )
        self.outbox_lost = Counter(
            "edge_agent_outbox_lost_total",
            "Reports that never reached the outbox: held in memory while it could not be"
            " written (disk full), then dropped (too many held, or still held at stop)",
            ["sink"],
            registry=r,
        )
        self.outbox_writable = Gauge(
            "edge_agent_outbox_writable",
            "0 while the outbox cannot be written (disk full, read-only), else 1",
            ["sink"],
            registry=r,
        )
        self.storage_recovered = Counter(
            "edge_agent_storage_recovered_total",
            "State files found damaged (moved aside, salvaged) or deleted while running"
            " (recreated)",
            ["file", "reason"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "edge_agent_mqtt_connected",
            "1 while connected to the MQTT broker",
            ["sink"],
            registry=r,
        )
        self.published = Counter(
            "edge_agent_mqtt_published_total",
            "Messages acknowledged by the broker",
            ["sink"],
            registry=r,
        )
        self.delivery_unconfirmed = Gauge(
            "edge_agent_mqtt_delivery_unconfirmed",
            "1 while the broker does not deliver the agent's own 'online' status back "
            "(its ACL probably drops the agent's messages)",
            ["sink"],
            registry=r,
        )
        self.published_unconfirmed = Counter(
            "edge_agent_mqtt_published_unconfirmed_total",
            "Messages the broker acknowledged on a connection over which it did not deliver "
            "the agent's own 'online' status back: probably dropped by its ACL",
            ["sink"],
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

    def serve(
        self,
        host: str,
        port: int,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> int:
        """Start the /metrics endpoint; return the bound port (``port=0``: a free one).

        HTTPS (TLS 1.2 or newer) when ``cert_file`` and ``key_file`` are given; HTTP basic auth
        when ``username`` and ``password`` are. Raises ``OSError`` / ``ssl.SSLError`` when the
        port or the files cannot be used.
        """
        app: Callable[..., Iterable[bytes]] = make_wsgi_app(self.registry)
        if username is not None and password is not None:
            app = _basic_auth(app, username, password)
        server_class = _Server6 if ":" in host else ThreadingWSGIServer
        server = make_server(host, port, app, server_class, handler_class=_SilentHandler)
        scheme = "http"
        if cert_file is not None and key_file is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(cert_file, key_file)
            except BaseException:
                server.server_close()
                raise
            server.socket = context.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        auth = " (basic auth)" if username is not None else ""
        log.info("metrics on %s://%s:%d/metrics%s", scheme, host, self.port, auth)
        if username is not None and scheme == "http" and host not in ("127.0.0.1", "::1"):
            log.warning("metrics basic auth without TLS: the password crosses the network in clear")
        return self.port

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def _basic_auth(
    app: Callable[..., Iterable[bytes]], username: str, password: str
) -> Callable[..., Iterable[bytes]]:
    expected = b"Basic " + base64.b64encode(f"{username}:{password}".encode())

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="edge-agent"'), ("Content-Type", "text/plain")],
        )
        return [b"401 Unauthorized\n"]

    return guarded
