"""Run-time status shared between the sync loop (writer) and the health endpoint (reader).

The loop reports what happens through :class:`SyncStatus`'s methods; readers take
:meth:`SyncStatus.snapshot`. All access goes through one lock; nothing here queries a database.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


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
    newest_modifier: datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_category: str | None = None
    skipped_last_cycle: bool = False
    sanitized: dict[str, int] = field(default_factory=dict)
    rows_deleted_total: int = 0
    differences_found: int = 0
    last_verify: datetime | None = None
    owned: bool = True


class SyncStatus:
    """Lock-guarded state of the daemon."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_monotonic = time.monotonic()
        self.tables: dict[str, TableStatus] = {}
        self.database_status: dict[str, str] = {"source": "unknown", "target": "unknown"}
        self.database_errors: dict[str, str | None] = {"source": None, "target": None}
        self.last_successful_sync: datetime | None = None
        self.cycles: int = 0
        self.sync_errors: int = 0
        self.error_summary: dict[str, int] = {
            "connection_errors": 0,
            "lock_timeout_errors": 0,
            "json_errors": 0,
            "schema_errors": 0,
            "data_errors": 0,
            "other_errors": 0,
        }
        self.current_table: str | None = None

    def register_tables(self, specs: Any) -> None:
        """Create a status entry per configured table (``specs``: iterable of TableSpec)."""
        with self._lock:
            for spec in specs:
                self.tables.setdefault(spec.table, TableStatus(table=spec.table, strategy=spec.strategy))

    def set_database_status(self, role: str, connected: bool, error: str | None = None) -> None:
        """Record whether ``role`` ('source'/'target') was reachable at the last contact."""
        with self._lock:
            self.database_status[role] = "connected" if connected else "disconnected"
            self.database_errors[role] = error

    def table_started(self, table: str) -> None:
        with self._lock:
            self.current_table = table
            self.tables.setdefault(table, TableStatus(table=table)).last_attempt = datetime.now(timezone.utc)

    def table_succeeded(
        self,
        table: str,
        rows: int,
        seconds: float,
        watermark: Any = None,
        newest_modifier: datetime | None = None,
        skipped: bool = False,
        mode: str = "",
        sanitized: dict[str, int] | None = None,
    ) -> None:
        now = datetime.now(timezone.utc)
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.last_success = now
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

    def table_failed(self, table: str, message: str, category: str = "other_errors") -> None:
        with self._lock:
            status = self.tables.setdefault(table, TableStatus(table=table))
            status.consecutive_failures += 1
            status.last_error = message
            status.last_error_category = category
            self.sync_errors += 1
            self.error_summary[category] = self.error_summary.get(category, 0) + 1
            self.current_table = None

    def cycle_finished(self, all_ok: bool) -> None:
        with self._lock:
            self.cycles += 1
            if all_ok:
                self.last_successful_sync = datetime.now(timezone.utc)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the whole state for readers."""
        with self._lock:
            return {
                "uptime_seconds": time.monotonic() - self.started_monotonic,
                "tables": {name: TableStatus(**vars(st)) for name, st in self.tables.items()},
                "database_status": dict(self.database_status),
                "database_errors": dict(self.database_errors),
                "last_successful_sync": self.last_successful_sync,
                "cycles": self.cycles,
                "sync_errors": self.sync_errors,
                "error_summary": dict(self.error_summary),
                "current_table": self.current_table,
            }
