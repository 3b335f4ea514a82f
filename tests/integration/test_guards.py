"""Guard rails on real servers: the mass-delete guard on every deleting path, ``--verify --print``,
the watermark capped by the source clock, NULL modifiers, collation-equal keys and error 1317."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import test_verification

from conftest import SyncEnv
from log_lines import logged_line
from table_checks import assert_identical

pytestmark = pytest.mark.integration

# The Syncer fixtures and helpers of the verification tests, shared.
make_syncer = test_verification.make_syncer
small_chunks = test_verification.small_chunks
run_main = test_verification.run_main

OLD = "2024-01-01 00:00:00"


def create_items(env: SyncEnv, rows: int = 20, table: str = "t") -> None:
    env.src(
        f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL, updated_at DATETIME NOT NULL, KEY (updated_at));"
        f"INSERT INTO {table} SELECT seq, CONCAT('v', seq), '{OLD}' FROM seq_1_to_{rows}"
    )


def target_digest(env: SyncEnv, table: str = "t") -> list[tuple[Any, ...]]:
    return env.tgt_query(f"SELECT id, v, updated_at FROM `{table}` ORDER BY id")


def health_of(syncer: Any) -> dict[str, Any]:
    from dlt_db_sync.monitoring.health import health_report

    return health_report(syncer.settings, syncer.status.snapshot(), {}, {})[1]


# --------------------------------------------------------------------------- mass-delete guard
@pytest.mark.parametrize("strategy", ["reconcile", "full_refresh"])
def test_emptied_source_is_refused_until_allowed(sync_env: SyncEnv, make_syncer: Any, strategy: str) -> None:
    from dataclasses import replace

    from dlt_db_sync.config.tables import TableSpec

    create_items(sync_env)
    if strategy == "reconcile":
        spec = TableSpec("t", ("id",), modifier="updated_at", deletes="reconcile")
    else:
        spec = TableSpec("t", ("id",), sync_strategy="full_refresh")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    before = target_digest(sync_env)
    sync_env.src("TRUNCATE TABLE t")

    result = syncer.syncer.sync_table(spec)
    assert not result.ok
    assert "'t'" in result.error and "0 rows" in result.error and "20" in result.error
    assert "allow_empty_source" in result.error
    assert target_digest(sync_env) == before  # exactly as it was
    health = health_of(syncer)
    assert health["status"] == "degraded"
    assert health["tables"]["t"]["delete_refusals"] == 1
    assert syncer.metrics.refused == {"t": 1}
    assert sync_env.tgt_query("SHOW TABLES LIKE 't\\_\\_dlt%%'") == []  # no shadow left behind

    allowed = replace(spec, allow_empty_source=True)
    assert syncer.sync(allowed).ok
    assert sync_env.tgt_query("SELECT COUNT(*) FROM t")[0][0] == 0


def test_emptied_source_fails_once_with_exit_1(
    sync_env: SyncEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_items(sync_env)
    sync_env.write_tables([{"table": "t", "primary_key": "id", "modifier": "updated_at", "deletes": "reconcile"}])
    assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 0
    sync_env.src("DELETE FROM t")
    with caplog.at_level(logging.ERROR):
        assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 1
    refusals = [logged_line(r) for r in caplog.records if "refused" in logged_line(r)]
    assert refusals and "allow_empty_source" in refusals[0], refusals
    assert sync_env.tgt_query("SELECT COUNT(*) FROM t")[0][0] == 20


def test_delete_ratio_guards_reconcile_until_raised(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dataclasses import replace

    from dlt_db_sync.config.tables import TableSpec

    create_items(sync_env)
    spec = TableSpec("t", ("id",), modifier="updated_at", deletes="reconcile")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    sync_env.src("DELETE FROM t WHERE id > 5")  # 15 of 20: above the default 0.5
    result = syncer.syncer.sync_table(spec)
    assert not result.ok
    assert "15 of the target's 20 rows" in result.error and "MAX_DELETE_RATIO 0.5" in result.error
    assert sync_env.tgt_query("SELECT COUNT(*) FROM t")[0][0] == 20
    # The global setting, then the table's own key, allow it.
    assert not make_syncer([spec], MAX_DELETE_RATIO="0.7").syncer.sync_table(spec).ok
    assert make_syncer([spec], MAX_DELETE_RATIO="0.8").sync(spec).details["rows_deleted"] == 15
    sync_env.src("DELETE FROM t WHERE id > 1")
    assert not syncer.syncer.sync_table(spec).ok  # 4 of 5
    assert syncer.sync(replace(spec, max_delete_ratio=1.0)).details["rows_deleted"] == 4


def test_shadow_swap_refused_when_it_would_remove_most_rows(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec

    create_items(sync_env)
    spec = TableSpec("t", ("id",), sync_strategy="full_refresh")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    before = target_digest(sync_env)
    sync_env.src("DELETE FROM t WHERE id > 4")
    result = syncer.syncer.sync_table(spec)
    assert not result.ok and "shadow swap" in result.error and "16 of the target's 20" in result.error
    assert target_digest(sync_env) == before
    assert sync_env.tgt_query("SHOW TABLES LIKE 't\\_\\_dlt%%'") == []
    assert make_syncer([spec], MAX_DELETE_RATIO="1").sync(spec).ok
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "t")


def test_repair_by_chunks_guarded(sync_env: SyncEnv, make_syncer: Any, small_chunks: None) -> None:
    from dlt_db_sync.config.tables import TableSpec
    from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused
    from dlt_db_sync.verification.repair import refresh_by_chunks

    create_items(sync_env, rows=100)
    spec = TableSpec("t", ("id",), sync_strategy="full_refresh")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    before = target_digest(sync_env)
    sync_env.src("DELETE FROM t WHERE id > 30")
    with pytest.raises(MassDeleteRefused, match="repair by chunks"):
        refresh_by_chunks(syncer.engines, syncer.settings, threading.Event(), spec, "insert", max_fraction=1.0)
    assert target_digest(sync_env) == before


def test_verify_repair_guarded(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    create_items(sync_env)
    sync_env.write_tables([{"table": "t", "primary_key": "id", "modifier": "updated_at"}])
    assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 0
    sync_env.src("DELETE FROM t WHERE id > 2")
    before = target_digest(sync_env)
    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair")
    assert code == 1 and "REFUSED" in out and "18 of the target's 20 rows" in out, out
    assert target_digest(sync_env) == before
    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair", MAX_DELETE_RATIO="1")
    assert code == 0, out


# --------------------------------------------------------------------------- --print
def test_print_lists_differences_and_changes_nothing(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    create_items(sync_env)
    sync_env.write_tables([{"table": "t", "primary_key": "id", "modifier": "updated_at"}])
    assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 0
    sync_env.tgt(
        "UPDATE t SET v = 'edited' WHERE id = 7; DELETE FROM t WHERE id = 3;"
        f"INSERT INTO t VALUES (99, 'stray', '{OLD}')"
    )
    before = target_digest(sync_env)
    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair", "--print")
    assert code == 1, out
    assert "copy   id=3" in out and "update id=7" in out and "delete id=99" in out, out
    assert "would copy 2 rows (1 missing, 1 changed) and delete 1 rows" in out
    assert target_digest(sync_env) == before
    # Without --repair the same listing; an identical table lists nothing and exits 0.
    assert run_main(sync_env, monkeypatch, capsys, "--verify", "--print")[0] == 1
    assert run_main(sync_env, monkeypatch, capsys, "--verify", "--repair")[0] == 0
    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair", "--print")
    assert code == 0 and "would copy" not in out


def test_print_requires_verify(capsys: pytest.CaptureFixture[str]) -> None:
    from dlt_db_sync.config.command_line import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--once", "--print"])
    assert exited.value.code == 2
    assert "--print requires --verify" in capsys.readouterr().err


# --------------------------------------------------------------------------- watermark cap
@pytest.mark.parametrize("kind", ["DATETIME", "TIMESTAMP(6)", "DATE"])
def test_future_modifier_does_not_hide_present_rows(
    sync_env: SyncEnv, make_syncer: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    from dlt_db_sync.config.tables import TableSpec

    now = "CURDATE()" if kind == "DATE" else "NOW()"
    future = "2037-12-31" if kind.startswith("TIMESTAMP") else "2099-01-01"  # TIMESTAMP ends in 2038
    sync_env.src(
        f"CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL, updated_at {kind} NOT NULL, KEY (updated_at));"
        f"INSERT INTO t SELECT seq, 'v', '2020-01-01' FROM seq_1_to_5"
    )
    spec = TableSpec("t", ("id",), modifier="updated_at")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    sync_env.src(f"UPDATE t SET v = 'placeholder', updated_at = '{future}' WHERE id = 1")
    syncer.sync(spec)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sync_env.src(f"UPDATE t SET v = 'now', updated_at = {now} WHERE id = 2")  # a normal update, later
        syncer.sync(spec)
    assert sync_env.tgt_query("SELECT v FROM t WHERE id IN (1, 2) ORDER BY id") == [("placeholder",), ("now",)]
    assert syncer.table_status("t").future_modifier_rows == 1
    warnings = [logged_line(r) for r in caplog.records if "beyond the source clock" in logged_line(r)]
    assert len(warnings) == 1, warnings  # once per cycle
    assert health_of(syncer)["tables"]["t"]["future_modifier_rows"] == 1
    sync_env.src(f"UPDATE t SET updated_at = {now} WHERE id = 1")  # the placeholder corrected
    syncer.sync(spec)
    assert syncer.table_status("t").future_modifier_rows == 0


def test_integer_modifier_is_not_capped(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec

    sync_env.src(
        "CREATE TABLE t (id INT PRIMARY KEY, version BIGINT NOT NULL, KEY (version));"
        "INSERT INTO t VALUES (1, 1), (2, 2)"
    )
    spec = TableSpec("t", ("id",), modifier="version")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    sync_env.src("UPDATE t SET version = 4102444800 WHERE id = 1")  # a 'future' epoch: just a version
    syncer.sync(spec)
    result = syncer.sync(spec)
    assert result.skipped and result.details == {}
    assert syncer.table_status("t").future_modifier_rows == 0


# --------------------------------------------------------------------------- error 1317
def _blocked_select(env: SyncEnv, kill: Any, **overrides: Any) -> tuple[list[int], Any]:
    """Run a SELECT ... FOR UPDATE that waits on a row lock, through the retry policy; ``kill(id)``
    interrupts it. Returns (connection ids of the attempts, result or the error raised)."""
    from fault_helpers import row_locks_held

    from dlt_db_sync.config.settings import load_settings
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.error_handling.retry import RetryPolicy
    from dlt_db_sync.monitoring.watchdogs import track_engines

    env.src("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)")
    settings = load_settings(env.environ(LOCK_TIMEOUT_BASE_DELAY="0.1", **overrides), dotenv_path=None)
    engines = create_engines(settings)
    own = track_engines(engines)
    attempts: list[int] = []

    def work() -> str:
        with engines.source.connect() as conn:
            attempts.append(int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()))
            if len(attempts) == 1:
                conn.exec_driver_sql("SELECT id FROM t WHERE id = 1 FOR UPDATE").fetchall()
            return "done"

    def killer() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if attempts and "FOR UPDATE" in str(
                env.source.query("SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s", args=(attempts[0],))
            ):
                kill(attempts[0], own, settings, engines)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    try:
        with row_locks_held(env.source, env.source_db, "SELECT id FROM t WHERE id = 1 FOR UPDATE"):
            thread.start()
            try:
                outcome: Any = RetryPolicy.from_settings(settings).call(
                    work, what="blocked select", stop_event=threading.Event()
                )
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                outcome = exc
            thread.join(timeout=10)
    finally:
        engines.dispose()
    return attempts, outcome


def test_1317_from_another_session_is_retried(sync_env: SyncEnv) -> None:
    def someone_else(connection_id: int, *_: Any) -> None:
        sync_env.source.execute(f"KILL QUERY {connection_id}")

    attempts, outcome = _blocked_select(sync_env, someone_else)
    assert outcome == "done" and len(attempts) == 2


def test_1317_from_our_watchdog_is_not_retried(sync_env: SyncEnv) -> None:
    from dlt_db_sync.error_handling.errors import DatabaseError
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.monitoring.watchdogs import Watchdog

    def watchdog_kill(connection_id: int, own: Any, settings: Any, engines: Any) -> None:
        watchdog = Watchdog(settings, SyncStatus(), lambda: engines, own, threading.Event())
        deadline = time.monotonic() + 10
        while connection_id not in watchdog.check_database("source") and time.monotonic() < deadline:
            time.sleep(0.2)
        watchdog.stop()

    attempts, outcome = _blocked_select(sync_env, watchdog_kill, LONG_QUERY_SECONDS="1", KILL_LONG_QUERIES="true")
    assert isinstance(outcome, DatabaseError) and outcome.code == 1317 and not outcome.transient, outcome
    assert "watchdog" in str(outcome) and len(attempts) == 1


# --------------------------------------------------------------------------- collation-equal keys
def test_collation_equal_keys_converge_in_one_repair(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_env.src(
        "CREATE TABLE c (code VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL, "
        "region CHAR(2) CHARACTER SET latin1 NOT NULL, v INT NOT NULL, PRIMARY KEY (code, region));"
        "INSERT INTO c VALUES ('a', 'de', 1), ('b', 'fr', 2), ('ü', 'at', 3);"
        "INSERT INTO c SELECT CONCAT('k', seq), 'xx', seq + 10 FROM seq_1_to_10"  # the guard counts deletes
    )
    sync_env.write_tables([{"table": "c", "primary_key": ["code", "region"]}])
    assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 0
    sync_env.tgt(
        "UPDATE c SET code = 'A' WHERE code = 'a'; UPDATE c SET region = 'FR' WHERE code = 'b';"
        "UPDATE c SET code = 'Ü' WHERE v = 3"
    )
    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair")
    assert code == 0, out
    rows = sync_env.tgt_query("SELECT BINARY code, BINARY region, v FROM c WHERE v < 10 ORDER BY v")
    assert rows == [(b"a", b"de", 1), (b"b", b"fr", 2), ("ü".encode(), b"at", 3)]


# --------------------------------------------------------------------------- NULL modifiers
def test_null_modifier_rows_inserted_updated_deleted_arrive(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec

    sync_env.src(
        "CREATE TABLE n (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL, updated_at DATETIME NULL, KEY (updated_at));"
        f"INSERT INTO n SELECT seq, CONCAT('v', seq), IF(seq % 2, NULL, '{OLD}') FROM seq_1_to_20"
    )
    spec = TableSpec("n", ("id",), modifier="updated_at", deletes="reconcile")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    assert syncer.sync(spec).skipped  # idle: the NULL rows' fingerprints match
    sync_env.src(
        "INSERT INTO n VALUES (100, 'new null', NULL); UPDATE n SET v = 'changed' WHERE id = 3;"
        "DELETE FROM n WHERE id = 5"
    )
    result = syncer.sync(spec)
    assert result.rows == 2 and result.details["rows_deleted"] == 1, result
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "n")
    # A target edit of a NULL-modifier row is put back too.
    sync_env.tgt("UPDATE n SET v = 'edited' WHERE id = 7")
    assert syncer.sync(spec).rows == 1
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "n")


def _rnd_next(server: Any) -> int:
    return int(server.query("SHOW GLOBAL STATUS LIKE 'Handler_read_rnd_next'")[0][1])


def test_idle_cycle_over_null_modifier_rows_scans_no_table(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec
    from dlt_db_sync.pipeline_management.change_detection import null_modifier_sql

    sync_env.src(
        "CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL, updated_at DATETIME NULL, KEY ix_mod (updated_at));"
        "INSERT INTO big SELECT seq, 'null modifier', NULL FROM seq_1_to_100000;"
        f"INSERT INTO big SELECT seq, 'dated', '{OLD}' FROM seq_100001_to_100010"
    )
    spec = TableSpec("big", ("id",), modifier="updated_at")
    syncer = make_syncer([spec])
    syncer.sync(spec)
    syncer.sync(spec)  # warm: the schema checks of a first cycle read information_schema
    before = _rnd_next(sync_env.source), _rnd_next(sync_env.target)
    assert syncer.sync(spec).skipped
    after = _rnd_next(sync_env.source), _rnd_next(sync_env.target)
    # A full scan of either table would read 100,010 rows with Handler_read_rnd_next.
    assert after[0] - before[0] < 5_000 and after[1] - before[1] < 5_000, (before, after)
    for server, db in ((sync_env.source, sync_env.source_db), (sync_env.target, sync_env.target_db)):
        with server.connect(db) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = 'big' AND COLUMN_NAME = 'updated_at' AND SEQ_IN_INDEX = 1"
            )
            index = cur.fetchone()[0]
            cur.execute("EXPLAIN " + null_modifier_sql("big", "updated_at", "COUNT(*), BIT_XOR(CRC32(v))", index))
            columns = [d[0] for d in cur.description]
            plan = dict(zip(columns, cur.fetchone(), strict=True))
        assert plan["type"] in {"ref", "ref_or_null", "range"} and plan["key"] == index, plan
