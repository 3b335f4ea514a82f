"""Bad input, each run through the real CLI (``db_pipeline.py --once`` as a subprocess).

Configuration errors exit 2 before any database is touched, with one line naming the file, entry
or variable; table-level problems fail that table only (exit 1) while the others sync.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fault_helpers import assert_identical, run_daemon

from conftest import SyncEnv
from mariadb_server import free_port

pytestmark = pytest.mark.integration

GOOD = {"table": "actor", "primary_key": "actor_id", "modifier": "last_update"}


def make_actor(env: SyncEnv) -> None:
    env.src(
        "CREATE TABLE actor (actor_id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, "
        "last_update DATETIME NOT NULL, KEY (last_update));"
        "INSERT INTO actor SELECT seq, CONCAT('actor ', seq), '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_50;"
        "CREATE TABLE film (film_id INT PRIMARY KEY, title VARCHAR(40));"
        "INSERT INTO film VALUES (1, 'Alien'), (2, 'Brazil')"
    )


def closed_port_env(env: SyncEnv, **overrides: Any) -> dict[str, str]:
    """The test environment with both databases pointing at a port nobody listens on."""
    port = str(free_port())
    return env.environ(SOURCE_DB_PORT=port, TARGET_DB_PORT=port, **overrides)


def assert_config_error(result: Any, *fragments: str) -> str:
    assert result.returncode == 2, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("configuration error:")]
    assert len(lines) == 1, result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout
    return lines[0]


# ----------------------------------------------------------------------------- exit 2, no SQL


def test_malformed_json(sync_env: SyncEnv) -> None:
    path = sync_env.workdir / "tables.json"
    path.write_text('[\n  {"table": "actor", "primary_key": "actor_id"}\n  {"table": "film"}\n]\n')
    result = run_daemon(closed_port_env(sync_env), "--once", cwd=sync_env.workdir)
    assert_config_error(result, str(path), "malformed JSON", "line 3 column 3")


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        ({"table": "film"}, ["entry 1 (table 'film')", "'primary_key' is required"]),
        ({"table": "film", "primary_key": []}, ["entry 1 (table 'film')", "primary_key", "non-empty list"]),
        (
            {"table": "actor; DROP TABLE film", "primary_key": "id"},
            ["entry 1", "'actor; DROP TABLE film'", "not a valid identifier"],
        ),
        ({"table": "ACTOR", "primary_key": "actor_id"}, ["entry 1 (table 'ACTOR')", "duplicates entry 0"]),
    ],
    ids=["missing-primary-key", "empty-primary-key", "injected-identifier", "duplicate-table"],
)
def test_bad_tables_entry_is_rejected_before_any_sql(
    sync_env: SyncEnv, entry: dict[str, Any], fragments: list[str]
) -> None:
    """Both databases point at a closed port: exit 2 with the entry's message proves no connection was tried."""
    path = sync_env.write_tables([GOOD, entry])
    result = run_daemon(closed_port_env(sync_env), "--once", cwd=sync_env.workdir)
    assert_config_error(result, str(path), *fragments)
    assert "cannot connect" not in result.stdout


def test_injected_identifier_never_reaches_the_source(sync_env: SyncEnv) -> None:
    """With reachable databases the bad entry still stops everything and ``film`` survives."""
    make_actor(sync_env)
    sync_env.write_tables([GOOD, {"table": "actor; DROP TABLE film", "primary_key": "actor_id"}])
    result = run_daemon(sync_env.environ(), "--once", cwd=sync_env.workdir)
    assert_config_error(result, "not a valid identifier")
    assert sync_env.src_query("SELECT COUNT(*) FROM film") == [(2,)]
    assert sync_env.tgt_query("SHOW TABLES") == []  # nothing was synced either


