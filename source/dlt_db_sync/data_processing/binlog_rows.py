"""Row events of the binlog decoded into the exact transport values the loader takes.

python-mysql-replication parses the stream and the table-map metadata, but its own value
decoding loses data the cursor path keeps: zero dates and invalid DATETIMEs become ``None``,
negative fractional TIME is mis-signed, binary strings go through a text decode, ``BINARY(n)``
arrives without its trailing zero bytes, SET and ENUM need metadata, MySQL JSON becomes Python
objects. So only the table map is taken from it; the row images are decoded here, straight from
the event's bytes, with the column layout of the table map (physical format) and the column's
own definition (character set, signedness, ENUM/SET members; from the event's full metadata
when the source writes it, else from the source's current definition).

Every value comes out in the form :mod:`data_processing.codec` transports (see its docstring):
MySQL's own text (DECIMAL digits, ``0000-00-00`` dates, ``-838:59:59.000000``), raw bytes for
binary columns and geometry (SRID + WKB), utf8mb4 for character columns, the unsigned integer
for BIT and the epoch value for TIMESTAMP -- the same bytes the cursor path would read.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlt_db_sync.data_processing.codec import enum_members
from dlt_db_sync.error_handling.errors import DataError
from dlt_db_sync.schema_management.model import Column, TableDefinition

# Binlog column type codes (MySQL's enum_field_types), as the table map event lists them.
TINY, SHORT, LONG, FLOAT, DOUBLE, TIMESTAMP, LONGLONG, INT24 = 1, 2, 3, 4, 5, 7, 8, 9
DATE, TIME, DATETIME, YEAR, VARCHAR, BIT = 10, 11, 12, 13, 15, 16
TIMESTAMP2, DATETIME2, TIME2 = 17, 18, 19
JSON, NEWDECIMAL, ENUM, SET, BLOB, VAR_STRING, STRING, GEOMETRY = 245, 246, 247, 248, 252, 253, 254, 255
TINY_BLOB, MEDIUM_BLOB, LONG_BLOB = 249, 250, 251

_INTEGER_BYTES = {TINY: 1, SHORT: 2, INT24: 3, LONG: 4, LONGLONG: 8}
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_FSP_BYTES = (0, 1, 1, 2, 2, 3, 3)
_FSP_SCALE = (1, 10000, 10000, 100, 100, 1, 1)  # stored fraction unit -> microseconds
_UTF8_CHARSETS = frozenset({"utf8mb4", "utf8mb3", "utf8", "ascii"})
# MySQL's latin1 is cp1252 with the five bytes cp1252 leaves undefined mapped to U+0081.. (like ISO 8859-1).
_LATIN1_TABLE = {b: chr(b) for b in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}


def _latin1_text(data: bytes) -> str:
    return "".join(_LATIN1_TABLE.get(b) or bytes([b]).decode("cp1252") for b in data)


def to_utf8mb4(data: bytes, charset: str) -> bytes:
    """The utf8mb4 bytes of ``data`` stored in ``charset`` (what ``CONVERT(x USING utf8mb4)`` reads)."""
    if charset in _UTF8_CHARSETS:
        return data
    if charset == "latin1":
        try:
            return data.decode("cp1252").encode("utf-8")
        except UnicodeDecodeError:
            return _latin1_text(data).encode("utf-8")
    from pymysql.charset import charset_by_name

    known = charset_by_name(charset)
    encoding = known.encoding if known is not None else charset
    try:
        return data.decode(encoding).encode("utf-8")
    except (LookupError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot convert a {charset} value from the binlog to utf8mb4: {exc}") from exc


def _sql_literal_body(text: str) -> str:
    """An ENUM/SET member as ``COLUMN_TYPE`` prints it (quotes doubled, backslashes escaped) -> its value."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'" and text[i + 1 : i + 2] == "'":
            out.append("'")
            i += 2
            continue
        if ch == "\\" and i + 1 < len(text):
            out.append({"0": "\0", "n": "\n", "t": "\t", "r": "\r", "Z": "\x1a"}.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


Reader = Callable[[bytes, int], tuple[bytes, int]]


@dataclass(frozen=True)
class ColumnLayout:
    """How one column of a row image is stored and what its value means."""

    name: str
    type: int
    meta: dict[str, Any]  # the table map's per-type metadata (lengths, precision, fsp, bits)
    unsigned: bool
    charset: str | None  # character columns: the MySQL character set; None: binary or not text
    members: tuple[str, ...] = ()  # ENUM/SET members in definition order
    binary_length: int | None = None  # BINARY(n): the binlog strips trailing zero bytes; padded back


@dataclass(frozen=True)
class TableLayout:
    """The columns of one table map event, with the target columns they feed."""

    schema: str
    table: str
    columns: tuple[ColumnLayout, ...]
    # (index in the row image, target column) for every loaded column the image carries.
    loaded: tuple[tuple[int, Column], ...]
    key_indexes: tuple[int, ...]  # image indexes of the merge key columns, in key order
    # One value reader per column, chosen once per table map (the hot loop makes no type dispatch).
    readers: tuple[Reader, ...] = field(default=(), compare=False)

    @property
    def loaded_columns(self) -> list[Column]:
        return [col for _, col in self.loaded]


def _charset_of_collation(collation: str | None) -> str | None:
    if not collation:
        return None
    if collation == "binary":
        return None
    return collation.split("_", 1)[0]


def build_layout(table_map: Any, definition: TableDefinition, key: Sequence[str]) -> TableLayout:
    """The decoding layout of ``table_map`` (python-mysql-replication's Table) for ``definition``.

    With ``binlog_row_metadata=FULL`` the event names its columns and carries their character
    sets, signedness and ENUM/SET members, so an event written before an ALTER TABLE decodes by
    its own definition; without it the columns are matched by position to the current definition.

    Raises:
        DataError: the event's columns cannot be matched to the table (a definition changed
            without full metadata, or a key column is missing from the image).
    """
    columns = list(table_map.columns)
    named = bool(getattr(table_map, "column_name_flag", False))
    if not named and len(columns) != len(definition.columns):
        raise DataError(
            f"table {definition.name!r}: a binlog row event has {len(columns)} columns and the source table "
            f"{len(definition.columns)}; set binlog_row_metadata=FULL on the source so events name their columns"
        )
    layouts: list[ColumnLayout] = []
    for index, col in enumerate(columns):
        name = col.name if named and col.name else definition.columns[index].name
        own = definition.column(name)
        charset: str | None
        if own is not None and own.charset is not None:
            charset = own.charset
        elif own is not None:
            charset = None
        else:
            charset = _charset_of_collation(getattr(col, "collation_name", None))
        members: tuple[str, ...] = ()
        if col.type in (ENUM, SET):
            values = col.enum_values[1:] if col.type == ENUM and col.enum_values else col.set_values
            if values and named:
                members = tuple(v if isinstance(v, str) else bytes(v).decode("utf-8") for v in values)
            elif own is not None:
                members = tuple(_sql_literal_body(m) for m in enum_members(own))
        unsigned = bool(col.unsigned) if named else bool(own is not None and "unsigned" in own.column_type)
        binary_length = None
        if col.type == STRING and charset is None and own is not None and own.data_type == "binary":
            binary_length = int(col.max_length)
        layouts.append(ColumnLayout(name, int(col.type), dict(col.data), unsigned, charset, members, binary_length))
    by_name = {c.name.lower(): i for i, c in enumerate(layouts)}
    loaded = tuple((by_name[c.name.lower()], c) for c in definition.loaded_columns if c.name.lower() in by_name)
    missing = [k for k in key if k.lower() not in by_name]
    if missing:
        raise DataError(f"table {definition.name!r}: binlog row events lack the key column(s) {missing}")
    return TableLayout(
        table_map.schema,
        table_map.table,
        tuple(layouts),
        loaded,
        tuple(by_name[k.lower()] for k in key),
        tuple(reader_for(c) for c in layouts),
    )


def reader_for(col: ColumnLayout) -> Reader:
    """The value reader of ``col``: a specialised one for the common types, else the general decoder."""
    kind = col.type
    if kind in _INTEGER_BYTES:
        size = _INTEGER_BYTES[kind]
        signed = not col.unsigned

        def integer(data: bytes, pos: int) -> tuple[bytes, int]:
            return str(int.from_bytes(data[pos : pos + size], "little", signed=signed)).encode(), size

        return integer
    if kind in (VARCHAR, VAR_STRING, STRING) and col.binary_length is None:
        width = 2 if col.meta.get("max_length", 0) > 255 else 1
        charset = col.charset
        plain = charset is None or charset in _UTF8_CHARSETS

        def string(data: bytes, pos: int) -> tuple[bytes, int]:
            length = int.from_bytes(data[pos : pos + width], "little")
            value = data[pos + width : pos + width + length]
            return (value if plain else to_utf8mb4(value, charset or "")), width + length

        return string
    if kind == NEWDECIMAL:
        precision, scale = int(col.meta["precision"]), int(col.meta["decimals"])
        size = _decimal_size(precision, scale)

        def decimal(data: bytes, pos: int) -> tuple[bytes, int]:
            return _decimal_text(data[pos : pos + size], precision, scale).encode(), size

        return decimal
    if kind in (BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, GEOMETRY):
        width = int(col.meta["length_size"])
        charset = col.charset
        plain = charset is None or charset in _UTF8_CHARSETS

        def blob(data: bytes, pos: int) -> tuple[bytes, int]:
            length = int.from_bytes(data[pos : pos + width], "little")
            value = data[pos + width : pos + width + length]
            return (value if plain else to_utf8mb4(value, charset or "")), width + length

        return blob
    if kind == DATETIME2:
        fsp = int(col.meta.get("fsp") or 0)
        frac_bytes, scale = _FSP_BYTES[fsp], _FSP_SCALE[fsp]

        def datetime2(data: bytes, pos: int) -> tuple[bytes, int]:
            value = int.from_bytes(data[pos : pos + 5], "big") - 0x8000000000
            ymd, hms = value >> 17, value & 0x1FFFF
            ym = ymd >> 5
            text = f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 31:02d} {hms >> 12:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}"
            if frac_bytes:
                micro = int.from_bytes(data[pos + 5 : pos + 5 + frac_bytes], "big") * scale
                text += f".{micro:06d}"[: fsp + 1]
            return text.encode(), 5 + frac_bytes

        return datetime2
    if kind == ENUM:
        size = int(col.meta["size"])
        members = [b""] + [m.encode() for m in col.members]

        def enum(data: bytes, pos: int) -> tuple[bytes, int]:
            index = int.from_bytes(data[pos : pos + size], "little")
            if index >= len(members):
                raise DataError(f"column {col.name!r}: ENUM index {index} beyond its {len(members) - 1} members")
            return members[index], size

        return enum
    return lambda data, pos: _decode_value(col, data, pos)


