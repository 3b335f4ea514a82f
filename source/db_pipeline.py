"""Entry point of the sync daemon: parse the command line, build the settings once, wire the
rooms of :mod:`dlt_db_sync` together and run one cycle (``--once``), a check (``--check``), a
verification (``--verify``) or the daemon loop.

Exit codes are listed in ``--help``. Only light modules are imported at the top: ``--help`` and
``--version`` answer before SQLAlchemy, pyarrow or dlt load.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dlt_db_sync.config.command_line import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, parse_args
from dlt_db_sync.config.settings import Settings  # light: of third-party libraries only orjson
from dlt_db_sync.config.tables import TableSpec  # light too
from dlt_db_sync.error_handling.errors import ConfigError
from dlt_db_sync.pipeline_management.signals import Signals, log_stop, run_interruptible
from dlt_db_sync.utils.logging_setup import log_fields

if TYPE_CHECKING:
    from dlt_db_sync.database.engines import Engines
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.pipeline_management.binlog.stream import BinlogStrategy
    from dlt_db_sync.pipeline_management.syncer import TableSyncer
    from dlt_db_sync.verification.sweep import VerificationSweep


logger = logging.getLogger("dlt_sync.main")


def load_configuration(args: argparse.Namespace) -> tuple[Settings, tuple[TableSpec, ...]]:
    """Settings and tables, or ConfigError naming the variable, file, entry or key."""
    from dlt_db_sync.config.settings import load_settings
    from dlt_db_sync.config.tables import load_tables

    settings = load_settings()
    if args.tables_file is not None:
        from dataclasses import replace

        settings = replace(settings, tables_file=args.tables_file)
    return settings, load_tables(settings.tables_file)


def run_cycle(syncer: TableSyncer, specs: Sequence[TableSpec], status: SyncStatus, cycle: int) -> bool:
    """One cycle over all tables; True when every table synced."""
    from dlt_db_sync.utils.formatting import format_cycle_summary

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
        "%s",
        format_cycle_summary(cycle, len(ok), len(failed), sum(r.rows for r in results), time.monotonic() - started),
        extra=log_fields("SYNC_ENGINE", "CYCLE"),
    )
    for result in failed:
        logger.warning("%s failed: %s", result.table, result.error, extra=log_fields("SYNC_ENGINE", "CYCLE"))
    return all_ok


def reload_tables(
    settings: Settings, specs: tuple[TableSpec, ...], status: SyncStatus, sweep: VerificationSweep | None = None
) -> tuple[TableSpec, ...]:
    """Re-read the tables file (SIGHUP); an invalid file is reported and the old list stays."""
    from dlt_db_sync.config.tables import load_tables

    try:
        new = load_tables(settings.tables_file)
    except ConfigError as exc:
        # The same text --check prints, so the operator can reproduce it there.
        logger.error(
            "configuration error: %s; keeping the %d table(s) in force",
            exc,
            len(specs),
            extra=log_fields("SYNC_ENGINE", "RELOAD"),
        )
        return specs
    old_names = [s.table for s in specs]
    new_names = [s.table for s in new]
    added = [t for t in new_names if t not in old_names]
    removed = [t for t in old_names if t not in new_names]
    status.set_tables(new)
    if sweep is not None:
        sweep.set_tables(new)
    logger.info(
        "%s: %d table(s); added: %s; removed (target tables left as they are): %s",
        settings.tables_file,
        len(new),
        ", ".join(added) or "none",
        ", ".join(removed) or "none",
        extra=log_fields("SYNC_ENGINE", "RELOAD"),
    )
    return new


def run_daemon(
    syncer: TableSyncer,
    specs: tuple[TableSpec, ...],
    settings: Settings,
    status: SyncStatus,
    signals: Signals,
    sweep: VerificationSweep | None = None,
    binlog: BinlogStrategy | None = None,
) -> int:
    """Cycle every INTERVAL seconds (start to start) until a stop signal; SIGHUP reloads the tables.

    Binlog tables are not in ``specs``: ``binlog`` streams them in its own thread.
    """
    from dlt_db_sync.error_handling.errors import SyncError, describe_error

    stop = signals.stop
    cycle = 0
    while not stop.is_set():
        if signals.reload.is_set():
            signals.reload.clear()
            specs = reload_tables(settings, specs, status, sweep)
            streamed = [s for s in specs if s.strategy == "binlog"]
            if binlog is not None:
                binlog.set_tables(streamed)
            elif streamed:
                logger.warning(
                    "binlog table(s) %s: no binlog stream runs in this process; restart the daemon to start it",
                    ", ".join(s.table for s in streamed),
                    extra=log_fields("SYNC_ENGINE", "RELOAD"),
                )
            specs = tuple(s for s in specs if s.strategy != "binlog")
            if sweep is not None:
                sweep.set_tables(specs)  # binlog tables stay out of the sweep
        cycle += 1
        started = time.monotonic()
        try:
            syncer.prepare()
            run_cycle(syncer, specs, status, cycle)
        except SyncError as exc:
            logger.error("cycle %d failed: %s", cycle, describe_error(exc), extra=log_fields("SYNC_ENGINE", "CYCLE"))
        remaining = settings.interval - (time.monotonic() - started)
        if remaining > 0 and stop.wait(remaining):
            break
    log_stop(signals)
    logger.info("stopped after %d cycle(s)", cycle, extra=log_fields("SYNC_ENGINE", "SHUTDOWN"))
    return EXIT_OK


def start_binlog(
    engines: Engines,
    settings: Settings,
    specs: tuple[TableSpec, ...],
    status: SyncStatus,
    stop: threading.Event,
    metrics: object,
    start: bool,
) -> tuple[tuple[TableSpec, ...], BinlogStrategy | None, bool]:
    """(the tables the cycle syncs, the binlog stream of the others or None, False when binlog
    tables cannot be synced); ``start`` runs the stream in its thread (the daemon); ``--once``
    calls its ``catch_up`` instead."""
    if not any(s.strategy == "binlog" for s in specs):
        return specs, None, True
    from dlt_db_sync.pipeline_management.binlog.stream import BinlogStrategy
    from dlt_db_sync.pipeline_management.binlog.tables import split_binlog_tables

    cycle_specs, binlog_specs, problem = split_binlog_tables(engines, settings, specs, status)
    if not binlog_specs:
        return cycle_specs, None, problem is None
    stream = BinlogStrategy(engines, settings, binlog_specs, status, stop, metrics)
    return cycle_specs, (stream.start() if start else stream), True


def start_logging(settings: Settings) -> None:
    """Logging as configured, then one warning per unknown variable with our prefixes.

    Raises:
        ConfigError: LOG_FILE cannot be opened.
    """
    from dlt_db_sync.config.settings import unknown_variable_warnings
    from dlt_db_sync.utils.logging_setup import setup_logging

    try:
        setup_logging(settings)
    except OSError as exc:
        raise ConfigError(
            f"environment variable LOG_FILE={str(settings.log_file)!r}: cannot open: {exc.strerror or exc}"
        ) from exc
    for warning in unknown_variable_warnings():
        logger.warning("%s", warning, extra=log_fields("CONFIG", "ENVIRONMENT"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mode chosen on the command line; returns the exit code."""
    args = parse_args(argv)
    # Before anything slow: from here on a SIGTERM/SIGINT is never lost, whatever the mode.
    stop = threading.Event()
    signals = Signals(stop)
    signals.install()
    try:
        code = configure_and_run(args, signals)
    except KeyboardInterrupt:
        code = EXIT_FAILED
    finally:
        signals.uninstall()
    interrupted = signals.interrupted_code()
    daemon_stopped = not (args.once or args.check or args.verify) and code == EXIT_OK
    if interrupted is not None and not daemon_stopped:
        return interrupted  # an interrupted run never reports success
    return code


