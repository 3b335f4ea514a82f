"""The incremental strategy: the window above the target's watermark, fingerprinted, then loaded.

The lower bound is ``max(modifier)`` in the target minus the lookback window (or a bound left
pending by an unfinished load); a cheap fingerprint of the window on both sides (count, max and a
checksum of every column, answered from the modifier index) skips tables where nothing changed;
otherwise the window is extracted and upserted chunk by chunk.

Guard rails (issue 14): the lower bound starts from the newest modifier not beyond the source's
clock plus ``MAX_CLOCK_SKEW_SECONDS`` (rows dated in the future are counted, not followed); rows
whose modifier is NULL are fingerprinted through the modifier index every cycle and re-copied
when they differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from dlt_db_sync.config.settings import PipelineMode
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.sanitization import stored_values
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.database.sync_state import mark_done, mark_pending, read_state
from dlt_db_sync.error_handling.errors import SchemaError
from dlt_db_sync.index_management import advise_source_modifier_index
from dlt_db_sync.pipeline_management.change_detection import (
    Fingerprint,
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
from dlt_db_sync.pipeline_management.context import SyncContext
from dlt_db_sync.pipeline_management.strategies.base import CopyStrategy, TableResult
from dlt_db_sync.pipeline_management.strategies.transfer import Transfer
from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification.chunk_compare import row_hash_sql

logger = logging.getLogger("dlt_sync.pipeline_management")


@dataclass(frozen=True)
class WindowCheck:
    """Both sides' fingerprints of one incremental window."""

    lower: str
    source: Fingerprint
    target: Fingerprint

    @property
    def matches(self) -> bool:
        return self.source == self.target


class IncrementalStrategy(CopyStrategy):
    """Syncs a table with a ``modifier`` column through the window above the target's watermark."""

    name = "incremental"

    def __init__(self, context: SyncContext, transfer: Transfer | None = None) -> None:
        super().__init__(context)
        self.transfer = transfer or Transfer(context)
        self._advised: set[str] = set()  # tables whose source index advice was logged
        self._window_rows: dict[str, int] = {}  # rows in the source window, counted by the fingerprint
        # The window check after a load that could not make both sides equal (see _settle_window).
        self._settled: dict[str, WindowCheck] = {}
        self._null_indexes: dict[str, tuple[str | None, str | None]] = {}  # modifier index per side (NULL rows)
        self._null_settled: dict[str, tuple[Any, Any]] = {}  # NULL-row fingerprints left after the last re-copy

    def forget(self, table: str) -> None:
        """The modifier indexes are looked up again (the table may have been altered)."""
        self._null_indexes.pop(table, None)

    def run(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source: Connection,
        target: Connection,
        source_def: TableDefinition,
        backfill: bool = False,
    ) -> TableResult:
        """Load the window above the target's watermark unless both sides' fingerprints of it match."""
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
        window_rows = self._window_rows.pop(spec.table, None) if lower is not None else None
        rows, backend, sanitized = self.transfer.load(
            spec, mode, source_def, spec.table, lower, into_empty, window_rows, created=spec.table in self.created
        )
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
        """(newest modifier in the target, the window's lower bound) under the lookback settings."""
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
        copied = self.transfer.copy_rows(spec, source_def, stale)
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
        copied = self.transfer.copy_rows(spec, source_def, moved) if moved else 0
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
