"""Cost of the continuous verification sweep on the 1M-row ``orders`` table.

Starts its own source and target MariaDB servers (``tests/mariadb_server.py``, 1 GB InnoDB buffer
pool each) holding the same ``orders`` table (``--rows`` rows, default 1,000,000), then measures:

1. one full pass of the sweep at ``VERIFY_ROWS_PER_SECOND`` (default: the daemon's default) with a
   table period short enough that the global rate is what paces it, and the same pass unpaced
   (the databases' actual work, as a baseline measured in the same run);
2. the incremental cycle after an ``UPDATE`` of 10,000 rows (``updated_at = NOW(6)``), alternately
   with no sweep and while the paced sweep runs, ``--cycles`` times each (median and best).

Writes a Markdown section to ``bench/SWEEP_RESULTS.md``.

    .venv/bin/python bench/sweep_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "source"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from mariadb_server import MariaDBServer, init_template  # noqa: E402
from orders_data import ORDERS_DATA, ORDERS_DDL  # noqa: E402
from verify_bench import DB, SERVER_ARGS, environ, settle  # noqa: E402

UPDATED_ROWS = 10_000


def say(message: str) -> None:
    print(f"[sweep-bench] {message}", flush=True)


class Rig:
    """Settings, engines, status and a TableSyncer on the two bench servers."""

    def __init__(self, source: MariaDBServer, target: MariaDBServer, rate: float | None) -> None:
        from dlt_db_sync.config.settings import load_settings
        from dlt_db_sync.config.tables import TableSpec
        from dlt_db_sync.database.engines import create_engines
        from dlt_db_sync.monitoring.run_state import SyncStatus
        from dlt_db_sync.pipeline_management.syncer import TableSyncer

        env = environ(source, target)
        env["LOOKBACK_SECONDS"] = "0"  # each cycle reads its own 10,000 rows, not the previous cycles' too
        if rate is not None:
            env["VERIFY_ROWS_PER_SECOND"] = str(rate)
        self.settings = load_settings(env, dotenv_path=None)
        self.engines = create_engines(self.settings)
        self.spec = TableSpec("orders", ("id",), modifier="updated_at", verify_every_minutes=0.001)
        self.status = SyncStatus()
        self.status.register_tables([self.spec])
        self.syncer = TableSyncer(self.engines, self.settings, self.status, threading.Event())
        self.syncer.prepare()

    def sweep(self, stop: threading.Event) -> Any:
        from dlt_db_sync.verification.sweep import VerificationSweep

        return VerificationSweep(self.engines, self.settings, [self.spec], stop, self.status)

    def close(self) -> None:
        self.engines.dispose()


def full_pass(rig: Rig, timeout: float) -> tuple[float, int]:
    """(seconds, rows compared) of one full pass of the sweep thread."""
    stop = threading.Event()
    sweep = rig.sweep(stop)
    before = rig.status.snapshot()["tables"]["orders"].sweep.get("passes", 0)
    checked = rig.status.snapshot()["tables"]["orders"].sweep.get("rows_checked_total", 0)
    started = time.monotonic()
    sweep.start()
    try:
        while rig.status.snapshot()["tables"]["orders"].sweep.get("passes", 0) == before:
            if time.monotonic() - started > timeout or not sweep.is_alive():
                raise RuntimeError("the sweep did not finish its pass")
            time.sleep(0.05)
    finally:
        sweep.stop()
    seconds = time.monotonic() - started
    return seconds, rig.status.snapshot()["tables"]["orders"].sweep["rows_checked_total"] - checked


def incremental_cycle(rig: Rig, source: MariaDBServer, offset: int) -> float:
    """Seconds of one incremental sync after an UPDATE of 10,000 rows."""
    source.execute(
        f"UPDATE orders SET updated_at = NOW(6), qty = qty + 1 WHERE id > {offset} AND id <= {offset + UPDATED_ROWS}",
        DB,
    )
    started = time.monotonic()
    result = rig.syncer.sync_table(rig.spec)
    seconds = time.monotonic() - started
    if not result.ok or result.rows < UPDATED_ROWS:
        raise RuntimeError(f"incremental cycle failed: {result}")
    return seconds


def main() -> int:
    from dlt_db_sync.config.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=Settings.verify_rows_per_second,
        help="VERIFY_ROWS_PER_SECOND of the paced pass (default: the daemon's default)",
    )
    parser.add_argument("--cycles", type=int, default=5, help="incremental cycles per condition")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "SWEEP_RESULTS.md")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    servers: list[MariaDBServer] = []
    try:
        template = init_template(base)
        for name in ("source", "target"):
            servers.append(MariaDBServer(base, template, name, SERVER_ARGS).start())
        source, target = servers
        threads = []
        for server in servers:
            server.execute(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
            server.execute(ORDERS_DDL, DB)
            threads.append(threading.Thread(target=server.execute, args=(ORDERS_DATA.format(rows=args.rows), DB)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        say(f"created orders with {args.rows:,} rows on both servers; flushed in {settle(servers):.1f}s")
        server_version = source.query("SELECT VERSION()")[0][0]
        results: dict[str, Any] = {}

        unpaced = Rig(source, target, rate=1e9)
        paced = Rig(source, target, rate=args.rate)
        try:
            unpaced.status.table_succeeded("orders", 0, 0.0)  # the sweep starts on synced tables only
            paced.status.table_succeeded("orders", 0, 0.0)
            full_pass(unpaced, 600)  # warm-up: both buffer pools hold the table
            results["unpaced"] = full_pass(unpaced, 600)
            say(f"unpaced pass: {results['unpaced'][0]:.2f}s for {results['unpaced'][1]:,} rows")

            # Incremental cycles: alternately without and with the paced sweep running (after an untimed one).
            incremental_cycle(paced, source, args.rows - UPDATED_ROWS)
            times: dict[str, list[float]] = {"alone": [], "sweeping": []}
            stop = threading.Event()
            offset = 0
            sweep = None
            for _round in range(args.cycles):
                for condition in ("alone", "sweeping"):
                    if condition == "sweeping" and sweep is None:
                        sweep = paced.sweep(stop)
                        sweep.start()
                        time.sleep(0.5)  # in its stride: slices and rests
                    seconds = incremental_cycle(paced, source, offset)
                    offset = (offset + UPDATED_ROWS) % (args.rows - UPDATED_ROWS)
                    times[condition].append(seconds)
                    say(f"incremental cycle ({condition}): {seconds:.3f}s")
                    if condition == "sweeping":
                        stop.set()
                        sweep.stop()
                        sweep, stop = None, threading.Event()
            results["cycles"] = times

            results["paced"] = full_pass(paced, 4 * args.rows / args.rate + 600)
            say(f"paced pass at {args.rate:g} rows/s: {results['paced'][0]:.1f}s for {results['paced'][1]:,} rows")
            results["load"] = os.getloadavg()
        finally:
            unpaced.close()
            paced.close()
        write_results(args, results, server_version)
        say(f"wrote {args.out}")
        return 0
    finally:
        for server in servers:
            server.destroy()
        shutil.rmtree(base, ignore_errors=True)


def write_results(args: argparse.Namespace, results: dict[str, Any], server_version: str) -> None:
    paced_seconds, paced_rows = results["paced"]
    unpaced_seconds, unpaced_rows = results["unpaced"]
    alone, sweeping = results["cycles"]["alone"], results["cycles"]["sweeping"]
    lines = [
        "## Continuous verification sweep: cost on the 1M-row table",
        "",
        f"`bench/sweep_bench.py --rows {args.rows} --rate {args.rate:g}`: two local MariaDB {server_version} servers "
        f"(1 GB buffer pool each) on {os.cpu_count()} CPU(s), {platform.machine()}, Python "
        f"{platform.python_version()}. The machine was shared with other engineers' test runs while this was "
        f"measured (load average {results['load'][1]:.1f} over the run's last 5 minutes): both servers, the "
        "sweep, the sync and everything else ran on the same 2 cores, so absolute times are noisy; the ratios "
        "compare runs made alternately in the same process.",
        "",
        "| measurement | result |",
        "|---|---:|",
        f"| full pass of `orders` at `VERIFY_ROWS_PER_SECOND={args.rate:g}` (the default) | "
        f"{paced_seconds:.1f} s for {paced_rows:,} rows ({paced_rows / paced_seconds:,.0f} rows/s) |",
        f"| the same pass unpaced (the databases' actual work) | {unpaced_seconds:.2f} s for {unpaced_rows:,} rows |",
        f"| share of the time the paced sweep keeps the servers busy | {unpaced_seconds / paced_seconds:.1%} |",
        f"| incremental cycle after an UPDATE of {UPDATED_ROWS:,} rows, no sweep (median / best of {len(alone)}) | "
        f"{statistics.median(alone):.3f} s / {min(alone):.3f} s |",
        f"| the same while the paced sweep runs (median / best of {len(sweeping)}) | "
        f"{statistics.median(sweeping):.3f} s / {min(sweeping):.3f} s |",
        f"| ratio, with sweep / without (median) | {statistics.median(sweeping) / statistics.median(alone):.2f}x |",
        "",
        "With the default `verify_every_minutes` (one pass a day) a 1M-row table is paced by its period, "
        f"not by the rate: about {args.rows / 86400:.0f} rows/s, a slice of a few thousand rows every few minutes.",
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
