"""Register and bit decoding: every data type in every byte order, scale/offset, strings, errors."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config.schema import ByteOrder, DataType, ModbusTable, ModbusTag
from edge_agent.errors import DecodeError
from edge_agent.sources.decode import (
    BlockDecoder,
    compile_field,
    decode_bits,
    decode_registers,
    is_finite,
    register_count,
)

ABCD, CDAB, BADC, DCBA = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA


def tag(
    type_: DataType = DataType.UINT16,
    order: ByteOrder = ABCD,
    *,
    address: int = 0,
    table: ModbusTable = ModbusTable.HOLDING,
    **kw: object,
) -> ModbusTag:
    return ModbusTag(
        name=f"t{address}", address=address, type=type_, order=order, table=table, **kw
    )  # type: ignore[arg-type]


def to_registers(big_endian: bytes, order: ByteOrder) -> list[int]:
    """Independent oracle: lay out a value's big-endian bytes (A first) as PLC registers."""
    b = list(big_endian)
    if order is DCBA:
        b.reverse()
    elif order is BADC:
        b = [b[i ^ 1] for i in range(len(b))]
    elif order is CDAB:
        words = [b[i : i + 2] for i in range(0, len(b), 2)]
        b = [x for word in reversed(words) for x in word]
    return [b[i] << 8 | b[i + 1] for i in range(0, len(b), 2)]


