"""The observability pack: alert rules (promtool), the Grafana dashboard, the alerting metrics.

``promtool`` comes from Debian's ``prometheus`` package (``make tools`` installs it); without it the
promtool tests skip, or fail under ``make test`` (REQUIRE_TOOLS, see tests/required_tools.py). The dashboard's and the rules' PromQL is checked against a live
``/metrics`` scrape of the health server, so neither can refer to a metric the daemon does not export.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.pool import QueuePool

import db_pipeline
from dlt_db_sync.config.settings import load_settings
from dlt_db_sync.monitoring.http_server import start_health_server
from dlt_db_sync.monitoring.metrics import Metrics
from dlt_db_sync.monitoring.run_state import SyncStatus
from required_tools import tool

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERT_TESTS = OBSERVABILITY / "alerts_test.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "dlt-db-sync.json"
README = ROOT / "README.md"
# Made by Prometheus itself for every target, not by the daemon.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}  # fmt: skip


@dataclass
class Spec:
    table: str
    strategy: str = "incremental"


def promtool() -> str:
    return tool("promtool", "Debian package 'prometheus'; `make tools` installs it")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=OBSERVABILITY, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana ``label_values(...)`` query) selects."""
    values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr, flags=re.S)
    if values:
        expr = values.group(1)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, which may hold anything)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def dashboard_expressions(board: dict[str, Any]) -> list[str]:
    expressions = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            expressions.append(query["query"] if isinstance(query, dict) else query)
    return expressions


# --------------------------------------------------------------------------- live scrape
def fed_status() -> SyncStatus:
    status = SyncStatus()
    status.register_tables([Spec("orders"), Spec("users"), Spec("remote")])
    status.set_database_status("source", True)
    status.set_database_status("target", False, "MySQL error 2003")
    status.cycle_started()
    status.table_started("orders")
    status.table_succeeded("orders", 100, 1.5)
    status.table_failed("users", "boom", "schema_errors", seconds=0.3)
    status.table_failed("users", "boom", "schema_errors", seconds=0.3)
    status.set_table_owned("remote", False)
    status.table_failed("remote", "held elsewhere")
    status.cycle_finished(True)
    status.set_staging_usage(3.5, 2)
    return status


