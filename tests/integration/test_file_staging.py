"""File-staging mode on real servers: identical tables after full and incremental cycles (composite
keys, a 10,000-row shared-timestamp update, a per-table mode override), a crash between extraction
and load and one in the middle of a load (``kill -9`` of the daemon process) followed by a clean
cycle, retention cleanup of the staging directory, and the INSERT fallback when the target refuses
``LOCAL INFILE``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, ServerFactory, SyncEnv
from log_lines import logged_line
from mariadb_server import MariaDBServer
from table_checks import assert_identical

pytestmark = pytest.mark.integration

ORDERS_ROWS = 20_000
CHUNK = 3000

SCHEMA = """
CREATE TABLE orders (id BIGINT UNSIGNED PRIMARY KEY, customer_id INT NOT NULL,
  status ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new', amount DECIMAL(12,2) NOT NULL,
  qty SMALLINT NOT NULL, note VARCHAR(255) CHARACTER SET utf8mb4 NULL, payload JSON NULL,
  is_gift TINYINT(1) NOT NULL DEFAULT 0, created_at DATETIME NOT NULL, updated_at DATETIME(6) NOT NULL,
  KEY ix_upd (updated_at));
CREATE TABLE order_items (order_id BIGINT UNSIGNED NOT NULL, line_no SMALLINT NOT NULL, sku CHAR(8) NOT NULL,
  qty INT NOT NULL, price DECIMAL(10,2) NOT NULL, updated_at DATETIME(3) NOT NULL,
  PRIMARY KEY (order_id, line_no), KEY (updated_at));
CREATE TABLE grants (user_id INT NOT NULL, perm_id INT NOT NULL, tenant_id INT NOT NULL, level TINYINT NOT NULL,
  PRIMARY KEY (user_id, perm_id, tenant_id));
CREATE TABLE countries (code CHAR(2) PRIMARY KEY, name VARCHAR(64) NOT NULL);
"""

DATA = f"""
INSERT INTO orders SELECT seq, seq % 500 + 1, ELT(seq % 4 + 1, 'new', 'paid', 'shipped', 'cancelled'), seq * 1.25,
  seq % 9, IF(seq % 11 = 0, NULL, CONCAT('Bestellung ', seq, ' – Grüße\tmit Tab\\\\ und 東京')),
  JSON_OBJECT('n', seq, 's', 'ä'), seq % 2, '2024-01-01 00:00:00', '2024-01-01 00:00:00' + INTERVAL seq SECOND
  FROM seq_1_to_{ORDERS_ROWS};
INSERT INTO order_items SELECT o.seq, l.seq, CONCAT('SKU', LPAD(l.seq, 5, '0')), l.seq, 9.99, '2024-01-01 00:00:00'
  FROM seq_1_to_2000 o, seq_1_to_3 l;
