"""A small asyncio MQTT client over paho-mqtt's public API, in aiomqtt's manner.

paho does the protocol. This module drives paho's socket from the event loop (``add_reader`` /
``add_writer``, and a ``loop_misc`` timer for the keepalive), turns paho's callbacks into futures
and its failures into one small exception family, :class:`MqttError`. It starts no task and
never reconnects: the caller owns that policy.

Use from the event loop thread only. paho's blocking ``connect()`` (name lookup, TCP connect, TLS
handshake) runs in the loop's default executor, bounded by ``connect_timeout``; the socket is
handed to the event loop once it returns.

No future of this module ever holds an exception: a result nobody reads (a loss after the
caller gave up) costs nothing and logs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from paho.mqtt import client as mqtt
from paho.mqtt.client import MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "ConnectFailed",
    "ConnectRefused",
    "ConnectTimeout",
    "LinkLost",
    "MQTTMessageInfo",
    "MqttClient",
    "MqttError",
    "ReasonCode",
    "Will",
    "build_tls_context",
    "topic_matches",
]

T = TypeVar("T")

# paho's loop_misc (keepalive pings and their deadline) runs every tenth of the keepalive, at
# least every second: a ping leaves at most 10 % late (brokers allow 1.5 keepalives), and an
# idle link wakes the loop every 6 s at the default 60 s instead of every second.
_MISC_FRACTION = 0.1
_MISC_MIN_S = 1.0

# A received message: (topic, payload, retained). Called on the event loop; must not block.
MessageCallback = Callable[[str, bytes, bool], None]
# Every acknowledgement of a publish (QoS 1: PUBACK, QoS 0: written): (mid, reason code).
AckCallback = Callable[[int, ReasonCode], None]


class MqttError(Exception):
    """Any failure of the MQTT client. ``str()`` says what happened in plain words."""


class ConnectFailed(MqttError):
    """The broker could not be reached (name lookup, TCP, TLS handshake). ``tls`` is true when
    the TLS handshake failed; ``__cause__`` is the original error."""

    def __init__(self, message: str, *, tls: bool) -> None:
        super().__init__(message)
        self.tls = tls


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a refusal; ``reason_code`` is its CONNACK code."""

    def __init__(self, reason_code: ReasonCode) -> None:
        super().__init__(f"{reason_code} (reason code {reason_code.value})")
        self.reason_code = reason_code


class ConnectTimeout(MqttError):
    """No CONNACK within the deadline."""


class LinkLost(MqttError):
    """The connection ended without our DISCONNECT. ``before_connack``: it ended before the
    broker answered CONNECT; ``unsent``: a message was still waiting to be written when it
    ended (so the broker cannot have closed the link because of that message)."""

    def __init__(self, reason: str, *, before_connack: bool = False, unsent: bool = False) -> None:
        super().__init__(reason)
        self.before_connack = before_connack
        self.unsent = unsent


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: published by the broker when the connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


