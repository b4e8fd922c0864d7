"""Turn Modbus register words and bits into tag values. Pure: no I/O, no protocol library.

A poll reads whole blocks of registers. Rather than parse each value on its own, a
:class:`BlockDecoder` packs the block's words into bytes once (twice when a tag needs the bytes of
each word swapped) and each tag's precompiled :class:`FieldDecoder` unpacks its value from there
with one ``struct.Struct.unpack_from``.

Byte orders (A is the most significant byte of the value; registers are listed in address order):

======  ==============================  ======================================
order   registers of a 32-bit value     how it is read here
======  ==============================  ======================================
ABCD    ``AB CD``  (Modbus default)     big-endian buffer, big-endian format
CDAB    ``CD AB``  (word-swapped)       byte-swapped buffer, little-endian format
BADC    ``BA DC``  (bytes swapped)      byte-swapped buffer, big-endian format
DCBA    ``DC BA``  (little-endian)      big-endian buffer, little-endian format
======  ==============================  ======================================

The same rule covers every width: for 64-bit values CDAB lists the four words from least to most
significant, and for 16-bit values ABCD = CDAB and BADC = DCBA (a byte swap).

Strings are stored one character per byte in ascending register order, so only the byte order
*inside* a register applies to them: ABCD and CDAB put the first character in the high byte,
BADC and DCBA in the low byte. A string ends at its first NUL byte and is UTF-8 (ASCII included).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.config.schema import ByteOrder, DataType, ModbusTable, ModbusTag
from edge_agent.errors import DecodeError
from edge_agent.model import Value

__all__ = [
    "BlockDecoder",
    "FieldDecoder",
    "compile_field",
    "decode_bits",
    "decode_registers",
    "is_bit_table",
    "is_finite",
    "register_count",
]

# struct format character and width in registers of each fixed-size numeric type.
_NUMERIC: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}

# (read from the byte-swapped buffer?, struct byte-order prefix) for each byte order; see the table
# in the module docstring.
_LAYOUT: dict[ByteOrder, tuple[bool, str]] = {
    ByteOrder.ABCD: (False, ">"),
    ByteOrder.CDAB: (True, "<"),
    ByteOrder.BADC: (True, ">"),
    ByteOrder.DCBA: (False, "<"),
}

# Kinds of field, as small ints so that decoding dispatches on a compare, not an isinstance chain.
_KIND_NUMBER = 0
_KIND_BOOL_REGISTER = 1
_KIND_STRING = 2
_KIND_BIT = 3


def is_bit_table(table: ModbusTable) -> bool:
    """Whether ``table`` holds single bits (coils, discrete inputs) rather than 16-bit registers."""
    return table in (ModbusTable.COIL, ModbusTable.DISCRETE)


def register_count(tag: ModbusTag) -> int:
    """How many registers (or, in a bit table, bits) ``tag`` occupies.

    Raises ``ValueError`` for a tag that cannot be read: a non-bool type in a bit table, or a
    string without a positive ``length``.
    """
    if is_bit_table(tag.table):
        if tag.type is not DataType.BOOL:
            raise ValueError(
                f"tag {tag.name!r}: type must be bool in table {tag.table.value}, "
                f"got {tag.type.value}"
            )
        return 1
    if tag.type is DataType.BOOL:
        return 1
    if tag.type is DataType.STRING:
        if tag.length <= 0:
            raise ValueError(f"tag {tag.name!r}: a string needs length >= 1 (registers)")
        return tag.length
    return _NUMERIC[tag.type][1]


def is_finite(value: Value) -> bool:
    """False for a NaN or infinite float; True for everything else."""
    return not isinstance(value, float) or math.isfinite(value)


@dataclass(frozen=True, slots=True)
class FieldDecoder:
    """One tag's precompiled decoder: where its value sits in a block and how to unpack it.

    ``offset`` and ``count`` are in registers (bits for a bit table) from the block's start.
    Build it with :func:`compile_field`.
    """

    name: str
    offset: int
    count: int
    kind: int
    swapped: bool  # read from the byte-swapped buffer
    unpacker: struct.Struct | None  # numeric types only
    scale: float
    value_offset: float
    rescale: bool  # apply scale and offset (False keeps integers as int)

    def decode(
        self, plain: bytes, swapped: bytes | None, bits: Sequence[int] | Sequence[bool]
    ) -> Value:
        """Decode this field from the block's buffers (see :class:`BlockDecoder`).

        Raises :class:`DecodeError` when the bytes are not a valid value (a string that is not
        UTF-8).
        """
        kind = self.kind
        if kind == _KIND_BIT:
            return bool(bits[self.offset])
        buf = swapped if self.swapped else plain
        assert buf is not None  # BlockDecoder builds the swapped buffer when any field needs it
        start = self.offset * 2
        if kind == _KIND_NUMBER:
            assert self.unpacker is not None
            raw = self.unpacker.unpack_from(buf, start)[0]
            if self.rescale:
                return float(raw * self.scale + self.value_offset)
            return raw  # type: ignore[no-any-return]
        if kind == _KIND_BOOL_REGISTER:
            return buf[start] != 0 or buf[start + 1] != 0
        data = buf[start : start + self.count * 2]
        end = data.find(b"\x00")
        if end >= 0:
            data = data[:end]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"tag {self.name!r}: string is not valid UTF-8: {data!r}") from exc


def compile_field(tag: ModbusTag, offset: int = 0) -> FieldDecoder:
    """Precompile the decoder of ``tag``, whose first register (bit) is ``offset`` into its block.

    Raises ``ValueError`` for a tag that cannot be read (see :func:`register_count`).
    """
    count = register_count(tag)
    if offset < 0:
        raise ValueError(f"tag {tag.name!r}: negative offset {offset}")
    if is_bit_table(tag.table):
        return FieldDecoder(tag.name, offset, count, _KIND_BIT, False, None, 1.0, 0.0, False)
    if tag.type is DataType.BOOL:
        return FieldDecoder(
            tag.name, offset, count, _KIND_BOOL_REGISTER, False, None, 1.0, 0.0, False
        )
    if tag.type is DataType.STRING:
        # Only the byte order inside a register applies to strings (module docstring).
        in_word_swap = tag.order in (ByteOrder.BADC, ByteOrder.DCBA)
        return FieldDecoder(
            tag.name, offset, count, _KIND_STRING, in_word_swap, None, 1.0, 0.0, False
        )
    swapped, prefix = _LAYOUT[tag.order]
    fmt, _width = _NUMERIC[tag.type]
    # Without scale and offset an integer stays an int (a counter must not become a float).
    rescale = tag.scale != 1.0 or tag.offset != 0.0
    return FieldDecoder(
        tag.name,
        offset,
        count,
        _KIND_NUMBER,
        swapped,
        struct.Struct(prefix + fmt),
        tag.scale,
        tag.offset,
        rescale,
    )


@dataclass(frozen=True, slots=True)
class _Group:
    """Numeric fields that share a buffer and an endianness, unpacked by one composite Struct."""

    swapped: bool
    unpacker: struct.Struct  # e.g. ">H2xf": the fields in offset order, pad bytes between them
    indices: tuple[int, ...]  # where each unpacked value goes in the result
    # per member: (scale, offset) to apply, or None to keep the raw value; None when no member
    # of the group is scaled (the common case: a plain copy)
    rescale: tuple[tuple[float, float] | None, ...] | None


class BlockDecoder:
    """Decodes every field of one block (one read request) in a few ``struct`` calls.

    ``count`` is the block's size in registers, or in bits when ``bits`` is true. Numeric fields
    are unpacked together: one composite ``Struct`` per (buffer, endianness) pair, at most four
    per block; strings, bools and fields that overlap another are decoded one by one.
    """

    __slots__ = (
        "_bits",
        "_count",
        "_fields",
        "_groups",
        "_need_swapped",
        "_plain",
        "_single",
        "_swap",
    )

    def __init__(self, fields: Sequence[FieldDecoder], count: int, *, bits: bool = False) -> None:
        for field in fields:
            if field.offset + field.count > count:
                raise ValueError(
                    f"tag {field.name!r} ends at {field.offset + field.count}, "
                    f"past the block of {count}"
                )
        self._fields = tuple(fields)
        self._count = count
        self._bits = bits
        self._need_swapped = any(field.swapped for field in fields)
        self._plain = struct.Struct(f">{count}H")
        self._swap = struct.Struct(f"<{count}H")
        by_layout: dict[tuple[bool, str], list[int]] = {}
        single: list[int] = []
        for i, field in enumerate(self._fields):
            if field.kind == _KIND_NUMBER and field.unpacker is not None:
                by_layout.setdefault((field.swapped, field.unpacker.format[0]), []).append(i)
            else:
                single.append(i)
        groups: list[_Group] = []
        for (swapped, prefix), members in by_layout.items():
            members.sort(key=lambda i: self._fields[i].offset)
            fmt, indices, position = [prefix], [], 0
            for i in members:
                field = self._fields[i]
                assert field.unpacker is not None
                start = field.offset * 2
                if start < position:  # overlaps the previous field: a struct cannot go back
                    single.append(i)
                    continue
                if start > position:
                    fmt.append(f"{start - position}x")
                fmt.append(field.unpacker.format[1:])
                indices.append(i)
                position = start + field.unpacker.size
            rescale = tuple(
                (self._fields[i].scale, self._fields[i].value_offset)
                if self._fields[i].rescale
                else None
                for i in indices
            )
            groups.append(
                _Group(
                    swapped,
                    struct.Struct("".join(fmt)),
                    tuple(indices),
                    rescale if any(rescale) else None,
                )
            )
        self._groups = tuple(groups)
        self._single = tuple(sorted(single))

    @property
    def fields(self) -> tuple[FieldDecoder, ...]:
        return self._fields

    @property
    def singles(self) -> tuple[int, ...]:
        """Fields decoded one by one (strings, overlapping fields): the only ones whose entry in
        :meth:`decode`'s result can be a :class:`DecodeError`."""
        return self._single

    def decode(self, data: Sequence[int] | Sequence[bool]) -> list[Value | DecodeError]:
        """Decode a block: the registers (16-bit words) or bits one request returned.

        Returns one entry per field, in field order: the value, or the :class:`DecodeError` that
        field alone raised. NaN and infinite floats are returned as they are. A bit block may carry
        up to 7 bits of padding (responses come in whole bytes). Raises :class:`DecodeError` when
        the block has the wrong length or a word outside 0..65535.
        """
        if self._bits:
            if not self._count <= len(data) < self._count + 8:
                raise DecodeError(f"expected {self._count} bits, got {len(data)}")
            return [bool(data[field.offset]) for field in self._fields]
        if len(data) != self._count:
            raise DecodeError(f"expected {self._count} registers, got {len(data)}")
        try:
            plain = self._plain.pack(*data)
            swapped = self._swap.pack(*data) if self._need_swapped else None
        except struct.error as exc:
            raise DecodeError(f"register value out of range 0..65535: {exc}") from exc
        out: list[Value | DecodeError] = [None] * len(self._fields)
        for group in self._groups:
            buf = swapped if group.swapped else plain
            assert buf is not None
            values = group.unpacker.unpack_from(buf)
            if group.rescale is None:
                for i, value in zip(group.indices, values, strict=True):
                    out[i] = value
            else:
                for i, value, rescale in zip(group.indices, values, group.rescale, strict=True):
                    out[i] = value if rescale is None else float(value * rescale[0] + rescale[1])
        fields = self._fields
        for i in self._single:
            try:
                out[i] = fields[i].decode(plain, swapped, ())
            except DecodeError as exc:
                out[i] = exc
        return out


def decode_registers(tag: ModbusTag, words: Sequence[int]) -> Value:
    """Decode one tag from exactly its own registers (``register_count(tag)`` words).

    Convenient for one-off values and tests; a poll uses :class:`BlockDecoder`. Raises
    :class:`DecodeError` on a wrong length or invalid contents.
    """
    field = compile_field(tag)
    result = BlockDecoder([field], field.count, bits=is_bit_table(tag.table)).decode(words)[0]
    if isinstance(result, DecodeError):
        raise result
    return result


def decode_bits(tag: ModbusTag, bits: Sequence[bool]) -> Value:
    """Decode a bool tag of a coil or discrete-input table from its one bit."""
    if not is_bit_table(tag.table):
        raise ValueError(f"tag {tag.name!r} is in table {tag.table.value}, not a bit table")
    if len(bits) != 1:
        raise DecodeError(f"tag {tag.name!r}: expected 1 bit, got {len(bits)}")
    return bool(bits[0])
