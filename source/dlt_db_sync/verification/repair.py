"""Acting on comparisons: the comparison set-up, re-copying and deleting target rows (under the
mass-delete guard), delete reconciliation for the cycle and full refresh by chunks.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from dlt_db_sync.config.settings import SanitizePolicy, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.codec import select_list
from dlt_db_sync.data_processing.loader import LoadPath, TargetLoader
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.error_handling.errors import SchemaError, SyncError
from dlt_db_sync.error_handling.retry import RetryPolicy
from dlt_db_sync.pipeline_management.delete_guard import check_deletes
from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.schema_management.tables import (
    describe_table,
    table_exists,
)
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification.chunk_compare import (
    CompareMode,
    CompareSpec,
    Comparison,
    Differences,
    Key,
    build_spec,
    compare_table,
    execute,
    key_condition,
    qi,
)

logger = logging.getLogger("dlt_sync.verification")


CHUNK_SECONDS = 0.5  # time budget of one chunk on the slower server


PARALLEL_CHUNKS = 2  # ranges compared at once (each on both servers concurrently)


REPAIR_FRACTION = 0.1  # full refresh: repair by chunks below this share of differing chunks


DELETE_BATCH = 500  # keys per DELETE transaction


EXISTS_BATCH = 200  # keys per source re-check


FETCH_BATCH = 1_000  # keys per source SELECT when re-copying rows


MAX_DISPLACEMENT_ROUNDS = 5  # re-copies of rows displaced by unique values that moved between rows


def _batched(items: Sequence[Key], size: int) -> Iterator[Sequence[Key]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- comparison set-up
def describe_for_compare(
    engines: Engines, table: str, key: Sequence[str], mode: CompareMode
) -> tuple[TableDefinition, CompareSpec]:
    """The source definition of ``table`` and the comparison spec on ``key`` (read-only).

    Raises:
        SchemaError: the source table is missing or ``key`` is not one of its unique keys.
    """
    with engines.source.connect() as source, engines.target.connect() as target:
        if not table_exists(source, table):
            raise SchemaError(f"table {table!r} does not exist in the source database")
        source_def = describe_table(source, table)
        return source_def, build_spec(source, target, source_def, key, mode)


def compare(engines: Engines, stop_event: threading.Event, spec: CompareSpec, **kwargs: Any) -> Comparison:
    """:func:`chunk_compare.compare_table` with this module's time budget and parallelism."""
    kwargs.setdefault("time_budget", CHUNK_SECONDS)
    kwargs.setdefault("parallel", PARALLEL_CHUNKS)
    return compare_table(engines, spec, stop_event, **kwargs)


# --------------------------------------------------------------------------- target writes
def collation_folds(col: Column) -> bool:
    """Whether ``col``'s collation holds different strings equal ('a' = 'A', 'a' = 'a ')."""
    return col.charset is not None and not col.is_binary and not (col.collation or "").endswith("_bin")


def exact_key_match(columns: Sequence[Column]) -> tuple[str, Any]:
    """One key's equality, byte for byte: (condition, function key -> parameters).

    A folding column is compared twice: by its own collation (so its index is used) and under
    ``utf8mb4_bin`` (so 'a' does not find 'A').
    """
    parts: list[str] = []
    for col in columns:
        name = qi(col.name)
        parts.append(f"{name} = %s AND {name} = %s COLLATE utf8mb4_bin" if collation_folds(col) else f"{name} = %s")
    doubled = [collation_folds(c) for c in columns]

    def params(key: Key) -> list[Any]:
        return [v for v, twice in zip(key, doubled, strict=True) for v in ((v, v) if twice else (v,))]

    return " AND ".join(parts), params


def absent_in_source(engines: Engines, spec: CompareSpec, keys: Sequence[Key], exact: bool = False) -> list[Key]:
    """The keys among ``keys`` that the source does not hold: by the server's own key equality, or
    with ``exact`` byte for byte (repair: 'A' in the target is not the source's 'a')."""
    absent: list[Key] = []
    condition = " AND ".join(f"{qi(k)} = %s" for k in spec.key)
    params: Any = list
    if exact:
        condition, params = exact_key_match(spec.key_columns)
    for batch in _batched(keys, EXISTS_BATCH):
        sql = " UNION ALL ".join(f"(SELECT {i} FROM {qi(spec.table)} WHERE {condition})" for i in range(len(batch)))
        with engines.source.connect() as conn:
            found = {int(r[0]) for r in execute(conn, sql, [v for k in batch for v in params(k)]).fetchall()}
        absent.extend(k for i, k in enumerate(batch) if i not in found)
    return absent