def build_tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, *, insecure: bool
) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or newer, the server certificate verified against
    ``ca_file`` (or the system trust store), an optional client certificate, and the host name
    checked unless ``insecure`` (the certificate chain is verified even then)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    if insecure:
        ctx.check_hostname = False
    return ctx


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (``+`` and ``#`` wildcards)."""
    return mqtt.topic_matches_sub(topic_filter, topic)


class MqttClient:
    """One MQTT connection: :meth:`connect`, publish and subscribe, then :meth:`disconnect`
    (DISCONNECT: no last will) or :meth:`drop` (no DISCONNECT: the broker publishes the will).
    A client is used for one connection only; make a new one to reconnect.

    :attr:`lost` completes (with a :class:`LinkLost`) when the connection ends without our
    DISCONNECT, and never holds an exception. ``on_message`` and :attr:`on_ack` are called on the
    event loop, from paho's callbacks: they must not block and should not raise.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        protocol: Literal["3.1.1", "5"] = "3.1.1",
        clean_session: bool = True,
        session_expiry_s: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        tls_insecure: bool = False,
        will: Will | None = None,
        keepalive_s: int = 60,
        connect_timeout_s: float = 10.0,
        max_inflight: int = 20,
        max_queued: int = 0,
        logger: logging.Logger | None = None,
        on_message: MessageCallback | None = None,
    ) -> None:
        """``session_expiry_s`` (MQTT 5 only): the session outlives the connection by that
        long; without it an MQTT 5 broker ends the session at disconnect. ``max_queued``: paho's
        own queue behind the in-flight window (0: unbounded); past it ``publish`` fails."""
        self._loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._keepalive_s = keepalive_s
        self._misc_interval_s = max(_MISC_MIN_S, _MISC_FRACTION * keepalive_s)
        self._v5 = protocol == "5"
        self._clean_session = clean_session
        self._connect_properties: Properties | None = None
        if self._v5:
            self._paho = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv5,
                reconnect_on_failure=False,
            )
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if session_expiry_s is not None:
                props.SessionExpiryInterval = int(session_expiry_s)
            self._connect_properties = props
        else:
            self._paho = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=clean_session,
                reconnect_on_failure=False,
            )
        paho = self._paho
        paho.connect_timeout = connect_timeout_s
        paho.max_inflight_messages_set(max_inflight)
        paho.max_queued_messages_set(max_queued)
        if logger is not None:
            paho.enable_logger(logger)
        if username is not None:
            paho.username_pw_set(username, password)
        if tls_context is not None:
            paho.tls_set_context(tls_context)
            if tls_insecure:
                paho.tls_insecure_set(True)
        if will is not None:
            paho.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        paho.on_connect = self._on_connect
        paho.on_disconnect = self._on_disconnect
        paho.on_publish = self._on_publish
        paho.on_subscribe = self._on_subscribe
        paho.on_message = self._on_message
        paho.on_socket_open = self._on_socket_open
        paho.on_socket_close = self._on_socket_close
        paho.on_socket_register_write = self._on_socket_register_write
        paho.on_socket_unregister_write = self._on_socket_unregister_write

        self.on_message = on_message
        self.on_ack: AckCallback | None = None
        self.lost: asyncio.Future[LinkLost] = self._loop.create_future()
        self._connack: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()  # our DISCONNECT sent
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        # The socket, once paho's connect() returned and it is registered with the event loop.
        self._fd: int | None = None
        self._sock: Any = None
        self._writing = False
        self._misc_timer: asyncio.TimerHandle | None = None
        self._disconnecting = False
        self._in_thread = False  # paho's connect() runs in the executor
        self._drop_when_done = False

    # -- connection ---------------------------------------------------------------------------

    async def connect(self, timeout_s: float) -> None:
        """Connect and wait for the broker's CONNACK (at most ``timeout_s`` after the TCP and
        TLS setup, which paho bounds by ``connect_timeout_s``).

        Raises :class:`ConnectFailed` (unreachable, TLS), :class:`ConnectRefused` (a refusing
        CONNACK), :class:`ConnectTimeout` (no CONNACK) or :class:`LinkLost` (closed before the
        CONNACK). On any failure or cancellation the connection is dropped."""
        inner = self._loop.run_in_executor(None, self._connect_blocking)
        self._in_thread = True
        # Registered before the shield's: it runs first when the thread ends.
        inner.add_done_callback(self._thread_done)
        try:
            # Shielded: a thread cannot be cancelled; its outcome is handled when it ends.
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            self._drop_when_done = True
            raise
        except ssl.SSLError as exc:
            raise ConnectFailed(str(exc), tls=True) from exc
        except (OSError, ValueError) as exc:  # ValueError: paho's check of host and port
            raise ConnectFailed(str(exc) or type(exc).__name__, tls=False) from exc
        try:
            self._attach()
            await self._wait_connack(timeout_s)
        except BaseException:
            self.drop()
            raise

    async def _wait_connack(self, timeout_s: float) -> None:
        rc = await self._wait(
            self._connack, timeout_s, ConnectTimeout, f"no CONNACK within {timeout_s} s"
        )
        if rc.is_failure:
            raise ConnectRefused(rc)

    def _connect_blocking(self) -> None:
        if self._v5:
            self._paho.connect(
                self._host,
                self._port,
                keepalive=self._keepalive_s,
                clean_start=self._clean_session,
                properties=self._connect_properties,
            )
        else:
            self._paho.connect(self._host, self._port, keepalive=self._keepalive_s)

    def _thread_done(self, inner: asyncio.Future[None]) -> None:
        """paho's connect() returned in its thread. If the caller was cancelled meanwhile (or
        dropped the connection), close whatever the thread opened."""
        self._in_thread = False
        if not inner.cancelled():
            inner.exception()  # read: the caller may be gone
        if self._drop_when_done:
            self.drop()

    def _attach(self) -> None:
        sock = self._paho.socket()
        if sock is None:
            raise LinkLost("the connection was closed", before_connack=True)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        if self._paho.want_write():
            self._start_writing()
        self._misc_timer = self._loop.call_later(self._misc_interval_s, self._misc)

    def _detach(self) -> None:
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        self._fd = None
        self._writing = False

    @property
    def is_connected(self) -> bool:
        """True between the accepting CONNACK and the end of the connection."""
        return (
            self._connack.done()
            and not self._connack.result().is_failure
            and not self.lost.done()
            and not self._closed.done()
        )

    @property
    def socket_open(self) -> bool:
        """True while paho holds an open socket (from inside ``connect`` to the end)."""
        return self._paho.socket() is not None

    async def disconnect(self, timeout_s: float) -> None:
        """Send DISCONNECT (so the broker discards the last will) and wait until it is written.
        Returns at once when the connection is already gone. Raises :class:`MqttError` when it
        could not be sent within ``timeout_s``."""
        if self._fd is None or self.lost.done() or self._closed.done():
            return
        self._disconnecting = True
        rc = self._paho.disconnect()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.drop()
            raise MqttError(mqtt.error_string(rc))
        waits: list[asyncio.Future[Any]] = [self._closed, self.lost]
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not (self._closed.done() or self.lost.done()):
            self.drop()
            raise MqttError(f"DISCONNECT not written within {timeout_s} s")

    def drop(self) -> None:
        """Close the connection without DISCONNECT, so the broker publishes the last will.
        A no-op when it is closed already. While paho's connect() still runs in its thread,
        the connection is closed when it returns."""
        if self._in_thread:
            self._drop_when_done = True
            return
        self._detach()
        sock = self._paho.socket()
        if sock is None:
            return
        # paho notices the closed socket on its next read, forgets it and reports the loss; its
        # log line about the failed read would only hide the reason the link was dropped.
        self._paho.disable_logger()
        sock.close()
        self._paho.loop_read()

    # -- publish and subscribe ----------------------------------------------------------------

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int, retain: bool
    ) -> MQTTMessageInfo:
        """Hand one message to paho; it goes out in call order (per QoS). Its acknowledgement
        shows in the returned info's ``is_published()`` and through :attr:`on_ack` (which may
        run before this returns). Raises :class:`MqttError` when paho refuses it (no
        connection, its queue full, a message it cannot encode)."""
        try:
            info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            raise MqttError(str(exc)) from None
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttError(mqtt.error_string(info.rc))
        return info

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout_s: float
    ) -> None:
        """Publish one message and wait for its acknowledgement (QoS 0: until written).
        Raises :class:`MqttError` when it is refused by paho, the connection is lost first
        (a :class:`LinkLost`), or no acknowledgement came within ``timeout_s``."""
        info = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        if info.is_published():
            return
        acked = self._loop.create_future()
        self._pubacks[info.mid] = acked
        try:
            await self._wait(
                acked, timeout_s, MqttError, f"no acknowledgement within {timeout_s} s"
            )
        finally:
            self._pubacks.pop(info.mid, None)

    async def subscribe(self, topic_filter: str, *, qos: int, timeout_s: float) -> list[ReasonCode]:
        """Subscribe and return the SUBACK's reason codes (a refusal is a code >= 0x80, not an
        error). Raises :class:`MqttError` when the subscription could not be sent, the
        connection is lost first, or no SUBACK came within ``timeout_s``."""
        rc, mid = self._paho.subscribe(topic_filter, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(mqtt.error_string(rc))
        granted: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = granted
        try:
            return await self._wait(
                granted, timeout_s, MqttError, f"no SUBACK within {timeout_s} s"
            )
        finally:
            self._subacks.pop(mid, None)

    async def _wait(
        self, fut: asyncio.Future[T], timeout_s: float, late: type[MqttError], why: str
    ) -> T:
        """``fut``'s result; :attr:`lost`'s :class:`LinkLost` if the link ends first;
        ``late(why)`` after ``timeout_s``."""
        waits: list[asyncio.Future[Any]] = [fut, self.lost]
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        if self.lost.done():
            raise self.lost.result()
        raise late(why)

    # -- paho's callbacks (on the event loop, but for the socket's opening: see below) ---------

    def _on_connect(
        self, c: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if not self._connack.done():
            self._connack.set_result(rc)

    def _on_disconnect(
        self, c: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._detach()
        if self._disconnecting and not rc.is_failure:
            if not self._closed.done():
                self._closed.set_result(None)
            return
        if self.lost.done():
            return
        if flags.is_disconnect_packet_from_server:
            reason = f"the broker disconnected us: {rc}"
        elif rc.getName() == "Keep alive timeout":
            reason = f"no answer from the broker within the keepalive time ({self._keepalive_s} s)"
        else:
            reason = "the connection was lost"
        self.lost.set_result(
            LinkLost(
                reason, before_connack=not self._connack.done(), unsent=self._paho.want_write()
            )
        )

    def _on_publish(
        self, c: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        acked = self._pubacks.get(mid)
        if acked is not None and not acked.done():
            acked.set_result(None)
        if self.on_ack is not None:
            self.on_ack(mid, rc)

    def _on_subscribe(
        self, c: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        granted = self._subacks.get(mid)
        if granted is not None and not granted.done():
            granted.set_result(list(codes))

    def _on_message(self, c: mqtt.Client, userdata: Any, message: MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message.topic, bytes(message.payload), bool(message.retain))

    # The socket callbacks run in the executor thread during paho's connect(): there they only
    # note the socket (paho queues CONNECT and asks for a writer); _attach registers it with
    # the event loop afterwards, on the loop's thread.

    def _on_socket_open(self, c: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock

    def _on_socket_close(self, c: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._detach()

    def _on_socket_register_write(self, c: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self._start_writing()

    def _on_socket_unregister_write(self, c: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _start_writing(self) -> None:
        if self._fd is not None and not self._writing:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True

    # -- the event loop's side ----------------------------------------------------------------

    def _readable(self) -> None:
        sock = self._sock
        try:
            while self._paho.loop_read() == mqtt.MQTT_ERR_SUCCESS:
                # loop_read() may leave decrypted bytes in the TLS buffer, where the selector
                # cannot see them.
                if not isinstance(sock, ssl.SSLSocket) or self._fd is None or not sock.pending():
                    break
        except Exception as exc:  # a callback's bug or paho's: end this link, not the loop
            self._broken(exc)

    def _writable(self) -> None:
        try:
            self._paho.loop_write()
        except Exception as exc:
            self._broken(exc)

    def _misc(self) -> None:
        self._misc_timer = None
        try:
            self._paho.loop_misc()
        except Exception as exc:
            self._broken(exc)
            return
        if self._fd is not None:
            self._misc_timer = self._loop.call_later(self._misc_interval_s, self._misc)

    def _broken(self, exc: Exception) -> None:
        if not self.lost.done():
            self.lost.set_result(LinkLost(f"MQTT client error: {exc!r}"))
        with contextlib.suppress(Exception):
            self.drop()
