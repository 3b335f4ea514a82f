"""Which tables the binlog stream serves, and where each of them stands.

:func:`split_binlog_tables` decides at start which binlog tables stream and which fall back to the
cycle (or fail) when the source lacks a prerequisite. :class:`BinlogTables` then holds, for the
stream's thread, each table's spec, its source definition and its state: applying (snapshot done),
failed to start this time, or stopped while streaming.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.database.binlog_reader import check_binlog_source
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.database.sync_state import BINLOG_SNAPSHOT_PENDING, mark_pending
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.schema_management.model import TableDefinition
from dlt_db_sync.schema_management.tables import describe_table
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.binlog")


def split_binlog_tables(
    engines: Engines, settings: Settings, specs: Sequence[TableSpec], status: SyncStatus
) -> tuple[tuple[TableSpec, ...], tuple[TableSpec, ...], str | None]:
    """(tables for the cycle, tables for the binlog stream, why binlog tables are not synced).

    When the source lacks a prerequisite, the binlog tables are synced by cursor with
    ``BINLOG_FALLBACK=incremental`` (a warning), else they fail with the exact list of what is
    missing (in the log and their health) and are not synced; the other tables go on.
    """
    binlog = [s for s in specs if s.strategy == "binlog"]
    others = tuple(s for s in specs if s.strategy != "binlog")
    if not binlog:
        return others, (), None
    with engines.source.connect() as conn:
        check = check_binlog_source(conn, settings)
    for warning in check.warnings:
        logger.warning("%s", warning, extra=log_fields("BINLOG", "CHECK"))
    if not check.problems:
        return others, tuple(binlog), None
    message = "the source cannot serve binlog change capture: " + "; ".join(check.problems)
    if settings.binlog_fallback == "incremental":
        logger.warning(
            "%s; BINLOG_FALLBACK=incremental: syncing %s by cursor instead",
            message,
            ", ".join(s.table for s in binlog),
            extra=log_fields("BINLOG", "FALLBACK"),
        )
        fallback = tuple(replace(s, sync_strategy=s.cursor_strategy) for s in binlog)
        status.set_tables([*others, *fallback])
        return (*others, *fallback), (), None
    logger.error(
        "%s (or set BINLOG_FALLBACK=incremental to sync these tables by cursor)",
        message,
        extra=log_fields("BINLOG", "CHECK"),
    )
    for spec in binlog:
        status.table_failed(spec.table, message, "schema_errors")
    return others, (), message


class BinlogTables:
    """The stream's tables by lower-case name, their source definitions and their state.

    Used by the stream's thread only (a re-read tables file reaches it through the stream).
    """

    def __init__(self, engines: Engines, specs: Sequence[TableSpec], status: SyncStatus) -> None:
        self.engines = engines
        self.status = status
        self.specs = {s.table.lower(): s for s in specs}
        self.definitions: dict[str, TableDefinition] = {}
        self.active: set[str] = set()  # tables whose snapshot is done: their events apply
        self.failed: set[str] = set()  # tables that could not start this time (reported in health)
        # Tables stopped while streaming (DROP, RENAME away, a refused TRUNCATE, events that cannot be
        # applied): left alone until this process restarts (then snapshotted) or the table is created again.
        self.stopped: set[str] = set()

    @property
    def names(self) -> list[str]:
        """The tables' names as configured."""
        return [s.table for s in self.specs.values()]

    def active_names(self) -> list[str]:
        """The configured names of the tables whose events apply."""
        return [self.specs[t].table for t in self.active if t in self.specs]

    def activate(self, spec: TableSpec) -> None:
        """Read ``spec``'s source definition; its events apply from now on."""
        with self.engines.source.connect() as source:
            self.definitions[spec.table.lower()] = describe_table(source, spec.table)
        self.active.add(spec.table.lower())
        self.failed.discard(spec.table.lower())

    def stop(self, name: str, reason: str) -> None:
        """Stop applying events of a table (target kept); the next start takes a new snapshot."""
        spec = self.specs[name]
        self.active.discard(name)
        self.stopped.add(name)
        with self.engines.target.begin() as target:
            mark_pending(target, spec.table, BINLOG_SNAPSHOT_PENDING)
        message = (
            f"table {spec.table!r}: {reason}; its binlog events are no longer applied and the target table is "
            "kept as it is; a new snapshot is taken at the next start (or when it is created again)"
        )
        logger.error("%s", message, extra=log_fields("BINLOG", "DDL"))
        self.status.table_failed(spec.table, message, "schema_errors")

    def fail_all(self, message: str) -> None:
        """Report every table failed (the stream itself stopped)."""
        for table in self.names:
            self.status.table_failed(table, message, "other_errors")
