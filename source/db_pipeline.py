"""Entry point of the sync daemon: parse the command line, build the settings once, wire the
modules together and run one cycle (``--once``), a check (``--check``), a verification
(``--verify``) or the daemon loop.

Exit codes: 0 success, 1 a table or database failed, 2 configuration error (before any database
is touched).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from config import Settings, TableSpec, load_settings, load_tables  # noqa: E402
from database import Engines, create_engines  # noqa: E402
from error_handling import ConfigError, SyncError, describe_error  # noqa: E402
from monitoring import SyncStatus  # noqa: E402
from pipeline_management import TableSyncer  # noqa: E402
from preflight import run_check  # noqa: E402
from utils import format_cycle_summary, setup_logging  # noqa: E402
from watchdog import start_services, track_engines  # noqa: E402

logger = logging.getLogger("dlt_sync.main")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Sync listed MySQL/MariaDB tables from a source to a target.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--once", action="store_true", help="run one cycle over every table and exit")
    action.add_argument("--check", action="store_true", help="validate config and connectivity, print the plan")
    action.add_argument("--verify", nargs="*", metavar="TABLE", help="compare source and target tables by checksums")
    parser.add_argument("--repair", action="store_true", help="with --verify: re-copy differing rows, delete extra ones")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="with --verify: list the rows --repair would copy and delete; change nothing")
    parser.add_argument("--tables-file", type=Path, help="tables.json to use instead of TABLES_FILE")
    args = parser.parse_args(argv)
    if args.print_only and args.verify is None:
        parser.error("--print requires --verify (it lists what --verify --repair would do)")
    return args


def load_configuration(args: argparse.Namespace) -> tuple[Settings, tuple[TableSpec, ...]]:
    """Settings and tables, or ConfigError naming the variable, file, entry or key."""
    settings = load_settings()
    if args.tables_file is not None:
        from dataclasses import replace

        settings = replace(settings, tables_file=args.tables_file)
    return settings, load_tables(settings.tables_file)


class StopSignal:
    """SIGTERM/SIGINT set an event that every wait and loop checks; a second signal exits at once."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt  # second signal: stop now
        logger.info("SYNC_ENGINE - SHUTDOWN - signal %d received; finishing the current chunk and stopping", signum)
        self.event.set()


def run_cycle(syncer: TableSyncer, specs: Sequence[TableSpec], status: SyncStatus, cycle: int) -> bool:
    """One cycle over all tables; True when every table synced."""
    started = time.monotonic()
    status.cycle_started()
    results = syncer.run_cycle(specs)
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    all_ok = not failed
    status.cycle_finished(all_ok)
    if syncer.metrics is not None:
        syncer.metrics.observe_cycle(time.monotonic() - started)
    logger.info(
        "SYNC_ENGINE - CYCLE - %s",
        format_cycle_summary(cycle, len(ok), len(failed), sum(r.rows for r in results), time.monotonic() - started),
    )
    for result in failed:
        logger.warning("SYNC_ENGINE - CYCLE - %s failed: %s", result.table, result.error)
    return all_ok


def run_daemon(syncer: TableSyncer, specs: Sequence[TableSpec], settings: Settings, status: SyncStatus, stop: threading.Event) -> int:
    """Cycle every INTERVAL seconds (start to start) until a stop signal."""
    cycle = 0
    while not stop.is_set():
        cycle += 1
        started = time.monotonic()
        try:
            syncer.prepare()
            run_cycle(syncer, specs, status, cycle)
        except SyncError as exc:
            logger.error("SYNC_ENGINE - CYCLE - cycle %d failed: %s", cycle, describe_error(exc))
        remaining = settings.interval - (time.monotonic() - started)
        if remaining > 0 and stop.wait(remaining):
            break
    logger.info("SYNC_ENGINE - SHUTDOWN - stopped after %d cycle(s)", cycle)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The daemon reaches only its databases; dlt's anonymous telemetry stays off unless asked for.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    try:
        settings, specs = load_configuration(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings)
    stop = threading.Event()
    status = SyncStatus()
    status.register_tables(specs)
    engines: Engines = create_engines(settings)
    own_connections = track_engines(engines)  # before any connection exists, so the watchdog knows them all
    services = None
    leases = None
    sweep = None
    try:
        import monitoring

        metrics = monitoring.Metrics(status, lambda: engines)
        if settings.lease_enabled:
            from leases import LeaseManager

            leases = LeaseManager(engines.target, settings.target.name)
        syncer = TableSyncer(engines, settings, status, stop, metrics, leases)
        if args.check:
            return run_check(engines, settings, specs)
        if args.verify is not None:
            from verification import run_verify

            return run_verify(engines, settings, specs, args.verify, args.repair, stop, status=status, metrics=metrics,
                              print_only=args.print_only)
        StopSignal(stop).install()
        if not args.once:
            services = start_services(settings, status, lambda: engines, metrics, stop, own_connections=own_connections)
            from verification_sweep import start_sweep

            sweep = start_sweep(engines, settings, specs, stop, status, metrics)
        if args.once:
            syncer.prepare()
            return EXIT_OK if run_cycle(syncer, specs, status, 1) else EXIT_FAILED
        return run_daemon(syncer, specs, settings, status, stop)
    except KeyboardInterrupt:
        logger.warning("SYNC_ENGINE - SHUTDOWN - interrupted")
        return EXIT_OK
    except SyncError as exc:
        logger.error("SYNC_ENGINE - STARTUP - %s", describe_error(exc))
        return EXIT_FAILED
    finally:
        stop.set()
        if sweep is not None:
            sweep.stop()
        if services is not None:
            services.stop()
        if leases is not None:
            leases.release_all()
        engines.dispose()


if __name__ == "__main__":
    sys.exit(main())