def _decimal_text(data: bytes, precision: int, scale: int) -> str:
    """MySQL's packed DECIMAL as its exact text (``CAST(x AS CHAR)``)."""
    integral = precision - scale
    intg0, intg0x = divmod(integral, 9)
    frac0, frac0x = divmod(scale, 9)
    raw = bytearray(data)
    negative = not raw[0] & 0x80
    raw[0] ^= 0x80
    if negative:
        raw = bytearray(b ^ 0xFF for b in raw)
    pos = 0
    int_digits = ""
    size = _DIG2BYTES[intg0x]
    if size:
        int_digits += str(int.from_bytes(raw[pos : pos + size], "big"))
        pos += size
    for _ in range(intg0):
        int_digits += f"{int.from_bytes(raw[pos : pos + 4], 'big'):09d}"
        pos += 4
    frac_digits = ""
    for _ in range(frac0):
        frac_digits += f"{int.from_bytes(raw[pos : pos + 4], 'big'):09d}"
        pos += 4
    size = _DIG2BYTES[frac0x]
    if size:
        frac_digits += f"{int.from_bytes(raw[pos : pos + size], 'big'):0{frac0x}d}"
    int_digits = int_digits.lstrip("0") or "0"
    text = int_digits + (f".{frac_digits}" if scale else "")
    if negative and text.strip("0.") != "":
        text = "-" + text
    return text


