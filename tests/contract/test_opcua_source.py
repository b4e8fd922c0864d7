"""OpcuaSource against a real asyncua server on 127.0.0.1 (free ports, nothing mocked).

One module-scoped server serves every test that does not change it (starting one costs ~1.5 s);
the stop/restart test runs its own. Read requests are counted on the server side with its PreRead
callback, so "one poll, one Read" is checked on the wire, not inside the client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole

from edge_agent.config.schema import OpcuaSourceConfig, OpcuaTag
from edge_agent.errors import NotConnectedError, SourceError
from edge_agent.model import Quality
from edge_agent.sources.opcua import OpcuaSource, read_password_file, split_batches

pytestmark = pytest.mark.asyncio(loop_scope="module")

NS_URI = "urn:edge-agent:test-plc"
USER = "operator"
PASSWORD = "s3cret pass"
FIXED_SOURCE_TIME = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
EXTRA_NODES = 25  # for the MaxNodesPerRead split

# name -> (initial value, variant type)
SCALARS: dict[str, tuple[Any, ua.VariantType]] = {
    "u16": (65535, ua.VariantType.UInt16),
    "u32": (4_000_000_000, ua.VariantType.UInt32),
    "i32": (-123456, ua.VariantType.Int32),
    "dbl": (2.5, ua.VariantType.Double),
    "flag": (True, ua.VariantType.Boolean),
    "text": ("hello", ua.VariantType.String),
}


class _OneUser:
    """Accepts anonymous sessions and one username/password pair."""

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None or (username == USER and password == PASSWORD):
            return User(role=UserRole.User)
        return None


@dataclass
class Plc:
    server: Server
    port: int
    ns: int
    reads: list[list[str]] = field(default_factory=list)  # node ids of each Read request

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def node(self, name: str) -> str:
        return f"ns={self.ns};s=plc.{name}"

    def reads_of(self, node: str) -> list[list[str]]:
        """The Read requests that asked for ``node`` (ignores asyncua's own housekeeping)."""
        return [r for r in self.reads if node in r]


async def start_plc(port: int = 0) -> Plc:
    server = Server(user_manager=_OneUser())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NS_URI)
    obj = await server.nodes.objects.add_object(ns, "plc")
    for name, (value, vtype) in SCALARS.items():
        await obj.add_variable(ua.NodeId(f"plc.{name}", ns), name, ua.Variant(value, vtype))
    for i in range(EXTRA_NODES):
        await obj.add_variable(
            ua.NodeId(f"plc.n{i}", ns), f"n{i}", ua.Variant(i, ua.VariantType.UInt16)
        )
    stamped = await obj.add_variable(
        ua.NodeId("plc.stamped", ns), "stamped", ua.Variant(0, ua.VariantType.Int32)
    )
    await stamped.write_value(
        ua.DataValue(ua.Variant(42, ua.VariantType.Int32), SourceTimestamp=FIXED_SOURCE_TIME)
    )
    uncertain = await obj.add_variable(
        ua.NodeId("plc.uncertain", ns), "uncertain", ua.Variant(0, ua.VariantType.Int32)
    )
    await uncertain.write_value(
        ua.DataValue(
            ua.Variant(7, ua.VariantType.Int32),
            StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
        )
    )
    failed = await obj.add_variable(
        ua.NodeId("plc.failed", ns), "failed", ua.Variant(0, ua.VariantType.Int32)
    )
    await failed.write_value(
        ua.DataValue(
            ua.Variant(9, ua.VariantType.Int32),
            StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
        )
    )
    await obj.add_variable(
        ua.NodeId("plc.array", ns), "array", ua.Variant([1, 2, 3], ua.VariantType.Int32)
    )
    await obj.add_variable(
        ua.NodeId("plc.bytes", ns), "bytes", ua.Variant(b"\x01\x02", ua.VariantType.ByteString)
    )
    plc = Plc(server=server, port=port, ns=ns)

    async def count_read(event: Any, _service: Any) -> None:
        if event.is_external:
            plc.reads.append([r.NodeId.to_string() for r in event.request_params.NodesToRead])

    server.subscribe_server_callback(CallbackType.PreRead, count_read)
    await server.start()
    assert server.bserver is not None
    plc.port = server.bserver.port
    return plc