def configure_and_run(args: argparse.Namespace, signals: Signals) -> int:
    """Load the configuration (exit 2 on errors), start logging and run the chosen mode."""
    # The daemon reaches only its databases; dlt's anonymous telemetry stays off unless asked for.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    try:
        settings, specs = load_configuration(args)
        start_logging(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run_mode(args, settings, specs, signals)


def run_mode(args: argparse.Namespace, settings: Settings, specs: tuple[TableSpec, ...], signals: Signals) -> int:
    """Create the engines and run ``--check``, ``--verify``, ``--once`` or the daemon loop."""
    from dlt_db_sync.database.engines import check_connectivity, create_engines
    from dlt_db_sync.error_handling.errors import SyncError, describe_error
    from dlt_db_sync.monitoring.metrics import Metrics
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.monitoring.services import start_services
    from dlt_db_sync.monitoring.watchdogs import track_engines

    stop = signals.stop
    status = SyncStatus()
    status.register_tables(specs)
    engines: Engines = create_engines(settings)
    own_connections = track_engines(engines)  # before any connection exists, so the watchdog knows them all
    services = None
    leases = None
    sweep = None
    try:
        metrics = Metrics(status, lambda: engines)
        if args.check:
            from dlt_db_sync.pipeline_management.preflight import run_check

            return run_interruptible(lambda: run_check(engines, settings, specs, stop), stop)
        if args.verify:
            from dlt_db_sync.verification.verify_command import run_verify

            def verify() -> int:
                check_connectivity(engines)  # fail fast, like --once: no retries against a refused port
                return run_verify(
                    engines,
                    settings,
                    specs,
                    args.tables,
                    args.repair,
                    stop,
                    status=status,
                    metrics=metrics,
                    print_only=args.print_only,
                )

            return run_interruptible(verify, stop)
        if settings.lease_enabled:
            from dlt_db_sync.database.leases import LeaseManager

            leases = LeaseManager(engines.target, settings.target.name)
        from dlt_db_sync.pipeline_management.syncer import TableSyncer

        syncer = TableSyncer(engines, settings, status, stop, metrics, leases)
        specs, binlog, binlog_ok = start_binlog(engines, settings, specs, status, stop, metrics, start=not args.once)
        if args.once:
            syncer.prepare()
            binlog_ok = binlog.catch_up() if binlog is not None else binlog_ok
            ok = run_cycle(syncer, specs, status, 1)
            log_stop(signals)
            return EXIT_OK if ok and binlog_ok else EXIT_FAILED
        services = start_services(settings, status, lambda: engines, metrics, stop, own_connections=own_connections)
        from dlt_db_sync.verification.sweep import start_sweep

        sweep = start_sweep(engines, settings, specs, stop, status, metrics)
        try:
            return run_daemon(syncer, specs, settings, status, signals, sweep, binlog)
        finally:
            if binlog is not None:
                stop.set()
                binlog.join()  # it finishes its target transaction first
    except KeyboardInterrupt:
        logger.warning("interrupted by a second signal; stopping now", extra=log_fields("SYNC_ENGINE", "SHUTDOWN"))
        return EXIT_FAILED
    except SyncError as exc:
        logger.error("%s", describe_error(exc), extra=log_fields("SYNC_ENGINE", "STARTUP"))
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
