"""Plan a Modbus scan: coalesce a source's tags into the fewest read requests. Pure.

Each request costs a round trip and ~140 µs of client CPU whatever its size (DESIGN §7), so the
planner reads neighbouring tags together, and reads over small unused gaps when that saves a
request. Rules:

- one request reads one table of one unit id;
- at most :data:`MAX_REGISTERS` registers per register read, :data:`MAX_BITS` bits per coil or
  discrete-input read (the protocol's limits);
- a request never contains a run of more than ``max_gap`` registers (``max_gap * 16`` bits) that no
  tag of that unit and table uses: unknown addresses may not exist on the device, and one
  "illegal data address" fails the whole request;
- every tag lies wholly inside exactly one request.

Within those rules the plan has the fewest requests possible: tags split into *clusters* where a
gap is too large to read over (no request can span two clusters), and each cluster is covered
greedily, each request starting at the lowest tag not yet covered and taking every remaining tag
that ends within the limit. That greedy step is optimal for covering intervals with windows of
a fixed length (any optimal plan can be shifted to start its first window there).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.config.schema import ModbusTable, ModbusTag
from edge_agent.sources.decode import is_bit_table, register_count

__all__ = [
    "ADDRESS_SPACE",
    "MAX_BITS",
    "MAX_REGISTERS",
    "PlannedTag",
    "ReadRequest",
    "limit_for",
    "narrow",
    "plan_reads",
    "protocol_minimum",
]

MAX_REGISTERS = 125  # function 3 / 4: quantity of registers 1..125
MAX_BITS = 2000  # function 1 / 2: quantity of bits 1..2000
ADDRESS_SPACE = 65536
BITS_PER_GAP_REGISTER = 16

_TABLE_ORDER = {
    ModbusTable.HOLDING: 0,
    ModbusTable.INPUT: 1,
    ModbusTable.COIL: 2,
    ModbusTable.DISCRETE: 3,
}


@dataclass(frozen=True, slots=True)
class PlannedTag:
    """A tag inside a request: ``offset`` and ``count`` in registers (bits) from its start."""

    tag: ModbusTag
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers (bits) of ``table`` from ``start``, on ``unit_id``.

    ``tags`` are ordered by offset.
    """

    unit_id: int
    table: ModbusTable
    start: int
    count: int
    tags: tuple[PlannedTag, ...]

    @property
    def end(self) -> int:
        return self.start + self.count

    def describe(self) -> str:
        """``holding 100..124 on unit 1``: for log and error messages."""
        return f"{self.table.value} {self.start}..{self.end - 1} on unit {self.unit_id}"


def limit_for(table: ModbusTable) -> int:
    """The most registers (bits) one read of ``table`` may ask for."""
    return MAX_BITS if is_bit_table(table) else MAX_REGISTERS


def plan_reads(tags: Iterable[ModbusTag], *, unit_id: int, max_gap: int) -> list[ReadRequest]:
    """The fewest read requests that cover ``tags`` within the rules in the module docstring.

    ``unit_id`` applies to tags without their own. ``max_gap`` is in registers (bit tables use
    ``max_gap * 16`` bits); with 0 adjacent tags still share a request but nothing unused is
    read. Requests come ordered by unit id,
    table (holding, input, coil, discrete) and address. Raises ``ValueError`` for a tag that
    cannot be read (wrong type for its table, wider than one request, outside the address
    space) or a negative ``max_gap``.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    groups: dict[tuple[int, ModbusTable], list[tuple[int, int, ModbusTag]]] = defaultdict(list)
    for tag in tags:
        width = register_count(tag)
        if width > limit_for(tag.table):
            raise ValueError(
                f"tag {tag.name!r}: {width} registers do not fit in one request "
                f"(at most {limit_for(tag.table)})"
            )
        if not 0 <= tag.address <= ADDRESS_SPACE - width:
            raise ValueError(f"tag {tag.name!r}: address {tag.address} outside 0..65535")
        unit = unit_id if tag.unit_id is None else tag.unit_id
        groups[unit, tag.table].append((tag.address, tag.address + width, tag))

    requests: list[ReadRequest] = []
    for unit, table in sorted(groups, key=lambda key: (key[0], _TABLE_ORDER[key[1]])):
        limit = limit_for(table)
        gap = max_gap * BITS_PER_GAP_REGISTER if is_bit_table(table) else max_gap
        for cluster in _clusters(groups[unit, table], gap):
            requests.extend(_cover(cluster, unit, table, limit))
    return requests


def protocol_minimum(tags: Iterable[ModbusTag], *, unit_id: int = 1) -> int:
    """The fewest requests the protocol's size limits allow for ``tags``, gaps read over freely.

    A lower bound for any plan: :func:`plan_reads` reaches it when ``max_gap`` covers every gap.
    """
    return len(plan_reads(tags, unit_id=unit_id, max_gap=ADDRESS_SPACE))


def narrow(request: ReadRequest, tags: Sequence[PlannedTag]) -> ReadRequest:
    """A request for just ``tags`` (a non-empty subset of ``request``'s), spanning only them.

    Used to split a request the device refused; a subset always fits the limits of its parent.
    """
    if not tags:
        raise ValueError("narrow() needs at least one tag")
    start = min(request.start + planned.offset for planned in tags)
    end = max(request.start + planned.offset + planned.count for planned in tags)
    shift = start - request.start
    moved = tuple(
        PlannedTag(planned.tag, planned.offset - shift, planned.count)
        for planned in sorted(tags, key=lambda planned: planned.offset)
    )
    return ReadRequest(request.unit_id, request.table, start, end - start, moved)


def _clusters(
    spans: list[tuple[int, int, ModbusTag]], max_gap: int
) -> Iterable[list[tuple[int, int, ModbusTag]]]:
    """Split spans (sorted here) where the unused run between them exceeds ``max_gap``."""
    spans.sort(key=lambda span: (span[0], span[1]))
    cluster: list[tuple[int, int, ModbusTag]] = []
    covered_to = 0
    for span in spans:
        if cluster and span[0] - covered_to > max_gap:
            yield cluster
            cluster = []
        if not cluster:
            covered_to = span[1]
        cluster.append(span)
        covered_to = max(covered_to, span[1])
    if cluster:
        yield cluster


def _cover(
    cluster: list[tuple[int, int, ModbusTag]], unit: int, table: ModbusTable, limit: int
) -> list[ReadRequest]:
    """Cover one cluster (sorted by start) with the fewest windows of at most ``limit``."""
    out: list[ReadRequest] = []
    remaining = cluster
    while remaining:
        start = remaining[0][0]
        window_end = start + limit
        taken: list[tuple[int, int, ModbusTag]] = []
        left: list[tuple[int, int, ModbusTag]] = []
        for span in remaining:
            (taken if span[1] <= window_end else left).append(span)
        end = max(span[1] for span in taken)
        planned = tuple(PlannedTag(tag, lo - start, hi - lo) for lo, hi, tag in taken)
        out.append(ReadRequest(unit, table, start, end - start, planned))
        remaining = left
    return out
