"""Binlog change capture (issue 16) on throwaway MariaDB servers writing a row-based binlog.

Each test snapshots an empty (or partly filled) source table, changes the source, lets the stream
catch up (``BinlogStrategy.catch_up``, as ``--once`` does) and compares the tables exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fidelity_helpers import assert_same_table

from conftest import BINLOG_SOURCE_ARGS, ROOT, SyncEnv
from dlt_db_sync.config import settings as config
from dlt_db_sync.config import tables as table_config
from dlt_db_sync.database.engines import create_engines
from dlt_db_sync.monitoring.health import health_report
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.binlog.ddl import parse_ddl
from dlt_db_sync.pipeline_management.binlog.stream import BinlogStrategy
from dlt_db_sync.pipeline_management.binlog.tables import split_binlog_tables
from mariadb_server import MariaDBServer
from table_checks import assert_identical

pytestmark = pytest.mark.integration

ORDERS_DDL = """
CREATE TABLE orders (
  id INT NOT NULL PRIMARY KEY,
  customer VARCHAR(40) NOT NULL,
  email VARCHAR(60) NULL,
  amount DECIMAL(12,2) NOT NULL,
  note TEXT NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  UNIQUE KEY email_uq (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
TABLES = [{"table": "orders", "primary_key": "id", "sync_strategy": "binlog"}]


@contextmanager
def stream(env: SyncEnv, tables: list[dict[str, Any]], **overrides: Any) -> Iterator[tuple[BinlogStrategy, SyncStatus]]:
    """A binlog stream over ``tables`` (engines disposed afterwards)."""
    settings = config.load_settings(env.environ(**overrides), dotenv_path=None)
    specs = table_config.parse_tables(list(tables), env.write_tables(list(tables)))
    engines = create_engines(settings)
    status = SyncStatus()
    status.register_tables(specs)
    try:
        _cycle, binlog_specs, problem = split_binlog_tables(engines, settings, specs, status)
        assert problem is None, problem
        yield BinlogStrategy(engines, settings, binlog_specs, status, threading.Event()), status
    finally:
        engines.dispose()


def catch_up(env: SyncEnv, tables: list[dict[str, Any]] = TABLES, **overrides: Any) -> SyncStatus:
    """Snapshot what needs it and apply every event the source has; asserts success."""
    with stream(env, tables, **overrides) as (binlog, status):
        assert binlog.catch_up(), status.snapshot()["tables"]
    return status


def random_workload(env: SyncEnv, seed: int, operations: int, first_id: int = 1, ids: int = 200) -> None:
    """Inserts, updates (also of the unique email and the key), deletes, multi-row and rolled-back transactions."""
    rng = random.Random(seed)
    conn = env.source.connect(env.source_db)
    conn.autocommit(False)
    try:
        with conn.cursor() as cur:
            for n in range(operations):
                key = rng.randrange(first_id, first_id + ids)
                choice = rng.random()
                if choice < 0.35:
                    cur.execute(
                        "INSERT INTO orders (id, customer, email, amount, note) VALUES (%s, %s, %s, %s, %s) "
                        "ON DUPLICATE KEY UPDATE amount = amount + 1",
                        (
                            key,
                            f"c{n}",
                            f"e{n}@x" if rng.random() < 0.5 else None,
                            f"{rng.randrange(10**6)}.{n % 100:02d}",
                            "x\x00\t" * rng.randrange(3),
                        ),
                    )
                elif choice < 0.55:
                    cur.execute("UPDATE orders SET amount = amount * 2, note = %s WHERE id = %s", (f"n{n}", key))
                elif choice < 0.62:
                    # Two rows swap their unique e-mails in one transaction.
                    other = rng.randrange(first_id, first_id + ids)
                    cur.execute("UPDATE orders SET email = NULL WHERE id IN (%s, %s)", (key, other))
                    cur.execute("UPDATE orders SET email = %s WHERE id = %s", (f"s{seed}_{n}a@x", key))
                    cur.execute("UPDATE orders SET email = %s WHERE id = %s", (f"s{seed}_{n}b@x", other))
                elif choice < 0.67:
                    # A key change, to a key no other call uses.
                    cur.execute("UPDATE IGNORE orders SET id = %s WHERE id = %s", (10**7 + seed * 1000 + n, key))
                elif choice < 0.82:
                    cur.execute("DELETE FROM orders WHERE id = %s", (key,))
                elif choice < 0.9:
                    cur.execute(
                        "UPDATE orders SET customer = LEFT(CONCAT(customer, 'm'), 40) WHERE id BETWEEN %s AND %s",
                        (key, key + 20),
                    )
                else:
                    cur.execute("DELETE FROM orders WHERE id = %s", (key,))
                    cur.execute(
                        "INSERT INTO orders (id, customer, amount) VALUES (%s, 'rolled back', 1)", (key + 10**8,)
                    )
                    conn.rollback()
                    continue
                if rng.random() < 0.7:
                    conn.commit()  # else the next operations join this transaction
            conn.commit()
    finally:
        conn.close()


def assert_orders_identical(env: SyncEnv) -> None:
    assert_identical(env.source, env.source_db, env.target, env.target_db, "orders")


def test_random_workload_arrives_exactly(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    random_workload(env, seed=1, operations=60)
    status = catch_up(env)  # snapshot of the rows so far, then the stream from the recorded position
    assert_orders_identical(env)
    random_workload(env, seed=2, operations=400)
    status = catch_up(env)
    assert_orders_identical(env)
    report = health_report(config.load_settings(env.environ(), dotenv_path=None), status.snapshot(), {}, {})[1]
    binlog = report["tables"]["orders"]["binlog"]
    assert binlog["events_applied_total"] > 0 and binlog["rows_applied_total"] > 0
    assert binlog["position"].startswith("binlog.")
    assert report["status"] == "healthy"


def test_snapshot_while_writes_continue(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.src("INSERT INTO orders (id, customer, amount) SELECT seq, CONCAT('c', seq), seq FROM seq_1_to_3000")
    writing = threading.Event()
    done = threading.Event()

    def writer() -> None:
        seed = 10
        while not done.is_set():
            random_workload(env, seed=seed, operations=20, ids=3000)
            writing.set()
            seed += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        writing.wait(10)
        catch_up(env, CHUNK_SIZE="500")  # the chunked snapshot reads while the writer changes rows
    finally:
        done.set()
        thread.join()
    catch_up(env)
    assert_orders_identical(env)


def test_alter_add_column_between_row_events(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    catch_up(env)
    env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1), (2, 'b', 2)")
    env.src("ALTER TABLE orders ADD COLUMN region VARCHAR(10) NULL DEFAULT 'eu' AFTER customer")
    env.src("INSERT INTO orders (id, customer, region, amount) VALUES (3, 'c', 'us', 3)")
    env.src("UPDATE orders SET region = 'apac', amount = 9 WHERE id = 1")
    env.src("ALTER TABLE orders MODIFY customer VARCHAR(80) NOT NULL")
    env.src("INSERT INTO orders (id, customer, region, amount) VALUES (4, %s, NULL, 4)", ("w" * 70,))
    catch_up(env)
    assert_orders_identical(env)


def test_truncate_goes_through_the_mass_delete_guard(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1), (2, 'b', 2)")
    catch_up(env)
    env.src("TRUNCATE TABLE orders")
    env.src("INSERT INTO orders (id, customer, amount) VALUES (5, 'e', 5)")
    with stream(env, TABLES) as (binlog, status):
        binlog.catch_up()
        table = status.snapshot()["tables"]["orders"]
    assert table.delete_refusals == 1 and "allow_empty_source" in (table.last_error or "")
    assert env.tgt_query("SELECT COUNT(*) FROM orders")[0][0] == 2  # left as it was
    # Allowed: a new snapshot at the next start (the table was stopped), then TRUNCATE applies from the stream.
    allowed = [{**TABLES[0], "allow_empty_source": True}]
    catch_up(env, allowed)
    assert_orders_identical(env)
    env.src("INSERT INTO orders (id, customer, amount) VALUES (6, 'f', 6)")
    env.src("TRUNCATE TABLE orders")
    env.src("INSERT INTO orders (id, customer, amount) VALUES (7, 'g', 7)")
    catch_up(env, allowed)
    assert_orders_identical(env)


def test_drop_and_rename_stop_the_table_and_create_resnapshots(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1)")
    catch_up(env)
    env.src("RENAME TABLE orders TO orders_old")
    env.src("CREATE TABLE orders LIKE orders_old")
    env.src("INSERT INTO orders (id, customer, amount) VALUES (2, 'b', 2)")
    catch_up(env)
    assert_orders_identical(env)  # the new table was snapshotted; row 1 is gone in the source and the target
    env.src("INSERT INTO orders (id, customer, amount) VALUES (3, 'c', 3)")
    env.src("DROP TABLE orders")
    with stream(env, TABLES) as (binlog, status):
        assert not binlog.catch_up()
        assert "does not exist in the source" in (status.snapshot()["tables"]["orders"].last_error or "")
    assert env.tgt_query("SELECT id FROM orders") == [(2,)]  # kept as it was


def test_drop_while_streaming_stops_the_table(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    with stream(env, TABLES) as (binlog, status):
        binlog.start()
        try:
            assert binlog.caught_up.wait(30)
            env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1)")
            env.src("DROP TABLE orders")
            deadline = time.monotonic() + 30
            while not status.snapshot()["tables"]["orders"].last_error and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            binlog.stop_event.set()
            binlog.join(30)
        assert "dropped in the source" in (status.snapshot()["tables"]["orders"].last_error or "")
    assert env.tgt_query("SELECT id FROM orders") == [(1,)]  # kept


def test_ddl_parsing() -> None:
    assert parse_ddl("ALTER TABLE `s`.`orders` ADD x INT", "d") == [("alter", "s", "orders", None)]
    assert parse_ddl("DROP TABLE IF EXISTS `a`,b /* generated by server */", "d") == [
        ("drop", "d", "a", None),
        ("drop", "d", "b", None),
    ]
    assert parse_ddl("RENAME TABLE a TO b, c TO a", "d") == [("rename", "d", "a", "b"), ("rename", "d", "c", "a")]
    assert parse_ddl("alter table a rename to b", "d") == [("rename", "d", "a", "b")]
    assert parse_ddl("TRUNCATE t", "d") == [("truncate", "d", "t", None)]
    assert parse_ddl("CREATE INDEX i ON t (x)", "d") == [("alter", "d", "t", None)]
    assert parse_ddl("GRANT SELECT ON *.* TO x", "d") == []


# ------------------------------------------------------------------ exact values
def test_full_type_list_through_the_binlog(binlog_env: SyncEnv) -> None:
    import test_type_fidelity as fidelity

    env = binlog_env
    env.src(fidelity.NASTY_DDL)
    tables = [{"table": "nasty", "primary_key": ["id", "k"], "sync_strategy": "binlog"}]
    catch_up(env, tables)  # empty snapshot: every value below arrives through the decoder
    fidelity._insert_rows(env, fidelity.ROWS)
    catch_up(env, tables)
    assert_same_table(env, "nasty", "id, k")
    fidelity._insert_rows(env, fidelity.UPDATED_ROWS, seq_offset=100)  # updates move values between rows
    env.src("DELETE FROM nasty WHERE id = 2")
    catch_up(env, tables)
    assert_same_table(env, "nasty", "id, k")
    assert (
        env.source.query("CHECKSUM TABLE nasty", env.source_db)[0][1]
        == env.target.query("CHECKSUM TABLE nasty", env.target_db)[0][1]
    )


# ------------------------------------------------------------------ positions and prerequisites
def test_purged_position_is_loud_and_resnapshots_only_when_asked(
    server_factory: Any, target_server: MariaDBServer, tmp_path: Path
) -> None:
    source = server_factory.start("binlog-purge", BINLOG_SOURCE_ARGS)
    try:
        env = SyncEnv(source, target_server, "src_purge", "tgt_purge", tmp_path)
        source.execute("CREATE DATABASE src_purge")
        target_server.execute("DROP DATABASE IF EXISTS tgt_purge; CREATE DATABASE tgt_purge")
        env.src(ORDERS_DDL)
        env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1)")
        catch_up(env)
        env.src("INSERT INTO orders (id, customer, amount) VALUES (2, 'b', 2)")
        source.execute("FLUSH BINARY LOGS")
        # The server keeps a file a (lingering) dump thread reads: end those first.
        for (thread_id,) in source.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'"
        ):
            source.execute(f"KILL {int(thread_id)}")
        newest = source.query("SHOW BINARY LOGS")[-1][0]
        deadline = time.monotonic() + 60
        # MariaDB keeps a file until InnoDB's binlog checkpoint passed it (asynchronous): retry.
        while [r[0] for r in source.query("SHOW BINARY LOGS")] != [newest] and time.monotonic() < deadline:
            source.execute(f"PURGE BINARY LOGS TO '{newest}'")
            time.sleep(0.2)
        assert [r[0] for r in source.query("SHOW BINARY LOGS")] == [newest]
        with stream(env, TABLES) as (binlog, status):
            assert not binlog.catch_up()
            code, report = health_report(
                config.load_settings(env.environ(), dotenv_path=None), status.snapshot(), {}, {}
            )
        assert code == 503 and report["status"] == "unhealthy"
        assert "purged" in report["tables"]["orders"]["binlog"]["position_lost"]
        assert env.tgt_query("SELECT id FROM orders") == [(1,)]
        catch_up(env, BINLOG_RESNAPSHOT="auto")
        assert_orders_identical(env)
    finally:
        target_server.execute("DROP DATABASE IF EXISTS tgt_purge")
        source.destroy()


def run_cli(env: SyncEnv, *args: str, **overrides: Any) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env.environ(**overrides), "PYTHONPATH": str(ROOT / "source")}
    return subprocess.run(
        [sys.executable, str(ROOT / "source" / "db_pipeline.py"), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env.workdir,
    )


def test_check_names_missing_prerequisites(sync_env: SyncEnv) -> None:
    env = sync_env  # the plain source: no binary log
    env.src(ORDERS_DDL)
    env.write_tables(TABLES)
    result = run_cli(env, "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "binlog: ERROR: log_bin is OFF: start the source with --log-bin" in result.stdout
    assert "binlog: ERROR: binlog_format is" not in result.stdout or "ROW" in result.stdout
    once = run_cli(env, "--once")
    assert once.returncode == 1
    assert "log_bin is OFF" in once.stderr
    # With the fallback the table is synced by cursor (a full refresh: it has no modifier).
    env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1)")
    fallback = run_cli(env, "--once", BINLOG_FALLBACK="incremental")
    assert fallback.returncode == 0, fallback.stderr
    assert "BINLOG_FALLBACK=incremental" in fallback.stderr
    assert_orders_identical(env)


def test_check_names_missing_grants(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.write_tables(TABLES)
    user = f"ro_{env.source_db[-8:]}"
    env.source.execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON `{env.source_db}`.* TO '{user}'@'%'"
    )
    try:
        result = run_cli(env, "--check", SOURCE_DB_USER=user, SOURCE_DB_PASS="pw")
        assert result.returncode == 1
        assert "binlog: ERROR: the source user lacks REPLICATION SLAVE, BINLOG MONITOR" in result.stdout
        ok = run_cli(env, "--check")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "binlog: OK" in ok.stdout
    finally:
        env.source.execute(f"DROP USER '{user}'@'%'")


# ------------------------------------------------------------------ crash and shutdown
def test_kill_9_mid_stream_then_restart_is_identical(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.write_tables(TABLES)
    assert run_cli(env, "--once").returncode == 0
    environ = {**os.environ, **env.environ(BINLOG_BATCH_ROWS="50"), "PYTHONPATH": str(ROOT / "source")}
    daemon = subprocess.Popen(
        [sys.executable, str(ROOT / "source" / "db_pipeline.py")],
        env=environ,
        cwd=env.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # A large transaction (written in parts inside one target transaction) among small ones.
        env.src("INSERT INTO orders (id, customer, amount) SELECT seq, 'bulk', seq FROM seq_100000_to_102000")
        random_workload(env, seed=5, operations=150)
        deadline = time.monotonic() + 60
        while not env.tgt_query("SELECT COUNT(*) FROM orders")[0][0] and time.monotonic() < deadline:
            time.sleep(0.05)
        random_workload(env, seed=6, operations=150)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    random_workload(env, seed=7, operations=100)
    assert run_cli(env, "--once").returncode == 0
    assert_orders_identical(env)


def test_sigterm_finishes_the_transaction_and_exits_0(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.write_tables(TABLES)
    environ = {**os.environ, **env.environ(), "PYTHONPATH": str(ROOT / "source")}
    daemon = subprocess.Popen(
        [sys.executable, str(ROOT / "source" / "db_pipeline.py")],
        env=environ,
        cwd=env.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and not env.tgt_query(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'orders'"
            )[0][0]
        ):
            time.sleep(0.1)
        random_workload(env, seed=8, operations=200)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, stderr[-2000:]
    assert "binlog stream stopped at" in stderr
    stored = env.tgt_query("SELECT last_watermark FROM _dlt_sync_state WHERE table_name = '@binlog'")[0][0]
    assert stored.startswith("binlog.")
    assert run_cli(env, "--once").returncode == 0
    assert_orders_identical(env)


def test_a_large_source_transaction_is_never_half_visible(binlog_env: SyncEnv) -> None:
    """3,000 rows in one source transaction, written in parts of 100 rows inside one target transaction."""
    env = binlog_env
    env.src(ORDERS_DDL)
    seen: set[int] = set()
    with stream(env, TABLES, BINLOG_BATCH_ROWS="100") as (binlog, status):
        binlog.start()
        try:
            assert binlog.caught_up.wait(30)
            env.src("INSERT INTO orders (id, customer, amount) SELECT seq, 'bulk', seq FROM seq_1_to_3000")
            conn = env.target.connect(env.target_db)
            try:
                deadline = time.monotonic() + 60
                while 3000 not in seen and time.monotonic() < deadline:
                    with conn.cursor() as cur:
                        cur.execute("SELECT COUNT(*) FROM orders")
                        seen.add(int(cur.fetchone()[0]))
            finally:
                conn.close()
        finally:
            binlog.stop_event.set()
            binlog.join(30)
    assert seen <= {0, 3000} and 3000 in seen, sorted(seen)
    assert status.snapshot()["tables"]["orders"].binlog["rows_applied_total"] == 3000


def test_with_leases_one_replica_streams_and_another_takes_over(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    with (
        stream(env, TABLES, LEASE_ENABLED="true") as (first, _),
        stream(env, TABLES, LEASE_ENABLED="true") as (
            second,
            second_status,
        ),
    ):
        first.start()
        try:
            assert first.caught_up.wait(30)
            second.start()  # stands by: the first holds the lease
            env.src("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1)")
            assert first.caught_up.wait(30)
            first.stop_event.set()
            first.join(30)
            env.src("INSERT INTO orders (id, customer, amount) VALUES (2, 'b', 2)")
            deadline = time.monotonic() + 60
            while env.tgt_query("SELECT COUNT(*) FROM orders")[0][0] < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            for each in (first, second):
                each.stop_event.set()
                each.join(30)
    assert_orders_identical(env)
    assert second_status.snapshot()["tables"]["orders"].binlog["rows_applied_total"] >= 1


def wait_identical(env: SyncEnv, table: str, seconds: float = 60) -> None:
    """Wait until the target table equals the source's (the stream runs in the background)."""
    from table_checks import table_fingerprint

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if table_fingerprint(env.source, env.source_db, table) == table_fingerprint(env.target, env.target_db, table):
            return
        time.sleep(0.2)


def test_table_added_later_is_snapshotted_while_the_stream_goes_on(binlog_env: SyncEnv) -> None:
    env = binlog_env
    env.src(ORDERS_DDL)
    env.src("CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(20) NOT NULL, n INT NOT NULL)")
    env.src("INSERT INTO items SELECT seq, CONCAT('i', seq), seq FROM seq_1_to_20000")
    items = {"table": "items", "primary_key": "id", "sync_strategy": "binlog"}
    with stream(env, TABLES, CHUNK_SIZE="1000") as (binlog, status):
        binlog.start()
        try:
            assert binlog.caught_up.wait(30)
            binlog.set_tables([*binlog.specs.values(), *table_config.parse_tables([items], env.workdir / "x.json")])
            # Changes to both tables while the new one is being snapshotted in chunks.
            for n in range(40):
                env.src("INSERT INTO orders (id, customer, amount) VALUES (%s, 'o', 1)", (n,))
                env.src("UPDATE items SET n = n + 1000 WHERE id = %s", (n * 400 + 1,))
                env.src("DELETE FROM items WHERE id = %s", (n * 400 + 2,))
                env.src("INSERT INTO items VALUES (%s, 'new', 0)", (100000 + n,))
            wait_identical(env, "items")
            wait_identical(env, "orders")
            assert_identical(env.source, env.source_db, env.target, env.target_db, "items")
            assert_orders_identical(env)
            # orders leaves the tables file: its events stop applying, items goes on.
            binlog.set_tables([spec for spec in binlog.specs.values() if spec.table == "items"])
            deadline = time.monotonic() + 30
            while "orders" in binlog.specs and time.monotonic() < deadline:
                time.sleep(0.05)  # the stream applies the new list between source transactions
            env.src("INSERT INTO orders (id, customer, amount) VALUES (999, 'late', 1)")
            env.src("UPDATE items SET n = -1 WHERE id = 3")
            wait_identical(env, "items")
        finally:
            binlog.stop_event.set()
            binlog.join(30)
        assert status.snapshot()["tables"]["items"].last_error is None
    assert_identical(env.source, env.source_db, env.target, env.target_db, "items")
    assert env.tgt_query("SELECT COUNT(*) FROM orders WHERE id = 999") == [(0,)]
