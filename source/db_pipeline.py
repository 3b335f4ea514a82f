"""Entry point of the sync daemon: parse the command line, build the settings once, wire the
modules together and run one cycle (``--once``), a check (``--check``), a verification
(``--verify``) or the daemon loop.

Exit codes are listed in :data:`EXIT_CODES_HELP` (``--help`` shows them). Only light modules are
imported at the top: ``--help`` and ``--version`` answer before SQLAlchemy, pyarrow or dlt load.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from dlt_db_sync.config.settings import VERSION, Settings  # light: of third-party libraries only orjson
from dlt_db_sync.config.tables import TableSpec  # light too
from dlt_db_sync.error_handling.errors import ConfigError
from dlt_db_sync.utils.logging_setup import log_fields

if TYPE_CHECKING:
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.pipeline_management.syncer import TableSyncer
    from dlt_db_sync.verification.sweep import VerificationSweep

logger = logging.getLogger("dlt_sync.main")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# After a stop signal, --check and --verify get this long to reach their next stop check.
STOP_GRACE_SECONDS = 3.0
POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES_HELP = """exit codes:
  0    success (--verify: every table identical; the daemon: stopped by SIGTERM/SIGINT)
  1    a table or database failed (--verify: a table differs or could not be compared)
  2    configuration or usage error (nothing was touched)
  130  interrupted by SIGINT (Ctrl-C) before --once, --check or --verify finished
  143  interrupted by SIGTERM (docker stop) before --once, --check or --verify finished
A second SIGTERM/SIGINT stops at once (also the daemon, then 130/143).
SIGHUP makes the daemon re-read the tables file before its next cycle."""
# Options (argparse dests) valid only together with --verify, and the usage error without it.
VERIFY_ONLY = {
    "repair": "--repair requires --verify",
    "print_only": "--print requires --verify (it lists what --verify --repair would do)",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; usage errors exit 2 (argparse) before anything else happens."""
    parser = argparse.ArgumentParser(
        prog="db_pipeline.py",
        description="Sync listed MySQL/MariaDB tables from a source to a target.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dlt-db-sync {VERSION}")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--once", action="store_true", help="run one cycle over every table and exit")
    action.add_argument("--check", action="store_true", help="validate config and connectivity, print the plan")
    action.add_argument(
        "--verify",
        action="store_true",
        help="compare source and target tables by checksums (the TABLEs given, else all)",
    )
    # Options that only make sense with --verify are listed in VERIFY_ONLY.
    parser.add_argument(
        "--repair", action="store_true", help="with --verify: re-copy differing rows, delete extra ones"
    )
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="with --verify: list the rows --repair would copy and delete; change nothing",
    )
    parser.add_argument("--tables-file", type=Path, help="tables.json to use instead of TABLES_FILE")
    parser.add_argument("tables", nargs="*", metavar="TABLE", help="with --verify: the tables to compare")
    # Intermixed: tables may stand anywhere (--verify --repair payment, --verify payment --repair).
    args = parser.parse_intermixed_args(argv)
    for option, message in VERIFY_ONLY.items():
        if getattr(args, option) and not args.verify:
            parser.error(message)
    if args.tables and not args.verify:
        parser.error(f"table names ({' '.join(args.tables)}) are accepted only with --verify")
    return args


def load_configuration(args: argparse.Namespace) -> tuple[Settings, tuple[TableSpec, ...]]:
    """Settings and tables, or ConfigError naming the variable, file, entry or key."""
    from dlt_db_sync.config.settings import load_settings
    from dlt_db_sync.config.tables import load_tables

    settings = load_settings()
    if args.tables_file is not None:
        from dataclasses import replace

        settings = replace(settings, tables_file=args.tables_file)
    return settings, load_tables(settings.tables_file)


