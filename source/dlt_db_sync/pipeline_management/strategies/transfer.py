"""Extracting a table's rows and loading them into the target: the part the strategies share.

Rows are read in a background thread while the previous chunk loads (direct mode) or through
Parquet part files (file_staging mode), then written chunk by chunk by the
:class:`~dlt_db_sync.data_processing.loader.TargetLoader`, each chunk its own transaction and its
own unit of retry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pyarrow as pa

from dlt_db_sync.config.settings import PipelineMode
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.extraction import (
    Backend,
    Paging,
    choose_backend,
    extract,
    pageable_key,
    prefetch,
)
from dlt_db_sync.data_processing.loader import TargetLoader, rechunk
from dlt_db_sync.error_handling.errors import ExtractionBackendError, describe_error, mysql_error_code
from dlt_db_sync.pipeline_management.context import SyncContext
from dlt_db_sync.schema_management.deferred_indexes import deferred_index_load
from dlt_db_sync.schema_management.model import TableDefinition
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.utils.progress import progress
from dlt_db_sync.verification.repair import copy_rows

logger = logging.getLogger("dlt_sync.pipeline_management")

# In direct mode connectorx reads at most this many chunks per query (see Transfer._extraction_plan).
DIRECT_CONNECTORX_PAGE_CHUNKS = 2


class Transfer:
    """Moves one table's rows from the source into the target (extract, then load)."""

    def __init__(self, context: SyncContext) -> None:
        self.context = context

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
        context = self.context
        rows = context.chunk_rows(spec)
        batches = extract(context.engines, context.settings, source_def, spec.modifier, lower, rows, backend, paging)
        if mode == "file_staging":
            from dlt_db_sync.data_processing.file_staging import staged_batches

            count = context.metrics.staging_operation if context.metrics is not None else None
            return staged_batches(context.settings, spec.table, batches, rows, count)
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
        page_rows = DIRECT_CONNECTORX_PAGE_CHUNKS * self.context.chunk_rows(spec)
        if mode != "direct" or backend != "connectorx" or expected_rows is None or expected_rows <= page_rows:
            return backend, None
        key = pageable_key(source_def, spec.primary_key)
        if key is not None:
            return backend, Paging(key, page_rows)
        if self.context.settings.extract_backend != "auto":
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
        with self.context.engines.source.connect() as conn:
            value = conn.exec_driver_sql(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                (table,),
            ).scalar()
        return int(value) if value else None

    def load(
        self,
        spec: TableSpec,
        mode: PipelineMode,
        source_def: TableDefinition,
        table: str,
        lower: str | None,
        into_empty: bool,
        window_rows: int | None = None,
        *,
        created: bool = False,
    ) -> tuple[int, str, dict[str, int]]:
        """Extract and load; returns (rows, backend, values per column the sanitization policy set to NULL).

        ``table`` is where rows go (a shadow table for a full refresh); ``lower`` the window's lower
        bound (None: every row); ``window_rows`` the source rows the window fingerprint counted;
        ``created``: this attempt created ``table``. A whole-table load into a table created by this
        attempt, or into a full refresh's shadow, goes where nobody reads yet, so the table's plain
        secondary indexes are built once, after the rows are in (:mod:`deferred_indexes`).
        """
        context = self.context
        settings = context.settings
        backend = choose_backend(settings, source_def, spec.modifier)
        loader = TargetLoader(
            context.engines,
            settings,
            context.stop_event,
            context.load_path,
            sanitize=context.sanitize(spec),
            label=spec.table,
            persistent_stage=not context.capabilities.temporary_tables,
            on_recovered=context.recovered,
        )
        estimate = self._row_estimate(spec.table) if lower is None else None
        expected = estimate if lower is None else window_rows
        backend, paging = self._extraction_plan(spec, mode, source_def, backend, expected)

        def run(backend: Backend, into: str) -> int:
            with (
                self._stream(
                    spec, mode, source_def, lower, backend, paging if backend == "connectorx" else None
                ) as batches,
                progress(spec.table, estimate, settings) as bar,
            ):
                return loader.load(
                    into,
                    source_def.loaded_columns,
                    spec.primary_key,
                    batches,
                    into_empty=into_empty,
                    chunk_rows=context.chunk_rows(spec),
                    on_chunk=bar.advance,
                )

        # Rows are about to be extracted, so dlt is needed now anyway (imported in this, the main thread).
        from dlt.extract.exceptions import ResourceExtractionError

        whole_table = lower is None and table == spec.table
        fresh = whole_table and into_empty and created
        with deferred_index_load(
            context.engines.target,
            table,
            mode="fresh" if fresh else "shadow" if into_empty and table != spec.table else "none",
            label=spec.table,
            leftover=whole_table,
        ) as into:
            try:
                rows = run(backend, into)
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
                rows = run(backend, into)
        if loader.displaced_keys:
            # Rows whose unique values the load gave to other rows: bring their current version.
            rows += self.copy_rows(spec, source_def, loader.displaced_keys)
        loader.sanitized.log(spec.table)  # once per table and cycle
        return rows, backend, dict(loader.sanitized.counts)

    def copy_rows(self, spec: TableSpec, source_def: TableDefinition, keys: Sequence[tuple[Any, ...]]) -> int:
        """Upsert the source's current version of the rows with ``keys``."""
        context = self.context
        return copy_rows(
            context.engines,
            context.settings,
            context.stop_event,
            context.load_path,
            source_def,
            spec.primary_key,
            keys,
            context.sanitize(spec),
            on_recovered=context.recovered,
        )
