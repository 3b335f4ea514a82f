"""How values travel: exact projections on the source, load expressions on the target, and the
vectorised encoding of Arrow batches into ``LOAD DATA`` input.

Every value leaves the source as MySQL's own text representation (or as raw bytes for binary
types) and is parsed back by the target server into the identical column type. Nothing is
converted through Python or float: DECIMAL, unsigned BIGINT, zero dates, negative TIME and
fractional seconds survive by construction. The few types whose text form is lossy get an exact
detour: FLOAT goes through DOUBLE, BIT through its unsigned integer, TIMESTAMP through its epoch
value (immune to either server's time zone).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dlt_db_sync.database.dialect import double_expression
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.schema_management.model import Column


def extract_expression(col: Column) -> str:
    """SQL expression selecting ``col`` on the source in its exact transport form."""
    name = q(col.name)
    if col.data_type == "bit":
        return f"CAST(CAST({name} AS UNSIGNED) AS CHAR)"
    if col.data_type == "float":
        # FLOAT's text form keeps ~6 digits (16777217 shows as 16777200); DOUBLE's is exact.
        return f"CAST({double_expression(name)} AS CHAR)"
    if col.data_type == "timestamp":
        # The epoch value does not depend on any session or server time zone.
        return f"CAST(UNIX_TIMESTAMP({name}) AS CHAR)"
    if col.is_binary:
        if col.data_type in {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}:
            return name
        return f"CAST({name} AS BINARY)"  # geometry: its internal WKB-with-SRID bytes
    if col.charset is not None:
        return name if col.charset == "utf8mb4" else f"CONVERT({name} USING utf8mb4)"
    return f"CAST({name} AS CHAR)"


def load_expression(col: Column, raw: str) -> str:
    """SQL expression turning the transported bytes ``raw`` back into ``col``'s value."""
    if col.data_type == "bit":
        return f"CAST({raw} AS UNSIGNED)"
    if col.data_type == "timestamp":
        return (
            f"IF({raw} IS NULL, NULL, IF(CAST({raw} AS DECIMAL(20,6)) = 0, '0000-00-00 00:00:00', "
            f"FROM_UNIXTIME(CAST({raw} AS DECIMAL(20,6)))))"
        )
    if col.is_binary:
        return raw
    if col.charset is not None:
        return f"CONVERT({raw} USING utf8mb4)"
    return raw


_EXACT_CASTS = {
    "tinyint": "SIGNED",
    "smallint": "SIGNED",
    "mediumint": "SIGNED",
    "int": "SIGNED",
    "bigint": "SIGNED",
    "year": "UNSIGNED",
    "bit": "UNSIGNED",
    "float": "DOUBLE",
    "double": "DOUBLE",
    "date": "DATE",
}


def comparable_expression(col: Column, raw: str) -> str:
    """``col``'s value from the transported bytes ``raw``, typed like ``col`` so that comparing it
    with the column uses the column's own index and equality (collation included)."""
    if col.charset is not None:  # text, ENUM, SET: the column's character set and collation
        return f"CONVERT({load_expression(col, raw)} USING {col.charset}) COLLATE {col.collation}"
    base = col.data_type
    if base in _EXACT_CASTS:
        cast = _EXACT_CASTS[base]
        if cast == "SIGNED" and "unsigned" in col.column_type:
            cast = "UNSIGNED"
        return f"CAST({raw} AS {cast})"
    if base in {"decimal", "datetime", "time"}:
        # The column type carries precision and scale or fractional digits: decimal(12,2), datetime(6).
        arguments = col.column_type[len(base) :].split()[0] if col.column_type[len(base) :].strip() else ""
        return f"CAST({raw} AS {base.upper()}{arguments})"
    return load_expression(col, raw)


_ENUM_MEMBER = re.compile(r"'((?:[^'\\]|''|\\.)*)'")


