"""The daemon's background services: the health/metrics HTTP server and the watchdog, started and stopped together.

This module wires the two together so neither imports the other (no import cycle between the
monitoring modules).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.monitoring.http_server import HealthServer, start_health_server
from dlt_db_sync.monitoring.metrics import Metrics
from dlt_db_sync.monitoring.resources import StagingMonitor
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.monitoring.watchdogs import OwnConnections, Watchdog, track_engines
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.watchdog")


class Services:
    """The running background services: health/metrics server and watchdog."""

    def __init__(self, health: HealthServer, watchdog: Watchdog | None) -> None:
        self.health = health
        self.watchdog = watchdog

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the watchdog, then the HTTP server."""
        if self.watchdog is not None:
            self.watchdog.stop(timeout)
        self.health.stop()


def start_services(
    settings: Settings,
    status: SyncStatus,
    engines_provider: Callable[[], Engines | None],
    metrics: Metrics | None = None,
    stop_event: threading.Event | None = None,
    own_connections: Mapping[str, OwnConnections] | None = None,
) -> Services:
    """Start the health/metrics server and the watchdog (``WATCHDOG_INTERVAL=0`` disables it).

    Without ``own_connections`` the engines returned by ``engines_provider`` are tracked now with
    :func:`track_engines`; call it right after creating the engines so every connection is known.
    """
    staging = StagingMonitor(settings.file_staging_dir, status.set_staging_usage)
    if metrics is None:
        metrics = Metrics(status, engines_provider, staging)
    else:
        metrics.bind(status, engines_provider, staging)
    health = start_health_server(settings, status, engines_provider, metrics)
    if settings.watchdog_interval <= 0:
        logger.info("disabled (WATCHDOG_INTERVAL=0)", extra=log_fields("WATCHDOG", "STARTUP"))
        return Services(health, None)
    if own_connections is None:
        engines = engines_provider()
        own_connections = track_engines(engines) if engines is not None else {}
    watchdog = Watchdog(settings, status, engines_provider, own_connections, stop_event, staging)
    watchdog.start()
    return Services(health, watchdog)
