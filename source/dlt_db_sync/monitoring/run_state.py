"""Run-time state of the daemon: what each table's last sync did, kept under one short-held lock.

The sync loop (writer) reports what happens through :class:`SyncStatus`'s methods; readers (the
health endpoint, the status page, the metrics collector) take :meth:`SyncStatus.snapshot`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ROLES = ("source", "target")


# Table syncs remembered per table for the status page's sparklines (in memory only).
HISTORY_LENGTH = 50


@dataclass
class TableStatus:
    """What the health endpoint shows for one table."""

    table: str
    strategy: str = ""
    mode: str = ""
    last_success: datetime | None = None
    last_attempt: datetime | None = None
    rows_last_cycle: int = 0
    seconds_last_cycle: float = 0.0
    watermark: Any = None
    newest_modifier: Any = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_category: str | None = None
    skipped_last_cycle: bool = False
    sanitized: dict[str, int] = field(default_factory=dict)
    rows_deleted_total: int = 0
    differences_found: int = 0
    last_verify: datetime | None = None
    owned: bool = True
    # Start of the last successful sync: the target holds every change committed before it.
    current_as_of: datetime | None = None
    delete_refusals: int = 0  # times the mass-delete guard refused a deleting path
    last_delete_refusal: str | None = None
    future_modifier_rows: int = 0  # rows whose modifier is beyond the source clock (last cycle)
    sweep: dict[str, Any] = field(default_factory=dict)  # continuous verification, see SyncStatus.sweep_*
    binlog: dict[str, Any] = field(default_factory=dict)  # binlog change capture, see SyncStatus.binlog_*


@dataclass(frozen=True)
class SyncSample:
    """One finished sync attempt of a table, kept for the status page's history."""

    finished: datetime
    seconds: float
    rows: int
    ok: bool