def enum_members(col: Column) -> list[str]:
    """The members of an ENUM/SET column as SQL literal bodies (quotes still doubled), in order."""
    body = col.column_type[col.column_type.find("(") + 1 : col.column_type.rfind(")")]
    return _ENUM_MEMBER.findall(body)


def has_enum_error_value(col: Column) -> bool:
    """Whether ``col`` is an ENUM that can hold the invalid value ``''`` (index 0) as an extra value.

    Such a value is exact data, but a strict target refuses to write ``''`` into it, so the loader
    writes it in a separate, statement-scoped non-strict step (see ``sanitization.LoadPlan``).
    """
    return col.data_type == "enum" and "" not in enum_members(col)


def enum_error_value_placeholder(col: Column) -> str:
    """What the ``INSERT`` writes for ``''`` before the fix-up: NULL, or the first member if NOT NULL."""
    if col.nullable:
        return "NULL"
    return f"'{enum_members(col)[0]}'"


def select_list(columns: Sequence[Column]) -> str:
    """The source SELECT list for ``columns``, each aliased to its own name."""
    return ", ".join(f"{extract_expression(c)} AS {q(c.name)}" for c in columns)


_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\x00", b"\\0"))


def _values(array: pa.Array) -> pa.Buffer | None:
    """The bytes of a (large_)binary array's values: the slice of its data buffer they occupy."""
    data = array.buffers()[2]
    if data is None or len(array) == 0:
        return None
    offsets = memoryview(array.buffers()[1]).cast("q" if pa.types.is_large_binary(array.type) else "i")
    start = offsets[array.offset]
    return data.slice(start, offsets[array.offset + len(array)] - start)


def _needs_escaping(array: pa.Array) -> bool:
    """Whether some value holds a byte ``LOAD DATA`` must see escaped (one memchr pass per byte)."""
    values = _values(array)
    if values is None:
        return False
    raw = values.to_pybytes()
    return any(special in raw for special, _ in _ESCAPES)


def _escaped_column(array: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        array = array.cast(pa.large_binary())
    elif not pa.types.is_binary(array.type):
        if not (pa.types.is_string(array.type) or pa.types.is_binary(array.type)):
            array = pc.cast(array, pa.string())
        array = array.cast(pa.binary())
    # Most columns (numbers, dates, plain text) hold none of the four bytes: a scan of the values
    # costs a fraction of the four replace passes, which then run only where needed.
    if _needs_escaping(array):
        for old, new in _ESCAPES:
            array = pc.replace_substring(array, old, new)
    if array.null_count:
        array = pc.fill_null(array, pa.scalar(b"\\N", type=array.type))
    return array


def encode_tsv_buffer(table: pa.Table) -> pa.Buffer:
    """``LOAD DATA`` input for ``table`` as an Arrow buffer: tab-separated, ``\\``-escaped, ``\\N`` for NULL.

    Runs entirely in Arrow kernels (no Python per row): each column is escaped, the last one gets
    the line end, the columns are joined row-wise with tabs in one pass, and the file body is the
    slice of the joined array's data buffer -- written out without a copy into Python bytes.
    """
    if table.num_rows == 0:
        return pa.py_buffer(b"")
    columns = [_escaped_column(table.column(i)) for i in range(table.num_columns)]
    if any(pa.types.is_large_binary(c.type) for c in columns):
        columns = [c.cast(pa.large_binary()) for c in columns]
    row_type = columns[0].type
    last = pc.binary_join_element_wise(columns[-1], pa.scalar(b"\n", type=row_type), pa.scalar(b"", type=row_type))
    lines = (
        pc.binary_join_element_wise(*columns[:-1], last, pa.scalar(b"\t", type=row_type)) if len(columns) > 1 else last
    )
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    values = _values(lines)
    return values if values is not None else pa.py_buffer(b"")


def rows_as_parameters(table: pa.Table) -> list[tuple[object, ...]]:
    """Python tuples for the multi-row INSERT fallback (str/bytes/None only)."""
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(zip(*columns, strict=True))
