"""Per-table sync (incremental or full refresh) and the cycle over all tables in batches.

Incremental: the lower bound is ``max(modifier)`` in the target minus the lookback window (or a
bound left pending by an unfinished load); a cheap fingerprint of the window on both sides
(count, max and a checksum of key+modifier, answered from the modifier index) skips tables where
nothing changed; otherwise the window is extracted and upserted chunk by chunk.

Full refresh: a chunked checksum comparison (``verification.refresh_by_chunks``) leaves an
identical table alone and repairs the differing rows when few chunks differ; otherwise a shadow
table is loaded and swapped in with one atomic ``RENAME TABLE`` so readers never see an empty or
half-filled table.

Deletes: an incremental table with ``"deletes": "reconcile"`` gets a key-only comparison after
its sync when due, and the target rows whose key left the source are deleted (full-refresh tables
need none: the refresh itself removes them).

Guard rails (issue 14): the lower bound starts from the newest modifier not beyond the source's
clock plus ``MAX_CLOCK_SKEW_SECONDS`` (rows dated in the future are counted, not followed); rows
whose modifier is NULL are fingerprinted through the modifier index every cycle and re-copied
when they differ; reconciliation, repair and the shadow swap ask :mod:`delete_guard` first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from dlt_db_sync.config.settings import PipelineMode, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.extraction import (
    Backend,
    Paging,
    choose_backend,
    extract,
    limit_malloc_arenas,
    pageable_key,
    prefetch,
)
from dlt_db_sync.data_processing.loader import LoadPath, TargetLoader, rechunk, temporary_tables_allowed
from dlt_db_sync.data_processing.sanitization import stored_values
from dlt_db_sync.database.engines import Engines, check_connectivity, server_allows_local_infile
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.database.server_info import read_servers
from dlt_db_sync.database.sync_state import ensure_state_table, mark_done, mark_pending, read_state
from dlt_db_sync.error_handling.errors import (
    DatabaseError,
    DataError,
    ExtractionBackendError,
    SchemaError,
    ShutdownRequested,
    StagingError,
    SyncError,
    call_with_retries,
    describe_error,
    is_connection_error,
    is_transient,
    mysql_error_code,
    retry_kwargs,
)
from dlt_db_sync.index_management import advise_source_modifier_index, check_merge_key, ensure_modifier_index
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.change_detection import (
    Fingerprint,
    count_rows,
    future_rows,
    has_rows,
    keys_in,
    leading_index,
    null_modifier_fingerprint,
    null_modifier_sql,
    source_clock_cap,
    target_watermark,
    window_fingerprint,
    window_keys,
)
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused, check_deletes
from dlt_db_sync.schema_management.model import Column, SchemaChanges, TableDefinition
from dlt_db_sync.schema_management.schema_cache import SchemaCache
from dlt_db_sync.schema_management.tables import add_unique_keys, ensure_target_table, fetch_columns, table_exists
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.utils.progress import progress
from dlt_db_sync.verification.chunk_compare import row_hash_sql
from dlt_db_sync.verification.verifier import ReconcileSchedule, copy_rows, reconcile_deletes, refresh_by_chunks

if TYPE_CHECKING:
    from dlt_db_sync.database.leases import LeaseManager
    from dlt_db_sync.monitoring.metrics import Metrics

logger = logging.getLogger("dlt_sync.pipeline_management")

# In direct mode connectorx reads at most this many chunks per query (see TableSyncer._extraction_plan).
DIRECT_CONNECTORX_PAGE_CHUNKS = 2


@dataclass
class TableResult:
    """Outcome of one table in one cycle."""

    table: str
    ok: bool
    rows: int = 0
    seconds: float = 0.0
    skipped: bool = False
    watermark: str | None = None
    mode: str = ""
    backend: str = ""
    error: str | None = None
    category: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    sanitized: dict[str, int] = field(default_factory=dict)  # column -> values set to NULL by the policy


def error_category(exc: BaseException) -> str:
    """The health ``error_summary`` bucket of ``exc``."""
    code = mysql_error_code(exc)
    if is_connection_error(exc) or code in {2003, 1040}:
        return "connection_errors"
    if code in {1205, 1213}:
        return "lock_timeout_errors"
    if isinstance(exc, SchemaError) or code in {1146, 1054}:
        return "schema_errors"
    if isinstance(exc, DataError):
        return "data_errors"
    return "other_errors"


def table_mode(spec: TableSpec, settings: Settings) -> PipelineMode:
    """The table's own ``mode`` from tables.json, else the global ``PIPELINE_MODE``."""
    return spec.mode or settings.pipeline_mode


