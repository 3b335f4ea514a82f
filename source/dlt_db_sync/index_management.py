"""Indexes the sync relies on: the merge key and the modifier.

Upserts (``INSERT ... ON DUPLICATE KEY UPDATE``) are only as fast as the unique key they hit, and
the watermark and change-detection queries read ``max(modifier)`` and a window of modifier
values, so the target gets an index on the modifier when it has none. The source is never
written to; a missing source index on the modifier is reported once as advice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.error_handling.errors import SchemaError
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.index_management")

MODIFIER_INDEX_PREFIX = "dlt_sync_modifier_"


def index_columns(conn: Connection, table: str) -> dict[str, tuple[bool, list[str]]]:
    """Index name -> (unique, columns in order) of ``table`` in the current database."""
    return {name: (index.unique, [part.column for part in index.parts]) for name, index in indexes(conn, table).items()}


@dataclass(frozen=True)
class IndexPart:
    """One column of an index: its name, key prefix length (None: the whole value), NULL-ability."""

    column: str
    sub_part: int | None
    nullable: bool


@dataclass(frozen=True)
class Index:
    """One index as information_schema.STATISTICS describes it."""

    name: str
    unique: bool
    parts: tuple[IndexPart, ...]

    @property
    def definition(self) -> tuple[tuple[str, int | None], ...]:
        """What makes two unique indexes enforce the same rule: columns (case-folded) and prefixes."""
        return tuple((p.column.lower(), p.sub_part) for p in self.parts)

    def add_clause(self) -> str:
        """``ADD UNIQUE KEY name (col(prefix), ...)`` recreating this unique index."""
        parts = ", ".join(q(p.column) + (f"({p.sub_part})" if p.sub_part else "") for p in self.parts)
        return f"ADD UNIQUE KEY {q(self.name)} ({parts})"


def indexes(conn: Connection, table: str) -> dict[str, Index]:
    """Every index of ``table`` in the current database, by name."""
    rows = conn.exec_driver_sql(
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART, NULLABLE FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (table,),
    ).fetchall()
    found: dict[str, tuple[bool, list[IndexPart]]] = {}
    for name, non_unique, column, sub_part, nullable in rows:
        _unique, parts = found.setdefault(name, (not int(non_unique), []))
        parts.append(IndexPart(column, int(sub_part) if sub_part is not None else None, nullable == "YES"))
    return {name: Index(name, unique, tuple(parts)) for name, (unique, parts) in found.items()}


def merge_key_index(conn: Connection, table: str, key: Sequence[str]) -> Index:
    """The source's primary or unique key whose columns are ``key`` (in any order).

    Raises:
        SchemaError: the table has no unique key, ``key`` is none of them, or it has a NULL-able
            column (rows with NULL there could never be matched: NULL never equals NULL, so every
            cycle would insert them again and comparisons would skip them).
    """
    unique = [index for index in indexes(conn, table).values() if index.unique]
    if not unique:
        raise SchemaError(
            f"table {table!r} has no primary key or unique key in the source; rows cannot be merged "
            f"(add a primary key to the source table or leave it out of tables.json)"
        )
    wanted = {k.lower() for k in key}
    for index in unique:
        if {p.column.lower() for p in index.parts} == wanted:
            nullable = [p.column for p in index.parts if p.nullable]
            if nullable:
                raise SchemaError(
                    f"table {table!r}: configured primary_key ({', '.join(key)}) is the unique key {index.name!r}, "
                    f"whose column(s) {', '.join(nullable)} may be NULL; rows with NULL there cannot be matched "
                    f"between source and target. Use the primary key, or a unique key on NOT NULL columns"
                )
            return index
    shown = "; ".join(", ".join(p.column for p in index.parts) for index in unique)
    raise SchemaError(
        f"table {table!r}: configured primary_key ({', '.join(key)}) is not a primary or unique key of the "
        f"source table (its unique keys: {shown})"
    )


def check_merge_key(conn: Connection, table: str, key: tuple[str, ...]) -> None:
    """Require that ``key`` is the primary key or a unique key on NOT NULL columns of the source table.

    Raises:
        SchemaError: with the keys the table does have, so the operator can fix tables.json.
    """
    merge_key_index(conn, table, key)


def unique_key_changes(source: Connection, target: Connection, table: str) -> tuple[list[str], list[str]]:
    """(target unique indexes to drop, ``ADD UNIQUE KEY`` clauses) that make the target's secondary
    unique keys enforce exactly the source's.

    A unique key the target has and the source no longer has would make an upsert
    (``ON DUPLICATE KEY UPDATE`` fires on any unique key) overwrite a different row; one the source
    gained is added after the cycle's rows loaded (the target may still hold values the load is
    about to change). The primary key and non-unique indexes are left alone: the target may carry
    its own reporting indexes and the modifier index.
    """
    source_unique = {i.definition: i for i in indexes(source, table).values() if i.unique and i.name != "PRIMARY"}
    target_all = indexes(target, table)
    target_unique = {i.definition: i for i in target_all.values() if i.unique and i.name != "PRIMARY"}
    drops = [index.name for definition, index in target_unique.items() if definition not in source_unique]
    adds: list[str] = []
    for definition, index in source_unique.items():
        if definition in target_unique:
            continue
        if index.name in target_all and index.name not in drops:
            drops.append(index.name)  # the name is taken by an index that enforces something else
        adds.append(index.add_clause())
    return drops, adds


def has_leading_index(conn: Connection, table: str, column: str) -> bool:
    """Whether some index of ``table`` starts with ``column``."""
    return any(cols and cols[0].lower() == column.lower() for _, cols in index_columns(conn, table).values())


def ensure_modifier_index(target: Connection, table: str, modifier: str) -> bool:
    """Add an index on the modifier to the target table when none leads with it; True if added."""
    if has_leading_index(target, table, modifier):
        return False
    name = (MODIFIER_INDEX_PREFIX + modifier)[:64]
    target.exec_driver_sql(f"ALTER TABLE {q(table)} ADD INDEX {q(name)} ({q(modifier)})")
    logger.info(
        "%s: added index %s on the modifier %s", table, name, modifier, extra=log_fields("INDEX_MANAGEMENT", "CREATE")
    )
    return True


def advise_source_modifier_index(source: Connection, table: str, modifier: str) -> None:
    """Log once per start when the source scans the whole table to find changed rows."""
    if not has_leading_index(source, table, modifier):
        logger.warning(
            "%s: the source has no index on %s; every cycle scans the whole table "
            "(CREATE INDEX ... ON %s (%s) on the source makes incremental cycles cheap)",
            table,
            modifier,
            table,
            modifier,
            extra=log_fields("INDEX_MANAGEMENT", "ADVICE"),
        )