def _client_tasks() -> list[asyncio.Task[Any]]:
    """Live tasks running asyncua client code (supervisor, watchdog, channel renewal)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and "asyncua/client/" in code.co_filename:
            found.append(task)
    return found


async def _wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True, scope="module")
def _quiet_asyncua() -> Iterator[None]:
    # asyncua logs every request at INFO; keep failures readable.
    logger = logging.getLogger("asyncua")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plc() -> AsyncIterator[Plc]:
    plc = await start_plc()
    yield plc
    await plc.server.stop()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _settled() -> AsyncIterator[None]:
    """After each test: the source stopped asyncua's client tasks, and the server finished
    handling the connections that were closed (it does so a few loop turns later). Anything
    still pending after the deadline is reported by the shared leak guard."""
    before = set(asyncio.all_tasks())
    yield
    me = asyncio.current_task()

    def pending() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()]

    deadline = time.monotonic() + 2.0
    while (tasks := pending()) and (left_s := deadline - time.monotonic()) > 0:
        await asyncio.wait(tasks, timeout=left_s)
    assert not _client_tasks(), "the source left asyncua client tasks running"


def _cfg(endpoint: str, tags: dict[str, str], **kw: Any) -> OpcuaSourceConfig:
    return OpcuaSourceConfig(
        name="press1",
        endpoint=endpoint,
        timeout_s=kw.pop("timeout_s", 2.0),
        tags=tuple(OpcuaTag(name=k, node=v) for k, v in tags.items()),
        **kw,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- reading ------------------------------------------------------------------------------------


async def test_reads_every_type_in_one_read_request(plc: Plc) -> None:
    tags = {name: plc.node(name) for name in SCALARS}
    src = OpcuaSource(_cfg(plc.endpoint, tags), clock=lambda: 1234.5)
    await src.connect()
    try:
        assert src.connected
        assert _client_tasks()  # the leak check below can see asyncua's tasks
        before = len(plc.reads_of(plc.node("u16")))
        samples = await src.read()
        after = plc.reads_of(plc.node("u16"))
    finally:
        await src.close()
    assert not src.connected

    assert [s.tag for s in samples] == list(SCALARS)
    assert {s.tag: s.value for s in samples} == {k: v for k, (v, _) in SCALARS.items()}
    assert {type(s.value) for s in samples} == {int, float, bool, str}
    for s in samples:
        assert s.source == "press1"
        assert s.key == f"press1.{s.tag}"
        assert s.quality is Quality.GOOD
        assert s.agent_time == 1234.5
        assert s.source_time is not None
        assert abs(s.source_time - time.time()) < 600
    # one poll = one Read request carrying all six nodes
    assert len(after) - before == 1
    assert sorted(after[-1]) == sorted(tags.values())


async def test_source_time_is_the_servers_source_timestamp(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc.endpoint, {"stamped": plc.node("stamped")}))
    await src.connect()
    try:
        (sample,) = await src.read()
    finally:
        await src.close()
    assert sample.value == 42
    assert sample.source_time == FIXED_SOURCE_TIME.timestamp()


async def test_unknown_node_is_bad_for_that_tag_only(plc: Plc) -> None:
    tags = {"u16": plc.node("u16"), "ghost": plc.node("does.not.exist"), "flag": plc.node("flag")}
    src = OpcuaSource(_cfg(plc.endpoint, tags))
    await src.connect()
    try:
        samples = {s.tag: s for s in await src.read()}
        assert src.connected  # a bad node does not cost the connection
    finally:
        await src.close()
    assert samples["ghost"].quality is Quality.BAD
    assert samples["ghost"].value is None
    assert (samples["u16"].value, samples["u16"].quality) == (65535, Quality.GOOD)
    assert (samples["flag"].value, samples["flag"].quality) == (True, Quality.GOOD)


async def test_status_codes_and_unsupported_types_map_to_quality(plc: Plc) -> None:
    names = ["uncertain", "failed", "array", "bytes"]
    src = OpcuaSource(_cfg(plc.endpoint, {n: plc.node(n) for n in names}))
    await src.connect()
    try:
        samples = {s.tag: s for s in await src.read()}
    finally:
        await src.close()
    assert (samples["uncertain"].value, samples["uncertain"].quality) == (7, Quality.UNCERTAIN)
    assert (samples["failed"].value, samples["failed"].quality) == (None, Quality.BAD)
    assert (samples["array"].value, samples["array"].quality) == (None, Quality.BAD)
    assert (samples["bytes"].value, samples["bytes"].quality) == (None, Quality.BAD)


async def test_namespace_uri_node_ids_are_resolved_at_connect(plc: Plc) -> None:
    tags = {"dbl": f"nsu={NS_URI};s=plc.dbl", "elsewhere": "nsu=urn:not-here;s=plc.dbl"}
    src = OpcuaSource(_cfg(plc.endpoint, tags))
    await src.connect()
    try:
        samples = {s.tag: s for s in await src.read()}
    finally:
        await src.close()
    assert (samples["dbl"].value, samples["dbl"].quality) == (2.5, Quality.GOOD)
    assert (samples["elsewhere"].value, samples["elsewhere"].quality) == (None, Quality.BAD)


async def test_read_is_split_at_the_servers_max_nodes_per_read(plc: Plc) -> None:
    limit = plc.server.get_node(
        ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
    )
    original = await limit.read_value()
    tags = {f"n{i}": plc.node(f"n{i}") for i in range(EXTRA_NODES)}
    src = OpcuaSource(_cfg(plc.endpoint, tags))
    await limit.write_value(ua.Variant(10, ua.VariantType.UInt32))
    try:
        await src.connect()
        assert src.max_nodes_per_read == 10
        assert src.requests_per_scan == 3
        first = len(plc.reads)
        samples = await src.read()
        requests = [r for r in plc.reads[first:] if r[0] in tags.values()]
    finally:
        await src.close()
        await limit.write_value(ua.Variant(original, ua.VariantType.UInt32))
    assert [len(r) for r in requests] == [10, 10, 5]
    assert [s.value for s in samples] == list(range(EXTRA_NODES))


async def test_split_batches() -> None:
    items = list(range(25))
    assert [len(b) for b in split_batches(items, 10)] == [10, 10, 5]
    assert [x for b in split_batches(items, 10) for x in b] == items
    assert split_batches(items, 0) == [items]  # 0: the server sets no limit
    assert split_batches(items, 25) == [items]
    assert split_batches([], 10) == []


async def test_server_start_time_is_exposed(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc.endpoint, {"u16": plc.node("u16")}))
    assert src.server_start_time is None
    await src.connect()
    await src.close()
    start = await plc.server.get_node(
        ua.NodeId(ua.ObjectIds.Server_ServerStatus_StartTime)
    ).read_value()
    assert src.server_start_time == start.timestamp()


# --- configuration errors -----------------------------------------------------------------------


async def test_unparsable_node_id_names_the_tag() -> None:
    src = OpcuaSource(_cfg("opc.tcp://127.0.0.1:1/", {"ok": "ns=2;i=1", "broken": "ns=x;i=1"}))
    with pytest.raises(SourceError, match=r"tag 'broken'.*'ns=x;i=1'") as info:
        await src.connect()
    assert not isinstance(info.value, NotConnectedError)


async def test_read_before_connect_raises_not_connected() -> None:
    src = OpcuaSource(_cfg("opc.tcp://127.0.0.1:1/", {"u16": "ns=2;i=1"}))
    with pytest.raises(NotConnectedError, match="not connected"):
        await src.read()


# --- connection failures and recovery -----------------------------------------------------------


async def test_connect_to_nothing_listening_fails_promptly() -> None:
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/"
    src = OpcuaSource(_cfg(endpoint, {"u16": "ns=2;i=1"}, timeout_s=2.0))
    started = time.monotonic()
    with pytest.raises(NotConnectedError, match=r"press1.*127\.0\.0\.1.*connection refused"):
        await src.connect()
    assert time.monotonic() - started < 2.0
    assert not src.connected


async def test_connect_to_a_silent_server_times_out() -> None:
    accepted = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    src = OpcuaSource(_cfg(f"opc.tcp://127.0.0.1:{port}/", {"u16": "ns=2;i=1"}, timeout_s=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(NotConnectedError, match=r"no answer within 0\.5 s"):
            await src.connect()
        assert time.monotonic() - started < 1.5
        assert accepted.is_set()
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_server_stop_then_reconnect_on_the_same_port() -> None:
    plc = await start_plc()
    port = plc.port
    src = OpcuaSource(_cfg(plc.endpoint, {"u16": plc.node("u16")}))
    restarted: Plc | None = None
    try:
        await src.connect()
        first_start = src.server_start_time
        assert first_start is not None
        assert (await src.read())[0].value == 65535

        await plc.server.stop()
        with pytest.raises(NotConnectedError, match=rf"press1.*127\.0\.0\.1:{port}"):
            await src.read()
        assert not src.connected
        with pytest.raises(NotConnectedError):
            await src.connect()  # still down

        restarted = await start_plc(port)
        assert restarted.port == port
        await src.connect()
        assert (await src.read())[0].value == 65535
        assert src.server_start_time is not None
        assert src.server_start_time > first_start  # the PLC restarted
    finally:
        await src.close()
        if restarted is not None:
            await restarted.server.stop()


async def test_read_after_transport_loss_raises_not_connected(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc.endpoint, {"u16": plc.node("u16")}))
    await src.connect()
    try:
        # Drop the server side of every connection (the server itself keeps running).
        for transport in list(plc.server.iserver.asyncio_transports):
            transport.close()
        await _wait_for(lambda: not src.connected)
        with pytest.raises(NotConnectedError):
            await src.read()
        await src.connect()  # and the same source object connects again
        assert (await src.read())[0].quality is Quality.GOOD
    finally:
        await src.close()


# --- login --------------------------------------------------------------------------------------


async def test_username_login_with_password_file(plc: Plc, tmp_path: Path) -> None:
    secret = tmp_path / "opcua.password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    src = OpcuaSource(
        _cfg(plc.endpoint, {"u16": plc.node("u16")}, username=USER, password_file=str(secret))
    )
    await src.connect()
    try:
        assert (await src.read())[0].value == 65535
    finally:
        await src.close()


async def test_wrong_password_is_rejected_clearly(plc: Plc, tmp_path: Path) -> None:
    secret = tmp_path / "opcua.password"
    secret.write_text("wrong\n", encoding="utf-8")
    src = OpcuaSource(
        _cfg(plc.endpoint, {"u16": plc.node("u16")}, username=USER, password_file=str(secret))
    )
    with pytest.raises(
        NotConnectedError, match=rf"login as '{USER}' rejected.*BadUserAccessDenied.*{secret.name}"
    ):
        await src.connect()
    assert not src.connected


async def test_missing_password_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.password"
    src = OpcuaSource(
        _cfg(
            "opc.tcp://127.0.0.1:1/", {"u16": "ns=2;i=1"}, username=USER, password_file=str(missing)
        )
    )
    with pytest.raises(NotConnectedError, match=f"press1.*password file {missing}"):
        await src.connect()


async def test_password_file_loses_exactly_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    for raw, expected in [
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw", "pw"),
        ("pw\n\n", "pw\n"),
        (" p w ", " p w "),
    ]:
        path.write_text(raw, encoding="utf-8", newline="")
        assert read_password_file(str(path)) == expected