@dataclass(frozen=True)
class WindowCheck:
    """Both sides' fingerprints of one incremental window."""

    lower: str
    source: Fingerprint
    target: Fingerprint

    @property
    def matches(self) -> bool:
        return self.source == self.target


class TableSyncer:
    """Syncs configured tables from the source to the target."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        status: SyncStatus,
        stop_event: threading.Event,
        metrics: Metrics | None = None,
        leases: LeaseManager | None = None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.status = status
        self.stop_event = stop_event
        self.metrics = metrics
        self.leases = leases  # a leases.LeaseManager when several replicas share tables.json
        self._load_path: LoadPath | None = None
        self._prepared = False
        self._persistent_stage = False
        self._advised: set[str] = set()
        self._deletes = ReconcileSchedule()  # when each "deletes": "reconcile" table is due
        self._schemas = SchemaCache()  # lets idle cycles skip the schema checks of unchanged tables
        self._window_rows: dict[str, int] = {}  # rows in the source window, counted by the fingerprint
        # The window check after a load that could not make both sides equal (see _settle_window).
        self._settled: dict[str, WindowCheck] = {}
        self._null_indexes: dict[str, tuple[str | None, str | None]] = {}  # modifier index per side (NULL rows)
        self._null_settled: dict[str, tuple[Any, Any]] = {}  # NULL-row fingerprints left after the last re-copy

    # ----------------------------------------------------------------- set-up
    def load_path(self) -> LoadPath:
        """``load_data`` when the target allows LOCAL INFILE, else ``insert`` (checked once)."""
        if self._load_path is None:
            allowed = server_allows_local_infile(self.engines.target)
            self._load_path = "load_data" if allowed else "insert"
            logger.info(
                "target %s LOCAL INFILE: loading with %s",
                "allows" if allowed else "refuses",
                "LOAD DATA LOCAL INFILE" if allowed else "multi-row INSERT (slower fallback)",
                extra=log_fields("LOADER", "DETECT"),
            )
        return self._load_path

    def prepare(self) -> None:
        """Create the bookkeeping table and detect the load path (once; cheap to call again)."""
        if self._prepared:
            return
        limit_malloc_arenas()  # before the first extraction thread: keeps the resident size flat
        # Fail fast with one line naming the database (wrong password, unreachable host).
        check_connectivity(self.engines)
        try:
            for role, info in read_servers(self.engines).items():
                self.status.set_server_info(role, info.as_dict())
            with self.engines.target.begin() as conn:
                ensure_state_table(conn)
            self.load_path()
            self._persistent_stage = not temporary_tables_allowed(self.engines.target)
        except SQLAlchemyError as exc:
            message = f"cannot prepare the target database {self.settings.target.describe()}: {describe_error(exc)}"
            raise DatabaseError(message, mysql_error_code(exc), transient=is_transient(exc)) from exc
        if self._persistent_stage:
            logger.warning(
                "the target user may not create temporary tables; upserts stage rows in regular "
                "tables named _dlt_stage__<table> (GRANT CREATE TEMPORARY TABLES on the target database avoids them)",
                extra=log_fields("LOADER", "DETECT"),
            )
        self._prepared = True

    # ----------------------------------------------------------------- cycle
    def run_cycle(self, specs: Sequence[TableSpec]) -> list[TableResult]:
        """Sync every table in batches of ``BATCH_SIZE``; one failure never stops the others.

        ``BATCH_DELAY`` follows only batches that loaded rows: a breather for the databases after
        work, not a fixed cost of every idle cycle.
        """
        results: list[TableResult] = []
        self._clean_staging(specs)
        if self.leases is not None:
            specs = self._leased(self.leases, specs)
        self._refresh_schemas(specs)
        batches = [specs[i : i + self.settings.batch_size] for i in range(0, len(specs), self.settings.batch_size)]
        for number, batch in enumerate(batches, start=1):
            if self.stop_event.is_set():
                break
            started = time.monotonic()
            logger.debug(
                "batch %d/%d: %s",
                number,
                len(batches),
                [s.table for s in batch],
                extra=log_fields("SYNC_ENGINE", "BATCH_PROCESSING"),
            )
            for spec in batch:
                if self.stop_event.is_set():
                    break
                if self.leases is not None and not self.leases.confirm(spec.table):
                    logger.warning(
                        "%s: lease no longer held; another replica syncs it",
                        spec.table,
                        extra=log_fields("LEASE", "LOST"),
                    )
                    continue
                results.append(self.sync_table(spec))
            if self.metrics is not None:
                self.metrics.observe_batch(time.monotonic() - started)
            moved = any(r.rows for r in results[len(results) - len(batch) :])
            if (
                number < len(batches)
                and moved
                and self.settings.batch_delay
                and self.stop_event.wait(self.settings.batch_delay)
            ):
                break
        return results

    def _refresh_schemas(self, specs: Sequence[TableSpec]) -> None:
        """Take this cycle's table signatures on both sides (two queries for all tables)."""
        try:
            with self.engines.source.connect() as source, self.engines.target.connect() as target:
                self._schemas.refresh(source, target, [spec.table for spec in specs])
        except SQLAlchemyError as exc:
            # Each table then gets its full check, which retries and reports the error itself.
            logger.warning(
                "cannot read table signatures: %s", describe_error(exc), extra=log_fields("SCHEMA_SYNC", "SIGNATURES")
            )
            self._schemas.invalidate()

    def _clean_staging(self, specs: Sequence[TableSpec]) -> None:
        """Apply ``FILE_STAGING_RETENTION_HOURS`` once per cycle and report the directory's size."""
        if not any(table_mode(spec, self.settings) == "file_staging" for spec in specs):
            return
        from dlt_db_sync.data_processing.file_staging import remove_expired

        directory = Path(self.settings.file_staging_dir)
        try:
            usage = remove_expired(directory, self.settings.file_staging_retention_hours)
        except StagingError as exc:
            # Cleanup is housekeeping: the cycle goes on, and each staged load reports its own errors.
            logger.warning("%s", describe_error(exc), extra=log_fields("FILE_STAGING", "CLEANUP"))
            return
        if usage.removed_files and self.metrics is not None:
            self.metrics.staging_operation("expire", usage.removed_files)
        if usage.removed_files:
            logger.info(
                "removed %d file(s) older than %gh from %s",
                usage.removed_files,
                self.settings.file_staging_retention_hours,
                directory,
                extra=log_fields("FILE_STAGING", "CLEANUP"),
            )
        self.status.set_staging_usage(usage.usage_mb, usage.files_count)

    def _leased(self, leases: LeaseManager, specs: Sequence[TableSpec]) -> list[TableSpec]:
        """The tables this replica holds a lease on (taking its fair share of free ones)."""
        try:
            owned = leases.acquire(specs)
        except Exception as exc:  # noqa: BLE001 - without leases this replica syncs nothing this cycle
            logger.error(
                "cannot take table leases: %s; skipping this cycle",
                describe_error(exc),
                extra=log_fields("LEASE", "ACQUIRE"),
            )
            self.status.set_database_status("target", False, describe_error(exc))
            return []
        names = {s.table for s in owned}
        for spec in specs:
            self.status.set_table_owned(spec.table, spec.table in names)
        logger.info(
            "%d of %d tables: %s", len(owned), len(specs), ", ".join(sorted(names)), extra=log_fields("LEASE", "OWNED")
        )
        return owned

    def sync_table(self, spec: TableSpec) -> TableResult:
        """Sync one table; errors are caught, classified, logged and reported, never raised."""
        self.status.table_started(spec.table)
        started = time.monotonic()
        mode = table_mode(spec, self.settings)
        try:
            result = call_with_retries(
                lambda: self._sync(spec, mode),
                what=f"syncing {spec.table}",
                stop_event=self.stop_event,
                on_retry=self._on_retry,
                on_recovered=self._on_recovered,
                **retry_kwargs(self.settings),
            )
        except ShutdownRequested as exc:
            result = TableResult(spec.table, ok=False, mode=mode, error=str(exc), category="other_errors")
        except (SyncError, Exception) as exc:  # noqa: BLE001 - one table's failure must not stop the others
            message = describe_error(exc)
            category = error_category(exc)
            self._guard_refused(exc)
            logger.error("%s failed: %s", spec.table, message, extra=log_fields("SYNC_ENGINE", "TABLE_SYNC"))
            logger.debug("%s traceback", spec.table, exc_info=True, extra=log_fields("SYNC_ENGINE", "TABLE_SYNC"))
            result = TableResult(spec.table, ok=False, mode=mode, error=message, category=category)
        if not result.ok:
            self._schemas.forget(spec.table)
            self._null_indexes.pop(spec.table, None)
        if result.ok and spec.strategy == "incremental" and self._deletes.due(spec):
            result = self._reconcile_deletes(spec, result)
        result.seconds = time.monotonic() - started
        self._report(spec, result)
        return result

    def _reconcile_deletes(self, spec: TableSpec, result: TableResult) -> TableResult:
        """Delete the target rows whose key left the source; a failure fails the table's result."""
        try:
            deleted, _comparison = call_with_retries(
                lambda: reconcile_deletes(self.engines, self.settings, self.stop_event, spec),
                what=f"reconciling deletes of {spec.table}",
                stop_event=self.stop_event,
                on_retry=self._on_retry,
                **retry_kwargs(self.settings),
            )
        except ShutdownRequested:
            return result  # the sync itself is done; the next run reconciles
        except (SyncError, Exception) as exc:  # noqa: BLE001 - reported as this table's failure
            self._guard_refused(exc)
            message = f"delete reconciliation failed: {describe_error(exc)}"
            logger.error("%s: %s", spec.table, message, extra=log_fields("SYNC_ENGINE", "DELETES"))
            logger.debug("%s traceback", spec.table, exc_info=True, extra=log_fields("SYNC_ENGINE", "DELETES"))
            return TableResult(spec.table, ok=False, mode=result.mode, error=message, category=error_category(exc))
        self._deletes.done(spec.table)
        result.details["rows_deleted"] = deleted
        if deleted:
            self.status.table_deleted(spec.table, deleted)
            if self.metrics is not None:
                self.metrics.rows_deleted(spec.table, deleted)
        return result

    def _guard_refused(self, exc: BaseException) -> None:
        """Report a refusal of the mass-delete guard to health and metrics (other errors: nothing)."""
        if isinstance(exc, MassDeleteRefused):
            self.status.delete_refused(exc.table, str(exc))
            if self.metrics is not None:
                self.metrics.delete_refused(exc.table)

    def _on_recovered(self, seconds: float) -> None:
        """A retried sync succeeded ``seconds`` after its first failed attempt."""
        if self.metrics is not None:
            self.metrics.observe_recovery(seconds)

    def _on_retry(self, exc: BaseException) -> None:
        if is_connection_error(exc):
            self.engines.rebuild("source")
            self.engines.rebuild("target")

    def _report(self, spec: TableSpec, result: TableResult) -> None:
        if result.ok:
            rate = result.rows / result.seconds if result.seconds > 0 else 0.0
            logger.info(
                "%s: %s, %d rows in %.2fs (%.0f rows/s), mode %s%s, watermark %s",
                spec.table,
                "unchanged, skipped" if result.skipped else spec.strategy,
                result.rows,
                result.seconds,
                rate,
                result.mode,
                f"/{result.backend} via {'LOAD DATA' if self._load_path == 'load_data' else 'INSERT'}"
                if result.backend
                else "",
                result.watermark,
                extra=log_fields("SYNC_ENGINE", "TABLE_SYNC"),
            )
            self.status.table_succeeded(
                spec.table,
                result.rows,
                result.seconds,
                watermark=result.watermark,
                newest_modifier=result.details.get("newest_modifier"),
                skipped=result.skipped,
                mode=result.mode,
                sanitized=result.sanitized,
            )
        else:
            self.status.table_failed(
                spec.table, result.error or "failed", result.category or "other_errors", seconds=result.seconds
            )
        if self.metrics is not None:
            self.metrics.observe_table(spec.table, result.seconds, result.rows, result.ok, result.category)

    # ----------------------------------------------------------------- one table
    def _sync(self, spec: TableSpec, mode: PipelineMode) -> TableResult:
        with self.engines.source.connect() as source, self.engines.target.connect() as target:
            changes = SchemaChanges()
            source_def = self._schemas.lookup(spec.table)  # None unless both sides are unchanged
            if source_def is None:
                # Check the key before anything is created in the target for a table that cannot be merged.
                if not table_exists(source, spec.table):
                    raise SchemaError(f"table {spec.table!r} does not exist in the source database")
                present = {col.name.lower() for col in fetch_columns(source, spec.table)}
                missing = [c for c in spec.primary_key if c.lower() not in present]
                if missing:
                    raise SchemaError(
                        f"table {spec.table!r}: primary_key column(s) {missing} do not exist in the source"
                    )
                check_merge_key(source, spec.table, spec.primary_key)
                source_def, changes = ensure_target_table(source, target, spec.table)
                if spec.strategy == "incremental" and spec.modifier and source_def.column(spec.modifier) is not None:
                    ensure_modifier_index(target, spec.table, spec.modifier)
                self._schemas.remember(spec.table, source_def)
            if spec.strategy == "incremental":
                # A new column (or a renamed one) holds values in rows outside the window too.
                result = self._incremental(spec, mode, source, target, source_def, backfill=changes.needs_backfill)
            else:
                result = self._full_refresh(spec, mode, source, target, source_def)
            if changes.unique_keys_to_add:
                target.rollback()
                add_unique_keys(target, spec.table, changes.unique_keys_to_add)
            return result

    def _chunk_rows(self, spec: TableSpec) -> int:
        return spec.batch_size or self.settings.chunk_size

    def _stream(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source_def: TableDefinition,
        lower: str | None,
        backend: Backend,
        paging: Paging | None = None,
    ) -> AbstractContextManager[Iterator[pa.Table]]:
        """The extracted chunks, read in a background thread while the previous chunk loads.

        file_staging: through Parquet part files on disk (unbounded read-ahead, the disk is the
        buffer); direct: through memory, one chunk ahead (peak memory stays a few chunks).
        """
        rows = self._chunk_rows(spec)
        batches = extract(self.engines, self.settings, source_def, spec.modifier, lower, rows, backend, paging)
        if mode == "file_staging":
            from dlt_db_sync.data_processing.file_staging import staged_batches

            count = self.metrics.staging_operation if self.metrics is not None else None
            return staged_batches(self.settings, spec.table, batches, rows, count)
        return prefetch(rechunk(batches, rows), depth=1, name=f"extract-{spec.table}")

    def _extraction_plan(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source_def: TableDefinition,
        backend: Backend,
        expected_rows: int | None,
    ) -> tuple[Backend, Paging | None]:
        """Keep memory at a few chunks when a large extraction runs in direct mode.

        connectorx has no back-pressure: a reader slower than the source makes it buffer the rest
        of the result in memory (measured: 2M rows behind a slow reader, +400 MB). In file_staging
        mode its reader writes Parquet files, faster than the source sends. In direct mode the
        reader waits for the target, so more than a few chunks are read in pages by the integer
        primary key (one query per page), or, for other keys, through pyarrow's server-side cursor.
        """
        page_rows = DIRECT_CONNECTORX_PAGE_CHUNKS * self._chunk_rows(spec)
        if mode != "direct" or backend != "connectorx" or expected_rows is None or expected_rows <= page_rows:
            return backend, None
        key = pageable_key(source_def, spec.primary_key)
        if key is not None:
            return backend, Paging(key, page_rows)
        if self.settings.extract_backend != "auto":
            return backend, None  # connectorx was asked for explicitly
        logger.info(
            "%s: ~%d rows in direct mode and no integer key to page by: streaming with "
            "pyarrow to keep memory at one chunk (file_staging mode reads them with connectorx)",
            spec.table,
            expected_rows,
            extra=log_fields("EXTRACTION", "BACKEND"),
        )
        return "pyarrow", None

    def _row_estimate(self, table: str) -> int | None:
        """The source's own row estimate (information_schema), for progress of full loads."""
        with self.engines.source.connect() as conn:
            value = conn.exec_driver_sql(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                (table,),
            ).scalar()
        return int(value) if value else None

    def _load(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source_def: TableDefinition,
        table: str,
        lower: str | None,
        into_empty: bool,
    ) -> tuple[int, str, dict[str, int]]:
        """Extract and load; returns (rows, backend, values per column the sanitization policy set to NULL)."""
        backend = choose_backend(self.settings, source_def, spec.modifier)
        loader = TargetLoader(
            self.engines,
            self.settings,
            self.stop_event,
            self.load_path(),
            sanitize=spec.sanitize or self.settings.sanitize_policy,
            label=spec.table,
            persistent_stage=self._persistent_stage,
        )
        estimate = self._row_estimate(spec.table) if lower is None else None
        expected = estimate if lower is None else self._window_rows.pop(spec.table, None)
        backend, paging = self._extraction_plan(spec, mode, source_def, backend, expected)

        def run(backend: Backend) -> int:
            with (
                self._stream(
                    spec, mode, source_def, lower, backend, paging if backend == "connectorx" else None
                ) as batches,
                progress(spec.table, estimate, self.settings) as bar,
            ):
                return loader.load(
                    table,
                    source_def.loaded_columns,
                    spec.primary_key,
                    batches,
                    into_empty=into_empty,
                    chunk_rows=self._chunk_rows(spec),
                    on_chunk=bar.advance,
                )

        # Rows are about to be extracted, so dlt is needed now anyway (imported in this, the main thread).
        from dlt.extract.exceptions import ResourceExtractionError

        try:
            rows = run(backend)
        except (ResourceExtractionError, ExtractionBackendError) as exc:
            if backend != "connectorx" or mysql_error_code(exc) is not None:
                raise
            # connectorx could not read this table (an unsupported type): pyarrow reads it exactly.
            logger.warning(
                "%s: connectorx failed (%s); using pyarrow",
                spec.table,
                describe_error(exc),
                extra=log_fields("EXTRACTION", "FALLBACK"),
            )
            backend = "pyarrow"
            rows = run(backend)
        if loader.displaced_keys:
            # Rows whose unique values the load gave to other rows: bring their current version.
            rows += self._copy_rows(spec, source_def, loader.displaced_keys)
        loader.sanitized.log(spec.table)  # once per table and cycle
        return rows, backend, dict(loader.sanitized.counts)

    def _copy_rows(self, spec: TableSpec, source_def: TableDefinition, keys: Sequence[tuple[Any, ...]]) -> int:
        """Upsert the source's current version of the rows with ``keys``."""
        return copy_rows(
            self.engines,
            self.settings,
            self.stop_event,
            self.load_path(),
            source_def,
            spec.primary_key,
            keys,
            spec.sanitize or self.settings.sanitize_policy,
        )

    def _incremental(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source: Connection,
        target: Connection,
        source_def: TableDefinition,
        backfill: bool = False,
    ) -> TableResult:
        modifier = spec.modifier
        assert modifier is not None
        mod_col = source_def.column(modifier)
        if mod_col is None:
            raise SchemaError(f"table {spec.table!r}: modifier column {modifier!r} does not exist in the source")
        if spec.table not in self._advised:
            advise_source_modifier_index(source, spec.table, modifier)
            self._advised.add(spec.table)
        state = read_state(target, spec.table)
        cap = source_clock_cap(source, mod_col.data_type, self.settings.max_clock_skew_seconds)
        target_max, lower = self._watermark(target, spec, mod_col, cap)
        into_empty = False
        if state is not None and state.pending:
            lower = state.pending_from  # an unfinished load: read again from where it started
        elif target_max is None:
            into_empty = not has_rows(target, spec.table)
            lower = None
        if backfill and lower is not None:
            logger.info(
                "%s: new column(s); re-reading the whole table once",
                spec.table,
                extra=log_fields("SCHEMA_SYNC", "BACKFILL"),
            )
            lower = None
        if lower is not None:
            window = self._window(source, target, spec, source_def, lower)
            if window.matches or self._settled.get(spec.table) == window:
                # Identical, or the same known difference as after the last load (nothing moved since).
                if state is not None and state.pending:
                    mark_done(target, spec.table, 0, target_max)  # the unfinished load had nothing left to do
                    target.commit()
                self._count_future_rows(spec, target, mod_col.data_type, cap, target_max)
                nulls = self._sync_null_modifiers(spec, source, target, source_def) if mod_col.nullable else 0
                return TableResult(spec.table, ok=True, skipped=not nulls, rows=nulls, watermark=target_max, mode=mode)
        mark_pending(target, spec.table, lower)
        target.commit()
        rows, backend, sanitized = self._load(spec, mode, source_def, spec.table, lower, into_empty)
        if lower is not None:
            rows += self._settle_window(spec, source, target, source_def, lower)
        new_max, _ = self._watermark(target, spec, mod_col)
        self._count_future_rows(spec, target, mod_col.data_type, cap, new_max)
        mark_done(target, spec.table, rows, new_max)
        target.commit()
        if mod_col.nullable and lower is not None:  # (a load from scratch read the NULL rows too)
            rows += self._sync_null_modifiers(spec, source, target, source_def)
        return TableResult(
            spec.table,
            ok=True,
            rows=rows,
            watermark=new_max,
            mode=mode,
            backend=backend,
            details={"lower_bound": lower, "newest_modifier": new_max},
            sanitized=sanitized,
        )

    def _watermark(
        self, target: Connection, spec: TableSpec, mod_col: Column, cap: str | None = None
    ) -> tuple[str | None, str | None]:
        return target_watermark(
            target,
            spec.table,
            mod_col.name,
            mod_col.data_type,
            self.settings.lookback_seconds,
            self.settings.lookback_versions,
            cap,
        )

    def _sync_null_modifiers(
        self, spec: TableSpec, source: Connection, target: Connection, source_def: TableDefinition
    ) -> int:
        """Bring the rows whose modifier is NULL (invisible to the window) in step; rows copied.

        A fingerprint (count and checksum of every column) of those rows on each side, read through
        the modifier index, costs two index-range reads when nothing changed. When they differ,
        the rows are diffed by key and the missing or changed ones re-copied from the source (a
        row deleted from the source is left to delete reconciliation).
        """
        modifier = spec.modifier or ""
        # Values the sanitization policy sets to NULL in the target are hashed as NULL on the source too.
        stored = stored_values(
            source_def.columns, spec.sanitize or self.settings.sanitize_policy, self.settings.target_sql_mode
        )
        hash_source, hash_target = row_hash_sql(source_def.columns, stored), row_hash_sql(source_def.columns)
        indexes = self._null_indexes.get(spec.table)
        if indexes is None:
            indexes = self._null_indexes[spec.table] = (
                leading_index(source, spec.table, modifier),
                leading_index(target, spec.table, modifier),
            )
        source.rollback()
        target.rollback()
        both = (
            null_modifier_fingerprint(source, spec.table, modifier, hash_source, indexes[0]),
            null_modifier_fingerprint(target, spec.table, modifier, hash_target, indexes[1]),
        )
        if both[0] == both[1] or self._null_settled.get(spec.table) == both:
            return 0  # in step, or the same known difference as last time (a row only delete reconciliation removes)
        key_sql = ", ".join(q(k) for k in spec.primary_key)
        width = len(spec.primary_key)

        def hashes(conn: Connection, row_hash: str, index: str | None) -> dict[tuple[Any, ...], int]:
            sql = null_modifier_sql(spec.table, modifier, f"{key_sql}, {row_hash}", index).replace("%%", "%")
            return {tuple(r[:width]): int(r[width]) for r in conn.exec_driver_sql(sql).fetchall()}

        in_source, in_target = hashes(source, hash_source, indexes[0]), hashes(target, hash_target, indexes[1])
        source.rollback()
        target.rollback()
        stale = [k for k, digest in in_source.items() if in_target.get(k) != digest]
        stale += [k for k in in_target if k not in in_source]  # NULL only in the target: take the source's row
        copied = self._copy_rows(spec, source_def, stale)
        logger.info(
            "%s: %d row(s) with a NULL %s re-copied",
            spec.table,
            copied,
            modifier,
            extra=log_fields("SYNC_ENGINE", "NULL_MODIFIER"),
        )
        self._null_settled[spec.table] = (
            null_modifier_fingerprint(source, spec.table, modifier, hash_source, indexes[0]),
            null_modifier_fingerprint(target, spec.table, modifier, hash_target, indexes[1]),
        )
        source.rollback()
        target.rollback()
        return copied

    def _count_future_rows(
        self, spec: TableSpec, target: Connection, data_type: str, cap: str | None, newest: str | None
    ) -> None:
        """Count, log (once per cycle) and report the rows whose modifier lies beyond the source clock."""
        if cap is None:
            return
        # Same text form on both sides ('YYYY-MM-DD[ hh:mm:ss[.ffffff]]'): compared as text.
        beyond = newest is not None and newest > cap
        rows = future_rows(target, spec.table, spec.modifier or "", data_type, cap) if beyond else 0
        self.status.future_modifier_rows(spec.table, rows)
        if self.metrics is not None:
            self.metrics.future_modifier_rows(spec.table, rows)
        if rows:
            logger.warning(
                "%s: %d row(s) have %s beyond the source clock + %gs (%s; newest %s); "
                "the window starts from the source clock instead, so rows written now still arrive",
                spec.table,
                rows,
                spec.modifier,
                self.settings.max_clock_skew_seconds,
                cap,
                newest,
                extra=log_fields("SYNC_ENGINE", "WATERMARK"),
            )

    def _window(
        self, source: Connection, target: Connection, spec: TableSpec, source_def: TableDefinition, lower: str
    ) -> WindowCheck:
        """Both sides' fingerprints of the window ``modifier >= lower`` (every column of every row)."""
        source.rollback()  # fresh snapshots on both sides
        target.rollback()
        modifier = spec.modifier or ""
        # Values the sanitization policy sets to NULL in the target are hashed as NULL on the source too.
        stored = stored_values(
            source_def.columns, spec.sanitize or self.settings.sanitize_policy, self.settings.target_sql_mode
        )
        in_source = window_fingerprint(source, spec.table, source_def.columns, modifier, lower, stored)
        self._window_rows[spec.table] = int(in_source[0])
        return WindowCheck(
            lower, in_source, window_fingerprint(target, spec.table, source_def.columns, modifier, lower)
        )

    def _settle_window(
        self, spec: TableSpec, source: Connection, target: Connection, source_def: TableDefinition, lower: str
    ) -> int:
        """After loading the window, make the target's window equal the source's where it can.

        A target row in the window whose source row is outside it had its modifier moved back (a
        delete and re-insert with an older value, a clock set back): it is re-copied. A target row
        whose key left the source stays (``deletes: reconcile`` removes it); the window then
        differs for good, which is reported once and not re-read until either side changes.
        Returns the rows re-copied.
        """
        modifier = spec.modifier or ""
        after = self._window(source, target, spec, source_def, lower)
        if after.matches:
            self._settled.pop(spec.table, None)
            return 0
        stray = sorted(
            window_keys(target, spec.table, spec.primary_key, modifier, lower)
            - window_keys(source, spec.table, spec.primary_key, modifier, lower),
            key=repr,
        )
        moved = [k for k in stray if k in keys_in(source, spec.table, spec.primary_key, stray)]
        copied = self._copy_rows(spec, source_def, moved) if moved else 0
        if moved:
            logger.info(
                "%s: %d row(s) had their modifier moved back in the source; re-copied",
                spec.table,
                len(moved),
                extra=log_fields("SYNC_ENGINE", "WINDOW"),
            )
            after = self._window(source, target, spec, source_def, lower)
        if after.matches:
            self._settled.pop(spec.table, None)
        elif self._settled.get(spec.table) != after:
            self._settled[spec.table] = after
            logger.warning(
                "%s: after the load the target's rows with %s >= %s still differ from the "
                "source's (%d there against %d; %d target row(s) whose key the source no longer has%s); not read "
                "again until either side changes",
                spec.table, modifier, lower, after.target[0], after.source[0], len(stray) - len(moved),
                ", removed by deletes: reconcile" if spec.deletes == "reconcile" else ", kept with deletes: ignore",extra=log_fields("SYNC_ENGINE", "WINDOW")
            )  # fmt: skip
        return copied

    def _full_refresh(
        self, spec: TableSpec, mode: PipelineMode, source: Connection, target: Connection, source_def: TableDefinition
    ) -> TableResult:
        target_has_rows = has_rows(target, spec.table)
        source_has_rows = has_rows(source, spec.table)
        source.rollback()
        target.rollback()
        if not target_has_rows and not source_has_rows:
            return TableResult(spec.table, ok=True, skipped=True, mode=mode)
        if target_has_rows and not source_has_rows:
            # Refused before any comparison or shadow load: the target stays exactly as it is.
            check_deletes(
                spec,
                self.settings,
                target_rows=count_rows(target, spec.table),
                deleting=1,
                source_rows=0,
                what="full refresh",
            )
        details: dict[str, Any] = {"refresh": "swap"}
        if target_has_rows:  # an empty target has nothing worth comparing: load it
            outcome = refresh_by_chunks(self.engines, self.settings, self.stop_event, spec, self.load_path())
            differences = outcome.comparison.lower_bound_differences()
            self.status.table_verified(spec.table, differences)
            if self.metrics is not None and differences:
                self.metrics.differences(spec.table, differences)
            details = {
                "refresh": outcome.action,
                "chunks": len(outcome.comparison.chunks),
                "differing_chunks": len(outcome.comparison.differing_chunks),
            }
            if outcome.action == "identical":
                return TableResult(spec.table, ok=True, skipped=True, mode=mode, details=details)
            if outcome.action == "repaired":
                details["rows_deleted"] = outcome.deleted
                return TableResult(spec.table, ok=True, rows=outcome.copied, mode=mode, details=details)
        shadow = f"{spec.table[:52]}__dlt_new"
        retired = f"{spec.table[:52]}__dlt_old"
        target.exec_driver_sql(f"DROP TABLE IF EXISTS {q(shadow)}, {q(retired)}")
        target.exec_driver_sql(f"CREATE TABLE {q(shadow)} LIKE {q(spec.table)}")
        try:
            rows, backend, sanitized = self._load(spec, mode, source_def, shadow, None, into_empty=True)
            if target_has_rows:
                self._guard_swap(spec, target, shadow)
            # One atomic RENAME: readers see the old table or the new one, never neither.
            target.exec_driver_sql(f"RENAME TABLE {q(spec.table)} TO {q(retired)}, {q(shadow)} TO {q(spec.table)}")
            target.exec_driver_sql(f"DROP TABLE {q(retired)}")
        except BaseException:
            target.exec_driver_sql(f"DROP TABLE IF EXISTS {q(shadow)}")
            raise
        return TableResult(
            spec.table, ok=True, rows=rows, mode=mode, backend=backend, sanitized=sanitized, details=details
        )

    def _guard_swap(self, spec: TableSpec, target: Connection, shadow: str) -> None:
        """Refuse the swap when the new copy holds far fewer rows than the table it replaces."""
        target.rollback()
        current, fresh = count_rows(target, spec.table), count_rows(target, shadow)
        check_deletes(
            spec,
            self.settings,
            target_rows=current,
            deleting=current - fresh,
            source_rows=fresh,
            what="full refresh (shadow swap)",
        )
