"""The status page and the alerting metrics fed by real cycles on the session servers."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SyncEnv
from dlt_db_sync.config import settings as config
from dlt_db_sync.config.tables import load_tables

pytestmark = pytest.mark.integration

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def fetch(port: int, path: str, accept: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:  # 200 or 503 both carry the page
        return exc.read().decode()


def test_real_cycles_feed_the_page_and_the_metrics(sync_env: SyncEnv) -> None:
    from db_pipeline import run_cycle
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.monitoring.http_server import start_health_server
    from dlt_db_sync.monitoring.metrics import Metrics
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.pipeline_management.syncer import TableSyncer

    sync_env.src("CREATE TABLE countries (code CHAR(2) PRIMARY KEY, name VARCHAR(64) NOT NULL)")
    sync_env.src("INSERT INTO countries VALUES ('ID', 'Indonesia'), ('JP', 'Japan')")
    sync_env.write_tables([{"table": "countries", "primary_key": "code"}, {"table": "missing", "primary_key": "id"}])
    settings = config.load_settings(sync_env.environ(HEALTH_HOST="127.0.0.1"), dotenv_path=None)
    specs = load_tables(settings.tables_file)
    engines = create_engines(settings)
    status, metrics = SyncStatus(), Metrics()
    status.register_tables(specs)
    server = None
    try:
        syncer = TableSyncer(engines, settings, status, threading.Event(), metrics)
        syncer.prepare()
        for cycle in (1, 2):
            assert not run_cycle(syncer, specs, status, cycle)  # `missing` fails every cycle
        server = start_health_server(settings, status, lambda: engines, metrics)
        page = fetch(server.port, "/", BROWSER_ACCEPT)
        scrape = fetch(server.port, "/metrics", "*/*")
    finally:
        if server is not None:
            server.stop()
        engines.dispose()

    history = status.snapshot(history=True)["history"]
    assert [s.ok for s in history["missing"]] == [False, False] and all(s.seconds > 0 for s in history["missing"])
    assert [s.rows for s in history["countries"]] == [2, 0]
    assert page.startswith("<!DOCTYPE html>") and 'id="table-countries"' in page and 'id="table-missing"' in page
    assert page.count('<svg class="spark"') == 4 and page.count('class="failed"') == 4
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }
    assert samples[("table_consecutive_failures", (("table", "missing"),))] == 2
    assert samples[("table_consecutive_failures", (("table", "countries"),))] == 0
    assert samples[("cycle_duration_seconds_count", ())] == 2
    # Fed by the syncer itself, not by the test (tests/unit drive these directly).
    assert samples[("batch_processing_time_count", ())] >= 2  # at least one batch per cycle
    assert samples[("records_processed_total", (("table", "countries"),))] == 2
    assert samples[("sync_duration_seconds_count", (("table", "missing"),))] == 2
    assert samples[("sync_interval_seconds", ())] == 1
    assert ("last_successful_cycle_timestamp_seconds", ()) not in samples  # no cycle had every table synced
