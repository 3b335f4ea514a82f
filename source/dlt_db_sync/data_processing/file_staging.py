"""File staging (``PIPELINE_MODE=file_staging``): dlt extracts the changed rows into Parquet files
under ``FILE_STAGING_DIR``; the loader applies them to the target chunk by chunk.

Layout: ``FILE_STAGING_DIR/<table>/<run>/part-000001.parquet`` -- one file per load chunk
(``CHUNK_SIZE`` rows, one row group), compressed with ``FILE_STAGING_COMPRESSION`` (snappy,
gzip, brotli, zstd or none). Each file is written under a temporary name and renamed when
complete, so a reader never sees a half-written file.

Flow: a writer thread iterates dlt's ``sql_table`` resource (``extraction.extract``), regroups
the stream into chunks and writes each chunk to its own part file; the loader reads finished
parts in order while later ones are still being written. Extraction and loading overlap, and
the source query runs at the source's pace, never held open by a slow target: the disk, not
memory, is the buffer. A part file is removed once its chunk has been committed, the run's
directory once the whole load has.

Memory: the writer holds one extraction batch and one chunk, the loader one chunk and its TSV
encoding, so peak RSS follows ``CHUNK_SIZE``, not the size of the table.

Crash safety: staged files are never the source of truth. The watermark comes from the rows in
the target plus the pending bound in ``_dlt_sync_state`` (set before extraction, cleared after
the last chunk committed), so after a crash between extraction and load, or in the middle of a
load, the next cycle extracts again from the pending bound and upserts idempotently. The files a
failed run leaves behind stay for inspection until the next run of the same table starts (the
new run supersedes them and removes them) or until ``FILE_STAGING_RETENTION_HOURS`` have passed
(:func:`remove_expired`, called once per cycle, which also measures the directory).

Why our own pyarrow writer fed by dlt's resource, not a dlt pipeline with the ``filesystem``
destination (``loader_file_format="parquet"``): dlt can set the compression
(``DATA_WRITER__COMPRESSION``) and adds no ``_dlt_load_id`` column to Arrow data by default, but
its pipeline writes the whole extraction into its working directory before its load step moves
the files to the bucket -- nothing can be loaded before the last row is extracted -- and every
run pays for state, schema and load-package bookkeeping (see bench/RESULTS.md for the measured
difference). It would also normalise column names (snake_case) unless configured otherwise and
write ``_dlt_pipeline_state`` files into the staging directory. The resource alone gives the
exact projection's Arrow batches; writing them takes a few lines of pyarrow.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.data_processing.extraction import prefetch
from dlt_db_sync.data_processing.loader import rechunk
from dlt_db_sync.error_handling.errors import StagingError
from dlt_db_sync.utils.formatting import megabytes
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.file_staging")

# Counts staging operations for the metrics (``Metrics.staging_operation``): (operation, n).
OperationCounter = Callable[[str, int], None]
PART_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".partial"


def compression_codec(name: str) -> str | None:
    """The pyarrow codec for a ``FILE_STAGING_COMPRESSION`` value (``none`` -> no compression)."""
    return None if name == "none" else name


def table_directory(settings: Settings, table: str) -> Path:
    """Where the staged runs of ``table`` live."""
    return Path(settings.file_staging_dir) / table


def remove_leftover_runs(directory: Path) -> int:
    """Remove the runs a failed load left under ``directory``; returns how many were removed."""
    if not directory.is_dir():
        return 0
    removed = 0
    for run in sorted(p for p in directory.iterdir() if p.is_dir()):
        shutil.rmtree(run)
        removed += 1
    return removed


def _no_count(_operation: str, _n: int = 1) -> None:
    """The default :data:`OperationCounter`: counts nothing."""


def write_parts(
    batches: Iterable[pa.Table],
    directory: Path,
    chunk_rows: int,
    compression: str | None,
    count: OperationCounter = _no_count,
) -> Iterator[Path]:
    """Write ``batches`` regrouped into ``chunk_rows``-row Parquet part files; yield each finished file."""
    for number, chunk in enumerate(rechunk(batches, chunk_rows), start=1):
        path = directory / f"part-{number:06d}{PART_SUFFIX}"
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        try:
            # No dictionary encoding: the projection is all text, mostly distinct values; measured,
            # dictionaries doubled the write and quadrupled the read CPU for no smaller files.
            pq.write_table(
                chunk, partial, compression=compression, use_dictionary=False, row_group_size=max(chunk.num_rows, 1)
            )
            partial.rename(path)
        except OSError as exc:
            raise StagingError(f"cannot write staging file {path}: {exc.strerror or exc}") from exc
        count("write", 1)
        yield path


def read_parts(paths: Iterable[Path], count: OperationCounter = _no_count) -> Iterator[pa.Table]:
    """Read each part file; a part is removed when the next one is requested (its chunk was committed)."""
    previous: Path | None = None
    for path in paths:
        try:
            if previous is not None:
                previous.unlink()
            table = pq.read_table(path)
        except OSError as exc:
            raise StagingError(f"cannot read staging file {path}: {exc.strerror or exc}") from exc
        count("read", 1)
        previous = path
        yield table


@contextmanager
def staged_batches(
    settings: Settings,
    table: str,
    batches: Iterable[pa.Table],
    chunk_rows: int,
    count: OperationCounter | None = None,
) -> Iterator[Iterator[pa.Table]]:
    """Stage ``batches`` as Parquet part files in a background thread; yield an iterator over the parts.

    On success the run's directory is removed. When the load fails the files stay (see the module
    docstring) and the error propagates unchanged, so callers can react to extraction errors.

    Raises:
        StagingError: the staging directory cannot be created or written.
    """
    count = count or _no_count
    parent = table_directory(settings, table)
    run = parent / f"{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}"
    try:
        leftovers = remove_leftover_runs(parent)
        run.mkdir(parents=True)
    except OSError as exc:
        raise StagingError(f"table {table!r}: cannot use staging directory {parent}: {exc.strerror or exc}") from exc
    if leftovers:
        count("cleanup", leftovers)
        logger.info(
            "%s: removed %d staged run(s) a failed load left behind",
            table,
            leftovers,
            extra=log_fields("FILE_STAGING", "CLEANUP"),
        )
    parts = write_parts(batches, run, chunk_rows, compression_codec(settings.file_staging_compression), count)
    try:
        with prefetch(parts, depth=None, name=f"staging-{table}") as finished:
            yield read_parts(finished, count)
    except BaseException:
        logger.warning(
            "%s: load failed; staged files kept under %s", table, run, extra=log_fields("FILE_STAGING", "KEEP")
        )
        raise
    try:
        shutil.rmtree(run)
    except OSError as exc:
        raise StagingError(f"table {table!r}: cannot remove staged run {run}: {exc.strerror or exc}") from exc
    count("cleanup", 1)


@dataclass(frozen=True)
class StagingUsage:
    """What :func:`remove_expired` removed and what remains in the staging directory."""

    removed_files: int
    usage_mb: float  # MB = 10^6 bytes
    files_count: int


def remove_expired(directory: Path, retention_hours: float, now: float | None = None) -> StagingUsage:
    """Delete staged files last modified more than ``retention_hours`` ago and empty directories.

    Returns what was removed and the size of what remains (one walk of the directory).

    Raises:
        StagingError: a file or directory cannot be removed or read.
    """
    if not directory.exists():
        return StagingUsage(0, 0.0, 0)
    cutoff = (time.time() if now is None else now) - retention_hours * 3600
    removed = 0
    remaining_bytes = 0
    remaining = 0
    try:
        for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
                continue
            stat = path.stat()
            if stat.st_mtime < cutoff:
                path.unlink()
                removed += 1
            else:
                remaining_bytes += stat.st_size
                remaining += 1
    except OSError as exc:
        raise StagingError(f"cannot clean staging directory {directory}: {exc.strerror or exc}") from exc
    return StagingUsage(removed, megabytes(remaining_bytes), remaining)
