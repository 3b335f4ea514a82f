"""Core sync on real servers: 16 mixed tables, two cycles with every kind of change, full-refresh
swap never empty, restart with no local state, the daemon loop and its shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, SyncEnv
from table_checks import assert_identical

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(120) NULL,
  created DATETIME NOT NULL, updated_at DATETIME(6) NOT NULL, KEY ix_upd (updated_at), UNIQUE KEY ux_email (email));
CREATE TABLE orders (id BIGINT UNSIGNED PRIMARY KEY, customer_id INT NOT NULL, status ENUM('new','paid','shipped','void') NOT NULL DEFAULT 'new',
  amount DECIMAL(12,2) NOT NULL, payload JSON NULL, is_gift TINYINT(1) NOT NULL DEFAULT 0, note TEXT NULL,
  created_at DATETIME NOT NULL, updated_at DATETIME(6) NOT NULL, KEY ix_upd (updated_at), KEY ix_cust (customer_id));
CREATE TABLE order_items (order_id BIGINT UNSIGNED NOT NULL, line_no SMALLINT NOT NULL, sku CHAR(8) NOT NULL, qty INT NOT NULL,
  price DECIMAL(10,2) NOT NULL, updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), PRIMARY KEY (order_id, line_no), KEY (updated_at));
CREATE TABLE permissions (user_id INT NOT NULL, perm_id INT NOT NULL, resource_id INT NOT NULL, tenant_id INT NOT NULL,
  granted BIT(1) NOT NULL DEFAULT b'1', PRIMARY KEY (user_id, perm_id, resource_id, tenant_id));
CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, title VARCHAR(200) NOT NULL, price DOUBLE NOT NULL, weight FLOAT NULL,
  tags SET('a','b','c') NOT NULL DEFAULT '', updated_at DATETIME NOT NULL, KEY (updated_at));
CREATE TABLE countries (code CHAR(2) PRIMARY KEY, name VARCHAR(64) NOT NULL);
CREATE TABLE events (id BIGINT PRIMARY KEY, kind VARCHAR(20) NOT NULL, data BLOB NULL, happened DATE NULL, updated_at DATETIME(6) NOT NULL, KEY (updated_at));
CREATE TABLE sessions (id BINARY(16) PRIMARY KEY, user_id INT NOT NULL, started TIME(3) NULL, updated_at DATETIME(6) NOT NULL, KEY (updated_at));
CREATE TABLE ledger (id INT PRIMARY KEY, debit DECIMAL(20,6) NULL, credit DECIMAL(20,6) NULL, fiscal YEAR NULL, updated_at DATETIME NOT NULL, KEY (updated_at));
CREATE TABLE places (id INT PRIMARY KEY, loc POINT NOT NULL, label VARCHAR(40) NULL, updated_at DATETIME NOT NULL, KEY (updated_at));
CREATE TABLE notes (id INT PRIMARY KEY, body MEDIUMTEXT NULL, updated_at DATETIME NOT NULL, KEY (updated_at));
CREATE TABLE flags (id INT PRIMARY KEY, bits BIT(8) NULL, small TINYINT UNSIGNED NULL, med MEDIUMINT NULL, updated_at DATETIME NOT NULL, KEY (updated_at));
CREATE TABLE audit (id BIGINT UNSIGNED PRIMARY KEY, actor VARCHAR(64) CHARACTER SET latin1 NULL, msg VARCHAR(255) NULL, updated_at DATETIME(6) NOT NULL, KEY (updated_at));
CREATE TABLE tags (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, UNIQUE KEY (name));
CREATE TABLE settings_kv (k VARCHAR(64) PRIMARY KEY, v JSON NULL);
CREATE TABLE versions (id INT PRIMARY KEY, version INT NOT NULL, body VARCHAR(30) NULL, KEY (version));
"""

OLD = "2024-01-01 00:00:00"

