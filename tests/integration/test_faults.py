"""Fault tests on real servers: each fault is injected while the daemon runs, and each test ends
with the target identical to the source (row count + all-column checksum).

The daemon runs as a subprocess (``db_pipeline.py``), so exit codes, signals and timeouts are
the real ones; faults come from the test: ``kill -9`` of a dedicated target server, a TCP proxy
that cuts connections, sessions holding row locks, a tiny pool, SIGTERM, an unusable staging
directory and unreachable hosts.
"""

from __future__ import annotations

import re
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from fault_helpers import (
    assert_identical,
    create_big_table,
    lock_waits,
    row_locks_held,
    run_daemon,
    start_daemon,
    wait_for,
)

from conftest import ServerFactory, SyncEnv
from mariadb_server import MariaDBServer, free_port
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

BIG_ROWS = 300_000
BIG = {"table": "big", "primary_key": "id", "modifier": "updated_at"}


def identical(env: SyncEnv, table: str, target: MariaDBServer | None = None, target_db: str | None = None) -> int:
    return assert_identical(env.source, env.source_db, target or env.target, target_db or env.target_db, table)


def target_count(server: MariaDBServer, db: str, table: str) -> int:
    """Rows committed in the target table (0 while it does not exist or the server is down)."""
    try:
        return int(server.scalar(f"SELECT COUNT(*) FROM `{table}`", db) or 0)
    except pymysql.err.MySQLError:
        return 0


def loading_count(server: MariaDBServer, db: str, table: str) -> int:
    """Rows committed by a first load so far: it loads into ``<table>__dlt_load`` (swapped in when
    complete, see schema_management.deferred_indexes) while the new table stays empty."""
    return target_count(server, db, table) + target_count(server, db, f"{table}__dlt_load")


def small_tables(env: SyncEnv, count: int, rows: int = 200) -> list[dict[str, Any]]:
    entries = []
    for i in range(count):
        env.src(
            f"CREATE TABLE t{i} (id INT PRIMARY KEY, v VARCHAR(20), updated_at DATETIME NOT NULL, KEY (updated_at));"
            f"INSERT INTO t{i} SELECT seq, CONCAT('v', seq), '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows}"
        )
        entries.append({"table": f"t{i}", "primary_key": "id", "modifier": "updated_at"})
    return entries


# ----------------------------------------------------------------------------- server crash


@pytest.fixture
def crash_target(server_factory: ServerFactory) -> Iterator[MariaDBServer]:
    """A target server of this test's own, free to be killed and restarted."""
    server = server_factory.start("crash-target")
    yield server
    server.destroy()


@pytest.mark.slow
def test_kill9_target_mid_load_then_converge(sync_env: SyncEnv, crash_target: MariaDBServer) -> None:
    create_big_table(sync_env.source, sync_env.source_db, "big", BIG_ROWS)
    crash_target.execute("CREATE DATABASE crashdb")
    sync_env.write_tables([BIG])
    env = sync_env.environ(
        TARGET_DB_PORT=crash_target.port, TARGET_DB_NAME="crashdb", CHUNK_SIZE=20000, TARGET_DB_CONNECT_TIMEOUT=2
    )
    daemon = start_daemon(env, "--once", cwd=sync_env.workdir)
    try:
        loaded = wait_for(lambda: loading_count(crash_target, "crashdb", "big"), 60, "the first chunks to commit", 0.02)
        crash_target.kill()
        assert loaded < BIG_ROWS, "the load finished before the crash; make the table bigger"
        time.sleep(1.0)
        crash_target.start()
        out, _ = daemon.communicate(timeout=180)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode in (0, 1), out  # retried to success, or failed cleanly
    assert "Traceback" not in out
    assert re.search(r"MySQL error (2013|2006|2003)", out), out
    assert "CONNECTION_POOL - RECOVERY - rebuilding the target connection pool" in out
    second = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert second.returncode == 0, second.stdout
    assert identical(sync_env, "big", crash_target, "crashdb") == BIG_ROWS
    assert crash_target.query("SELECT pending FROM _dlt_sync_state WHERE table_name = 'big'", "crashdb") == [(0,)]


