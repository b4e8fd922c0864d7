"""Prometheus metrics: the agent's own registry, ``edge_agent_`` prefix, bounded labels, and the
``/metrics`` endpoint.

Labels are only ``source``, ``line``, ``sink`` (the configured MQTT sink names) and small fixed
enums (``kind``, ``topic``); a tag value is never a label.

Two kinds of figures:

- **Events** (a poll took so long, a report was produced, a component was restarted, a state
  file was recovered) are counted when they happen, on the metric objects of :class:`Metrics`.
- **State** (is a source up, is a broker connected, how deep is an outbox, how many messages did
  a broker acknowledge) is read from the components when Prometheus scrapes, by a collector
  (:meth:`Metrics.read_sinks`, :meth:`Metrics.read_sources`): no copy of it is kept in step.

:class:`MetricsServer` serves the registry over HTTP(S) from an asyncio server (aiohttp) whose
``run()`` is a task under the supervisor, optionally behind TLS and HTTP basic auth (checked
here: constant-time compare; 401 otherwise; the password is read once at start).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from edge_agent.errors import EdgeAgentError
from edge_agent.http import is_loopback, listening

if TYPE_CHECKING:
    from aiohttp import web

    from edge_agent.config.schema import PrometheusConfig

log = logging.getLogger(__name__)

_POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkFigures:
    """What one MQTT sink and its outbox show at a scrape. Totals count since the agent started
    (across reconnects and reloads)."""

    connected: bool
    published: int  # messages acknowledged by the broker
    published_unconfirmed: int  # acknowledged on a link that did not echo our 'online' back
    delivery_unconfirmed: bool  # the link up now does not echo our 'online' back
    outbox_messages: int
    outbox_bytes: int
    outbox_oldest_age_s: float  # 0 when empty or unreadable
    outbox_writable: bool
    held_in_memory: int  # reports held while the outbox cannot be written
    lost: int  # reports held, then dropped
    dropped: Mapping[str, int] = field(default_factory=dict)  # by topic suffix, at the limits


class MetricsServeError(EdgeAgentError):
    """The /metrics endpoint cannot be served: the address is in use or not ours, or the
    certificate or key cannot be used."""


SinkReader = Callable[[], Iterable[tuple[str, SinkFigures]]]
SourceReader = Callable[[], Iterable[tuple[str, bool]]]


class Metrics:
    """Every metric the agent exports. Components never hold metric objects for their state:
    the collector reads it from them at scrape time; the engine runner and the pollers count
    their events here."""

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
        self.reports = Counter(
            "edge_agent_reports_total",
            "Reports produced by the engine",
            ["line", "topic"],
            registry=r,
        )
        self.engine_ticks = Counter(
            "edge_agent_engine_ticks_total", "Engine evaluation cycles completed", registry=r
        )
        # Storage and supervision
        self.storage_recovered = Counter(
            "edge_agent_storage_recovered_total",
            "State files found damaged (moved aside, salvaged) or deleted while running"
            " (recreated)",
            ["file", "reason"],
            registry=r,
        )
        self.component_restarts = Counter(
            "edge_agent_component_restarts_total",
            "Times the supervisor restarted a failed component",
            ["component"],
            registry=r,
        )
        self._collector = _StateCollector()
        r.register(self._collector)

    def read_sinks(self, reader: SinkReader) -> None:
        """Read each MQTT sink's figures from ``reader`` at every scrape."""
        self._collector.sinks = reader

    def read_sources(self, reader: SourceReader) -> None:
        """Read whether each source is up from ``reader`` at every scrape."""
        self._collector.sources = reader


