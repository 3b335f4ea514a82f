"""Snapshot coordination: the stream position first, then a full-refresh load of each table; a new
snapshot of every table when the stored position was purged (``BINLOG_RESNAPSHOT=auto``).

Start: the stream position (``@binlog`` in ``_dlt_sync_state``) is recorded before any table is
loaded; each binlog table without a finished snapshot is loaded by the existing full-refresh path
(chunked, guarded); then events are applied from the recorded position. Row events carry whole
rows (``binlog_row_image=FULL``), so replaying changes the snapshot already holds converges to the
same rows: an upsert writes the whole row, a delete removes the key.

Tables added while streaming (SIGHUP) are snapshotted in a thread of their own; the stream notes
the keys their events touch meanwhile and re-copies those rows when the snapshot is done.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import SQLAlchemyError

from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.binlog_rows import build_layout, decode_rows
from dlt_db_sync.database.binlog_reader import BinlogPosition, RowsRecord, current_position, position_available
from dlt_db_sync.database.sync_state import (
    BINLOG_SNAPSHOT_PENDING,
    BINLOG_STREAM_ROW,
    ensure_state_table,
    mark_done,
    mark_pending,
    read_state,
)
from dlt_db_sync.error_handling.errors import (
    BinlogPositionLost,
    DataError,
    SchemaError,
    ShutdownRequested,
    SyncError,
    TerminalError,
    describe_error,
    is_transient,
)
from dlt_db_sync.pipeline_management.binlog.apply import BatchApplier, Key, TableApplyFailed, key_bytes
from dlt_db_sync.pipeline_management.binlog.shared import StreamShared
from dlt_db_sync.pipeline_management.binlog.tables import BinlogTables
from dlt_db_sync.pipeline_management.change_detection import keys_in
from dlt_db_sync.schema_management.tables import describe_table, table_exists
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification.repair import copy_rows

logger = logging.getLogger("dlt_sync.binlog")


@dataclass
class _SnapshotJob:
    """A table snapshotted in the background, and the keys its events changed meanwhile."""

    spec: TableSpec
    keys: set[Key] = field(default_factory=set)
    thread: threading.Thread | None = None
    error: str | None = None


class Snapshots:
    """The stream's snapshots: at start (in the stream's thread) and of tables added later (beside it)."""

    def __init__(
        self,
        shared: StreamShared,
        tables: BinlogTables,
        applier: BatchApplier,
    ) -> None:
        self.engines = shared.engines
        self.settings = shared.settings
        self.stop_event = shared.stop_event
        self.tables = tables
        self.applier = applier
        self.status = shared.status
        self.metrics = shared.metrics
        self._syncer = shared.syncer  # the stream's TableSyncer, which runs the full-refresh loads
        self.jobs: dict[str, _SnapshotJob] = {}  # tables added while streaming, being snapshotted

    def prepare(self, background: bool) -> BinlogPosition:
        """The stored stream position (recorded now if there is none) after every snapshot is done.

        ``background``: the stream already runs, so new snapshots run beside it (see :meth:`start_job`).
        """
        with self.engines.target.begin() as target:
            ensure_state_table(target)
            stored = read_state(target, BINLOG_STREAM_ROW)
        position = BinlogPosition.parse(stored.last_watermark) if stored is not None else None
        with self.engines.source.connect() as source:
            if position is None:
                position = current_position(source)  # first: nothing written after it is missed
                self.applier.store_position(position, 0)
                logger.info("binlog stream starts at %s", position.text(), extra=log_fields("BINLOG", "START"))
            elif not position_available(source, position):
                raise BinlogPositionLost(
                    f"the stored binlog position {position.text()} was purged from the source (binlog file "
                    f"{position.file} is gone)"
                )
        self.tables.active.clear()
        self.tables.failed.clear()
        for spec in list(self.tables.specs.values()):
            if spec.table.lower() in self.tables.stopped or spec.table.lower() in self.jobs:
                continue
            try:
                with self.engines.source.connect() as source:
                    if not table_exists(source, spec.table):
                        raise SchemaError(f"table {spec.table!r} does not exist in the source database")
                with self.engines.target.connect() as target:
                    state = read_state(target, spec.table)
                if state is None or state.pending or BinlogPosition.parse(state.last_watermark) is None:
                    if background:
                        self.start_job(spec)  # the daemon's stream goes on for the others meanwhile
                    else:
                        self.snapshot(spec)
                else:
                    self.activate(spec)
            except (SyncError, SQLAlchemyError) as exc:
                if is_transient(exc) or isinstance(exc, ShutdownRequested):
                    raise
                # One table that cannot start never stops the others.
                self.tables.failed.add(spec.table.lower())
                message = describe_error(exc)
                logger.error("%s: %s", spec.table, message, extra=log_fields("BINLOG", "SNAPSHOT"))
                self.status.table_failed(spec.table, message, "schema_errors")
        return position

    def position_lost(self, exc: BinlogPositionLost) -> bool:
        """Report a purged position; True when the binlog tables are to be snapshotted again (their
        state and the position are deleted; ``BINLOG_RESNAPSHOT=auto``)."""
        message = str(exc)
        for table in self.tables.names:
            self.status.binlog_position_lost(table, message)
            if self.metrics is not None:
                self.metrics.binlog_position_lost(table)
        if self.settings.binlog_resnapshot != "auto":
            logger.error(
                "%s; the binlog tables are NOT synced until they are snapshotted again: restart with "
                "BINLOG_RESNAPSHOT=auto (or delete their rows and the '%s' row from _dlt_sync_state)",
                message,
                BINLOG_STREAM_ROW,
                extra=log_fields("BINLOG", "POSITION_LOST"),
            )
            return False
        logger.warning(
            "%s; BINLOG_RESNAPSHOT=auto: taking a new snapshot of %s",
            message,
            ", ".join(self.tables.names),
            extra=log_fields("BINLOG", "POSITION_LOST"),
        )
        with self.engines.target.begin() as target:
            target.exec_driver_sql(
                "DELETE FROM `_dlt_sync_state` WHERE table_name IN ("
                + ", ".join(["%s"] * (len(self.tables.names) + 1))
                + ")",
                (BINLOG_STREAM_ROW, *self.tables.names),
            )
        return True

    def activate(self, spec: TableSpec) -> None:
        """The table's events apply from now on (its definition is read again)."""
        self.tables.activate(spec)
        self.applier.forget_layouts()

    def snapshot(self, spec: TableSpec) -> None:
        """Load ``spec`` with the full-refresh path, recording the position taken before it."""
        if self.stop_event.is_set():
            raise ShutdownRequested("shutdown requested before a binlog snapshot")
        with self.engines.source.connect() as source:
            start = current_position(source)
        with self.engines.target.begin() as target:
            mark_pending(target, spec.table, BINLOG_SNAPSHOT_PENDING)
        logger.info("%s: binlog snapshot from %s", spec.table, start.text(), extra=log_fields("BINLOG", "SNAPSHOT"))
        result = self._syncer().sync_table(replace(spec, sync_strategy="full_refresh"))
        if not result.ok:
            raise TerminalError(f"table {spec.table!r}: binlog snapshot failed: {result.error}")
        with self.engines.target.begin() as target:
            mark_done(target, spec.table, result.rows, start.text())
        self.activate(spec)

    # ------------------------------------------------------------------ tables added while streaming
    def start_job(self, spec: TableSpec) -> None:
        """Snapshot ``spec`` in a thread of its own while the stream applies the other tables.

        Meanwhile the stream notes the keys of the table's row events instead of applying them;
        when the snapshot is done, those rows are re-copied from the source (or removed when the
        source no longer has them) and the table's events apply from there on.
        """
        with self.engines.target.begin() as target:
            mark_pending(target, spec.table, BINLOG_SNAPSHOT_PENDING)
        job = _SnapshotJob(spec)

        def run() -> None:
            from dlt_db_sync.pipeline_management.syncer import TableSyncer

            try:
                syncer = TableSyncer(self.engines, self.settings, self.status, self.stop_event, self.metrics)
                syncer.prepare()
                result = syncer.sync_table(replace(spec, sync_strategy="full_refresh"))
                if not result.ok:
                    job.error = result.error or "failed"
            except Exception as exc:  # noqa: BLE001 - handed to the stream thread, which reports it
                job.error = describe_error(exc)

        job.thread = threading.Thread(target=run, name=f"binlog-snapshot-{spec.table}", daemon=True)
        self.jobs[spec.table.lower()] = job
        logger.info("%s: snapshot started while the stream goes on", spec.table, extra=log_fields("BINLOG", "SNAPSHOT"))
        job.thread.start()

    def note_keys(self, record: RowsRecord) -> bool:
        """Note the keys a row event touches when its table is being snapshotted (re-copied when it is
        done); False when it is not."""
        job = self.jobs.get(record.table.lower())
        if job is None:
            return False
        try:
            definition = self.tables.definitions.get(record.table.lower())
            if definition is None:
                with self.engines.source.connect() as source:
                    definition = self.tables.definitions[record.table.lower()] = describe_table(source, job.spec.table)
            layout = build_layout(record.layout_source, definition, job.spec.primary_key)
            for images in decode_rows(layout, record.payload, record.kind):
                for image in images:
                    job.keys.add(tuple(image[i] for i in layout.key_indexes))
        except (DataError, SchemaError) as exc:
            raise TableApplyFailed(job.spec.table, exc) from exc
        return True

    def finish_jobs(self) -> None:
        """Activate the tables whose background snapshot finished (between source transactions)."""
        for name, job in list(self.jobs.items()):
            if job.thread is None or job.thread.is_alive():
                continue
            del self.jobs[name]
            spec = job.spec
            if job.error is not None:
                self.tables.stopped.add(name)
                message = f"table {spec.table!r}: binlog snapshot failed: {job.error}"
                logger.error("%s", message, extra=log_fields("BINLOG", "SNAPSHOT"))
                self.status.table_failed(spec.table, message, "schema_errors")
                continue
            self.applier.commit()  # the other tables' rows so far, at their position
            with self.engines.source.connect() as source:
                definition = describe_table(source, spec.table)
            keys = sorted(job.keys, key=repr)
            copied = 0
            if keys:
                with self.engines.source.connect() as source:
                    present = {key_bytes(k) for k in keys_in(source, spec.table, spec.primary_key, keys)}
                gone = [k for k in keys if k not in present]
                if gone:
                    key_columns = [c for c in (definition.column(k) for k in spec.primary_key) if c is not None]
                    self.applier.delete_now(spec.table, key_columns, gone)
                copied = copy_rows(
                    self.engines,
                    self.settings,
                    self.stop_event,
                    self._syncer().context.load_path,
                    definition,
                    spec.primary_key,
                    [k for k in keys if k in present],
                    spec.sanitize or self.settings.sanitize_policy,
                )
            position = self.applier.position.text() if self.applier.position is not None else None
            with self.engines.target.begin() as target:
                mark_done(target, spec.table, copied, position)
            self.activate(spec)
            logger.info(
                "%s: snapshot done; %d row(s) changed meanwhile re-copied; its events apply from %s",
                spec.table,
                len(keys),
                position,
                extra=log_fields("BINLOG", "SNAPSHOT"),
            )
