"""Chunked verification on real servers: delete propagation for every kind of key, silent updates
found by ``--verify`` and repaired by ``--verify --repair``, empty tables on either side, a
million identical rows, a source user with only SELECT, and the full-refresh decision."""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import SyncEnv
from table_checks import assert_identical

pytestmark = pytest.mark.integration

OLD = "2024-01-01 00:00:00"


class FakeMetrics:
    """Records what the syncer reports (the real Metrics is tested with monitoring)."""

    def __init__(self) -> None:
        self.deleted: dict[str, int] = {}
        self.found: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    def rows_deleted(self, table: str, n: int) -> None:
        self.deleted[table] = self.deleted.get(table, 0) + n

    def differences(self, table: str, n: int) -> None:
        self.found[table] = self.found.get(table, 0) + n

    def delete_refused(self, table: str) -> None:
        self.refused[table] = self.refused.get(table, 0) + 1

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # observe_table, observe_batch, ...


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buckets of 10 rows, 5 per statement, 4 key groups, gaps re-cut above 50 rows: small tables
    take every path of a large one."""
    from dlt_db_sync.verification import chunk_compare

    monkeypatch.setattr(chunk_compare, "BUCKET_ROWS", 10)
    monkeypatch.setattr(chunk_compare, "MAX_BUCKETS_PER_QUERY", 5)
    monkeypatch.setattr(chunk_compare, "GROUPS", 4)
    monkeypatch.setattr(chunk_compare, "MAX_GROUPED_ROWS", 50)


class Syncer:
    """A TableSyncer on ``env`` with a status object and recording metrics."""

    def __init__(self, env: SyncEnv, specs: list[Any], **overrides: Any) -> None:
        from dlt_db_sync.config.settings import load_settings
        from dlt_db_sync.database.engines import create_engines
        from dlt_db_sync.monitoring.run_state import SyncStatus
        from dlt_db_sync.pipeline_management.syncer import TableSyncer

        self.settings = load_settings(env.environ(**overrides), dotenv_path=None)
        self.engines = create_engines(self.settings)
        self.status = SyncStatus()
        self.status.register_tables(specs)
        self.metrics = FakeMetrics()
        self.syncer = TableSyncer(self.engines, self.settings, self.status, threading.Event(), self.metrics)
        self.syncer.prepare()

    def sync(self, spec: Any) -> Any:
        result = self.syncer.sync_table(spec)
        assert result.ok, result.error
        return result

    def table_status(self, table: str) -> Any:
        return self.status.snapshot()["tables"][table]

    def close(self) -> None:
        self.engines.dispose()


@pytest.fixture
def make_syncer(sync_env: SyncEnv) -> Iterator[Any]:
    made: list[Syncer] = []

    def make(specs: list[Any], **overrides: Any) -> Syncer:
        made.append(Syncer(sync_env, specs, **overrides))
        return made[-1]

    yield make
    for syncer in made:
        syncer.close()


def run_main(
    env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, **overrides: Any
) -> tuple[int, str]:
    """``db_pipeline.main(args)`` in-process with ``env``'s environment; (exit code, stdout)."""
    from db_pipeline import main

    for key, value in env.environ(**overrides).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def report_line(out: str, table: str, after_repair: bool = False) -> dict[str, int]:
    """The counts of ``table``'s line in ``--verify`` output."""
    lines = [line for line in out.splitlines() if line.startswith(table + " ") and "repaired:" not in line]
    lines = [line for line in lines if ("after repair" in line) == after_repair]
    assert lines, out
    fields = re.split(r"\s+", lines[-1].strip())
    names = ["source_rows", "target_rows", "chunks", "differing_chunks", "missing", "extra", "changed"]
    return dict(zip(names, (int(v) for v in fields[1:8]), strict=True))


def keys_of(env: SyncEnv, table: str, key: str) -> tuple[list[Any], list[Any]]:
    sql = f"SELECT {key} FROM `{table}` ORDER BY {key}"
    return env.src_query(sql), env.tgt_query(sql)


