"""Writes Arrow batches into the target in bounded chunks, each its own short transaction.

Two paths, chosen once at start-up from the target's ``local_infile`` setting:

* ``LOAD DATA LOCAL INFILE`` of the vectorised TSV encoding (``data_processing.encode_tsv_buffer``),
* multi-row ``INSERT`` (pymysql batches ``executemany`` into large statements) when the target
  refuses LOCAL INFILE.

Into an empty table (first load, full-refresh shadow) rows go straight in. Into a table with rows
they go through a per-connection temporary staging table and ``INSERT ... SELECT ... ON DUPLICATE
KEY UPDATE`` on the table's own primary key: an idempotent upsert, never a ``DELETE``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pymysql
from sqlalchemy import exc as sa_exc

from dlt_db_sync.config.settings import SanitizePolicy, Settings
from dlt_db_sync.data_processing.codec import (
    comparable_expression,
    encode_tsv_buffer,
    load_expression,
    rows_as_parameters,
)
from dlt_db_sync.data_processing.sanitization import LoadPlan, SanitizeCounter
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.error_handling.errors import (
    DataError,
    ShutdownRequested,
    is_connection_error,
    mysql_error_code,
    own_kill_error,
)
from dlt_db_sync.error_handling.retry import RetryPolicy
from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.target_loader")

LoadPath = Literal["load_data", "insert"]
# Why CREATE TEMPORARY TABLE may be refused: no privilege (1044, 1142, 1227), or MySQL < 8.0.13
# with enforce_gtid_consistency inside a transaction (1787): regular staging tables then.
TEMPORARY_TABLE_REFUSED = frozenset({1044, 1142, 1227, 1787})
PARALLEL_EMPTY_LOADS = 2  # chunks loaded at once into an empty table (see TargetLoader._parallel_loads)


def rechunk(batches: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of Arrow tables into tables of exactly ``rows`` rows (the last may be short)."""
    pending: list[pa.Table] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            combined = pa.concat_tables(pending, promote_options="permissive")
            yield combined.slice(0, rows)
            rest = combined.slice(rows)
            pending = [rest] if rest.num_rows else []
            count = rest.num_rows
    if count:
        yield pa.concat_tables(pending, promote_options="permissive")


