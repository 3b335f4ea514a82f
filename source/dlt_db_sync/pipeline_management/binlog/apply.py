"""The atomic apply: source transactions batched into one target transaction with the position.

Rows of committed source transactions are collected per table as the net change per key (the last
image wins; deletes before upserts) and written through the target loader together with the new
stream position in ONE target transaction, committed when ``BINLOG_BATCH_SECONDS`` passed since
the batch began, it holds ``BINLOG_BATCH_ROWS`` rows, or the source has nothing more to send. A
target transaction only ever ends at a source transaction boundary, so no source transaction is
half visible and a crash anywhere resumes from exactly what the target holds. A source transaction
larger than ``BINLOG_BATCH_ROWS`` is written in parts inside the still-open target transaction, so
memory stays bounded by the batch size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from dlt_db_sync.data_processing.binlog_rows import TableLayout, build_layout, decode_rows
from dlt_db_sync.data_processing.codec import comparable_expression
from dlt_db_sync.data_processing.loader import TargetLoader
from dlt_db_sync.database.binlog_reader import BinlogPosition, CommitRecord, RowsRecord
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.database.sync_state import BINLOG_STREAM_ROW, write_position_sql
from dlt_db_sync.error_handling.errors import DataError, SchemaError, TerminalError, describe_error
from dlt_db_sync.pipeline_management.binlog.shared import StreamShared
from dlt_db_sync.pipeline_management.binlog.tables import BinlogTables
from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification.repair import copy_rows

logger = logging.getLogger("dlt_sync.binlog")

DELETE_BATCH = 1000
POSITION_ONLY_SECONDS = 1.0  # how often the position advances over transactions of other tables only

Key = tuple[bytes | None, ...]


class TableApplyFailed(TerminalError):
    """Events of one table cannot be decoded or written; that table stops, the others go on."""

    def __init__(self, table: str, cause: BaseException) -> None:
        super().__init__(f"table {table!r}: binlog apply failed: {describe_error(cause)}")
        self.table = table


def key_bytes(key: tuple[Any, ...]) -> Key:
    """A key read from the target in the decoder's transport form (exact for integer, text and binary keys)."""
    return tuple(v if isinstance(v, bytes | None) else str(v).encode() for v in key)


@dataclass
class _TablePending:
    """Net changes of one table in the open batch: key -> row values (None: delete)."""

    layout: TableLayout
    rows: dict[Key, list[bytes | None] | None] = field(default_factory=dict)
    events: int = 0