# Hand-written layouts of known values: a regression table independent of any encoder.
KNOWN = [
    (DataType.UINT16, ABCD, [0x1234], 0x1234),
    (DataType.UINT16, CDAB, [0x1234], 0x1234),
    (DataType.UINT16, BADC, [0x3412], 0x1234),
    (DataType.UINT16, DCBA, [0x3412], 0x1234),
    (DataType.INT16, ABCD, [0xFFFE], -2),
    (DataType.INT16, DCBA, [0xFEFF], -2),
    (DataType.UINT32, ABCD, [0x1234, 0x5678], 0x12345678),
    (DataType.UINT32, CDAB, [0x5678, 0x1234], 0x12345678),
    (DataType.UINT32, BADC, [0x3412, 0x7856], 0x12345678),
    (DataType.UINT32, DCBA, [0x7856, 0x3412], 0x12345678),
    (DataType.INT32, ABCD, [0xFFFF, 0xFFFE], -2),
    (DataType.INT32, CDAB, [0xFFFE, 0xFFFF], -2),
    (DataType.FLOAT32, ABCD, [0x42F6, 0xE979], struct.unpack(">f", bytes.fromhex("42f6e979"))[0]),
    (DataType.FLOAT32, CDAB, [0xE979, 0x42F6], struct.unpack(">f", bytes.fromhex("42f6e979"))[0]),
    (DataType.FLOAT32, BADC, [0xF642, 0x79E9], struct.unpack(">f", bytes.fromhex("42f6e979"))[0]),
    (DataType.FLOAT32, DCBA, [0x79E9, 0xF642], struct.unpack(">f", bytes.fromhex("42f6e979"))[0]),
    (DataType.UINT64, ABCD, [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    (DataType.UINT64, CDAB, [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    (DataType.UINT64, BADC, [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    (DataType.UINT64, DCBA, [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    (DataType.INT64, ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD], -3),
    (DataType.FLOAT64, ABCD, [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
    (DataType.FLOAT64, CDAB, [0x2D18, 0x5444, 0x21FB, 0x4009], math.pi),
    (DataType.FLOAT64, BADC, [0x0940, 0xFB21, 0x4454, 0x182D], math.pi),
    (DataType.FLOAT64, DCBA, [0x182D, 0x4454, 0xFB21, 0x0940], math.pi),
]


@pytest.mark.parametrize(("type_", "order", "words", "expected"), KNOWN)
def test_known_layouts(
    type_: DataType, order: ByteOrder, words: list[int], expected: float
) -> None:
    value = decode_registers(tag(type_, order), words)
    assert value == expected
    assert type(value) is type(expected)


FORMATS = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}
BOUNDS = {
    "h": (-(2**15), 2**15 - 1),
    "H": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "I": (0, 2**32 - 1),
    "q": (-(2**63), 2**63 - 1),
    "Q": (0, 2**64 - 1),
}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[DataType, ByteOrder, float]:
    type_ = draw(st.sampled_from(list(FORMATS)))
    order = draw(st.sampled_from(list(ByteOrder)))
    fmt = FORMATS[type_]
    if fmt == "f":
        value: float = draw(st.floats(width=32, allow_nan=False))
    elif fmt == "d":
        value = draw(st.floats(allow_nan=False))
    else:
        lo, hi = BOUNDS[fmt]
        value = draw(st.integers(lo, hi))
    return type_, order, value


@given(typed_values())
def test_every_type_and_order_round_trips(case: tuple[DataType, ByteOrder, float]) -> None:
    type_, order, value = case
    words = to_registers(struct.pack(">" + FORMATS[type_], value), order)
    assert len(words) == register_count(tag(type_, order))
    assert decode_registers(tag(type_, order), words) == value


def test_integers_stay_int_without_scale() -> None:
    assert type(decode_registers(tag(DataType.UINT32), [0, 7])) is int


def test_scale_and_offset_apply_to_numbers() -> None:
    assert decode_registers(tag(DataType.INT16, scale=0.1, offset=-5.0), [0xFFF6]) == pytest.approx(
        -6.0
    )
    assert decode_registers(tag(DataType.UINT16, scale=2.0), [21]) == 42.0
    assert decode_registers(tag(DataType.FLOAT32, offset=1.0), [0x3F80, 0]) == 2.0


def test_nan_and_inf_come_back_as_they_are() -> None:
    nan = decode_registers(tag(DataType.FLOAT32), [0x7FC0, 0])
    inf = decode_registers(tag(DataType.FLOAT64), [0x7FF0, 0, 0, 0])
    assert isinstance(nan, float) and math.isnan(nan)
    assert inf == math.inf
    assert not is_finite(nan) and not is_finite(inf)
    assert is_finite(1.5) and is_finite(3) and is_finite(True) and is_finite("x")


def test_bool_from_register_is_nonzero() -> None:
    assert decode_registers(tag(DataType.BOOL), [0]) is False
    assert decode_registers(tag(DataType.BOOL), [0x0100]) is True
    assert decode_registers(tag(DataType.BOOL, DCBA), [1]) is True


@pytest.mark.parametrize("table", [ModbusTable.COIL, ModbusTable.DISCRETE])
def test_bool_from_bits(table: ModbusTable) -> None:
    t = tag(DataType.BOOL, table=table)
    assert decode_bits(t, [True]) is True
    assert decode_bits(t, [False]) is False
    with pytest.raises(DecodeError):
        decode_bits(t, [])


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (ABCD, [0x4142, 0x4344, 0x4500]),
        (CDAB, [0x4142, 0x4344, 0x4500]),
        (BADC, [0x4241, 0x4443, 0x0045]),
        (DCBA, [0x4241, 0x4443, 0x0045]),
    ],
)
def test_strings_stop_at_nul(order: ByteOrder, words: list[int]) -> None:
    assert decode_registers(tag(DataType.STRING, order, length=3), words) == "ABCDE"


def test_string_fills_all_registers_and_utf8() -> None:
    assert decode_registers(tag(DataType.STRING, length=2), [0x4142, 0x4344]) == "ABCD"
    # "é" is C3 A9 in UTF-8
    assert decode_registers(tag(DataType.STRING, length=2), [0xC3A9, 0x2100]) == "é!"
    assert decode_registers(tag(DataType.STRING, length=1), [0]) == ""


def test_invalid_string_raises() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_registers(tag(DataType.STRING, length=1), [0xFF41])


@pytest.mark.parametrize(
    ("type_", "words"),
    [
        (DataType.UINT16, []),
        (DataType.UINT16, [1, 2]),
        (DataType.INT32, [1]),
        (DataType.FLOAT64, [1, 2, 3]),
        (DataType.UINT16, [70000]),
        (DataType.UINT16, [-1]),
    ],
)
def test_wrong_length_or_range_raises(type_: DataType, words: list[int]) -> None:
    with pytest.raises(DecodeError):
        decode_registers(tag(type_), words)


def test_tags_that_cannot_be_read_are_rejected() -> None:
    with pytest.raises(ValueError, match="bool"):
        register_count(tag(DataType.UINT16, table=ModbusTable.COIL))
    with pytest.raises(ValueError, match="length"):
        register_count(tag(DataType.STRING))


def test_block_decodes_mixed_fields_in_one_pass() -> None:
    tags = [
        (tag(DataType.UINT16, address=0), 0),
        (tag(DataType.FLOAT32, CDAB, address=1), 1),
        (tag(DataType.STRING, BADC, address=5, length=2), 5),
        (tag(DataType.INT32, DCBA, address=7), 7),
        (tag(DataType.STRING, address=9, length=1), 9),  # invalid UTF-8: only this field fails
    ]
    words = [7, 0x0000, 0x3FC0, 0xDEAD, 0xBEEF, 0x4B4F, 0x0000, 0xFEFF, 0xFFFF, 0xFF00]
    block = BlockDecoder([compile_field(t, offset) for t, offset in tags], len(words))
    values = block.decode(words)
    assert values[:4] == [7, 1.5, "OK", -2]
    assert isinstance(values[4], DecodeError)
    with pytest.raises(DecodeError, match="expected 10 registers"):
        block.decode(words[:-1])


def test_bit_block_accepts_byte_padding_only() -> None:
    fields = [
        compile_field(tag(DataType.BOOL, address=a, table=ModbusTable.COIL), a) for a in (0, 2, 9)
    ]
    block = BlockDecoder(fields, 10, bits=True)
    bits = [True, False, False, False, False, False, False, False, False, True]
    assert block.decode([*bits, False] * 1) == [True, False, True]
    assert block.decode([*bits, *[False] * 6]) == [True, False, True]
    with pytest.raises(DecodeError):
        block.decode(bits[:9])
    with pytest.raises(DecodeError):
        block.decode([*bits, *[False] * 8])


def test_block_rejects_field_past_its_end() -> None:
    with pytest.raises(ValueError, match="past the block"):
        BlockDecoder([compile_field(tag(DataType.UINT32), 9)], 10)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[list[tuple[ModbusTag, int]], list[int]]:
    count = draw(st.integers(1, 125))
    words = draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    placed: list[tuple[ModbusTag, int]] = []
    for i in range(draw(st.integers(1, 30))):
        type_ = draw(st.sampled_from([t for t in DataType if t is not DataType.STRING]))
        width = register_count(tag(type_))
        if width > count:
            continue
        offset = draw(st.integers(0, count - width))
        scaled = draw(st.booleans())
        t = ModbusTag(
            name=f"f{i}",
            address=offset,
            type=type_,
            order=draw(st.sampled_from(list(ByteOrder))),
            scale=2.0 if scaled else 1.0,
            offset=-1.0 if scaled else 0.0,
        )
        placed.append((t, offset))
    return placed, words


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


@given(blocks())
def test_property_block_decode_equals_field_by_field(
    case: tuple[list[tuple[ModbusTag, int]], list[int]],
) -> None:
    """Composite struct unpacking (overlaps, pads, rescale) agrees with decoding each slice."""
    placed, words = case
    block = BlockDecoder([compile_field(t, offset) for t, offset in placed], len(words))
    got = block.decode(words)
    for (t, offset), value in zip(placed, got, strict=True):
        expected = decode_registers(t, words[offset : offset + register_count(t)])
        assert same(value, expected), (t, value, expected)


def test_overlapping_scaled_fields_are_scaled_once() -> None:
    wide = tag(DataType.UINT32, scale=10.0)
    low = tag(DataType.UINT16, address=1, scale=10.0)
    block = BlockDecoder([compile_field(wide, 0), compile_field(low, 1)], 2)
    assert block.decode([0, 3]) == [30.0, 30.0]
