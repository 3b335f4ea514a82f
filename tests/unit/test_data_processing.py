"""Unit tests of the exact transport: LOAD DATA encoding and the per-type SQL expressions."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from dlt_db_sync.data_processing.codec import (
    comparable_expression,
    encode_tsv_buffer,
    enum_error_value_placeholder,
    enum_members,
    extract_expression,
    has_enum_error_value,
    load_expression,
    rows_as_parameters,
    select_list,
)
from dlt_db_sync.schema_management.model import Column


def col(
    name: str, data_type: str, column_type: str | None = None, *, nullable: bool = True, charset: str | None = None
) -> Column:
    return Column(name, data_type, column_type or data_type, nullable, charset, f"{charset}_bin" if charset else None)


def tsv(table: pa.Table) -> bytes:
    """What the loader streams to LOAD DATA for ``table``."""
    data: bytes = encode_tsv_buffer(table).to_pybytes()
    return data


_UNESCAPE = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"0": b"\x00"}


def parse_load_data(data: bytes, columns: int) -> list[tuple[bytes | None, ...]]:
    """What ``LOAD DATA ... FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'`` reads."""
    rows: list[tuple[bytes | None, ...]] = []
    fields: list[bytes | None] = []
    current = bytearray()
    i = 0
    raw_null = False
    while i < len(data):
        byte = data[i : i + 1]
        if byte == b"\\":
            nxt = data[i + 1 : i + 2]
            if nxt == b"N" and not current:
                raw_null = True
            else:
                current += _UNESCAPE.get(nxt, nxt)
            i += 2
            continue
        if byte in (b"\t", b"\n"):
            fields.append(None if raw_null else bytes(current))
            current, raw_null = bytearray(), False
            if byte == b"\n":
                assert len(fields) == columns, fields
                rows.append(tuple(fields))
                fields = []
        else:
            current += byte
        i += 1
    assert not current and not fields, "input must end with a line terminator"
    return rows


NASTY_STRINGS = [
    "",
    "\\N",
    "\\",
    "a\tb",
    "line\nbreak",
    "nul\x00byte",
    "😀𝄞",
    "\\t literal",
    "trailing\\",
    None,
    "\r\n",
]
NASTY_BYTES = [b"", b"\x00", b"\t\n\\", b"\\N", bytes(range(256)), None, b"\xff\xfe"]


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_encode_tsv_round_trips_every_nasty_string(string_type: pa.DataType) -> None:
    values = NASTY_STRINGS
    table = pa.table({"s": pa.array(values, string_type), "b": pa.array(NASTY_BYTES + [b"x"] * 4, pa.binary())})
    rows = parse_load_data(tsv(table), 2)
    assert [r[0] for r in rows] == [None if v is None else v.encode() for v in values]
    assert [r[1] for r in rows] == NASTY_BYTES + [b"x"] * 4


def test_encode_tsv_single_column_and_null_only_rows() -> None:
    table = pa.table({"s": pa.array([None, "", "\\N", None])})
    assert tsv(table) == b"\\N\n\n\\\\N\n\\N\n"
    assert parse_load_data(tsv(table), 1) == [(None,), (b"",), (b"\\N",), (None,)]


def test_encode_tsv_empty_table_is_empty() -> None:
    assert tsv(pa.table({"a": pa.array([], pa.string())})) == b""


def test_encode_tsv_handles_chunked_sliced_and_non_string_columns() -> None:
    chunked = pa.chunked_array([pa.array(["a", "b\t"]), pa.array(["c\n"])])
    table = pa.table(
        {"s": chunked, "n": pa.array([1, None, -3], pa.int64()), "big": pa.array([b"x", b"y", b"z"], pa.large_binary())}
    )
    assert parse_load_data(tsv(table), 3) == [(b"a", b"1", b"x"), (b"b\t", None, b"y"), (b"c\n", b"-3", b"z")]
    sliced = table.slice(1, 2)
    assert parse_load_data(tsv(sliced), 3) == [(b"b\t", None, b"y"), (b"c\n", b"-3", b"z")]


def test_rows_as_parameters_keeps_str_bytes_and_none() -> None:
    table = pa.table({"a": pa.array(["x", None]), "b": pa.array([b"\x00", b""])})
    assert rows_as_parameters(table) == [("x", b"\x00"), (None, b"")]


