"""Simulated PLCs for the benchmarks, each kind in a process of its own so that their CPU never
counts as the agent's: ``python -m benchmarks.servers KIND [ARGS]``.

Prints one JSON line (the bound ports) once listening, then serves until its stdin closes. The
OPC UA kind also reads commands from stdin: ``change K PERIOD_MS`` starts changing K variables
every PERIOD_MS (round robin, each a counter going up), ``still`` stops changing.

Kinds:
- ``modbus-map``: the 1,000-tag map of :func:`benchmarks.maps.modbus_map`, only its areas exist;
- ``opcua N``: N UInt32 variables ``ns=2;i=1000..``;
- ``plcs N M``: N Modbus servers with M holding registers each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from benchmarks.maps import modbus_map

HOST = "127.0.0.1"


async def _modbus_server(blocks: list[SimData]) -> tuple[ModbusTcpServer, int]:
    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    device = SimDevice(id=1, simdata=(bits, bits, blocks, blocks))
    server = ModbusTcpServer(device, address=(HOST, 0))
    await server.serve_forever(background=True)
    port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    return server, port


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve_modbus_map() -> None:
    blocks = [
        SimData(area.start, count=area.count, values=0x1234, datatype=DataType.REGISTERS)
        for area in modbus_map()
    ]
    server, port = await _modbus_server(blocks)
    print(json.dumps({"port": port}), flush=True)
    reader = await _stdin_lines()
    while await reader.readline():
        pass
    await server.shutdown()  # type: ignore[no-untyped-call]


async def serve_plcs(count: int, registers: int) -> None:
    servers: list[ModbusTcpServer] = []
    ports: list[int] = []
    for _ in range(count):
        block = SimData(0, count=registers, values=7, datatype=DataType.REGISTERS)
        server, port = await _modbus_server([block])
        servers.append(server)
        ports.append(port)
    print(json.dumps({"ports": ports}), flush=True)
    reader = await _stdin_lines()
    while await reader.readline():
        pass
    for server in servers:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def serve_opcua(nodes: int) -> None:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://{HOST}:0/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:edge-agent:bench")
    obj = await server.nodes.objects.add_object(ns, "bench")
    ids = [ua.NodeId(1000 + i, ns) for i in range(nodes)]
    # One AddNodes call for all variables (node by node takes seconds for 1,000).
    items = []
    for i, nid in enumerate(ids):
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = nid
        item.BrowseName = ua.QualifiedName(f"v{i}", ns)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = obj.nodeid
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(f"v{i}")
        attrs.Value = ua.Variant(i, ua.VariantType.UInt32)
        attrs.DataType = ua.NodeId(ua.ObjectIds.UInt32)
        attrs.ValueRank = ua.ValueRank.Scalar
        attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        item.NodeAttributes = attrs
        items.append(item)
    results = await server.iserver.isession.add_nodes(items)
    assert all(r.StatusCode.is_good() for r in results)
    await server.start()
    assert server.bserver is not None
    print(json.dumps({"endpoint": f"opc.tcp://{HOST}:{server.bserver.port}/"}), flush=True)

    changer: asyncio.Task[Any] | None = None
    values = list(range(nodes))

    async def change(k: int, period_s: float) -> None:
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        index = 0
        while True:
            for _ in range(k):
                values[index] += 1
                await server.write_attribute_value(
                    ids[index], ua.DataValue(ua.Variant(values[index], ua.VariantType.UInt32))
                )
                index = (index + 1) % nodes
            nxt += period_s
            await asyncio.sleep(max(0.0, nxt - loop.time()))

    reader = await _stdin_lines()
    while line := await reader.readline():
        words = line.decode().split()
        if changer is not None:
            changer.cancel()
            await asyncio.gather(changer, return_exceptions=True)
            changer = None
        if words and words[0] == "change":
            changer = asyncio.create_task(change(int(words[1]), float(words[2]) / 1000.0))
        print(json.dumps({"ok": line.decode().strip()}), flush=True)
    if changer is not None:
        changer.cancel()
    await server.stop()


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "modbus-map":
        asyncio.run(serve_modbus_map())
    elif kind == "plcs":
        asyncio.run(serve_plcs(int(argv[1]), int(argv[2])))
    elif kind == "opcua":
        asyncio.run(serve_opcua(int(argv[1])))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