def _decimal_size(precision: int, scale: int) -> int:
    intg0, intg0x = divmod(precision - scale, 9)
    frac0, frac0x = divmod(scale, 9)
    return intg0 * 4 + _DIG2BYTES[intg0x] + frac0 * 4 + _DIG2BYTES[frac0x]


def _fraction(data: bytes, pos: int, fsp: int) -> tuple[int, int]:
    """(microseconds, bytes read) of a DATETIME2/TIMESTAMP2 fraction."""
    size = _FSP_BYTES[fsp]
    if not size:
        return 0, 0
    return int.from_bytes(data[pos : pos + size], "big") * _FSP_SCALE[fsp], size


def _digits(micro: int, fsp: int) -> str:
    return f".{micro:06d}"[: fsp + 1] if fsp else ""


def _time2_text(data: bytes, pos: int, fsp: int) -> tuple[str, int]:
    """MySQL's packed TIME(fsp) (``my_time_packed_from_binary``) as ``[-]hh:mm:ss[.f]``."""
    if fsp >= 5:
        packed = int.from_bytes(data[pos : pos + 6], "big") - 0x800000000000
        size = 6
    else:
        intpart = int.from_bytes(data[pos : pos + 3], "big") - 0x800000
        size = 3 + _FSP_BYTES[fsp]
        if fsp == 0:
            packed = intpart << 24
        else:
            width = _FSP_BYTES[fsp]
            # Stored as the low bytes of a negative fraction; read unsigned, as MySQL does.
            frac = int.from_bytes(data[pos + 3 : pos + 3 + width], "big")
            if intpart < 0 and frac:
                intpart += 1
                frac -= 1 << (8 * width)
            packed = (intpart << 24) + frac * _FSP_SCALE[fsp]
    sign = "-" if packed < 0 else ""
    packed = abs(packed)
    hms, micro = packed >> 24, packed % (1 << 24)
    hour, minute, second = (hms >> 12) % (1 << 10), (hms >> 6) % (1 << 6), hms % (1 << 6)
    return f"{sign}{hour:02d}:{minute:02d}:{second:02d}{_digits(micro, fsp)}", size


