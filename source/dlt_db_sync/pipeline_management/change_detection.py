"""Cheap questions asked before an incremental load: where does the target stand, and did
anything change in the window since?

``max(modifier)`` in the target gives the watermark (answered from the modifier index, which
``index_management`` makes sure the target has). A fingerprint of the window on each side --
row count, newest modifier, and the XOR of a hash over every column of each row (the same exact
per-column forms ``--verify`` compares) -- tells whether the target already holds exactly the
source's rows there. Every column counts: a change that keeps the modifier value (two updates
within one second of a whole-second TIMESTAMP, a DATE modifier updated later the same day) must
not look unchanged. The fingerprint reads only the rows of the window, through the modifier index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.verification.chunk_compare import key_condition, qi, row_hash_sql

TEMPORAL_TYPES = frozenset({"date", "datetime", "timestamp"})
KEY_LOOKUP_BATCH = 500
INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})

Fingerprint = tuple[Any, ...]


def target_watermark(
    target: Connection,
    table: str,
    modifier: str,
    data_type: str,
    lookback_seconds: float,
    lookback_versions: int = 0,
    cap: str | None = None,
) -> tuple[str | None, str | None]:
    """(newest modifier, lower bound = newest minus the lookback) in the target, as text.

    Temporal modifiers look back ``lookback_seconds``; an integer version (a global, increasing
    change number) looks back ``lookback_versions`` numbers, so a change that got its number before
    a newer one but committed after it is still read.
    With ``cap`` (see :func:`source_clock_cap`) a temporal lower bound starts from the newest value
    not beyond it, so a modifier in the future cannot lift the window above rows written now.
    """
    target.rollback()  # a fresh snapshot: see what committed loads wrote
    column = q(modifier)
    if data_type in TEMPORAL_TYPES:
        lower = f"CAST(MAX({column}) - INTERVAL {int(lookback_seconds)} SECOND AS CHAR)"
    else:
        lower = f"CAST(MAX({column}) AS CHAR)"
    row = target.exec_driver_sql(f"SELECT CAST(MAX({column}) AS CHAR), {lower} FROM {q(table)}").fetchone()
    newest, bound = (row[0], row[1]) if row else (None, None)
    if data_type in INTEGER_TYPES and bound is not None and lookback_versions:
        bound = str(int(bound) - int(lookback_versions))  # Python ints: no UNSIGNED underflow
    if cap is None or newest is None or data_type not in TEMPORAL_TYPES or newest <= cap:
        return newest, bound  # (same text form on both sides: compared as text)
    # Values beyond the source clock: start from the newest value that is not (or from the cap).
    kind = "DATE" if data_type == "date" else "DATETIME(6)"
    interval = f"INTERVAL {int(lookback_seconds)} SECOND"
    row = target.exec_driver_sql(
        f"SELECT CAST(MAX({column}) - {interval} AS CHAR), CAST(CAST(%s AS {kind}) - {interval} AS CHAR) "
        f"FROM {q(table)} WHERE {column} <= CAST(%s AS {kind})",
        (cap, cap),
    ).one()
    return newest, row[0] if row[0] is not None else row[1]


def source_clock_cap(source: Connection, data_type: str, skew_seconds: float) -> str | None:
    """The source's clock plus ``skew_seconds``, as text in the modifier's terms (None: not temporal).

    TIMESTAMP values read in our UTC session compare with UTC; DATE and DATETIME values are
    wall-clock values an application usually writes with ``NOW()`` in the server's default time
    zone, so they compare with ``NOW()`` in ``@@global.time_zone`` (the session's zone is set to
    the default for one statement and pinned back to UTC right after).
    """
    if data_type not in TEMPORAL_TYPES:
        return None
    skew = f"INTERVAL {int(skew_seconds)} SECOND"
    if data_type == "timestamp":
        return str(source.exec_driver_sql(f"SELECT CAST(UTC_TIMESTAMP(6) + {skew} AS CHAR)").scalar())
    expression = f"DATE(NOW() + {skew})" if data_type == "date" else f"NOW(6) + {skew}"
    source.exec_driver_sql("SET time_zone = DEFAULT")
    try:
        return str(source.exec_driver_sql(f"SELECT CAST({expression} AS CHAR)").scalar())
    finally:
        source.exec_driver_sql("SET time_zone = '+00:00'")


def future_rows(target: Connection, table: str, modifier: str, data_type: str, cap: str) -> int:
    """Rows of ``table`` whose modifier is beyond ``cap`` (an index range on the modifier)."""
    kind = "DATE" if data_type == "date" else "DATETIME(6)"
    sql = f"SELECT COUNT(*) FROM {q(table)} WHERE {q(modifier)} > CAST(%s AS {kind})"
    return int(target.exec_driver_sql(sql, (cap,)).scalar() or 0)


def has_rows(conn: Connection, table: str) -> bool:
    """Whether ``table`` holds at least one row."""
    return conn.exec_driver_sql(f"SELECT 1 FROM {q(table)} LIMIT 1").first() is not None


def count_rows(conn: Connection, table: str) -> int:
    """``COUNT(*)`` of ``table`` (for the mass-delete guard of a full refresh)."""
    return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {qi(table)}").scalar() or 0)


def leading_index(conn: Connection, table: str, column: str) -> str | None:
    """The name of an index of ``table`` whose first column is ``column`` (None: there is none)."""
    from dlt_db_sync.index_management import index_columns

    for name, (_unique, columns) in sorted(index_columns(conn, table).items()):
        if columns and columns[0].lower() == column.lower():
            return name
    return None


def null_modifier_sql(table: str, modifier: str, select: str, index: str | None) -> str:
    """``SELECT <select> FROM table WHERE modifier IS NULL``, read through ``index`` when given.

    The hint keeps the read an index range even when NULL rows are most of the table (where the
    optimizer would otherwise prefer a full scan), so its cost follows the NULL rows only.
    """
    hint = f" FORCE INDEX ({q(index)})" if index else ""
    return f"SELECT {select} FROM {q(table)}{hint} WHERE {q(modifier)} IS NULL"


def null_modifier_fingerprint(
    conn: Connection, table: str, modifier: str, row_hash: str, index: str | None
) -> tuple[int, int]:
    """(rows, checksum of every column) of the rows whose modifier is NULL."""
    sql = null_modifier_sql(table, modifier, f"COUNT(*), BIT_XOR({row_hash})", index)
    row = conn.exec_driver_sql(sql.replace("%%", "%")).one()
    return int(row[0]), int(row[1] or 0)


def window_fingerprint(
    conn: Connection,
    table: str,
    columns: Sequence[Column],
    modifier: str,
    lower: str,
    values: Mapping[str, str] | None = None,
) -> Fingerprint:
    """(rows, newest modifier, XOR of full-row hashes) of the rows with ``modifier >= lower``.

    ``columns`` are the source's columns: a target column the source dropped (kept by design) is
    not part of the comparison. ``values`` (column name -> expression, see
    ``sanitization.stored_values``) hashes what the target stores instead of the column itself.
    """
    column = qi(modifier)
    row = conn.exec_driver_sql(
        f"SELECT COUNT(*), CAST(MAX({column}) AS CHAR), BIT_XOR({row_hash_sql(columns, values)}) "
        f"FROM {qi(table)} WHERE {column} >= %s",
        (lower,),
    ).fetchone()
    return (int(row[0]), row[1], int(row[2] or 0)) if row else (0, None, 0)


def window_keys(conn: Connection, table: str, key: Sequence[str], modifier: str, lower: str) -> set[tuple[Any, ...]]:
    """The keys of the rows with ``modifier >= lower`` (read from the modifier index)."""
    names = ", ".join(qi(k) for k in key)
    rows = conn.exec_driver_sql(f"SELECT {names} FROM {qi(table)} WHERE {qi(modifier)} >= %s", (lower,)).fetchall()
    return {tuple(r) for r in rows}


def keys_in(conn: Connection, table: str, key: Sequence[str], keys: Sequence[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Those of ``keys`` that ``table`` holds (point lookups on the key's index)."""
    found: set[tuple[Any, ...]] = set()
    names = ", ".join(qi(k) for k in key)
    for start in range(0, len(keys), KEY_LOOKUP_BATCH):
        where, params = key_condition(key, keys[start : start + KEY_LOOKUP_BATCH])
        found.update(
            tuple(r) for r in conn.exec_driver_sql(f"SELECT {names} FROM {qi(table)} WHERE {where}", tuple(params))
        )
    return found
