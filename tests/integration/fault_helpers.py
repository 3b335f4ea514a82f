"""Helpers shared by the fault, bad-input and security tests: run the daemon as a real
subprocess (so exit codes and signals are real), build large tables quickly, and compare a
source table with its target copy by row count and an all-column checksum.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mariadb_server import MariaDBServer

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ROOT / "source" / "db_pipeline.py"
PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def daemon_environ(env: dict[str, str]) -> dict[str, str]:
    """A clean process environment: only ``env`` plus what Python needs to start."""
    base = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    base.update({"PYTHONUNBUFFERED": "1", "DLT_TELEMETRY": "false", "RUNTIME__DLTHUB_TELEMETRY": "false"})
    base.update(env)
    return base


def start_daemon(env: dict[str, str], *args: str, cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    """Start ``db_pipeline.py`` with ``args``; stdout and stderr are merged into one text pipe."""
    return subprocess.Popen(
        [sys.executable, str(DAEMON), *args],
        env=daemon_environ(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_daemon(env: dict[str, str], *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``db_pipeline.py`` to completion; ``.stdout`` holds stdout and stderr together."""
    proc = start_daemon(env, *args, cwd=cwd)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


@contextmanager
def row_locks_held(server: MariaDBServer, db: str, select_for_update: str) -> Iterator[Any]:
    """A session that holds the row locks of ``select_for_update`` (as a long report would);
    yields the connection so the test can ``commit()`` to release them."""
    locker = server.connect(db)
    try:
        with locker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(select_for_update)
        yield locker
    finally:
        locker.close()


def create_big_table(server: MariaDBServer, db: str, table: str, rows: int) -> None:
    """A table of ``rows`` rows (id, text, decimal, datetime, modifier) built server-side."""
    server.execute(
        f"CREATE TABLE `{table}` (id INT PRIMARY KEY, name VARCHAR(60) NOT NULL, amount DECIMAL(12,2), "
        "born DATETIME NULL, note TEXT NULL, updated_at DATETIME(6) NOT NULL, KEY (updated_at)) ENGINE=InnoDB;"
        f"INSERT INTO `{table}` SELECT seq, CONCAT('name-', seq, '-', MD5(seq)), seq * 1.25, "
        "'2020-01-01' + INTERVAL seq MINUTE, IF(seq % 7 = 0, NULL, REPEAT('x', seq % 50)), "
        f"'2021-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows}",
        db,
    )


def column_names(server: MariaDBServer, db: str, table: str) -> list[str]:
    rows = server.query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "ORDER BY ORDINAL_POSITION",
        None,
        (db, table),
    )
    return [r[0] for r in rows]


def table_digest(server: MariaDBServer, db: str, table: str, columns: list[str]) -> tuple[int, int, int]:
    """(row count, distinct key-independent checksum over every column, sum of per-row CRCs).

    NULL is encoded distinctly from the empty string so a NULL/'' swap is caught.
    """
    parts = ", ".join(f"IFNULL(HEX(`{c}`), '\\\\N')" for c in columns)
    row = server.query(
        f"SELECT COUNT(*), COALESCE(BIT_XOR(CRC32(CONCAT_WS('|', {parts}))), 0), "
        f"COALESCE(SUM(CRC32(CONCAT_WS('|', {parts}))), 0) FROM `{table}`",
        db,
    )[0]
    return int(row[0]), int(row[1]), int(row[2])


def assert_identical(source: MariaDBServer, source_db: str, target: MariaDBServer, target_db: str, table: str) -> int:
    """Assert the target copy equals the source table (count + all-column checksum); returns rows."""
    columns = column_names(source, source_db, table)
    expected = table_digest(source, source_db, table, columns)
    actual = table_digest(target, target_db, table, columns)
    assert actual == expected, f"{table}: target {actual} != source {expected}"
    return expected[0]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lock_waits(server: MariaDBServer) -> int:
    """Sessions currently blocked on a row lock on ``server``.

    INNODB_TRX's ``LOCK WAIT`` state is refreshed lazily and was missed under load, so a write
    statement of the daemon that has run for a while (it can only be waiting) counts too.
    """
    trx = server.scalar("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")
    writes = server.scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' AND TIME_MS > 200 "
        "AND (INFO LIKE 'INSERT INTO `t0`%' OR INFO LIKE 'LOAD DATA%')"
    )
    return int(trx or 0) + int(writes or 0)