DATA = f"""
INSERT INTO customers (name, email, created, updated_at) SELECT CONCAT('Kunde ', seq, ' Müller 😀'), CONCAT('c', seq, '@x.id'), '{OLD}', '{OLD}' + INTERVAL seq SECOND FROM seq_1_to_2000;
INSERT INTO orders SELECT seq, seq % 2000 + 1, ELT(seq % 4 + 1, 'new','paid','shipped','void'), seq * 1.25, JSON_OBJECT('n', seq, 's', 'ä'),
  seq % 2, IF(seq % 7 = 0, NULL, CONCAT('note ', seq)), '{OLD}', '{OLD}' + INTERVAL seq SECOND FROM seq_1_to_20000;
INSERT INTO order_items SELECT o.seq, l.seq, CONCAT('SKU', LPAD(l.seq, 5, '0')), l.seq, 9.99, '{OLD}' FROM seq_1_to_3000 o, seq_1_to_3 l;
INSERT INTO permissions SELECT u.seq, p.seq, 1, 7, u.seq % 2 FROM seq_1_to_100 u, seq_1_to_10 p;
INSERT INTO products SELECT CONCAT('P-', seq), CONCAT('Produkt ', seq), seq / 3, seq / 7, ELT(seq % 3 + 1, 'a', 'a,b', ''), '{OLD}' FROM seq_1_to_500;
INSERT INTO countries VALUES ('ID', 'Indonesia'), ('DE', 'Deutschland'), ('JP', '日本');
INSERT INTO events SELECT seq, 'click', UNHEX(REPEAT('00FF5C0A09', seq % 5 + 1)), IF(seq % 3 = 0, '0000-00-00', '2023-05-01'), '{OLD}' FROM seq_1_to_1000;
INSERT INTO sessions SELECT UNHEX(MD5(seq)), seq, SEC_TO_TIME(seq * 37.125), '{OLD}' FROM seq_1_to_500;
INSERT INTO ledger SELECT seq, seq * 1000.123456, NULL, 2000 + seq % 100, '{OLD}' FROM seq_1_to_500;
INSERT INTO places SELECT seq, POINT(seq, -seq), CONCAT('p', seq), '{OLD}' FROM seq_1_to_200;
INSERT INTO notes SELECT seq, CONCAT(REPEAT('lorem ', seq % 50), CHAR(0), 'end'), '{OLD}' FROM seq_1_to_300;
INSERT INTO flags SELECT seq, seq % 256, seq % 256, -seq, '{OLD}' FROM seq_1_to_300;
INSERT INTO audit SELECT 18446744073709551615 - seq, 'José', CONCAT('msg ', seq), '{OLD}' FROM seq_1_to_300;
INSERT INTO tags SELECT seq, CONCAT('tag', seq) FROM seq_1_to_50;
INSERT INTO settings_kv VALUES ('a', '{{"x": [1, 2, {{"y": null}}]}}'), ('b', NULL);
INSERT INTO versions SELECT seq, seq, 'v' FROM seq_1_to_100;
"""

TABLES: list[dict[str, Any]] = [
    {"table": "customers", "primary_key": "id", "modifier": "updated_at"},
    {"table": "orders", "primary_key": "id", "modifier": "updated_at"},
    {"table": "order_items", "primary_key": ["order_id", "line_no"], "modifier": "updated_at"},
    {"table": "permissions", "primary_key": ["user_id", "perm_id", "resource_id", "tenant_id"]},
    {"table": "products", "primary_key": "sku", "modifier": "updated_at"},
    {"table": "countries", "primary_key": "code"},
    {"table": "events", "primary_key": "id", "modifier": "updated_at"},
    {"table": "sessions", "primary_key": "id", "modifier": "updated_at"},
    {"table": "ledger", "primary_key": "id", "modifier": "updated_at"},
    {"table": "places", "primary_key": "id", "modifier": "updated_at"},
    {"table": "notes", "primary_key": "id", "modifier": "updated_at"},
    {"table": "flags", "primary_key": "id", "modifier": "updated_at"},
    {"table": "audit", "primary_key": "id", "modifier": "updated_at"},
    {"table": "tags", "primary_key": "id", "sync_strategy": "full_refresh"},
    {"table": "settings_kv", "primary_key": "k"},
    {"table": "versions", "primary_key": "id", "modifier": "version"},
]


