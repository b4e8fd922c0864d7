"""Read planning: request counts, protocol limits, gap filling, and the coverage property."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.schema import DataType, ModbusTable, ModbusTag
from edge_agent.sources.decode import register_count
from edge_agent.sources.planner import (
    MAX_BITS,
    MAX_REGISTERS,
    ReadRequest,
    limit_for,
    narrow,
    plan_reads,
    protocol_minimum,
)

HOLDING, INPUT, COIL, DISCRETE = (
    ModbusTable.HOLDING,
    ModbusTable.INPUT,
    ModbusTable.COIL,
    ModbusTable.DISCRETE,
)


def reg(address: int, type_: DataType = DataType.UINT16, **kw: object) -> ModbusTag:
    return ModbusTag(
        name=f"r{address}_{kw.get('table', HOLDING)}_{kw.get('unit_id')}",
        address=address,
        type=type_,
        **kw,
    )  # type: ignore[arg-type]


def bit(address: int, table: ModbusTable = COIL, **kw: object) -> ModbusTag:
    return ModbusTag(
        name=f"b{address}_{table}", address=address, type=DataType.BOOL, table=table, **kw
    )  # type: ignore[arg-type]


def check_plan(tags: list[ModbusTag], requests: list[ReadRequest], unit_id: int = 1) -> None:
    """Every tag in exactly one request, wholly inside it, at the right offset; limits kept."""
    seen: dict[int, int] = {}
    for request in requests:
        assert 1 <= request.count <= limit_for(request.table)
        assert request.start >= 0 and request.end <= 65536
        for planned in request.tags:
            t = planned.tag
            assert t.table is request.table
            assert (t.unit_id if t.unit_id is not None else unit_id) == request.unit_id
            assert planned.count == register_count(t)
            assert request.start + planned.offset == t.address
            assert planned.offset >= 0 and planned.offset + planned.count <= request.count
            seen[id(t)] = seen.get(id(t), 0) + 1
    assert sorted(seen) == sorted(id(t) for t in tags)
    assert set(seen.values()) == {1}


def test_contiguous_registers_are_one_request() -> None:
    tags = [reg(a) for a in range(100)]
    requests = plan_reads(tags, unit_id=1, max_gap=0)
    assert [(r.start, r.count) for r in requests] == [(0, 100)]
    check_plan(tags, requests)


def test_small_gaps_are_read_over_large_ones_are_not() -> None:
    tags = [reg(0), reg(10, DataType.UINT32), reg(30), reg(60)]
    # gaps: 1..9 (9 regs), 12..29 (18 regs), 31..59 (29 regs)
    assert [(r.start, r.count) for r in plan_reads(tags, unit_id=1, max_gap=9)] == [
        (0, 12),
        (30, 1),
        (60, 1),
    ]
    assert len(plan_reads(tags, unit_id=1, max_gap=18)) == 2
    assert len(plan_reads(tags, unit_id=1, max_gap=29)) == 1
    assert len(plan_reads(tags, unit_id=1, max_gap=0)) == 4
    assert protocol_minimum(tags) == 1


def test_tables_and_units_never_share_a_request() -> None:
    tags = [
        reg(0),
        reg(1, table=INPUT),
        bit(0),
        bit(1, DISCRETE),
        reg(2, unit_id=2),
        reg(3),
    ]
    requests = plan_reads(tags, unit_id=1, max_gap=16)
    assert [(r.unit_id, r.table, r.start, r.count) for r in requests] == [
        (1, HOLDING, 0, 4),
        (1, INPUT, 1, 1),
        (1, COIL, 0, 1),
        (1, DISCRETE, 1, 1),
        (2, HOLDING, 2, 1),
    ]
    check_plan(tags, requests)


def test_default_unit_id_applies_to_tags_without_one() -> None:
    requests = plan_reads([reg(0), reg(1, unit_id=7)], unit_id=7, max_gap=0)
    assert [(r.unit_id, r.count) for r in requests] == [(7, 2)]


def test_register_limit_boundary() -> None:
    exactly = [reg(a) for a in range(MAX_REGISTERS)]
    assert [(r.start, r.count) for r in plan_reads(exactly, unit_id=1, max_gap=0)] == [(0, 125)]
    one_more = [reg(a) for a in range(MAX_REGISTERS + 1)]
    assert [(r.start, r.count) for r in plan_reads(one_more, unit_id=1, max_gap=0)] == [
        (0, 125),
        (125, 1),
    ]


def test_a_tag_never_straddles_the_limit() -> None:
    # A float32 at 124..125 does not fit after 0..123: it starts the next request whole.
    tags = [*(reg(a) for a in range(124)), reg(124, DataType.FLOAT32)]
    requests = plan_reads(tags, unit_id=1, max_gap=0)
    assert [(r.start, r.count) for r in requests] == [(0, 124), (124, 2)]
    check_plan(tags, requests)


def test_bit_limit_boundary_and_gap_in_bits() -> None:
    exactly = [bit(a) for a in range(MAX_BITS)]
    assert [(r.start, r.count) for r in plan_reads(exactly, unit_id=1, max_gap=0)] == [(0, 2000)]
    one_more = [bit(a) for a in range(MAX_BITS + 1)]
    assert len(plan_reads(one_more, unit_id=1, max_gap=0)) == 2
    # max_gap=1 register is 16 bits for a bit table
    assert len(plan_reads([bit(0), bit(17)], unit_id=1, max_gap=1)) == 1
    assert len(plan_reads([bit(0), bit(18)], unit_id=1, max_gap=1)) == 2


def test_gap_filling_never_passes_the_limit() -> None:
    tags = [reg(0), reg(124), reg(125)]
    requests = plan_reads(tags, unit_id=1, max_gap=200)
    assert [(r.start, r.count) for r in requests] == [(0, 125), (125, 1)]


def test_overlapping_tags_are_each_in_one_request() -> None:
    # A uint32 and a uint16 view of its low word.
    tags = [reg(10, DataType.UINT32), reg(11), reg(200, DataType.UINT64), reg(203)]
    requests = plan_reads(tags, unit_id=1, max_gap=0)
    assert [(r.start, r.count) for r in requests] == [(10, 2), (200, 4)]
    check_plan(tags, requests)


def test_greedy_takes_later_short_tags_before_an_early_wide_one() -> None:
    # A 100-register string at 100 cannot join a request that starts at 0; the register at 101
    # still can (it lies inside the string, which is read by the next request anyway).
    tags = [reg(0), reg(100, DataType.STRING, length=100), reg(101)]
    requests = plan_reads(tags, unit_id=1, max_gap=200)
    assert len(requests) == 2 == protocol_minimum(tags)
    check_plan(tags, requests)


def test_invalid_tags_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        plan_reads([reg(0, DataType.STRING, length=126)], unit_id=1, max_gap=0)
    with pytest.raises(ValueError, match="outside"):
        plan_reads([reg(65535, DataType.UINT32)], unit_id=1, max_gap=0)
    with pytest.raises(ValueError, match="bool"):
        plan_reads([reg(0, table=COIL)], unit_id=1, max_gap=0)
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([reg(0)], unit_id=1, max_gap=-1)


def realistic_map(seed: int, n: int = 1000) -> list[ModbusTag]:
    """A PLC map: blocks of mixed-width tags with small gaps inside, larger gaps between blocks."""
    rnd = random.Random(seed)
    types = [DataType.UINT16, DataType.INT16, DataType.UINT32, DataType.FLOAT32, DataType.FLOAT64]
    tags: list[ModbusTag] = []
    address = 0
    while len(tags) < n:
        for _ in range(rnd.randint(5, 60)):
            type_ = rnd.choice(types)
            tags.append(reg(address, type_))
            address += register_count(tags[-1]) + rnd.choice([0, 0, 0, 1, 2, 4])
        address += rnd.randint(20, 400)
    return tags[:n]


@pytest.mark.parametrize("seed", range(5))
def test_thousand_tag_map_reaches_the_minimum(seed: int) -> None:
    tags = realistic_map(seed)
    minimum = protocol_minimum(tags)
    unlimited = plan_reads(tags, unit_id=1, max_gap=65536)
    assert len(unlimited) == minimum
    check_plan(tags, unlimited)
    # A gap limit can only add requests, and never beyond one per tag.
    limited = plan_reads(tags, unit_id=1, max_gap=16)
    check_plan(tags, limited)
    assert minimum <= len(limited) < len(tags) // 10


def test_thousand_contiguous_registers_take_the_minimum_of_eight() -> None:
    tags = [reg(a) for a in range(1000)]
    assert len(plan_reads(tags, unit_id=1, max_gap=0)) == 8 == protocol_minimum(tags)


def test_narrow_spans_only_the_given_tags() -> None:
    tags = [reg(0), reg(5), reg(9, DataType.UINT32)]
    (request,) = plan_reads(tags, unit_id=1, max_gap=16)
    part = narrow(request, request.tags[1:])
    assert (part.start, part.count) == (5, 6)
    assert [(p.tag.address, p.offset) for p in part.tags] == [(5, 0), (9, 4)]
    with pytest.raises(ValueError):
        narrow(request, [])


@st.composite
def tag_sets(draw: st.DrawFn) -> list[ModbusTag]:
    out: list[ModbusTag] = []
    for i in range(draw(st.integers(1, 80))):
        table = draw(st.sampled_from(list(ModbusTable)))
        unit = draw(st.sampled_from([None, 1, 2]))
        if table in (COIL, DISCRETE):
            address = draw(st.integers(0, 6000))
            out.append(
                ModbusTag(
                    name=f"t{i}", address=address, type=DataType.BOOL, table=table, unit_id=unit
                )
            )
        else:
            type_ = draw(st.sampled_from(list(DataType)))
            length = draw(st.integers(1, 125)) if type_ is DataType.STRING else 0
            address = draw(st.integers(0, 65536 - max(length, 4)))
            out.append(
                ModbusTag(
                    name=f"t{i}",
                    address=address,
                    type=type_,
                    table=table,
                    unit_id=unit,
                    length=length,
                )
            )
    return out


@settings(max_examples=200, deadline=None)
@given(tag_sets(), st.integers(0, 300))
def test_property_every_tag_in_exactly_one_request_within_limits(
    tags: list[ModbusTag], max_gap: int
) -> None:
    requests = plan_reads(tags, unit_id=1, max_gap=max_gap)
    check_plan(tags, requests)
    assert protocol_minimum(tags) <= len(requests) <= len(tags)


def brute_force_minimum(tags: list[ModbusTag]) -> int:
    """Fewest 125-register windows holding every tag whole, by trying every set of windows.

    Some optimal plan starts each window at a tag's address (slide it right until it does).
    """
    from itertools import combinations

    spans = [(t.address, t.address + register_count(t)) for t in tags]
    starts = sorted({lo for lo, _ in spans})
    for k in range(1, len(starts) + 1):
        for chosen in combinations(starts, k):
            if all(any(s <= lo and hi <= s + MAX_REGISTERS for s in chosen) for lo, hi in spans):
                return k
    raise AssertionError("unreachable: one window per tag always works")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 500), st.sampled_from([1, 2, 4, 40, 100])),
        min_size=1,
        max_size=8,
    )
)
def test_property_protocol_minimum_is_optimal(spans: list[tuple[int, int]]) -> None:
    tags = [
        ModbusTag(name=f"s{i}", address=a, type=DataType.STRING, length=n)
        for i, (a, n) in enumerate(spans)
    ]
    assert protocol_minimum(tags) == brute_force_minimum(tags)
