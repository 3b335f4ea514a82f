"""TRANSACTION_TIMEOUT and MAX_CONCURRENT_TRANSACTIONS are enforced."""

from __future__ import annotations

import re
import threading
import time

import pytest
from fault_helpers import lock_waits, row_locks_held, run_daemon, start_daemon, wait_for
from test_faults import identical, small_tables

from conftest import SyncEnv
from dlt_db_sync.config import settings as config
from dlt_db_sync.database.engines import create_engines

pytestmark = pytest.mark.integration


def test_transaction_timeout_interrupts_a_blocked_load_which_is_retried(sync_env: SyncEnv) -> None:
    """A load statement blocked longer than TRANSACTION_TIMEOUT is cut off (max_statement_time) and retried."""
    sync_env.write_tables(small_tables(sync_env, 1, rows=500))
    env = sync_env.environ(
        TRANSACTION_TIMEOUT=1,
        LOCK_WAIT_TIMEOUT=30,
        LOCK_TIMEOUT_BASE_DELAY=0.3,
        LOCK_TIMEOUT_MAX_DELAY=1,
        LOCK_TIMEOUT_RETRIES=10,
    )
    assert run_daemon(env, "--once", cwd=sync_env.workdir).returncode == 0
    sync_env.src("UPDATE t0 SET v = CONCAT(v, '?'), updated_at = updated_at + INTERVAL 1 DAY WHERE id <= 50")
    with row_locks_held(sync_env.target, sync_env.target_db, "SELECT * FROM t0 WHERE id <= 50 FOR UPDATE") as locker:
        daemon = start_daemon(env, "--once", cwd=sync_env.workdir)
        # Released 4 s after the daemon is seen blocked (a slow start under load must not release it first).
        wait_for(lambda: lock_waits(sync_env.target), 60, "the daemon to wait for the locked rows")
        started = time.monotonic()
        release = threading.Timer(4.0, locker.commit)
        release.start()
        out, _ = daemon.communicate(timeout=120)
        release.join()
    assert daemon.returncode == 0, out
    # Each attempt ended after about 1 s (not the 30 s lock wait) with MariaDB's statement-time error.
    assert re.search(r"RETRY - loading \d+ rows into t0 failed .*MySQL error 1969", out), out
    assert time.monotonic() - started < 25
    identical(sync_env, "t0")


def test_write_slots_bound_concurrent_transactions(sync_env: SyncEnv) -> None:
    settings = config.load_settings(sync_env.environ(MAX_CONCURRENT_TRANSACTIONS=2), dotenv_path=None)
    engines = create_engines(settings)
    stop = threading.Event()
    active = 0
    peak = 0
    lock = threading.Lock()

    def writer() -> None:
        nonlocal active, peak
        with engines.write_slot(stop):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.2)
            with lock:
                active -= 1

    try:
        threads = [threading.Thread(target=writer) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        engines.dispose()
    assert peak == 2