# --------------------------------------------------------------------------- delete propagation
KEY_CASES = {
    "int": ("id INT NOT NULL PRIMARY KEY", "seq", "id", ["id"]),
    "composite": (
        "a INT NOT NULL, b VARCHAR(10) NOT NULL, PRIMARY KEY (b, a)",
        "seq DIV 10, CONCAT('k', seq MOD 10)",
        "a, b",
        ["a", "b"],
    ),
    "string": ("code VARCHAR(40) NOT NULL PRIMARY KEY", "CONCAT('Kode-', seq, '-ü')", "code", ["code"]),
    "binary16": ("id BINARY(16) NOT NULL PRIMARY KEY", "UNHEX(MD5(seq))", "id", ["id"]),
}


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_deletes_propagated(sync_env: SyncEnv, make_syncer: Any, small_chunks: None, case: str) -> None:
    from dlt_db_sync.config.tables import TableSpec

    key_ddl, key_values, key_list, key = KEY_CASES[case]
    key_names = key_list.split(", ")
    sync_env.src(
        f"CREATE TABLE t ({key_ddl}, n INT NOT NULL, v VARCHAR(20) NULL, updated_at DATETIME(6) NOT NULL, KEY (updated_at));"
        f"INSERT INTO t ({key_list}, n, v, updated_at) SELECT {key_values}, seq, CONCAT('v', seq), '{OLD}' "
        f"FROM seq_1_to_2000"
    )
    spec = TableSpec("t", tuple(key), modifier="updated_at", sync_strategy="incremental", deletes="reconcile")
    syncer = make_syncer([spec])
    assert syncer.sync(spec).details["rows_deleted"] == 0
    # Scattered rows, the first and the last, a whole block (several chunks); plus new rows.
    sync_env.src("DELETE FROM t WHERE n % 97 = 0 OR n IN (1, 2000) OR n BETWEEN 500 AND 799")
    deleted = 2000 - sync_env.src_query("SELECT COUNT(*) FROM t")[0][0]
    sync_env.src(
        f"INSERT INTO t ({key_list}, n, v, updated_at) SELECT {key_values}, seq, 'new', NOW(6) FROM seq_3001_to_3010"
    )
    result = syncer.sync(spec)
    assert result.details["rows_deleted"] == deleted
    source_keys, target_keys = keys_of(sync_env, "t", ", ".join(f"`{k}`" for k in key_names))
    assert target_keys == source_keys
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "t")
    assert syncer.table_status("t").rows_deleted_total == deleted
    assert syncer.metrics.deleted == {"t": deleted}
    # Nothing left to delete: the next due run deletes nothing.
    assert syncer.sync(spec).details["rows_deleted"] == 0


def test_reconcile_every_n_cycles_and_ignore(sync_env: SyncEnv, make_syncer: Any) -> None:
    from dlt_db_sync.config.tables import TableSpec

    for table in ("every2", "kept"):
        sync_env.src(
            f"CREATE TABLE {table} (id INT PRIMARY KEY, updated_at DATETIME NOT NULL, KEY (updated_at));"
            f"INSERT INTO {table} SELECT seq, '{OLD}' FROM seq_1_to_100"
        )
    every2 = TableSpec("every2", ("id",), modifier="updated_at", deletes="reconcile", reconcile_every_cycles=2)
    kept = TableSpec("kept", ("id",), modifier="updated_at")  # deletes: ignore
    syncer = make_syncer([every2, kept])
    assert syncer.sync(every2).details["rows_deleted"] == 0  # the first sync is always due
    syncer.sync(kept)
    sync_env.src("DELETE FROM every2 WHERE id <= 10; DELETE FROM kept WHERE id <= 10")
    assert "rows_deleted" not in syncer.sync(every2).details  # 1 of 2 cycles
    assert syncer.sync(every2).details["rows_deleted"] == 10
    assert "rows_deleted" not in syncer.sync(kept).details
    assert sync_env.tgt_query("SELECT COUNT(*) FROM every2")[0][0] == 90
    assert sync_env.tgt_query("SELECT COUNT(*) FROM kept")[0][0] == 100  # never deleted


