"""The dialect layer against real servers (issue 13): whatever the source and target are (throwaway
MariaDB here; MySQL 5.7/8.0/8.4 and MariaDB 10.6/10.11/11.4 in the GitLab matrix), the statements
the dialect writes for that server run and do what they should, the fixtures' DDL translated for
the target executes there, and the servers show up in ``--check`` and health."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from fidelity_helpers import run_sync

from conftest import ROOT, SyncEnv
from dialect_fixtures import FIXTURES, MYSQL57, MYSQL80, MYSQL84, fixture_statements
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.database.sync_state import STATE_TABLE, ensure_state_table, mark_done, mark_pending, read_state

pytestmark = pytest.mark.integration


@pytest.fixture
def target_engine(sync_env: SyncEnv) -> Iterator[Any]:
    from dlt_db_sync.config import settings as config
    from dlt_db_sync.database.engines import create_engine

    settings = config.load_settings(sync_env.environ(), dotenv_path=None)
    engine = create_engine(settings.target, settings)
    yield engine
    engine.dispose()


def server_dialect(server: Any) -> Dialect:
    return Dialect.from_version_text(str(server.scalar("SELECT VERSION()")))


def test_check_and_health_show_each_server(sync_env: SyncEnv) -> None:
    sync_env.src("CREATE TABLE t (id INT PRIMARY KEY)")
    sync_env.write_tables([{"table": "t", "primary_key": "id"}])
    import os

    env = {**os.environ, **sync_env.environ()}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "source" / "db_pipeline.py"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for role, server in (("source", sync_env.source), ("target", sync_env.target)):
        dialect = server_dialect(server)
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{role} server: "))
        assert dialect.label in line and "sql_mode=" in line and "local_infile=" in line, line

    from dlt_db_sync.monitoring.health import health_report

    run = run_sync(sync_env, [{"table": "t", "primary_key": "id"}])
    from dlt_db_sync.config import settings as config

    settings = config.load_settings(sync_env.environ(), dotenv_path=None)
    _code, body = health_report(settings, run.status.snapshot(), {}, {})
    for role, server in (("source", sync_env.source), ("target", sync_env.target)):
        shown = body["database_connections"][role]["server"]
        dialect = server_dialect(server)
        assert (shown["flavor"], shown["version"]) == (dialect.flavor, ".".join(map(str, dialect.version)))
        assert shown["version"] in shown["version_comment"] + shown["version"]
        assert isinstance(shown["local_infile"], bool) and shown["role"] == role


def test_translated_fixture_ddl_runs_on_the_target(sync_env: SyncEnv) -> None:
    """Sakila as MySQL 8.0 prints it, and both every-type tables, translated for this target, execute."""
    from dlt_db_sync.schema_management.ddl_translation import translate_create_table
    from dlt_db_sync.schema_management.tables import target_create_sql

    target = server_dialect(sync_env.target)
    created = []
    for path in sorted(FIXTURES.glob("*.sql")):
        source = MYSQL80 if "mysql" in path.name else Dialect("mariadb", (11, 4, 4))
        for create in fixture_statements(path):
            name = create.split("`")[1]
            table = f"{path.stem[:12]}_{name}"
            sql = translate_create_table(target_create_sql(create, table), source, target, table).sql
            sync_env.tgt(sql)
            created.append(table)
    assert len(created) == 18
    rows = sync_env.tgt_query(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND ENGINE = 'InnoDB'"
    )
    assert rows[0][0] == 18


def test_upserts_limits_and_sql_mode_statements_run(sync_env: SyncEnv, target_engine: Any) -> None:
    dialect = Dialect.of(target_engine)
    assert dialect == server_dialect(sync_env.target)
    with target_engine.begin() as conn:
        ensure_state_table(conn)
        mark_pending(conn, "t", "2024-01-01")
        mark_done(conn, "t", 5, "2024-02-02")
        mark_pending(conn, "t", "2024-03-03")
        state = read_state(conn, "t")
    assert (
        state is not None
        and state.pending
        and state.pending_from == "2024-03-03"
        and state.last_watermark == "2024-02-02"
    )
    assert sync_env.tgt_query(f"SELECT last_rows FROM {STATE_TABLE}") == [(5,)]

    conn = sync_env.target.connect(sync_env.target_db)
    try:
        with conn.cursor() as cur:
            for statement in dialect.statement_limit(30):
                cur.execute(statement)
            cur.execute(dialect.stage_table_sql("_stage", 2, temporary=True))
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, e ENUM('x','y') NOT NULL, name VARCHAR(10)) ENGINE=InnoDB")
            cur.execute("INSERT INTO t VALUES (1, 'x', 'old'), (2, 'x', 'keep')")
            cur.execute(f"INSERT INTO _stage ({dialect.stage_columns(2)}) VALUES ('1', 'new'), ('3', 'three')")
            cur.execute(dialect.upsert_select("t", ["id", "name"], ["c0", "c1"], "`_stage`", ["name"]))
            cur.execute("SET SESSION sql_mode='STRICT_ALL_TABLES'")
            update = "UPDATE `t` AS t JOIN `_stage` AS s ON t.`id` = s.c0 SET t.`e` = '' WHERE s.c0 = '1'"
            with pytest.raises(pymysql.err.DataError):
                cur.execute(update)  # strict mode refuses the invalid ENUM value ...
            for statement in dialect.with_sql_mode("", update, "STRICT_ALL_TABLES"):
                cur.execute(statement)  # ... the statement-scoped non-strict form writes it
            cur.execute("SELECT @@SESSION.sql_mode")
            assert cur.fetchone()[0] == "STRICT_ALL_TABLES"
            for statement in dialect.clear_statement_limit():
                cur.execute(statement)
            cur.execute("SELECT id, e + 0, name FROM t ORDER BY id")
            assert cur.fetchall() == ((1, 0, "new"), (2, 1, "keep"), (3, 1, "three"))
    finally:
        conn.close()


def test_other_versions_forms_run_wherever_they_can(sync_env: SyncEnv) -> None:
    """The MySQL 5.7 forms (``VALUES()``, a session sql_mode change around the statement) and the
    MySQL 8.0.19+ derived-table upsert are also valid on MariaDB (and the 5.7 forms on MySQL 8.0):
    run them here, so they are not verified by unit tests only."""
    conn = sync_env.target.connect(sync_env.target_db)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE u (k INT PRIMARY KEY, v INT, e ENUM('a') NOT NULL)")
            cur.execute("INSERT INTO u VALUES (1, 1, 'a')")
            cur.execute(MYSQL57.upsert_values("u", ["k", "v", "e"], "(1, 2, 'a')", {"v": None}))
            cur.execute(MYSQL57.upsert_select("u", ["k", "v", "e"], ["k + 1", "v * 10", "e"], "`u` AS src", ["v"]))
            cur.execute("CREATE TABLE w (k INT PRIMARY KEY, v INT)")
            cur.execute("INSERT INTO w VALUES (1, 100), (3, 300)")
            cur.execute(MYSQL84.upsert_select("u", ["k", "v"], ["k", "v"], "`w`", ["v"]))
            cur.execute("SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ZERO_DATE'")
            for statement in MYSQL57.with_sql_mode(
                "", "UPDATE `u` SET e = '' WHERE k = 2", "STRICT_ALL_TABLES,NO_ZERO_DATE"
            ):
                cur.execute(statement)
            cur.execute("SELECT @@SESSION.sql_mode")
            assert cur.fetchone()[0] == "STRICT_ALL_TABLES,NO_ZERO_DATE"
            cur.execute("SELECT k, v, e + 0 FROM u ORDER BY k")
            assert cur.fetchall() == ((1, 100, 1), (2, 20, 0), (3, 300, 1))
    finally:
        conn.close()


def test_non_innodb_target_table_is_refused(sync_env: SyncEnv) -> None:
    sync_env.src("CREATE TABLE m (id INT PRIMARY KEY, v INT)")
    sync_env.src("INSERT INTO m VALUES (1, 1)")
    sync_env.tgt("CREATE TABLE m (id INT PRIMARY KEY, v INT) ENGINE=MyISAM")
    run = run_sync(sync_env, [{"table": "m", "primary_key": "id"}])
    error = run.result("m").error or ""
    assert "uses the MyISAM engine; the daemon needs InnoDB" in error, error


def test_external_mode_sequence_tables_hold_exactly_the_range(sync_env: SyncEnv) -> None:
    """The real ``seq_A_to_B`` tables external mode creates on MySQL (built here under another name,
    so MariaDB's sequence engine does not answer instead) hold exactly A..B."""
    from external_server import fill_sequence

    conn = sync_env.source.connect(sync_env.source_db)
    try:
        with conn.cursor() as cur:
            fill_sequence(cur, "numbers_3_to_1000", 3, 1000)
            fill_sequence(cur, "numbers_1_to_1", 1, 1)
            cur.execute("SELECT COUNT(*), MIN(seq), MAX(seq), SUM(seq) FROM numbers_3_to_1000")
            assert cur.fetchone() == (998, 3, 1000, sum(range(3, 1001)))
            cur.execute("SELECT seq FROM numbers_1_to_1")
            assert cur.fetchall() == ((1,),)
    finally:
        conn.close()
