"""OpcuaSource in subscribe mode against a real asyncua server on 127.0.0.1 (nothing mocked).

Read requests are counted on the server side (PreRead callback): in subscribe mode a poll sends
none. Values are changed on the server and must arrive at a later ``read()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Server, ua
from asyncua.common.callback import CallbackType

from edge_agent.config.schema import OpcuaMode, OpcuaSourceConfig, OpcuaTag
from edge_agent.errors import NotConnectedError
from edge_agent.model import Quality, Sample
from edge_agent.sources.opcua import OpcuaSource

pytestmark = pytest.mark.asyncio(loop_scope="module")

NS_URI = "urn:edge-agent:test-plc"
MANY = 300  # counters for the no-drop test


@dataclass
class Plc:
    server: Server
    port: int
    ns: int
    nodes: dict[str, Any] = field(default_factory=dict)
    reads: list[list[str]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def node(self, name: str) -> str:
        return f"ns={self.ns};s=plc.{name}"

    async def write(self, name: str, value: Any, vtype: ua.VariantType) -> None:
        await self.server.write_attribute_value(
            self.nodes[name].nodeid, ua.DataValue(ua.Variant(value, vtype))
        )


async def start_plc(port: int = 0) -> Plc:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NS_URI)
    obj = await server.nodes.objects.add_object(ns, "plc")
    plc = Plc(server=server, port=port, ns=ns)
    variables: list[tuple[str, Any, ua.VariantType]] = [
        ("count", 10, ua.VariantType.UInt32),
        ("level", 50.0, ua.VariantType.Double),
        ("flag", False, ua.VariantType.Boolean),
    ] + [(f"c{i}", 0, ua.VariantType.UInt32) for i in range(MANY)]
    for name, value, vtype in variables:
        plc.nodes[name] = await obj.add_variable(
            ua.NodeId(f"plc.{name}", ns), name, ua.Variant(value, vtype)
        )

    async def count_read(event: Any, _service: Any) -> None:
        if event.is_external:
            plc.reads.append([r.NodeId.to_string() for r in event.request_params.NodesToRead])

    server.subscribe_server_callback(CallbackType.PreRead, count_read)
    await server.start()
    assert server.bserver is not None
    plc.port = server.bserver.port
    return plc


@pytest.fixture(autouse=True, scope="module")
def _quiet_asyncua() -> Iterator[None]:
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
    """After each test, let the server finish closing the test's connections."""
    before = set(asyncio.all_tasks())
    yield
    me = asyncio.current_task()
    deadline = time.monotonic() + 2.0
    while True:
        tasks = [t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()]
        left_s = deadline - time.monotonic()
        if not tasks or left_s <= 0:
            break
        await asyncio.wait(tasks, timeout=left_s)


def _cfg(plc: Plc, names: list[str], **kw: Any) -> OpcuaSourceConfig:
    return OpcuaSourceConfig(
        name="press1",
        endpoint=plc.endpoint,
        timeout_s=kw.pop("timeout_s", 2.0),
        mode=OpcuaMode.SUBSCRIBE,
        poll_interval_s=0.1,
        publishing_interval_s=kw.pop("publishing_interval_s", 0.05),
        tags=tuple(OpcuaTag(name=n, node=plc.node(n)) for n in names),
        **kw,
    )