def _length_prefixed(data: bytes, pos: int, width: int) -> tuple[bytes, int]:
    length = int.from_bytes(data[pos : pos + width], "little")
    start = pos + width
    return bytes(data[start : start + length]), width + length


def _decode_value(col: ColumnLayout, data: bytes, pos: int) -> tuple[bytes, int]:
    """(transport bytes, bytes consumed) of one non-NULL value at ``pos``."""
    kind = col.type
    meta = col.meta
    if kind in _INTEGER_BYTES:
        size = _INTEGER_BYTES[kind]
        return str(int.from_bytes(data[pos : pos + size], "little", signed=not col.unsigned)).encode(), size
    if kind in (VARCHAR, VAR_STRING, STRING):
        value, size = _length_prefixed(data, pos, 2 if meta.get("max_length", 0) > 255 else 1)
        if col.binary_length is not None:
            value = value.ljust(col.binary_length, b"\0")
        elif col.charset is not None:
            value = to_utf8mb4(value, col.charset)
        return value, size
    if kind in (BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, GEOMETRY):
        value, size = _length_prefixed(data, pos, int(meta["length_size"]))
        return (to_utf8mb4(value, col.charset) if col.charset is not None else value), size
    if kind == NEWDECIMAL:
        size = _decimal_size(meta["precision"], meta["decimals"])
        return _decimal_text(data[pos : pos + size], meta["precision"], meta["decimals"]).encode(), size
    if kind == DATETIME2:
        fsp = int(meta.get("fsp") or 0)
        packed = int.from_bytes(data[pos : pos + 5], "big") - 0x8000000000
        micro, extra = _fraction(data, pos + 5, fsp)
        ymd, hms = packed >> 17, packed % (1 << 17)
        ym, day = ymd >> 5, ymd % (1 << 5)
        text = (
            f"{ym // 13:04d}-{ym % 13:02d}-{day:02d} "
            f"{hms >> 12:02d}:{(hms >> 6) % 64:02d}:{hms % 64:02d}{_digits(micro, fsp)}"
        )
        return text.encode(), 5 + extra
    if kind == TIMESTAMP2:
        fsp = int(meta.get("fsp") or 0)
        seconds = int.from_bytes(data[pos : pos + 4], "big")
        micro, extra = _fraction(data, pos + 4, fsp)
        return f"{seconds}{_digits(micro, fsp)}".encode(), 4 + extra
    if kind == TIME2:
        text, size = _time2_text(data, pos, int(meta.get("fsp") or 0))
        return text.encode(), size
    if kind == DATE:
        packed = int.from_bytes(data[pos : pos + 3], "little")
        return f"{packed >> 9:04d}-{(packed >> 5) % 16:02d}-{packed % 32:02d}".encode(), 3
    if kind == DATETIME:
        packed = int.from_bytes(data[pos : pos + 8], "little")
        date, time = divmod(packed, 1_000_000)
        text = f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d} {time // 10000:02d}:{time // 100 % 100:02d}:{time % 100:02d}"
        return text.encode(), 8
    if kind == TIMESTAMP:
        return str(int.from_bytes(data[pos : pos + 4], "little")).encode(), 4
    if kind == TIME:
        packed = int.from_bytes(data[pos : pos + 3], "little", signed=True)
        sign, packed = ("-" if packed < 0 else ""), abs(packed)
        return f"{sign}{packed // 10000:02d}:{packed // 100 % 100:02d}:{packed % 100:02d}".encode(), 3
    if kind == YEAR:
        year = data[pos]
        return (b"0000" if year == 0 else str(1900 + year).encode()), 1
    if kind == FLOAT:
        return repr(struct.unpack_from("<f", data, pos)[0]).encode(), 4
    if kind == DOUBLE:
        return repr(struct.unpack_from("<d", data, pos)[0]).encode(), 8
    if kind == BIT:
        size = (int(meta["bits"]) + 7) // 8
        return str(int.from_bytes(data[pos : pos + size], "big")).encode(), size
    if kind == ENUM:
        size = int(meta["size"])
        index = int.from_bytes(data[pos : pos + size], "little")
        # Index 0 is the invalid value '' a non-strict session can store.
        return (col.members[index - 1].encode() if index else b""), size
    if kind == SET:
        size = int(meta["size"])
        mask = int.from_bytes(data[pos : pos + size], "little")
        return ",".join(m for i, m in enumerate(col.members) if mask >> i & 1).encode(), size
    if kind == JSON:
        value, size = _length_prefixed(data, pos, int(meta["length_size"]))
        return _mysql_json_text(value), size
    raise DataError(f"column {col.name!r}: binlog column type {kind} is not supported")


def _mysql_json_text(data: bytes) -> bytes:
    """MySQL's binary JSON as text (MySQL prints it with ``", "`` and ``": "`` separators)."""
    if not data:
        return b"null"
    from pymysqlreplication.json_binary import parse_json

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, dict):
            return {plain(k): plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(parse_json(data[0], data[1:])), ensure_ascii=False).encode()


