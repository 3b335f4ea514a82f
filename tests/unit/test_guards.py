"""The mass-delete guard's decision, the guard rails' settings and their health and metrics fields."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dlt_db_sync.config.settings import load_settings
from dlt_db_sync.config.tables import TableSpec, parse_tables
from dlt_db_sync.error_handling.errors import ConfigError, is_transient
from dlt_db_sync.monitoring.health import health_report
from dlt_db_sync.monitoring.metrics import Metrics
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused, check_deletes, delete_ratio

BASE_ENV = {"SOURCE_DB_NAME": "src", "TARGET_DB_NAME": "tgt"}
SPEC = TableSpec("orders", ("id",), modifier="updated_at", deletes="reconcile")


def settings(**env: str) -> Any:
    return load_settings({**BASE_ENV, **env}, dotenv_path=None)


def check(spec: TableSpec = SPEC, env: dict[str, str] | None = None, **counts: int) -> None:
    check_deletes(spec, settings(**(env or {})), what="delete reconciliation", **counts)


def test_ratio_boundary_and_default() -> None:
    assert settings().max_delete_ratio == 0.5
    check(target_rows=100, deleting=50, source_rows=50)  # exactly the ratio: allowed
    with pytest.raises(MassDeleteRefused) as refused:
        check(target_rows=100, deleting=51, source_rows=49)
    message = str(refused.value)
    assert "'orders'" in message and "51 of the target's 100 rows" in message and "source 49 rows" in message
    assert "MAX_DELETE_RATIO 0.5" in message and "max_delete_ratio" in message
    assert not is_transient(refused.value)  # never retried


def test_table_ratio_wins_and_one_disables() -> None:
    strict = TableSpec("orders", ("id",), max_delete_ratio=0.1)
    with pytest.raises(MassDeleteRefused, match="its max_delete_ratio 0.1"):
        check(strict, target_rows=100, deleting=11, source_rows=89)
    check(TableSpec("orders", ("id",), max_delete_ratio=1.0), target_rows=100, deleting=99, source_rows=1)
    check(env={"MAX_DELETE_RATIO": "1"}, target_rows=100, deleting=99, source_rows=1)
    assert delete_ratio(strict, settings(MAX_DELETE_RATIO="0.9")) == 0.1


def test_empty_source_needs_its_own_opt_in() -> None:
    with pytest.raises(MassDeleteRefused, match="the source reads 0 rows and the target holds 7") as refused:
        check(TableSpec("orders", ("id",), max_delete_ratio=1.0), target_rows=7, deleting=7, source_rows=0)
    assert "allow_empty_source" in str(refused.value)
    check(TableSpec("orders", ("id",), allow_empty_source=True), target_rows=7, deleting=7, source_rows=0)
    check(target_rows=0, deleting=0, source_rows=0)  # nothing to remove: nothing to refuse


def test_guard_settings_are_parsed_and_validated() -> None:
    parsed = settings(MAX_DELETE_RATIO="0.25", MAX_CLOCK_SKEW_SECONDS="60", VERIFY_ROWS_PER_SECOND="100")
    assert (parsed.max_delete_ratio, parsed.max_clock_skew_seconds, parsed.verify_rows_per_second) == (0.25, 60, 100)
    with pytest.raises(ConfigError, match="MAX_DELETE_RATIO"):
        settings(MAX_DELETE_RATIO="1.5")
    spec = parse_tables(
        [
            {
                "table": "t",
                "primary_key": "id",
                "max_delete_ratio": 1.0,
                "allow_empty_source": True,
                "verify_every_minutes": 30,
            }
        ],
        "tables.json",
    )[0]
    assert (spec.max_delete_ratio, spec.allow_empty_source, spec.verify_every_minutes) == (1.0, True, 30)
    with pytest.raises(ConfigError, match="max_delete_ratio"):
        parse_tables([{"table": "t", "primary_key": "id", "max_delete_ratio": 2}], "tables.json")


def test_health_and_metrics_show_the_guard_rails() -> None:
    status = SyncStatus()
    status.register_tables([SPEC])
    for role in ("source", "target"):
        status.set_database_status(role, True)
    status.future_modifier_rows("orders", 3)
    status.sweep_progress("orders", checked=1000, repaired=2, pass_fraction=0.25, refused=None)
    code, body = health_report(settings(), status.snapshot(), {}, {})
    table = body["tables"]["orders"]
    assert body["status"] == "healthy" and table["future_modifier_rows"] == 3
    assert table["verification_sweep"]["pass_progress"] == 0.25
    assert table["verification_sweep"]["rows_repaired_total"] == 2
    status.sweep_progress("orders", checked=10, repaired=0, pass_fraction=0.3, refused="table 'orders': refused")
    code, body = health_report(settings(), status.snapshot(), {}, {})
    assert body["status"] == "degraded" and any("sweep" in r for r in body["reasons"])
    status.sweep_pass_done("orders", 12.0, refused=False)
    code, body = health_report(settings(), status.snapshot(), {}, {})
    assert body["status"] == "healthy"
    assert body["tables"]["orders"]["verification_sweep"]["last_full_pass"] is not None

    metrics = Metrics(status)
    metrics.delete_refused("orders")
    metrics.future_modifier_rows("orders", 3)
    metrics.sweep_slice("orders", 1000, 2, 0.5)
    metrics.sweep_pass_done("orders")
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("mass_delete_refusals_total", ("orders",))] == 1
    assert samples[("future_modifier_rows", ("orders",))] == 3
    assert samples[("verify_sweep_rows_checked_total", ("orders",))] == 1000
    assert samples[("verify_sweep_rows_repaired_total", ("orders",))] == 2
    assert samples[("verify_sweep_last_full_pass_timestamp_seconds", ("orders",))] > 0


def test_1317_is_retried_unless_the_watchdog_killed_it() -> None:
    import pymysql

    from dlt_db_sync.error_handling.errors import KILLED_BY_DAEMON_KEY, DatabaseError, own_kill_error
    from dlt_db_sync.monitoring.watchdogs import OwnConnections

    interrupted = pymysql.err.OperationalError(1317, "Query execution was interrupted")
    assert is_transient(interrupted)  # someone else's KILL QUERY
    info: dict[str, Any] = {}
    registry = OwnConnections()
    registry.add(42, info)
    assert own_kill_error(interrupted, info) is None
    registry.mark_killed(42)
    assert info[KILLED_BY_DAEMON_KEY] is True
    ours = own_kill_error(interrupted, info)
    assert isinstance(ours, DatabaseError) and ours.code == 1317 and not is_transient(ours)
    assert KILLED_BY_DAEMON_KEY not in info  # consumed: a later kill by someone else is retried again
    registry.mark_killed(42)
    assert own_kill_error(pymysql.err.OperationalError(1205, "lock wait"), info) is None  # other codes untouched
    registry.remove(42)
    registry.mark_killed(42)  # forgotten connection: nothing to mark, no error


def test_sweep_pacing_arithmetic(monkeypatch: Any) -> None:
    import threading

    from dlt_db_sync.verification import sweep as verification_sweep
    from dlt_db_sync.verification.sweep import TablePass, VerificationSweep

    day = TableSpec("orders", ("id",))
    hourly = TableSpec("orders", ("id",), verify_every_minutes=60)
    sweep = VerificationSweep(None, settings(VERIFY_ROWS_PER_SECOND="5000"), [day], threading.Event(), SyncStatus())  # type: ignore[arg-type]
    assert sweep.slice_buckets() == 5  # one second of the rate, in 1,000-row buckets
    assert (
        VerificationSweep(
            None, settings(VERIFY_ROWS_PER_SECOND="10"), [day], threading.Event(), SyncStatus()
        ).slice_buckets()
        == 1
    )  # type: ignore[arg-type]
    now = 1000.0
    monkeypatch.setattr(verification_sweep.time, "monotonic", lambda: now)
    current = TablePass(day, estimate=1_000_000, started=now, rows=5000)
    sweep._schedule(current, 5000, complete=False)
    assert sweep._global_next == now + 1.0  # 5,000 rows at 5,000 rows/s
    assert current.next_due == now + 86400 * 5000 / 1_000_000  # its share of one pass a day
    current = TablePass(hourly, estimate=0, started=now, rows=5000)
    sweep._schedule(current, 5000, complete=False)
    assert current.next_due == now  # size unknown: the global rate alone paces the first pass
    current = TablePass(hourly, estimate=10_000, started=now - 600, rows=10_000)
    sweep._schedule(current, 5000, complete=True)
    assert current.next_due == now + 3000  # the next pass starts when the hour since this one began is over


def test_readme_documents_every_tables_json_key() -> None:
    from conftest import ROOT
    from dlt_db_sync.config.tables import TABLES_SCHEMA

    text = (ROOT / "README.md").read_text()
    missing = [key for key in TABLES_SCHEMA["items"]["properties"] if f"`{key}`" not in text]
    assert not missing, f"README.md lacks the tables.json key(s): {missing}"