def _delete_batch(engines: Engines, stop_event: threading.Event, spec: CompareSpec, keys: Sequence[Key]) -> int:
    where, params = key_condition(spec.key, keys)
    with engines.write_slot(stop_event), engines.target.begin() as conn:
        return int(execute(conn, f"DELETE FROM {qi(spec.table)} WHERE {where}", params).rowcount)


def delete_target_rows(
    engines: Engines,
    settings: Settings,
    stop_event: threading.Event,
    spec: CompareSpec,
    keys: Sequence[Key],
    exact: bool = False,
    *,
    on_recovered: Callable[[float], None] | None = None,
) -> int:
    """Delete from the target those of ``keys`` the source no longer holds; returns rows deleted.

    ``exact``: compare keys byte for byte (see :func:`absent_in_source`); repair re-copies the
    source's row afterwards. Delete reconciliation keeps the collation's equality. Each delete
    statement is retried on its own (``on_recovered`` gets the seconds a retried one took to succeed).
    """
    retry = RetryPolicy.from_settings(settings)
    deleted = 0
    for batch in _batched(keys, DELETE_BATCH):
        gone = absent_in_source(engines, spec, batch, exact)
        if not gone:
            continue
        deleted += retry.call(
            functools.partial(_delete_batch, engines, stop_event, spec, gone),
            what=f"deleting {len(gone)} rows from {spec.table}",
            stop_event=stop_event,
            on_recovered=on_recovered,
        )
    return deleted


