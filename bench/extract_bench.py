"""Extraction and staging measurements behind two design choices (run by ``run_bench.py``).

Reads the whole source table with the daemon's exact projection and prints one JSON line per
measurement:

* ``connectorx`` and ``pyarrow`` backends of dlt's ``sql_table``: seconds, and an MD5 of the
  ``LOAD DATA`` bytes of every row, so the two backends can be compared value for value;
* staging into Parquet part files with the daemon's own writer (``file_staging.write_parts``)
  versus a dlt pipeline with the ``filesystem`` destination (``loader_file_format="parquet"``,
  compression set through ``DATA_WRITER__COMPRESSION``), including what the files hold.

Environment: the daemon's ``SOURCE_DB_*`` variables; arguments: the table, then small tables whose
staging shows the fixed cost per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "source"))

import pyarrow.parquet as pq  # noqa: E402

from dlt_db_sync.config.settings import load_settings  # noqa: E402
from dlt_db_sync.data_processing.codec import encode_tsv_buffer  # noqa: E402
from dlt_db_sync.data_processing.extraction import build_query, extract  # noqa: E402
from dlt_db_sync.data_processing.file_staging import compression_codec, write_parts  # noqa: E402
from dlt_db_sync.database.engines import connectorx_url, create_engines  # noqa: E402
from dlt_db_sync.schema_management.tables import describe_table  # noqa: E402


def report(**values: object) -> None:
    print(json.dumps(values), flush=True)


def main(table: str, small_tables: list[str]) -> int:
    settings = load_settings(dotenv_path=None)
    engines = create_engines(settings)
    chunk = settings.chunk_size
    try:
        with engines.source.connect() as conn:
            source_def = describe_table(conn, table)
        for backend in ("connectorx", "pyarrow"):
            digest = hashlib.md5()
            rows = 0
            started = time.monotonic()
            for batch in extract(engines, settings, source_def, None, None, chunk, backend):
                rows += batch.num_rows
                digest.update(encode_tsv_buffer(batch))  # a pyarrow Buffer: no copy to bytes
            report(
                step="extract", backend=backend, rows=rows, seconds=time.monotonic() - started, md5=digest.hexdigest()
            )

        workdir = Path(tempfile.mkdtemp(prefix="extract_bench_"))
        try:
            compression = settings.file_staging_compression
            started = time.monotonic()
            batches = extract(engines, settings, source_def, None, None, chunk, "connectorx")
            parts = list(write_parts(batches, workdir, chunk, compression_codec(compression)))
            seconds = time.monotonic() - started
            first = pq.ParquetFile(parts[0])
            report(
                step="stage",
                writer="own pyarrow writer (part files)",
                rows=sum(pq.ParquetFile(p).metadata.num_rows for p in parts),
                seconds=seconds,
                files=len(parts),
                mb=sum(p.stat().st_size for p in parts) / 1e6,
                columns=first.schema_arrow.names,
                types=sorted({str(t) for t in first.schema_arrow.types}),
                compression=first.metadata.row_group(0).column(0).compression,
            )
            report(**dlt_pipeline_staging(settings, engines, source_def, workdir / "dlt", chunk, compression))
            for small in small_tables:  # the fixed cost per run, which every table pays every cycle
                with engines.source.connect() as conn:
                    small_def = describe_table(conn, small)
                (workdir / f"own_{small}").mkdir()
                started = time.monotonic()
                batches = extract(engines, settings, small_def, None, None, chunk, "connectorx")
                rows = sum(
                    pq.ParquetFile(p).metadata.num_rows
                    for p in write_parts(batches, workdir / f"own_{small}", chunk, compression_codec(compression))
                )
                report(
                    step="stage_small",
                    writer="own pyarrow writer (part files)",
                    table=small,
                    rows=rows,
                    seconds=time.monotonic() - started,
                )
                measured = dlt_pipeline_staging(
                    settings, engines, small_def, workdir / f"dlt_{small}", chunk, compression
                )
                report(**{**measured, "step": "stage_small", "table": small})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        engines.dispose()
    return 0


def dlt_pipeline_staging(
    settings, engines, source_def, workdir: Path, chunk: int, compression: str
) -> dict[str, object]:  # noqa: ANN001
    """The same extraction through a dlt pipeline into Parquet files on the local filesystem."""
    import dlt
    from dlt.sources.sql_database import sql_table

    os.environ["DATA_WRITER__COMPRESSION"] = compression if compression != "none" else "none"
    query = build_query(source_def.name, source_def.columns, None, None)
    resource = sql_table(
        credentials=engines.source,
        table=source_def.name,
        backend="connectorx",
        chunk_size=chunk,
        reflection_level="minimal",
        defer_table_reflect=True,
        query_adapter_callback=lambda *_a: query,
        backend_kwargs={"conn": connectorx_url(settings.source), "return_type": "arrow_stream", "batch_size": chunk},
    )
    pipeline = dlt.pipeline(
        pipeline_name="staging_bench",
        pipelines_dir=str(workdir / "pipelines"),
        dataset_name="staging",
        destination=dlt.destinations.filesystem(bucket_url=(workdir / "bucket").as_uri()),
    )
    started = time.monotonic()
    pipeline.run(resource, loader_file_format="parquet", write_disposition="append")
    seconds = time.monotonic() - started
    files = sorted((workdir / "bucket" / "staging" / source_def.name).glob("*.parquet"))
    first = pq.ParquetFile(files[0])
    other = sorted(
        str(p.relative_to(workdir / "bucket"))
        for p in (workdir / "bucket").rglob("*")
        if p.is_file() and p not in files
    )
    return {
        "step": "stage",
        "writer": "dlt pipeline, filesystem destination",
        "seconds": seconds,
        "files": len(files),
        "rows": sum(pq.ParquetFile(p).metadata.num_rows for p in files),
        "mb": sum(p.stat().st_size for p in files) / 1e6,
        "columns": first.schema_arrow.names,
        "types": sorted({str(t) for t in first.schema_arrow.types}),
        "compression": first.metadata.row_group(0).column(0).compression,
        "other_files": other[:5],
        "steps": {s.step: round((s.finished_at - s.started_at).total_seconds(), 2) for s in pipeline.last_trace.steps},
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
