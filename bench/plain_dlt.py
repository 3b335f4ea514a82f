"""Baseline: plain dlt with default settings -- ``sql_table`` into the ``sqlalchemy`` destination.

Run by ``run_bench.py`` in its own process with its own pipelines directory:

    plain_dlt.py SOURCE_URL TARGET_URL TABLE DATASET PIPELINES_DIR

Prints one JSON line: rows loaded, seconds for ``pipeline.run`` and the process's peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(argv: list[str]) -> int:
    source_url, target_url, table, dataset, pipelines_dir = argv
    import dlt
    from dlt.sources.sql_database import sql_table

    pipeline = dlt.pipeline(
        pipeline_name="plain_dlt_bench",
        destination=dlt.destinations.sqlalchemy(credentials=target_url),
        dataset_name=dataset,
        pipelines_dir=pipelines_dir,
    )
    started = time.monotonic()
    info = pipeline.run(sql_table(credentials=source_url, table=table), write_disposition="replace")
    seconds = time.monotonic() - started
    rows = pipeline.last_trace.last_normalize_info.row_counts.get(table, 0)
    info.raise_on_failed_jobs()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB -> MB (10^6 bytes)
    print(json.dumps({"rows": rows, "seconds": seconds, "maxrss_mb": peak}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
