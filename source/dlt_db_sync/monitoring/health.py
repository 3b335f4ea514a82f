"""The health document (``GET /``): a pure function of a status snapshot and the pools' counters.

Nothing here queries a database or walks the staging directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from dlt_db_sync.config.settings import VERSION, Settings
from dlt_db_sync.database.engines import Engines, pool_status
from dlt_db_sync.monitoring.run_state import ROLES, TableStatus
from dlt_db_sync.utils.formatting import as_utc, iso
from dlt_db_sync.utils.logging_setup import log_fields, mask_all

logger = logging.getLogger("dlt_sync.monitoring")


EnginesProvider = Callable[[], Engines | None]


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
        **({"binlog": _binlog_report(table.binlog)} if table.strategy == "binlog" else {}),
    }


def _binlog_report(binlog: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "position": binlog.get("position"),
        "event_lag_seconds": binlog.get("event_lag_seconds"),
        "events_applied_total": binlog.get("events_applied_total", 0),
        "rows_applied_total": binlog.get("rows_applied_total", 0),
        "position_lost": binlog.get("position_lost"),
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
    reasons.extend(
        f"table {name}: binlog position lost: {table.binlog['position_lost']}"
        for name, table in sorted(snapshot["tables"].items())
        if table.owned and table.binlog.get("position_lost")
    )
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