async def _read_until(
    src: OpcuaSource, done: Callable[[dict[str, Sample]], bool], timeout_s: float = 5.0
) -> dict[str, Sample]:
    """Poll like the poller does until ``done`` holds for the samples (or fail at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = {s.tag: s for s in await src.read()}
        if done(samples):
            return samples
        assert time.monotonic() < deadline, f"condition not met in time: {samples}"
        await asyncio.sleep(0.02)


async def test_first_read_has_every_value_and_polls_send_no_read(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc, ["count", "level", "flag"]))
    await src.connect()
    try:
        reads_before = len(plc.reads)
        samples = {s.tag: s for s in await src.read()}
        assert {k: s.value for k, s in samples.items()} == {
            "count": 10,
            "level": 50.0,
            "flag": False,
        }
        assert all(s.quality is Quality.GOOD for s in samples.values())
        for _ in range(5):
            assert len(await src.read()) == 3
        assert src.notifications >= 3
        value_reads = [r for r in plc.reads[reads_before:] if plc.node("count") in r]
        assert value_reads == []  # the values came from the subscription, not from Reads
    finally:
        await src.close()


async def test_changes_arrive_at_a_later_read(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc, ["count", "flag"]))
    await src.connect()
    try:
        await _read_until(src, lambda s: len(s) == 2)
        await plc.write("count", 11, ua.VariantType.UInt32)
        await plc.write("flag", True, ua.VariantType.Boolean)
        samples = await _read_until(src, lambda s: s["count"].value == 11 and s["flag"].value)
        assert samples["count"].quality is Quality.GOOD
    finally:
        await plc.write("count", 10, ua.VariantType.UInt32)
        await plc.write("flag", False, ua.VariantType.Boolean)
        await src.close()


async def test_unknown_node_is_bad_and_the_others_flow(plc: Plc) -> None:
    cfg = _cfg(plc, ["count"])
    cfg = OpcuaSourceConfig(
        **{
            **{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
            "tags": (*cfg.tags, OpcuaTag(name="ghost", node=f"ns={plc.ns};s=plc.nope")),
        }
    )
    src = OpcuaSource(cfg)
    await src.connect()
    try:
        samples = {s.tag: s for s in await src.read()}
        assert samples["ghost"].quality is Quality.BAD
        assert samples["ghost"].value is None
        assert samples["count"].value == 10
    finally:
        await src.close()


async def test_deadband_suppresses_small_changes_and_bools_still_report(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc, ["level", "flag"], deadband=5.0))
    await src.connect()
    try:
        await _read_until(src, lambda s: len(s) == 2 and s["level"].value == 50.0)
        await plc.write("level", 51.0, ua.VariantType.Double)  # inside the deadband
        await plc.write("flag", True, ua.VariantType.Boolean)  # deadband does not apply
        await _read_until(src, lambda s: s["flag"].value is True)
        await plc.write("level", 60.0, ua.VariantType.Double)
        samples = await _read_until(src, lambda s: s["level"].value != 50.0)
        # 51.0 was never reported: the first value after 50.0 is 60.0.
        assert samples["level"].value == 60.0
    finally:
        await plc.write("level", 50.0, ua.VariantType.Double)
        await plc.write("flag", False, ua.VariantType.Boolean)
        await src.close()


async def test_bursts_of_changes_lose_no_final_value(plc: Plc) -> None:
    """Far more notifications than asyncua's event queue holds: the latest value of each tag
    arrives, none is dropped."""
    names = [f"c{i}" for i in range(MANY)]
    src = OpcuaSource(_cfg(plc, names, publishing_interval_s=0.2))
    await src.connect()
    try:
        await _read_until(src, lambda s: len(s) == MANY)
        for round_ in range(1, 6):
            for name in names:
                await plc.write(name, round_ * 1000 + int(name[1:]), ua.VariantType.UInt32)
        samples = await _read_until(
            src, lambda s: all(s[n].value == 5000 + int(n[1:]) for n in names)
        )
        assert all(s.quality is Quality.GOOD for s in samples.values())
    finally:
        for name in names:
            await plc.write(name, 0, ua.VariantType.UInt32)
        await src.close()


async def test_reconnect_after_transport_loss_subscribes_again(plc: Plc) -> None:
    src = OpcuaSource(_cfg(plc, ["count"]))
    try:
        await src.connect()
        assert (await src.read())[0].value == 10
        # Drop the server side of every connection (the server itself keeps running).
        for transport in list(plc.server.iserver.asyncio_transports):
            transport.close()
        with pytest.raises(NotConnectedError):
            await _read_until(src, lambda s: False)
        await src.connect()
        assert (await src.read())[0].value == 10
        await plc.write("count", 99, ua.VariantType.UInt32)
        await _read_until(src, lambda s: s["count"].value == 99)
    finally:
        await plc.write("count", 10, ua.VariantType.UInt32)
        await src.close()
        # The server keeps the orphaned session (and its subscription) for a reconnect until
        # the session times out; end it now so its tasks do not outlive the test.
        for session in list(plc.server.iserver._external_sessions.values()):
            await session.close_session(True)


async def test_silent_subscription_is_reported_as_not_connected(plc: Plc) -> None:
    """A subscription the server deleted behind our back: it stops sending publish responses
    (and the server answers the publish loop with BadNoSubscription), so the next reads fail
    with NotConnectedError once the keep-alive deadline passed, and a reconnect recovers."""
    src = OpcuaSource(_cfg(plc, ["count"], timeout_s=0.3, publishing_interval_s=0.05))
    await src.connect()
    try:
        await src.read()
        service = plc.server.iserver.subscription_service
        await service.delete_subscriptions(list(service.subscriptions))
        with pytest.raises(NotConnectedError, match=r"publish response|subscription"):
            await _read_until(src, lambda s: False, timeout_s=30.0)
        await src.connect()
        assert (await src.read())[0].value == 10
    finally:
        await src.close()
