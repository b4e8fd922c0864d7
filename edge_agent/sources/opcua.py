"""OPC UA source: polls a PLC's variables with batched Read requests (asyncua 2.1).

This is the only module that imports asyncua (~48 MiB, ~0.3 s): the rest of the agent imports it
lazily, and only when an OPC UA source is configured.

Contract (see :class:`edge_agent.model.Source`):

- ``connect()`` opens a session (anonymous, or username + password read from ``password_file`` at
  every connect, so a corrected file is picked up by the next reconnect), reads the server's start
  time, namespace table and ``MaxNodesPerRead`` once, and resolves the tags' node ids.
- ``read()`` reads every tag's Value attribute in ONE Read request, split only at the server's
  ``MaxNodesPerRead`` (asyncua never splits a Read by itself). A tag the server reports as bad
  (``BadNodeIdUnknown``, ``BadNotReadable``, ...) is a sample with quality BAD and value ``None``;
  it never fails the whole read.
- Any failure of the connection or of a whole Read (socket closed, timeout, service fault such as
  ``BadSessionIdInvalid``) closes the client and raises :class:`NotConnectedError`: the supervisor
  owns reconnects. asyncua's own auto-reconnect and health-probe watchdog are turned off.

Subscribe mode (``mode: subscribe``): ``connect()`` also creates one subscription with a monitored
item per tag (created again on every connect, so a reconnect re-subscribes), and ``read()`` sends
nothing: it returns every tag's latest value reported by the server, so the poller and the engine
work unchanged. The publish responses are folded straight into one slot per tag (server queue
size 1, latest value wins), never into asyncua's per-subscription event queue, which drops events
silently once 1,000 are waiting; nothing can pile up however slow the consumer. A subscription the
server reports as gone (a ``StatusChangeNotification``) or that stops sending publish responses
(not even keep-alives) raises :class:`NotConnectedError` at the next ``read()``.

Values: booleans, integers (all widths), floats and strings pass through; ``LocalizedText``
becomes its text and ``DateTime`` becomes POSIX seconds. Every other variant type (arrays,
ByteString, structures, NodeId, Guid, ...) is reported as BAD with value ``None``, and logged once
per tag: the engine works on scalars, and ``str()`` of a structure is no value it could use.

Security: the source's ``security`` (policy, mode, the agent's certificate, and how the server's
certificate is trusted) is applied by :mod:`edge_agent.sources.opcua_security` before connecting;
the server's certificate is never trusted on first use. With policy ``None`` a password crosses
the network unprotected unless the server's token policy encrypts it: keep such PLCs on a
segregated network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError, UaStringParsingError
from asyncua.ua.uatypes import Int16, Int32, UInt32

from edge_agent.config.schema import OpcuaMode, OpcuaSecurityPolicy, OpcuaSourceConfig
from edge_agent.errors import NotConnectedError, SourceError
from edge_agent.model import Quality, Sample, Value
from edge_agent.sources.opcua_security import (
    CERTIFICATE_REFUSED,
    ServerTrust,
    apply_security,
    client_certificate_refused,
)

__all__ = ["OpcuaSource", "read_password_file", "split_batches"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

# asyncua 2.1's client starts a "connection supervisor" at connect() that probes ServerStatus every
# `watchdog_intervall` seconds and, with auto_reconnect, reconnects by itself. auto_reconnect is
# off (the agent's supervisor owns reconnects) and the probe interval is pushed out of the way: a
# poll already is a health check, and the probe would add one Read per second per PLC.
_WATCHDOG_OFF_S = 24 * 3600.0

# Keep the server-side session short-lived so a crashed agent does not hold one of the PLC's few
# session slots for the default hour; polls keep it alive (a slower poll gets a longer timeout).
_MIN_SESSION_TIMEOUT_S = 60.0

# Status codes that mean the server refused the identity, not that the network failed.
_LOGIN_REJECTED = frozenset(
    {
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadIdentityTokenInvalid,
        StatusCodes.BadIdentityTokenRejected,
        StatusCodes.BadUserSignatureInvalid,
    }
)

_NODE_NAMESPACE_ARRAY = ua.NodeId(Int32(ObjectIds.Server_NamespaceArray))
_NODE_START_TIME = ua.NodeId(Int32(ObjectIds.Server_ServerStatus_StartTime))
_NODE_MAX_NODES_PER_READ = ua.NodeId(
    Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
)
_NODE_MAX_MONITORED_ITEMS_PER_CALL = ua.NodeId(
    Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)
)

# Subscribe mode: the server sends a keep-alive publish response after timeout_s without changes,
# and a subscription silent for _STALE_KEEPALIVES keep-alive periods is taken for dead.
_STALE_KEEPALIVES = 3
# Deadband filters apply to numeric variables only; a server refuses them on the others with one
# of these, and those items are then monitored without a filter.
_FILTER_REFUSED = frozenset(
    {
        StatusCodes.BadFilterNotAllowed,
        StatusCodes.BadMonitoredItemFilterUnsupported,
        StatusCodes.BadDeadbandFilterInvalid,
    }
)


def read_password_file(path: str) -> str:
    """Return the password stored in ``path``, without one trailing newline.

    Raises :class:`NotConnectedError` naming the file when it cannot be read: the connection
    cannot be made, and a retry picks the file up once it exists.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotConnectedError(f"cannot read password file {path}: {exc}") from exc
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def split_batches(items: Sequence[_T], max_per_batch: int) -> list[Sequence[_T]]:
    """Split ``items`` into consecutive batches of at most ``max_per_batch`` (0: one batch).

    An empty ``items`` gives no batch at all.
    """
    if not items:
        return []
    if max_per_batch <= 0 or len(items) <= max_per_batch:
        return [items]
    return [items[i : i + max_per_batch] for i in range(0, len(items), max_per_batch)]


