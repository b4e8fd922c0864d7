"""Client-side measurements, each run in a fresh process (``python -m benchmarks.workers NAME
JSON``) so that the CPU time counted is the client's alone: the servers and the broker run in
other processes. Prints one JSON line with the result.

CPU time is ``time.process_time()`` (all threads of this process) over many scans, taken in
alternating rounds of agent and raw library so that drift on a shared machine hits both alike;
each figure is the median of the rounds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.maps import OPCUA_NODES, all_tags, modbus_map, opcua_node

HOST = "127.0.0.1"


async def _cpu_per_call(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await fn()
    return (time.process_time() - start) / calls


async def _alternate(
    agent: Callable[[], Awaitable[Any]],
    raw: Callable[[], Awaitable[Any]],
    *,
    rounds: int,
    calls: int,
) -> tuple[float, float]:
    for _ in range(max(3, calls // 5)):  # warm-up: caches, first-use allocations
        await agent()
        await raw()
    agent_s: list[float] = []
    raw_s: list[float] = []
    for _ in range(rounds):
        agent_s.append(await _cpu_per_call(agent, calls))
        raw_s.append(await _cpu_per_call(raw, calls))
    return statistics.median(agent_s), statistics.median(raw_s)


# -- Modbus -----------------------------------------------------------------------------------


async def modbus_overhead(port: int, rounds: int, calls: int) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    from edge_agent.config.schema import ModbusSourceConfig
    from edge_agent.sources.modbus import ModbusSource
    from edge_agent.sources.planner import plan_reads

    areas = modbus_map()
    tags = all_tags(areas)
    source = ModbusSource(ModbusSourceConfig(name="bench", host=HOST, port=port, tags=tuple(tags)))
    await source.connect()
    # The raw reference: the minimal batched reads of the same registers, no decoding.
    minimal = [
        (r.start, r.count)
        for area in areas
        for r in plan_reads(area.tags, unit_id=1, max_gap=65536)
    ]
    raw = AsyncModbusTcpClient(HOST, port=port, reconnect_delay=0, retries=0, timeout=2.0)
    await raw.connect()

    async def raw_scan() -> None:
        for start, count in minimal:
            response = await raw.read_holding_registers(start, count=count, device_id=1)
            assert not response.isError()

    samples = await source.read()
    assert len(samples) == len(tags), "agent scan incomplete"
    agent_s, raw_s = await _alternate(source.read, raw_scan, rounds=rounds, calls=calls)
    result = {
        "agent_s": agent_s,
        "raw_s": raw_s,
        "agent_requests": source.requests_per_scan,
        "raw_requests": len(minimal),
        "tags": len(tags),
        "bad": sum(1 for s in samples if s.value is None),
    }
    await source.close()
    raw.close()
    return result


# -- OPC UA -----------------------------------------------------------------------------------


async def opcua_overhead(endpoint: str, rounds: int, calls: int) -> dict[str, Any]:
    from asyncua import Client, ua

    from edge_agent.config.schema import OpcuaSourceConfig, OpcuaTag
    from edge_agent.sources.opcua import OpcuaSource

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    tags = tuple(OpcuaTag(name=f"v{i}", node=opcua_node(i)) for i in range(OPCUA_NODES))
    source = OpcuaSource(OpcuaSourceConfig(name="bench", endpoint=endpoint, tags=tags))
    await source.connect()
    client = Client(endpoint, timeout=5.0, watchdog_intervall=3600.0, auto_reconnect=False)
    await client.connect()
    params = ua.ReadParameters()
    params.TimestampsToReturn = ua.TimestampsToReturn.Source
    for i in range(OPCUA_NODES):
        rv = ua.ReadValueId()
        rv.NodeId = ua.NodeId.from_string(opcua_node(i))
        rv.AttributeId = ua.AttributeIds.Value
        params.NodesToRead.append(rv)

    async def raw_read() -> None:
        results = await client.uaclient.read(params)
        assert len(results) == OPCUA_NODES

    samples = await source.read()
    assert len(samples) == OPCUA_NODES
    agent_s, raw_s = await _alternate(source.read, raw_read, rounds=rounds, calls=calls)
    result = {
        "agent_s": agent_s,
        "raw_s": raw_s,
        "requests": source.requests_per_scan,
        "bad": sum(1 for s in samples if s.value is None),
    }
    await source.close()
    await client.disconnect()
    return result


async def opcua_subscribe(
    endpoint: str, seconds: float, publishing_ms: float, poll_s: float
) -> dict[str, Any]:
    """The server is already changing values. Agent (subscribe mode, read() every ``poll_s``)
    and raw asyncua (its own handler-based subscription, counting notifications) run one after
    the other for ``seconds`` each; CPU per notification of both."""
    from asyncua import Client

    from edge_agent.config.schema import OpcuaMode, OpcuaSourceConfig, OpcuaTag
    from edge_agent.sources.opcua import OpcuaSource

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    tags = tuple(OpcuaTag(name=f"v{i}", node=opcua_node(i)) for i in range(OPCUA_NODES))
    cfg = OpcuaSourceConfig(
        name="bench",
        endpoint=endpoint,
        tags=tags,
        mode=OpcuaMode.SUBSCRIBE,
        poll_interval_s=poll_s,
        publishing_interval_s=publishing_ms / 1000.0,
    )

    async def agent_phase() -> tuple[int, float]:
        source = OpcuaSource(cfg)
        await source.connect()
        await source.read()
        await asyncio.sleep(2 * publishing_ms / 1000.0)  # past the initial values
        n0, c0 = source.notifications, time.process_time()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await source.read()
            await asyncio.sleep(poll_s)
        n, c = source.notifications - n0, time.process_time() - c0
        await source.close()
        return n, c

    class Counter:
        count = 0

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            self.count += 1

    async def raw_phase() -> tuple[int, float]:
        client = Client(endpoint, timeout=5.0, watchdog_intervall=3600.0, auto_reconnect=False)
        await client.connect()
        handler = Counter()
        sub = await client.create_subscription(publishing_ms, handler)
        nodes = [client.get_node(opcua_node(i)) for i in range(OPCUA_NODES)]
        await sub.subscribe_data_change(nodes, sampling_interval=publishing_ms)
        await asyncio.sleep(2 * publishing_ms / 1000.0)
        n0, c0 = handler.count, time.process_time()
        await asyncio.sleep(seconds)
        n, c = handler.count - n0, time.process_time() - c0
        await client.disconnect()
        return n, c

    agent_n, agent_cpu = await agent_phase()
    raw_n, raw_cpu = await raw_phase()
    return {
        "agent_notifications": agent_n,
        "agent_cpu_s": agent_cpu,
        "raw_notifications": raw_n,
        "raw_cpu_s": raw_cpu,
        "seconds": seconds,
    }


async def opcua_mode_cpu(endpoint: str, seconds: float, mode: str) -> dict[str, Any]:
    """CPU of one OPC UA source with 1,000 tags at a 1 s poll, in ``mode`` (poll | subscribe),
    with the server changing a few values per second."""
    from edge_agent.config.schema import OpcuaMode, OpcuaSourceConfig, OpcuaTag
    from edge_agent.sources.opcua import OpcuaSource

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    tags = tuple(OpcuaTag(name=f"v{i}", node=opcua_node(i)) for i in range(OPCUA_NODES))
    cfg = OpcuaSourceConfig(
        name="bench", endpoint=endpoint, tags=tags, mode=OpcuaMode(mode), poll_interval_s=1.0
    )
    source = OpcuaSource(cfg)
    await source.connect()
    await source.read()
    c0 = time.process_time()
    loop = asyncio.get_running_loop()
    start = nxt = loop.time()
    while loop.time() - start < seconds:
        await source.read()
        nxt += 1.0
        await asyncio.sleep(max(0.0, nxt - loop.time()))
    cpu = time.process_time() - c0
    await source.close()
    return {"cpu_s": cpu, "seconds": seconds}


# -- MQTT backlog drain -----------------------------------------------------------------------


def _payload(i: int) -> dict[str, Any]:
    # About the size of a kpi payload (~700 bytes of JSON).
    return {
        "schema": "edge-agent/kpi/1",
        "site": "bench",
        "line": "line1",
        "i": i,
        "pad": "x" * 600,
    }


async def drain(port: int, messages: int) -> dict[str, Any]:
    from edge_agent.config.schema import MqttConfig
    from edge_agent.model import OutMessage
    from edge_agent.sinks.mqtt import MqttSink
    from edge_agent.sinks.outbox import Outbox

    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite")
        batch = 1000
        for first in range(0, messages, batch):
            outbox.append(
                [
                    OutMessage(line="line1", topic_suffix="kpi", payload=_payload(i), retain=False)
                    for i in range(first, min(messages, first + batch))
                ]
            )
        payload_bytes = len(outbox.peek(1)[0].payload)
        sink = MqttSink(
            MqttConfig(host=HOST, port=port, client_id="bench-agent"), site="bench", outbox=outbox
        )
        start = time.monotonic()
        cpu0 = time.process_time()
        task = asyncio.create_task(sink.run())
        # published_total is a counter: cheap to poll, unlike a COUNT(*) over the outbox.
        while sink.published_total < messages:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        agent_s = time.monotonic() - start
        agent_cpu = time.process_time() - cpu0
        await sink.close(5.0)
        await task
        outbox.close()
    raw_s, raw_cpu = await asyncio.to_thread(_raw_paho, port, messages, payload_bytes)
    return {
        "messages": messages,
        "agent_s": agent_s,
        "agent_cpu_s": agent_cpu,
        "raw_s": raw_s,
        "raw_cpu_s": raw_cpu,
    }


def _raw_paho(port: int, messages: int, payload_bytes: int) -> tuple[float, float]:
    """paho-mqtt alone: connect, publish ``messages`` at QoS 1 with the same in-flight window as
    the sink (100), wait for every PUBACK."""
    import threading

    import paho.mqtt.client as mqtt

    done = threading.Event()
    acked = 0

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == messages:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw")
    client.max_inflight_messages_set(100)
    client.on_publish = on_publish
    payload = b"x" * payload_bytes
    start = time.monotonic()
    cpu0 = time.process_time()
    client.connect(HOST, port)
    client.loop_start()
    for _ in range(messages):
        client.publish("edge-agent/bench/line1/kpi", payload, qos=1)
    ok = done.wait(120)
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu0
    client.disconnect()
    client.loop_stop()
    if not ok:
        raise RuntimeError(f"raw paho: only {acked} of {messages} acknowledged")
    return elapsed, cpu


WORKERS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "modbus-overhead": modbus_overhead,
    "opcua-overhead": opcua_overhead,
    "opcua-subscribe": opcua_subscribe,
    "opcua-mode-cpu": opcua_mode_cpu,
    "drain": drain,
}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    name, args = argv[0], json.loads(argv[1])
    result = asyncio.run(WORKERS[name](**args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
