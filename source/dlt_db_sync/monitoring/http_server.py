"""The health/status/metrics HTTP server (``GET /`` health JSON, ``GET /status`` HTML page, ``GET /metrics``).

The handlers only read the status snapshot, the pools' in-memory counters and cached values; they
never query a database and never walk the staging directory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import psutil
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.error_handling.errors import ConfigError
from dlt_db_sync.monitoring import status_page
from dlt_db_sync.monitoring.health import EnginesProvider, health_report, read_pools
from dlt_db_sync.monitoring.metrics import Metrics
from dlt_db_sync.monitoring.resources import StagingMonitor
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.utils.logging_setup import log_fields, mask_secrets

logger = logging.getLogger("dlt_sync.monitoring")


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
