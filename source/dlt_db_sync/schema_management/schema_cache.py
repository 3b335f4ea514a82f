"""Lets an idle cycle skip the per-table schema checks when no table definition changed.

The full check of a table costs about seven round trips (existence, ``SHOW CREATE TABLE`` and
columns on the source, columns on the target, the merge key on the source, the modifier index on
the target). Instead, one batched ``information_schema`` query per side and cycle yields a
signature of every configured table: count and a 64-bit XOR of an MD5 per column (position,
name, exact type, nullability, character set, collation, default, extra) and per index part
(name, uniqueness, position, column, prefix). A table whose signatures on both sides equal the
ones recorded at its last full check reuses that check and its source definition.

Any DDL on either side changes a signature, so the next cycle checks that table in full (adds
a new source column to the target before rows using it load, re-reads the whole table once).
The signatures are taken at the start of the cycle, so a column added while the cycle runs is
picked up by the next cycle, as it would be if it were added just after the check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from dlt_db_sync.schema_management.model import TableDefinition

logger = logging.getLogger("dlt_sync.schema_cache")

Signature = tuple[int, int, int, int]  # column count, column hash, index part count, index hash

_ROW_HASH = "CAST(CONV(LEFT(MD5(CONCAT_WS(0x1f, {parts})), 16), 16, 10) AS UNSIGNED)"
_COLUMN_PARTS = (
    "ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, IFNULL(CHARACTER_SET_NAME, 0x00), "
    "IFNULL(COLLATION_NAME, 0x00), IFNULL(COLUMN_DEFAULT, 0x00), EXTRA, IFNULL(GENERATION_EXPRESSION, 0x00)"
)
_INDEX_PARTS = "INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, IFNULL(SUB_PART, 0x00)"


def signature_sql(count: int) -> str:
    """The batched signature query for ``count`` table names (``%s`` placeholders, twice)."""
    names = ", ".join(["%s"] * count)
    return (
        f"SELECT 'c', TABLE_NAME, COUNT(*), BIT_XOR({_ROW_HASH.format(parts=_COLUMN_PARTS)}) "
        f"FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({names}) "
        "GROUP BY TABLE_NAME "
        "UNION ALL "
        f"SELECT 'i', TABLE_NAME, COUNT(*), BIT_XOR({_ROW_HASH.format(parts=_INDEX_PARTS)}) "
        f"FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({names}) "
        "GROUP BY TABLE_NAME"
    )


def table_signatures(conn: Connection, tables: Sequence[str]) -> dict[str, Signature]:
    """Signature of each existing table among ``tables`` in the connection's database."""
    if not tables:
        return {}
    parts: dict[str, list[int]] = {}
    for kind, table, count, digest in conn.exec_driver_sql(signature_sql(len(tables)), (*tables, *tables)).fetchall():
        entry = parts.setdefault(str(table), [0, 0, 0, 0])
        offset = 0 if kind == "c" else 2
        entry[offset], entry[offset + 1] = int(count), int(digest or 0)
    return {table: (p[0], p[1], p[2], p[3]) for table, p in parts.items() if p[0]}


@dataclass(frozen=True)
class _Checked:
    source: Signature
    target: Signature
    source_def: TableDefinition


class SchemaCache:
    """Per-table result of the last full schema check, valid while both signatures hold."""

    def __init__(self) -> None:
        self._checked: dict[str, _Checked] = {}
        self._cycle: dict[str, tuple[Signature | None, Signature | None]] | None = None

    def refresh(self, source: Connection, target: Connection, tables: Sequence[str]) -> None:
        """Take this cycle's signatures of ``tables`` on both sides (two queries)."""
        source_sigs = table_signatures(source, tables)
        target_sigs = table_signatures(target, tables)
        self._cycle = {t: (source_sigs.get(t), target_sigs.get(t)) for t in tables}

    def invalidate(self) -> None:
        """No signatures this cycle: every table gets the full check."""
        self._cycle = None

    def lookup(self, table: str) -> TableDefinition | None:
        """The source definition when neither side changed since the last full check, else None."""
        checked = self._checked.get(table)
        current = self._cycle.get(table) if self._cycle is not None else None
        if checked is None or current is None or current != (checked.source, checked.target):
            return None
        return checked.source_def

    def remember(self, table: str, source_def: TableDefinition) -> None:
        """Record a full check that passed, under the signatures taken at the start of this cycle.

        When the check itself changed the target (created, altered, indexed it), the next cycle
        sees a different target signature and checks once more before the cache applies.
        """
        current = self._cycle.get(table) if self._cycle is not None else None
        if current is None or current[0] is None or current[1] is None:
            self._checked.pop(table, None)
            return
        self._checked[table] = _Checked(current[0], current[1], source_def)

    def forget(self, table: str) -> None:
        """Drop the record of ``table`` (its sync failed: check it in full next time)."""
        self._checked.pop(table, None)