# --------------------------------------------------------------------------- --verify / --repair
ITEMS = f"""
CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, price DECIMAL(10,2) NULL, ratio FLOAT NULL,
  seen TIMESTAMP(3) NULL, raw VARBINARY(32) NULL, doc JSON NULL, flags BIT(4) NULL, latin VARCHAR(20) CHARACTER SET latin1 NULL,
  updated_at DATETIME(6) NOT NULL, KEY (updated_at));
INSERT INTO items SELECT seq, CONCAT('Artikel ', seq, ' 😀'), seq / 4, seq / 3, '2024-03-01 10:00:00' + INTERVAL seq SECOND,
  UNHEX(MD5(seq)), JSON_OBJECT('n', seq), seq % 16, 'Señor', '{OLD}' + INTERVAL seq MINUTE FROM seq_1_to_3000;
"""
SILENT_CHANGES = """
UPDATE items SET name = CONCAT(name, '!') WHERE id IN (5, 1500);
UPDATE items SET price = NULL WHERE id = 77;
UPDATE items SET ratio = ratio + 1 WHERE id = 2900;
UPDATE items SET seen = seen + INTERVAL 1 SECOND WHERE id = 1000;
UPDATE items SET raw = UNHEX('00') WHERE id = 1001;
UPDATE items SET flags = b'0001' WHERE id = 1002;
UPDATE items SET latin = 'Senor' WHERE id = 1003;
DELETE FROM items WHERE id IN (10, 11, 3000);
INSERT INTO items (id, name, updated_at) VALUES (5000, 'old insert', '2020-01-01'), (5001, 'old insert', '2020-01-01');
"""


def test_silent_updates_found_and_repaired(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], small_chunks: None
) -> None:
    sync_env.src(ITEMS)
    sync_env.write_tables([{"table": "items", "primary_key": "id", "modifier": "updated_at"}])
    assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 0
    code, out = run_main(sync_env, monkeypatch, capsys, "--verify")
    assert code == 0, out
    assert report_line(out, "items")["differing_chunks"] == 0
    sync_env.src(SILENT_CHANGES)
    assert run_main(sync_env, monkeypatch, capsys, "--once")[0] == 0  # the cursor sees none of it

    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "items")
    assert code == 1, out
    counts = report_line(out, "items")
    assert (counts["missing"], counts["extra"], counts["changed"]) == (2, 3, 8), out
    assert counts["source_rows"] == 2999 and counts["target_rows"] == 3000
    assert counts["chunks"] >= 20 and 1 <= counts["differing_chunks"] < counts["chunks"]

    code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair")
    assert code == 0, out
    assert "10 rows re-copied, 3 rows deleted" in out
    after = report_line(out, "items", after_repair=True)
    assert after["missing"] + after["extra"] + after["changed"] + after["differing_chunks"] == 0
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "items")
    assert run_main(sync_env, monkeypatch, capsys, "--verify")[0] == 0


