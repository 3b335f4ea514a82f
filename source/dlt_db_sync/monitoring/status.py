"""Run-time status, the health endpoint and Prometheus metrics.

The sync loop (writer) reports what happens through :class:`SyncStatus`'s methods; readers take
:meth:`SyncStatus.snapshot`. All access goes through one short-held lock. The HTTP handlers
(``GET /`` health JSON, ``GET /status`` HTML page, ``GET /metrics``) only read that snapshot, the
pools' in-memory counters and cached values; they never query a database and never walk the
staging directory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dlt_db_sync.config.settings import VERSION, Settings
from dlt_db_sync.database.engines import Engines, pool_status
from dlt_db_sync.error_handling.errors import ConfigError
from dlt_db_sync.monitoring import status_page
from dlt_db_sync.monitoring.resources import ProcessSampler, StagingMonitor
from dlt_db_sync.utils.formatting import as_utc, iso
from dlt_db_sync.utils.logging_setup import log_fields, mask_all, mask_secrets

logger = logging.getLogger("dlt_sync.monitoring")

POOL_WARNING_PERCENT = 80.0
ROLES = ("source", "target")
# Table syncs remembered per table for the status page's sparklines (in memory only).
HISTORY_LENGTH = 50
EnginesProvider = Callable[[], Engines | None]


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
            "json_errors": 0,
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
        """A verification of ``table`` found ``differences`` differing rows."""
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
                    name: TableStatus(**{**vars(st), "sweep": dict(st.sweep)}) for name, st in self.tables.items()
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


def read_pools(engines_provider: EnginesProvider) -> dict[str, dict[str, Any] | None]:
    """Pool counters of both engines (None when there are no engines yet); no database query."""
    try:
        engines = engines_provider()
    except Exception:  # noqa: BLE001 - a health check must answer even when the provider breaks
        logger.exception("engines provider failed", extra=log_fields("HEALTH_CHECK", "POOL_STATUS"))
        return {role: None for role in ROLES}
    if engines is None:
        return {role: None for role in ROLES}
    pools: dict[str, dict[str, Any] | None] = {}
    for role in ROLES:
        try:
            pools[role] = pool_status(getattr(engines, role))
        except Exception:  # noqa: BLE001 - same: report "unknown" instead of failing the request
            logger.exception("cannot read the %s pool", role, extra=log_fields("HEALTH_CHECK", "POOL_STATUS"))
            pools[role] = None
    return pools


# --------------------------------------------------------------------------- health report
def table_lag_seconds(table: TableStatus, now: datetime) -> float | None:
    """Seconds since the target was last known to hold every change of ``table`` (None: never synced).

    That is the start of the last successful sync, not the newest modifier value: a table nobody
    writes to is not behind, and DATETIME modifiers are wall-clock values in the source's time zone.
    """
    if table.current_as_of is None:
        return None
    return round(max((now - table.current_as_of).total_seconds(), 0.0), 3)


def _table_report(table: TableStatus, now: datetime) -> dict[str, Any]:
    newest = as_utc(table.newest_modifier)
    return {
        "strategy": table.strategy,
        "mode": table.mode,
        "owned": table.owned,
        "last_success": iso(table.last_success),
        "last_attempt": iso(table.last_attempt),
        "rows_last_cycle": table.rows_last_cycle,
        "seconds_last_cycle": round(table.seconds_last_cycle, 3),
        "skipped_last_cycle": table.skipped_last_cycle,
        "lag_seconds": table_lag_seconds(table, now),
        "watermark": None if table.watermark is None else str(table.watermark),
        "newest_modifier": iso(table.newest_modifier),
        "newest_modifier_age_seconds": None if newest is None else round((now - newest).total_seconds(), 3),
        "consecutive_failures": table.consecutive_failures,
        "last_error": table.last_error,
        "last_error_category": table.last_error_category,
        "sanitized": dict(table.sanitized),
        "rows_deleted_total": table.rows_deleted_total,
        "differences_found": table.differences_found,
        "last_verify": iso(table.last_verify),
        "delete_refusals": table.delete_refusals,
        "last_delete_refusal": table.last_delete_refusal,
        "future_modifier_rows": table.future_modifier_rows,
        "verification_sweep": {
            "pass_progress": table.sweep.get("pass_progress", 0.0),
            "last_full_pass": iso(table.sweep.get("last_full_pass")),
            "last_pass_seconds": table.sweep.get("last_pass_seconds"),
            "rows_checked_total": table.sweep.get("rows_checked_total", 0),
            "rows_repaired_total": table.sweep.get("rows_repaired_total", 0),
            "refused": table.sweep.get("refused"),
        },
    }


def health_report(
    settings: Settings,
    snapshot: Mapping[str, Any],
    pools: Mapping[str, Mapping[str, Any] | None],
    performance: Mapping[str, Any],
    now: datetime | None = None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status code, TRD 10.1.2 body plus ``tables``) from a status snapshot; a pure function.

    ``unhealthy`` (503) when the source or target was unreachable at the last contact;
    ``degraded`` (200) when an owned table is failing or its lag exceeds ``LAG_THRESHOLD_SECONDS``
    (0 disables the lag check); ``healthy`` (200) otherwise. ``reasons`` says why.
    """
    now = now or datetime.now(UTC)
    reasons: list[str] = []
    connections: dict[str, Any] = {}
    for role in ROLES:
        state = snapshot["database_status"].get(role, "unknown")
        pool = pools.get(role) or {}
        connections[role] = {
            "status": state,
            "pool_size": pool.get("pool_size"),
            "checked_out": pool.get("checked_out"),
            "overflow": pool.get("overflow"),
            "utilization_percent": pool.get("utilization_percent"),
            "last_error": snapshot["database_errors"].get(role),
            "server": (snapshot.get("database_servers") or {}).get(role),
        }
        if state == "disconnected":
            reasons.append(f"{role} database unreachable: {snapshot['database_errors'].get(role) or 'no details'}")
    unhealthy = bool(reasons)
    tables: dict[str, Any] = {}
    for name, table in sorted(snapshot["tables"].items()):
        report = _table_report(table, now)
        tables[name] = report
        if not table.owned:
            continue  # another instance syncs it; its staleness here means nothing
        if table.consecutive_failures > 0:
            reasons.append(f"table {name} failed {table.consecutive_failures} time(s) in a row: {table.last_error}")
        if table.sweep.get("refused"):
            reasons.append(f"table {name}: the verification sweep was refused: {table.sweep['refused']}")
        lag = report["lag_seconds"]
        if settings.lag_threshold_seconds > 0 and lag is not None and lag > settings.lag_threshold_seconds:
            reasons.append(f"table {name} lag {lag:.0f}s above {settings.lag_threshold_seconds:.0f}s")
    status = "unhealthy" if unhealthy else ("degraded" if reasons else "healthy")
    staging = snapshot.get("staging") or {}
    staging_enabled = settings.pipeline_mode == "file_staging" or any(
        t.mode == "file_staging" for t in snapshot["tables"].values()
    )
    active = sum((pool or {}).get("checked_out") or 0 for pool in pools.values())
    body: dict[str, Any] = {
        "status": status,
        "reasons": reasons,
        "timestamp": iso(now),
        "version": VERSION,
        "uptime_seconds": round(snapshot["uptime_seconds"], 1),
        "database_connections": connections,
        "last_successful_sync": iso(snapshot["last_successful_sync"]),
        "tables_synced": sum(1 for t in snapshot["tables"].values() if t.last_success is not None),
        "tables_configured": len(snapshot["tables"]),
        "current_table": snapshot.get("current_table"),
        "cycles": snapshot.get("cycles", 0),
        "sync_errors": snapshot["sync_errors"],
        "file_staging": {
            "enabled": staging_enabled,
            "directory": str(settings.file_staging_dir),
            "usage_mb": staging.get("usage_mb"),
            "files_count": staging.get("files_count"),
        },
        "performance_metrics": {**performance, "active_connections": active},
        "error_summary": dict(snapshot["error_summary"]),
        "tables": tables,
    }
    return (503 if unhealthy else 200), mask_all(body)


