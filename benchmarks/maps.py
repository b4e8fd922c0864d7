"""Tag maps and agent configurations the benchmarks share (deterministic: fixed seeds)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from edge_agent.config.schema import DataType, ModbusTag
from edge_agent.sources.decode import register_count
from edge_agent.sources.planner import protocol_minimum

MODBUS_TAGS = 1000
OPCUA_NODES = 1000
MAX_GAP = 16  # the agent's default


@dataclass(frozen=True, slots=True)
class Area:
    """A memory area of the PLC: ``count`` registers from ``start`` exist; around it nothing."""

    start: int
    count: int
    tags: tuple[ModbusTag, ...]


def modbus_map(seed: int = 1, n: int = MODBUS_TAGS) -> list[Area]:
    """A realistic 1,000-tag PLC map: areas of 5..60 mixed-width tags with spare registers (0..4)
    between tags, and unmapped address ranges (20..400 registers) between areas that the device
    refuses to read (Modbus exception 2), so no request may span two areas."""
    rnd = random.Random(seed)
    types = [DataType.UINT16, DataType.INT16, DataType.UINT32, DataType.FLOAT32, DataType.FLOAT64]
    areas: list[Area] = []
    address = 0
    made = 0
    while made < n:
        start = address
        tags: list[ModbusTag] = []
        for _ in range(min(rnd.randint(5, 60), n - made)):
            tag = ModbusTag(name=f"t{made}", address=address, type=rnd.choice(types))
            tags.append(tag)
            made += 1
            address += register_count(tag) + rnd.choice([0, 0, 0, 1, 2, 4])
        end = tags[-1].address + register_count(tags[-1])
        areas.append(Area(start, end - start, tuple(tags)))
        address = end + rnd.randint(20, 400)
    return areas


def all_tags(areas: list[Area]) -> list[ModbusTag]:
    return [tag for area in areas for tag in area.tags]


def minimum_requests(areas: list[Area]) -> int:
    """The fewest requests the protocol allows for the map: per area, the fewest 125-register
    windows covering its tags (:func:`protocol_minimum`, proven optimal by a unit test); areas
    never share a request because the gap between them does not exist on the device."""
    return sum(protocol_minimum(area.tags) for area in areas)


def opcua_node(i: int) -> str:
    return f"ns=2;i={1000 + i}"
