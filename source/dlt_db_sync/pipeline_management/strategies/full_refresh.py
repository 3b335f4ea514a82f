"""The full-refresh strategy: compare by chunks, repair a few rows, or load a shadow and swap it in.

A chunked checksum comparison (``verification.refresh_by_chunks``) leaves an identical table
alone and repairs the differing rows when few chunks differ; otherwise a shadow table is loaded
and swapped in with one atomic ``RENAME TABLE`` so readers never see an empty or half-filled
table. The repair and the swap ask :mod:`~dlt_db_sync.pipeline_management.delete_guard` first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from dlt_db_sync.config.settings import PipelineMode
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.pipeline_management.change_detection import count_rows, has_rows
from dlt_db_sync.pipeline_management.context import SyncContext
from dlt_db_sync.pipeline_management.delete_guard import check_deletes
from dlt_db_sync.pipeline_management.strategies.base import CopyStrategy, TableResult
from dlt_db_sync.pipeline_management.strategies.transfer import Transfer
from dlt_db_sync.schema_management.model import TableDefinition
from dlt_db_sync.verification.repair import refresh_by_chunks

T = TypeVar("T")


def shadow_names(table: str) -> tuple[str, str]:
    """(the shadow table loaded next to ``table``, the name the old table is retired to)."""
    return f"{table[:52]}__dlt_new", f"{table[:52]}__dlt_old"


def load_and_swap(
    target: Connection, table: str, load: Callable[[str], T], guard: Callable[[str], None] | None = None
) -> T:
    """Load a shadow copy of ``table`` with ``load(shadow)`` and swap it in with one atomic RENAME.

    ``guard(shadow)`` may refuse the swap (raising) after the load. On any failure the shadow is
    dropped and ``table`` is left exactly as it was.
    """
    shadow, retired = shadow_names(table)
    target.exec_driver_sql(f"DROP TABLE IF EXISTS {q(shadow)}, {q(retired)}")
    target.exec_driver_sql(f"CREATE TABLE {q(shadow)} LIKE {q(table)}")
    try:
        result = load(shadow)
        if guard is not None:
            guard(shadow)
        # One atomic RENAME: readers see the old table or the new one, never neither.
        target.exec_driver_sql(f"RENAME TABLE {q(table)} TO {q(retired)}, {q(shadow)} TO {q(table)}")
        target.exec_driver_sql(f"DROP TABLE {q(retired)}")
    except BaseException:
        target.exec_driver_sql(f"DROP TABLE IF EXISTS {q(shadow)}")
        raise
    return result


class FullRefreshStrategy(CopyStrategy):
    """Syncs a table without a modifier (or ``sync_strategy: full_refresh``) as a whole."""

    name = "full_refresh"

    def __init__(self, context: SyncContext, transfer: Transfer | None = None) -> None:
        super().__init__(context)
        self.transfer = transfer or Transfer(context)

    def run(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source: Connection,
        target: Connection,
        source_def: TableDefinition,
        backfill: bool = False,
    ) -> TableResult:
        """Leave an identical table alone, repair a few differing chunks, else reload it by a shadow swap.

        ``backfill`` changes nothing here: every row is compared or reloaded anyway.
        """
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
            outcome = refresh_by_chunks(
                self.engines,
                self.settings,
                self.stop_event,
                spec,
                self.context.load_path,
                on_recovered=self.context.recovered,
            )
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
        rows, backend, sanitized = load_and_swap(
            target,
            spec.table,
            lambda shadow: self.transfer.load(spec, mode, source_def, shadow, None, into_empty=True),
            (lambda shadow: self._guard_swap(spec, target, shadow)) if target_has_rows else None,
        )
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