def read_image(layout: TableLayout, present: Sequence[int], data: bytes, pos: int) -> tuple[list[bytes | None], int]:
    """One row image at ``pos``: the transport value of every column (None: NULL or absent).

    ``present``: the image indexes of the columns the image carries, in order.
    """
    null_bytes = (len(present) + 7) // 8
    nulls = data[pos : pos + null_bytes]
    pos += null_bytes
    values: list[bytes | None] = [None] * len(layout.columns)
    readers = layout.readers or tuple(reader_for(c) for c in layout.columns)
    for null_index, i in enumerate(present):
        if nulls[null_index >> 3] >> (null_index & 7) & 1:
            continue
        values[i], size = readers[i](data, pos)
        pos += size
    return values, pos


def _present_columns(bitmap: bytes, count: int) -> list[int]:
    """Indexes of the columns an image carries (all of them with binlog_row_image=FULL)."""
    return [i for i in range(count) if bitmap[i >> 3] >> (i & 7) & 1]


@dataclass(frozen=True)
class RowsPayload:
    """The undecoded rows of one rows event: present-column bitmaps and the row bytes."""

    present: bytes
    present_after: bytes | None  # update events: the after image's bitmap
    data: bytes


def take_payload(event: Any) -> RowsPayload:
    """The rows part of a python-mysql-replication rows event, read off its packet (the library's
    own, lossy value decoding never runs)."""
    remaining = event.event_size - event.packet.read_bytes
    data = event.packet.read(remaining) if remaining > 0 else b""
    return RowsPayload(event.columns_present_bitmap, getattr(event, "columns_present_bitmap2", None), data)


def decode_rows(layout: TableLayout, payload: RowsPayload, kind: str) -> list[tuple[list[bytes | None], ...]]:
    """Every row of a rows event: ``(image,)`` for writes and deletes, ``(before, after)`` for updates."""
    rows: list[tuple[list[bytes | None], ...]] = []
    pos = 0
    data = payload.data
    count = len(layout.columns)
    present = _present_columns(payload.present, count)
    after = _present_columns(payload.present_after, count) if payload.present_after is not None else present
    while pos < len(data):
        first, pos = read_image(layout, present, data, pos)
        if kind == "update":
            second, pos = read_image(layout, after, data, pos)
            rows.append((first, second))
        else:
            rows.append((first,))
    return rows