# ----------------------------------------------------------------------------- network


@pytest.mark.slow
def test_proxy_cuts_source_connections_mid_transfer(sync_env: SyncEnv) -> None:
    """pyarrow reads through our pool, hence through the proxy. (connectorx's MySQL client
    re-connects to a local server over its Unix socket, bypassing any TCP proxy.)"""
    rows = 150_000
    create_big_table(sync_env.source, sync_env.source_db, "big", rows)
    sync_env.write_tables([BIG])
    with TcpProxy(sync_env.source.host, sync_env.source.port) as proxy:
        env = sync_env.environ(SOURCE_DB_PORT=proxy.port, EXTRACT_BACKEND="pyarrow", CHUNK_SIZE=20000)
        proxy.cut_after(4_000_000)  # well inside the ~15 MB transfer
        result = run_daemon(env, "--once", cwd=sync_env.workdir)
        assert proxy.cuts >= 1, (proxy.bytes_down, proxy.connections, result.stdout)
    assert result.returncode == 0, result.stdout
    assert re.search(r"RETRY - syncing big failed .*MySQL error 2013", result.stdout), result.stdout
    assert identical(sync_env, "big") == rows


def test_unreachable_source_fails_within_seconds(sync_env: SyncEnv) -> None:
    sync_env.write_tables(small_tables(sync_env, 1))
    started = time.monotonic()
    result = run_daemon(sync_env.environ(SOURCE_DB_PORT=free_port()), "--once", cwd=sync_env.workdir, timeout=60)
    assert time.monotonic() - started < 15
    assert result.returncode == 1, result.stdout
    assert f"cannot connect to the source database {sync_env.source.user}@{sync_env.source.host}:" in result.stdout
    assert "MySQL error 2003" in result.stdout


def test_silent_host_fails_within_the_connect_timeout(sync_env: SyncEnv) -> None:
    """A host that accepts TCP but never greets (hung server, dead proxy) must not block for READ_TIMEOUT."""
    sync_env.write_tables(small_tables(sync_env, 1))
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:  # listens, never accepts
        env = sync_env.environ(TARGET_DB_PORT=silent.getsockname()[1], TARGET_DB_CONNECT_TIMEOUT=2)
        started = time.monotonic()
        result = run_daemon(env, "--once", cwd=sync_env.workdir, timeout=120)
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout
    assert elapsed < 15, f"took {elapsed:.0f}s"
    assert "cannot connect to the target database" in result.stdout


# ----------------------------------------------------------------------------- locks


def test_locked_rows_are_retried_until_released(sync_env: SyncEnv) -> None:
    entries = small_tables(sync_env, 1, rows=1000)
    sync_env.write_tables(entries)
    env = sync_env.environ(
        LOCK_WAIT_TIMEOUT=1, LOCK_TIMEOUT_BASE_DELAY=0.3, LOCK_TIMEOUT_MAX_DELAY=1, LOCK_TIMEOUT_RETRIES=8
    )
    assert run_daemon(env, "--once", cwd=sync_env.workdir).returncode == 0
    sync_env.src("UPDATE t0 SET v = CONCAT(v, '!'), updated_at = updated_at + INTERVAL 1 DAY WHERE id <= 100")
    with row_locks_held(sync_env.target, sync_env.target_db, "SELECT * FROM t0 WHERE id <= 100 FOR UPDATE") as locker:
        daemon = start_daemon(env, "--once", cwd=sync_env.workdir)
        wait_for(lambda: lock_waits(sync_env.target), 60, "the daemon to wait for the locked rows")
        blocked = time.monotonic()
        release = threading.Timer(3.0, locker.commit)  # several lock wait timeouts (1 s each) later
        release.start()
        out, _ = daemon.communicate(timeout=120)
        release.join()
    assert daemon.returncode == 0, out
    assert len(re.findall(r"RETRY - loading \d+ rows into t0 failed .*MySQL error 1205", out)) >= 2, out
    assert time.monotonic() - blocked >= 3.0
    identical(sync_env, "t0")


