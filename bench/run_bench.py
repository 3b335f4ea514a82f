"""`make bench`: the sync daemon against mydumper + myloader, plain dlt and the raw ``SELECT`` -> ``LOAD DATA`` pipe.

Runs every scenario on two server profiles, one after the other, each on its own pair of
throwaway source and target MariaDB servers (``tests/mariadb_server.py``):

* ``tuned``: a 1 GB InnoDB buffer pool, a 512 MB redo log, ``innodb_flush_log_at_trx_commit=2``
  (the test servers' setting) and a 256 MB ``max_allowed_packet``;
* ``default``: MariaDB's own defaults (96 MB redo log, ``innodb_flush_log_at_trx_commit=1``, 16 MB
  ``max_allowed_packet``) except a 512 MB buffer pool -- an untuned reporting server.

It generates the data with SQL (``seq_1_to_N``) and writes ``bench/RESULTS.md``. Per profile:

* raw pipe: ``mariadb --batch --quick`` to a TSV file, then ``LOAD DATA LOCAL INFILE`` into an
  empty copy of the table (the speed limit of the two servers and the client machine);
* mydumper + myloader (Debian's ``mydumper`` package; a "not installed" row when missing): 2
  threads, 100,000-row files, the dump's and the load's process wall times added;
* plain dlt: ``sql_table`` -> ``sqlalchemy`` destination, default settings, ``replace``
  (``BENCH_SKIP_DLT_DEFAULT=1`` skips it on the default profile, ``--skip-dlt`` on both);
* the daemon (``bench_driver.py``, one process per configuration, driven cycle by cycle): full
  initial sync in ``file_staging`` and ``direct`` mode; the incremental cycle after one UPDATE of
  10,000 rows sharing one ``updated_at``, both modes; idle cycles over 50 small tables + orders.
* tuned only: the extraction backends, a CHUNK_SIZE variant and a 5x-rows full sync for peak RSS
  (``--skip-5m`` skips it); default only, opt-in: the scale check (``--scale-rows`` or
  ``BENCH_SCALE_ROWS``, e.g. 10,000,000) -- mydumper + myloader and the daemon in direct mode.

Peak RSS is the daemon process's kernel high-water mark (``ru_maxrss``) -- extraction,
staging, encoding and loading all run in that one process -- cross-checked by psutil polling.

    python bench/run_bench.py                 # the full run (~20 min on 2 cores)
    python bench/run_bench.py --rows 200000 --skip-5m --skip-dlt --profiles default   # a quick development run
    BENCH_SCALE_ROWS=10000000 python bench/run_bench.py --profiles default --only scale  # the scale check alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests"))

from mariadb_server import MariaDBServer, init_template  # noqa: E402
from orders_data import ORDERS_DATA, ORDERS_DDL  # noqa: E402
from table_checks import table_fingerprint  # noqa: E402


@dataclass(frozen=True)
class Profile:
    """One server configuration: arguments added to the test servers' own (``mariadb_server.py``)."""

    name: str
    args: tuple[str, ...]
    description: str


PROFILES = {
    "tuned": Profile(
        "tuned",
        ("--innodb-buffer-pool-size=1G", "--innodb-log-file-size=512M", "--max-allowed-packet=256M"),
        "1 GB buffer pool, 512 MB redo log, flush_log_at_trx_commit=2 (the test servers' setting)",
    ),
    "default": Profile(
        "default",
        # mariadb_server.py's own arguments set a 64 MB redo log and flush_log_at_trx_commit=2 for
        # fast tests: put MariaDB 10.11's defaults back (later arguments win).
        (
            "--innodb-buffer-pool-size=512M",
            "--innodb-log-file-size=96M",
            "--innodb-flush-log-at-trx-commit=1",
            "--max-allowed-packet=16M",
        ),
        "MariaDB defaults (96 MB redo log, flush_log_at_trx_commit=1, 16 MB max_allowed_packet) but a 512 MB buffer pool",
    ),
}
# Printed per profile, as each target server reports them.
SERVER_VARIABLES = (
    "innodb_buffer_pool_size",
    "innodb_log_file_size",
    "innodb_flush_log_at_trx_commit",
    "innodb_doublewrite",
    "innodb_flush_method",
    "innodb_io_capacity",
    "max_allowed_packet",
    "sync_binlog",
    "log_bin",
)
MYLOADER_THREADS = 2
MYDUMPER_FILE_ROWS = 100_000
SOURCE_DB = "bench_source"
SOURCE_5M_DB = "bench_source_5m"
SMALL_TABLES = 50
SHARED_UPDATED_AT = "2025-06-01 12:00:00.123456"
UPDATED_ROWS = 10_000
IDLE_CYCLES = 3
VARIANT_CHUNK_SIZE = 25_000

SMALL_DDL = """
CREATE TABLE small_{n:02d} (
  id INT NOT NULL PRIMARY KEY, name VARCHAR(60) NOT NULL, amount DECIMAL(10,2) NOT NULL,
  updated_at DATETIME(6) NOT NULL, KEY ix_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO small_{n:02d} SELECT seq, CONCAT('Zeile ', seq, ' ä'), seq * 1.5,
  '2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_200;
"""