def _arrow(columns: Sequence[Column], rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Rows of the exact projection (text or bytes per column) as an Arrow table."""
    arrays = {
        c.name: pa.array([r[i] for r in rows], type=pa.binary() if c.is_binary else pa.string())
        for i, c in enumerate(columns)
    }
    return pa.table(arrays)


def source_rows(
    engines: Engines, source_def: TableDefinition, key: Sequence[str], keys: Sequence[Key]
) -> Iterator[pa.Table]:
    """The source rows with ``keys`` in the exact projection of ``select_list``, batch by batch."""
    columns = source_def.loaded_columns
    projection = select_list(columns).replace("%", "%%")
    for batch in _batched(keys, FETCH_BATCH):
        where, params = key_condition(key, batch)
        with engines.source.connect() as conn:
            rows = execute(conn, f"SELECT {projection} FROM {qi(source_def.name)} WHERE {where}", params).fetchall()
        yield _arrow(columns, rows)


def copy_rows(
    engines: Engines,
    settings: Settings,
    stop_event: threading.Event,
    load_path: LoadPath,
    source_def: TableDefinition,
    key: Sequence[str],
    keys: Sequence[Key],
    sanitize: SanitizePolicy = "error",
    *,
    on_recovered: Callable[[float], None] | None = None,
) -> int:
    """Upsert the source's current version of the rows with ``keys`` into the target (under the
    table's sanitization policy ``sanitize``, as a sync would; ``on_recovered`` as for the loader)."""
    copied = 0
    for _round in range(MAX_DISPLACEMENT_ROUNDS):
        if not keys:
            return copied
        loader = TargetLoader(
            engines,
            settings,
            stop_event,
            load_path,
            sanitize=sanitize,
            label=source_def.name,
            on_recovered=on_recovered,
        )
        batches = source_rows(engines, source_def, key, keys)
        copied += loader.load(
            source_def.name,
            source_def.loaded_columns,
            tuple(key),
            batches,
            into_empty=False,
            chunk_rows=settings.chunk_size,
        )
        # Rows whose stale unique values blocked these copies were removed; bring their current version.
        keys = loader.displaced_keys
    raise SyncError(
        f"table {source_def.name!r}: unique values kept moving between rows while re-copying them "
        f"({len(keys)} row(s) still displaced after {MAX_DISPLACEMENT_ROUNDS} rounds); the next cycle tries again"
    )


def repair_differences(
    engines: Engines,
    settings: Settings,
    stop_event: threading.Event,
    load_path: LoadPath,
    source_def: TableDefinition,
    spec: CompareSpec,
    differences: Differences,
    sanitize: SanitizePolicy = "error",
    *,
    on_recovered: Callable[[float], None] | None = None,
) -> tuple[int, int]:
    """Delete the extra rows, then re-copy the missing and changed ones; (copied, deleted).

    Deleting first matters: a key equal to another under the column's collation ('a' and 'A')
    must not have its re-copied row removed afterwards.
    """
    deleted = delete_target_rows(
        engines, settings, stop_event, spec, differences.extra, exact=True, on_recovered=on_recovered
    )
    copied = copy_rows(
        engines,
        settings,
        stop_event,
        load_path,
        source_def,
        spec.key,
        differences.missing + differences.changed,
        sanitize,
        on_recovered=on_recovered,
    )
    return copied, deleted


def guard_comparison(spec: TableSpec, settings: Settings, comparison: Comparison, deleting: int, what: str) -> None:
    """:func:`delete_guard.check_deletes` with the row counts of ``comparison`` (both sides)."""
    check_deletes(
        spec,
        settings,
        target_rows=comparison.target_rows,
        deleting=deleting,
        source_rows=comparison.source_rows,
        what=what,
    )


# --------------------------------------------------------------------------- delete propagation
@dataclass
class ReconcileSchedule:
    """When a ``"deletes": "reconcile"`` table is due (state of one TableSyncer, not global).

    Due at the first successful sync, then every ``reconcile_every_cycles`` syncs (default 1
    when neither setting is given) or once ``reconcile_every_minutes`` have passed, whichever
    comes first when both are given.
    """

    syncs_since: dict[str, int] = field(default_factory=dict)
    last_run: dict[str, float] = field(default_factory=dict)

    def due(self, spec: TableSpec, now: float | None = None) -> bool:
        """Count one successful sync of ``spec`` and say whether reconciliation should run now."""
        if spec.deletes != "reconcile":
            return False
        now = time.monotonic() if now is None else now
        count = self.syncs_since[spec.table] = self.syncs_since.get(spec.table, 0) + 1
        last = self.last_run.get(spec.table)
        if last is None:
            return True
        cycles = spec.reconcile_every_cycles or (1 if spec.reconcile_every_minutes is None else None)
        if cycles is not None and count >= cycles:
            return True
        return spec.reconcile_every_minutes is not None and now - last >= spec.reconcile_every_minutes * 60

    def done(self, table: str, now: float | None = None) -> None:
        """Reconciliation of ``table`` succeeded."""
        self.syncs_since[table] = 0
        self.last_run[table] = time.monotonic() if now is None else now


def reconcile_deletes(
    engines: Engines,
    settings: Settings,
    stop_event: threading.Event,
    spec: TableSpec,
    *,
    on_recovered: Callable[[float], None] | None = None,
) -> tuple[int, Comparison]:
    """Delete the target rows whose key no longer exists in the source; (rows deleted, comparison)."""
    _source_def, compare_spec = describe_for_compare(engines, spec.table, spec.primary_key, "keys")
    comparison = compare(engines, stop_event, compare_spec)
    extra = comparison.differences.extra if comparison.differences else []
    guard_comparison(spec, settings, comparison, len(extra), "delete reconciliation")
    deleted = (
        delete_target_rows(engines, settings, stop_event, compare_spec, extra, on_recovered=on_recovered)
        if extra
        else 0
    )
    logger.info(
        "%s: %d chunks compared by key, %d differing, %d target rows without source row, %d deleted in %.2fs",
        spec.table,
        len(comparison.chunks),
        len(comparison.differing_chunks),
        len(extra),
        deleted,
        comparison.seconds,
        extra=log_fields("VERIFY", "DELETES"),
    )
    return deleted, comparison


# --------------------------------------------------------------------------- full refresh
@dataclass
class RefreshOutcome:
    """What the chunked comparison decided for a full-refresh table."""

    action: Literal["identical", "repaired", "swap"]
    comparison: Comparison
    copied: int = 0
    deleted: int = 0


def refresh_by_chunks(
    engines: Engines,
    settings: Settings,
    stop_event: threading.Event,
    spec: TableSpec,
    load_path: LoadPath,
    max_fraction: float = REPAIR_FRACTION,
    *,
    on_recovered: Callable[[float], None] | None = None,
) -> RefreshOutcome:
    """Compare all columns; repair the differing rows when under ``max_fraction`` of the chunks
    differ, else leave the reload (shadow swap) to the caller."""
    source_def, compare_spec = describe_for_compare(engines, spec.table, spec.primary_key, "rows")

    def few(found: Comparison) -> bool:
        return 0 < len(found.differing_chunks) < max_fraction * len(found.chunks)

    comparison = compare(engines, stop_event, compare_spec, resolve=few)
    if comparison.identical:
        return RefreshOutcome("identical", comparison)
    if comparison.differences is None:
        return RefreshOutcome("swap", comparison)
    guard_comparison(spec, settings, comparison, len(comparison.differences.extra), "full refresh (repair by chunks)")
    copied, deleted = repair_differences(
        engines,
        settings,
        stop_event,
        load_path,
        source_def,
        compare_spec,
        comparison.differences,
        spec.sanitize or settings.sanitize_policy,
        on_recovered=on_recovered,
    )
    logger.info(
        "%s: %d of %d chunks differed; repaired by chunks: %d rows copied, %d deleted",
        spec.table,
        len(comparison.differing_chunks),
        len(comparison.chunks),
        copied,
        deleted,
        extra=log_fields("VERIFY", "REFRESH"),
    )
    return RefreshOutcome("repaired", comparison, copied, deleted)
