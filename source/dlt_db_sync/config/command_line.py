"""The command line: options, their usage errors and the exit codes ``--help`` lists."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dlt_db_sync.config.settings import VERSION  # light: of third-party libraries only orjson

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

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