@pytest.fixture
def scrape(tmp_path: Path) -> Iterator[dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """(sample name, sorted labels) -> value from ``GET /metrics`` of a fed, running health server."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=QueuePool, pool_size=4, max_overflow=1)
    held = [engine.connect() for _ in range(2)]
    settings = load_settings(
        {"SOURCE_DB_NAME": "s", "TARGET_DB_NAME": "t", "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1",
         "FILE_STAGING_DIR": str(tmp_path / "staging"), "INTERVAL": "120", "LAG_THRESHOLD_SECONDS": "900"},
        dotenv_path=None,
    )  # fmt: skip
    metrics = Metrics()
    server = start_health_server(settings, fed_status(), lambda: SimpleNamespace(source=engine, target=engine), metrics)
    try:
        metrics.observe_table("orders", 1.5, 100, True)
        metrics.observe_table("users", 0.3, 0, False, "schema_errors")
        metrics.observe_cycle(2.0)
        metrics.observe_batch(1.8)
        metrics.rows_deleted("orders", 3)
        metrics.differences("orders", 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
        for connection in held:
            connection.close()
        engine.dispose()
    yield {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (le) (rate(a_bucket{job=~"$job", x="y(z)"}[$__rate_interval]))') == {"a_bucket"}
    assert metric_names("time() - (b or c) > clamp_min(3 * d, 900)") == {"b", "c", "d"}
    assert metric_names("x > on(job, instance) group_left() (y > 0)") == {"x", "y"}
    assert metric_names('label_values(z{job=~"$job"}, instance)') == {"z"}
    assert metric_names("count(f > 0) or vector(0)") == {"f"}


def test_dashboard_and_alerts_use_only_exported_metrics(scrape: dict[Any, float]) -> None:
    exported = {name for name, _ in scrape} | PROMETHEUS_SERIES
    board_names = set().union(*map(metric_names, dashboard_expressions(dashboard())))
    alert_names = set().union(*(metric_names(rule["expr"]) for rule in alert_rules()))
    assert board_names - exported == set(), "the dashboard queries metrics the daemon does not export"
    assert alert_names - exported == set(), "the alert rules query metrics the daemon does not export"
    # What the issue asks the dashboard to show.
    assert {
        "table_lag_seconds", "records_processed_total", "sync_duration_seconds_bucket", "sync_errors_total",
        "connection_pool_utilization_percent", "cycle_duration_seconds_bucket", "staging_directory_usage_mb",
        "memory_usage_mb", "cpu_usage_percent",
    } <= board_names  # fmt: skip


def test_alerting_metrics_follow_the_status(scrape: dict[Any, float]) -> None:
    assert scrape[("database_up", (("database", "source"),))] == 1
    assert scrape[("database_up", (("database", "target"),))] == 0
    assert scrape[("table_consecutive_failures", (("table", "users"),))] == 2
    assert scrape[("table_consecutive_failures", (("table", "orders"),))] == 0
    # A table another replica owns raises no alert here: neither its failures nor its lag are exported.
    assert not any(labels == (("table", "remote"),) for name, labels in scrape if name.startswith("table_"))
    now = datetime.now(UTC).timestamp()
    assert now - 60 < scrape[("last_successful_cycle_timestamp_seconds", ())] <= now
    assert now - 60 < scrape[("daemon_start_time_seconds", ())] <= now
    assert scrape[("sync_interval_seconds", ())] == 120 and scrape[("lag_threshold_seconds", ())] == 900
    assert scrape[("connection_pool_utilization_percent", (("database", "target"),))] == 40.0  # 2 of 4+1
    assert scrape[("cycle_duration_seconds_count", ())] == 1


def test_no_successful_cycle_leaves_the_timestamp_out(tmp_path: Path) -> None:
    status = SyncStatus()
    status.cycle_finished(False)
    metrics = Metrics(status)
    text = metrics.render().decode()
    assert "\nlast_successful_cycle_timestamp_seconds " not in text and "\ndaemon_start_time_seconds " in text
    assert "\ndatabase_up{" not in text  # "unknown" before the first contact


def test_run_cycle_feeds_the_cycle_metrics(tmp_path: Path) -> None:
    metrics = Metrics()
    syncer = SimpleNamespace(metrics=metrics, run_cycle=lambda specs: [])
    status = SyncStatus()
    assert db_pipeline.run_cycle(syncer, [], status, 1)  # type: ignore[arg-type]
    snapshot = status.snapshot()
    assert snapshot["cycles"] == 1 and snapshot["last_cycle_seconds"] is not None
    assert snapshot["cycle_started_at"] is None
    assert b"cycle_duration_seconds_count 1.0" in metrics.render()


# --------------------------------------------------------------------------- alert rules
def test_alert_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never tested quiet"


def _readme_anchors() -> set[str]:
    """GitHub's anchors of the README's headings."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", README.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_alert_has_a_summary_severity_and_a_runbook_in_the_readme() -> None:
    anchors = _readme_anchors()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("README.md#"), rule["alert"]
        assert runbook.split("#", 1)[1] in anchors, f"{rule['alert']}: no README heading for {runbook}"


# --------------------------------------------------------------------------- Grafana dashboard
def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in (panel["datasource"], *(target["datasource"] for target in panel["targets"])):
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert "${DS_" not in DASHBOARD.read_text() or "__inputs" in board  # no unresolved import placeholders


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        box = panel["gridPos"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_lag_window_of_rules_matches_the_daemon_setting_names() -> None:
    """The rules read the daemon's exported settings rather than repeating its defaults."""
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "lag_threshold_seconds" in exprs["SyncTableLagging"]
    assert "sync_interval_seconds" in exprs["SyncNoSuccessfulCycle"]
