"""Schema evolution (issue 4, TRD 5.2.3), each case with data before and after the change, in both
pipeline modes: new columns appear in the target with their exact definition before rows using them
load; widened types widen the target; dropped and renamed columns stay in the target with a
warning; a narrowing fails only that table with a message saying what to do.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fidelity_helpers import assert_same_table, column_types, run_sync

from conftest import SyncEnv
from log_lines import logged_line

pytestmark = pytest.mark.integration

MODES = pytest.mark.parametrize("mode", ["direct", "file_staging"])

PEOPLE_DDL = """
CREATE TABLE people (
  id INT NOT NULL PRIMARY KEY,
  seq INT NOT NULL,
  name VARCHAR(50) COLLATE utf8mb4_unicode_ci NOT NULL,
  qty INT NULL,
  price DECIMAL(10,2) NULL,
  kind ENUM('a','b') NOT NULL DEFAULT 'a',
  legacy VARCHAR(10) NOT NULL DEFAULT 'old',
  nick VARCHAR(20) NULL,
  KEY seq_idx (seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


def _people(env: SyncEnv, rows: list[tuple[Any, ...]], columns: str = "id, seq, name, qty, price, kind") -> None:
    placeholders = ", ".join(["%s"] * len(rows[0]))
    conn = env.source.connect(env.source_db)
    try:
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO people ({columns}) VALUES ({placeholders})", rows)
    finally:
        conn.close()


def _sync(env: SyncEnv, mode: str, tables: list[dict[str, Any]] | None = None) -> Any:
    run = run_sync(env, tables or [{"table": "people", "primary_key": "id", "modifier": "seq"}], PIPELINE_MODE=mode)
    for result in run.results:
        if result.table == "people":
            assert result.ok, result.error
    return run


def _assert_same_columns(env: SyncEnv, table: str, extra_in_target: tuple[str, ...] = ()) -> None:
    """Target columns equal the source's (type, nullability, default, charset, collation, order)."""
    source = column_types(env.source, env.source_db, table)
    target = [c for c in column_types(env.target, env.target_db, table) if c[0] not in extra_in_target]
    assert target == source


@pytest.fixture
def people(sync_env: SyncEnv) -> SyncEnv:
    sync_env.src(PEOPLE_DDL)
    _people(sync_env, [(1, 1, "Ann", 10, "12345678.90", "a"), (2, 2, "Bob", None, None, "b")])
    return sync_env


@MODES
def test_new_columns_appear_with_their_exact_definition(people: SyncEnv, mode: str) -> None:
    env = people
    _sync(env, mode)
    _assert_same_columns(env, "people")

    env.src(
        "ALTER TABLE people "
        "ADD COLUMN first_col BIGINT UNSIGNED NULL FIRST, "
        "ADD COLUMN mid_col DECIMAL(65,30) NULL COMMENT 'in the middle' AFTER name, "
        "ADD COLUMN status VARCHAR(12) CHARACTER SET latin1 COLLATE latin1_bin NOT NULL DEFAULT 'new', "
        "ADD COLUMN created DATETIME(6) NOT NULL DEFAULT '2000-01-01 00:00:00.000000', "
        "ADD COLUMN tags SET('x','y') NOT NULL DEFAULT 'x,y'"
    )
    _people(
        env,
        [
            (
                18446744073709551615,
                3,
                3,
                "Cy",
                "-1.000000000000000000000000000001",
                "ok",
                "2024-02-29 12:00:00.123456",
                "y",
            )
        ],
        "first_col, id, seq, name, mid_col, status, created, tags",
    )
    run = _sync(env, mode)
    assert run.result("people").rows == 3  # whole table re-read once: old rows get the new columns' values
    _assert_same_columns(env, "people")
    target_order = [c[0] for c in column_types(env.target, env.target_db, "people")]
    assert target_order[:5] == ["first_col", "id", "seq", "name", "mid_col"]
    # Old rows got the defaults on both sides; the new row its exact values.
    assert_same_table(env, "people", "id")


@MODES
def test_widened_types_widen_the_target(people: SyncEnv, mode: str) -> None:
    env = people
    _sync(env, mode)
    env.src(
        "ALTER TABLE people MODIFY name VARCHAR(200) COLLATE utf8mb4_unicode_ci NOT NULL, MODIFY qty BIGINT NULL, "
        "MODIFY price DECIMAL(14,2) NULL, MODIFY kind ENUM('a','b','c') NOT NULL DEFAULT 'a'"
    )
    _people(env, [(3, 3, "Ç" * 200, 9223372036854775807, "123456789012.34", "c")])
    _sync(env, mode)
    _assert_same_columns(env, "people")
    types = {c[0]: c[1] for c in column_types(env.target, env.target_db, "people")}
    assert (types["name"], types["qty"], types["price"], types["kind"]) == (
        "varchar(200)",
        "bigint(20)",
        "decimal(14,2)",
        "enum('a','b','c')",
    )
    assert_same_table(env, "people", "id")


@MODES
def test_dropped_and_renamed_columns_are_kept_with_a_warning(
    people: SyncEnv, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = people
    env.src("UPDATE people SET nick = CONCAT('nick-', name)")
    _sync(env, mode)
    env.src("ALTER TABLE people DROP COLUMN legacy, CHANGE nick nickname VARCHAR(20) NULL")
    env.src("UPDATE people SET nickname = 'renamed', seq = seq + 10 WHERE id = 2")
    _people(env, [(3, 3, "Cy", 1, "1.00", "a")])
    caplog.set_level(logging.WARNING, logger="dlt_sync")
    _sync(env, mode)

    warnings = [logged_line(r) for r in caplog.records if "DROPPED_COLUMN" in logged_line(r)]
    assert len(warnings) == 1 and "legacy" in warnings[0] and "nick" in warnings[0]
    target = {c[0]: c for c in column_types(env.target, env.target_db, "people")}
    assert "legacy" in target and "nick" in target and "nickname" in target
    assert target["legacy"][2] == "YES"  # was NOT NULL: relaxed so rows without it load
    _assert_same_columns(env, "people", extra_in_target=("legacy", "nick"))
    # Data is never dropped: old values stay, rows loaded since get NULL there. The new column was
    # backfilled for every row (a rename carries values in rows outside the incremental window).
    rows = env.tgt_query("SELECT id, legacy, nick, nickname FROM people ORDER BY id")
    assert rows == [(1, "old", "nick-Ann", "nick-Ann"), (2, "old", "nick-Bob", "renamed"), (3, None, None, None)]
    source_columns = [c[0] for c in column_types(env.source, env.source_db, "people")]
    assert_same_table(env, "people", "id", columns=source_columns)


@MODES
def test_narrowing_fails_only_that_table_with_what_to_do(people: SyncEnv, mode: str) -> None:
    env = people
    env.src("CREATE TABLE other (id INT PRIMARY KEY, v VARCHAR(10))")
    env.src("INSERT INTO other VALUES (1, 'one')")
    tables = [
        {"table": "people", "primary_key": "id", "modifier": "seq"},
        {"table": "other", "primary_key": "id"},
    ]
    env.src("ALTER TABLE people MODIFY name VARCHAR(200) COLLATE utf8mb4_unicode_ci NOT NULL, MODIFY qty BIGINT NULL")
    _sync(env, mode, tables)

    env.src(
        "UPDATE people SET name = LEFT(name, 20); ALTER TABLE people MODIFY name VARCHAR(20) COLLATE utf8mb4_unicode_ci NOT NULL, MODIFY qty INT NULL"
    )
    env.src("INSERT INTO other VALUES (2, 'two')")
    _people(env, [(3, 3, "Cy", 1, "1.00", "a")])
    run = run_sync(env, tables, PIPELINE_MODE=mode)
    people_result = run.result("people")
    assert not people_result.ok
    assert people_result.category == "schema_errors"
    message = people_result.error or ""
    assert "'people'" in message and "'name'" in message
    assert "varchar(200)" in message and "varchar(20)" in message
    assert "ALTER TABLE" in message and "drop the target table" in message
    # Nothing changed in the target table, and the other table synced in the same run.
    assert env.tgt_query(
        "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'people' AND COLUMN_NAME IN ('name', 'qty') ORDER BY COLUMN_NAME"
    ) == [
        ("varchar(200)",),
        ("bigint(20)",),
    ]
    assert env.target.scalar(f"SELECT COUNT(*) FROM `{env.target_db}`.people") == 2
    assert run.result("other").ok, run.result("other").error
    assert_same_table(env, "other", "id")

    # What the message says to do works: widen (here: recreate) the target and the next run syncs.
    env.tgt("DROP TABLE people")
    _sync(env, mode, tables)
    _assert_same_columns(env, "people")
    assert_same_table(env, "people", "id")
