"""Initial loads with the secondary indexes built once, after the rows are in.

InnoDB maintains every secondary index row by row while a table loads; building the index after
the load sorts the finished table once (what newer myloader versions call optimizing keys). Two
cases load a table that nobody else reads from yet and that is empty:

* the target table was created by this cycle and its first load is a whole-table load: the rows
  go into a load table (``<table>__dlt_load``, a copy of the new table's definition without its
  plain secondary indexes); the indexes are added in one ``ALTER TABLE``, and one atomic
  ``RENAME TABLE`` swaps the loaded table in for the empty one. The target table therefore never
  exists without its indexes: a load interrupted anywhere (a crash, a kill, an error) leaves the
  empty table as created, and the next cycle loads it again from scratch (no bookkeeping needed);
* a full refresh's shadow table: its indexes are dropped before the load and added before the
  swap (a failed refresh drops the shadow anyway).

Only plain ``KEY`` lines of ``SHOW CREATE TABLE`` are deferred, re-added with their own text
(columns, prefixes, order, comments, visibility). The primary key and unique keys stay: the merge
key must hold during the load, and a duplicate in another unique key (possible when a paged
extraction reads across concurrent changes) would otherwise only show after the whole load.
FULLTEXT and SPATIAL indexes stay too (adding the first FULLTEXT index rebuilds the table), as
does an index leading with an ``AUTO_INCREMENT`` column (the server requires one to exist).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import Engine

from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.error_handling.errors import TransientError, describe_error
from dlt_db_sync.schema_management.tables import column_definitions
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.schema_management")

LOAD_TABLE_SUFFIX = "__dlt_load"
DeferMode = Literal["fresh", "shadow", "none"]
# "  KEY `name` (`col`(10),`other`) COMMENT '...'," -> the name and the text after "KEY".
_KEY_LINE = re.compile(r"^\s*KEY\s+(`(?:[^`]|``)+`)\s*(\(.*?)\s*,?\s*$")
_FIRST_COLUMN = re.compile(r"^\(\s*`((?:[^`]|``)+)`")


@dataclass(frozen=True)
class DeferredIndex:
    """One plain secondary index as ``SHOW CREATE TABLE`` prints it."""

    name: str  # quoted
    definition: str  # "(`col`, ...) [USING ...] [COMMENT ...] [IGNORED|INVISIBLE]"

    @property
    def add_clause(self) -> str:
        return f"ADD KEY {self.name} {self.definition}"

    @property
    def drop_clause(self) -> str:
        return f"DROP INDEX {self.name}"


def deferrable_indexes(create_sql: str) -> list[DeferredIndex]:
    """The plain secondary indexes of a ``SHOW CREATE TABLE`` text that may be built after a load."""
    auto_increment = {
        name.lower()
        for name, definition in column_definitions(create_sql).items()
        if "AUTO_INCREMENT" in definition.upper()
    }
    found: list[DeferredIndex] = []
    for line in create_sql.splitlines()[1:]:
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        definition = match.group(2)
        first = _FIRST_COLUMN.match(definition)
        if first is not None and first.group(1).replace("``", "`").lower() in auto_increment:
            continue  # the AUTO_INCREMENT column's only index may not be dropped (error 1075)
        found.append(DeferredIndex(match.group(1), definition))
    return found


def load_table_name(table: str) -> str:
    """The name the first load of ``table`` goes into (64 characters at most)."""
    return f"{table[: 64 - len(LOAD_TABLE_SUFFIX)]}{LOAD_TABLE_SUFFIX}"


def _show_create(engine: Engine, table: str) -> str:
    with engine.connect() as conn:
        row = conn.exec_driver_sql(f"SHOW CREATE TABLE {q(table)}").one()
    return str(row[1])


def _alter(engine: Engine, table: str, clauses: list[str]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {q(table)} " + ", ".join(clauses))


@contextmanager
def deferred_index_load(
    engine: Engine, table: str, *, mode: DeferMode, label: str, leftover: bool = False
) -> Iterator[str]:
    """Yield the table to load into; with ``mode`` other than ``none`` its plain secondary indexes
    are built after the block.

    ``fresh``: ``table`` is an empty target table created by this cycle; the rows go into a load
    table swapped in when complete. ``shadow``: ``table`` is a throwaway shadow that the caller
    drops on failure; its indexes are dropped and re-added in place. ``none``: ``table`` itself.
    ``leftover``: first drop the load table a killed process may have left behind (a load of the
    whole table supersedes it).
    """
    into = load_table_name(table)
    if leftover and mode != "fresh":
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(into)}")
    indexes = deferrable_indexes(_show_create(engine, table)) if mode != "none" else []
    if not indexes:
        yield table
        return
    if mode == "fresh":
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(into)}")  # left by an interrupted run
            conn.exec_driver_sql(f"CREATE TABLE {q(into)} LIKE {q(table)}")
    else:
        into = table
    try:
        # On an empty table this is a metadata change: no rows to touch.
        _alter(engine, into, [index.drop_clause for index in indexes])
        yield into
        started = time.monotonic()
        _alter(engine, into, [index.add_clause for index in indexes])
        logger.info(
            "%s: built %d secondary index(es) after the load in %.2fs: %s",
            label, len(indexes), time.monotonic() - started, ", ".join(index.name for index in indexes),
            extra=log_fields("INDEX_MANAGEMENT", "DEFERRED"),
        )  # fmt: skip
        if mode == "fresh":
            _swap_in(engine, table, into)
    except BaseException:
        if mode == "fresh":
            _drop_load_table(engine, into)
        raise


def _drop_load_table(engine: Engine, name: str) -> None:
    """Remove an unfinished load table; when that fails too (the target is gone), the next
    whole-table load removes it, and the load's own error is the one that propagates."""
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(name)}")
    except Exception as exc:  # noqa: BLE001 - reported; the caller re-raises the load's error
        logger.warning(
            "cannot remove the unfinished load table %s now (%s); the next load of the table removes it",
            name, describe_error(exc), extra=log_fields("INDEX_MANAGEMENT", "DEFERRED"),
        )  # fmt: skip


def _swap_in(engine: Engine, table: str, loaded: str) -> None:
    """Replace the empty ``table`` with ``loaded`` in one atomic ``RENAME TABLE``."""
    retired = f"{table[: 64 - len('__dlt_old')]}__dlt_old"
    with engine.begin() as conn:
        if conn.exec_driver_sql(f"SELECT 1 FROM {q(table)} LIMIT 1").first() is not None:
            # Something else wrote into the new table meanwhile: never replace rows we did not load.
            raise TransientError(
                f"table {table!r} received rows from elsewhere during its initial load; "
                "loading again into the table as it is"
            )
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(retired)}")
        conn.exec_driver_sql(f"RENAME TABLE {q(table)} TO {q(retired)}, {q(loaded)} TO {q(table)}")
        conn.exec_driver_sql(f"DROP TABLE {q(retired)}")