def test_deadlock_victim_is_retried(sync_env: SyncEnv) -> None:
    """Provoke a real 1213: the daemon holds rows 1..49 and waits for row 50; the other session,
    which has changed many more rows (so InnoDB picks the daemon as the victim), then asks for row 1."""
    entries = small_tables(sync_env, 1, rows=50)
    sync_env.write_tables(entries)
    env = sync_env.environ(
        LOCK_WAIT_TIMEOUT=30, LOCK_TIMEOUT_BASE_DELAY=0.3, LOCK_TIMEOUT_MAX_DELAY=1, LOCK_TIMEOUT_RETRIES=5
    )
    assert run_daemon(env, "--once", cwd=sync_env.workdir).returncode == 0
    sync_env.tgt("CREATE TABLE heavy (id INT PRIMARY KEY, v INT); INSERT INTO heavy SELECT seq, 0 FROM seq_1_to_20000")
    sync_env.src("UPDATE t0 SET v = CONCAT(v, '!'), updated_at = updated_at + INTERVAL 1 DAY")
    other = sync_env.target.connect(sync_env.target_db)
    try:
        with other.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE heavy SET v = v + 1")
            cur.execute("SELECT id FROM t0 WHERE id = 50 FOR UPDATE")
            daemon = start_daemon(env, "--once", cwd=sync_env.workdir)
            wait_for(lambda: lock_waits(sync_env.target), 60, "the daemon to wait for row 50")
            cur.execute("SELECT id FROM t0 WHERE id = 1 FOR UPDATE")  # closes the cycle: the daemon is the victim
        other.commit()
        out, _ = daemon.communicate(timeout=120)
    finally:
        other.close()
    assert daemon.returncode == 0, out
    assert re.search(r"RETRY - loading \d+ rows into t0 failed .*MySQL error 1213", out), out
    identical(sync_env, "t0")


# ----------------------------------------------------------------------------- pool


def test_pool_exhaustion_queues_instead_of_failing(sync_env: SyncEnv) -> None:
    sync_env.write_tables(small_tables(sync_env, 10))
    env = sync_env.environ(POOL_SIZE=1, MAX_OVERFLOW=0, POOL_TIMEOUT=2, EXTRACT_BACKEND="pyarrow")
    result = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert result.returncode == 0, result.stdout
    assert "10 table(s) synced, 0 failed" in result.stdout
    assert "allowing 1 overflow connection(s)" in result.stdout  # the floor of one table's two connections
    for i in range(10):
        identical(sync_env, f"t{i}")


# ----------------------------------------------------------------------------- shutdown


@pytest.mark.slow
def test_sigterm_mid_load_exits_0_and_next_run_converges(sync_env: SyncEnv) -> None:
    create_big_table(sync_env.source, sync_env.source_db, "big", BIG_ROWS)
    sync_env.write_tables([BIG])
    env = sync_env.environ(CHUNK_SIZE=10000, INTERVAL=3600)
    daemon = start_daemon(env, cwd=sync_env.workdir)  # the daemon loop, not --once
    try:
        wait_for(lambda: loading_count(sync_env.target, sync_env.target_db, "big"), 60, "the load to start", 0.02)
        daemon.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        out, _ = daemon.communicate(timeout=30)
        assert time.monotonic() - signalled < 30
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, out
    assert "SHUTDOWN" in out
    assert "Traceback" not in out
    partial = loading_count(sync_env.target, sync_env.target_db, "big")
    assert partial < BIG_ROWS, "the load was not interrupted at a chunk boundary"
    result = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert result.returncode == 0, result.stdout
    assert identical(sync_env, "big") == BIG_ROWS


# ----------------------------------------------------------------------------- staging