def run_once(env: SyncEnv, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> int:
    """Run ``db_pipeline --once`` in-process with the environment of ``env``."""
    from db_pipeline import main

    for key, value in env.environ(**overrides).items():
        monkeypatch.setenv(key, value)
    return main(["--once"])


def assert_all_identical(env: SyncEnv, tables: list[dict[str, Any]]) -> None:
    for entry in tables:
        assert_identical(env.source, env.source_db, env.target, env.target_db, entry["table"])


@pytest.mark.parametrize("mode", ["direct", "file_staging"])
def test_two_cycles_with_every_kind_of_change(sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    sync_env.src(SCHEMA)
    sync_env.src(DATA)
    sync_env.write_tables(TABLES)
    assert run_once(sync_env, monkeypatch, PIPELINE_MODE=mode) == 0
    assert_all_identical(sync_env, TABLES)

    newest = sync_env.tgt_query("SELECT MAX(updated_at) FROM customers")[0][0]
    shared = "2025-06-01 12:00:00.000000"
    sync_env.src(
        f"""
        UPDATE orders SET status = 'paid', amount = amount + 1, updated_at = '{shared}' WHERE id <= 10000;
        INSERT INTO orders SELECT 20000 + seq, 1, 'new', 1.00, NULL, 0, 'late', NOW(), NOW(6) FROM seq_1_to_50;
        UPDATE customers SET name = CONCAT(name, ' (geändert)'), updated_at = NOW(6) WHERE id % 100 = 0;
        INSERT INTO customers (name, email, created, updated_at) VALUES ('late commit', 'late@x.id', NOW(), '{newest}' - INTERVAL 60 SECOND);
        ALTER TABLE customers ADD COLUMN loyalty INT NOT NULL DEFAULT 0 AFTER email;
        UPDATE customers SET loyalty = 5, updated_at = NOW(6) WHERE id <= 10;
        UPDATE order_items SET qty = qty + 1, updated_at = NOW(3) WHERE order_id <= 100;
        UPDATE permissions SET granted = 0 WHERE user_id = 1;
        INSERT INTO countries VALUES ('FR', 'France');
        UPDATE versions SET version = 1000 + id, body = 'changed' WHERE id <= 5;
        UPDATE sessions SET started = '-838:59:59', updated_at = NOW(6) WHERE user_id = 1;
        UPDATE places SET loc = POINT(0.5, 0.25), updated_at = NOW() WHERE id = 1;
        INSERT INTO tags VALUES (51, 'neu');
        UPDATE settings_kv SET v = '[]' WHERE k = 'b';
        """
    )
    assert run_once(sync_env, monkeypatch, PIPELINE_MODE=mode) == 0
    assert_all_identical(sync_env, TABLES)
    # One small bookkeeping row per table, whatever the number of rows sharing a timestamp.
    state_rows = sync_env.tgt_query("SELECT COUNT(*), MAX(LENGTH(COALESCE(pending_from, ''))) FROM _dlt_sync_state")[0]
    assert state_rows[0] <= len(TABLES) and state_rows[1] <= 64
    assert not sync_env.tgt_query("SHOW TABLES LIKE '%\\_\\_dlt\\_%'")  # no shadow tables left behind
    dlt_columns = sync_env.tgt_query(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME LIKE '\\_dlt%'"
    )
    assert dlt_columns[0][0] == 0


def _syncer(env: SyncEnv, **overrides: Any) -> Any:
    from dlt_db_sync.config import settings as config
    from dlt_db_sync.config.tables import load_tables
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.pipeline_management.syncer import TableSyncer

    settings = config.load_settings(env.environ(**overrides), dotenv_path=None)
    engines = create_engines(settings)
    syncer = TableSyncer(engines, settings, SyncStatus(), threading.Event())
    syncer.prepare()
    return syncer, load_tables(settings.tables_file)


def test_restart_neither_gap_nor_reload(sync_env: SyncEnv) -> None:
    """A new process (a syncer without any in-memory state) reads only the window behind the
    target's watermark: nothing local is needed to resume."""
    sync_env.src(SCHEMA)
    sync_env.src(DATA)
    sync_env.write_tables([TABLES[1]])
    syncer, specs = _syncer(sync_env)
    try:
        assert syncer.sync_table(specs[0]).rows == 20000
        sync_env.src("UPDATE orders SET note = 'after restart', updated_at = NOW(6) WHERE id IN (3, 5, 7, 11, 13)")
    finally:
        syncer.engines.dispose()
    syncer, specs = _syncer(sync_env)
    try:
        result = syncer.sync_table(specs[0])
        # The 5 changed rows plus the lookback window behind the old watermark; no full reload.
        in_window = sync_env.src_query(
            "SELECT COUNT(*) FROM orders WHERE updated_at >= %s", (result.details["lower_bound"],)
        )[0][0]
        assert result.ok and result.rows == in_window and 5 < in_window < 400, result
        assert syncer.sync_table(specs[0]).skipped
    finally:
        syncer.engines.dispose()
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "orders")


def test_crash_after_pending_mark_reloads_from_pending_bound(sync_env: SyncEnv) -> None:
    """A load that never finished (pending bound left in the state) is redone from that bound."""
    sync_env.src(SCHEMA)
    sync_env.src(DATA)
    sync_env.write_tables([TABLES[1]])
    syncer, specs = _syncer(sync_env)
    try:
        syncer.sync_table(specs[0])
        # Simulate a crash: the target lost rows of an unfinished load, the pending bound remains.
        sync_env.tgt("DELETE FROM orders WHERE id BETWEEN 100 AND 200")
        sync_env.tgt("UPDATE _dlt_sync_state SET pending = 1, pending_from = NULL WHERE table_name = 'orders'")
        result = syncer.sync_table(specs[0])
        assert result.ok and result.rows == 20000
    finally:
        syncer.engines.dispose()
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "orders")