def test_unknown_table_exits_2(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_env.src("CREATE TABLE a (id INT PRIMARY KEY)")
    sync_env.write_tables([{"table": "a", "primary_key": "id"}])
    from db_pipeline import main

    for key, value in sync_env.environ().items():
        monkeypatch.setenv(key, value)
    assert main(["--verify", "a", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def verify(env: SyncEnv, table: str, key: tuple[str, ...], repair: bool = False, **spec: Any) -> tuple[int, str]:
    from dlt_db_sync.config.settings import load_settings
    from dlt_db_sync.config.tables import TableSpec
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.verification.verify_command import run_verify

    settings = load_settings(env.environ(), dotenv_path=None)
    engines = create_engines(settings)
    out = io.StringIO()
    try:
        code = run_verify(engines, settings, [TableSpec(table, key, **spec)], [], repair, threading.Event(), out=out)
    finally:
        engines.dispose()
    return code, out.getvalue()


def test_verify_reports_column_definitions_that_differ_with_equal_values(sync_env: SyncEnv) -> None:
    """Equal values in a column of another type are a divergence --verify must not call identical
    (the fuzzer found it blind after a narrowing the sync refuses); --repair says it cannot fix it."""
    sync_env.src("CREATE TABLE drift (id INT PRIMARY KEY, v VARCHAR(10) NULL, n INT NOT NULL)")
    sync_env.tgt("CREATE TABLE drift (id INT PRIMARY KEY, v VARCHAR(40) NULL, n INT NULL)")
    for run in (sync_env.src, sync_env.tgt):
        run("INSERT INTO drift SELECT seq, CONCAT('r', seq), seq FROM seq_1_to_20")
    code, out = verify(sync_env, "drift", ("id",))
    assert code == 1, out
    assert report_line(out, "drift")["changed"] == 0
    assert "DIFFERENT (column definitions)" in out
    assert "v is varchar(40)" in out and "varchar(10)" in out and "n is int(11) in the target, int(11) NOT NULL" in out
    code, out = verify(sync_env, "drift", ("id",), repair=True)
    assert code == 1 and "by hand" in out, out  # the narrowing refusal of the sync, or the repair note
    sync_env.tgt("ALTER TABLE drift MODIFY v VARCHAR(10) NULL, MODIFY n INT NOT NULL")
    assert verify(sync_env, "drift", ("id",))[0] == 0


def test_empty_table_on_either_side(sync_env: SyncEnv) -> None:
    ddl = "CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(10) NULL)"
    rows = "INSERT INTO {t} SELECT seq, CONCAT('r', seq) FROM seq_1_to_50"
    for table in ("src_empty", "tgt_empty", "both_empty", "no_target"):
        sync_env.src(ddl.format(t=table))
        if table != "no_target":
            sync_env.tgt(ddl.format(t=table))
    sync_env.tgt(rows.format(t="src_empty"))
    sync_env.src(rows.format(t="tgt_empty"))
    sync_env.src(rows.format(t="no_target"))

    assert verify(sync_env, "both_empty", ("id",))[0] == 0
    code, out = verify(sync_env, "src_empty", ("id",))
    assert code == 1 and report_line(out, "src_empty")["extra"] == 50
    code, out = verify(sync_env, "tgt_empty", ("id",))
    assert code == 1 and report_line(out, "tgt_empty")["missing"] == 50
    code, out = verify(sync_env, "no_target", ("id",))
    assert code == 1 and "target table missing" in out and report_line(out, "no_target")["missing"] == 50

    # The mass-delete guard: an empty source empties the target only when the table allows it.
    code, out = verify(sync_env, "src_empty", ("id",), repair=True)
    assert code == 1 and "REFUSED" in out and "allow_empty_source" in out, out
    assert sync_env.tgt_query("SELECT COUNT(*) FROM src_empty")[0][0] == 50
    for table in ("src_empty", "tgt_empty", "no_target"):
        code, out = verify(sync_env, table, ("id",), repair=True, allow_empty_source=True)
        assert code == 0, out
        assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, table)
    assert sync_env.tgt_query("SELECT COUNT(*) FROM src_empty")[0][0] == 0


@pytest.mark.slow
def test_million_identical_rows(sync_env: SyncEnv) -> None:
    """1,000,000 rows equal in everything but the key: chunking by key keeps them apart."""
    ddl = (
        "CREATE TABLE big (id INT UNSIGNED NOT NULL PRIMARY KEY, a CHAR(10) NOT NULL DEFAULT 'same', "
        "b INT NOT NULL DEFAULT 7) ENGINE=InnoDB;"
        "INSERT INTO big (id) SELECT seq FROM seq_1_to_1000000"
    )
    threads = [threading.Thread(target=run, args=(ddl,)) for run in (sync_env.src, sync_env.tgt)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    code, out = verify(sync_env, "big", ("id",))
    assert code == 0, out
    counts = report_line(out, "big")
    assert counts["source_rows"] == counts["target_rows"] == 1_000_000 and counts["chunks"] >= 900
    # Two identical rows swapped for two identical others would cancel without the key in the hash;
    # 1002 and 1003 (one chunk) changed alike would cancel in a BIT_XOR of plain (linear) CRC32s.
    sync_env.src(
        "DELETE FROM big WHERE id IN (1, 500000); INSERT INTO big (id) VALUES (1000001), (1000002);"
        "UPDATE big SET b = 8 WHERE id IN (1002, 1003, 777777)"
    )
    code, out = verify(sync_env, "big", ("id",))
    counts = report_line(out, "big")
    assert code == 1 and (counts["missing"], counts["extra"], counts["changed"]) == (2, 2, 3), out
    code, out = verify(sync_env, "big", ("id",), repair=True)
    assert code == 0, out
    assert sync_env.tgt_query("SELECT COUNT(*), SUM(b = 8), MAX(id) FROM big")[0] == (1_000_000, 3, 1_000_002)


# --------------------------------------------------------------------------- read-only source
def test_verify_and_reconcile_with_select_only_source_user(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], small_chunks: None
) -> None:
    user = f"ro_{uuid.uuid4().hex[:8]}"
    sync_env.source.execute(
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw';"
        f"GRANT SELECT ON `{sync_env.source_db}`.* TO '{user}'@'127.0.0.1'"
    )
    try:
        sync_env.src(
            ITEMS + "CREATE TABLE pairs (a INT NOT NULL, b CHAR(3) NOT NULL, v INT NULL, PRIMARY KEY (a, b));"
            "INSERT INTO pairs SELECT seq DIV 4, ELT(seq MOD 4 + 1, 'w', 'x', 'y', 'z'), seq FROM seq_1_to_800"
        )
        sync_env.write_tables(
            [
                {"table": "items", "primary_key": "id", "modifier": "updated_at", "deletes": "reconcile"},
                {"table": "pairs", "primary_key": ["a", "b"]},
            ]
        )
        ro = {"SOURCE_DB_USER": user, "SOURCE_DB_PASS": "pw"}
        assert run_main(sync_env, monkeypatch, capsys, "--once", **ro)[0] == 0
        sync_env.src(SILENT_CHANGES + "UPDATE pairs SET v = -v WHERE a = 100")
        assert run_main(sync_env, monkeypatch, capsys, "--once", **ro)[0] == 0  # deletes 10, 11, 3000
        assert sync_env.tgt_query("SELECT COUNT(*) FROM items WHERE id IN (10, 11, 3000)")[0][0] == 0
        code, out = run_main(sync_env, monkeypatch, capsys, "--verify", **ro)
        assert code == 1 and report_line(out, "items")["changed"] == 8, out
        code, out = run_main(sync_env, monkeypatch, capsys, "--verify", "--repair", **ro)
        assert code == 0, out
        for table in ("items", "pairs"):
            assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, table)
    finally:
        sync_env.source.execute(f"DROP USER '{user}'@'127.0.0.1'")


# --------------------------------------------------------------------------- full refresh
def test_full_refresh_only_when_needed(sync_env: SyncEnv, make_syncer: Any, small_chunks: None) -> None:
    from dlt_db_sync.config.tables import TableSpec

    sync_env.src(
        "CREATE TABLE fr (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL, n INT NOT NULL);"
        "INSERT INTO fr SELECT seq, CONCAT('v', seq), seq FROM seq_1_to_3000"
    )
    spec = TableSpec("fr", ("id",))
    syncer = make_syncer([spec])
    assert syncer.sync(spec).rows == 3000  # empty target: loaded by the shadow swap
    result = syncer.sync(spec)
    assert result.skipped and result.details["refresh"] == "identical" and result.details["chunks"] >= 30

    sync_env.src("UPDATE fr SET v = 'changed' WHERE id = 1234; DELETE FROM fr WHERE id = 2345")
    result = syncer.sync(spec)
    assert result.details["refresh"] == "repaired", result.details
    assert (result.rows, result.details["rows_deleted"]) == (1, 1)
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "fr")
    table = syncer.table_status("fr")
    assert table.differences_found == 2 and table.last_verify is not None

    sync_env.src("UPDATE fr SET n = -n WHERE id % 50 = 0")  # 60 of 300 chunks differ
    result = syncer.sync(spec)
    assert result.details["refresh"] == "swap" and result.rows == 2999
    assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, "fr")


def test_range_predicates_use_the_key_index(sync_env: SyncEnv) -> None:
    """The expanded lexicographic ranges are index ranges, not full scans, for composite keys."""
    from dlt_db_sync.verification.chunk_compare import KeyRange, range_condition

    sync_env.src(
        "CREATE TABLE c3 (a INT NOT NULL, b VARCHAR(10) NOT NULL, c BINARY(16) NOT NULL, v INT, "
        "PRIMARY KEY (a, b, c));"
        "INSERT INTO c3 SELECT seq DIV 100, CONCAT('k', seq MOD 10), UNHEX(MD5(seq)), seq FROM seq_1_to_20000;"
        "ANALYZE TABLE c3"
    )
    rng = KeyRange((50, "k3", bytes(16)), (60, "k7", b"\xff" * 16))
    where, params = range_condition(["a", "b", "c"], rng)
    conn = sync_env.source.connect(sync_env.source_db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"EXPLAIN SELECT COUNT(*), SUM(v) FROM c3 WHERE {where}", params)
            plan = cur.fetchone()
    finally:
        conn.close()
    assert (plan[3], plan[5]) == ("range", "PRIMARY"), plan
