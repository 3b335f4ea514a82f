"""The sync daemon under benchmark, driven cycle by cycle from the benchmark over stdin/stdout.

It builds the daemon's objects exactly as ``db_pipeline.main`` does (settings from the
environment, engines, ``TableSyncer``) and runs ``db_pipeline.run_cycle`` -- the function the
daemon loop calls -- each time a ``cycle`` line arrives on stdin, printing one JSON line with the
cycle's duration, the per-table results and this process's peak RSS so far. Keeping the process
alive between cycles measures the steady state of a running daemon (an incremental or idle cycle
after the first), not Python start-up. Logs go to stderr (the benchmark points it at a file).
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "source"))

from db_pipeline import run_cycle  # noqa: E402
from dlt_db_sync.config.settings import load_settings  # noqa: E402
from dlt_db_sync.config.tables import TableSpec, load_tables  # noqa: E402
from dlt_db_sync.database.engines import create_engines  # noqa: E402
from dlt_db_sync.monitoring.run_state import SyncStatus  # noqa: E402
from dlt_db_sync.pipeline_management.syncer import TableResult, TableSyncer  # noqa: E402
from dlt_db_sync.utils.logging_setup import setup_logging  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (kernel high-water mark), in MB (10^6 bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss is in KiB


class RecordingSyncer(TableSyncer):
    """The daemon's syncer, remembering the per-table results of the last cycle for the report."""

    last: list[TableResult] = []

    def run_cycle(self, specs: Sequence[TableSpec]) -> list[TableResult]:
        self.last = super().run_cycle(specs)
        return self.last


def main() -> int:
    settings = load_settings(dotenv_path=None)
    setup_logging(settings, sys.stderr)
    specs = load_tables(settings.tables_file)
    engines = create_engines(settings)
    status = SyncStatus()
    status.register_tables(specs)
    syncer = RecordingSyncer(engines, settings, status, threading.Event())
    print(json.dumps({"ready": True, "maxrss_mb": peak_rss_mb()}), flush=True)
    cycle = 0
    try:
        for line in sys.stdin:
            if line.strip() != "cycle":
                break
            cycle += 1
            started = time.monotonic()
            syncer.prepare()
            ok = run_cycle(syncer, specs, status, cycle)
            seconds = time.monotonic() - started
            report = {
                "cycle": cycle,
                "ok": ok,
                "seconds": seconds,
                "maxrss_mb": peak_rss_mb(),
                "tables": {
                    r.table: {
                        "ok": r.ok,
                        "rows": r.rows,
                        "seconds": r.seconds,
                        "skipped": r.skipped,
                        "mode": r.mode,
                        "backend": r.backend,
                        "error": r.error,
                    }
                    for r in syncer.last
                },
            }
            print(json.dumps(report, default=str), flush=True)
    finally:
        engines.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
