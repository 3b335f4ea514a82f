"""The cycle: which tables this replica syncs, in batches, each by its strategy, each reported.

The syncer only schedules. Per cycle it cleans the staging directory, takes its table leases,
reads every table's signature on both sides (two queries), then syncs the tables in batches of
``BATCH_SIZE``; per table it chooses the strategy (:meth:`TableSyncer.strategy_for`: incremental
or full refresh, then delete reconciliation when due), re-plans a table once after a transient
error no inner layer retried (see :mod:`dlt_db_sync.error_handling.retry`), classifies a failure
and reports the result to the log, health and metrics. One failing table never stops the others.

How a table is synced lives in :mod:`.strategies` (one class per strategy, one interface); what
they share (engines, settings, stop event, status, metrics, leases, the target's capabilities
probed once) in :class:`~.context.SyncContext`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from dlt_db_sync.config.settings import PipelineMode, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.extraction import limit_malloc_arenas
from dlt_db_sync.database.engines import Engines, check_connectivity
from dlt_db_sync.database.sync_state import ensure_state_table
from dlt_db_sync.error_handling.errors import (
    DatabaseError,
    DataError,
    SchemaError,
    ShutdownRequested,
    StagingError,
    SyncError,
    describe_error,
    is_connection_error,
    is_transient,
    mysql_error_code,
)
from dlt_db_sync.pipeline_management.context import SyncContext, TargetCapabilities, table_mode
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused
from dlt_db_sync.pipeline_management.strategies.base import SyncStrategy, TableResult
from dlt_db_sync.pipeline_management.strategies.full_refresh import FullRefreshStrategy
from dlt_db_sync.pipeline_management.strategies.incremental import IncrementalStrategy
from dlt_db_sync.pipeline_management.strategies.reconcile import ReconcileStrategy
from dlt_db_sync.pipeline_management.strategies.transfer import Transfer
from dlt_db_sync.utils.logging_setup import log_fields

if TYPE_CHECKING:
    from dlt_db_sync.database.leases import LeaseManager
    from dlt_db_sync.monitoring.metrics import Metrics
    from dlt_db_sync.monitoring.run_state import SyncStatus

__all__ = ["TableResult", "TableSyncer", "error_category", "table_mode"]

logger = logging.getLogger("dlt_sync.pipeline_management")


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


def default_strategies(context: SyncContext) -> dict[str, SyncStrategy]:
    """One instance of each table strategy, keyed by ``TableSpec.strategy``, sharing one transfer."""
    transfer = Transfer(context)
    return {
        IncrementalStrategy.name: IncrementalStrategy(context, transfer),
        FullRefreshStrategy.name: FullRefreshStrategy(context, transfer),
    }


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
        self._context: SyncContext | None = None  # built by prepare(), with the probed capabilities
        self.strategies: Mapping[str, SyncStrategy] = {}
        self._reconcile: ReconcileStrategy | None = None

    # ----------------------------------------------------------------- set-up
    @classmethod
    def from_context(
        cls,
        context: SyncContext,
        strategies: Mapping[str, SyncStrategy] | None = None,
        reconcile: ReconcileStrategy | None = None,
    ) -> TableSyncer:
        """A syncer on an already built context (``prepare`` builds one from the probed target)."""
        syncer = cls(
            context.engines, context.settings, context.status, context.stop_event, context.metrics, context.leases
        )
        syncer._install(context, strategies, reconcile)
        return syncer

    def _install(
        self,
        context: SyncContext,
        strategies: Mapping[str, SyncStrategy] | None = None,
        reconcile: ReconcileStrategy | None = None,
    ) -> None:
        self._context = context
        self.strategies = strategies if strategies is not None else default_strategies(context)
        self._reconcile = reconcile or ReconcileStrategy(context)

    @property
    def context(self) -> SyncContext:
        """What the strategies share; exists once :meth:`prepare` succeeded."""
        if self._context is None:
            raise RuntimeError("TableSyncer.prepare() must succeed before tables are synced")
        return self._context

    def prepare(self) -> None:
        """Create the bookkeeping table and probe the target's capabilities (once; cheap to call again)."""
        if self._context is not None:
            return
        limit_malloc_arenas()  # before the first extraction thread: keeps the resident size flat
        # Fail fast with one line naming the database (wrong password, unreachable host).
        check_connectivity(self.engines)
        try:
            capabilities = TargetCapabilities.probe(self.engines)
            for role, info in capabilities.servers.items():
                self.status.set_server_info(role, info.as_dict())
            with self.engines.target.begin() as conn:
                ensure_state_table(conn)
        except SQLAlchemyError as exc:
            message = f"cannot prepare the target database {self.settings.target.describe()}: {describe_error(exc)}"
            raise DatabaseError(message, mysql_error_code(exc), transient=is_transient(exc)) from exc
        capabilities.log()
        self._install(
            SyncContext(
                self.engines, self.settings, self.stop_event, self.status, capabilities, self.metrics, self.leases
            )
        )

    def strategy_for(self, spec: TableSpec) -> SyncStrategy:
        """The strategy that syncs ``spec``: its ``strategy`` (``auto`` resolved by the modifier)."""
        return self.strategies[spec.strategy]

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
                self.context.schemas.refresh(source, target, [spec.table for spec in specs])
        except SQLAlchemyError as exc:
            # Each table then gets its full check, which reports the error itself.
            logger.warning(
                "cannot read table signatures: %s", describe_error(exc), extra=log_fields("SCHEMA_SYNC", "SIGNATURES")
            )
            self.context.schemas.invalidate()

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
        context = self.context
        self.status.table_started(spec.table)
        started = time.monotonic()
        mode = table_mode(spec, self.settings)
        strategy = self.strategy_for(spec)
        try:
            result = self._replanned(lambda: strategy.sync(spec, mode), f"syncing {spec.table}")
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
            context.schemas.forget(spec.table)
            strategy.forget(spec.table)
        if result.ok and self._reconciler().due(spec):
            result = self._reconcile_deletes(spec, mode, result)
        result.seconds = time.monotonic() - started
        self._report(spec, result)
        return result

    def _replanned(self, run: Callable[[], TableResult], what: str) -> TableResult:
        """``run``, started over at most once after a transient error no inner layer retried."""
        context = self.context
        return context.retry.replan().call(
            run,
            what=what,
            stop_event=self.stop_event,
            on_retry=context.rebuild_pools,
            on_recovered=context.recovered,
        )

    def _reconciler(self) -> ReconcileStrategy:
        if self._reconcile is None:
            raise RuntimeError("TableSyncer.prepare() must succeed before tables are synced")
        return self._reconcile

    def _reconcile_deletes(self, spec: TableSpec, mode: PipelineMode, result: TableResult) -> TableResult:
        """Delete the target rows whose key left the source; a failure fails the table's result."""
        reconciler = self._reconciler()
        try:
            outcome = self._replanned(lambda: reconciler.sync(spec, mode), f"reconciling deletes of {spec.table}")
        except ShutdownRequested:
            return result  # the sync itself is done; the next run reconciles
        except (SyncError, Exception) as exc:  # noqa: BLE001 - reported as this table's failure
            self._guard_refused(exc)
            message = f"delete reconciliation failed: {describe_error(exc)}"
            logger.error("%s: %s", spec.table, message, extra=log_fields("SYNC_ENGINE", "DELETES"))
            logger.debug("%s traceback", spec.table, exc_info=True, extra=log_fields("SYNC_ENGINE", "DELETES"))
            return TableResult(spec.table, ok=False, mode=result.mode, error=message, category=error_category(exc))
        result.details["rows_deleted"] = outcome.details["rows_deleted"]
        return result

    def _guard_refused(self, exc: BaseException) -> None:
        """Report a refusal of the mass-delete guard to health and metrics (other errors: nothing)."""
        if isinstance(exc, MassDeleteRefused):
            self.status.delete_refused(exc.table, str(exc))
            if self.metrics is not None:
                self.metrics.delete_refused(exc.table)

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
                f"/{result.backend} via {'LOAD DATA' if self.context.capabilities.local_infile else 'INSERT'}"
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