@pytest.mark.parametrize(
    ("variable", "value"),
    [("POOL_SIZE", "abc"), ("LOCK_TIMEOUT_RETRIES", "three"), ("TARGET_DB_PORT", "33o6")],
)
def test_unparseable_number_in_a_variable(sync_env: SyncEnv, variable: str, value: str) -> None:
    sync_env.write_tables([GOOD])
    result = run_daemon(sync_env.environ(**{variable: value}), "--once", cwd=sync_env.workdir)
    assert_config_error(result, f"environment variable {variable}={value!r} is invalid")


# ----------------------------------------------------------------------------- exit 1, per table


def test_broken_tables_fail_alone_and_the_others_sync(sync_env: SyncEnv) -> None:
    make_actor(sync_env)
    sync_env.src(
        "CREATE TABLE nokey (a INT, b VARCHAR(10)); INSERT INTO nokey VALUES (1, 'x');"
        "CREATE TABLE otherkey (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL, UNIQUE KEY (code), v INT);"
        "INSERT INTO otherkey VALUES (1, 'a', 1);"
        "CREATE TABLE nomod (id INT PRIMARY KEY, v INT); INSERT INTO nomod VALUES (1, 1);"
        "CREATE TABLE nokeycol (id INT PRIMARY KEY, v INT); INSERT INTO nokeycol VALUES (1, 1)"
    )
    sync_env.write_tables(
        [
            {"table": "ghost", "primary_key": "id"},
            GOOD,
            {"table": "nokey", "primary_key": "a"},
            {"table": "otherkey", "primary_key": "v"},
            {"table": "nomod", "primary_key": "id", "modifier": "changed_at"},
            {"table": "nokeycol", "primary_key": ["id", "region"]},
            {"table": "film", "primary_key": "film_id"},
        ]
    )
    result = run_daemon(sync_env.environ(), "--once", cwd=sync_env.workdir)
    out = result.stdout
    assert result.returncode == 1, out
    assert "Traceback" not in out
    failures = {m.group(1): m.group(2) for m in re.finditer(r"TABLE_SYNC - (\w+) failed: (.*)", out)}
    assert set(failures) == {"ghost", "nokey", "otherkey", "nomod", "nokeycol"}, out
    assert "'ghost' does not exist in the source" in failures["ghost"]
    assert "'nokey' has no primary key or unique key" in failures["nokey"]
    assert "'otherkey': configured primary_key (v) is not a primary or unique key" in failures["otherkey"]
    assert "(its unique keys:" in failures["otherkey"] and "code" in failures["otherkey"]
    assert "'nomod'" in failures["nomod"] and "'changed_at' does not exist" in failures["nomod"]
    assert "'nokeycol'" in failures["nokeycol"] and "region" in failures["nokeycol"]
    assert "2 table(s) synced, 5 failed" in out
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "actor")
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "film")
    for table in ("nokey", "otherkey", "nomod", "nokeycol"):  # nothing half-applied
        rows = sync_env.tgt_query(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        )
        assert rows in ([], [(0,)]), (table, rows)


def test_wrong_password(sync_env: SyncEnv) -> None:
    make_actor(sync_env)
    sync_env.write_tables([GOOD])
    password = "S3cr3t!pw"
    result = run_daemon(sync_env.environ(TARGET_DB_PASS=password), "--once", cwd=sync_env.workdir)
    assert result.returncode == 1, result.stdout
    assert "access denied" in result.stdout.lower()
    assert f"cannot connect to the target database {sync_env.target.user}@" in result.stdout
    assert "Traceback" not in result.stdout
    for form in (password, "S3cr3t", "S3cr3t%21pw"):
        assert form not in result.stdout


def test_tables_file_is_json_but_not_a_list(sync_env: SyncEnv) -> None:
    path = sync_env.workdir / "tables.json"
    path.write_text(json.dumps({"table": "actor", "primary_key": "actor_id"}))
    result = run_daemon(closed_port_env(sync_env), "--once", cwd=sync_env.workdir)
    assert_config_error(result, str(path), "is not of type 'array'")
