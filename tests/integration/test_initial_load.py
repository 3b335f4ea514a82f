"""Initial loads with deferred secondary indexes (issue 18): the same index set as the source,
and an interrupted initial load that recovers on the next cycle with indexes and exact rows."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from fidelity_helpers import kept_syncer

from conftest import ROOT, SyncEnv
from table_checks import assert_identical

# Every kind of index: plain, composite, prefix, descending, commented, ignored; unique; fulltext;
# a non-primary AUTO_INCREMENT column whose index must stay during the load.
ORDERS = """
CREATE TABLE orders (
  id BIGINT UNSIGNED NOT NULL,
  seq INT NOT NULL AUTO_INCREMENT,
  sku VARCHAR(40) NOT NULL,
  customer INT NOT NULL,
  note TEXT CHARACTER SET utf8mb4 NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_sku (sku),
  KEY ix_seq (seq),
  KEY ix_updated_at (updated_at),
  KEY ix_customer_amount (customer, amount DESC) COMMENT 'reporting',
  KEY ix_note (note(12)),
  KEY ix_ignored (amount) IGNORED,
  FULLTEXT KEY ft_note (note)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 AUTO_INCREMENT=5000
"""
ORDERS_DATA = """
INSERT INTO orders (id, seq, sku, customer, note, amount, updated_at)
SELECT seq, seq, CONCAT('SKU-', seq), seq % 37, CONCAT('Grüße ', seq, ' – ', REPEAT('x', seq % 30)),
       seq * 1.25, '2025-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_3000
"""


def orders_ddl(env: SyncEnv) -> str:
    """ORDERS in the source's flavor (MySQL calls an ignored index INVISIBLE)."""
    return ORDERS.replace(" IGNORED", " INVISIBLE") if flavor(env.source) == "mysql" else ORDERS


REFERENCE = """
CREATE TABLE ref (
  id INT NOT NULL PRIMARY KEY, code VARCHAR(20) NOT NULL, grp INT NOT NULL,
  KEY ix_grp_code (grp, code)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO ref SELECT seq, CONCAT('c', seq), seq % 7 FROM seq_1_to_2000;
"""
TABLES = [
    {"table": "orders", "primary_key": "id", "modifier": "updated_at"},
    {"table": "ref", "primary_key": "id"},  # full refresh
]


def show_create(server: Any, database: str, table: str) -> str:
    """``SHOW CREATE TABLE`` without the AUTO_INCREMENT counter (the target never copies it)."""
    text = server.query(f"SHOW CREATE TABLE `{table}`", database)[0][1]
    return re.sub(r" AUTO_INCREMENT=\d+", "", text)


def index_set(server: Any, database: str, table: str) -> list[tuple[Any, ...]]:
    """Every index part as information_schema describes it (comparable across flavors)."""
    return server.query(
        "SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, COLLATION, INDEX_TYPE, INDEX_COMMENT "
        "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        database,
        (database, table),
    )


def flavor(server: Any) -> str:
    return str(getattr(server, "flavor", "mariadb"))  # ExternalServer knows; the throwaway servers are MariaDB


def tables_of(server: Any, database: str) -> set[str]:
    return {row[0] for row in server.query("SHOW TABLES", database)}


def assert_same_table(env: SyncEnv, table: str) -> None:
    assert index_set(env.target, env.target_db, table) == index_set(env.source, env.source_db, table)
    if flavor(env.source) == flavor(env.target):
        assert show_create(env.target, env.target_db, table) == show_create(env.source, env.source_db, table)
    assert_identical(env.source, env.source_db, env.target, env.target_db, table)


def loaded_index_sets(monkeypatch: pytest.MonkeyPatch, env: SyncEnv) -> list[tuple[str, set[str]]]:
    """Record, at each load, the table loaded into and the indexes it had while its rows went in."""
    from dlt_db_sync.data_processing.loader import TargetLoader

    seen: list[tuple[str, set[str]]] = []
    original = TargetLoader.load

    def load(self: TargetLoader, table: str, *args: Any, **kwargs: Any) -> int:
        indexes = {row[2] for row in env.tgt_query(f"SHOW INDEX FROM `{table}`")}
        seen.append((table, indexes))
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(TargetLoader, "load", load)
    return seen


@pytest.mark.parametrize("mode", ["direct", "file_staging"])
def test_initial_load_builds_the_source_indexes_after_the_rows(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    sync_env.src(orders_ddl(sync_env))
    sync_env.src(ORDERS_DATA)
    sync_env.src(REFERENCE)
    seen = loaded_index_sets(monkeypatch, sync_env)
    caplog.set_level(logging.INFO, logger="dlt_sync.schema_management")
    with kept_syncer(sync_env, TABLES, CHUNK_SIZE="700", PIPELINE_MODE=mode) as (syncer, specs, _status):
        results = syncer.run_cycle(specs)
        assert all(r.ok for r in results), results
        assert [r.rows for r in results] == [3000, 2000]
        # The rows went in without the plain secondary indexes; primary, unique, fulltext and the
        # AUTO_INCREMENT column's index stayed.
        assert seen == [
            ("orders__dlt_load", {"PRIMARY", "uq_sku", "ix_seq", "ft_note"}),
            ("ref__dlt_new", {"PRIMARY"}),
        ]
        deferred = [r.getMessage() for r in caplog.records if "secondary index(es) after the load" in r.getMessage()]
        assert len(deferred) == 2, deferred
        for table in ("orders", "ref"):
            assert_same_table(sync_env, table)
        assert tables_of(sync_env.target, sync_env.target_db) == {"orders", "ref", "_dlt_sync_state"}
        # The next cycles are ordinary: nothing to load, nothing deferred.
        sync_env.src("UPDATE orders SET amount = amount + 1, updated_at = NOW(6) WHERE id <= 10")
        seen.clear()
        results = syncer.run_cycle(specs)
        assert all(r.ok for r in results) and results[0].rows >= 10, results
        assert [table for table, _ in seen] == ["orders"]
    for table in ("orders", "ref"):
        assert_same_table(sync_env, table)


def test_failed_initial_load_recovers_with_indexes(sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load failing in its third chunk leaves the new table empty with all its indexes; the
    next cycle loads it completely."""
    from dlt_db_sync.data_processing.loader import TargetLoader
    from dlt_db_sync.error_handling.errors import DataError

    sync_env.src(orders_ddl(sync_env))
    sync_env.src(ORDERS_DATA)
    original = TargetLoader._apply_chunk
    chunks: list[int] = []

    def failing(self: TargetLoader, *args: Any, **kwargs: Any) -> None:
        chunks.append(1)
        if len(chunks) == 3:
            raise DataError("injected failure in the third chunk")
        original(self, *args, **kwargs)

    monkeypatch.setattr(TargetLoader, "_apply_chunk", failing)
    with kept_syncer(sync_env, TABLES[:1], CHUNK_SIZE="700", PIPELINE_MODE="direct") as (syncer, specs, _status):
        first = syncer.run_cycle(specs)
        assert not first[0].ok and "injected failure" in (first[0].error or ""), first
        assert sync_env.tgt_query("SELECT COUNT(*) FROM orders") == [(0,)]
        assert tables_of(sync_env.target, sync_env.target_db) == {"orders", "_dlt_sync_state"}
        assert index_set(sync_env.target, sync_env.target_db, "orders") == index_set(
            sync_env.source, sync_env.source_db, "orders"
        )
        second = syncer.run_cycle(specs)
        assert second[0].ok and second[0].rows == 3000, second
    assert_same_table(sync_env, "orders")


KILLED_LOAD = """
import os, signal, sys, threading
from dlt_db_sync.config import settings as config
from dlt_db_sync.config.tables import load_tables
from dlt_db_sync.database.engines import create_engines
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.syncer import TableSyncer
from dlt_db_sync.schema_management import deferred_indexes

original = deferred_indexes._alter

def alter(engine, table, clauses):
    if clauses[0].startswith("ADD"):
        os.kill(os.getpid(), signal.SIGKILL)  # every row loaded, no index built yet: die here
    original(engine, table, clauses)

deferred_indexes._alter = alter
settings = config.load_settings(dotenv_path=None)
syncer = TableSyncer(create_engines(settings), settings, SyncStatus(), threading.Event())
syncer.prepare()
syncer.run_cycle(load_tables(settings.tables_file))
sys.exit(3)  # not reached
"""


def test_initial_load_killed_before_its_indexes_recovers(sync_env: SyncEnv) -> None:
    """A process killed between the load and the index build leaves the new table empty (with its
    indexes) and the load table behind; the next process loads the table and removes the leftover."""
    sync_env.src(orders_ddl(sync_env))
    sync_env.src(ORDERS_DATA)
    sync_env.write_tables(TABLES[:1])
    environ = {**os.environ, **sync_env.environ(CHUNK_SIZE="700", PIPELINE_MODE="direct")}
    environ["PYTHONPATH"] = os.pathsep.join(str(ROOT / part) for part in ("source", "tests"))
    proc = subprocess.run([sys.executable, "-c", KILLED_LOAD], env=environ, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert sync_env.tgt_query("SELECT COUNT(*) FROM orders") == [(0,)]
    assert sync_env.tgt_query("SELECT COUNT(*) FROM orders__dlt_load") == [(3000,)]
    state = sync_env.tgt_query("SELECT pending, pending_from FROM _dlt_sync_state WHERE table_name = 'orders'")
    assert state == [(1, None)]
    with kept_syncer(sync_env, TABLES[:1], CHUNK_SIZE="700", PIPELINE_MODE="direct") as (syncer, specs, _status):
        results = syncer.run_cycle(specs)
        assert results[0].ok and results[0].rows == 3000, results
        assert syncer.run_cycle(specs)[0].skipped
    assert tables_of(sync_env.target, sync_env.target_db) == {"orders", "_dlt_sync_state"}
    assert_same_table(sync_env, "orders")
