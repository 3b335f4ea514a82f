"""Helpers shared by the type-fidelity, time-zone and schema-evolution tests (issue 4).

A sync runs in-process through :class:`TableSyncer` with fresh engines (disposed afterwards), and
source and target are compared by SQL on both servers: each column through an expression whose
text is exact for its type (``HEX()`` for bytes and geometry, ``CAST(x AS DOUBLE)`` for FLOAT, the
epoch for TIMESTAMP, so the servers' different time zones do not matter).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dlt_db_sync.config import settings as config
from dlt_db_sync.config.tables import parse_tables
from dlt_db_sync.database.engines import create_engines
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.syncer import TableResult, TableSyncer
from mariadb_server import MariaDBServer
from table_checks import BYTE_STRING_TYPES

if TYPE_CHECKING:
    from conftest import SyncEnv

COLUMNS_SQL = (
    "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, CHARACTER_SET_NAME, COLLATION_NAME "
    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)


@dataclass
class SyncRun:
    """The results of one cycle and the status object it reported to."""

    results: list[TableResult]
    status: SyncStatus

    def result(self, table: str) -> TableResult:
        return next(r for r in self.results if r.table == table)


@contextmanager
def kept_syncer(
    env: SyncEnv, tables: Sequence[dict[str, Any]], target: MariaDBServer | None = None, **overrides: Any
) -> Iterator[tuple[TableSyncer, tuple[Any, ...], SyncStatus]]:
    """A prepared TableSyncer for ``tables`` (kept across cycles: its in-memory state matters), disposed afterwards.

    ``target`` replaces the fixture's target server (same database name, created when missing).
    """
    environ = env.environ(**overrides)
    if target is not None:
        target.execute(f"CREATE DATABASE IF NOT EXISTS `{env.target_db}` CHARACTER SET utf8mb4")
        environ.update({"TARGET_DB_HOST": target.host, "TARGET_DB_PORT": str(target.port)})
    settings = config.load_settings(environ, dotenv_path=None)
    specs = parse_tables(list(tables), env.write_tables(list(tables)))
    engines = create_engines(settings)
    status = SyncStatus()
    status.register_tables(specs)
    try:
        syncer = TableSyncer(engines, settings, status, threading.Event())
        syncer.prepare()
        yield syncer, specs, status
    finally:
        engines.dispose()


def run_sync(
    env: SyncEnv, tables: Sequence[dict[str, Any]], target: MariaDBServer | None = None, **overrides: Any
) -> SyncRun:
    """One cycle over ``tables`` (tables.json entries) with the environment of ``env`` plus ``overrides``.

    ``target`` replaces the fixture's target server (same database name, created when missing).
    """
    with kept_syncer(env, tables, target, **overrides) as (syncer, specs, status):
        return SyncRun(syncer.run_cycle(specs), status)


def column_types(server: MariaDBServer, database: str, table: str) -> list[tuple[Any, ...]]:
    """(name, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, charset, collation) in ordinal order."""
    return server.query(COLUMNS_SQL, database, (table,))


def exact_expression(name: str, data_type: str) -> str:
    """A SQL expression whose text is exact for a column of ``data_type``, whatever the session time zone."""
    col = f"`{name}`"
    if data_type in BYTE_STRING_TYPES:
        # Long values by digest: HEX() of a value over half of max_allowed_packet is NULL (blind).
        return f"IF(LENGTH({col}) > 65536, CONCAT('sha1:', SHA1({col})), HEX({col}))"
    if data_type == "float":
        return f"CAST({col} AS DOUBLE)"
    if data_type == "bit":
        return f"CAST({col} AS UNSIGNED)"
    if data_type == "timestamp":
        return f"UNIX_TIMESTAMP({col})"
    if data_type in {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}:
        # Byte-exact in the column's own character set, plus the enum/set index.
        extra = f", '#', {col} + 0" if data_type in {"enum", "set"} else ""
        return f"CONCAT(IF(LENGTH({col}) > 65536, CONCAT('sha1:', SHA1({col})), HEX({col})){extra})"
    return f"CAST({col} AS CHAR)"


def exact_select(server: MariaDBServer, database: str, table: str, columns: Sequence[str] | None = None) -> str:
    """``SELECT <exact expressions> FROM table`` for ``columns`` (default: all, in ordinal order)."""
    types = dict(
        server.query(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            database,
            (table,),
        )
    )
    names = list(columns) if columns is not None else list(types)
    return "SELECT " + ", ".join(f"{exact_expression(n, types[n])} AS `{n}`" for n in names) + f" FROM `{table}`"


def exact_rows(
    server: MariaDBServer, database: str, table: str, order_by: str, columns: Sequence[str] | None = None
) -> list[tuple[Any, ...]]:
    """Every row of ``table`` as exact text, ordered by ``order_by``."""
    return server.query(exact_select(server, database, table, columns) + f" ORDER BY {order_by}", database)


def checksum(server: MariaDBServer, database: str, table: str, columns: Sequence[str] | None = None) -> tuple[Any, ...]:
    """(row count, order-independent checksum of every column's exact text)."""
    inner = exact_select(server, database, table, columns)
    names = columns or [r[0] for r in column_types(server, database, table)]
    concat = ", ".join(f"IFNULL(`{n}`, '<null>')" for n in names)
    row = server.query(
        f"SELECT COUNT(*), BIT_XOR(CRC32(CONCAT_WS(0x1f, {concat}))), SUM(CRC32(CONCAT_WS(0x1f, {concat}))) FROM ({inner}) AS x",
        database,
    )[0]
    return tuple(row)


def assert_same_table(
    env: SyncEnv, table: str, order_by: str, target: MariaDBServer | None = None, columns: Sequence[str] | None = None
) -> None:
    """Source and target rows are identical, value by value and by checksum."""
    tgt = target or env.target
    source_rows = exact_rows(env.source, env.source_db, table, order_by, columns)
    target_rows = exact_rows(tgt, env.target_db, table, order_by, columns)
    assert len(source_rows) == len(target_rows)
    names = list(columns) if columns is not None else [r[0] for r in column_types(env.source, env.source_db, table)]
    for src_row, tgt_row in zip(source_rows, target_rows, strict=True):
        for name, s, t in zip(names, src_row, tgt_row, strict=True):
            assert s == t, f"{table}.{name}: source {s!r} != target {t!r} (row {src_row[:2]!r})"
    assert checksum(env.source, env.source_db, table, columns) == checksum(tgt, env.target_db, table, columns)