class _StateCollector:
    """The state figures, read from the components at scrape time."""

    def __init__(self) -> None:
        self.sinks: SinkReader = lambda: ()
        self.sources: SourceReader = lambda: ()

    def collect(self) -> Iterable[Metric]:
        source_up = GaugeMetricFamily(
            "edge_agent_source_up",
            "1 while the source is connected and answering",
            labels=["source"],
        )
        for name, up in self.sources():
            source_up.add_metric([name], 1.0 if up else 0.0)
        yield source_up

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["sink"])

        def counter(
            name: str, doc: str, labels: tuple[str, ...] = ("sink",)
        ) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=list(labels))

        connected = gauge("edge_agent_mqtt_connected", "1 while connected to the MQTT broker")
        published = counter("edge_agent_mqtt_published", "Messages acknowledged by the broker")
        delivery_unconfirmed = gauge(
            "edge_agent_mqtt_delivery_unconfirmed",
            "1 while the broker does not deliver the agent's own 'online' status back "
            "(its ACL probably drops the agent's messages)",
        )
        published_unconfirmed = counter(
            "edge_agent_mqtt_published_unconfirmed",
            "Messages the broker acknowledged on a connection over which it did not deliver "
            "the agent's own 'online' status back: probably dropped by its ACL",
        )
        depth = gauge("edge_agent_outbox_messages", "Messages waiting in the outbox for the broker")
        oldest = gauge(
            "edge_agent_outbox_oldest_age_seconds", "Age of the oldest message in the outbox"
        )
        size = gauge("edge_agent_outbox_bytes", "Payload bytes waiting in the outbox")
        dropped = counter(
            "edge_agent_outbox_dropped",
            "Messages the outbox deleted unsent because it was over its limits",
            ("sink", "topic"),
        )
        held = gauge(
            "edge_agent_outbox_held_in_memory",
            "Messages held in memory because the outbox cannot be written (disk full)",
        )
        lost = counter(
            "edge_agent_outbox_lost",
            "Reports that never reached the outbox: held in memory while it could not be"
            " written (disk full), then dropped (too many held, or still held at stop)",
        )
        writable = gauge(
            "edge_agent_outbox_writable",
            "0 while the outbox cannot be written (disk full, read-only), else 1",
        )
        for name, f in self.sinks():
            connected.add_metric([name], 1.0 if f.connected else 0.0)
            published.add_metric([name], f.published)
            delivery_unconfirmed.add_metric([name], 1.0 if f.delivery_unconfirmed else 0.0)
            published_unconfirmed.add_metric([name], f.published_unconfirmed)
            depth.add_metric([name], f.outbox_messages)
            oldest.add_metric([name], f.outbox_oldest_age_s)
            size.add_metric([name], f.outbox_bytes)
            for topic, count in sorted(f.dropped.items()):
                dropped.add_metric([name, topic], count)
            held.add_metric([name], f.held_in_memory)
            lost.add_metric([name], f.lost)
            writable.add_metric([name], 1.0 if f.outbox_writable else 0.0)
        yield from (connected, published, delivery_unconfirmed, published_unconfirmed)
        yield from (depth, oldest, size, dropped, held, lost, writable)


class MetricsServer:
    """``GET /metrics`` over HTTP, or HTTPS (TLS 1.2 or newer) when ``cert_file`` and
    ``key_file`` are given; HTTP basic auth when ``username`` and ``password`` are.

    :meth:`run` is the component under the supervisor: it listens (``port=0``: a free port, see
    :attr:`port`), sets :attr:`listening`, serves until cancelled, then closes the listening
    socket and its connections. It raises :class:`MetricsServeError` when the address or the
    files cannot be used.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.cert_file, self.key_file = cert_file, key_file
        self.username = username
        self._expected: bytes | None = None
        if username is not None and password is not None:
            self._expected = b"Basic " + base64.b64encode(f"{username}:{password}".encode())
        self.port: int | None = None
        self.listening = asyncio.Event()

    @classmethod
    def from_config(cls, metrics: Metrics, p: PrometheusConfig) -> MetricsServer:
        """The server the ``prometheus`` section describes (its password file read now; raises
        :class:`MetricsServeError` when it cannot be)."""
        from edge_agent.secrets import SecretError, read_secret  # noqa: PLC0415

        try:
            password = read_secret(p.password_file) if p.password_file is not None else None
        except SecretError as exc:
            raise MetricsServeError(f"metrics: {exc} (prometheus.password_file)") from exc
        return cls(
            metrics,
            p.host,
            p.port,
            cert_file=p.cert_file,
            key_file=p.key_file,
            username=p.username,
            password=password,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.cert_file is None or self.key_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise MetricsServeError(
                f"metrics: cannot use certificate {self.cert_file} with key {self.key_file}"
                f" (prometheus.cert_file, prometheus.key_file): {exc}"
            ) from exc
        return context

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web  # noqa: PLC0415

        if self._expected is not None:
            given = request.headers.get("Authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, self._expected):
                return web.Response(
                    status=401,
                    text="401 Unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="edge-agent"'},
                )
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(self.metrics.registry))
        response.headers["Content-Type"] = content_type
        response.enable_compression()  # only when the scraper accepts it (Prometheus does)
        return response

    async def run(self) -> None:
        # Imported here: an agent with metrics disabled does not pay for aiohttp.
        from aiohttp import web  # noqa: PLC0415

        context = self._ssl_context()  # an unusable key or certificate fails before binding
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        # The server has no access log (Prometheus scrapes every few seconds); a scrape in
        # flight at stop gets a second to finish.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        keys = "prometheus.host, prometheus.port"
        async with listening(
            runner,
            self.host,
            self.requested_port,
            context,
            what="metrics",
            keys=keys,
            error=MetricsServeError,
        ) as port:
            self.port = port
            scheme = "https" if context is not None else "http"
            auth = " (basic auth)" if self._expected is not None else ""
            log.info("metrics on %s://%s:%d/metrics%s", scheme, self.host, self.port, auth)
            if self._expected is not None and context is None and not is_loopback(self.host):
                log.warning(
                    "metrics basic auth without TLS: the password crosses the network in clear"
                )
            self.listening.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                self.listening.clear()
