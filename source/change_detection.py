"""Cheap questions asked before an incremental load: where does the target stand, and did
anything change in the window since?

Both are answered from the modifier index (``index_management`` makes sure the target has one):
``max(modifier)`` in the target gives the watermark, and a fingerprint of the window on each side
(row count, newest modifier, and a checksum of key + modifier) tells whether the target already
holds exactly the source's rows there. An idle table costs these few index-only queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from database import quote_identifier as q

TEMPORAL_TYPES = frozenset({"date", "datetime", "timestamp"})


def target_watermark(
    target: Connection, table: str, modifier: str, data_type: str, lookback_seconds: float
) -> tuple[str | None, str | None]:
    """(newest modifier, lower bound = newest minus the lookback window) in the target, as text.

    The lookback applies to temporal modifiers only; an integer version is read from its maximum.
    """
    target.rollback()  # a fresh snapshot: see what committed loads wrote
    column = q(modifier)
    if data_type in TEMPORAL_TYPES:
        lower = f"CAST(MAX({column}) - INTERVAL {int(lookback_seconds)} SECOND AS CHAR)"
    else:
        lower = f"CAST(MAX({column}) AS CHAR)"
    row = target.exec_driver_sql(f"SELECT CAST(MAX({column}) AS CHAR), {lower} FROM {q(table)}").fetchone()
    return (row[0], row[1]) if row else (None, None)


def has_rows(conn: Connection, table: str) -> bool:
    """Whether ``table`` holds at least one row."""
    return conn.exec_driver_sql(f"SELECT 1 FROM {q(table)} LIMIT 1").first() is not None


def window_fingerprint(conn: Connection, table: str, key: Sequence[str], modifier: str, lower: str) -> tuple[Any, ...]:
    """(rows, newest modifier, checksum of key + modifier) of the rows with ``modifier >= lower``."""
    column = q(modifier)
    parts = ", ".join([*(q(k) for k in key), column])
    row = conn.exec_driver_sql(
        f"SELECT COUNT(*), CAST(MAX({column}) AS CHAR), BIT_XOR(CRC32(CONCAT_WS(0x1f, {parts}))) "
        f"FROM {q(table)} WHERE {column} >= %s",
        (lower,),
    ).fetchone()
    return tuple(row)
