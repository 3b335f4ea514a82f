"""File staging: extracted rows are written to Parquet files under ``FILE_STAGING_DIR`` before
they are loaded, so extraction never waits on the target and a failed load can be retried from
disk. Files are removed once their load committed, and by retention otherwise.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from config import Settings
from error_handling import StagingError

logger = logging.getLogger("dlt_sync.file_staging")


def _compression(settings: Settings) -> str | None:
    return None if settings.file_staging_compression == "none" else settings.file_staging_compression


@contextmanager
def staged_batches(settings: Settings, table: str, batches: Iterator[pa.Table]) -> Iterator[Iterator[pa.Table]]:
    """Write ``batches`` to one Parquet file, then yield an iterator reading it back by row group."""
    directory = Path(settings.file_staging_dir) / table
    path = directory / f"{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}.parquet"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        writer: pq.ParquetWriter | None = None
        try:
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema, compression=_compression(settings))
                writer.write_table(batch)
        finally:
            if writer is not None:
                writer.close()
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StagingError(f"table {table!r}: cannot write staging file under {directory}: {exc.strerror or exc}") from exc

    def read_back() -> Iterator[pa.Table]:
        if not path.exists():
            return
        parquet = pq.ParquetFile(path)
        for index in range(parquet.num_row_groups):
            yield parquet.read_row_group(index)

    yield read_back()
    path.unlink(missing_ok=True)


def directory_usage_mb(directory: Path) -> float:
    """Total size of the files under ``directory`` in MB."""
    if not directory.exists():
        return 0.0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def remove_expired(directory: Path, retention_hours: float) -> int:
    """Delete staging files older than the retention period; returns how many were removed."""
    if not directory.exists():
        return 0
    cutoff = time.time() - retention_hours * 3600
    removed = 0
    for path in directory.rglob("*.parquet"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    for sub in sorted((p for p in directory.iterdir() if p.is_dir()), reverse=True):
        if not any(sub.iterdir()):
            shutil.rmtree(sub, ignore_errors=True)
    return removed
