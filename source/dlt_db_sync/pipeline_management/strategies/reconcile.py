"""Delete reconciliation: target rows whose key left the source are deleted, when due.

An incremental table with ``"deletes": "reconcile"`` gets a key-only comparison after a
successful sync when its schedule says so (``reconcile_every_cycles`` /
``reconcile_every_minutes``; see :class:`~dlt_db_sync.verification.repair.ReconcileSchedule`).
Full-refresh tables need none: the refresh itself removes such rows. The deletion asks
:mod:`~dlt_db_sync.pipeline_management.delete_guard` first.
"""

from __future__ import annotations

from dlt_db_sync.config.settings import PipelineMode
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.pipeline_management.context import SyncContext
from dlt_db_sync.pipeline_management.strategies.base import SyncStrategy, TableResult
from dlt_db_sync.verification.repair import ReconcileSchedule, reconcile_deletes


class ReconcileStrategy(SyncStrategy):
    """Deletes the target rows whose key no longer exists in the source."""

    name = "reconcile"

    def __init__(self, context: SyncContext) -> None:
        super().__init__(context)
        self.schedule = ReconcileSchedule()  # when each "deletes": "reconcile" table is due

    def due(self, spec: TableSpec) -> bool:
        """Count one successful sync of ``spec`` and say whether its reconciliation runs now."""
        return spec.strategy == "incremental" and self.schedule.due(spec)

    def sync(self, spec: TableSpec, mode: PipelineMode) -> TableResult:
        """Compare keys and delete the extra target rows; ``details["rows_deleted"]`` says how many."""
        deleted, _comparison = reconcile_deletes(
            self.engines, self.settings, self.stop_event, spec, on_recovered=self.context.recovered
        )
        self.schedule.done(spec.table)
        if deleted:
            self.status.table_deleted(spec.table, deleted)
            if self.metrics is not None:
                self.metrics.rows_deleted(spec.table, deleted)
        return TableResult(spec.table, ok=True, mode=mode, details={"rows_deleted": deleted})
