"""The daemon's Prometheus metrics: event counters fed by the sync loop and gauges computed at scrape time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.monitoring.health import EnginesProvider, read_pools, table_lag_seconds
from dlt_db_sync.monitoring.resources import ProcessSampler, StagingMonitor
from dlt_db_sync.monitoring.run_state import ROLES, SyncStatus
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.monitoring")


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
        ("memory", "memory_usage_mb", "Resident memory of the daemon in MB (10^6 bytes)", []),
        ("cpu", "cpu_usage_percent", "CPU use of the daemon (100 = one core)", []),
        ("staging", "staging_directory_usage_mb", "Size of the file-staging directory in MB (10^6 bytes)", []),
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
            "verify_differences_total",
            "Differing rows and column definitions found by verification",
            ["table"],
            registry=registry,
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
        self.binlog_events = Counter(
            "binlog_events_applied_total", "Binlog row events applied to the target", ["table"], registry=registry
        )
        self.binlog_rows = Counter(
            "binlog_rows_applied_total", "Rows written or deleted from binlog events", ["table"], registry=registry
        )
        self.binlog_lag = Gauge(
            "binlog_event_lag_seconds",
            "Now minus the source time of the last applied binlog event (0 when caught up)",
            ["table"],
            registry=registry,
        )
        self.binlog_lost = Gauge(
            "binlog_position_lost",
            "1 while the stored binlog position is purged from the source and no new snapshot was taken",
            ["table"],
            registry=registry,
        )
        self.binlog_batch = Histogram(
            "binlog_apply_seconds",
            "Seconds of one binlog target transaction (rows and position)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0),
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
        """Verification found ``n`` differing rows or column definitions in ``table``."""
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

    def binlog_applied(self, table: str, events: int, rows: int, lag: float) -> None:
        """A binlog target transaction applied ``events`` row events / ``rows`` rows of ``table``."""
        self.binlog_events.labels(table).inc(max(events, 0))
        self.binlog_rows.labels(table).inc(max(rows, 0))
        self.records.labels(table).inc(max(rows, 0))
        self.binlog_lag.labels(table).set(max(lag, 0.0))
        self.binlog_lost.labels(table).set(0)

    def binlog_caught_up(self, table: str) -> None:
        """The stream has applied everything the source has written: no lag for ``table``."""
        self.binlog_lag.labels(table).set(0.0)

    def binlog_position_lost(self, table: str, lost: bool = True) -> None:
        """The stored binlog position of ``table`` is gone from the source (1) or was replaced (0)."""
        self.binlog_lost.labels(table).set(1 if lost else 0)

    def observe_binlog_batch(self, seconds: float) -> None:
        """One binlog target transaction took ``seconds``."""
        self.binlog_batch.observe(max(seconds, 0.0))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
