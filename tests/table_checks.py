"""Exact comparison of a source and a target table by SQL on both servers."""

from __future__ import annotations

from typing import Any

from mariadb_server import MariaDBServer

LONG_TEXT_TYPES = {"tinytext", "text", "mediumtext", "longtext", "json"}
GEOMETRY_TYPES = {
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
}
# Values the client sees as bytes (the test suite's own list, independent of the package's).
BYTE_STRING_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"} | GEOMETRY_TYPES
BINARY_TYPES = BYTE_STRING_TYPES | {"bit"}


def column_types(server: MariaDBServer, db: str, table: str) -> list[tuple[Any, ...]]:
    """(name, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, charset, collation) in ordinal order."""
    return server.query(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, CHARACTER_SET_NAME, COLLATION_NAME "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
        args=(db, table),
    )


def exact_text(name: str, data_type: str) -> str:
    """An SQL expression giving the exact, time-zone-free text form of a column."""
    col = f"`{name}`"
    if data_type in BINARY_TYPES or data_type in LONG_TEXT_TYPES:
        # SHA1 of the value: HEX() of a value over half of max_allowed_packet is NULL (blind).
        return f"CONCAT(LENGTH({col}), ':', SHA1({col}))"
    if data_type == "float":
        return f"CAST({col} AS DOUBLE)"
    if data_type == "timestamp":
        return f"UNIX_TIMESTAMP({col})"
    return f"HEX(CAST({col} AS CHAR))"


def table_fingerprint(server: MariaDBServer, db: str, table: str, columns: list[str] | None = None) -> tuple[Any, ...]:
    """(row count, order-independent checksum over every column, NULLs distinguished)."""
    info = server.query(
        "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s "
        "ORDER BY ORDINAL_POSITION",
        args=(db, table),
    )
    if columns is not None:
        info = [(n, t) for n, t in info if n in columns]
    parts = ", ".join(f"IFNULL({exact_text(n, t)}, '<NULL>')" for n, t in info)
    row = server.query(
        f"SELECT COUNT(*), BIT_XOR(CAST(CONV(LEFT(MD5(CONCAT_WS('#', {parts})), 16), 16, 10) AS UNSIGNED)) FROM `{table}`",
        db,
    )[0]
    return (int(row[0]), int(row[1] or 0))


def assert_identical(source: MariaDBServer, source_db: str, target: MariaDBServer, target_db: str, table: str) -> None:
    """Same columns (exact types) and the same rows, value for value."""
    assert column_types(target, target_db, table) == column_types(source, source_db, table), (
        f"{table}: column definitions differ"
    )
    src = table_fingerprint(source, source_db, table)
    tgt = table_fingerprint(target, target_db, table)
    assert src == tgt, f"{table}: source {src} != target {tgt}"