class TargetLoader:
    """Applies chunks of rows to target tables."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        stop_event: threading.Event,
        path: LoadPath,
        *,
        sanitize: SanitizePolicy = "error",
        label: str | None = None,
        persistent_stage: bool = False,
        on_recovered: Callable[[float], None] | None = None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.stop_event = stop_event
        self.path = path
        self.tmpdir = Path(tempfile.gettempdir())
        self.sanitize = sanitize
        self.label = label  # the table name for messages (loads may target a shadow table)
        self.sanitized = SanitizeCounter()  # values set to NULL by the sanitization policy, committed only
        self._sql_mode: str | None = None
        self._dialect: Dialect | None = None
        self._plan: LoadPlan | None = None
        # Without CREATE TEMPORARY TABLES (not in TRD 7.1.1's grants) a regular staging table is used.
        self.persistent_stage = persistent_stage
        self._stage_lock = threading.Lock()
        self._stages_created: set[str] = set()
        self._counter_lock = threading.Lock()  # chunks may commit from two loader threads
        # Keys of target rows removed because a staged row took over one of their unique values
        # (see _remove_colliding_rows); the caller re-copies their current version from the source.
        self.displaced_keys: list[tuple[Any, ...]] = []
        self._other_unique: dict[str, list[list[tuple[str, int | None]]]] = {}
        self.on_recovered = on_recovered  # seconds from a chunk's first failure to its success (metrics)

    def load(
        self,
        table: str,
        columns: Sequence[Column],
        key: Sequence[str],
        batches: Iterable[pa.Table],
        *,
        into_empty: bool,
        chunk_rows: int,
        on_chunk: Callable[[int], None] | None = None,
    ) -> int:
        """Write every row of ``batches`` into ``table``; returns the number of rows written."""
        workers = self._parallel_loads(into_empty)
        if workers > 1:
            return self._load_parallel(table, columns, key, batches, into_empty, chunk_rows, on_chunk, workers)
        total = 0
        # Each chunk is the unit of retry (the only one a chunk's error gets: see error_handling.retry).
        retry = RetryPolicy.from_settings(self.settings)
        for chunk in rechunk(batches, chunk_rows):
            if self.stop_event.is_set():
                # Every committed chunk is whole; the pending bound makes the next run redo the rest.
                raise ShutdownRequested(f"shutdown requested: {table} stopped after {total} rows")
            chunk = self._align(chunk, columns)
            retry.call(
                functools.partial(self._apply_chunk, table, columns, key, chunk, into_empty),
                what=f"loading {chunk.num_rows} rows into {table}",
                stop_event=self.stop_event,
                on_retry=self._on_retry,
                on_recovered=self.on_recovered,
            )
            total += chunk.num_rows
            if on_chunk is not None:
                on_chunk(chunk.num_rows)
        self._drop_persistent_stages()
        return total

    def _parallel_loads(self, into_empty: bool) -> int:
        """How many chunks load at once: 2 into an empty table via LOAD DATA, else 1.

        A single ``LOAD DATA`` keeps one target core busy; two (on disjoint keys: no lock
        conflicts) let the target parse and insert in parallel. Upserts stay one at a time, as
        do loads through a shared regular staging table. ``MAX_CONCURRENT_TRANSACTIONS`` bounds it.
        """
        if not into_empty or self.path != "load_data" or self.persistent_stage:
            return 1
        return max(1, min(PARALLEL_EMPTY_LOADS, self.settings.max_concurrent_transactions))

    def _load_parallel(
        self,
        table: str,
        columns: Sequence[Column],
        key: Sequence[str],
        batches: Iterable[pa.Table],
        into_empty: bool,
        chunk_rows: int,
        on_chunk: Callable[[int], None] | None,
        workers: int,
    ) -> int:
        """:meth:`load` with ``workers`` chunks in flight, each its own transaction on its own connection."""
        total = 0
        in_flight: deque[tuple[Future[Any], int]] = deque()
        retry = RetryPolicy.from_settings(self.settings)

        def apply(chunk: pa.Table) -> None:
            retry.call(
                lambda: self._apply_chunk(table, columns, key, chunk, into_empty),
                what=f"loading {chunk.num_rows} rows into {table}",
                stop_event=self.stop_event,
                on_retry=self._on_retry,
                on_recovered=self.on_recovered,
            )

        def finish_oldest() -> int:
            future, rows = in_flight.popleft()
            future.result()  # re-raises the chunk's error unchanged
            if on_chunk is not None:
                on_chunk(rows)
            return rows

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"load-{table}") as pool:
            try:
                for chunk in rechunk(batches, chunk_rows):
                    if self.stop_event.is_set():
                        raise ShutdownRequested(f"shutdown requested: {table} stopped after {total} rows")
                    chunk = self._align(chunk, columns)
                    in_flight.append((pool.submit(apply, chunk), chunk.num_rows))
                    while len(in_flight) >= workers:
                        total += finish_oldest()
                while in_flight:
                    total += finish_oldest()
            finally:
                for future, _rows in in_flight:
                    future.cancel()  # not started yet; running ones finish before the pool closes
        self._drop_persistent_stages()
        return total

    def _drop_persistent_stages(self) -> None:
        if not self._stages_created:
            return
        with self.engines.target.begin() as conn:
            for stage in sorted(self._stages_created):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(stage)}")
        self._stages_created.clear()

    @staticmethod
    def stage_name(table: str) -> str:
        """Name of the regular staging table used when temporary tables are not allowed."""
        name = f"_dlt_stage__{table}"
        return name if len(name) <= 64 else f"_dlt_stage__{hashlib.sha1(table.encode()).hexdigest()}"

    def _on_retry(self, exc: BaseException) -> None:
        if is_connection_error(exc):
            self.engines.rebuild("target")

    @staticmethod
    def _align(chunk: pa.Table, columns: Sequence[Column]) -> pa.Table:
        names = [c.name for c in columns]
        if chunk.column_names != names:
            chunk = chunk.select(names)
        return chunk

    def _apply_chunk(
        self, table: str, columns: Sequence[Column], key: Sequence[str], chunk: pa.Table, into_empty: bool
    ) -> None:
        with self.engines.write_slot(self.stop_event):
            raw = self.engines.target.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    for statement in self.dialect.statement_limit(self.settings.transaction_timeout):
                        cursor.execute(statement)
                    started = time.monotonic()
                    plan = self._load_plan(cursor, table, columns)
                    sanitized: dict[str, int] = {}
                    if into_empty and self.path == "load_data" and not plan.needs_stage(chunk):
                        self._load_data_direct(cursor, table, columns, chunk)
                    else:
                        sanitized = self._upsert_via_stage(cursor, table, columns, key, chunk, plan, into_empty)
                    raw.commit()
                    for statement in self.dialect.clear_statement_limit():
                        cursor.execute(statement)
                    with self._counter_lock:
                        self.sanitized.add(sanitized, plan.reasons())
                    logger.debug(
                        "%s: %d rows in %.2fs",
                        table,
                        chunk.num_rows,
                        time.monotonic() - started,
                        extra=log_fields("LOADER", "CHUNK"),
                    )
                finally:
                    cursor.close()
            except BaseException as exc:
                own_kill = own_kill_error(exc, raw.info)  # read before invalidate() drops the record's info
                try:
                    raw.rollback()
                except Exception as rollback_exc:  # noqa: BLE001 - the connection is broken; dropped below
                    logger.debug("rollback failed: %s", rollback_exc, extra=log_fields("LOADER", "ROLLBACK"))
                # Never pool a failed connection: it may be dead or still carry the statement limit.
                # (Resetting the limit on a dead connection here used to replace the real error, e.g.
                # a retryable 2013, with pymysql's InterfaceError(0, '').)
                raw.invalidate()
                if own_kill is not None:
                    raise own_kill from exc
                raise
            finally:
                raw.close()

    @property
    def dialect(self) -> Dialect:
        """The target's SQL dialect (read from the engine once)."""
        if self._dialect is None:
            self._dialect = Dialect.of(self.engines.target)
        return self._dialect

    def _load_plan(self, cursor: Any, table: str, columns: Sequence[Column]) -> LoadPlan:
        """The sanitization/exact-transport plan for ``columns`` under the target session's sql_mode."""
        if self._sql_mode is None:
            cursor.execute("SELECT @@SESSION.sql_mode")
            self._sql_mode = str(cursor.fetchone()[0] or "")
        if self._plan is None or self._plan.columns != list(columns):
            self._plan = LoadPlan(self.label or table, columns, self.sanitize, self._sql_mode)
        return self._plan

    def _write_file(self, data: bytes | pa.Buffer) -> Path:
        path = self.tmpdir / f"dlt_sync_{os.getpid()}_{uuid.uuid4().hex}.tsv"
        path.write_bytes(data)
        return path

    def _load_data(self, cursor: Any, table: str, targets: str, set_clause: str, data: bytes | pa.Buffer) -> None:
        path = self._write_file(data)
        try:
            cursor.execute(
                f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {q(table)} CHARACTER SET binary "
                f"FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({targets}){set_clause}"
            )
            self._raise_on_warnings(cursor, table)
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _raise_on_warnings(cursor: Any, table: str) -> None:
        # LOCAL loads turn data errors into warnings; a warning means a value was altered.
        if cursor.warning_count:
            cursor.execute("SHOW WARNINGS LIMIT 5")
            shown = "; ".join(f"{r[1]}: {r[2]}" for r in cursor.fetchall())
            raise DataError(f"table {table!r}: the target altered or rejected values: {shown}")

    def _load_data_direct(self, cursor: Any, table: str, columns: Sequence[Column], chunk: pa.Table) -> None:
        variables = ", ".join(f"@c{i}" for i in range(len(columns)))
        assignments = ", ".join(f"{q(c.name)} = {load_expression(c, f'@c{i}')}" for i, c in enumerate(columns))
        self._load_data(cursor, table, variables, f" SET {assignments}", encode_tsv_buffer(chunk))

    def _upsert_via_stage(
        self,
        cursor: Any,
        table: str,
        columns: Sequence[Column],
        key: Sequence[str],
        chunk: pa.Table,
        plan: LoadPlan,
        into_empty: bool = False,
        may_commit: bool = True,
    ) -> dict[str, int]:
        """Stage ``chunk`` as raw bytes, then upsert it with the plan's value expressions.

        Returns the number of values per column the sanitization policy set to NULL.
        """
        stage = self._create_stage(cursor, table, len(columns), may_commit)
        stage_columns = self.dialect.stage_columns(len(columns))
        if self.path == "load_data":
            self._load_data(cursor, stage, stage_columns, "", encode_tsv_buffer(chunk))
        else:
            placeholders = ", ".join(["%s"] * len(columns))
            cursor.executemany(
                f"INSERT INTO {q(stage)} ({stage_columns}) VALUES ({placeholders})", rows_as_parameters(chunk)
            )
        counts: dict[str, int] = {}
        count_sql = plan.count_sql(stage)
        if count_sql is not None:
            cursor.execute(count_sql)
            counts = plan.counts(cursor.fetchone())
            plan.refuse(counts)
        if not into_empty:
            self._remove_colliding_rows(cursor, table, columns, key, stage)
        values = plan.value_expressions([f"c{i}" for i in range(len(columns))])
        keyset = {k.lower() for k in key}
        updates = [c.name for c in columns if c.name.lower() not in keyset]
        cursor.execute(self.dialect.upsert_select(table, [c.name for c in columns], values, q(stage), updates))
        for statement in plan.fixup_statements(table, stage, key, self.dialect):
            cursor.execute(statement)
        cursor.execute(f"DELETE FROM {q(stage)}" if self.persistent_stage else f"DROP TEMPORARY TABLE {q(stage)}")
        return counts

    def _create_stage(self, cursor: Any, table: str, width: int, may_commit: bool = True) -> str:
        """An empty stage table of ``width`` columns for one chunk; its name.

        A temporary table unless the target refuses them (the writer grants of TRD 7.1.1 lack
        CREATE TEMPORARY TABLES): then a regular table per loaded table, created once and emptied
        per chunk. Loaders built without the start-up probe's answer (re-copies, repair) find out
        here and switch for the rest of their life. Not when ``may_commit`` is false (the caller's
        transaction is open: creating a regular table would commit it); the refusal is raised.
        """
        if not self.persistent_stage:
            stage = "_dlt_sync_stage"
            cursor.execute(f"DROP TEMPORARY TABLE IF EXISTS {q(stage)}")
            try:
                cursor.execute(self.dialect.stage_table_sql(stage, width, temporary=True))
                return stage
            except pymysql.err.MySQLError as exc:
                if not may_commit or mysql_error_code(exc) not in TEMPORARY_TABLE_REFUSED:
                    raise
                self.persistent_stage = True
        stage = self.stage_name(table)
        with self._stage_lock:  # parallel chunks that switched together create it once
            if stage not in self._stages_created:
                # DDL commits implicitly; here, at the start of the chunk, there is nothing to commit yet.
                comment = "dlt-db-sync staging rows of one chunk; safe to drop while the daemon is stopped"
                cursor.execute(f"DROP TABLE IF EXISTS {q(stage)}")
                cursor.execute(self.dialect.stage_table_sql(stage, width, temporary=False, comment=comment))
                self._stages_created.add(stage)
        cursor.execute(f"DELETE FROM {q(stage)}")
        return stage

    def upsert_in_transaction(
        self, cursor: Any, table: str, columns: Sequence[Column], key: Sequence[str], chunk: pa.Table
    ) -> dict[str, int]:
        """Upsert ``chunk`` on the caller's open transaction, without committing (binlog apply:
        rows and the stream position commit together). Needs temporary tables (a regular staging
        table would be created by DDL, which commits). Returns values set to NULL by the policy."""
        if self.persistent_stage:
            raise DataError(
                f"table {self.label or table!r}: binlog apply needs CREATE TEMPORARY TABLES on the target database"
            )
        plan = self._load_plan(cursor, table, columns)
        counts = self._upsert_via_stage(
            cursor, table, columns, key, self._align(chunk, columns), plan, may_commit=False
        )
        self.sanitized.add(counts, plan.reasons())
        return counts

    def _other_unique_keys(self, cursor: Any, table: str, key: Sequence[str]) -> list[list[tuple[str, int | None]]]:
        """The target's unique indexes other than the merge key, as (column, prefix) lists (read once per load)."""
        if table not in self._other_unique:
            cursor.execute(
                "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = %s AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (table,),
            )
            found: dict[str, list[tuple[str, int | None]]] = {}
            for name, column, sub_part in cursor.fetchall():
                found.setdefault(name, []).append((column, int(sub_part) if sub_part is not None else None))
            merge = {k.lower() for k in key}
            self._other_unique[table] = [parts for parts in found.values() if {c.lower() for c, _ in parts} != merge]
        return self._other_unique[table]

    def _remove_colliding_rows(
        self, cursor: Any, table: str, columns: Sequence[Column], key: Sequence[str], stage: str
    ) -> None:
        """Delete the target rows that hold a staged row's value of another unique key under a different merge key.

        ``ON DUPLICATE KEY UPDATE`` fires on any unique key: left in place, such a row (its value
        moved to another row in the source, or the two rows swapped values) would be overwritten
        with the staged row's values, or the upsert would fail with 1062 every cycle. The source
        cannot hold both, so the target row is stale: it is removed in this chunk's transaction and
        its key recorded in :attr:`displaced_keys` for the caller to re-copy from the source.
        """
        staged = {c.name.lower(): comparable_expression(c, f"s.c{i}") for i, c in enumerate(columns)}
        same_row = " AND ".join(f"t.{q(k)} = {staged[k.lower()]}" for k in key)
        for parts in self._other_unique_keys(cursor, table, key):
            if any(column.lower() not in staged for column, _ in parts):
                continue  # a unique key over a generated column: not staged, computed by the target
            on = " AND ".join(
                f"LEFT(t.{q(column)}, {sub}) = LEFT({staged[column.lower()]}, {sub})"
                if sub
                else f"t.{q(column)} = {staged[column.lower()]}"
                for column, sub in parts
            )
            join = f"{q(table)} AS t JOIN {q(stage)} AS s ON {on} WHERE NOT ({same_row})"
            cursor.execute(f"SELECT {', '.join(f't.{q(k)}' for k in key)} FROM {join}")
            displaced = [tuple(row) for row in cursor.fetchall()]
            if not displaced:
                continue
            cursor.execute(f"DELETE t FROM {join}")
            logger.info(
                "%s: %d target row(s) held unique values the source has moved to other rows; "
                "removed, their current version is re-copied", self.label or table, len(displaced),extra=log_fields("LOADER", "UNIQUE_KEYS")
            )  # fmt: skip
            with self._counter_lock:
                self.displaced_keys.extend(displaced)


def temporary_tables_allowed(engine: Any) -> bool:
    """Whether the target user may create temporary tables (probed once at start-up)."""
    with engine.connect() as conn:
        try:
            conn.exec_driver_sql("CREATE TEMPORARY TABLE `_dlt_sync_probe` (a INT PRIMARY KEY)")
        except sa_exc.DBAPIError as exc:
            if mysql_error_code(exc) in TEMPORARY_TABLE_REFUSED:
                return False
            raise
        conn.exec_driver_sql("DROP TEMPORARY TABLE `_dlt_sync_probe`")
    return True