def test_full_refresh_swap_is_never_empty_for_readers(sync_env: SyncEnv) -> None:
    sync_env.src("CREATE TABLE big_ref (id INT PRIMARY KEY, v VARCHAR(50))")
    sync_env.src("INSERT INTO big_ref SELECT seq, CONCAT('v', seq) FROM seq_1_to_60000")
    sync_env.write_tables([{"table": "big_ref", "primary_key": "id"}])
    syncer, specs = _syncer(sync_env, CHUNK_SIZE="5000")
    counts: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        conn = sync_env.target.connect(sync_env.target_db)
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT COUNT(*) FROM big_ref")
                    counts.append(cur.fetchone()[0])
        finally:
            conn.close()

    try:
        assert syncer.sync_table(specs[0]).rows == 60000
        sync_env.src("INSERT INTO big_ref SELECT 60000 + seq, 'new' FROM seq_1_to_1000")
        # Every chunk differs, so the refresh reloads by the swap (few differing chunks are repaired in place).
        sync_env.src("UPDATE big_ref SET v = CONCAT(v, '!') WHERE id % 50 = 0")
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            result = syncer.sync_table(specs[0])
        finally:
            time.sleep(0.2)
            stop.set()
            thread.join()
        assert result.ok and result.rows == 61000
        assert syncer.sync_table(specs[0]).skipped  # unchanged: not rewritten
    finally:
        syncer.engines.dispose()
    assert counts and set(counts) <= {60000, 61000}, sorted(set(counts))
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "big_ref")


def test_failing_table_does_not_stop_the_others(sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    sync_env.src(SCHEMA)
    sync_env.src("INSERT INTO countries VALUES ('ID', 'Indonesia')")
    sync_env.write_tables(
        [{"table": "missing_table", "primary_key": "id"}, {"table": "countries", "primary_key": "code"}]
    )
    assert run_once(sync_env, monkeypatch) == 1
    assert sync_env.tgt_query("SELECT name FROM countries") == [("Indonesia",)]


def test_check_prints_plan(sync_env: SyncEnv) -> None:
    sync_env.src(SCHEMA)
    sync_env.write_tables(TABLES[:4])
    env = {**os.environ, **sync_env.environ()}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "source" / "db_pipeline.py"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "order_items" in proc.stdout and "order_id,line_no" in proc.stdout and "full_refresh" in proc.stdout


def test_daemon_cycles_and_stops_on_sigterm(sync_env: SyncEnv) -> None:
    sync_env.src(SCHEMA)
    sync_env.src("INSERT INTO countries VALUES ('ID', 'Indonesia')")
    sync_env.write_tables([{"table": "countries", "primary_key": "code"}])
    env = {**os.environ, **sync_env.environ(INTERVAL="1")}
    proc = subprocess.Popen(
        [sys.executable, "db_pipeline.py"],
        cwd=ROOT / "source",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "cycle 3" in line:
                break
        assert any("cycle 3" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sync_env.tgt_query("SELECT name FROM countries") == [("Indonesia",)]


def test_source_entry_point_runs_from_project_root(tmp_path: Path) -> None:
    bad = tmp_path / "tables.json"
    bad.write_text("[{]")
    env = {**os.environ, "SOURCE_DB_NAME": "s", "TARGET_DB_NAME": "t", "TABLES_FILE": str(bad)}
    proc = subprocess.run(
        [sys.executable, "source/db_pipeline.py", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "line 1" in proc.stderr


def test_writer_without_temporary_tables_uses_regular_staging(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRD 7.1.1's writer grants lack CREATE TEMPORARY TABLES: upserts still work and leave nothing behind."""
    sync_env.target.execute(
        f"CREATE OR REPLACE USER 'tw'@'127.0.0.1' IDENTIFIED BY 'pw'; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP ON `{sync_env.target_db}`.* TO 'tw'@'127.0.0.1'"
    )
    sync_env.src("CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10), u DATETIME(6), KEY (u))")
    sync_env.src("INSERT INTO a SELECT seq, 'x', '2024-01-01' FROM seq_1_to_1000")
    sync_env.write_tables([{"table": "a", "primary_key": "id", "modifier": "u"}])
    assert run_once(sync_env, monkeypatch, TARGET_DB_USER="tw", TARGET_DB_PASS="pw") == 0
    sync_env.src("UPDATE a SET v = 'y', u = NOW(6) WHERE id < 10")
    assert run_once(sync_env, monkeypatch, TARGET_DB_USER="tw", TARGET_DB_PASS="pw") == 0
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "a")
    assert not sync_env.tgt_query("SHOW TABLES LIKE '\\_dlt\\_stage%'")
    # Re-copies outside the cycle's loader (here --verify --repair) stage without temporary tables too.
    sync_env.tgt("UPDATE a SET v = 'z' WHERE id BETWEEN 500 AND 520")
    from db_pipeline import main

    for key, value in sync_env.environ(TARGET_DB_USER="tw", TARGET_DB_PASS="pw").items():
        monkeypatch.setenv(key, value)
    assert main(["--verify", "--repair", "a"]) == 0
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "a")
    assert not sync_env.tgt_query("SHOW TABLES LIKE '\\_dlt\\_stage%'")