class SyncStatus:
    """Lock-guarded state of the daemon."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_monotonic = time.monotonic()
        self.tables: dict[str, TableStatus] = {}
        self.database_status: dict[str, str] = {"source": "unknown", "target": "unknown"}
        self.database_errors: dict[str, str | None] = {"source": None, "target": None}
        self.database_servers: dict[str, dict[str, Any] | None] = {"source": None, "target": None}
        self.last_successful_sync: datetime | None = None
        self.cycles: int = 0
        self.sync_errors: int = 0
        self.error_summary: dict[str, int] = {
            "connection_errors": 0,
            "lock_timeout_errors": 0,
            "schema_errors": 0,
            "data_errors": 0,
            "other_errors": 0,
        }
        self.current_table: str | None = None
        self.staging_usage_mb: float | None = None
        self.staging_files_count: int | None = None
        self.staging_measured_monotonic: float | None = None
        self.started_at = datetime.now(UTC)
        self.history: dict[str, deque[SyncSample]] = {}
        self.cycle_started_at: datetime | None = None  # set while a cycle runs
        self._cycle_started_monotonic: float | None = None
        self.last_cycle_seconds: float | None = None

    def _remember(self, table: str, seconds: float | None, rows: int, ok: bool) -> None:
        """Append one sample to ``table``'s bounded history (caller holds the lock)."""
        samples = self.history.setdefault(table, deque(maxlen=HISTORY_LENGTH))
        samples.append(SyncSample(datetime.now(UTC), max(seconds or 0.0, 0.0), max(rows, 0), ok))

    def register_tables(self, specs: Any) -> None:
        """Create a status entry per configured table (``specs``: iterable of TableSpec)."""
        with self._lock:
            for spec in specs:
                self.tables.setdefault(spec.table, TableStatus(table=spec.table, strategy=spec.strategy))

    def set_tables(self, specs: Any) -> None:
        """The table list changed (SIGHUP): new tables get an entry, removed ones are dropped."""
        names = {spec.table for spec in specs}
        with self._lock:
            for table in [t for t in self.tables if t not in names]:
                del self.tables[table]
                self.history.pop(table, None)
            for spec in specs:
                self.tables.setdefault(spec.table, TableStatus(table=spec.table, strategy=spec.strategy))

    def set_database_status(self, role: str, connected: bool, error: str | None = None) -> None:
        """Record whether ``role`` ('source'/'target') was reachable at the last contact."""
        with self._lock:
            self.database_status[role] = "connected" if connected else "disconnected"
            self.database_errors[role] = error

    def set_server_info(self, role: str, info: dict[str, Any]) -> None:
        """Record what ``role``'s server is (``server_info.ServerInfo.as_dict``), read once at start."""
        with self._lock:
            self.database_servers[role] = dict(info)

    def table_started(self, table: str) -> None:
        """A sync attempt of ``table`` begins."""
        with self._lock:
            self.current_table = table
            self.tables.setdefault(table, TableStatus(table=table)).last_attempt = datetime.now(UTC)

    def table_succeeded(
        self,
        table: str,
        rows: int,
        seconds: float,
        watermark: Any = None,
        newest_modifier: Any = None,
        skipped: bool = False,
        mode: str = "",
        sanitized: dict[str, int] | None = None,
    ) -> None:
        """``table`` was synced (or found unchanged) in ``seconds``."""
        now = datetime.now(UTC)
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.last_success = now
            status.current_as_of = status.last_attempt or now - timedelta(seconds=max(seconds, 0.0))
            status.rows_last_cycle = rows
            status.seconds_last_cycle = seconds
            status.watermark = watermark
            if newest_modifier is not None:
                status.newest_modifier = newest_modifier
            status.consecutive_failures = 0
            status.last_error = None
            status.last_error_category = None
            status.skipped_last_cycle = skipped
            status.mode = mode or status.mode
            status.sanitized = dict(sanitized or {})
            self.current_table = None
            self._remember(table, seconds, rows, ok=True)

    def table_failed(
        self, table: str, message: str, category: str = "other_errors", seconds: float | None = None
    ) -> None:
        """A sync attempt of ``table`` failed with ``message`` (health ``error_summary`` ``category``)."""
        with self._lock:
            self._remember(table, seconds, 0, ok=False)
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.consecutive_failures += 1
            status.last_error = message
            status.last_error_category = category
            self.sync_errors += 1
            self.error_summary[category] = self.error_summary.get(category, 0) + 1
            self.current_table = None

    def table_deleted(self, table: str, rows: int) -> None:
        """Delete reconciliation removed ``rows`` rows of ``table`` from the target."""
        with self._lock:
            self.tables.setdefault(table, TableStatus(table=table)).rows_deleted_total += rows

    def table_verified(self, table: str, differences: int) -> None:
        """A verification of ``table`` found ``differences`` differing rows or column definitions."""
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.differences_found = differences
            status.last_verify = datetime.now(UTC)

    def delete_refused(self, table: str, message: str) -> None:
        """The mass-delete guard refused to remove rows of ``table`` (``message`` says how to allow it)."""
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.delete_refusals += 1
            status.last_delete_refusal = message

    def future_modifier_rows(self, table: str, rows: int) -> None:
        """``rows`` rows of ``table`` have a modifier beyond the source clock (plus the allowed skew)."""
        with self._lock:
            self.tables.setdefault(table, TableStatus(table=table)).future_modifier_rows = rows

    def sweep_progress(
        self, table: str, checked: int, repaired: int, pass_fraction: float, refused: str | None
    ) -> None:
        """The verification sweep checked ``checked`` and repaired ``repaired`` more rows of ``table``;
        ``pass_fraction`` of the current pass is done; ``refused``: the guard's message for this slice."""
        with self._lock:
            sweep = self.tables.setdefault(table, TableStatus(table=table)).sweep
            sweep["rows_checked_total"] = sweep.get("rows_checked_total", 0) + checked
            sweep["rows_repaired_total"] = sweep.get("rows_repaired_total", 0) + repaired
            sweep["pass_progress"] = round(min(max(pass_fraction, 0.0), 1.0), 4)
            if refused is not None:
                sweep["refused"] = refused

    def sweep_pass_done(self, table: str, seconds: float, refused: bool) -> None:
        """The sweep finished a full pass over ``table`` (a refusal in it keeps the health degraded)."""
        with self._lock:
            sweep = self.tables.setdefault(table, TableStatus(table=table)).sweep
            sweep["last_full_pass"] = datetime.now(UTC)
            sweep["last_pass_seconds"] = round(seconds, 1)
            sweep["passes"] = sweep.get("passes", 0) + 1
            sweep["pass_progress"] = 0.0
            if not refused:
                sweep.pop("refused", None)

    def binlog_applied(
        self, table: str, position: str, event_lag: float, events: int, rows: int, source_time: datetime | None
    ) -> None:
        """A target transaction of the binlog stream committed ``events`` row events (``rows`` rows) of
        ``table``; the target now holds every change up to ``position`` (written at ``source_time``)."""
        now = datetime.now(UTC)
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.last_success = now
            status.last_attempt = now
            status.current_as_of = source_time or now
            status.watermark = position
            status.consecutive_failures = 0
            status.last_error = None
            status.last_error_category = None
            binlog = status.binlog
            binlog["position"] = position
            binlog["event_lag_seconds"] = round(max(event_lag, 0.0), 3)
            binlog["events_applied_total"] = binlog.get("events_applied_total", 0) + events
            binlog["rows_applied_total"] = binlog.get("rows_applied_total", 0) + rows
            binlog.pop("position_lost", None)
            if rows:
                self.last_successful_sync = now

    def binlog_caught_up(self, tables: Any, position: str) -> None:
        """The stream has applied everything the source has written (``position``): no lag."""
        now = datetime.now(UTC)
        with self._lock:
            for table in tables:
                status = self.tables.setdefault(table, TableStatus(table=table))
                if status.consecutive_failures or status.binlog.get("position_lost"):
                    continue
                status.current_as_of = now
                status.last_success = now
                status.binlog["event_lag_seconds"] = 0.0
                status.binlog["position"] = position

    def binlog_position_lost(self, table: str, message: str) -> None:
        """The stored binlog position of ``table`` was purged from the source (health: unhealthy)."""
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.binlog["position_lost"] = message
            status.consecutive_failures += 1
            status.last_error = message
            status.last_error_category = "other_errors"
            self.sync_errors += 1
            self.error_summary["other_errors"] = self.error_summary.get("other_errors", 0) + 1

    def set_table_owned(self, table: str, owned: bool) -> None:
        """Whether this instance holds the lease of ``table`` (tables owned elsewhere never degrade health)."""
        with self._lock:
            self.tables.setdefault(table, TableStatus(table=table)).owned = owned

    def set_staging_usage(self, usage_mb: float, files_count: int) -> None:
        """Cache the staging directory's size (measured outside the request path)."""
        with self._lock:
            self.staging_usage_mb = usage_mb
            self.staging_files_count = files_count
            self.staging_measured_monotonic = time.monotonic()

    def cycle_started(self) -> None:
        """A cycle over all tables begins (shown as the current cycle until it finishes)."""
        with self._lock:
            self.cycle_started_at = datetime.now(UTC)
            self._cycle_started_monotonic = time.monotonic()

    def cycle_finished(self, all_ok: bool) -> None:
        """A cycle over all tables ended; ``all_ok`` when every table succeeded."""
        with self._lock:
            self.cycles += 1
            if all_ok:
                self.last_successful_sync = datetime.now(UTC)
            if self._cycle_started_monotonic is not None:
                self.last_cycle_seconds = time.monotonic() - self._cycle_started_monotonic
            self.cycle_started_at = None
            self._cycle_started_monotonic = None

    def snapshot(self, history: bool = False) -> dict[str, Any]:
        """A consistent copy of the whole state for readers (``history``: with each table's recent syncs)."""
        with self._lock:
            now = time.monotonic()
            measured = self.staging_measured_monotonic
            return {
                "uptime_seconds": now - self.started_monotonic,
                "tables": {
                    name: TableStatus(**{**vars(st), "sweep": dict(st.sweep), "binlog": dict(st.binlog)})
                    for name, st in self.tables.items()
                },
                "database_status": dict(self.database_status),
                "database_errors": dict(self.database_errors),
                "database_servers": dict(self.database_servers),
                "last_successful_sync": self.last_successful_sync,
                "cycles": self.cycles,
                "sync_errors": self.sync_errors,
                "error_summary": dict(self.error_summary),
                "current_table": self.current_table,
                "staging": {
                    "usage_mb": self.staging_usage_mb,
                    "files_count": self.staging_files_count,
                    "age_seconds": None if measured is None else now - measured,
                },
                "started_at": self.started_at,
                "cycle_started_at": self.cycle_started_at,
                "last_cycle_seconds": self.last_cycle_seconds,
                "history": {name: list(samples) for name, samples in self.history.items()} if history else {},
            }
