"""The interface every sync strategy implements, and the part the row-copying ones share.

A strategy syncs one table in one call, ``sync(spec, mode) -> TableResult``, reading everything
else from the :class:`~dlt_db_sync.pipeline_management.context.SyncContext` it was built with.
It raises on failure (the cycle classifies, reports and re-plans; see ``syncer``) and keeps
whatever it remembers between cycles on its own instance (one instance per syncer, never global);
``forget(table)`` drops that after a failure.

The strategies today:

* :class:`~.incremental.IncrementalStrategy` -- the window above the target's watermark;
* :class:`~.full_refresh.FullRefreshStrategy` -- chunked comparison, repair or shadow swap;
* :class:`~.reconcile.ReconcileStrategy` -- delete reconciliation, run after an incremental sync
  when due.

The first two derive from :class:`CopyStrategy`, which opens one connection pair, checks the
schema on both sides (creating or evolving the target table) and then calls ``run``.

Adding a strategy: subclass :class:`SyncStrategy` (or :class:`CopyStrategy` when it needs the
schema check), give it a ``name``, add it to ``syncer.default_strategies`` and let
``TableSpec.strategy`` resolve to that name for the tables that choose it (``sync_strategy`` in
tables.json); ``TableSyncer.strategy_for`` then hands those tables to it.

The binlog is the one streaming strategy, and it does not take this call: sub-second lag cannot
wait for the next cycle, so :class:`~dlt_db_sync.pipeline_management.binlog.stream.BinlogStrategy`
runs in a thread of its own beside the cycle (``start``/``join`` in the daemon, ``catch_up`` for
``--once``), and the cycle never sees its tables (``binlog.tables.split_binlog_tables`` takes them
out, or hands them back to the cursor strategies with ``BINLOG_FALLBACK=incremental``). It keeps
the rest of this contract: one instance per process and source, nothing global; its position lives
in the target's ``_dlt_sync_state`` so a restart resumes; it waits only with
``stop_event.wait`` and commits or rolls back its open target transaction soon after ``stop_event``
is set; and
it reuses the cycle's pieces rather than its own copies: a table's snapshot is this package's
full-refresh strategy, run through a ``TableSyncer``; the cycle's leases have a stream-wide
counterpart (``binlog.lease``); reports go to the same ``SyncStatus`` and metrics.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.engine import Connection

from dlt_db_sync.config.settings import PipelineMode, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.error_handling.errors import SchemaError
from dlt_db_sync.index_management import check_merge_key, ensure_modifier_index
from dlt_db_sync.pipeline_management.context import SyncContext
from dlt_db_sync.schema_management.model import SchemaChanges, TableDefinition
from dlt_db_sync.schema_management.tables import add_unique_keys, ensure_target_table, fetch_columns, table_exists

if TYPE_CHECKING:
    from dlt_db_sync.monitoring.metrics import Metrics
    from dlt_db_sync.monitoring.run_state import SyncStatus


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


class SyncStrategy(ABC):
    """One way of bringing a table's target copy in step with its source."""

    name: ClassVar[str]

    def __init__(self, context: SyncContext) -> None:
        self.context = context

    @abstractmethod
    def sync(self, spec: TableSpec, mode: PipelineMode) -> TableResult:
        """Sync ``spec`` once; raise on failure (the cycle classifies and reports it)."""

    def forget(self, table: str) -> None:
        """Drop what this strategy remembers about ``table`` (after the table failed)."""
        return  # by default a strategy remembers nothing between cycles

    # Shorthands for the context's parts, so the strategies read like the methods they came from.
    @property
    def engines(self) -> Engines:
        return self.context.engines

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def stop_event(self) -> threading.Event:
        return self.context.stop_event

    @property
    def status(self) -> SyncStatus:
        return self.context.status

    @property
    def metrics(self) -> Metrics | None:
        return self.context.metrics


class CopyStrategy(SyncStrategy):
    """A strategy that copies rows over one source/target connection pair after the schema check."""

    def __init__(self, context: SyncContext) -> None:
        super().__init__(context)
        # Target tables created by the current attempt: their first load may build the secondary
        # indexes after the rows are in (schema_management.deferred_indexes).
        self.created: set[str] = set()

    def sync(self, spec: TableSpec, mode: PipelineMode) -> TableResult:
        self.created.discard(spec.table)  # only a table this attempt creates
        with self.engines.source.connect() as source, self.engines.target.connect() as target:
            source_def, changes = self._check_schema(spec, source, target)
            if changes.created:
                self.created.add(spec.table)
            # A new column (or a renamed one) holds values in rows outside the window too.
            result = self.run(spec, mode, source, target, source_def, backfill=changes.needs_backfill)
            if changes.unique_keys_to_add:
                target.rollback()
                add_unique_keys(target, spec.table, changes.unique_keys_to_add)
            return result

    @abstractmethod
    def run(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source: Connection,
        target: Connection,
        source_def: TableDefinition,
        backfill: bool,
    ) -> TableResult:
        """Copy what differs, the target table now matching the source's definition."""

    def _check_schema(
        self, spec: TableSpec, source: Connection, target: Connection
    ) -> tuple[TableDefinition, SchemaChanges]:
        """The source's definition, the target table created or evolved to match (cached while unchanged)."""
        schemas = self.context.schemas
        changes = SchemaChanges()
        source_def = schemas.lookup(spec.table)  # None unless both sides are unchanged
        if source_def is None:
            # Check the key before anything is created in the target for a table that cannot be merged.
            if not table_exists(source, spec.table):
                raise SchemaError(f"table {spec.table!r} does not exist in the source database")
            present = {col.name.lower() for col in fetch_columns(source, spec.table)}
            missing = [c for c in spec.primary_key if c.lower() not in present]
            if missing:
                raise SchemaError(f"table {spec.table!r}: primary_key column(s) {missing} do not exist in the source")
            check_merge_key(source, spec.table, spec.primary_key)
            source_def, changes = ensure_target_table(source, target, spec.table)
            if spec.strategy == "incremental" and spec.modifier and source_def.column(spec.modifier) is not None:
                ensure_modifier_index(target, spec.table, spec.modifier)
            schemas.remember(spec.table, source_def)
        return source_def, changes