class Signals:
    """SIGTERM/SIGINT request a stop (``stop``), SIGHUP a reload of the tables file (``reload``).

    The Python handlers do no I/O and take no lock: logging from a handler raised "reentrant
    call" when the signal landed while the main thread was writing a log line, and even
    ``Event.set`` takes the event's lock, which the interrupted main thread may hold inside
    ``Event.wait``. So the C-level handler's wakeup byte (``signal.set_wakeup_fd``) is read by a
    watcher thread, which sets the events; the loops log what happened. A second stop signal
    raises KeyboardInterrupt in the main thread (stop now); nothing else in a handler.
    """

    def __init__(self, stop: threading.Event, reload: threading.Event | None = None) -> None:
        self.stop = stop
        self.reload = reload or threading.Event()
        self.received: int | None = None  # the first stop signal, set by the watcher thread
        self._stop_signals = 0  # counted by the handler itself: the watcher may lag behind
        self._handled: int | None = None  # the first stop signal as the handler saw it
        self._restore: list[tuple[int, object]] = []
        self._fds: tuple[int, int] | None = None
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Install the handlers and start the watcher thread (main thread only)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._fds = (read_fd, write_fd)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_hangup),
        ):
            self._restore.append((signum, signal.getsignal(signum)))
            signal.signal(signum, handler)
        threading.Thread(target=self._watch, args=(read_fd,), name="signals", daemon=True).start()

    def uninstall(self) -> None:
        """Put the previous handlers back (``main`` may run in-process, e.g. under pytest)."""
        for signum, handler in reversed(self._restore):
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._restore.clear()
        if self._fds is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            os.close(self._fds[1])  # the watcher reads end-of-file and ends
            self._fds = None

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signals += 1
        if self._handled is None:
            self._handled = signum
        if self._stop_signals > 1:
            raise KeyboardInterrupt  # second signal: stop now

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        """Nothing to do here: the watcher thread sets ``reload``."""

    def _watch(self, read_fd: int) -> None:
        while data := os.read(read_fd, 64):
            for signum in data:
                if signum == signal.SIGHUP:
                    self.reload.set()
                elif signum in STOP_SIGNALS:
                    if self.received is None:
                        self.received = signum
                    self.stop.set()
        os.close(read_fd)

    def interrupted_code(self) -> int | None:
        """128 + the first stop signal's number (130 SIGINT, 143 SIGTERM), or None."""
        signum = self.received if self.received is not None else self._handled  # the watcher may lag behind
        return None if signum is None else 128 + int(signum)


def log_stop(signals: Signals) -> None:
    """The shutdown line a signal handler must not write itself."""
    if signals.received is not None:
        logger.info(
            "%s received; finishing the current chunk and stopping",
            signal.Signals(signals.received).name,
            extra=log_fields("SYNC_ENGINE", "SHUTDOWN"),
        )


def run_interruptible(work: Callable[[], int], stop: threading.Event, grace: float = STOP_GRACE_SECONDS) -> int:
    """``work()`` in a worker thread, so a stop signal ends --check and --verify within seconds.

    The work checks ``stop`` between tables and chunks; one blocked in a connect or a long query
    cannot, so after ``grace`` seconds the main thread returns EXIT_FAILED without it (the thread
    is a daemon thread: the process exits, the server rolls back what it did not commit).
    Exceptions of the work are raised here.
    """
    outcome: list[int] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="work", daemon=True).start()
    while not done.wait(POLL_SECONDS):
        if stop.is_set():
            done.wait(grace)
            break
    if failure:
        raise failure[0]
    if not outcome:
        logger.warning(
            "still busy %.0fs after the stop signal; exiting without it",
            grace,
            extra=log_fields("SYNC_ENGINE", "SHUTDOWN"),
        )
        return EXIT_FAILED
    return outcome[0]


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
) -> int:
    """Cycle every INTERVAL seconds (start to start) until a stop signal; SIGHUP reloads the tables."""
    from dlt_db_sync.error_handling.errors import SyncError, describe_error

    stop = signals.stop
    cycle = 0
    while not stop.is_set():
        if signals.reload.is_set():
            signals.reload.clear()
            specs = reload_tables(settings, specs, status, sweep)
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
    from dlt_db_sync.database.engines import Engines, check_connectivity, create_engines
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
            from dlt_db_sync.verification.verifier import run_verify

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
        if args.once:
            syncer.prepare()
            ok = run_cycle(syncer, specs, status, 1)
            log_stop(signals)
            return EXIT_OK if ok else EXIT_FAILED
        services = start_services(settings, status, lambda: engines, metrics, stop, own_connections=own_connections)
        from dlt_db_sync.verification.sweep import start_sweep

        sweep = start_sweep(engines, settings, specs, stop, status, metrics)
        return run_daemon(syncer, specs, settings, status, signals, sweep)
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