def mydumper_version() -> str:
    """``mydumper x.y.z``, or that it is not installed."""
    if shutil.which("mydumper") is None or shutil.which("myloader") is None:
        return "mydumper not installed"
    out = subprocess.run(["mydumper", "--version"], capture_output=True, text=True, check=False).stdout
    return out.split(",")[0].strip() or "mydumper (unknown version)"


# --------------------------------------------------------------------------- measurements
@dataclass
class Measurement:
    """One scenario's figures."""

    name: str
    rows: int
    seconds: float
    peak_rss_mb: float | None = None
    polled_rss_mb: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Process wall time comparable to a command-line tool's (the daemon: start-up + cycle).
    wall: float | None = None

    @property
    def wall_seconds(self) -> float:
        return self.wall if self.wall is not None else self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class RssPoller:
    """Polls the resident set size of a process (and its children) in a background thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = self.process.memory_info().rss
                rss += sum(c.memory_info().rss for c in self.process.children(recursive=True))
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)

    def reset(self) -> None:
        self.peak = 0

    @property
    def peak_mb(self) -> float:
        return self.peak / 1e6  # MB = 10^6 bytes, as everywhere

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Driver:
    """A daemon process (``bench_driver.py``) that syncs one cycle per :meth:`cycle` call."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "bench_driver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            cwd=ROOT,
        )
        self.poller = RssPoller(self.proc.pid)
        started = time.monotonic()
        ready = self._read()
        self.startup_seconds = time.monotonic() - started  # interpreter start and imports
        if not ready.get("ready"):
            raise RuntimeError(f"bench driver did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"bench driver exited with {self.proc.returncode}; see {self.log.name}")
        return json.loads(line)

    def cycle(self) -> dict[str, Any]:
        """Run one sync cycle; its report plus the polled peak RSS during the cycle."""
        assert self.proc.stdin is not None
        self.poller.reset()
        self.proc.stdin.write("cycle\n")
        self.proc.stdin.flush()
        report = self._read()
        report["polled_rss_mb"] = self.poller.peak_mb
        failed = {t: r["error"] for t, r in report["tables"].items() if not r["ok"]}
        if failed:
            raise RuntimeError(f"sync failed: {failed}; see {self.log.name}")
        return report

    def close(self) -> None:
        self.poller.stop()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- the benchmark
class Bench:
    """Servers, data and scenarios of one benchmark run."""

    def __init__(self, args: argparse.Namespace, profile: Profile, workdir: Path, log_lines: list[str]) -> None:
        self.args = args
        self.profile = profile
        self.rows: int = args.rows
        self.workdir = workdir / profile.name
        self.workdir.mkdir()
        self.template_parent = workdir
        self.source: MariaDBServer | None = None
        self.target: MariaDBServer | None = None
        self.results: dict[str, Measurement] = {}
        self.machine: dict[str, Any] = {}
        self.server_settings: dict[str, str] = {}
        self.load_averages: dict[str, tuple[float, float, float]] = {}
        self.log_lines = log_lines  # shared by the profiles: one run log
        self.extract_reports: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ infrastructure
    def say(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] [{self.profile.name}] {message}"
        print(line, flush=True)
        self.log_lines.append(line)

    def start_servers(self) -> None:
        template = init_template(self.template_parent)
        args = list(self.profile.args)
        self.source = MariaDBServer(self.workdir, template, "bench-source", args).start()
        self.target = MariaDBServer(self.workdir, template, "bench-target", args).start()

    def stop_servers(self) -> None:
        for server in (self.source, self.target):
            if server is not None:
                server.stop()

    def describe_machine(self) -> None:
        assert self.source is not None
        model = "unknown"
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        import connectorx
        import dlt
        import pyarrow

        self.machine = {
            "cpus": os.cpu_count(),
            "cpu_model": model,
            "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "mariadb": self.source.scalar("SELECT VERSION()"),
            "python": platform.python_version(),
            "versions": f"dlt {dlt.__version__}, pyarrow {pyarrow.__version__}, connectorx {connectorx.__version__}, "
            f"{mydumper_version()}",
        }

    def describe_servers(self) -> None:
        """The target server's settings that decide load speed, as the server reports them."""
        assert self.target is not None
        names = ", ".join(f"'{n}'" for n in SERVER_VARIABLES)
        found = dict(self.target.query(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})"))
        for name in SERVER_VARIABLES:
            value = str(found.get(name, "?"))
            if value.isdigit() and int(value) >= 1024 * 1024:
                value = f"{int(value) // (1024 * 1024)}M"
            self.server_settings[name] = value

    def base_env(self, target_db: str, source_db: str = SOURCE_DB, **overrides: str) -> dict[str, str]:
        assert self.source is not None and self.target is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_DB_", "TARGET_DB_"))}
        env.update(
            {
                "SOURCE_DB_HOST": self.source.host,
                "SOURCE_DB_PORT": str(self.source.port),
                "SOURCE_DB_NAME": source_db,
                "SOURCE_DB_USER": "root",
                "SOURCE_DB_PASS": "",
                "TARGET_DB_HOST": self.target.host,
                "TARGET_DB_PORT": str(self.target.port),
                "TARGET_DB_NAME": target_db,
                "TARGET_DB_USER": "root",
                "TARGET_DB_PASS": "",
                "FILE_STAGING_DIR": str(self.workdir / f"staging_{target_db}"),
                "HEALTH_PORT": "0",
                "LOG_LEVEL": "INFO",
                "DLT_TELEMETRY": "false",
                "RUNTIME__DLTHUB_TELEMETRY": "false",
            }
        )
        if self.args.chunk_size:
            env["CHUNK_SIZE"] = str(self.args.chunk_size)
        env.update(overrides)
        return env

    def tables_file(self, name: str, entries: list[dict[str, Any]]) -> Path:
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(entries, indent=1))
        return path

    def driver(self, name: str, target_db: str, tables: list[dict[str, Any]], **env: str) -> Driver:
        assert self.target is not None
        self.target.execute(f"CREATE DATABASE IF NOT EXISTS `{target_db}` CHARACTER SET utf8mb4")
        environ = self.base_env(target_db, TABLES_FILE=str(self.tables_file(name, tables)), PROGRESS="off", **env)
        return Driver(environ, self.workdir / f"{name}.log")

    # ------------------------------------------------------------------ data
    def generate(self) -> None:
        assert self.source is not None
        started = time.monotonic()
        self.source.execute(f"CREATE DATABASE {SOURCE_DB} CHARACTER SET utf8mb4")
        self.source.execute(ORDERS_DDL, SOURCE_DB)
        self.source.execute(ORDERS_DATA.format(rows=self.rows), SOURCE_DB)
        for n in range(1, SMALL_TABLES + 1):
            self.source.execute(SMALL_DDL.format(n=n), SOURCE_DB)
        self.say(
            f"generated orders ({self.rows:,} rows) and {SMALL_TABLES} small tables in {time.monotonic() - started:.1f}s"
        )

    def identical(self, target_db: str, table: str = "orders", source_db: str = SOURCE_DB) -> bool:
        assert self.source is not None and self.target is not None
        return table_fingerprint(self.source, source_db, table) == table_fingerprint(self.target, target_db, table)

    # ------------------------------------------------------------------ scenarios
    def client(self, server: MariaDBServer, *extra: str) -> list[str]:
        return [
            "mariadb",
            f"--host={server.host}",
            f"--port={server.port}",
            "--user=root",
            "--default-character-set=utf8mb4",
            *extra,
        ]

    def raw_pipe(self) -> None:
        assert self.source is not None and self.target is not None
        create = self.source.query("SHOW CREATE TABLE orders", SOURCE_DB)[0][1]
        self.target.execute("CREATE DATABASE raw_pipe CHARACTER SET utf8mb4")
        self.target.execute(create, "raw_pipe")
        tsv = self.workdir / "orders.tsv"
        started = time.monotonic()
        with tsv.open("wb") as out:
            subprocess.run(
                self.client(
                    self.source, "--batch", "--quick", "--skip-column-names", SOURCE_DB, "-e", "SELECT * FROM orders"
                ),
                stdout=out,
                check=True,
            )
        extracted = time.monotonic()
        subprocess.run(
            self.client(
                self.target,
                "--local-infile=1",
                "raw_pipe",
                "-e",
                f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE orders CHARACTER SET utf8mb4",
            ),
            check=True,
        )
        loaded = time.monotonic()
        size_mb = tsv.stat().st_size / 1e6
        tsv.unlink()
        ok = self.identical("raw_pipe")
        self.results["raw"] = Measurement(
            "raw pipe (mariadb --batch > TSV; LOAD DATA LOCAL INFILE)",
            self.rows,
            loaded - started,
            notes=f"extract {extracted - started:.1f}s + load {loaded - extracted:.1f}s, TSV {size_mb:.0f} MB"
            + ("" if ok else "; COPY DIFFERS"),
        )
        self.say(f"raw pipe: {loaded - started:.1f}s ({self.results['raw'].notes})")

    def mydumper_myloader(self, source_db: str = SOURCE_DB, key: str = "myloader", rows: int | None = None) -> None:
        """mydumper to SQL files, then myloader into a new database: both process wall times added."""
        assert self.source is not None and self.target is not None
        rows = rows or self.rows
        label = f"mydumper + myloader ({MYLOADER_THREADS} threads, {MYDUMPER_FILE_ROWS:,}-row files)"
        if rows != self.rows:
            label += f", {rows:,} rows"
        if shutil.which("mydumper") is None or shutil.which("myloader") is None:
            self.results[key] = Measurement(label, rows, 0.0, notes="not installed (apt-get install mydumper)")
            self.say("mydumper + myloader: not installed, skipped")
            return
        dump = self.workdir / f"dump_{key}"
        target_db = f"tgt_{key}"

        def connection(server: MariaDBServer) -> list[str]:
            return ["--host", server.host, "--port", str(server.port), "--user", "root"]

        self.target.execute(f"CREATE DATABASE `{target_db}` CHARACTER SET utf8mb4")
        started = time.monotonic()
        subprocess.run(
            [
                "mydumper",
                *connection(self.source),
                "--database", source_db, "--tables-list", "orders", "--outputdir", str(dump),
                "--rows", str(MYDUMPER_FILE_ROWS), "--threads", str(MYLOADER_THREADS),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        dumped = time.monotonic()
        subprocess.run(
            [
                "myloader",
                *connection(self.target),
                "--directory", str(dump), "--database", target_db, "--threads", str(MYLOADER_THREADS),
                "--overwrite-tables",
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        loaded = time.monotonic()
        size_mb = sum(f.stat().st_size for f in dump.iterdir()) / 1e6
        shutil.rmtree(dump, ignore_errors=True)
        ok = self.identical(target_db, source_db=source_db)
        self.results[key] = Measurement(
            label,
            rows,
            loaded - started,
            notes=f"dump {dumped - started:.1f}s + load {loaded - dumped:.1f}s, {size_mb:.0f} MB of SQL"
            + ("" if ok else "; COPY DIFFERS"),
        )
        self.say(f"{label}: {loaded - started:.1f}s ({self.results[key].notes})")
        self.target.execute(f"DROP DATABASE `{target_db}`")

    def plain_dlt(self) -> None:
        assert self.source is not None and self.target is not None
        source_url = f"mysql+pymysql://root@{self.source.host}:{self.source.port}/{SOURCE_DB}"
        target_url = f"mysql+pymysql://root@{self.target.host}:{self.target.port}/mysql"
        env = self.base_env("plain_dlt")
        started = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                str(BENCH / "plain_dlt.py"),
                source_url,
                target_url,
                "orders",
                "plain_dlt",
                str(self.workdir / "plain_dlt_pipelines"),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            check=False,
        )
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"plain dlt failed: {proc.stderr[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        self.results["dlt"] = Measurement(
            "plain dlt (sql_table -> sqlalchemy, defaults, replace)",
            report["rows"],
            report["seconds"],
            peak_rss_mb=report["maxrss_mb"],
            notes=f"process wall time {wall:.1f}s",
        )
        self.say(f"plain dlt: {report['seconds']:.1f}s, {report['rows']:,} rows")

    def extraction(self) -> None:
        """connectorx vs pyarrow (speed and exactness), own Parquet writer vs a dlt filesystem pipeline."""
        smalls = [f"small_{n:02d}" for n in range(1, 4)]
        proc = subprocess.run(
            [sys.executable, str(BENCH / "extract_bench.py"), "orders", *smalls],
            env=self.base_env("unused"),
            capture_output=True,
            text=True,
            cwd=self.workdir,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"extract_bench failed: {proc.stderr[-3000:]}")
        self.extract_reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        for r in self.extract_reports:
            self.say(
                f"{r['step']}: {r.get('backend') or r.get('writer')} {r.get('table', 'orders')}: {r['seconds']:.2f}s"
            )

    def full_sync(self, mode: str) -> Driver:
        target_db = f"tgt_{mode}"
        driver = self.driver(
            f"full_{mode}",
            target_db,
            [{"table": "orders", "primary_key": "id", "modifier": "updated_at"}],
            PIPELINE_MODE=mode,
        )
        report = driver.cycle()
        table = report["tables"]["orders"]
        ok = self.identical(target_db)
        self.results[f"full_{mode}"] = Measurement(
            f"daemon full initial sync, {mode}",
            table["rows"],
            report["seconds"],
            report["maxrss_mb"],
            report["polled_rss_mb"],
            notes=f"backend {table['backend']}; identical: {'yes' if ok else 'NO'}; "
            f"process start before the cycle {driver.startup_seconds:.1f}s (in the wall time only)",
            extra={"path": self.load_path(driver)},
            wall=driver.startup_seconds + report["seconds"],
        )
        self.say(f"full sync {mode}: {report['seconds']:.1f}s, peak RSS {report['maxrss_mb']:.0f} MB, identical={ok}")
        return driver

    def chunk_variant(self) -> None:
        """The file_staging full sync again with half the default chunk: memory follows the chunk size."""
        rows = VARIANT_CHUNK_SIZE
        driver = self.driver(
            "full_chunk_variant",
            "tgt_chunk_variant",
            [{"table": "orders", "primary_key": "id", "modifier": "updated_at"}],
            PIPELINE_MODE="file_staging",
            CHUNK_SIZE=str(rows),
        )
        try:
            report = driver.cycle()
        finally:
            driver.close()
        table = report["tables"]["orders"]
        self.results["full_chunk_variant"] = Measurement(
            f"daemon full initial sync, file_staging, CHUNK_SIZE={rows:,}",
            table["rows"],
            report["seconds"],
            report["maxrss_mb"],
            report["polled_rss_mb"],
            notes=f"backend {table['backend']}",
        )
        self.say(
            f"full sync file_staging CHUNK_SIZE={rows}: {report['seconds']:.1f}s, peak RSS {report['maxrss_mb']:.0f} MB"
        )
        assert self.target is not None
        self.target.execute("DROP DATABASE tgt_chunk_variant")

    @staticmethod
    def load_path(driver: Driver) -> str:
        text = Path(driver.log.name).read_text(errors="replace")
        return "LOAD DATA LOCAL INFILE" if "LOCAL INFILE: loading with LOAD DATA" in text else "INSERT"

    def update_shared_timestamp(self) -> None:
        assert self.source is not None
        first = self.rows // 2
        self.source.execute(
            f"UPDATE orders SET status = 'paid', amount = amount + 1, note = CONCAT(LEFT(note, 200), ' ✓'), "
            f"updated_at = '{SHARED_UPDATED_AT}' WHERE id BETWEEN {first + 1} AND {first + UPDATED_ROWS}",
            SOURCE_DB,
        )

    def incremental(self, mode: str, driver: Driver) -> None:
        report = driver.cycle()
        table = report["tables"]["orders"]
        ok = self.identical(f"tgt_{mode}")
        self.results[f"incr_{mode}"] = Measurement(
            f"daemon incremental cycle after a {UPDATED_ROWS:,}-row UPDATE, {mode}",
            table["rows"],
            report["seconds"],
            report["maxrss_mb"],
            report["polled_rss_mb"],
            notes=f"rows in the window incl. lookback: {table['rows']:,}" + ("" if ok else "; TARGET DIFFERS"),
        )
        self.say(f"incremental {mode}: {report['seconds']:.2f}s for {table['rows']:,} rows, identical={ok}")

    def idle(self) -> None:
        tables = [{"table": "orders", "primary_key": "id", "modifier": "updated_at"}]
        for n in range(1, SMALL_TABLES + 1):
            entry: dict[str, Any] = {"table": f"small_{n:02d}", "primary_key": "id"}
            if n % 10:  # every tenth table without a modifier: a full-refresh table
                entry["modifier"] = "updated_at"
            tables.append(entry)
        driver = self.driver("idle", "tgt_file_staging", tables, PIPELINE_MODE="file_staging")
        try:
            first = driver.cycle()
            idle = [driver.cycle() for _ in range(IDLE_CYCLES)]
        finally:
            driver.close()
        cold_driver = self.driver("idle_cold", "tgt_file_staging", tables, PIPELINE_MODE="file_staging")
        try:
            cold = cold_driver.cycle()
        finally:
            cold_driver.close()
        seconds = [r["seconds"] for r in idle]
        moved = sum(t["rows"] for r in idle for t in r["tables"].values())
        self.results["idle"] = Measurement(
            f"daemon idle cycle, {len(tables)} tables (median of {IDLE_CYCLES})",
            0,
            statistics.median(seconds),
            max(r["maxrss_mb"] for r in idle),
            notes=(
                f"cycles {', '.join(f'{s:.2f}s' for s in seconds)}; first cycle of a fresh process (all in sync) "
                f"{cold['seconds']:.2f}s; initial sync of the small tables {first['seconds']:.2f}s; rows moved {moved}"
            ),
            extra={"cold": cold["seconds"]},
        )
        self.say(f"idle: {self.results['idle'].notes}")

    def five_million(self) -> None:
        assert self.source is not None and self.target is not None
        rows = 5 * self.rows
        started = time.monotonic()
        self.source.execute(f"CREATE DATABASE {SOURCE_5M_DB} CHARACTER SET utf8mb4")
        self.source.execute(ORDERS_DDL, SOURCE_5M_DB)
        self.source.execute(ORDERS_DATA.format(rows=rows), SOURCE_5M_DB)
        self.say(f"generated orders ({rows:,} rows) in {time.monotonic() - started:.1f}s")
        tables = self.tables_file("5m", [{"table": "orders", "primary_key": "id", "modifier": "updated_at"}])
        for mode in ("file_staging", "direct"):
            target_db = f"tgt_5m_{mode}"
            self.target.execute(f"CREATE DATABASE {target_db} CHARACTER SET utf8mb4")
            env = self.base_env(
                target_db, source_db=SOURCE_5M_DB, PIPELINE_MODE=mode, TABLES_FILE=str(tables), PROGRESS="off"
            )
            driver = Driver(env, self.workdir / f"full_5m_{mode}.log")
            try:
                report = driver.cycle()
            finally:
                driver.close()
            table = report["tables"]["orders"]
            self.results[f"full_5m_{mode}"] = Measurement(
                f"daemon full initial sync, {mode}, {rows:,} rows",
                table["rows"],
                report["seconds"],
                report["maxrss_mb"],
                report["polled_rss_mb"],
                notes=f"backend {table['backend']}",
            )
            self.say(f"{rows:,} rows full sync {mode}: {report['seconds']:.1f}s, peak RSS {report['maxrss_mb']:.0f} MB")
            self.target.execute(f"DROP DATABASE {target_db}")

    def scale(self, rows: int) -> None:
        """The scale check: mydumper + myloader and the daemon (direct) on ``rows`` rows, peak RSS."""
        assert self.source is not None and self.target is not None
        db = "bench_source_scale"
        started = time.monotonic()
        self.source.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        self.source.execute(ORDERS_DDL, db)
        self.source.execute(ORDERS_DATA.format(rows=rows), db)
        self.say(f"generated orders ({rows:,} rows) in {time.monotonic() - started:.1f}s")
        self.mydumper_myloader(db, "scale_myloader", rows)
        tables = self.tables_file("scale", [{"table": "orders", "primary_key": "id", "modifier": "updated_at"}])
        target_db = "tgt_scale_direct"
        self.target.execute(f"CREATE DATABASE {target_db} CHARACTER SET utf8mb4")
        env = self.base_env(target_db, source_db=db, PIPELINE_MODE="direct", TABLES_FILE=str(tables), PROGRESS="off")
        driver = Driver(env, self.workdir / "scale_direct.log")
        try:
            report = driver.cycle()
        finally:
            driver.close()
        table = report["tables"]["orders"]
        ok = self.identical(target_db, source_db=db)
        self.results["scale_direct"] = Measurement(
            f"daemon full initial sync, direct, {rows:,} rows",
            table["rows"],
            report["seconds"],
            report["maxrss_mb"],
            report["polled_rss_mb"],
            notes=f"backend {table['backend']}; identical: {'yes' if ok else 'NO'}; "
            f"process start before the cycle {driver.startup_seconds:.1f}s (in the wall time only)",
            wall=driver.startup_seconds + report["seconds"],
        )
        self.say(f"{rows:,} rows full sync direct: {report['seconds']:.1f}s, peak RSS {report['maxrss_mb']:.0f} MB")
        self.target.execute(f"DROP DATABASE {target_db}")
        self.source.execute(f"DROP DATABASE {db}")

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        tuned = self.profile.name == "tuned"
        self.start_servers()
        try:
            self.load_averages["start"] = os.getloadavg()
            self.describe_machine()
            self.describe_servers()
            self.say(f"servers: {' '.join(self.profile.args)}; {self.server_settings}")
            self.generate()
            steps: list[tuple[str, Callable[[], None]]] = [("raw", self.raw_pipe), ("myloader", self.mydumper_myloader)]
            drivers: dict[str, Driver] = {}

            def full(mode: str) -> Callable[[], None]:
                return lambda: drivers.__setitem__(mode, self.full_sync(mode))

            steps += [
                ("full_file_staging", full("file_staging")),
                ("full_direct", full("direct")),
            ]
            if tuned:
                steps.append(("chunk_variant", self.chunk_variant))
            try:
                for name, step in steps:
                    if self.wanted(name):
                        step()
                if self.wanted("incremental"):
                    self.update_shared_timestamp()
                    for mode, driver in drivers.items():
                        self.incremental(mode, driver)
            finally:
                for driver in drivers.values():
                    driver.close()
            if self.wanted("idle") and "file_staging" in drivers:
                self.idle()
            if tuned and self.wanted("extract"):
                self.extraction()
            skip_dlt = self.args.skip_dlt or (not tuned and os.environ.get("BENCH_SKIP_DLT_DEFAULT") == "1")
            if self.wanted("dlt") and not skip_dlt:
                self.plain_dlt()
            if tuned and self.wanted("5m") and not self.args.skip_5m:
                self.five_million()
            if not tuned and self.args.scale_rows and self.wanted("scale"):
                self.scale(self.args.scale_rows)
            self.load_averages["end"] = os.getloadavg()
        finally:
            self.stop_servers()
            if not self.args.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                self.say(f"kept servers' data and logs under {self.workdir}")

    def wanted(self, name: str) -> bool:
        return not self.args.only or name in self.args.only

    # ------------------------------------------------------------------ report
    def section(self) -> list[str]:
        """This profile's part of the report: server settings, results, targets."""
        raw, myloader = self.results.get("raw"), self.results.get("myloader")
        averages = ", ".join(
            f"{when} {' '.join(f'{v:.2f}' for v in values)}" for when, values in self.load_averages.items()
        )
        lines = [
            f"## Profile `{self.profile.name}`: {self.profile.description}",
            "",
            f"Server arguments (added to `tests/mariadb_server.py`'s): `{' '.join(self.profile.args)}`. "
            "The target server reports:",
            "",
            "| variable | value |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in self.server_settings.items()),
            "",
            f"Load average (1, 5, 15 min): {averages}.",
            "",
            "`x raw pipe`: rows/s against the raw pipe (higher is faster). `time / myloader`: process wall",
            "time against mydumper + myloader's (lower is faster; the daemon's wall = its start-up + the cycle).",
            "",
            "| scenario | rows | seconds | wall s | rows/s | x raw pipe | time / myloader | peak RSS MB | notes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key, m in self.results.items():
            full_load = m.name.startswith(("raw", "plain", "daemon full", "mydumper")) and m.seconds > 0
            same_rows = raw is not None and m.rows == raw.rows
            ratio = f"{m.rows_per_second / raw.rows_per_second:.2f}" if raw and full_load and same_rows else ""
            reference = self.results.get("scale_myloader") if key.startswith("scale") else myloader
            versus = (
                f"{m.wall_seconds / reference.wall_seconds:.2f}"
                if reference and reference.seconds > 0 and full_load and m.rows == reference.rows
                else ""
            )
            rss = f"{m.peak_rss_mb:.0f}" if m.peak_rss_mb else ""
            if m.polled_rss_mb:
                rss += f" ({m.polled_rss_mb:.0f} polled)"
            rate = f"{m.rows_per_second:,.0f}" if m.rows and m.seconds > 0 else ""
            wall = f"{m.wall:.2f}" if m.wall is not None else ""
            lines.append(
                f"| {m.name} | {m.rows:,} | {m.seconds:.2f} | {wall} | {rate} | {ratio} | {versus} | {rss} | {m.notes} |"
            )
        lines += ["", f"### Targets, profile `{self.profile.name}`", ""]
        lines += self.targets()
        return lines

    def extraction_section(self) -> list[str]:
        if not self.extract_reports:
            return []
        lines = [
            f"## Extraction backends and the staging writer (profile `{self.profile.name}`)",
            "",
            "Whole `orders` table through the daemon's exact projection; MD5 over the `LOAD DATA` bytes of every row.",
            "",
            "| step | what | table | rows | seconds | notes |",
            "|---|---|---|---:|---:|---|",
        ]
        digests = {r["md5"] for r in self.extract_reports if r["step"] == "extract"}
        for r in self.extract_reports:
            what = r.get("backend") or r.get("writer")
            if r["step"] == "extract":
                notes = f"md5 {r['md5'][:12]}" + (
                    " (both backends identical)" if len(digests) == 1 else " (BACKENDS DIFFER)"
                )
            elif "files" not in r:
                notes = "fixed cost per run"
            else:
                notes = (
                    f"{r.get('files')} file(s), {r.get('mb', 0):.1f} MB, {r.get('compression')}, "
                    f"columns {len(r.get('columns', []))} ({', '.join(r.get('types', []))})"
                )
                if r.get("steps"):
                    notes += f"; dlt steps {r['steps']}; also wrote {len(r.get('other_files', []))} bookkeeping file(s)"
            lines.append(
                f"| {r['step']} | {what} | {r.get('table', 'orders')} | {r.get('rows', 0):,} | {r['seconds']:.2f} | {notes} |"
            )
        return lines

    def targets(self) -> list[str]:
        r = self.results
        raw = r.get("raw")
        out: list[str] = []

        def line(label: str, met: bool | None, figures: str) -> None:
            state = "not measured" if met is None else ("**met**" if met else "**missed**")
            out.append(f"- {label}: {state} — {figures}")

        myloader = r.get("myloader")
        for mode in ("file_staging", "direct"):
            m = r.get(f"full_{mode}")
            if m and myloader and myloader.seconds > 0:
                ratio = m.wall_seconds / myloader.wall_seconds
                line(
                    f"{mode} full sync wall <= 1.0x mydumper + myloader",
                    ratio <= 1.0,
                    f"{m.wall_seconds:.1f}s ({m.seconds:.1f}s cycle) vs {myloader.seconds:.1f}s = {ratio:.2f}x",
                )
            else:
                line(f"{mode} full sync wall <= 1.0x mydumper + myloader", None, "")
        scale, scale_loader = r.get("scale_direct"), r.get("scale_myloader")
        if scale and scale_loader and scale_loader.seconds > 0:
            ratio = scale.wall_seconds / scale_loader.wall_seconds
            one = r.get("full_direct")
            one_ratio = one.wall_seconds / myloader.wall_seconds if one and myloader and myloader.seconds else None
            line(
                f"{scale.rows:,} rows: ratio to mydumper + myloader within 10 % of the 1x figure, direct",
                None if one_ratio is None else ratio <= one_ratio * 1.1,
                f"{ratio:.2f}x vs {one_ratio or 0:.2f}x at {self.rows:,} rows",
            )
            line(
                f"{scale.rows:,} rows: peak RSS < 500 MB, direct",
                None if scale.peak_rss_mb is None else scale.peak_rss_mb < 500,
                f"{scale.peak_rss_mb or 0:.0f} MB",
            )
        for mode, factor in (("file_staging", 0.8), ("direct", 0.5)):
            m = r.get(f"full_{mode}")
            if m and raw:
                ratio = m.rows_per_second / raw.rows_per_second
                line(
                    f"{mode} full sync >= {factor}x raw pipe rows/s",
                    ratio >= factor,
                    f"{m.rows_per_second:,.0f} rows/s vs raw {raw.rows_per_second:,.0f} rows/s = {ratio:.2f}x",
                )
            else:
                line(f"{mode} full sync >= {factor}x raw pipe rows/s", None, "")
        for mode in ("file_staging", "direct"):
            m = r.get(f"incr_{mode}")
            line(
                f"{UPDATED_ROWS:,}-row incremental cycle < 3 s, {mode}",
                None if m is None else m.seconds < 3,
                f"{m.seconds:.2f}s" if m else "",
            )
        m = r.get("idle")
        line(
            "idle cycle over 51 tables < 3 s",
            None if m is None else m.seconds < 3,
            f"{m.seconds:.2f}s median (fresh process: {m.extra['cold']:.2f}s)" if m else "",
        )
        for mode in ("file_staging", "direct"):
            one = r.get(f"full_{mode}")
            line(
                f"peak RSS < 500 MB at 1x rows, {mode}",
                None if one is None or one.peak_rss_mb is None else one.peak_rss_mb < 500,
                f"{one.peak_rss_mb:.0f} MB" if one and one.peak_rss_mb else "",
            )
        if self.profile.name == "tuned":
            for mode in ("file_staging", "direct"):
                one, five = r.get(f"full_{mode}"), r.get(f"full_5m_{mode}")
                if one and five and one.peak_rss_mb and five.peak_rss_mb:
                    ratio = five.peak_rss_mb / one.peak_rss_mb
                    line(
                        f"peak RSS at 5x rows <= 1.2x the 1x figure, {mode}",
                        ratio <= 1.2,
                        f"{five.peak_rss_mb:.0f} MB vs {one.peak_rss_mb:.0f} MB = {ratio:.2f}x",
                    )
                else:
                    line(f"peak RSS at 5x rows <= 1.2x the 1x figure, {mode}", None, "skipped (--skip-5m)")
        if self.rows != 1_000_000:
            out.append(f"- note: this run used {self.rows:,} rows, not the 1,000,000 the targets are stated for")
        return out


HOW_MEASURED = """\
- Data: `orders` as the issue describes it (non-ASCII `note`, `payload` JSON, `updated_at DATETIME(6)`
  indexed), generated with `seq_1_to_N`; 50 small tables of 200 rows (every tenth without a modifier,
  i.e. full refresh).
- Raw pipe: `mariadb --batch --quick` of `SELECT *` to a TSV file, then `LOAD DATA LOCAL INFILE` of it
  into an empty copy of the table (same definition, same server settings); seconds = both steps.
- mydumper + myloader: `mydumper --threads 2 --rows 100000` of the table to SQL files, then
  `myloader --threads 2 --overwrite-tables` into an empty database; seconds = both process wall times.
- Daemon: `bench/bench_driver.py` builds the daemon's objects from the environment exactly as
  `db_pipeline.py` does and runs `db_pipeline.run_cycle` per command; seconds = one cycle of a running
  daemon (schema checks, table creation, index build, state bookkeeping included); wall = the process's
  start-up (interpreter and imports until ready) + that cycle, what `--once` costs from the command line.
  Default settings (`CHUNK_SIZE`, `FILE_STAGING_COMPRESSION=snappy`, `BATCH_SIZE`, `BATCH_DELAY` ...).
- Every copy is checked against the source (`table_checks.table_fingerprint`): "identical" / "COPY DIFFERS".
- Peak RSS: the daemon process's kernel high-water mark (`ru_maxrss`), which covers the whole process
  life up to that cycle; in parentheses psutil polling (20 ms) during the cycle alone.
- Incremental: one `UPDATE` of 10,000 rows to one shared `updated_at`, then the next cycle of the
  same daemon process; it re-reads the lookback window too (300 s = 301 more rows).
- Idle: a daemon over the 51 tables after their initial sync; the first cycle of a fresh process
  (schema checks not cached yet) is shown in the notes.
- Plain dlt: its own process and pipelines directory, `sql_table` (default backend) into the
  `sqlalchemy` destination, `write_disposition="replace"`; seconds = `pipeline.run`."""


def combined_report(benches: list[Bench], args: argparse.Namespace, machine: dict[str, Any]) -> str:
    """bench/RESULTS.md: the machine, then each profile's settings, results and targets, then the run log."""
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (`bench/run_bench.py`) on {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"orders: {args.rows:,} rows; profiles: {', '.join(b.profile.name for b in benches)}. "
        f"Chunk size: {args.chunk_size or 'default (CHUNK_SIZE)'}.",
        "",
        "## Machine",
        "",
    ]
    for key, value in machine.items():
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    lines += [
        "",
        "Source and target servers, the daemon and the baselines all share this machine, and other work",
        "ran on it at the same time (see each profile's load averages): timings are noisy; compare",
        "ratios measured in the same run.",
        "",
        "## How it was measured",
        "",
        HOW_MEASURED,
        "",
    ]
    for bench in benches:
        lines += [*bench.section(), ""]
    for bench in benches:
        extraction = bench.extraction_section()
        if extraction:
            lines += [*extraction, ""]
    log_lines = benches[0].log_lines if benches else []
    lines += ["## Run log", "", "```", *log_lines, "```", ""]
    for name in ("INITIAL_LOAD_RESULTS.md", "VERIFY_RESULTS.md", "STARTUP_RESULTS.md"):  # written by other scripts
        extra = BENCH / name
        if extra.exists():
            lines += ["", extra.read_text().rstrip(), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=int(os.environ.get("BENCH_ROWS") or 1_000_000),
        help="rows of the orders table (default BENCH_ROWS or 1,000,000)",
    )
    parser.add_argument(
        "--profiles", nargs="*", choices=sorted(PROFILES), default=["tuned", "default"], help="server profiles to run"
    )
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=int(os.environ.get("BENCH_SCALE_ROWS") or 0),
        help="the default profile's scale check with this many rows (default BENCH_SCALE_ROWS, else off)",
    )
    parser.add_argument("--skip-5m", action="store_true", help="skip the 5x-rows peak-RSS scenario")
    parser.add_argument("--skip-dlt", action="store_true", help="skip the plain-dlt baseline (slow)")
    parser.add_argument("--chunk-size", type=int, help="CHUNK_SIZE for the daemon (default: the daemon's default)")
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only these steps: raw myloader full_file_staging full_direct chunk_variant incremental idle "
        "extract dlt 5m scale",
    )
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md", help="where to write the results")
    parser.add_argument("--workdir", type=Path, default=None, help="parent directory for servers and files")
    parser.add_argument("--keep", action="store_true", help="keep servers' data directories and logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dlt_sync_bench_", dir=args.workdir))
    log_lines: list[str] = []
    benches: list[Bench] = []
    machine: dict[str, Any] = {}
    try:
        for name in args.profiles:
            bench = Bench(args, PROFILES[name], workdir, log_lines)
            benches.append(bench)
            bench.run()
            machine = machine or bench.machine
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = combined_report(benches, args, machine)
    args.output.write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