@pytest.mark.parametrize(
    ("column", "extract", "load"),
    [
        (col("b", "bit", "bit(64)"), "CAST(CAST(`b` AS UNSIGNED) AS CHAR)", "CAST(@r AS UNSIGNED)"),
        (col("f", "float"), "CAST((`f` * 1e0) AS CHAR)", "@r"),
        (col("d", "double"), "CAST(`d` AS CHAR)", "@r"),
        (col("m", "decimal", "decimal(65,30)"), "CAST(`m` AS CHAR)", "@r"),
        (col("u", "bigint", "bigint(20) unsigned"), "CAST(`u` AS CHAR)", "@r"),
        (col("t", "time", "time(6)"), "CAST(`t` AS CHAR)", "@r"),
        (col("dt", "datetime", "datetime(6)"), "CAST(`dt` AS CHAR)", "@r"),
        (col("y", "year", "year(4)"), "CAST(`y` AS CHAR)", "@r"),
        (col("bin", "binary", "binary(16)"), "`bin`", "@r"),
        (col("blob", "longblob"), "`blob`", "@r"),
        (col("g", "geometry"), "CAST(`g` AS BINARY)", "@r"),
        (col("p", "point"), "CAST(`p` AS BINARY)", "@r"),
        (col("s", "varchar", "varchar(10)", charset="utf8mb4"), "`s`", "CONVERT(@r USING utf8mb4)"),
        (col("l", "text", charset="latin1"), "CONVERT(`l` USING utf8mb4)", "CONVERT(@r USING utf8mb4)"),
        (col("e", "enum", "enum('a','b')", charset="utf8mb4"), "`e`", "CONVERT(@r USING utf8mb4)"),
        (col("j", "longtext", charset="utf8mb4"), "`j`", "CONVERT(@r USING utf8mb4)"),
    ],
)
def test_expressions_per_type(column: Column, extract: str, load: str) -> None:
    assert extract_expression(column) == extract
    assert load_expression(column, "@r") == load


def test_timestamp_travels_as_its_epoch_and_keeps_the_zero_value() -> None:
    ts = col("ts", "timestamp", "timestamp(6)")
    assert extract_expression(ts) == "CAST(UNIX_TIMESTAMP(`ts`) AS CHAR)"
    load = load_expression(ts, "c0")
    assert "FROM_UNIXTIME(CAST(c0 AS DECIMAL(20,6)))" in load
    assert "'0000-00-00 00:00:00'" in load and load.startswith("IF(c0 IS NULL, NULL")


def test_decimal_is_never_converted_to_float() -> None:
    for column in (col("m", "decimal", "decimal(65,30)"), col("m", "decimal", "decimal(10,2) unsigned")):
        assert not re.search(r"DOUBLE|FLOAT|REAL", extract_expression(column) + load_expression(column, "r"))


def test_select_list_aliases_each_column_to_itself() -> None:
    columns = [col("a`b", "int"), col("g", "geometry")]
    assert select_list(columns) == "CAST(`a``b` AS CHAR) AS `a``b`, CAST(`g` AS BINARY) AS `g`"


@pytest.mark.parametrize(
    ("column_type", "members"),
    [
        ("enum('a','b')", ["a", "b"]),
        ("enum('','x')", ["", "x"]),
        ("enum('it''s','a\\\\b','X,Y')", ["it''s", "a\\\\b", "X,Y"]),
        ("set('x','y')", ["x", "y"]),
    ],
)
def test_enum_members(column_type: str, members: list[str]) -> None:
    assert enum_members(col("e", column_type.split("(")[0], column_type)) == members


def test_enum_error_value_handling() -> None:
    nullable = col("e", "enum", "enum('A','b')", charset="utf8mb4")
    not_null = col("e", "enum", "enum('it''s','b')", nullable=False, charset="utf8mb4")
    with_empty = col("e", "enum", "enum('','b')", charset="utf8mb4")
    assert has_enum_error_value(nullable) and has_enum_error_value(not_null)
    assert not has_enum_error_value(with_empty)
    assert not has_enum_error_value(col("s", "set", "set('a')", charset="utf8mb4"))
    assert enum_error_value_placeholder(nullable) == "NULL"
    assert enum_error_value_placeholder(not_null) == "'it''s'"


@pytest.mark.parametrize(
    ("column", "expression"),
    [
        (col("n", "int", "int(11)"), "CAST(s.c0 AS SIGNED)"),
        (col("n", "bigint", "bigint(20) unsigned"), "CAST(s.c0 AS UNSIGNED)"),
        (col("d", "decimal", "decimal(12,2) unsigned"), "CAST(s.c0 AS DECIMAL(12,2))"),
        (col("t", "datetime", "datetime(6)"), "CAST(s.c0 AS DATETIME(6))"),
        (col("t", "datetime", "datetime"), "CAST(s.c0 AS DATETIME)"),
        (col("d", "date"), "CAST(s.c0 AS DATE)"),
        (col("b", "varbinary", "varbinary(16)"), "s.c0"),
        (
            Column("e", "varchar", "varchar(9)", False, "latin1", "latin1_general_ci"),
            "CONVERT(CONVERT(s.c0 USING utf8mb4) USING latin1) COLLATE latin1_general_ci",
        ),
    ],
)
def test_comparable_expression_is_typed_like_the_column(column: Column, expression: str) -> None:
    assert comparable_expression(column, "s.c0") == expression
