"""The long-query watchdog kills this daemon's own long query and never another client's."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest

from dlt_db_sync.config.settings import load_settings
from dlt_db_sync.database.engines import create_engines
from dlt_db_sync.monitoring.health import health_report
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.monitoring.watchdogs import Watchdog, track_engines
from log_lines import logged_line

pytestmark = pytest.mark.integration


def processlist_info(server: Any, thread_id: int) -> str | None:
    rows = server.query("SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s", args=(thread_id,))
    return rows[0][0] if rows else None


def test_track_connections_records_connection_ids(sync_env: Any) -> None:
    settings = load_settings(sync_env.environ(), dotenv_path=None)
    engines = create_engines(settings)
    own = track_engines(engines)
    try:
        with engines.source.connect() as conn:
            connection_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        assert connection_id in own["source"]
        assert len(own["target"]) == 0
    finally:
        engines.dispose()
    assert connection_id not in own["source"]  # closed by dispose: forgotten


def test_watchdog_kills_only_our_long_query(sync_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = sync_env.source
    other_user = f"other_{uuid.uuid4().hex[:6]}"
    server.execute(f"CREATE USER '{other_user}'@'%' IDENTIFIED BY 'otherpw'")
    settings = load_settings(
        sync_env.environ(LONG_QUERY_SECONDS="1", KILL_LONG_QUERIES="true", WATCHDOG_INTERVAL="0.5"), dotenv_path=None
    )
    engines = create_engines(settings)
    own = track_engines(engines)
    other = server.connect(user=other_user, password="otherpw")
    other_id = other.thread_id()
    results: dict[str, Any] = {}

    def ours() -> None:
        started = time.monotonic()
        try:
            with engines.source.connect() as conn:
                results["ours_id"] = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
                results["ours"] = conn.exec_driver_sql("SELECT SLEEP(30)").scalar()
        except Exception as exc:  # noqa: BLE001 - a killed query may also surface as an error
            results["ours_error"] = exc
        results["ours_seconds"] = time.monotonic() - started

    def theirs() -> None:
        try:
            with other.cursor() as cur:
                cur.execute("SELECT SLEEP(30)")
                results["theirs"] = cur.fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - interrupted by the test's own clean-up KILL
            results["theirs_error"] = exc

    our_thread = threading.Thread(target=ours)
    their_thread = threading.Thread(target=theirs)
    watchdog = Watchdog(settings, SyncStatus(), lambda: engines, own, threading.Event())
    try:
        with caplog.at_level(logging.INFO, logger="dlt_sync"):
            their_thread.start()
            our_thread.start()
            watchdog.start()
            our_thread.join(timeout=10)
            assert not our_thread.is_alive(), "our SLEEP(30) was not killed"
            assert results["ours_seconds"] < 8
            # Two more watchdog rounds: the other user's query, older than the limit, is still untouched.
            time.sleep(1.2)
            assert their_thread.is_alive()
            assert "SLEEP(30)" in (processlist_info(server, other_id) or "")
        ours_id = results["ours_id"]
        assert results.get("ours") == 1 or "ours_error" in results  # SLEEP returns 1 when interrupted
        messages = [logged_line(r) for r in caplog.records if "LONG_QUERY" in logged_line(r)]
        assert f"WATCHDOG - LONG_QUERY - killed the query of source connection {ours_id}" in messages
        assert not [m for m in messages if f"connection {other_id} " in m]
    finally:
        watchdog.stop()
        server.execute(f"KILL QUERY {int(other_id)}")  # end the other client's sleep: keep the test short
        their_thread.join(timeout=10)
        other.close()
        engines.dispose()
        server.execute(f"DROP USER IF EXISTS '{other_user}'@'%'")
    assert not their_thread.is_alive()


def test_stopped_server_makes_health_unhealthy(sync_env: Any, server_factory: Any) -> None:
    doomed = server_factory.start("doomed-target")
    doomed.execute("CREATE DATABASE IF NOT EXISTS t")
    settings = load_settings(
        sync_env.environ(TARGET_DB_HOST=doomed.host, TARGET_DB_PORT=str(doomed.port), TARGET_DB_NAME="t"),
        dotenv_path=None,
    )
    status = SyncStatus()
    watchdog = Watchdog(settings, status, lambda: None, {})
    watchdog.check_once()
    assert health_report(settings, status.snapshot(), {}, {})[0] == 200
    doomed.stop()
    try:
        watchdog.check_once()
        code, body = health_report(settings, status.snapshot(), {}, {})
        assert (code, body["status"]) == (503, "unhealthy")
        assert body["database_connections"]["source"]["status"] == "connected"
        assert body["database_connections"]["target"]["status"] == "disconnected"
    finally:
        doomed.start()
    watchdog.check_once()
    assert health_report(settings, status.snapshot(), {}, {})[1]["status"] == "healthy"
