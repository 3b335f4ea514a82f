"""The sanitization policy (issue 4) against a target whose sql_mode forbids zero dates.

By default nothing is altered and the table fails with a DataError naming table and column while
other tables go on; with ``"sanitize": "null"`` (tables.json) or ``SANITIZE_POLICY=null`` exactly
the offending values of NULL-able columns become NULL, counted per column, logged once per cycle
and reported to the status object; a NOT NULL column keeps failing.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fidelity_helpers import assert_same_table, exact_rows, run_sync

from conftest import SyncEnv
from log_lines import logged_line
from mariadb_server import MariaDBServer

pytestmark = pytest.mark.integration

STRICT_NO_ZERO = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE"
DATES_DDL = """
CREATE TABLE {name} (
  id INT NOT NULL PRIMARY KEY,
  seq INT NOT NULL,
  da DATE NULL,
  dt DATETIME(3) NULL,
  ts TIMESTAMP NULL DEFAULT NULL,
  note VARCHAR(20) NULL
)
"""
DATES_ROWS = [
    (1, 1, "2024-05-06", "2024-05-06 07:08:09.123", "2024-05-06 07:08:09", "clean"),
    (2, 2, "0000-00-00", "0000-00-00 00:00:00", "0000-00-00 00:00:00", "all zero"),
    (3, 3, "2020-00-15", "2020-01-00 10:00:00", "2024-01-01 00:00:00", "zero in date"),
    (4, 4, "0000-00-00", "2020-02-02 00:00:00", None, "zero date only"),
    (5, 5, None, "0000-00-00 00:00:00.000", "1970-01-01 00:00:01", "nulls and zero"),
]
CLEAN_ROWS = [(1, 1, "2024-01-01", "2024-01-01 00:00:00", "2024-01-01 00:00:00", "ok")]


@pytest.fixture(scope="module")
def no_zero_target(server_factory: Any) -> MariaDBServer:
    """A target server whose own sql_mode forbids zero dates."""
    return server_factory.start("target-nozero", ["--default-time-zone=-05:00", f"--sql-mode={STRICT_NO_ZERO}"])


@pytest.fixture
def dates_env(sync_env: SyncEnv, no_zero_target: MariaDBServer) -> Any:
    for name, rows in (("zero_dates", DATES_ROWS), ("zero_full", DATES_ROWS), ("clean", CLEAN_ROWS)):
        sync_env.src(DATES_DDL.format(name=name))
        conn = sync_env.source.connect(sync_env.source_db)
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_mode = '', time_zone = '+00:00'")
                cur.executemany(f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s, %s)", rows)
        finally:
            conn.close()
    yield sync_env
    no_zero_target.execute(f"DROP DATABASE IF EXISTS `{sync_env.target_db}`")


def _hex(text: str) -> str:
    return text.encode().hex().upper()


def _tables(policy: str | None = None) -> list[dict[str, Any]]:
    extra = {"sanitize": policy} if policy else {}
    return [
        {"table": "zero_dates", "primary_key": "id", "modifier": "seq", **extra},
        {"table": "zero_full", "primary_key": "id", **extra},
        {"table": "clean", "primary_key": "id", "modifier": "seq"},
    ]


@pytest.mark.parametrize("mode", ["direct", "file_staging"])
def test_default_policy_fails_the_table_and_alters_nothing(
    dates_env: SyncEnv, no_zero_target: MariaDBServer, mode: str
) -> None:
    env = dates_env
    run = run_sync(env, _tables(), target=no_zero_target, PIPELINE_MODE=mode, TARGET_SQL_MODE=STRICT_NO_ZERO)
    for table in ("zero_dates", "zero_full"):
        result = run.result(table)
        assert not result.ok
        assert result.category == "data_errors"
        message = result.error or ""
        assert f"table '{table}'" in message
        for column in ("'da'", "'dt'", "'ts'"):
            assert column in message
        assert "NO_ZERO_DATE" in message and '"sanitize": "null"' in message
        assert run.status.tables[table].last_error == message
    assert no_zero_target.scalar(f"SELECT COUNT(*) FROM `{env.target_db}`.zero_dates") == 0
    assert no_zero_target.scalar(f"SELECT COUNT(*) FROM `{env.target_db}`.zero_full") == 0
    # The other table goes on.
    assert run.result("clean").ok, run.result("clean").error
    assert_same_table(env, "clean", "id", target=no_zero_target)


@pytest.mark.parametrize("how", ["tables_json", "environment"])
@pytest.mark.parametrize("mode", ["direct", "file_staging"])
def test_null_policy_sets_only_the_offending_values_to_null(
    dates_env: SyncEnv, no_zero_target: MariaDBServer, caplog: pytest.LogCaptureFixture, mode: str, how: str
) -> None:
    env = dates_env
    overrides = {"PIPELINE_MODE": mode, "TARGET_SQL_MODE": STRICT_NO_ZERO}
    if how == "environment":
        overrides["SANITIZE_POLICY"] = "null"
    caplog.set_level(logging.WARNING, logger="dlt_sync")
    run = run_sync(env, _tables("null" if how == "tables_json" else None), target=no_zero_target, **overrides)
    expected = {"da": 3, "dt": 3, "ts": 1}  # rows 2-4 / 2, 3, 5 / 2
    for table in ("zero_dates", "zero_full"):
        result = run.result(table)
        assert result.ok, result.error
        assert result.sanitized == expected
        assert run.status.tables[table].sanitized == expected
        rows = exact_rows(no_zero_target, env.target_db, table, "id", ["id", "da", "dt", "ts", "note"])
        assert rows == [
            ("1", "2024-05-06", "2024-05-06 07:08:09.123", 1714979289, _hex("clean")),
            ("2", None, None, None, _hex("all zero")),
            ("3", None, None, 1704067200, _hex("zero in date")),
            ("4", None, "2020-02-02 00:00:00.000", None, _hex("zero date only")),
            ("5", None, None, 1, _hex("nulls and zero")),
        ]
        for column, n in expected.items():
            lines = [logged_line(r) for r in caplog.records if f"SANITIZE - {table}.{column}:" in logged_line(r)]
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"DATA_PROCESSING - SANITIZE - {table}.{column}: {n} value(s) set to NULL (")
            assert "NO_ZERO" in lines[0]
    assert run.result("clean").ok and run.result("clean").sanitized == {}

    # Next cycle: the incremental table is unchanged and skipped; nothing new is altered.
    caplog.clear()
    again = run_sync(env, _tables("null" if how == "tables_json" else None), target=no_zero_target, **overrides)
    assert again.result("zero_dates").ok and again.result("zero_dates").skipped
    assert again.result("zero_dates").sanitized == {}
    # The full-refresh table never matches the source (its NULLs differ from the zero dates): it is
    # refreshed again under the same policy, and the same values are counted again.
    assert again.result("zero_full").ok, again.result("zero_full").error
    assert again.result("zero_full").sanitized in ({}, expected)
    assert exact_rows(no_zero_target, env.target_db, "zero_full", "id", ["id", "da"])[1] == ("2", None)


def test_null_policy_cannot_apply_to_a_not_null_column(dates_env: SyncEnv, no_zero_target: MariaDBServer) -> None:
    env = dates_env
    env.src(
        "SET SESSION sql_mode = ''; UPDATE zero_dates SET da = '0000-00-00' WHERE da IS NULL; "
        "ALTER TABLE zero_dates MODIFY da DATE NOT NULL"
    )
    run = run_sync(
        env,
        _tables(),
        target=no_zero_target,
        SANITIZE_POLICY="null",
        TARGET_SQL_MODE=STRICT_NO_ZERO,
    )
    result = run.result("zero_dates")
    assert not result.ok and result.category == "data_errors"
    assert "column 'da'" in (result.error or "") and "NOT NULL" in (result.error or "")
    assert "column 'dt'" not in (result.error or "")  # NULL-able columns are not the problem
    assert no_zero_target.scalar(f"SELECT COUNT(*) FROM `{env.target_db}`.zero_dates") == 0
    assert run.result("zero_full").ok and run.result("clean").ok


def test_null_policy_alters_nothing_when_the_target_accepts_zero_dates(sync_env: SyncEnv) -> None:
    """The policy only applies to values the target cannot store: the default target mode takes them all."""
    env = sync_env
    env.src(DATES_DDL.format(name="zero_dates"))
    env.src(
        "SET SESSION sql_mode = ''; SET SESSION time_zone = '+00:00'; "
        + "; ".join(
            "INSERT INTO zero_dates VALUES ({})".format(", ".join("NULL" if v is None else repr(v) for v in row))
            for row in DATES_ROWS
        )
    )
    run = run_sync(env, [{"table": "zero_dates", "primary_key": "id", "sanitize": "null"}])
    assert run.result("zero_dates").ok and run.result("zero_dates").sanitized == {}
    assert_same_table(env, "zero_dates", "id")


@pytest.mark.parametrize("policy", ["error", "null"])
def test_repair_by_chunks_applies_the_table_policy(
    dates_env: SyncEnv, no_zero_target: MariaDBServer, policy: str
) -> None:
    """Rows re-copied by a chunked repair (full refresh, --verify --repair) go through the same policy."""
    import threading

    from dlt_db_sync.config import settings as config
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.error_handling.errors import DataError
    from dlt_db_sync.schema_management.tables import describe_table
    from dlt_db_sync.verification.repair import copy_rows

    env = dates_env
    assert run_sync(env, _tables("null"), target=no_zero_target, TARGET_SQL_MODE=STRICT_NO_ZERO).result("zero_full").ok
    no_zero_target.execute("UPDATE zero_full SET note = 'drifted' WHERE id IN (1, 2)", env.target_db)
    environ = env.environ(
        TARGET_SQL_MODE=STRICT_NO_ZERO, TARGET_DB_HOST=no_zero_target.host, TARGET_DB_PORT=no_zero_target.port
    )
    settings = config.load_settings(environ, dotenv_path=None)
    engines = create_engines(settings)
    try:
        with engines.source.connect() as conn:
            source_def = describe_table(conn, "zero_full")
        copy = lambda: copy_rows(  # noqa: E731
            engines,
            settings,
            threading.Event(),
            "load_data",
            source_def,
            ("id",),
            [(1,), (2,)],
            policy,  # type: ignore[arg-type]
        )
        if policy == "error":
            with pytest.raises(DataError, match="table 'zero_full'.*column 'da'"):
                copy()
            return
        assert copy() == 2
    finally:
        engines.dispose()
    rows = exact_rows(no_zero_target, env.target_db, "zero_full", "id", ["id", "da", "note"])
    assert rows[:2] == [("1", "2024-05-06", _hex("clean")), ("2", None, _hex("all zero"))]
