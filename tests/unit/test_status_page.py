"""The HTML status page: content negotiation, escaping and masking, history, and a real browser.

The browser test renders the page served by a live health server in headless Chromium (Debian's
``chromium``, installed by ``make test``), keeps the screenshot under the test's tmp directory
(path printed; ``STATUS_PAGE_SCREENSHOT=path`` copies it elsewhere, e.g. ``docs/status-page.png``)
and checks the DOM Chromium built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from dlt_db_sync.config.settings import Settings, load_settings
from dlt_db_sync.monitoring.http_server import HealthServer, start_health_server
from dlt_db_sync.monitoring.run_state import HISTORY_LENGTH, SyncStatus
from dlt_db_sync.monitoring.status_page import prefers_html, render_status_page, sparkline

SECRET = "s3cret"
EVIL_ERROR = f'MySQL error 1146: <script>alert("owned")</script> via mysql+pymysql://sync:{SECRET}@db/prod'
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,860",
)  # fmt: skip


@dataclass
class Spec:
    table: str
    strategy: str = "incremental"


@dataclass
class Sample:
    seconds: float
    rows: int
    ok: bool


def make_settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "SOURCE_DB_NAME": "s",
        "TARGET_DB_NAME": "t",
        "HEALTH_PORT": "0",
        "HEALTH_HOST": "127.0.0.1",
        "FILE_STAGING_DIR": str(tmp_path / "staging"),
    }
    return load_settings({**base, **env}, dotenv_path=None)


def busy_status() -> SyncStatus:
    """Three tables: ``orders`` in sync, ``events`` lagging two hours, ``payments`` failing."""
    status = SyncStatus()
    status.register_tables([Spec("orders"), Spec("events"), Spec("payments", "full_refresh")])
    status.set_database_status("source", True)
    status.set_database_status("target", True)
    status.set_staging_usage(12.5, 3)  # measured: the server then does not walk the directory meanwhile
    for cycle in range(12):
        status.cycle_started()
        status.table_started("orders")
        status.table_succeeded("orders", 100 * (cycle % 4), 0.5 + cycle % 3, mode="direct")
        status.table_started("events")
        status.table_succeeded("events", 5000 + 250 * cycle, 3.0 + cycle % 5 * 0.4, mode="file_staging")
        status.table_started("payments")
        if cycle < 9:
            status.table_succeeded("payments", 40, 1.0, mode="direct")
        else:
            status.table_failed("payments", EVIL_ERROR, "schema_errors", seconds=0.2)
        status.cycle_finished(cycle < 9)
    status.cycle_started()
    status.table_started("orders")
    status.tables["events"].current_as_of = datetime.now(UTC) - timedelta(hours=2)
    return status


def get(server: HealthServer, path: str, accept: str | None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}")
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HealthServer]:
    """A live health server over :func:`busy_status`, with SQLite pools (two target connections in use)."""
    pools = {
        role: sa.create_engine(f"sqlite:///{tmp_path / role}.db", poolclass=QueuePool, pool_size=5, max_overflow=2)
        for role in ("source", "target")
    }
    held = [pools["target"].connect() for _ in range(2)]
    engines = SimpleNamespace(**pools)
    health = start_health_server(
        make_settings(tmp_path, LAG_THRESHOLD_SECONDS="600"),
        busy_status(),
        lambda: engines,  # type: ignore[arg-type, return-value]
    )
    yield health
    health.stop()
    for connection in held:
        connection.close()
    for engine in pools.values():
        engine.dispose()


# --------------------------------------------------------------------------- content negotiation
@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),  # curl
        ("application/json", False),
        ("application/json, text/html", False),  # a tie keeps JSON
        ("text/html;q=0.5, application/json", False),
        ("text/html", True),
        (BROWSER_ACCEPT, True),  # Chrome/Firefox
        ("application/json;q=0.5, text/*", True),
        ("text/html;q=0, */*", False),
        ("text/html;q=abc", False),
    ],
)
def test_prefers_html(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    """The health body without the values that change between two requests."""
    return {k: v for k, v in body.items() if k not in {"timestamp", "uptime_seconds", "performance_metrics"}} | {
        "tables": {name: {k: v for k, v in t.items() if k != "lag_seconds"} for name, t in body["tables"].items()}
    }


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.9"])
def test_json_clients_keep_getting_the_health_json(server: HealthServer, accept: str | None) -> None:
    code, raw, content_type = get(server, "/", accept)
    expected_code, expected = server.health()
    assert (code, content_type) == (expected_code, "application/json")
    assert _stable(orjson.loads(raw)) == _stable(orjson.loads(orjson.dumps(expected, default=str)))


def test_browsers_and_status_path_get_the_page(server: HealthServer) -> None:
    for path, accept in (
        ("/", BROWSER_ACCEPT),
        ("/status", None),
        ("/status", "*/*"),
        ("/status/", "application/json"),
    ):
        code, raw, content_type = get(server, path, accept)
        assert (code, content_type) == (200, "text/html; charset=utf-8"), (path, accept)
        assert raw.startswith(b"<!DOCTYPE html>")
    code, raw, content_type = get(server, "/health", BROWSER_ACCEPT)  # the explicit JSON path stays JSON
    assert content_type == "application/json" and orjson.loads(raw)["status"] == "degraded"
    assert get(server, "/metrics", BROWSER_ACCEPT)[2].startswith("text/plain")


def test_unhealthy_page_keeps_the_health_code(server: HealthServer) -> None:
    server.status.set_database_status("target", False, f"MySQL error 2003: mysql://sync:{SECRET}@db")
    code, raw, content_type = get(server, "/status", None)
    page = raw.decode()
    assert (code, content_type) == (503, "text/html; charset=utf-8")
    assert 'class="badge status-unhealthy"' in page and SECRET not in page and "sync:***@db" in page


# --------------------------------------------------------------------------- rendering (no browser)
def _body(**table: Any) -> dict[str, Any]:
    return {
        "status": "degraded",
        "reasons": [f"table t failed: {EVIL_ERROR}"],
        "database_connections": {"source": {"status": "connected", "last_error": EVIL_ERROR}},
        "tables": {"t": {"strategy": "incremental", "mode": "direct", "owned": True, **table}},
    }


def test_render_escapes_and_masks_every_text() -> None:
    page = render_status_page(_body(last_error=EVIL_ERROR, consecutive_failures=3), {}, 600)
    assert "<script" not in page and SECRET not in page
    assert page.count("&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;") == 3  # reason, database, table
    assert page.count("sync:***@db/prod") == 3
    assert '<tr id="table-t" class="failing">' in page
    hostile_name = render_status_page({"tables": {'x"><img src=y>': {}}}, {}, 0)
    assert "<img" not in hostile_name and 'id="table-x&quot;&gt;&lt;img src=y&gt;"' in hostile_name


def test_render_shows_the_database_servers() -> None:
    body = {"database_connections": {
        "source": {"status": "connected", "server": {"flavor": "mariadb", "version": "10.11.6-MariaDB"}},
        "target": {"status": "disconnected", "pool_size": 5, "checked_out": 5, "overflow": 1, "utilization_percent": 85.7},
    }}  # fmt: skip
    page = render_status_page(body, {}, 0)
    assert re.search(r'<tr id="db-source"><td>source</td><td>connected</td><td>mariadb 10.11.6-MariaDB</td>', page)
    assert '<tr id="db-target"><td>target</td><td>disconnected</td>' in page
    assert "5 / 5 (+1 overflow, 85.7 %)" in page


def test_render_is_self_contained_and_refreshes() -> None:
    page = render_status_page(_body(), {"t": [Sample(1.0, 5, True), Sample(2.0, 0, False)]}, 600)
    assert '<meta http-equiv="refresh" content="10">' in page
    assert not re.search(r"<script|<link|src=|@import|url\(", page, flags=re.I)


@pytest.mark.parametrize(
    ("lag", "threshold", "owned", "late"),
    [(700.0, 600, True, True), (500.0, 600, True, False), (700.0, 0, True, False), (700.0, 600, False, False)],
)
def test_lag_cell_is_late_only_above_the_threshold(lag: float, threshold: float, owned: bool, late: bool) -> None:
    page = render_status_page(_body(lag_seconds=lag, owned=owned), {}, threshold)
    assert ('class="num lag late"' in page) is late


def test_sparkline_points_and_failed_dots() -> None:
    svg = sparkline([1.0, 3.0, 2.0, 0.0], [False, True, False, False], "seconds")
    (points,) = re.findall(r'<polyline points="([^"]+)"', svg)
    coordinates = [tuple(map(float, point.split(","))) for point in points.split()]
    assert [x for x, _ in coordinates] == [0.0, 40.0, 80.0, 120.0]
    assert coordinates[1][1] < coordinates[2][1] < coordinates[0][1] < coordinates[3][1]  # higher value, lower y
    assert svg.count('class="failed"') == 1 and 'cx="40.0"' in svg
    assert "no data" in sparkline([], [], "rows") and "<polyline" in sparkline([0.0], [False], "rows")


def test_history_is_bounded_and_records_failures() -> None:
    status = SyncStatus()
    for i in range(HISTORY_LENGTH + 10):
        status.table_succeeded("t", i, float(i))
    status.table_failed("t", "boom", seconds=1.5)
    history = status.snapshot(history=True)["history"]["t"]
    assert len(history) == HISTORY_LENGTH and status.snapshot()["history"] == {}  # only when asked for
    assert [s.rows for s in history[:2]] == [11, 12]  # the oldest fell off
    assert (history[-1].ok, history[-1].seconds, history[-1].rows) == (False, 1.5, 0)


def test_cycle_state_is_tracked() -> None:
    status = SyncStatus()
    status.cycle_started()
    running = status.snapshot()
    assert running["cycle_started_at"] is not None and running["last_cycle_seconds"] is None
    status.cycle_finished(True)
    done = status.snapshot()
    assert done["cycle_started_at"] is None and done["last_cycle_seconds"] >= 0
    page = render_status_page({}, {}, 0, cycle_started_at=running["cycle_started_at"])
    assert "running since" in page


# --------------------------------------------------------------------------- headless Chromium
def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


def test_status_page_in_headless_chromium(
    server: HealthServer, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (Debian package 'chromium'; `make test` installs it)")
    screenshot = tmp_path / "status_page.png"
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
         "--dump-dom", f"http://127.0.0.1:{server.port}/status"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"status page screenshot: {screenshot}")
    record_property("status_page_screenshot", str(screenshot))  # in the JUnit report (CI artifact)
    if os.environ.get("STATUS_PAGE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["STATUS_PAGE_SCREENSHOT"])
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000

    dom = result.stdout
    assert re.search(r'<span id="status" class="badge status-degraded"[^>]*>degraded</span>', dom)
    rows = dict(re.findall(r'<tr id="table-(\w+)"[^>]*>(.*?)</tr>', dom, flags=re.S))
    assert set(rows) == {"orders", "events", "payments"}
    assert re.search(r'<td class="num lag late">2 h 00 m</td>', rows["events"])
    assert 'class="num lag late"' not in rows["orders"]
    assert all(row.count('<svg class="spark"') == 2 for row in rows.values())
    assert re.search(r"<polyline points=\"(\S+ ){11}\S+\"", rows["events"])  # twelve syncs drawn
    assert rows["payments"].count('class="failed"') == 6  # three failed syncs in each of the two lines
    # The hostile error arrived as text: escaped, masked, and no script element was created.
    assert '&lt;script&gt;alert("owned")&lt;/script&gt;' in rows["payments"]
    assert "sync:***@db/prod" in rows["payments"] and SECRET not in dom
    assert "<script" not in dom
    assert re.search(r'<tr id="db-target">.*?<td>2 / 5 \(\+0 overflow, 28\.6 %\)</td>', dom, flags=re.S)