INSERT INTO grants SELECT u.seq, p.seq, 7, (u.seq + p.seq) % 5 FROM seq_1_to_300 u, seq_1_to_5 p;
INSERT INTO countries VALUES ('ID', 'Indonesia'), ('DE', 'Deutschland'), ('JP', '日本');
"""

ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at"}
TABLES: list[dict[str, Any]] = [
    ORDERS,
    {"table": "order_items", "primary_key": ["order_id", "line_no"], "modifier": "updated_at"},
    {"table": "grants", "primary_key": ["user_id", "perm_id", "tenant_id"]},
    {"table": "countries", "primary_key": "code", "mode": "direct"},
]
SHARED = "2025-06-01 12:00:00.000000"


def staging_overrides(env: SyncEnv, **extra: Any) -> dict[str, Any]:
    return {"PIPELINE_MODE": "file_staging", "CHUNK_SIZE": str(CHUNK), **extra}


def run_once(env: SyncEnv, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> int:
    from db_pipeline import main

    for key, value in env.environ(**overrides).items():
        monkeypatch.setenv(key, value)
    return main(["--once"])


def identical(env: SyncEnv, *tables: str, target: MariaDBServer | None = None, target_db: str | None = None) -> None:
    for table in tables:
        assert_identical(env.source, env.source_db, target or env.target, target_db or env.target_db, table)


def staged_files(env: SyncEnv, table: str = "orders") -> list[Path]:
    return sorted((env.workdir / "staging" / table).glob("*/part-*.parquet"))


def state(env: SyncEnv, table: str = "orders") -> tuple[Any, ...]:
    return env.tgt_query(
        "SELECT pending, pending_from, last_watermark FROM _dlt_sync_state WHERE table_name = %s", (table,)
    )[0]


def syncer_for(env: SyncEnv, **overrides: Any) -> Any:
    from dlt_db_sync.config import settings as config
    from dlt_db_sync.config.tables import load_tables
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.pipeline_management.syncer import TableSyncer

    settings = config.load_settings(env.environ(**overrides), dotenv_path=None)
    syncer = TableSyncer(create_engines(settings), settings, SyncStatus(), threading.Event())
    syncer.prepare()
    return syncer, load_tables(settings.tables_file)


def test_full_and_incremental_cycles_leave_identical_tables(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sync_env.src(SCHEMA)
    sync_env.src(DATA)
    sync_env.write_tables(TABLES)
    caplog.set_level(logging.INFO, logger="dlt_sync")
    assert run_once(sync_env, monkeypatch, **staging_overrides(sync_env, FILE_STAGING_COMPRESSION="zstd")) == 0
    identical(sync_env, "orders", "order_items", "grants", "countries")
    summary = "\n".join(logged_line(r) for r in caplog.records if "TABLE_SYNC" in logged_line(r))
    assert (
        "orders: incremental, 20000 rows" in summary and "mode file_staging/" in summary and "via LOAD DATA" in summary
    )
    assert "countries: full_refresh, 3 rows" in summary and "mode direct/" in summary  # per-table override
    staging = sync_env.workdir / "staging"
    assert (staging / "orders").is_dir() and not (staging / "countries").exists()
    assert not list(staging.rglob("*.parquet*"))  # every committed load removed its files

    sync_env.src(
        f"""
        UPDATE orders SET status = 'paid', amount = amount + 1, note = CONCAT(IFNULL(note, ''), ' ✓'),
          updated_at = '{SHARED}' WHERE id BETWEEN 5001 AND 15000;
        INSERT INTO orders SELECT {ORDERS_ROWS} + seq, 1, 'new', 1.00, 1, NULL, NULL, 0, NOW(), NOW(6) FROM seq_1_to_50;
        UPDATE order_items SET qty = qty + 1, updated_at = NOW(3) WHERE order_id <= 100;
        INSERT INTO order_items VALUES (1, 4, 'SKU00004', 4, 1.00, NOW(3));
        UPDATE grants SET level = 9 WHERE user_id = 1;
        INSERT INTO grants VALUES (301, 1, 7, 1);
        """
    )
    caplog.clear()
    assert run_once(sync_env, monkeypatch, **staging_overrides(sync_env, FILE_STAGING_COMPRESSION="gzip")) == 0
    identical(sync_env, "orders", "order_items", "grants", "countries")
    # All 10,000 rows sharing one timestamp arrived; the state stays one small row.
    assert sync_env.tgt_query(f"SELECT COUNT(*) FROM orders WHERE updated_at = '{SHARED}'") == [(10000,)]
    assert state(sync_env)[0] == 0
    assert not list(staging.rglob("*.parquet*"))


def _crash_script(env: SyncEnv, crash: str) -> str:
    """A daemon run (``--once``) that kills itself with SIGKILL at the point ``crash`` names."""
    return textwrap.dedent(
        f"""
        import os, signal, sys, threading
        sys.path.insert(0, {str(ROOT / "source")!r})
        from dlt_db_sync.data_processing import loader as target_loader
        original = target_loader.TargetLoader._apply_chunk
        committed = []

        def crash(self, *args, **kwargs):
            if {crash!r} == "before-load":
                # Extraction finished (its writer thread ended): every part is on disk, none loaded.
                while any(t.name.startswith("staging-") for t in threading.enumerate()):
                    threading.Event().wait(0.02)
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, *args, **kwargs)
            committed.append(1)
            if len(committed) == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # two chunks committed, the rest not

        target_loader.TargetLoader._apply_chunk = crash
        from db_pipeline import main
        sys.exit(main(["--once"]))
        """
    )


def _crash(env: SyncEnv, crash: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env.environ(**staging_overrides(env)), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-c", _crash_script(env, crash)],
        env=environ,
        cwd=env.workdir,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _spread_update(env: SyncEnv) -> None:
    """10,000 changed rows, the lowest ids newest, spread over far more than the lookback window.

    A load that committed the newest rows and crashed would, without the pending bound, make the
    next cycle start at ``max - lookback`` and miss the older half.
    """
    env.src(
        "UPDATE orders SET note = CONCAT('v2 ', id), updated_at = '2025-01-01 00:00:00' + INTERVAL (20000 - id) SECOND "
        "WHERE id <= 10000"
    )


@pytest.mark.parametrize("crash", ["before-load", "mid-load"])
def test_crash_then_clean_cycle_loses_nothing(sync_env: SyncEnv, crash: str) -> None:
    sync_env.src(SCHEMA)
    sync_env.src(DATA)
    sync_env.write_tables([ORDERS])
    syncer, specs = syncer_for(sync_env, **staging_overrides(sync_env))
    try:
        assert syncer.sync_table(specs[0]).ok
    finally:
        syncer.engines.dispose()
    old_watermark = state(sync_env)[2]
    _spread_update(sync_env)

    proc = _crash(sync_env, crash)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    pending, pending_from, last_watermark = state(sync_env)
    assert pending == 1 and last_watermark == old_watermark  # the stored watermark did not move
    assert pending_from is not None and pending_from < old_watermark  # max(target) - lookback
    leftovers = staged_files(sync_env)
    changed = sync_env.tgt_query("SELECT COUNT(*) FROM orders WHERE note LIKE 'v2 %'")[0][0]
    if crash == "before-load":
        assert len(leftovers) == 4 and changed == 0  # 10,301 rows staged in 4 parts, none applied
    else:
        assert changed == 2 * CHUNK  # two whole chunks committed, nothing half-applied
        assert leftovers  # the parts not yet loaded stay on disk after the crash

    syncer, specs = syncer_for(sync_env, **staging_overrides(sync_env))
    try:
        result = syncer.sync_table(specs[0])
    finally:
        syncer.engines.dispose()
    assert result.ok and result.details["lower_bound"] == pending_from  # re-read from the pending bound
    in_window = sync_env.src_query("SELECT COUNT(*) FROM orders WHERE updated_at >= %s", (pending_from,))[0][0]
    assert result.rows == in_window == 10301  # the 10,000 changed rows + the lookback window's 301
    identical(sync_env, "orders")
    assert state(sync_env)[0] == 0
    assert not any(p.exists() for p in leftovers) and not staged_files(sync_env)


def test_retention_removes_expired_files_and_reports_the_directory_size(sync_env: SyncEnv) -> None:
    sync_env.src(SCHEMA)
    sync_env.src("INSERT INTO countries VALUES ('ID', 'Indonesia')")
    sync_env.write_tables([{"table": "countries", "primary_key": "code"}])
    staging = sync_env.workdir / "staging"
    expired = staging / "dropped_table" / "20240101T000000_deadbeef" / "part-000001.parquet"
    recent = staging / "other_table" / "20240101T000000_cafebabe" / "part-000001.parquet"
    for path, size in ((expired, 10_000), (recent, 1_500_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\0" * size)
    two_hours_ago = time.time() - 2 * 3600
    os.utime(expired, (two_hours_ago, two_hours_ago))
    syncer, specs = syncer_for(sync_env, **staging_overrides(sync_env, FILE_STAGING_RETENTION_HOURS="1"))
    try:
        results = syncer.run_cycle(specs)
        snapshot = syncer.status.snapshot()["staging"]
    finally:
        syncer.engines.dispose()
    assert all(r.ok for r in results)
    assert not expired.exists() and not (staging / "dropped_table").exists()
    assert recent.exists()
    assert snapshot["files_count"] == 1 and snapshot["usage_mb"] == pytest.approx(1.5)


@pytest.fixture
def no_infile_env(server_factory: ServerFactory, source_server: MariaDBServer, tmp_path: Path) -> Iterator[SyncEnv]:
    """A fresh source database and a target server started with ``--local-infile=0``."""
    target = server_factory.start("target-no-infile", ["--local-infile=0"])
    suffix = uuid.uuid4().hex[:8]
    env = SyncEnv(source_server, target, f"src_{suffix}", f"tgt_{suffix}", tmp_path)
    source_server.execute(f"CREATE DATABASE `{env.source_db}` CHARACTER SET utf8mb4")
    target.execute(f"CREATE DATABASE `{env.target_db}` CHARACTER SET utf8mb4")
    yield env
    source_server.execute(f"DROP DATABASE IF EXISTS `{env.source_db}`")
    target.destroy()


def test_target_refusing_local_infile_loads_with_inserts(
    no_infile_env: SyncEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = no_infile_env
    assert env.target.scalar("SELECT @@GLOBAL.local_infile") == 0
    env.src(SCHEMA)
    env.src(DATA.replace(f"seq_1_to_{ORDERS_ROWS}", "seq_1_to_5000"))
    env.write_tables(TABLES[:3])
    caplog.set_level(logging.INFO, logger="dlt_sync")
    syncer, specs = syncer_for(env, **staging_overrides(env))
    try:
        assert all(r.ok for r in syncer.run_cycle(specs))
        identical(env, "orders", "order_items", "grants")
        env.src(f"UPDATE orders SET status = 'cancelled', updated_at = '{SHARED}' WHERE id <= 2000")
        env.src("UPDATE grants SET level = 0 WHERE perm_id = 2")
        assert all(r.ok for r in syncer.run_cycle(specs))
    finally:
        syncer.engines.dispose()
    identical(env, "orders", "order_items", "grants")
    messages = [logged_line(r) for r in caplog.records]
    assert any("refuses LOCAL INFILE" in m and "multi-row INSERT" in m for m in messages), messages
    assert any("orders: incremental, 2" in m and "via INSERT" in m for m in messages), messages


def test_idle_cycles_skip_schema_checks_until_a_definition_changes(sync_env: SyncEnv) -> None:
    from sqlalchemy import event

    sync_env.src(SCHEMA)
    sync_env.src(DATA)
    sync_env.write_tables(TABLES)
    syncer, specs = syncer_for(sync_env, **staging_overrides(sync_env))
    statements: list[str] = []
    for engine in (syncer.engines.source, syncer.engines.target):
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: statements.append(sql))
    try:
        assert all(r.ok for r in syncer.run_cycle(specs))  # first cycle: full checks
        assert all(r.ok and r.skipped for r in syncer.run_cycle(specs))  # checks again (the target was created)
        statements.clear()
        assert all(r.ok and r.skipped for r in syncer.run_cycle(specs))
        # The incremental tables: no schema queries, only signatures, state, watermark and fingerprints.
        assert not [s for s in statements if "SHOW CREATE TABLE `order" in s]
        incremental = [s for s in statements if "order" in s or "_dlt_sync_state" in s]
        assert len(incremental) <= 2 * 4, incremental

        sync_env.src("ALTER TABLE orders ADD COLUMN channel VARCHAR(10) NOT NULL DEFAULT 'web' AFTER qty")
        sync_env.src("UPDATE orders SET channel = 'app', updated_at = NOW(6) WHERE id <= 10")
        sync_env.tgt("ALTER TABLE order_items DROP INDEX updated_at")  # a target index the sync relies on
        statements.clear()
        results = {r.table: r for r in syncer.run_cycle(specs)}
        assert all(r.ok for r in results.values())
        assert results["orders"].rows == ORDERS_ROWS  # the new column: the whole table re-read once
        assert any("SHOW CREATE TABLE `orders`" in s for s in statements)
    finally:
        syncer.engines.dispose()
    identical(sync_env, "orders", "order_items", "grants", "countries")
    indexes = sync_env.tgt_query(
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'order_items' AND COLUMN_NAME = 'updated_at' AND SEQ_IN_INDEX = 1"
    )
    assert indexes == [(1,)]


def test_large_direct_extractions_stay_bounded_pages_or_stream(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Direct mode reads a large extraction in pages by an integer key (exact at the top of BIGINT
    UNSIGNED, with gaps), or streams it through pyarrow when the key is not a single integer."""
    from dlt_db_sync.data_processing import extraction

    sync_env.src(
        """
        CREATE TABLE huge_ids (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(20) NOT NULL, updated_at DATETIME(6) NOT NULL, KEY (updated_at));
        INSERT INTO huge_ids SELECT 18446744073709551615 - seq * 7, CONCAT('v', seq), '2024-01-01' + INTERVAL seq SECOND
          FROM seq_0_to_9999;
        CREATE TABLE pairs (a INT NOT NULL, b INT NOT NULL, v INT NOT NULL, updated_at DATETIME NOT NULL,
          PRIMARY KEY (a, b), KEY (updated_at));
        INSERT INTO pairs SELECT x.seq, y.seq, x.seq * y.seq, '2024-01-01' FROM seq_1_to_100 x, seq_1_to_60 y;
        """
    )
    sync_env.write_tables(
        [
            {"table": "huge_ids", "primary_key": "id", "modifier": "updated_at"},
            {"table": "pairs", "primary_key": ["a", "b"], "modifier": "updated_at"},
        ]
    )
    pages: list[Any] = []
    original = extraction.build_query

    def spy(*args: Any, **kwargs: Any) -> Any:
        pages.append(args[4:])
        return original(*args, **kwargs)

    monkeypatch.setattr(extraction, "build_query", spy)
    caplog.set_level(logging.INFO, logger="dlt_sync")
    syncer, specs = syncer_for(sync_env, PIPELINE_MODE="direct", CHUNK_SIZE="1000")
    try:
        results = {r.table: r for r in syncer.run_cycle(specs)}
        sync_env.src("UPDATE huge_ids SET v = 'changed', updated_at = NOW(6) WHERE id % 3 = 0")
        sync_env.src("UPDATE pairs SET v = -v, updated_at = NOW() WHERE b <= 50")
        pages.clear()
        again = {r.table: r for r in syncer.run_cycle(specs)}
    finally:
        syncer.engines.dispose()
    assert results["huge_ids"].rows == 10000 and results["huge_ids"].backend == "connectorx"
    assert results["pairs"].rows == 6000 and results["pairs"].backend == "pyarrow"
    assert "no integer key to page by" in caplog.text
    changed = again["huge_ids"].rows
    assert 2000 < changed < 4000 and len([p for p in pages if p and p[0] is not None]) >= changed // 2000
    identical(sync_env, "huge_ids", "pairs")
