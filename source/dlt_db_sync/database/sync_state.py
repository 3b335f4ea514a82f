"""Per-table sync bookkeeping kept in the target database, next to the data it describes.

The watermark itself is always derived from the target's rows (``max(modifier)`` minus the
lookback window). This table only remembers a load that started and did not finish: its lower
bound stays pending until the load completes, so a crash between extraction and load or in the
middle of a load makes the next cycle re-read from that bound. One small row per table, so the
state never grows with the data (unlike dlt's per-row boundary hashes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from dlt_db_sync.database.dialect import Dialect

STATE_TABLE = "_dlt_sync_state"

_CREATE = f"""
CREATE TABLE IF NOT EXISTS `{STATE_TABLE}` (
  `table_name` VARCHAR(64) NOT NULL PRIMARY KEY,
  `pending` TINYINT(1) NOT NULL DEFAULT 0,
  `pending_from` VARCHAR(64) NULL COMMENT 'lower bound of an unfinished load; NULL = whole table',
  `last_success` DATETIME(6) NULL,
  `last_rows` BIGINT NOT NULL DEFAULT 0,
  `last_watermark` VARCHAR(64) NULL,
  `updated_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='dlt-db-sync bookkeeping; safe to drop when the daemon is stopped'
"""


@dataclass(frozen=True)
class TableState:
    """The stored state of one table."""

    pending: bool
    pending_from: str | None
    last_success: datetime | None
    last_watermark: str | None


def ensure_state_table(target: Connection) -> None:
    """Create the bookkeeping table if it does not exist."""
    target.exec_driver_sql(_CREATE)


def read_state(target: Connection, table: str) -> TableState | None:
    """The stored state of ``table``, or None when it was never loaded by this daemon."""
    row = target.exec_driver_sql(
        f"SELECT pending, pending_from, last_success, last_watermark FROM `{STATE_TABLE}` WHERE table_name = %s",
        (table,),
    ).fetchone()
    if row is None:
        return None
    return TableState(bool(row[0]), row[1], row[2], row[3])


def mark_pending(target: Connection, table: str, lower_bound: str | None) -> None:
    """Record that a load reading from ``lower_bound`` (None: whole table) is about to start."""
    sql = Dialect.of(target).upsert_values(
        STATE_TABLE, ["table_name", "pending", "pending_from"], "(%s, 1, %s)", {"pending": "1", "pending_from": None}
    )
    target.exec_driver_sql(sql, (table, lower_bound))


def mark_done(target: Connection, table: str, rows: int, watermark: str | None) -> None:
    """Record a completed load; the pending bound is cleared."""
    sql = Dialect.of(target).upsert_values(
        STATE_TABLE,
        ["table_name", "pending", "pending_from", "last_success", "last_rows", "last_watermark"],
        "(%s, 0, NULL, UTC_TIMESTAMP(6), %s, %s)",
        {"pending": "0", "pending_from": "NULL", "last_success": None, "last_rows": None, "last_watermark": None},
    )
    target.exec_driver_sql(sql, (table, rows, watermark))


# Binlog change capture keeps the stream's position in a row of its own (not a table name: '@'
# never matches the identifier pattern of tables.json); each binlog table's row holds the
# position its snapshot started at, or pending while a snapshot runs.
BINLOG_STREAM_ROW = "@binlog"
BINLOG_SNAPSHOT_PENDING = "binlog snapshot"


def write_position_sql(dialect: Dialect) -> str:
    """The upsert recording ``(row name, rows, position)`` as done; for a DBAPI cursor, so it runs
    in the same target transaction as the rows it describes."""
    return dialect.upsert_values(
        STATE_TABLE,
        ["table_name", "pending", "pending_from", "last_success", "last_rows", "last_watermark"],
        "(%s, 0, NULL, UTC_TIMESTAMP(6), %s, %s)",
        {"pending": "0", "pending_from": "NULL", "last_success": None, "last_rows": None, "last_watermark": None},
    )