def _limit_file_size() -> None:
    """In the child: files may not grow past 1 MB (EFBIG instead of SIGXFSZ), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


@pytest.mark.parametrize("fault", ["not-writable", "full"])
def test_unusable_staging_directory_fails_that_table_only(sync_env: SyncEnv, fault: str) -> None:
    rows = 60_000
    create_big_table(sync_env.source, sync_env.source_db, "big", rows)
    entries = small_tables(sync_env, 1)
    sync_env.write_tables([{**BIG, "mode": "file_staging"}, *entries])
    if fault == "not-writable":
        blocker = sync_env.workdir / "a_file"
        blocker.write_text("not a directory")
        staging = blocker / "sub"  # tests run as root: chmod would not stop us, a file in the path does
        result = run_daemon(sync_env.environ(FILE_STAGING_DIR=staging), "--once", cwd=sync_env.workdir)
    else:
        staging = sync_env.workdir / "staging"
        proc = start_daemon(
            sync_env.environ(FILE_STAGING_DIR=staging), "--once", cwd=sync_env.workdir, preexec_fn=_limit_file_size
        )
        out, _ = proc.communicate(timeout=120)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    assert result.returncode == 1, result.stdout
    failure = re.search(r"TABLE_SYNC - big failed: (.*)", result.stdout)
    assert failure, result.stdout
    message = failure.group(1)
    assert str(staging / "big") in message, message  # names the directory
    assert ("Not a directory" if fault == "not-writable" else "File too large") in message, message
    assert "1 table(s) synced, 1 failed" in result.stdout
    identical(sync_env, "t0")
    # Nothing half-applied: no row of the failed load, and its bound stays pending for the next run.
    assert target_count(sync_env.target, sync_env.target_db, "big") == 0
    assert sync_env.tgt_query("SELECT pending FROM _dlt_sync_state WHERE table_name = 'big'") == [(1,)]
    fixed = run_daemon(sync_env.environ(FILE_STAGING_DIR=sync_env.workdir / "staging2"), "--once", cwd=sync_env.workdir)
    assert fixed.returncode == 0, fixed.stdout
    assert identical(sync_env, "big") == rows


# ----------------------------------------------------------------------------- dlt state


def test_corrupt_state_causes_no_gap(sync_env: SyncEnv) -> None:
    """The watermark lives in the target (max(modifier) and _dlt_sync_state), never on local disk
    (no dlt working directory is read): a corrupt or dropped state table costs at most a re-read."""
    rows = 5000
    create_big_table(sync_env.source, sync_env.source_db, "big", rows)
    sync_env.write_tables([BIG])
    # The newer rows below are dated 2030/2031: a clock skew allowance past them keeps the watermark
    # on them (otherwise, rightly, it is capped by the source clock and the window re-reads them).
    env = sync_env.environ(LOOKBACK_SECONDS=0, MAX_CLOCK_SKEW_SECONDS=20 * 365 * 86400)
    first = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert first.returncode == 0, first.stdout
    assert f"big: incremental, {rows} rows" in first.stdout
    # The five newest rows change (the newest one carries the old watermark).
    sync_env.src(
        f"UPDATE big SET name = CONCAT(name, '*'), updated_at = '2030-01-01' + INTERVAL id SECOND WHERE id > {rows - 5}"
    )
    second = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert second.returncode == 0, second.stdout
    assert "big: incremental, 5 rows" in second.stdout, second.stdout
    assert identical(sync_env, "big") == rows
    # The bookkeeping row itself corrupted: an unusable pending bound means "read it all again" (no gap) ...
    sync_env.tgt("UPDATE _dlt_sync_state SET pending = 1, pending_from = 'garbage!!' WHERE table_name = 'big'")
    sync_env.src("UPDATE big SET name = 'x', updated_at = '2031-01-01' WHERE id = 7")
    third = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert f"big: incremental, {rows} rows" in third.stdout, third.stdout
    assert identical(sync_env, "big") == rows
    # ... and a dropped bookkeeping table is recreated, the watermark coming from the target's rows.
    sync_env.tgt("DROP TABLE _dlt_sync_state")
    sync_env.src("UPDATE big SET name = 'y', updated_at = '2031-01-02' WHERE id = 8")
    fourth = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert "big: incremental, 2 rows" in fourth.stdout, fourth.stdout  # ids 7 (the old maximum) and 8
    assert identical(sync_env, "big") == rows
