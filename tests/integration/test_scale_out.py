"""Scale-out: three daemon processes share 30 tables through GET_LOCK leases on the target."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from conftest import ROOT, SyncEnv
from table_checks import table_fingerprint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLES = [f"t{i:02d}" for i in range(30)]
INTERVAL = 3


class Replica:
    """One daemon subprocess and its collected log lines."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "source" / "db_pipeline.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def connection_id(self) -> int | None:
        for line in self.lines:
            match = re.search(r"LEASE - REPLICA - slot \d+, lease connection id (\d+)", line)
            if match:
                return int(match.group(1))
        return None

    def check_syncs_within_leases(self) -> set[str]:
        """Every table this replica synced was leased by it at that moment (per its own log order)."""
        held: set[str] = set()
        synced: set[str] = set()
        for line in list(self.lines):
            if m := re.search(r"LEASE - ACQUIRE - (\w+)", line):
                held.add(m.group(1))
            elif m := re.search(r"LEASE - RELEASE - (\w+)", line):
                held.discard(m.group(1))
            elif m := re.search(r"TABLE_SYNC - (t\d\d): ", line):
                assert m.group(1) in held, f"{self.name} synced {m.group(1)} without its lease"
                synced.add(m.group(1))
        return synced

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def lock_holders(env: SyncEnv) -> dict[str, Any]:
    names = ", ".join(f"IS_USED_LOCK('dlt_sync:{env.target_db}:table:{t}')" for t in TABLES)
    row = env.target.query(f"SELECT {names}")[0]
    return dict(zip(TABLES, row, strict=True))


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def all_identical(env: SyncEnv) -> bool:
    existing = {r[0] for r in env.tgt_query("SHOW TABLES")}
    if not set(TABLES) <= existing:
        return False
    return all(
        table_fingerprint(env.source, env.source_db, t) == table_fingerprint(env.target, env.target_db, t)
        for t in TABLES
    )


def test_three_replicas_share_thirty_tables_and_take_over(sync_env: SyncEnv) -> None:
    for table in TABLES:
        sync_env.src(
            f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20), updated_at DATETIME(6) NOT NULL, KEY (updated_at))"
        )
        sync_env.src(f"INSERT INTO {table} SELECT seq, CONCAT('v', seq), '2024-01-01' FROM seq_1_to_50")
    sync_env.write_tables([{"table": t, "primary_key": "id", "modifier": "updated_at"} for t in TABLES])
    replicas = []
    for i in range(3):
        env = {**os.environ, **sync_env.environ(LEASE_ENABLED="true", INTERVAL=str(INTERVAL), BATCH_DELAY="0")}
        replicas.append(Replica(env, f"replica{i}"))
    try:
        assert wait_for(lambda: all(r.connection_id() for r in replicas), 30)
        ids = {r.connection_id(): r for r in replicas}

        def balanced() -> bool:
            holders = lock_holders(sync_env)
            counts = [sum(1 for h in holders.values() if h == cid) for cid in ids]
            return all(h in ids for h in holders.values()) and max(counts) - min(counts) <= 1

        assert wait_for(balanced, 45), lock_holders(sync_env)
        assert wait_for(lambda: all_identical(sync_env), 45)
        for replica in replicas:
            replica.check_syncs_within_leases()

        victim = replicas[0]
        victim_tables = [t for t, h in lock_holders(sync_env).items() if h == victim.connection_id()]
        assert victim_tables
        victim.proc.kill()
        killed_at = time.monotonic()
        survivors = {r.connection_id() for r in replicas[1:]}
        assert wait_for(lambda: all(h in survivors for h in lock_holders(sync_env).values()), 2 * INTERVAL + 10)
        takeover = time.monotonic() - killed_at
        assert takeover < INTERVAL + 8, takeover
        for table in victim_tables:
            sync_env.src(f"UPDATE {table} SET v = 'after kill', updated_at = NOW(6) WHERE id <= 5")
        assert wait_for(lambda: all_identical(sync_env), 30)
        taken = set().union(*(r.check_syncs_within_leases() for r in replicas[1:]))
        assert set(victim_tables) <= taken
    finally:
        for replica in replicas:
            replica.stop()
