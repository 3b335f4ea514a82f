"""The continuous verification sweep on real servers: it repairs what the cursor cannot see (a
late commit older than the lookback, a foreign-key cascade, an edit in the target) without
``--verify``, keeps to its rate, is guarded against mass deletes, and stops promptly on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import test_verification
from fault_helpers import start_daemon

from conftest import SyncEnv
from table_checks import assert_identical

pytestmark = pytest.mark.integration

make_syncer = test_verification.make_syncer
small_chunks = test_verification.small_chunks
OLD = "2024-01-01 00:00:00"


def make_sweep(syncer: Any, specs: list[Any]) -> Any:
    from dlt_db_sync.verification.sweep import VerificationSweep

    return VerificationSweep(syncer.engines, syncer.settings, specs, threading.Event(), syncer.status, syncer.metrics)


def run_pass(sweep: Any, table: str, limit: int = 100) -> None:
    """Step the sweep through one full pass of ``table`` (no pacing: the steps are called directly)."""
    current = next(p for p in sweep.passes if p.spec.table == table)
    for _ in range(limit):
        sweep.step(current)
        if current.started is None:
            return
    raise AssertionError("the pass did not end")


def identical(env: SyncEnv, table: str) -> bool:
    try:
        assert_identical(env.source, env.source_db, env.target, env.target_db, table)
    except AssertionError:
        return False
    return True


def test_sweep_repairs_late_commit_cascade_and_target_edit(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec

    sync_env.src(
        "CREATE TABLE parent (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL UNIQUE);"
        "INSERT INTO parent SELECT seq, CONCAT('p', seq) FROM seq_1_to_5;"
        "CREATE TABLE child (id INT PRIMARY KEY, parent_code VARCHAR(10) NOT NULL, v VARCHAR(20) NOT NULL,"
        " updated_at DATETIME NOT NULL, KEY (updated_at),"
        " FOREIGN KEY (parent_code) REFERENCES parent (code) ON UPDATE CASCADE);"
        # Spread modifiers: the cycle's window (the newest 5 minutes) holds rows 295-300, all of parent p1.
        f"INSERT INTO child SELECT seq, IF(seq > 290, 'p1', CONCAT('p', 1 + seq % 5)), CONCAT('v', seq), "
        f"'{OLD}' + INTERVAL seq MINUTE FROM seq_1_to_300"
    )
    spec = TableSpec("child", ("id",), modifier="updated_at", verify_every_minutes=0.01)
    syncer = make_syncer([spec], VERIFY_ROWS_PER_SECOND="100000")
    syncer.sync(spec)
    sync_env.src(
        "INSERT INTO child VALUES (1000, 'p1', 'late commit', '2023-06-01');"  # older than the lookback
        "UPDATE parent SET code = 'p9' WHERE code = 'p2'"
    )  # cascades into child, modifier untouched
    sync_env.tgt("UPDATE child SET v = 'edited in the target' WHERE id = 7")
    assert syncer.sync(spec).skipped and not identical(sync_env, "child")  # the cursor sees none of it

    sweep = make_sweep(syncer, [spec])
    sweep.start()
    try:
        deadline = time.monotonic() + 30
        while not identical(sync_env, "child") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sweep.stop()
    assert identical(sync_env, "child")
    table = test_verification.Syncer.table_status(syncer, "child")
    assert table.sweep["rows_repaired_total"] == 1 + 58 + 1  # the late row, the cascaded rows, the edit
    assert table.sweep["rows_checked_total"] >= 300 and table.sweep.get("last_full_pass") is not None


def test_sweep_keeps_to_its_rate_and_the_table_period(
    sync_env: SyncEnv, make_syncer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlt_db_sync.config.tables import TableSpec
    from dlt_db_sync.verification import chunk_compare

    monkeypatch.setattr(chunk_compare, "BUCKET_ROWS", 100)
    sync_env.src(
        "CREATE TABLE r (id INT PRIMARY KEY, v INT NOT NULL);"
        "INSERT INTO r SELECT seq, seq FROM seq_1_to_20000; ANALYZE TABLE r"
    )
    fast_period = TableSpec("r", ("id",), sync_strategy="full_refresh", verify_every_minutes=0.001)
    syncer = make_syncer([fast_period], VERIFY_ROWS_PER_SECOND="2000")
    syncer.sync(fast_period)

    def checked_after(spec: Any, seconds: float) -> tuple[int, float]:
        sweep = make_sweep(syncer, [spec])
        before = syncer.status.snapshot()["tables"]["r"].sweep.get("rows_checked_total", 0)
        started = time.monotonic()
        sweep.start()
        time.sleep(seconds)
        sweep.stop()
        elapsed = time.monotonic() - started
        return syncer.status.snapshot()["tables"]["r"].sweep["rows_checked_total"] - before, elapsed

    rows, elapsed = checked_after(fast_period, 3.0)
    # 2000 rows a slice, then 1 s of rest: at most the rate over the time plus the slice in flight.
    assert 2000 <= rows <= 2000 * elapsed + 2000, (rows, elapsed)
    # The default period (one pass a day) of a 20,000-row table allows one slice in 1.5 s.
    rows, elapsed = checked_after(TableSpec("r", ("id",), sync_strategy="full_refresh"), 1.5)
    assert rows == 2000, (rows, elapsed)


def test_sweep_guarded_and_ignore_tables_keep_their_rows(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec
    from dlt_db_sync.monitoring.health import health_report

    for table in ("rec", "ign"):
        sync_env.src(
            f"CREATE TABLE {table} (id INT PRIMARY KEY, updated_at DATETIME NOT NULL, KEY (updated_at));"
            f"INSERT INTO {table} SELECT seq, '{OLD}' FROM seq_1_to_20"
        )
    rec = TableSpec("rec", ("id",), modifier="updated_at", deletes="reconcile")
    ign = TableSpec("ign", ("id",), modifier="updated_at")
    syncer = make_syncer([rec, ign])
    syncer.sync(rec)
    syncer.sync(ign)
    sync_env.src("DELETE FROM rec WHERE id > 5; DELETE FROM ign WHERE id > 15")
    sweep = make_sweep(syncer, [rec, ign])
    run_pass(sweep, "rec")
    run_pass(sweep, "ign")
    assert sync_env.tgt_query("SELECT COUNT(*) FROM rec")[0][0] == 20  # 15 of 20: refused
    assert sync_env.tgt_query("SELECT COUNT(*) FROM ign")[0][0] == 20  # "deletes": "ignore": kept
    snapshot = syncer.status.snapshot()
    assert "refused" in snapshot["tables"]["rec"].sweep["refused"] and snapshot["tables"]["rec"].delete_refusals == 1
    assert syncer.metrics.refused == {"rec": 1}
    code, body = health_report(syncer.settings, snapshot, {}, {})
    assert body["status"] == "degraded" and body["tables"]["rec"]["verification_sweep"]["refused"]


def test_daemon_stops_promptly_while_sweeping(sync_env: SyncEnv) -> None:
    sync_env.src(
        "CREATE TABLE s (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO s SELECT seq, seq FROM seq_1_to_5000"
    )
    sync_env.write_tables([{"table": "s", "primary_key": "id", "verify_every_minutes": 0.001}])
    daemon = start_daemon(
        sync_env.environ(INTERVAL="3600", VERIFY_ROWS_PER_SECOND="1000", LOG_LEVEL="INFO"), cwd=sync_env.workdir
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(daemon.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("full pass" in line for line in lines) and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.poll() is None, "".join(lines)
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=20)
        took = time.monotonic() - sent
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    reader.join(timeout=5)
    text = "".join(lines)
    assert "VERIFY - SWEEP - started" in text and "VERIFY - SWEEP - stopped" in text, text
    assert code == 0 and took < 5, (code, took)
