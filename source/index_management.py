"""Indexes the sync relies on: the merge key and the modifier.

Upserts (``INSERT ... ON DUPLICATE KEY UPDATE``) are only as fast as the unique key they hit, and
the watermark and change-detection queries read ``max(modifier)`` and a window of modifier
values, so the target gets an index on the modifier when it has none. The source is never
written to; a missing source index on the modifier is reported once as advice.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from database import quote_identifier as q
from error_handling import SchemaError

logger = logging.getLogger("dlt_sync.index_management")

MODIFIER_INDEX_PREFIX = "dlt_sync_modifier_"


def index_columns(conn: Connection, table: str) -> dict[str, tuple[bool, list[str]]]:
    """Index name -> (unique, columns in order) of ``table`` in the current database."""
    rows = conn.exec_driver_sql(
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (table,),
    ).fetchall()
    indexes: dict[str, tuple[bool, list[str]]] = {}
    for name, non_unique, column in rows:
        unique, columns = indexes.setdefault(name, (not int(non_unique), []))
        columns.append(column)
    return indexes


def check_merge_key(conn: Connection, table: str, key: tuple[str, ...]) -> None:
    """Require that ``key`` is the primary key or a unique key of the source table.

    Raises:
        SchemaError: with the keys the table does have, so the operator can fix tables.json.
    """
    unique_keys = [cols for unique, cols in index_columns(conn, table).values() if unique]
    if not unique_keys:
        raise SchemaError(
            f"table {table!r} has no primary key or unique key in the source; rows cannot be merged "
            f"(add a primary key to the source table or leave it out of tables.json)"
        )
    wanted = {k.lower() for k in key}
    if not any({c.lower() for c in cols} == wanted for cols in unique_keys):
        shown = "; ".join(", ".join(cols) for cols in unique_keys)
        raise SchemaError(
            f"table {table!r}: configured primary_key ({', '.join(key)}) is not a primary or unique key of the "
            f"source table (its unique keys: {shown})"
        )


def has_leading_index(conn: Connection, table: str, column: str) -> bool:
    """Whether some index of ``table`` starts with ``column``."""
    return any(cols and cols[0].lower() == column.lower() for _, cols in index_columns(conn, table).values())


def ensure_modifier_index(target: Connection, table: str, modifier: str) -> bool:
    """Add an index on the modifier to the target table when none leads with it; True if added."""
    if has_leading_index(target, table, modifier):
        return False
    name = (MODIFIER_INDEX_PREFIX + modifier)[:64]
    target.exec_driver_sql(f"ALTER TABLE {q(table)} ADD INDEX {q(name)} ({q(modifier)})")
    logger.info("INDEX_MANAGEMENT - CREATE - %s: added index %s on the modifier %s", table, name, modifier)
    return True


def advise_source_modifier_index(source: Connection, table: str, modifier: str) -> None:
    """Log once per start when the source scans the whole table to find changed rows."""
    if not has_leading_index(source, table, modifier):
        logger.warning(
            "INDEX_MANAGEMENT - ADVICE - %s: the source has no index on %s; every cycle scans the whole table "
            "(CREATE INDEX ... ON %s (%s) on the source makes incremental cycles cheap)",
            table,
            modifier,
            table,
            modifier,
        )