def _posix(dt: datetime) -> float:
    # asyncua decodes DateTime as aware UTC; a naive one is UTC by the OPC UA encoding.
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _convert(variant: ua.Variant) -> tuple[bool, Value]:
    """Return ``(supported, value)`` for a Value attribute's variant."""
    value: Any = variant.Value
    if variant.is_array or value is None:
        return False, None
    if isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, ua.LocalizedText):
        return True, value.Text if value.Text is not None else ""
    if isinstance(value, datetime):
        return True, _posix(value)
    return False, None


@dataclass(frozen=True, slots=True)
class _Tag:
    name: str
    node: ua.NodeId | None  # None: its namespace URI is unknown to this server


class OpcuaSource:
    """One OPC UA server (PLC). Implements :class:`edge_agent.model.Source`.

    Not safe for concurrent calls: the supervisor calls ``connect``, ``read`` and ``close`` from
    one task.
    """

    def __init__(self, cfg: OpcuaSourceConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._clock = clock
        self._conn: Client | None = None
        self._parsed: list[tuple[str, ua.NodeId]] | None = None
        self._tags: list[_Tag] = []
        # One prepared Read per batch: built once at connect, sent as-is at every poll.
        self._requests: list[tuple[Sequence[_Tag], ua.ReadParameters]] = []
        self._server_start_time: float | None = None
        self._max_nodes_per_read = 0
        self._unsupported_logged: set[str] = set()
        self._monitor: _Monitor | None = None

    @property
    def connected(self) -> bool:
        """True while a session is open and its transport has not been seen to drop."""
        client = self._conn
        return client is not None and client.uaclient.state is UaClientState.CONNECTED

    @property
    def server_start_time(self) -> float | None:
        """The server's ServerStatus/StartTime read at the last connect, POSIX seconds.

        A different value after a reconnect means the PLC (its OPC UA server) restarted, so its
        counters may have been reset. ``None`` if the server does not report it.
        """
        return self._server_start_time

    @property
    def requests_per_scan(self) -> int:
        """Read requests one ``read()`` sends (each bounded by ``timeout_s``); at least 1."""
        return max(1, len(self._requests))

    @property
    def max_nodes_per_read(self) -> int:
        """The server's MaxNodesPerRead read at the last connect; 0 means no limit."""
        return self._max_nodes_per_read

    def _parse_nodes(self) -> list[tuple[str, ua.NodeId]]:
        if self._parsed is None:
            parsed: list[tuple[str, ua.NodeId]] = []
            for tag in self._cfg.tags:
                try:
                    parsed.append((tag.name, ua.NodeId.from_string(tag.node)))
                except UaStringParsingError as exc:
                    raise SourceError(
                        f"source {self.name!r}: tag {tag.name!r}: invalid OPC UA node id "
                        f"{tag.node!r} (expected e.g. 'ns=2;s=Line1.Count' or "
                        f"'nsu=urn:plc;i=1001')"
                    ) from exc
            self._parsed = parsed
        return self._parsed

    @property
    def _secured(self) -> bool:
        """The agent presents a client certificate (any policy but None)."""
        return self._cfg.security.policy is not OpcuaSecurityPolicy.NONE

    def _where(self) -> str:
        return f"OPC UA source {self.name!r} ({self._cfg.endpoint})"

    def _new_client(self) -> Client:
        cfg = self._cfg
        password: str | None = None
        if cfg.username is not None and cfg.password_file is not None:
            try:
                password = read_password_file(cfg.password_file)
            except NotConnectedError as exc:
                raise NotConnectedError(f"{self._where()}: {exc}") from exc
        client = Client(
            cfg.endpoint,
            timeout=cfg.timeout_s,
            watchdog_intervall=_WATCHDOG_OFF_S,
            auto_reconnect=False,
        )
        client.name = client.description = f"edge-agent {cfg.name}"
        client.application_uri = "urn:edge-agent:client"
        client.product_uri = "urn:edge-agent"
        session_timeout_s = max(_MIN_SESSION_TIMEOUT_S, 10 * cfg.poll_interval_s)
        client.session_timeout = int(session_timeout_s * 1000)
        if cfg.username is not None:
            client.set_user(cfg.username)
            if password is not None:
                client.set_password(password)
        return client

    async def connect(self) -> None:
        """Open a session and prepare the batched Read; closes any previous connection first.

        Raises :class:`SourceError` for an unparsable node id (configuration, not network), and
        :class:`NotConnectedError` when the server cannot be reached within ``timeout_s``, refuses
        the login, or the password file cannot be read.
        """
        parsed = self._parse_nodes()
        await self.close()
        client = self._new_client()
        self._conn = client
        trust: ServerTrust | None = None
        try:
            async with asyncio.timeout(self._cfg.timeout_s):
                trust = await apply_security(client, self._cfg.security, self._where())
                await client.connect(auto_reconnect=False)
                info = await _read(
                    client,
                    _read_request(
                        [_NODE_NAMESPACE_ARRAY, _NODE_START_TIME, _NODE_MAX_NODES_PER_READ]
                    ),
                )
        except (asyncio.CancelledError, NotConnectedError):
            await self._drop()
            raise
        except UaStatusCodeError as exc:
            await self._drop()
            if trust is not None and trust.refused is not None:
                raise NotConnectedError(trust.refused) from exc  # our check, not the server's
            if exc.code in CERTIFICATE_REFUSED and self._secured:
                name = ua.StatusCode(UInt32(exc.code)).name
                raise NotConnectedError(
                    client_certificate_refused(self._cfg.security, self._where(), name)
                ) from exc
            if exc.code in _LOGIN_REJECTED:
                who = repr(self._cfg.username) if self._cfg.username else "anonymous"
                hint = (
                    f"; check the username and {self._cfg.password_file}"
                    if self._cfg.password_file
                    else ""
                )
                raise NotConnectedError(
                    f"{self._where()}: login as {who} rejected by the server "
                    f"({ua.StatusCode(UInt32(exc.code)).name}){hint}"
                ) from exc
            raise NotConnectedError(
                f"{self._where()}: connect failed: {_reason(exc, self._cfg.timeout_s)}"
            ) from exc
        except AssertionError as exc:
            # asyncua 2.1 asserts in open_secure_channel when the server answers
            # OpenSecureChannel with a ServiceFault (it cannot decode one there, logs that at
            # ERROR and closes the socket): node-opcua and PLCs answer so to a client
            # certificate they do not trust. asyncua's other asserts on what a server sent
            # fire in its receive callback, which catches them and closes the connection.
            await self._drop()
            if self._secured:
                answer = "it answered OpenSecureChannel with a fault"
                raise NotConnectedError(
                    client_certificate_refused(self._cfg.security, self._where(), answer)
                ) from exc
            raise NotConnectedError(
                f"{self._where()}: connect failed: the server answered OpenSecureChannel "
                "with a fault"
            ) from exc
        except (OSError, TimeoutError, UaError) as exc:
            await self._drop()
            raise NotConnectedError(
                f"{self._where()}: connect failed: {_reason(exc, self._cfg.timeout_s)}"
            ) from exc

        namespaces, start_time, max_nodes = info
        self._server_start_time = _start_time(start_time)
        self._max_nodes_per_read = _max_nodes(max_nodes)
        self._tags = self._resolve(parsed, namespaces)
        readable = [t for t in self._tags if t.node is not None]
        self._requests = [
            (batch, _read_request([t.node for t in batch if t.node is not None]))
            for batch in split_batches(readable, self._max_nodes_per_read)
        ]
        if self._cfg.mode is OpcuaMode.SUBSCRIBE:
            await self._subscribe(client, readable)
        _log.debug(
            "%s connected: %d tags in %d Read request(s), server start time %s",
            self._where(),
            len(readable),
            len(self._requests),
            self._server_start_time,
        )

    @property
    def notifications(self) -> int:
        """Value changes received by subscribe mode over the current connection (0 when polling)."""
        return self._monitor.notifications if self._monitor is not None else 0

    async def _subscribe(self, client: Client, readable: list[_Tag]) -> None:
        """Create the subscription and one monitored item per readable tag (subscribe mode)."""
        try:
            async with asyncio.timeout(self._cfg.timeout_s):
                limit_dv = (
                    await _read(client, _read_request([_NODE_MAX_MONITORED_ITEMS_PER_CALL]))
                )[0]
                # One Read first: it seeds every value (the first poll needs no wait for the
                # first publish) and tells which variables are numeric, the only ones a
                # deadband applies to.
                initial: list[ua.DataValue] = []
                for _, request in self._requests:
                    initial.extend(await _read(client, request))
                monitor = _Monitor(readable, self._cfg)
                await monitor.start(client, _max_nodes(limit_dv), initial)
        except asyncio.CancelledError:
            await self._drop()
            raise
        except (OSError, TimeoutError, UaError) as exc:
            await self._drop()
            raise NotConnectedError(
                f"{self._where()}: subscribing failed: {_reason(exc, self._cfg.timeout_s)}"
            ) from exc
        self._monitor = monitor

    def _resolve(self, parsed: list[tuple[str, ua.NodeId]], namespaces: ua.DataValue) -> list[_Tag]:
        """Turn ``nsu=`` node ids into index-based ones with this server's namespace table.

        A namespace URI the server does not know makes that tag BAD, like an unknown node.
        """
        table: list[str] = []
        value = namespaces.Value.Value if namespaces.Value is not None else None
        if _status(namespaces).is_good() and isinstance(value, list):
            table = [str(uri) for uri in value]
        tags: list[_Tag] = []
        for name, node in parsed:
            uri = getattr(node, "NamespaceUri", None)
            if not uri:
                tags.append(_Tag(name, node))
            elif uri in table:
                tags.append(_Tag(name, ua.NodeId(node.Identifier, Int16(table.index(uri)))))
            else:
                _log.warning(
                    "%s: tag %r: namespace %r is unknown to the server; reported as bad",
                    self._where(),
                    name,
                    uri,
                )
                tags.append(_Tag(name, None))
        return tags

    async def read(self) -> list[Sample]:
        """Read every tag once: one Read request per ``MaxNodesPerRead`` nodes.

        Returns one sample per configured tag, in configuration order. Raises
        :class:`NotConnectedError` (after closing the client) when the connection is gone, a
        request gets no answer within ``timeout_s``, or the server rejects a whole Read.
        """
        client = self._conn
        if client is None:
            raise NotConnectedError(f"{self._where()}: not connected")
        if client.uaclient.state is not UaClientState.CONNECTED:
            await self._drop()
            raise NotConnectedError(f"{self._where()}: connection lost")
        if self._monitor is not None:
            return await self._read_subscribed(self._monitor)
        values: dict[str, ua.DataValue] = {}
        try:
            for tags, request in self._requests:
                async with asyncio.timeout(self._cfg.timeout_s):
                    results = await _read(client, request)
                values.update(zip((t.name for t in tags), results, strict=True))
        except (OSError, TimeoutError, UaError) as exc:
            await self._drop()
            raise NotConnectedError(
                f"{self._where()}: read failed: {_reason(exc, self._cfg.timeout_s)}"
            ) from exc
        now = self._clock()
        return [self._sample(tag.name, values.get(tag.name), now) for tag in self._tags]

    async def _read_subscribed(self, monitor: _Monitor) -> list[Sample]:
        """Subscribe mode: the latest reported value of every tag; nothing is sent."""
        problem = monitor.problem(time.monotonic())
        if problem is not None:
            await self._drop()
            raise NotConnectedError(f"{self._where()}: {problem}")
        if not monitor.complete.is_set():
            # The server reports every item's value once right after creating it.
            try:
                async with asyncio.timeout(self._cfg.timeout_s):
                    await monitor.complete.wait()
            except TimeoutError:
                _log.warning(
                    "%s: no first value within %g s for %d tag(s); reported as bad until one comes",
                    self._where(),
                    self._cfg.timeout_s,
                    monitor.missing,
                )
                monitor.complete.set()
        now = self._clock()
        name = self.name
        latest = monitor.values
        cache = monitor.converted
        out: list[Sample] = []
        append = out.append
        for tag, handle in self._handles(monitor):
            dv = latest[handle] if handle >= 0 else None
            cached = cache[handle] if handle >= 0 else None
            # The same DataValue object as last time: reuse its conversion (most tags of a
            # PLC do not change between two polls).
            if cached is None or cached[0] is not dv:
                sample = self._sample(tag, dv, now)
                if handle >= 0:
                    cache[handle] = (dv, sample.value, sample.quality, sample.source_time)
                append(sample)
            else:
                append(Sample(name, tag, cached[1], cached[2], cached[3], now))
        return out

    def _handles(self, monitor: _Monitor) -> list[tuple[str, int]]:
        if monitor.tag_handles is None:
            index = {id(tag): i for i, tag in enumerate(monitor.tags)}
            monitor.tag_handles = [(tag.name, index.get(id(tag), -1)) for tag in self._tags]
        return monitor.tag_handles

    def _sample(self, tag: str, dv: ua.DataValue | None, now: float) -> Sample:
        if dv is None:  # namespace unknown to the server: never read
            return Sample(self.name, tag, None, Quality.BAD, None, now)
        source_time = _posix(dv.SourceTimestamp) if dv.SourceTimestamp is not None else None
        status = _status(dv)
        if status.is_bad():
            return Sample(self.name, tag, None, Quality.BAD, source_time, now)
        supported, value = _convert(dv.Value) if dv.Value is not None else (False, None)
        if not supported:
            if tag not in self._unsupported_logged:
                self._unsupported_logged.add(tag)
                kind = dv.Value.VariantType.name if dv.Value is not None else "no value"
                _log.warning(
                    "%s: tag %r has unsupported type %s%s; reported as bad",
                    self._where(),
                    tag,
                    kind,
                    " (array)" if dv.Value is not None and dv.Value.is_array else "",
                )
            return Sample(self.name, tag, None, Quality.BAD, source_time, now)
        quality = Quality.GOOD if status.is_good() else Quality.UNCERTAIN
        return Sample(self.name, tag, value, quality, source_time, now)

    async def close(self) -> None:
        """Close the session and the connection; never raises, bounded by ``timeout_s``."""
        await self._drop()

    async def _drop(self) -> None:
        self._monitor = None
        client, self._conn = self._conn, None
        if client is None:
            return
        healthy = client.uaclient.state is UaClientState.CONNECTED
        try:
            async with asyncio.timeout(self._cfg.timeout_s):
                if healthy:
                    # CloseSession frees the PLC's session slot at once.
                    await client.disconnect()
                else:
                    # Stops asyncua's background tasks; the session is already gone with
                    # the transport.
                    await client.close_session()
        except (OSError, TimeoutError, UaError) as exc:
            _log.debug("%s: error while closing: %r", self._where(), exc)
        finally:
            client.disconnect_socket()


class _Monitor:
    """Subscribe mode: one subscription whose publish responses land in one slot per tag.

    Client handle ``i`` is ``tags[i]``. The publish callback is synchronous and does O(1) work per
    notification, so it never falls behind and never queues.
    """

    def __init__(self, tags: Sequence[_Tag], cfg: OpcuaSourceConfig) -> None:
        self.tags = list(tags)
        self.values: list[ua.DataValue | None] = [None] * len(self.tags)
        # Per handle: (the DataValue converted, value, quality, source time).
        self.converted: list[tuple[ua.DataValue | None, Value, Quality, float | None] | None] = [
            None
        ] * len(self.tags)
        self.tag_handles: list[tuple[str, int]] | None = None
        self.missing = len(self.tags)
        self.complete = asyncio.Event()
        if not self.tags:
            self.complete.set()
        self.notifications = 0
        self._cfg = cfg
        self._publishing_s = cfg.publishing_interval_s or cfg.poll_interval_s
        self._sampling_s = cfg.sampling_interval_s or self._publishing_s
        self._keepalive_count = max(1, round(cfg.timeout_s / self._publishing_s))
        keepalive_s = self._keepalive_count * self._publishing_s
        self._stale_after_s = _STALE_KEEPALIVES * keepalive_s + cfg.timeout_s
        self._last_publish = time.monotonic()
        self._ended: str | None = None

    async def start(
        self, client: Client, max_per_call: int, initial: Sequence[ua.DataValue]
    ) -> None:
        """Create the subscription and its items; ``initial`` are the tags' values read just
        before (same order as the tags)."""
        for handle, dv in enumerate(initial):
            self._store(handle, dv)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self._publishing_s * 1000.0
        params.RequestedMaxKeepAliveCount = UInt32(self._keepalive_count)
        # The server ends a subscription after this many publishing intervals without a
        # publish request (Part 4 requires at least 3 × the keep-alive count).
        params.RequestedLifetimeCount = UInt32(10 * self._keepalive_count)
        params.MaxNotificationsPerPublish = UInt32(0)  # no limit: one response per interval
        params.PublishingEnabled = True
        params.Priority = 0
        result = await client.uaclient.create_subscription(params, self._on_publish)
        subscription_id = result.SubscriptionId
        handles = list(range(len(self.tags)))
        filtered = [h for h in handles if self._cfg.deadband > 0 and _numeric(initial[h])]
        plain = sorted(set(handles) - set(filtered))
        for batch in split_batches(filtered, max_per_call):
            refused = await self._create(client, subscription_id, batch, with_filter=True)
            plain.extend(refused)
        for batch in split_batches(plain, max_per_call):
            await self._create(client, subscription_id, batch, with_filter=False)
        self._last_publish = time.monotonic()

    async def _create(
        self, client: Client, subscription_id: int, handles: Sequence[int], *, with_filter: bool
    ) -> list[int]:
        """Create the items ``handles``; return those refused only for their deadband filter."""
        items: list[ua.MonitoredItemCreateRequest] = []
        for handle in handles:
            node = self.tags[handle].node
            assert node is not None  # only readable tags are monitored
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = ua.ReadValueId(NodeId=node, AttributeId=AttributeIds.Value)
            request.MonitoringMode = ua.MonitoringMode.Reporting
            parameters = ua.MonitoringParameters()
            parameters.ClientHandle = UInt32(handle)
            parameters.SamplingInterval = self._sampling_s * 1000.0
            parameters.QueueSize = UInt32(1)  # the latest value is all a poll takes
            parameters.DiscardOldest = True
            if with_filter:
                parameters.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=UInt32(ua.DeadbandType.Absolute),
                    DeadbandValue=self._cfg.deadband,
                )
            request.RequestedParameters = parameters
            items.append(request)
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = UInt32(subscription_id)
        params.TimestampsToReturn = ua.TimestampsToReturn.Source
        params.ItemsToCreate = items
        results = await client.uaclient.create_monitored_items(params)
        if len(results) != len(items):
            raise UaError(f"server answered {len(results)} results for {len(items)} items")
        refused: list[int] = []
        for handle, result in zip(handles, results, strict=True):
            status = result.StatusCode
            if status.is_good():
                continue
            if with_filter and status.value in _FILTER_REFUSED:
                refused.append(handle)
            else:
                # Never monitored (e.g. BadNodeIdUnknown): the tag reads as bad.
                self._store(handle, ua.DataValue(StatusCode=status))
        return refused

    def _store(self, handle: int, dv: ua.DataValue) -> None:
        if self.values[handle] is None:
            self.missing -= 1
            if self.missing == 0:
                self.complete.set()
        self.values[handle] = dv

    def _on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish callback: fold the notifications into the slots (keep it cheap)."""
        self._last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # keep-alive
        values = self.values
        count = len(values)
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                items = notification.MonitoredItems
                self.notifications += len(items)
                for item in items:
                    handle = item.ClientHandle
                    if 0 <= handle < count:
                        if values[handle] is None:
                            self._store(handle, item.Value)
                        else:
                            values[handle] = item.Value
            elif isinstance(notification, ua.StatusChangeNotification):
                self._ended = f"subscription ended by the server ({notification.Status.name})"

    def problem(self, now: float) -> str | None:
        """Why the subscription can no longer be trusted, or ``None``."""
        if self._ended is not None:
            return self._ended
        silent_s = now - self._last_publish
        if silent_s > self._stale_after_s:
            return f"no publish response (not even a keep-alive) for {silent_s:.1f} s"
        return None


_NUMERIC = frozenset(
    {
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Float,
        ua.VariantType.Double,
    }
)


def _numeric(dv: ua.DataValue) -> bool:
    """A scalar number (not a boolean): what an absolute deadband is defined for."""
    variant = dv.Value
    return variant is not None and not variant.is_array and variant.VariantType in _NUMERIC


def _read_request(nodes: Sequence[ua.NodeId]) -> ua.ReadParameters:
    params = ua.ReadParameters()
    params.MaxAge = 0  # ask for the device's current value, not a server-side cache
    params.TimestampsToReturn = ua.TimestampsToReturn.Source
    for node in nodes:
        rv = ua.ReadValueId()
        rv.NodeId = node
        rv.AttributeId = AttributeIds.Value
        params.NodesToRead.append(rv)
    return params


async def _read(client: Client, params: ua.ReadParameters) -> list[ua.DataValue]:
    """Send one Read request (the low-level service: asyncua never splits it)."""
    results: list[ua.DataValue] = await client.uaclient.read(params)
    if len(results) != len(params.NodesToRead):
        raise UaError(f"server answered {len(results)} values for {len(params.NodesToRead)} nodes")
    return results


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, UaStatusCodeError):
        return f"{ua.StatusCode(UInt32(exc.code)).name}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status(dv: ua.DataValue) -> ua.StatusCode:
    # An omitted StatusCode means Good (OPC UA Part 4, DataValue encoding).
    return dv.StatusCode if dv.StatusCode is not None else ua.StatusCode(UInt32(StatusCodes.Good))


def _start_time(dv: ua.DataValue) -> float | None:
    value = dv.Value.Value if dv.Value is not None else None
    if not _status(dv).is_good() or not isinstance(value, datetime):
        return None
    posix = _posix(value)
    return posix if posix > 0 else None  # OPC UA's null DateTime decodes to 1601


def _max_nodes(dv: ua.DataValue) -> int:
    value = dv.Value.Value if dv.Value is not None else None
    if not _status(dv).is_good() or isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)