# --------------------------------------------------------------------------- Prometheus metrics
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class _ScrapeTimeCollector:
    """Gauges computed when Prometheus scrapes: pools, process, staging usage, per-table state.

    The settings and timestamps among them exist for the alert rules (``observability/alerts.yml``):
    they compare against the daemon's own ``INTERVAL`` and ``LAG_THRESHOLD_SECONDS``.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    # (key, metric name, help, labels)
    FAMILIES: tuple[tuple[str, str, str, list[str]], ...] = (
        ("pool_size", "connection_pool_size", "Configured connection pool size", ["database"]),
        ("pool_out", "connection_pool_checked_out", "Connections checked out of the pool", ["database"]),
        ("memory", "memory_usage_mb", "Resident memory of the daemon in MB", []),
        ("cpu", "cpu_usage_percent", "CPU use of the daemon (100 = one core)", []),
        ("staging", "staging_directory_usage_mb", "Size of the file-staging directory in MB", []),
        ("lag", "table_lag_seconds", "Seconds since the table was last known to be in sync", ["table"]),
        ("pool_use", "connection_pool_utilization_percent", "Checked out / (pool size + overflow)", ["database"]),
        ("db_up", "database_up", "1 when the database was reachable at the last contact, 0 when not", ["database"]),
        ("failures", "table_consecutive_failures", "Failed syncs of the table in a row (0 after a success)", ["table"]),
        ("last_cycle", "last_successful_cycle_timestamp_seconds", "Unix time of the last cycle all tables synced", []),
        ("started", "daemon_start_time_seconds", "Unix time the daemon started", []),
        ("interval", "sync_interval_seconds", "INTERVAL: seconds from one cycle start to the next", []),
        ("lag_threshold", "lag_threshold_seconds", "LAG_THRESHOLD_SECONDS (0: the lag check is off)", []),
    )

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {key: GaugeMetricFamily(name, doc, labels=labels) for key, name, doc, labels in self.FAMILIES}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families (without samples) so the registry can detect name clashes."""
        yield from self._families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Current values; failures are logged and the affected samples left out."""
        families = self._families()
        metrics = self.metrics
        for role, pool in read_pools(metrics.engines_provider).items():
            if pool is not None:
                families["pool_size"].add_metric([role], pool["pool_size"])
                families["pool_out"].add_metric([role], pool["checked_out"])
                families["pool_use"].add_metric([role], pool["utilization_percent"])
        try:
            families["memory"].add_metric([], metrics.sampler.memory_mb())
            families["cpu"].add_metric([], metrics.sampler.cpu_percent())
        except psutil.Error:
            logger.exception("cannot read process statistics", extra=log_fields("METRICS", "PROCESS"))
        if metrics.settings is not None:
            families["interval"].add_metric([], metrics.settings.interval)
            families["lag_threshold"].add_metric([], metrics.settings.lag_threshold_seconds)
        if metrics.status is None:
            yield from families.values()
            return
        snapshot = metrics.status.snapshot()
        self._add_state(families, snapshot)
        if metrics.staging is not None:
            metrics.staging.refresh_in_background_if_stale(snapshot["staging"]["age_seconds"])
        yield from families.values()

    @staticmethod
    def _add_state(families: dict[str, GaugeMetricFamily], snapshot: Mapping[str, Any]) -> None:
        """The samples read from a :meth:`SyncStatus.snapshot`."""
        usage = snapshot["staging"]["usage_mb"]
        if usage is not None:
            families["staging"].add_metric([], usage)
        for role in ROLES:
            state = snapshot["database_status"].get(role)
            if state in ("connected", "disconnected"):  # "unknown" before the first contact: no sample
                families["db_up"].add_metric([role], 1.0 if state == "connected" else 0.0)
        families["started"].add_metric([], snapshot["started_at"].timestamp())
        if snapshot["last_successful_sync"] is not None:
            families["last_cycle"].add_metric([], snapshot["last_successful_sync"].timestamp())
        now = datetime.now(UTC)
        for name, table in sorted(snapshot["tables"].items()):
            if not table.owned:
                continue  # another replica syncs it: its staleness here must not raise alerts
            families["failures"].add_metric([name], table.consecutive_failures)
            lag = table_lag_seconds(table, now)
            if lag is not None:
                families["lag"].add_metric([name], lag)


class Metrics:
    """The daemon's Prometheus metrics in a private registry (created by main, passed around)."""

    def __init__(
        self,
        status: SyncStatus | None = None,
        engines_provider: EnginesProvider | None = None,
        staging: StagingMonitor | None = None,
    ) -> None:
        self.status = status
        self.engines_provider: EnginesProvider = engines_provider or (lambda: None)
        self.staging = staging
        # Set by the health server; exported so alert rules can compare against INTERVAL etc.
        self.settings: Settings | None = None
        self.sampler = ProcessSampler()
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.sync_duration = Histogram(
            "sync_duration_seconds", "Time to sync one table", ["table"], buckets=DURATION_BUCKETS, registry=registry
        )
        self.records = Counter("records_processed_total", "Rows synced", ["table"], registry=registry)
        self.errors = Counter("sync_errors_total", "Failed table syncs", ["table", "category"], registry=registry)
        self.success_rate = Gauge(
            "table_sync_success_rate", "Share of successful syncs since start", ["table"], registry=registry
        )
        self.cycle_time = Histogram(
            "cycle_duration_seconds", "Seconds of one cycle of all tables", buckets=DURATION_BUCKETS, registry=registry
        )
        self.batch_time = Histogram(
            "batch_processing_time",
            "Seconds to process one batch of tables",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.staging_ops = Counter(
            "file_staging_operations", "File-staging operations", ["operation"], registry=registry
        )
        self.recovery_time = Histogram(
            "error_recovery_time",
            "Seconds from the first failed attempt of a retried operation to its success",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.deleted = Counter(
            "rows_deleted_total", "Rows removed by delete reconciliation", ["table"], registry=registry
        )
        self.verify_differences = Counter(
            "verify_differences_total", "Differing rows found by verification", ["table"], registry=registry
        )
        self.delete_refusals = Counter(
            "mass_delete_refusals_total",
            "Deleting paths refused by the mass-delete guard",
            ["table"],
            registry=registry,
        )
        self.future_rows = Gauge(
            "future_modifier_rows",
            "Rows whose modifier is beyond the source clock plus the allowed skew",
            ["table"],
            registry=registry,
        )
        self.sweep_checked = Counter(
            "verify_sweep_rows_checked_total",
            "Rows compared by the continuous verification sweep",
            ["table"],
            registry=registry,
        )
        self.sweep_repaired = Counter(
            "verify_sweep_rows_repaired_total",
            "Rows re-copied or deleted by the verification sweep",
            ["table"],
            registry=registry,
        )
        self.sweep_progress = Gauge(
            "verify_sweep_pass_progress",
            "Share of the current verification pass done (0-1)",
            ["table"],
            registry=registry,
        )
        self.sweep_last_pass = Gauge(
            "verify_sweep_last_full_pass_timestamp_seconds",
            "Unix time the last full verification pass ended",
            ["table"],
            registry=registry,
        )
        registry.register(_ScrapeTimeCollector(self))
        self._lock = threading.Lock()
        self._attempts: dict[str, list[int]] = {}  # table -> [successes, attempts]

    def bind(self, status: SyncStatus, engines_provider: EnginesProvider, staging: StagingMonitor | None) -> None:
        """Attach the state read at scrape time (for a ``Metrics()`` created before the services)."""
        self.status = status
        self.engines_provider = engines_provider
        self.staging = staging or self.staging

    def observe_table(self, table: str, seconds: float, rows: int, ok: bool, category: str | None = None) -> None:
        """One table sync finished (``ok``) or failed (``category``: the error_summary bucket)."""
        self.sync_duration.labels(table).observe(max(seconds, 0.0))
        if rows:
            self.records.labels(table).inc(max(rows, 0))
        if not ok:
            self.errors.labels(table, category or "other_errors").inc()
        with self._lock:
            counts = self._attempts.setdefault(table, [0, 0])
            counts[0] += 1 if ok else 0
            counts[1] += 1
            rate = counts[0] / counts[1]
        self.success_rate.labels(table).set(rate)

    def observe_cycle(self, seconds: float) -> None:
        """One cycle over all tables took ``seconds``."""
        self.cycle_time.observe(max(seconds, 0.0))

    def observe_batch(self, seconds: float) -> None:
        """One batch of tables took ``seconds``."""
        self.batch_time.observe(max(seconds, 0.0))

    def staging_operation(self, operation: str, n: int = 1) -> None:
        """Count ``n`` file-staging operations: ``write`` / ``read`` (one part file each),
        ``cleanup`` (a finished or leftover run removed), ``expire`` (a file past the retention)."""
        self.staging_ops.labels(operation).inc(max(n, 0))

    def observe_recovery(self, seconds: float) -> None:
        """Recovering from an error (e.g. a lost connection) took ``seconds``."""
        self.recovery_time.observe(max(seconds, 0.0))

    def rows_deleted(self, table: str, n: int) -> None:
        """Delete reconciliation removed ``n`` rows of ``table``."""
        self.deleted.labels(table).inc(max(n, 0))

    def differences(self, table: str, n: int) -> None:
        """Verification found ``n`` differing rows in ``table``."""
        self.verify_differences.labels(table).inc(max(n, 0))

    def delete_refused(self, table: str) -> None:
        """The mass-delete guard refused a deleting path of ``table``."""
        self.delete_refusals.labels(table).inc()

    def future_modifier_rows(self, table: str, rows: int) -> None:
        """``rows`` rows of ``table`` have a modifier beyond the source clock."""
        self.future_rows.labels(table).set(max(rows, 0))

    def sweep_slice(self, table: str, checked: int, repaired: int, pass_fraction: float) -> None:
        """The verification sweep compared ``checked`` rows of ``table`` and repaired ``repaired``."""
        self.sweep_checked.labels(table).inc(max(checked, 0))
        if repaired:
            self.sweep_repaired.labels(table).inc(repaired)
        self.sweep_progress.labels(table).set(min(max(pass_fraction, 0.0), 1.0))

    def sweep_pass_done(self, table: str) -> None:
        """The verification sweep finished a full pass over ``table``."""
        self.sweep_last_pass.labels(table).set(time.time())
        self.sweep_progress.labels(table).set(0.0)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


# --------------------------------------------------------------------------- HTTP server
class _HealthHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: HealthServer


class _Handler(BaseHTTPRequestHandler):
    server: _HealthHTTPServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        """``/`` (or ``/health``): health JSON; ``/status``: HTML page; ``/metrics``: Prometheus text; else 404.

        ``/`` answers the HTML page too when the ``Accept`` header ranks HTML above JSON (a browser);
        ``curl`` (``*/*``) and JSON clients keep getting JSON.
        """
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/status" or (path == "/" and status_page.prefers_html(self.headers.get("Accept"))):
                code, page = self.server.app.status_html()
                self._send(code, "text/html; charset=utf-8", page.encode("utf-8"))
            elif path in ("/", "/health", "/healthz"):
                code, body = self.server.app.health()
                self._send(code, "application/json", orjson.dumps(body, option=orjson.OPT_INDENT_2, default=str))
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, self.server.app.metrics.render())
            else:
                self._send(404, "application/json", orjson.dumps({"status": "error", "message": "not found"}))
        except (BrokenPipeError, ConnectionResetError) as exc:
            logger.debug("client went away: %s", exc, extra=log_fields("HEALTH_CHECK", "REQUEST"))
        except Exception as exc:  # noqa: BLE001 - answer 500 with the reason instead of dropping the socket
            logger.exception("%s failed", path, extra=log_fields("HEALTH_CHECK", "REQUEST"))
            message = mask_secrets(f"{type(exc).__name__}: {exc}")
            self._send(500, "application/json", orjson.dumps({"status": "error", "message": message}))

    def _send(self, code: int, content_type: str, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        # Healthchecks hit this every few seconds; access lines are debug noise.
        logger.debug("%s %s", self.address_string(), format % args, extra=log_fields("HEALTH_CHECK", "REQUEST"))


class HealthServer:
    """The health/metrics HTTP server running in a daemon thread."""

    def __init__(
        self, settings: Settings, status: SyncStatus, engines_provider: EnginesProvider, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.status = status
        self.engines_provider = engines_provider
        self.metrics = metrics
        if metrics.staging is None:  # one monitor, so health and /metrics share its throttling
            metrics.staging = StagingMonitor(settings.file_staging_dir, status.set_staging_usage)
        if metrics.settings is None:
            metrics.settings = settings
        self.staging = metrics.staging
        self._httpd: _HealthHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``HEALTH_PORT=0``)."""
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP code, body) of ``GET /``; reads only the snapshot and in-memory counters."""
        return self._report(self._snapshot())

    def status_html(self) -> tuple[int, str]:
        """(HTTP code, HTML) of ``GET /status``: the health body plus each table's recent history."""
        snapshot = self._snapshot(history=True)
        code, body = self._report(snapshot)
        page = status_page.render_status_page(
            body,
            snapshot["history"],
            self.settings.lag_threshold_seconds,
            cycle_started_at=snapshot["cycle_started_at"],
            last_cycle_seconds=snapshot["last_cycle_seconds"],
        )
        return code, page

    def _snapshot(self, history: bool = False) -> dict[str, Any]:
        snapshot = self.status.snapshot(history)
        self.staging.refresh_in_background_if_stale(snapshot["staging"]["age_seconds"])
        return snapshot

    def _report(self, snapshot: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        performance: dict[str, Any] = {"memory_usage_mb": None, "cpu_usage_percent": None}
        try:
            performance = {
                "memory_usage_mb": self.metrics.sampler.memory_mb(),
                "cpu_usage_percent": self.metrics.sampler.cpu_percent(),
            }
        except psutil.Error:
            logger.exception("cannot read process statistics", extra=log_fields("HEALTH_CHECK", "PROCESS"))
        return health_report(self.settings, snapshot, read_pools(self.engines_provider), performance)

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread; raises ConfigError when the port cannot be bound."""
        host, port = self.settings.health_host, self.settings.health_port
        try:
            httpd = _HealthHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} for the health endpoint ({exc.strerror or exc}); "
                "set HEALTH_PORT to a free port"
            ) from exc
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="health-server", daemon=True
        )
        self._thread.start()
        logger.info(
            "listening on http://%s:%d/ (status page at /status, metrics at /metrics)",
            host,
            self.port,
            extra=log_fields("HEALTH_CHECK", "STARTUP"),
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._httpd = None
        logger.info("health endpoint stopped", extra=log_fields("HEALTH_CHECK", "SHUTDOWN"))


def start_health_server(
    settings: Settings,
    status: SyncStatus,
    engines_provider: EnginesProvider,
    metrics: Metrics | None = None,
) -> HealthServer:
    """Serve ``GET /`` (health JSON) and ``GET /metrics`` on HEALTH_HOST:HEALTH_PORT; returns the server.

    ``engines_provider`` returns the current :class:`Engines` (or None); only their pool counters
    are read. Without ``metrics`` a private :class:`Metrics` is created (``server.metrics``).
    """
    if metrics is None:
        metrics = Metrics(status, engines_provider, StagingMonitor(settings.file_staging_dir, status.set_staging_usage))
    elif metrics.status is None:
        metrics.bind(status, engines_provider, None)
    return HealthServer(settings, status, engines_provider, metrics).start()


def start_services(
    settings: Settings,
    status: SyncStatus,
    engines_provider: EnginesProvider,
    metrics: Metrics | None = None,
    stop_event: threading.Event | None = None,
) -> Any:
    """Start the health server and the watchdog: see :func:`watchdog.start_services`."""
    # Imported here: watchdog builds on this module, so a top-level import would be circular.
    from dlt_db_sync.monitoring.watchdogs import start_services as start

    return start(settings, status, engines_provider, metrics, stop_event)
