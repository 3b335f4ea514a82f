"""TIMESTAMP values never shift (issue 4): the source server runs at +07:00, the target at -05:00 and
the process at Asia/Jakarta, yet every TIMESTAMP keeps its instant, every DATETIME its text, and an
incremental sync on a TIMESTAMP modifier reads exactly the lookback window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fidelity_helpers import assert_same_table, exact_rows, run_sync

from conftest import SyncEnv

pytestmark = pytest.mark.integration

EVENTS_DDL = """
CREATE TABLE events (
  id INT NOT NULL PRIMARY KEY,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  ts0 TIMESTAMP NULL DEFAULT NULL,
  ts3 TIMESTAMP(3) NULL DEFAULT NULL,
  dt6 DATETIME(6) NULL,
  dt0 DATETIME NULL,
  note VARCHAR(20) NULL,
  KEY updated_idx (updated_at)
) ENGINE=InnoDB
"""
# Written in the source server's own time zone (+07:00): instants are the text minus 7 hours.
FIRST_ROWS = [
    (
        1,
        "2024-01-01 00:00:00.000001",
        "1970-01-01 07:00:01",
        "2038-01-19 10:14:07.999",
        "1000-01-01 00:00:00",
        "9999-12-31 23:59:59",
        "epoch edges",
    ),
    (
        2,
        "2024-01-01 06:59:59.999999",
        "2024-03-31 02:30:00",
        "2024-10-27 02:30:00.5",
        "2024-03-31 02:30:00.123456",
        "2024-10-27 02:30:00",
        "eu dst gaps",
    ),
    (3, "2024-01-01 07:00:00", "2024-03-10 02:30:00", None, "0000-00-00 00:00:00", None, "us dst gap"),
    (4, "2024-01-01 12:00:00", None, "0000-00-00 00:00:00", None, "2024-01-01 07:00:00", "zero ts"),
    (
        5,
        "2024-01-01 23:59:59.5",
        "2000-02-29 23:00:00",
        "2000-03-01 00:00:00.001",
        "2000-02-29 23:00:00.999999",
        "2000-03-01 00:00:00",
        "leap day",
    ),
]
COLUMNS = ["id", "updated_at", "ts0", "ts3", "dt6", "dt0", "note"]


@pytest.fixture
def jakarta(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process runs in Asia/Jakarta (+07:00), as in the container."""
    monkeypatch.setenv("TZ", "Asia/Jakarta")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _upsert(env: SyncEnv, rows: list[tuple[object, ...]]) -> None:
    placeholders = ", ".join(["%s"] * len(COLUMNS))
    updates = ", ".join(f"{c} = VALUES({c})" for c in COLUMNS[1:])
    conn = env.source.connect(env.source_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = ''")  # zero TIMESTAMP/DATETIME values
            assert cur.execute("SELECT @@session.time_zone") and cur.fetchone()[0] == "+07:00"
            cur.executemany(
                f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({placeholders}) ON DUPLICATE KEY UPDATE {updates}",
                rows,
            )
    finally:
        conn.close()


def _source_max_utc(env: SyncEnv) -> str:
    return env.source.scalar(
        "SELECT CAST(CONVERT_TZ(MAX(updated_at), @@session.time_zone, '+00:00') AS CHAR) FROM events", env.source_db
    )


@pytest.mark.parametrize("mode", ["direct", "file_staging"])
def test_timestamps_keep_their_instant_across_time_zones(sync_env: SyncEnv, jakarta: None, mode: str) -> None:
    env = sync_env
    assert env.source.scalar("SELECT @@global.time_zone") == "+07:00"
    assert env.target.scalar("SELECT @@global.time_zone") == "-05:00"
    env.src(EVENTS_DDL)
    _upsert(env, FIRST_ROWS)
    tables = [{"table": "events", "primary_key": "id", "modifier": "updated_at"}]

    first = run_sync(env, tables, PIPELINE_MODE=mode, LOOKBACK_SECONDS="300")
    result = first.result("events")
    assert result.ok, result.error
    assert result.backend == "pyarrow"  # a TIMESTAMP modifier filter must run in the pinned session
    assert result.rows == len(FIRST_ROWS)
    # UNIX_TIMESTAMP() for TIMESTAMP, the text for DATETIME: identical whatever the servers' zones.
    assert_same_table(env, "events", "id")
    assert exact_rows(env.target, env.target_db, "events", "id", ["dt6"])[2] == ("0000-00-00 00:00:00.000000",)
    assert result.watermark == _source_max_utc(env) == "2024-01-01 16:59:59.500000"

    # The target max is 2024-01-01 23:59:59.5 at +07:00; the lookback window starts 300 s earlier.
    _upsert(
        env,
        [
            (6, "2024-01-02 01:00:00", "2024-01-02 01:00:00", None, "2024-01-02 01:00:00", None, "newer"),
            (7, "2024-01-01 23:59:00", "1999-12-31 23:59:59", None, None, None, "late, in window"),
            (
                2,
                "2024-01-02 02:00:00",
                "2024-01-02 02:00:00",
                "2024-01-02 02:00:00.25",
                "2024-01-02 02:00:00",
                None,
                "updated",
            ),
            (8, "2024-01-01 22:00:00", None, None, None, None, "late, too old"),
        ],
    )
    second = run_sync(env, tables, PIPELINE_MODE=mode, LOOKBACK_SECONDS="300")
    result = second.result("events")
    assert result.ok, result.error
    # Exactly the window: rows 6, 7, 2 and the previous maximum (row 5). A bound shifted by a
    # time zone would read 7 hours more (row 8 too) or miss rows 7 and 5.
    assert result.rows == 4
    assert env.target.scalar(f"SELECT COUNT(*) FROM `{env.target_db}`.events WHERE id = 8") == 0
    assert result.watermark == _source_max_utc(env) == "2024-01-01 19:00:00.000000"
    env.src("DELETE FROM events WHERE id = 8")
    assert_same_table(env, "events", "id")