class BatchApplier:
    """The open batch and its target transaction; ``position`` is the last one committed with rows."""

    def __init__(
        self,
        shared: StreamShared,
        tables: BinlogTables,
    ) -> None:
        self.engines = shared.engines
        self.settings = shared.settings
        self.stop_event = shared.stop_event
        self.tables = tables
        self.status = shared.status
        self.metrics = shared.metrics
        self._syncer = shared.syncer  # the stream's TableSyncer (its load path and target capabilities)
        self.position: BinlogPosition | None = None
        self.in_transaction = False  # rows of a source transaction whose commit was not seen yet
        self._layouts: dict[int, tuple[Any, TableLayout]] = {}
        self._pending: dict[str, _TablePending] = {}
        self._pending_rows = 0
        self._batch_started: float | None = None
        self._last_commit: CommitRecord | None = None
        self._raw: Any = None  # the open target transaction's DBAPI connection
        self._cursor: Any = None
        self._loader: TargetLoader | None = None
        # Row events and rows per table in the open target transaction, for health and metrics.
        self._stats: dict[str, tuple[int, int]] = {}
        # Keys the loader removed because they held a unique value a written row took (see _write_table).
        self._displaced: dict[str, list[tuple[Any, ...]]] = {}

    # ------------------------------------------------------------------ collecting
    def forget_layouts(self, loader: bool = False) -> None:
        """Drop the cached row layouts (a table's definition changed); with ``loader`` also the
        loader, which caches the unique keys and columns of the tables."""
        self._layouts.clear()
        if loader:
            self._loader = None

    def _layout(self, record: RowsRecord) -> TableLayout:
        key = id(record.layout_source)
        cached = self._layouts.get(key)
        if cached is not None and cached[0] is record.layout_source:
            return cached[1]
        definition = self.tables.definitions[record.table.lower()]
        layout = build_layout(record.layout_source, definition, self.tables.specs[record.table.lower()].primary_key)
        if len(self._layouts) > 256:
            self._layouts.clear()
        self._layouts[key] = (record.layout_source, layout)
        return layout

    def add(self, record: RowsRecord) -> None:
        """Collect a row event of an applying table; a large source transaction is written in parts."""
        name = record.table.lower()
        try:
            self._collect(name, record)
        except (DataError, SchemaError) as exc:
            raise TableApplyFailed(self.tables.specs[name].table, exc) from exc
        if self._pending_rows >= self.settings.binlog_batch_rows and self.in_transaction:
            # A large source transaction: write this part into the open target transaction.
            self._flush()

    def _collect(self, name: str, record: RowsRecord) -> None:
        """Decode ``record`` into the net change per key of the table's pending rows."""
        layout = self._layout(record)
        pending = self._pending.get(name)
        if pending is not None and pending.layout.loaded != layout.loaded:
            self._flush()  # the columns changed within the batch: write what has the old ones
            pending = None
        if pending is None:
            pending = self._pending[name] = _TablePending(layout)
        if self._batch_started is None:
            self._batch_started = time.monotonic()
        keys = layout.key_indexes
        loaded = [i for i, _ in layout.loaded]
        for images in decode_rows(layout, record.payload, record.kind):
            after = images[-1]
            if record.kind == "update":
                before_key = tuple(images[0][i] for i in keys)
                if before_key != tuple(after[i] for i in keys):
                    pending.rows.pop(before_key, None)
                    pending.rows[before_key] = None
            key = tuple(after[i] for i in keys)
            pending.rows.pop(key, None)  # re-inserted at the end: dict order follows the last change
            pending.rows[key] = None if record.kind == "delete" else [after[i] for i in loaded]
            self._pending_rows += 1
        pending.events += 1

    def source_commit(self, record: CommitRecord) -> None:
        """A source transaction ended: the batch may end here, at ``record``'s position."""
        self.in_transaction = False
        self._last_commit = record
        if self._batch_started is None:
            self._batch_started = time.monotonic()  # also position-only batches get written

    def due(self, idle: bool) -> bool:
        """Whether the batch should be committed now (``idle``: the source has nothing more to send)."""
        if self._last_commit is None or self.in_transaction or self._batch_started is None:
            return False
        if not self._pending and not self._stats and self._raw is None:
            # Only transactions of other tables: the position is written now and then, not per batch.
            return time.monotonic() - self._batch_started >= max(
                POSITION_ONLY_SECONDS, self.settings.binlog_batch_seconds
            )
        if idle or self._pending_rows >= self.settings.binlog_batch_rows:
            return True
        return time.monotonic() - self._batch_started >= self.settings.binlog_batch_seconds

    # ------------------------------------------------------------------ writing
    def _begin(self) -> None:
        if self._raw is not None:
            return
        raw = self.engines.target.raw_connection()
        cursor = raw.cursor()
        dialect = Dialect.of(self.engines.target)
        for statement in dialect.statement_limit(self.settings.transaction_timeout):
            cursor.execute(statement)
        cursor.execute("START TRANSACTION")
        self._raw, self._cursor = raw, cursor

    def _loader_instance(self) -> TargetLoader:
        if self._loader is None:
            syncer = self._syncer()
            self._loader = TargetLoader(
                self.engines,
                self.settings,
                self.stop_event,
                syncer.context.load_path,
                sanitize=self.settings.sanitize_policy,
                label="binlog",
                persistent_stage=not syncer.context.capabilities.temporary_tables,
            )
        return self._loader

    def _flush(self) -> None:
        """Write the collected net changes into the open target transaction (no commit)."""
        if not self._pending:
            return
        self._begin()
        loader = self._loader_instance()
        for name, pending in self._pending.items():
            try:
                self._write_table(loader, name, pending)
            except (DataError, SchemaError) as exc:
                raise TableApplyFailed(self.tables.specs[name].table, exc) from exc
        for name, table in self._pending.items():
            events, rows = self._stats.get(name, (0, 0))
            self._stats[name] = (events + table.events, rows + len(table.rows))
        self._pending = {}
        self._pending_rows = 0

    def _write_table(self, loader: TargetLoader, name: str, pending: _TablePending) -> None:
        """Deletes, then upserts, of one table's net changes, on the open target transaction."""
        spec = self.tables.specs[name]
        columns = pending.layout.loaded_columns
        deletes = [k for k, v in pending.rows.items() if v is None]
        upserts = [v for v in pending.rows.values() if v is not None]
        key_columns = [pending.layout.columns[i] for i in pending.layout.key_indexes]
        definition = self.tables.definitions[name]
        key_defs = [definition.column(c.name) for c in key_columns]
        if deletes:
            self._delete_keys(spec.table, [c for c in key_defs if c is not None], deletes)
        if upserts:
            chunk = pa.table(
                {c.name: pa.array([row[i] for row in upserts], type=pa.binary()) for i, c in enumerate(columns)}
            )
            loader.displaced_keys.clear()
            loader.upsert_in_transaction(self._cursor, spec.table, columns, spec.primary_key, chunk)
            # A removed row whose key is in this batch was written again by the upsert. Any other
            # one held a unique value the stream had not released (a target that differed from
            # the source, or a replay after the snapshot): re-copied from the source after the commit.
            written = {k for k, v in pending.rows.items() if v is not None}
            others = [k for k in loader.displaced_keys if key_bytes(k) not in written]
            if others:
                self._displaced.setdefault(name, []).extend(others)

    def _delete_keys(self, table: str, key_columns: Sequence[Column], keys: Sequence[Key]) -> None:
        match = " AND ".join(f"{q(c.name)} = {comparable_expression(c, '%s')}" for c in key_columns)
        for start in range(0, len(keys), DELETE_BATCH):
            part = keys[start : start + DELETE_BATCH]
            where = " OR ".join(f"({match})" for _ in part)
            self._cursor.execute(f"DELETE FROM {q(table)} WHERE {where}", [v for key in part for v in key])

    def delete_now(self, table: str, key_columns: Sequence[Column], keys: Sequence[Key]) -> None:
        """Delete ``keys`` from ``table`` in a target transaction of their own (no batch may be open)."""
        self._begin()
        self._delete_keys(table, key_columns, keys)
        self._raw.commit()
        self._close_transaction()

    def commit(self) -> None:
        """Write the batch and the position after its last source transaction; commit both at once."""
        commit = self._last_commit
        if commit is None or self.in_transaction:
            return
        started = time.monotonic()
        self._displaced = {}
        with self.engines.write_slot(self.stop_event):
            self._flush()
            self._begin()
            rows = sum(rows for _, rows in self._stats.values())
            self._cursor.execute(
                write_position_sql(Dialect.of(self.engines.target)), (BINLOG_STREAM_ROW, rows, commit.position.text())
            )
            self._raw.commit()
            self._close_transaction()
        self.position = commit.position
        self._last_commit = None
        self._batch_started = None
        lag = max(time.time() - commit.timestamp, 0.0)
        source_time = datetime.fromtimestamp(commit.timestamp, UTC)
        for name, (events, count) in self._stats.items():
            table = self.tables.specs[name].table
            self.status.binlog_applied(table, commit.position.text(), lag, events, count, source_time)
            if self.metrics is not None:
                self.metrics.binlog_applied(table, events, count, lag)
        self._stats = {}
        if self.metrics is not None:
            self.metrics.observe_binlog_batch(time.monotonic() - started)
        for name, keys in self._displaced.items():
            self._recopy(name, keys)

    def _recopy(self, name: str, keys: list[tuple[Any, ...]]) -> None:
        spec = self.tables.specs[name]
        logger.warning(
            "%s: %d target row(s) held unique values the source has released; re-copied from the source",
            spec.table,
            len(keys),
            extra=log_fields("BINLOG", "UNIQUE_KEYS"),
        )
        copy_rows(
            self.engines,
            self.settings,
            self.stop_event,
            self._syncer().context.load_path,
            self.tables.definitions[name],
            spec.primary_key,
            keys,
            spec.sanitize or self.settings.sanitize_policy,
        )

    def store_position(self, position: BinlogPosition, rows: int) -> None:
        """Record ``position`` in its own target transaction (no batch may be open)."""
        with self.engines.target.begin() as target:
            target.exec_driver_sql(write_position_sql(Dialect.of(target)), (BINLOG_STREAM_ROW, rows, position.text()))

    def rollback(self) -> None:
        """Drop the open batch and roll its target transaction back (the connection is discarded)."""
        self._pending = {}
        self._pending_rows = 0
        self._stats = {}
        self._last_commit = None
        self._batch_started = None
        self.in_transaction = False
        if self._raw is not None:
            try:
                self._raw.rollback()
            except Exception as exc:  # noqa: BLE001 - the connection is broken; it is discarded below
                logger.debug("rollback failed: %s", exc, extra=log_fields("BINLOG", "ROLLBACK"))
            self._raw.invalidate()
            self._close_transaction()

    def _close_transaction(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
        if self._raw is not None:
            self._raw.close()
        self._raw = self._cursor = None
