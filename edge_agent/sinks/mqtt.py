"""The MQTT sink: moves messages from the durable outbox to the broker, oldest first.

Delivery is at least once and in order (DESIGN §4): messages are published in outbox order over
one connection, and a row is deleted only after the broker acknowledged it (PUBACK for QoS 1).
A connection that breaks mid-way leaves the unacknowledged rows in the outbox; the next
:meth:`MqttSink.run` sends them again, so subscribers may see a message twice and de-duplicate by
``(line, seq)``.

One connection per :meth:`MqttSink.run` call. ``run`` raises :class:`SinkError` when the
connection cannot be made or is lost; the supervisor owns reconnecting and backoff, and the
library's own reconnect is off.

Presence: ``{topic_prefix}/{site}/status`` carries a retained ``online`` published on every
connect; the last will (retained, QoS 1) says ``offline`` when the connection dies without a
DISCONNECT, and :meth:`MqttSink.close` publishes ``offline`` itself before disconnecting.

Delivery check (``json`` encoding): every connection also subscribes to the status topic, and
expects its own ``online`` back within ``timeout_s``. An MQTT 3.1.1 broker acknowledges a publish
its ACL denies exactly like a delivered one and drops it: the missing echo is the only sign. It
is logged once (and counted in :attr:`MqttSink.unconfirmed_total`); publishing goes on, as the
broker may deny only the agent's reading of the topic. A refused subscription (SUBACK 0x80) is
logged once per topic filter, with what it costs.

Subscriptions: :meth:`MqttSink.subscribe` registers a topic filter and a handler before
:meth:`MqttSink.run`; every connection subscribes to all of them after announcing ``online``, and
messages are handed to the handlers of the filters they match, in arrival order, on the event
loop. Used for order commands on the plant's broker (``mqtt.commands``) and for Sparkplug's NCMD
(subscribed before the births instead, as Sparkplug's session setup says).

Sharing (``share`` in the sink's configuration): the engine runner stores only the shared
messages, reduced to the agreed fields, in this sink's outbox; the sink checks each message again
as it publishes it, so that messages queued under an older, wider agreement (or by another sink,
if the configuration's sinks were reordered) never leave the plant: a message of a line or topic
no longer shared is deleted unsent, a payload with fields no longer agreed is published without
them.

Encoding (``encoding`` in the sink's configuration): ``json`` is the above; ``sparkplug_b``
publishes Sparkplug B instead (:mod:`edge_agent.sinks.sparkplug` turns each outbox message into
a DDATA): the last will is the NDEATH, births replace ``online``, deaths replace ``offline``, an
NCMD rebirth request publishes the births again, and nothing is published on the JSON topics.
Delivery, order and the outbox are the same for both.

The broker connection is :mod:`edge_agent.sinks.mqtt_client`, our own small asyncio client over
paho-mqtt's public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from edge_agent.config.schema import MqttConfig, MqttEncoding, MqttProtocol
from edge_agent.errors import BrokerRefusedError, SinkError, StorageError
from edge_agent.secrets import SecretError, read_secret
from edge_agent.sharing import ShareFilter
from edge_agent.sinks import sparkplug
from edge_agent.sinks.mqtt_client import (
    ConnectFailed,
    ConnectRefused,
    ConnectTimeout,
    LinkLost,
    MqttClient,
    MqttError,
    MQTTMessageInfo,
    ReasonCode,
    Will,
    build_tls_context,
    topic_matches,
)
from edge_agent.sinks.outbox import Outbox, StoredMessage

log = logging.getLogger(__name__)

STATUS_SCHEMA = "edge-agent/status/1"
# While acknowledged rows cannot be deleted (a storage error), the idle pump retries this often.
_STORAGE_RETRY_S = 1.0

# A subscription's handler: (topic, payload, retained). Called on the event loop; must not block.
MessageHandler = Callable[[str, bytes, bool], None]

# What a refused subscription costs, unless the subscriber says (MqttSink.subscribe's `purpose`).
_SUBSCRIPTION_LOST = "messages on it will not arrive"


def status_payload(site: str, status: Literal["online", "offline"], ts: float) -> bytes:
    """The retained presence payload (``docs/schemas/status.schema.json``)."""
    doc = {"schema": STATUS_SCHEMA, "site": site, "status": status, "ts": _iso(ts)}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class _ClientLog(logging.Handler):
    """Receives the MQTT client's own log records, keeps the last error and passes every
    record on at DEBUG: a failed connection is explained once, in the :class:`SinkError`.

    With TLS 1.3 the broker judges the client certificate after the handshake has completed,
    so a refused certificate shows up only as an alert on the first read, which paho logs
    ("failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] ...", the exception among the
    record's arguments), then as a lost link before CONNACK; the error kept here turns that
    into a clear refusal. The exception is judged by its type, never by its text.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last_error: str | None = None
        self.last_exception: BaseException | None = None
        # Not in the hierarchy. Below DEBUG on our side only errors are kept: paho logs two
        # records per QoS 1 message, and building them cost as much CPU as the publish itself.
        # Decided at each connect (a new client logs through a new handler).
        level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
        self.logger = logging.Logger("edge_agent.sinks.mqtt.client", level)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.last_error = text
            args = record.args if isinstance(record.args, tuple) else ()
            self.last_exception = next((a for a in args if isinstance(a, BaseException)), None)
        log.debug("mqtt client: %s", text)


class MqttSink:
    """Publishes the outbox to an MQTT broker (see the module docstring for the contract).

    Used from the event loop thread only, like the :class:`Outbox` it reads. ``window`` bounds
    the publishes in flight: that many are handed to the client in outbox order (paho writes
    them in call order), and their rows are deleted in one transaction once all their PUBACKs
    arrived.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        site: str,
        outbox: Outbox,
        window: int | None = None,
        lines: Sequence[str] = (),
        on_link: Callable[[], None] | None = None,
    ) -> None:
        """``lines``: the agent's line names, the Sparkplug devices (``sparkplug_b`` only).
        ``on_link``: called on every connection once it is set up (``online`` published,
        subscriptions made), before the outbox is published."""
        window = cfg.max_inflight if window is None else window
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._cfg = cfg
        self._site = site
        self._outbox = outbox
        self._window = window
        self._wake = asyncio.Event()  # set by notify(), close() and a lost connection
        self._closing = False
        self._close_deadline = 0.0  # loop time
        self._running = False
        self._run_done = asyncio.Event()
        self._connected = False
        self._published_total = 0
        self._last_error: str | None = None
        self.status_topic = f"{cfg.topic_prefix}/{site}/status"
        self._paho_log = _ClientLog()
        self._on_link = on_link
        self._will_topic = self.status_topic
        self._subscriptions: list[tuple[str, MessageHandler, int, str]] = []
        self._refused_subscriptions: set[str] = set()  # logged once each
        # The delivery check (module docstring): the `online` payload of this connection, the
        # timer that gives up on its echo, and what was published on unconfirmed links.
        self._online_sent: bytes | None = None
        self._echo_timer: asyncio.TimerHandle | None = None
        # The last checked connection's `online` did not come back (logged on each change).
        self.status_echo_missing = False
        self.delivery_confirmed = False  # this connection's `online` came back
        self._link_open = False  # this connection is up and its publishes are counted
        self._link_unconfirmed = False  # this connection's `online` did not come back
        self._link_published_from = 0
        self._link_controls = 0  # messages published outside the pump on this connection
        self._unconfirmed_done = 0
        self._share = ShareFilter(cfg.share)
        self.withheld_total = 0  # queued messages deleted unsent: no longer shared
        # Deleted without reaching subscribers: the broker refused them (an MQTT 5 PUBACK with a
        # failure reason code, e.g. not authorized) or they could not be encoded.
        self.refused_total = 0
        self._refusals_logged: set[tuple[str, str]] = set()
        # An NCMD rebirth request not yet served: the pump publishes the births once every
        # earlier DDATA is acknowledged (so seq and values stay in wire order).
        self._rebirth_pending = False
        self._retained_ncmd_logged = False
        # Storage: rows the broker acknowledged whose DELETE failed (a full disk). A storage
        # error is not a link error: the link stays up, these rows are never sent again, and
        # every flush retries deleting them.
        self.unsaved_acks: set[int] = set()
        self.sparkplug: sparkplug.SparkplugSession | None = None
        if cfg.encoding is MqttEncoding.SPARKPLUG_B:
            self._setup_sparkplug(lines)
        else:
            self.subscribe(
                self.status_topic,
                self._on_status,
                qos=0,
                purpose="the agent cannot check that the broker delivers its messages",
            )

    # -- public API ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a broker connection is up (CONNACK received, not yet lost or closed)."""
        return self._connected

    @property
    def published_total(self) -> int:
        """Messages the broker acknowledged (and that were deleted from the outbox) so far."""
        return self._published_total

    @property
    def unconfirmed_total(self) -> int:
        """Of :attr:`published_total`, the messages acknowledged on connections over which the
        broker never delivered the agent's own ``online`` back: probably dropped by its ACL."""
        current = 0
        if self._link_open and self._link_unconfirmed:
            current = self._published_total - self._link_published_from
        return self._unconfirmed_done + current

    @property
    def last_error(self) -> str | None:
        """Why the last :meth:`run` failed; ``None`` until one did."""
        return self._last_error

    def topic(self, line: str, topic_suffix: str) -> str:
        """The full topic of a line's message: ``{topic_prefix}/{site}/{line}/{topic_suffix}``."""
        return f"{self._cfg.topic_prefix}/{self._site}/{line}/{topic_suffix}"

    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        *,
        qos: int = 1,
        purpose: str = _SUBSCRIPTION_LOST,
    ) -> None:
        """Receive messages on ``topic_filter`` (wildcards allowed) from the next connection on:
        each connection subscribes after publishing ``online``, and ``handler`` is called for
        every message that matches. A handler that raises is logged; the link stays up.
        ``purpose``: what a refused subscription costs, for the log line that reports it."""
        self._subscriptions.append((topic_filter, handler, qos, purpose))

    def notify(self) -> None:
        """Tell the sink that the outbox has new messages. Cheap; call after every append."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, announce ``online``, then publish the outbox until :meth:`close`.

        Returns only after :meth:`close` (at once if close was already called). Raises
        :class:`BrokerRefusedError` when the broker refuses the connection (bad credentials,
        not authorised, TLS failure), :class:`SinkError` when it cannot be reached, stops
        answering within ``timeout_s``, or the connection is lost. Unacknowledged messages stay
        in the outbox either way. On cancellation the connection is dropped without DISCONNECT,
        so the broker publishes the last will (``offline``).
        """
        if self._closing:
            return
        if self._running:
            raise RuntimeError("MqttSink.run() is already running")
        self._running = True
        self._run_done.clear()
        try:
            await self._run_connection()
        except SinkError as exc:
            self._last_error = str(exc)
            raise
        finally:
            self._connected = False
            self._running = False
            self._run_done.set()

    async def close(self, timeout_s: float) -> None:
        """Drain and close: used at shutdown while :meth:`run` is active.

        Publishing continues until the outbox is empty or ``timeout_s`` passed; then ``offline``
        is published (retained) and the connection closed with DISCONNECT, and :meth:`run`
        returns. Whatever is left stays in the outbox for the next start. Returns at once when
        no :meth:`run` is active; after ``close`` any :meth:`run` returns immediately. Raises
        :class:`SinkError` if ``run`` has not finished within the drain time plus the network
        deadlines.
        """
        loop = asyncio.get_running_loop()
        self._closing = True
        self._close_deadline = loop.time() + max(0.0, timeout_s)
        self._wake.set()
        if not self._running:
            return
        # Drain time, then at worst one batch, the offline publish and the DISCONNECT.
        guard_s = max(0.0, timeout_s) + 3 * self._cfg.timeout_s + 1.0
        try:
            async with asyncio.timeout(guard_s):
                await self._run_done.wait()
        except TimeoutError as exc:
            raise SinkError(f"broker link did not close within {guard_s:.1f} s") from exc

    # -- one connection -----------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    def _make_client(self) -> MqttClient:
        cfg = self._cfg
        password: str | None = None
        if cfg.password_file is not None:
            if cfg.username is None:
                raise SinkError("mqtt.password_file is set but mqtt.username is not")
            try:
                # Read on every connect, so a rotated credential is picked up on reconnect.
                password = read_secret(cfg.password_file)
            except SecretError as exc:
                raise SinkError(f"mqtt.password_file: {exc}") from None
        tls_context: ssl.SSLContext | None = None
        if cfg.tls is not None:
            try:
                tls_context = build_tls_context(
                    cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file, insecure=cfg.tls.insecure
                )
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"cannot load the mqtt TLS files: {exc}") from exc
        if self.sparkplug is not None:
            # NDEATH with this session's (new, persisted) bdSeq; never retained (Sparkplug).
            topic, death = self.sparkplug.new_session(time.time())
            will = Will(topic=topic, payload=death, qos=1, retain=False)
            self._will_topic = topic
        else:
            self._will_topic = self.status_topic
            will = Will(
                topic=self.status_topic,
                # The will's ts is the time of this connect: the broker sends it unchanged later.
                payload=status_payload(self._site, "offline", time.time()),
                qos=1,
                retain=True,
            )
        self._paho_log = _ClientLog()
        v5 = cfg.protocol is MqttProtocol.V5
        return MqttClient(
            cfg.host,
            cfg.port,
            client_id=cfg.client_id or f"edge-agent-{self._site}",
            protocol="5" if v5 else "3.1.1",
            # A persistent session: MQTT 3.1.1 clean_session=0; MQTT 5 clean start off and a
            # session expiry (without one an MQTT 5 broker ends the session at disconnect).
            clean_session=cfg.clean_session,
            session_expiry_s=None if cfg.clean_session else int(cfg.session_expiry_s),
            username=cfg.username,
            password=password,
            tls_context=tls_context,
            tls_insecure=cfg.tls is not None and cfg.tls.insecure,
            will=will,
            keepalive_s=max(1, round(cfg.keepalive_s)),
            connect_timeout_s=cfg.timeout_s,
            max_inflight=self._window,
            # The sink hands the client at most two windows (one on the wire, one queued behind
            # it, see _pump) plus the status messages; the bound makes paho's memory-only queue
            # refuse rather than grow if that ever changed.
            max_queued=2 * self._window + 2,
            logger=self._paho_log.logger,
            on_message=self._dispatch,
        )

    async def _run_connection(self) -> None:
        client = self._make_client()
        lost = client.lost
        clean = False
        try:
            await self._connect(client)
            self._connected = True
            self._link_open = True
            self.delivery_confirmed = False
            self._link_published_from = self._published_total
            self._link_controls = 0
            # The supervisor's health logs the link's state changes; this is every connect.
            log.debug("connected to broker %s", self._where)
            lost.add_done_callback(self._on_lost)
            if lost.done():  # closed in the same breath as the CONNACK
                raise SinkError(
                    f"connection to broker {self._where} closed right after the broker accepted it"
                )
            if self.sparkplug is None:
                await self._publish_status(client, "online", lost)
                await self._subscribe_all(client, lost)
            else:
                # Sparkplug session setup: subscribe to NCMD before the births.
                await self._subscribe_all(client, lost)
                await self._publish_status(client, "online", lost)
            if self._on_link is not None:
                self._on_link()
            await self._pump(client, lost)
            # No births after this point: a rebirth request is served by the pump only, so
            # the deaths below are the session's last messages.
            await self._publish_status(client, "offline", lost)
            await self._disconnect(client)
            clean = True
            log.info("broker link closed, %d message(s) left in the outbox", self._outbox.depth())
        finally:
            lost.remove_done_callback(self._on_lost)
            self._end_echo_check()
            if not clean:
                # No DISCONNECT: the broker publishes the last will (offline) for us.
                client.drop()

    async def _connect(self, client: MqttClient) -> None:
        cfg = self._cfg
        # paho connects in an executor thread, bounded by its own connect timeout; the CONNACK
        # wait is bounded by the client timeout. The outer deadline is a backstop for both.
        try:
            async with asyncio.timeout(2 * cfg.timeout_s + 1.0):
                await client.connect(cfg.timeout_s)
        except ConnectRefused as exc:
            raise BrokerRefusedError(
                f"broker {self._where} refused the connection: {exc}"
                f"{self._connack_hint(exc.reason_code)}"
            ) from None
        except ConnectFailed as exc:
            if exc.tls:
                raise BrokerRefusedError(f"TLS with broker {self._where} failed: {exc}") from None
            raise SinkError(f"cannot connect to broker {self._where}: {exc}") from None
        except (ConnectTimeout, LinkLost) as exc:
            raise self._no_connack(exc) from None
        except TimeoutError:
            raise SinkError(
                f"cannot connect to broker {self._where}: no answer within {cfg.timeout_s} s"
            ) from None

    def _connack_hint(self, rc: ReasonCode) -> str:
        """What a refusing CONNACK may mean for the ACL: a broker may judge the last will's
        topic at CONNECT (ejabberd refuses it with 'Topic name invalid', or 'Unspecified error'
        in MQTT 3.1.1)."""
        value = rc.value
        will = self._will_topic
        if value in (0x80, 0x90):
            return (
                f"; a broker whose ACL forbids the last will's topic {will} refuses the "
                "connection like this (ejabberd does): allow this client to publish to it"
            )
        if value in (0x86, 0x87):
            return (
                "; check mqtt.username and mqtt.password_file, and that the broker's ACL lets "
                f"this client publish to its last will's topic {will}"
            )
        return ""

    def _no_connack(self, exc: ConnectTimeout | LinkLost) -> SinkError:
        """The error for a CONNECT without CONNACK, explained by the client's last error."""
        cfg = self._cfg
        seen = self._paho_log.last_error
        if seen is None:
            if isinstance(exc, LinkLost):
                return SinkError(
                    f"broker {self._where} closed the connection before answering CONNECT"
                )
            return SinkError(
                f"broker {self._where} did not answer CONNECT within {cfg.timeout_s} s"
            )
        # A broker that drops a refused client certificate may close the socket before its TLS
        # alert is read: the client then sees only "EOF occurred in violation of protocol".
        failure = self._paho_log.last_exception
        eof = isinstance(failure, ssl.SSLEOFError)
        if cfg.tls is not None and isinstance(failure, ssl.SSLError):
            if cfg.tls.cert_file is None:
                hint = "it may require a client certificate: set mqtt.tls.cert_file and key_file"
            else:
                hint = (
                    f"it does not accept the client certificate {cfg.tls.cert_file} "
                    "(not signed by a CA the broker trusts, expired, or revoked)"
                )
            if eof:  # no alert was read: a restart or a proxy closing the link looks the same
                hint = "possibly: " + hint
            return BrokerRefusedError(
                f"TLS with broker {self._where} failed after the handshake: {seen}; {hint}"
            )
        return SinkError(
            f"broker {self._where} closed the connection before answering CONNECT: {seen}"
        )

    async def _subscribe_all(self, client: MqttClient, lost: asyncio.Future[LinkLost]) -> None:
        for topic_filter, _, qos, purpose in self._subscriptions:
            self._check(lost)
            try:
                granted = await client.subscribe(
                    topic_filter, qos=qos, timeout_s=self._cfg.timeout_s
                )
            except MqttError as exc:
                self._check(lost)
                raise SinkError(
                    f"broker {self._where} did not accept the subscription to {topic_filter}: "
                    f"{str(exc) or 'timeout'}"
                ) from None
            refusal = _suback_refusal(granted)
            if refusal is None:
                if topic_filter == self.status_topic and self.sparkplug is None:
                    self._start_echo_check()
                continue
            if topic_filter not in self._refused_subscriptions:
                self._refused_subscriptions.add(topic_filter)
                log.warning(
                    "sink '%s': broker %s refused the subscription to %s (%s): %s; its ACL "
                    "must allow this client to subscribe to %s",
                    self._cfg.name,
                    self._where,
                    topic_filter,
                    refusal,
                    purpose,
                    topic_filter,
                )
        if self._subscriptions:
            log.debug("subscribed to %d topic filter(s)", len(self._subscriptions))

    # -- the delivery check (module docstring) ---------------------------------------------------

    def _start_echo_check(self) -> None:
        if self._online_sent is None or self._echo_timer is not None:
            return  # echo already seen (a retained copy can come with the SUBACK)
        loop = asyncio.get_running_loop()
        self._echo_timer = loop.call_later(self._cfg.timeout_s, self._echo_missing)

    def _end_echo_check(self) -> None:
        if self._echo_timer is not None:
            self._echo_timer.cancel()
            self._echo_timer = None
        if self._link_open and self._link_unconfirmed:
            self._unconfirmed_done += self._published_total - self._link_published_from
        self._link_open = False
        self._link_unconfirmed = False
        self._online_sent = None

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._online_sent is None or payload != self._online_sent:
            return  # an older status, or another agent's: only this connection's counts
        self._online_sent = None
        self.delivery_confirmed = True
        if self._link_unconfirmed:  # a late echo: count no further (what was counted stays)
            self._unconfirmed_done += self._published_total - self._link_published_from
            self._link_unconfirmed = False
        if self._echo_timer is not None:
            self._echo_timer.cancel()
            self._echo_timer = None
        if self.status_echo_missing:
            self.status_echo_missing = False
            log.warning(
                "sink '%s': broker %s now delivers our own 'online' status back: its ACL lets "
                "our messages through again",
                self._cfg.name,
                self._where,
            )

    def _echo_missing(self) -> None:
        self._echo_timer = None
        self._link_unconfirmed = True  # a late echo still confirms the link (_on_status)
        if self.status_echo_missing:
            return
        self.status_echo_missing = True
        prefix = f"{self._cfg.topic_prefix}/{self._site}/#"
        log.warning(
            "sink '%s': broker %s accepted our messages but never delivered our own 'online' "
            "status back within %.1f s: the broker's ACL probably denies publishing to %s "
            "(an MQTT 3.1.1 broker acknowledges a denied message and drops it); what it "
            "acknowledges now is probably lost: allow this client to publish to and subscribe "
            "to %s (docs/mqtt.md, Broker ACL)",
            self._cfg.name,
            self._where,
            self._cfg.timeout_s,
            self.status_topic,
            prefix,
        )

    def _dispatch(self, topic: str, payload: bytes, retained: bool) -> None:
        """A received message, handed to the handlers of the filters it matches (called by
        the client on the event loop, in arrival order)."""
        for topic_filter, handler, _, _ in self._subscriptions:
            if topic_matches(topic_filter, topic):
                try:
                    handler(topic, payload, retained)
                except Exception:  # a handler's bug must not take the broker link down
                    log.exception("handler for %s failed", topic_filter)

    def _on_lost(self, lost: asyncio.Future[LinkLost]) -> None:
        self._connected = False
        self._wake.set()

    def _check(self, lost: asyncio.Future[LinkLost]) -> None:
        if lost.done():
            raise SinkError(f"connection to broker {self._where} lost: {lost.result()}")

    async def _publish_status(
        self,
        client: MqttClient,
        status: Literal["online", "offline"],
        lost: asyncio.Future[LinkLost],
    ) -> None:
        self._check(lost)
        if self.sparkplug is not None:
            await self._publish_sparkplug_status(client, status, lost)
            return
        payload = status_payload(self._site, status, time.time())
        if status == "online":
            self._online_sent = payload
        await self._publish_control(
            client,
            lost,
            self.status_topic,
            payload,
            qos=1,
            retain=True,
            failed="did not acknowledge the status message",
        )

    async def _publish_control(
        self,
        client: MqttClient,
        lost: asyncio.Future[LinkLost],
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        failed: str,
    ) -> None:
        """Publish one message outside the pump (status, births, deaths) and wait for it; on
        failure raise :class:`SinkError` ``broker ... {failed}: reason``."""
        first = not self._link_controls
        self._link_controls += 1
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, timeout_s=self._cfg.timeout_s
            )
        except MqttError as exc:
            if not lost.done():
                raise SinkError(f"broker {self._where} {failed}: {exc}") from None
            loss = lost.result()
            if loss.unsent:
                # Gone before the message was even written: the broker did not close the
                # link because of it.
                if first:
                    raise SinkError(
                        f"connection to broker {self._where} closed right after the broker "
                        "accepted it"
                    ) from None
                raise SinkError(f"connection to broker {self._where} lost: {loss}") from None
            # aedes closes the connection on a publish its ACL denies, without a word.
            raise SinkError(
                f"connection to broker {self._where} lost while it had to acknowledge a "
                f"message on {topic}: {loss} (a broker may close the connection "
                f"on a publish its ACL denies, as aedes does: check that it lets this "
                f"client publish to {topic})"
            ) from None

    async def _pump(self, client: MqttClient, lost: asyncio.Future[LinkLost]) -> None:
        """Publish the outbox until it is empty and close() was called (or its time is up).

        Up to ``window`` publishes are on the wire (paho's in-flight limit) and up to another
        ``window`` wait in paho's queue behind them, refilled as the oldest are acknowledged.
        paho sends a queued message the moment a PUBACK frees a slot, so the link never idles:
        waiting for a whole batch before sending more lets the broker's small PUBACK writes
        (Nagle) wait for our delayed TCP ACK, ~40 ms per batch. Rows are deleted in
        acknowledged prefixes, half a window per transaction.

        The messages are handed over without waiting (``publish_nowait``): a future or a task
        per message costs more CPU than paho's own work. Acknowledgements come through the
        client's ``on_ack`` (which may fire before ``publish_nowait()`` returns), set for the
        time of the pump.
        """
        loop = asyncio.get_running_loop()
        timeout_s = self._cfg.timeout_s
        depth = 2 * self._window
        # None: a row with nothing to send, acknowledged as it is reached.
        inflight: deque[tuple[StoredMessage, MQTTMessageInfo | None]] = deque()
        waiter: list[asyncio.Future[None]] = []  # the pump's wait for an acknowledgement
        refused: dict[int, str] = {}  # mid -> reason, for PUBACKs with a failure reason code

        def on_ack(mid: int, rc: ReasonCode) -> None:
            # paho marks the message's info as published right after this callback returns,
            # before the pump (woken through the future) runs again, so rows are matched by
            # their info, not by mid. Only refusals are kept by mid; one of a message sent
            # outside the pump (a birth, a status) is cleared when the pipeline empties.
            if rc.is_failure:
                refused[mid] = str(rc)
            if waiter and not waiter[0].done():
                waiter[0].set_result(None)

        client.on_ack = on_ack
        acked: list[int] = []
        last_id = 0
        try:
            while True:
                self._check(lost)
                # Clear before reading: a notify() after this point wakes the wait below.
                self._wake.clear()
                time_up = self._closing and loop.time() >= self._close_deadline
                if self._rebirth_pending and not inflight and not time_up:
                    # Every earlier DDATA is acknowledged, so on the wire before the births
                    # (QoS 0 births would overtake QoS 1 messages still queued in paho).
                    self._flush(acked)
                    await self._publish_status(client, "online", lost)
                    continue
                if time_up and not inflight:
                    left = self._outbox.depth()
                    if left:
                        log.warning("drain time is up with %d message(s) still in the outbox", left)
                    return
                room = depth - len(inflight)
                # A rebirth request stops new rows until the ones in flight are acknowledged;
                # so does the end of the drain time.
                if (not inflight or room >= self._window) and not (
                    self._rebirth_pending or time_up
                ):
                    # paho writes (and queues) messages of one QoS in call order: outbox order.
                    batch = self._outbox.peek(room, after_id=last_id)
                    if batch:
                        last_id = batch[-1].id
                        if self.unsaved_acks:  # acknowledged already, only not deleted yet
                            batch = [m for m in batch if m.id not in self.unsaved_acks]
                            if not batch:
                                continue
                    for m in self._screen(batch):
                        if inflight and m.qos != inflight[-1][0].qos:
                            # paho sends QoS 0 at once but queues QoS 1 behind its in-flight
                            # limit: after a QoS change (a reload) the new rows wait until the
                            # old ones are acknowledged, or they would overtake them.
                            last_id = m.id - 1
                            break
                        inflight.append((m, self._publish(client, m, lost)))
                    if batch and not inflight:
                        continue  # every row was withheld (no longer shared): look further
                if not inflight:
                    self._flush(acked)
                    if self._closing:
                        return
                    if self.unsaved_acks:  # the disk may have room again: retry the DELETE
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(_STORAGE_RETRY_S):
                                await self._wake.wait()
                    else:
                        await self._wake.wait()
                    continue
                if not _done(inflight[0][1]):
                    waiter.append(loop.create_future())
                    wakers: list[asyncio.Future[Any]] = [waiter[0], lost]
                    try:
                        async with asyncio.timeout(timeout_s + 1.0):
                            await asyncio.wait(wakers, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.clear()
                # Acknowledged prefix only: a row is deleted after its PUBACK and all earlier ones.
                while inflight and _done(inflight[0][1]):
                    message, info = inflight.popleft()
                    acked.append(message.id)
                    if info is None:
                        continue
                    reason = refused.pop(info.mid, None) if refused else None
                    if reason is None:
                        self._published_total += 1
                    else:
                        self._refused(message, f"the broker refused it: {reason}")
                if not inflight:
                    refused.clear()  # refusals of messages sent outside the pump
                if len(acked) >= max(1, self._window // 2) or not inflight:
                    self._flush(acked)
        except TimeoutError:
            self._check(lost)
            raise SinkError(
                f"publishing to broker {self._where} failed: no PUBACK within {timeout_s} s"
            ) from None
        finally:
            self._flush(acked)
            client.on_ack = None

    def _screen(self, batch: list[StoredMessage]) -> list[StoredMessage]:
        """The publish-time share check (see the module docstring).

        Withheld rows are deleted at once; they are never sent, so deleting them out of order
        with the acknowledged prefix loses nothing."""
        share = self._share
        if share.passes_all:
            return batch
        withheld = [m.id for m in batch if not share.allows(m.line, m.topic_suffix)]
        if withheld:
            self._flush(list(withheld))  # _flush empties the list it is given
            if not self.withheld_total:
                log.warning(
                    "sink '%s': deleting queued messages of lines or topics it no longer shares",
                    self._cfg.name,
                )
            self.withheld_total += len(withheld)
        return [
            replace(m, payload=share.reduce_stored(m.payload))
            for m in batch
            if share.allows(m.line, m.topic_suffix)
        ]

    def _publish(
        self, client: MqttClient, m: StoredMessage, lost: asyncio.Future[LinkLost]
    ) -> MQTTMessageInfo | None:
        """Hand one message to the client; its PUBACK arrives through the client's ``on_ack``.
        The client's refusal (no connection, its queue full, a message it cannot encode) is a
        :class:`SinkError`.

        ``None``: nothing to send for this row (a topic without a Sparkplug mapping); it counts
        as acknowledged."""
        topic, payload = self.topic(m.line, m.topic_suffix), m.payload
        if self.sparkplug is not None:
            # Encoded right before paho's publish(): the seq numbers follow the wire order, a
            # rebirth in between included.
            try:
                out = self.sparkplug.data(m.line, m.topic_suffix, m.payload, m.created, time.time())
            except Exception as exc:  # a row that cannot be encoded must not block the queue
                self._refused(m, f"it cannot be encoded as Sparkplug B: {exc!r}")
                return None
            if out is None:
                return None
            topic, payload = out
        try:
            return client.publish_nowait(
                topic, payload, qos=m.qos, retain=m.retain and self.sparkplug is None
            )
        except MqttError as exc:
            self._check(lost)
            raise SinkError(f"publishing to broker {self._where} failed: {exc}") from None

    # -- Sparkplug B (encoding: sparkplug_b) ---------------------------------------------------

    def _setup_sparkplug(self, lines: Sequence[str]) -> None:
        cfg = self._cfg
        share = self._share
        node = sparkplug.Topics(cfg.sparkplug.group_id or self._site, cfg.sparkplug.edge_node_id)
        self.sparkplug = sparkplug.SparkplugSession(
            node,
            [line for line in lines if share.allows(line, "kpi") or share.allows(line, "state")],
            sparkplug.BdSeqStore(self._outbox.path.parent / f"sparkplug-{cfg.name}.bdseq"),
            allow_metric=lambda line, topic, name: share.allows(line, topic) and share.keeps(name),
        )
        self.subscribe(
            node.node("NCMD"), self._on_ncmd, qos=1, purpose="rebirth requests will not arrive"
        )

    async def _publish_sparkplug_status(
        self,
        client: MqttClient,
        status: Literal["online", "offline"],
        lost: asyncio.Future[LinkLost],
    ) -> None:
        """``online``: NBIRTH and the DBIRTHs (QoS 0, as the specification says), at connect
        and for a rebirth request (which they serve); ``offline``: DDEATHs and NDEATH, the last
        one acknowledged before the DISCONNECT.

        The births' current values are first seeded from the newest queued report of each
        (line, topic) made before the session's first NBIRTH: those rows go out later as
        historical DDATA, which a host keeps as history only."""
        session = self.sparkplug
        assert session is not None
        now = time.time()
        if status == "online":
            self._rebirth_pending = False
            for m in self._outbox.newest_per_topic(session.session_start or now):
                if self._share.allows(m.line, m.topic_suffix):
                    session.seed(m.line, m.topic_suffix, self._share.reduce_stored(m.payload))
            messages = session.births(now)
        else:
            messages = session.deaths(now)
        for i, (topic, payload) in enumerate(messages):
            qos = 1 if status == "offline" and i == len(messages) - 1 else 0
            failed = f"did not take the Sparkplug {status} messages"
            await self._publish_control(
                client, lost, topic, payload, qos=qos, retain=False, failed=failed
            )

    def _on_ncmd(self, topic: str, payload: bytes, retained: bool) -> None:
        """NCMD ``Node Control/Rebirth``: ask the pump for the births (see :meth:`_pump`); it
        publishes them once every DDATA already handed to the client is acknowledged. The
        births at connect serve a pending request too; after the pump (the deaths) none is
        served. A retained NCMD is ignored: Sparkplug commands are never retained, and a stray
        retained rebirth would fire on every connect."""
        session = self.sparkplug
        if session is None or not session.is_rebirth(payload):
            return
        if retained:
            if not self._retained_ncmd_logged:
                self._retained_ncmd_logged = True
                log.warning(
                    "sink '%s': ignoring a retained rebirth request on %s (Sparkplug commands "
                    "are never retained; clear it with an empty retained message)",
                    self._cfg.name,
                    topic,
                )
            return
        log.info("sink '%s': rebirth requested on %s", self._cfg.name, topic)
        self._rebirth_pending = True
        self._wake.set()

    def _refused(self, m: StoredMessage, why: str) -> None:
        """Count a row deleted without reaching subscribers; log the first of each kind."""
        self.refused_total += 1
        key = (m.topic_suffix, why)
        if key not in self._refusals_logged:
            self._refusals_logged.add(key)
            log.error(
                "sink '%s': a %s message of line %r was not delivered: %s (deleted from the "
                "outbox; later ones like it are counted, not logged)",
                self._cfg.name,
                m.topic_suffix,
                m.line,
                why,
            )

    def _flush(self, acked: list[int]) -> None:
        """Delete the acknowledged rows (an in-order prefix of what was sent), and those whose
        DELETE failed before. A storage error (logged once by the outbox) keeps their ids in
        :attr:`unsaved_acks` instead of ending the link."""
        if not acked and not self.unsaved_acks:
            return
        ids = [*sorted(self.unsaved_acks), *acked] if self.unsaved_acks else acked
        try:
            self._outbox.ack(ids)
        except StorageError:
            self.unsaved_acks.update(acked)
        else:
            self.unsaved_acks.clear()
        acked.clear()

    async def _disconnect(self, client: MqttClient) -> None:
        try:
            await client.disconnect(self._cfg.timeout_s + 1.0)
        except MqttError as exc:
            raise SinkError(f"broker {self._where} did not confirm the disconnect: {exc}") from None


def _suback_refusal(granted: Sequence[int | ReasonCode]) -> str | None:
    """The refusal in a SUBACK (MQTT 3.1.1: 0x80; MQTT 5: any code from 0x80), else ``None``."""
    for code in granted:
        value = code.value if isinstance(code, ReasonCode) else int(code)
        if value >= 0x80:
            return f"SUBACK {code if isinstance(code, ReasonCode) else 'failure'}, 0x{value:02x}"
    return None


def _done(info: MQTTMessageInfo | None) -> bool:
    """A pump row is finished: nothing to send, or acknowledged (QoS 0: written)."""
    return info is None or info.is_published()
