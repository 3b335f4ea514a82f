"""Verification benchmark: our chunked ``--verify`` against ``pt-table-sync --print``.

Starts its own source and target MariaDB servers (``tests/mariadb_server.py``, 1 GB InnoDB buffer
pool each), creates the same ``orders`` table (``--rows`` rows, default 1,000,000) in both, then:

1. no differences: times our verify (``verification.run_verify``, all columns) and
   ``pt-table-sync --print`` between the same two servers;
2. injects into the source 100 updates that leave ``updated_at`` alone, 100 deletes and 100
   inserts with old timestamps, times both tools again and checks they report exactly the same
   differing keys (pt-table-sync's printed INSERT / UPDATE / DELETE statements are parsed);
3. repairs with ``--verify --repair`` and checks pt-table-sync then prints nothing.

Writes a Markdown section to ``bench/VERIFY_RESULTS.md``. Needs Debian's ``percona-toolkit``
(``apt-get install -y percona-toolkit``); without it only our side is measured.

    .venv/bin/python bench/verify_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "source"))
sys.path.insert(0, str(ROOT / "tests"))

from mariadb_server import MariaDBServer, init_template  # noqa: E402
from orders_data import ORDERS_DATA, ORDERS_DDL  # noqa: E402

SERVER_ARGS = [
    "--innodb-buffer-pool-size=1G",
    "--innodb-log-file-size=512M",
    "--max-allowed-packet=256M",
    "--innodb-io-capacity=20000",
    "--innodb-io-capacity-max=40000",
]
DB = "bench_verify"
INJECTED = 100
SEED = 20240601


@dataclass
class Found:
    """Differing keys as one tool reports them."""

    missing: set[int] = field(default_factory=set)  # in the source only (pt: INSERT)
    extra: set[int] = field(default_factory=set)  # in the target only (pt: DELETE)
    changed: set[int] = field(default_factory=set)  # in both, different (pt: UPDATE)

    def counts(self) -> str:
        return f"{len(self.missing)} / {len(self.extra)} / {len(self.changed)}"

    def as_tuple(self) -> tuple[set[int], set[int], set[int]]:
        return self.missing, self.extra, self.changed


def say(message: str) -> None:
    print(f"[verify-bench] {message}", flush=True)


# --------------------------------------------------------------------------- our verify
def environ(source: MariaDBServer, target: MariaDBServer) -> dict[str, str]:
    return {
        "SOURCE_DB_HOST": source.host,
        "SOURCE_DB_PORT": str(source.port),
        "SOURCE_DB_NAME": DB,
        "SOURCE_DB_USER": "root",
        "SOURCE_DB_PASS": "",
        "TARGET_DB_HOST": target.host,
        "TARGET_DB_PORT": str(target.port),
        "TARGET_DB_NAME": DB,
        "TARGET_DB_USER": "root",
        "TARGET_DB_PASS": "",
        "TABLES_FILE": os.devnull,
        "HEALTH_PORT": "0",
    }


def our_verify(
    source: MariaDBServer, target: MariaDBServer, repair: bool = False, keys: bool = False
) -> tuple[float, int, str, Found]:
    """(seconds, exit code, printed report, differing keys when ``keys``) of ``--verify [--repair]`` on orders."""
    from dlt_db_sync.config.settings import load_settings
    from dlt_db_sync.config.tables import TableSpec
    from dlt_db_sync.database.engines import create_engines
    from dlt_db_sync.verification.chunk_compare import compare_table
    from dlt_db_sync.verification.repair import CHUNK_SECONDS, PARALLEL_CHUNKS, describe_for_compare
    from dlt_db_sync.verification.verify_command import run_verify

    settings = load_settings(environ(source, target), dotenv_path=None)
    engines = create_engines(settings)
    try:
        out = io.StringIO()
        started = time.monotonic()
        code = run_verify(
            engines, settings, [TableSpec("orders", ("id",))], ["orders"], repair, threading.Event(), out=out
        )
        seconds = time.monotonic() - started
        found = Found()
        if code and keys:  # the keys behind the printed counts (an extra, untimed comparison)
            _def, spec = describe_for_compare(engines, "orders", ("id",), "rows")
            comparison = compare_table(
                engines, spec, threading.Event(), time_budget=CHUNK_SECONDS, parallel=PARALLEL_CHUNKS
            )
            assert comparison.differences is not None
            found = Found(
                {k[0] for k in comparison.differences.missing},
                {k[0] for k in comparison.differences.extra},
                {k[0] for k in comparison.differences.changed},
            )
        return seconds, code, out.getvalue(), found
    finally:
        engines.dispose()


# --------------------------------------------------------------------------- pt-table-sync
PT_KEY = re.compile(r"WHERE `id`='(\d+)' LIMIT 1")
PT_INSERT = re.compile(r"^INSERT INTO `[^`]+`\.`orders`\([^)]*\) VALUES \('(\d+)'")


def pt_table_sync(source: MariaDBServer, target: MariaDBServer) -> tuple[float, Found, int]:
    """(seconds, differing keys, statements) of ``pt-table-sync --print`` from source to target."""
    command = [
        "pt-table-sync",
        "--print",  # --charset=utf8mb4 makes it die on "Wide character in print"
        f"h={source.host},P={source.port},u=root,D={DB},t=orders",
        f"h={target.host},P={target.port},u=root,D={DB},t=orders",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    seconds = time.monotonic() - started
    if result.returncode not in (0, 1, 2):  # it exits 2 when it found differences
        raise RuntimeError(f"pt-table-sync failed ({result.returncode}): {result.stderr[-2000:]}")
    found = Found()
    statements = 0
    for line in result.stdout.splitlines():
        if not line.strip():
            continue
        statements += 1
        if line.startswith("DELETE"):
            found.extra.add(int(PT_KEY.search(line).group(1)))  # type: ignore[union-attr]
        elif line.startswith("UPDATE"):
            found.changed.add(int(PT_KEY.search(line).group(1)))  # type: ignore[union-attr]
        elif line.startswith(("INSERT", "REPLACE")):
            found.missing.add(int(PT_INSERT.search(line).group(1)))  # type: ignore[union-attr]
        else:
            raise RuntimeError(f"unexpected pt-table-sync output: {line[:200]}")
    return seconds, found, statements


def pt_version() -> str | None:
    if shutil.which("pt-table-sync") is None:
        return None
    result = subprocess.run(["pt-table-sync", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or result.stderr.strip()


# --------------------------------------------------------------------------- scenario
def inject(source: MariaDBServer, rows: int) -> dict[str, list[int]]:
    """100 silent updates, 100 deletes, 100 inserts with old timestamps (keys drawn with a fixed seed)."""
    rng = random.Random(SEED)
    picked = rng.sample(range(1, rows + 1), 2 * INJECTED)
    updated, deleted = sorted(picked[:INJECTED]), sorted(picked[INJECTED:])
    inserted = [rows + 1_000 + i * 7 for i in range(INJECTED)]
    ids = ", ".join
    source.execute(
        f"UPDATE orders SET amount = amount + 1, note = CONCAT(note, ' ✎') WHERE id IN ({ids(map(str, updated))});"
        f"DELETE FROM orders WHERE id IN ({ids(map(str, deleted))});"
        + "".join(
            f"INSERT INTO orders VALUES ({i}, 1, 'new', 9.99, 1, 'late insert — alt', JSON_OBJECT('late', 1), 0, "
            f"'2020-01-01 00:00:00', '2020-01-01 00:00:00.000001');"
            for i in inserted
        ),
        DB,
    )
    return {"updated": updated, "deleted": deleted, "inserted": inserted}


def settle(servers: list[MariaDBServer], timeout: float = 300.0) -> float:
    """Flush the freshly loaded pages so background writes do not compete with the timed runs."""
    started = time.monotonic()
    for server in servers:
        server.execute("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001; SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        while time.monotonic() - started < timeout:
            dirty = sum(int(s.query("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")[0][1]) for s in servers)
            if dirty < 50:
                break
            time.sleep(0.5)
    finally:
        for server in servers:
            server.execute("SET GLOBAL innodb_max_dirty_pages_pct = 90; SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "VERIFY_RESULTS.md")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per tool and scenario (the best counts)")
    args = parser.parse_args()
    version = pt_version()
    if version is None:
        say("pt-table-sync not found (apt-get install -y percona-toolkit); measuring our verify only")
    base = Path(tempfile.mkdtemp(prefix="verify_bench_"))
    servers: list[MariaDBServer] = []
    try:
        template = init_template(base)
        for name in ("source", "target"):
            servers.append(MariaDBServer(base, template, name, SERVER_ARGS).start())
        source, target = servers
        started = time.monotonic()
        threads = []
        for server in servers:
            server.execute(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
            server.execute(ORDERS_DDL, DB)
            threads.append(threading.Thread(target=server.execute, args=(ORDERS_DATA.format(rows=args.rows), DB)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        say(f"created orders with {args.rows:,} rows on both servers in {time.monotonic() - started:.1f}s")
        say(f"flushed the loaded pages in {settle(servers):.1f}s")
        server_version = source.query("SELECT VERSION()")[0][0]

        results: dict[str, Any] = {}
        # Warm both buffer pools the same way for both tools (one untimed pass), then alternate
        # the tools run by run so a busy machine hurts both alike; the best run of each counts.
        our_verify(source, target)
        for scenario in ("clean", "diff"):
            if scenario == "diff":
                injected = inject(source, args.rows)
                settle(servers)
                expected = Found(set(injected["inserted"]), set(injected["deleted"]), set(injected["updated"]))
            for run in range(args.repeat):
                ours = our_verify(source, target, keys=run == 0)
                say(f"our verify ({scenario}) run {run + 1}: {ours[0]:.2f}s exit {ours[1]}")
                results.setdefault(f"ours_{scenario}_times", []).append(ours[0])
                if run == 0:
                    results[f"ours_{scenario}"] = ours  # report and keys of the first run
                if version:
                    pt = pt_table_sync(source, target)
                    say(f"pt-table-sync --print ({scenario}) run {run + 1}: {pt[0]:.2f}s, {pt[2]} statements")
                    results.setdefault(f"pt_{scenario}_times", []).append(pt[0])
                    results[f"pt_{scenario}"] = pt
            say(results[f"ours_{scenario}"][2].rstrip())
        results["repair"] = our_verify(source, target, repair=True)
        say(f"our verify --repair: {results['repair'][0]:.2f}s exit {results['repair'][1]}")
        if version:
            results["pt_after"] = pt_table_sync(source, target)
        results["load"] = os.getloadavg()
        write_results(args, results, expected, version, server_version)
        say(f"wrote {args.out}")
        ours_found = results["ours_diff"][3]
        same = ours_found.as_tuple() == expected.as_tuple() and (
            not version or results["pt_diff"][1].as_tuple() == ours_found.as_tuple()
        )
        return 0 if same and results["repair"][1] == 0 else 1
    finally:
        for server in servers:
            server.destroy()
        shutil.rmtree(base, ignore_errors=True)


def write_results(
    args: argparse.Namespace, results: dict[str, Any], expected: Found, version: str | None, server_version: str
) -> None:
    ours_clean, ours_diff, repair = results["ours_clean"], results["ours_diff"], results["repair"]  # first runs
    chunks = re.split(r"\s+", [line for line in ours_clean[2].splitlines() if line.startswith("orders")][0])[3]
    lines = [
        "## Verification: chunked checksums vs pt-table-sync",
        "",
        f"`bench/verify_bench.py --rows {args.rows}`: two local MariaDB {server_version} servers (1 GB buffer pool "
        f"each) on {os.cpu_count()} CPU(s), {platform.machine()}, Python {platform.python_version()}; "
        f"{version or 'pt-table-sync not installed'}. Both tools compare every column of `orders` "
        f"({args.rows:,} rows). After one untimed warm-up pass the tools ran alternately, "
        f"{args.repeat} times each per scenario (best and median shown). The machine was shared "
        f"with other work (load average {results['load'][1]:.1f} over the run's last 5 minutes): both servers, "
        "both tools and everything else ran on the same cores.",
        "",
        "| scenario | our `--verify` best / median | `pt-table-sync --print` best / median | speed-up (best / median) |",
        "|---|---:|---:|---:|",
    ]
    for label, scenario in (
        ("no differences", "clean"),
        (f"after {INJECTED} silent updates, {INJECTED} deletes, {INJECTED} old inserts", "diff"),
    ):
        ours = results[f"ours_{scenario}_times"]
        pt = results.get(f"pt_{scenario}_times")
        ours_text = f"{min(ours):.2f} s / {statistics.median(ours):.2f} s"
        pt_text = f"{min(pt):.2f} s / {statistics.median(pt):.2f} s" if pt else "n/a"
        speed = f"{min(pt) / min(ours):.1f}x / {statistics.median(pt) / statistics.median(ours):.1f}x" if pt else "n/a"
        lines.append(f"| {label} | {ours_text} | {pt_text} | {speed} |")
    lines += [
        f"| `--verify --repair` (re-copy + delete + verify again) | {repair[0]:.2f} s | - | - |",
        "",
        f"Our verify compared {chunks} chunks of 1,000 key-ordered rows (up to 250 chunks per statement, "
        "statements sized to 0.5 s, source and target queried concurrently; pt-table-sync also uses 1,000-row "
        "chunks, one server after the other). Row hash: ours CRC32(SHA1(row)), pt-table-sync's CRC32(row), whose "
        "XOR over a chunk cancels out when two rows of the chunk change alike. "
        "Differing keys found (missing in target / extra in target / changed):",
        "",
        "| | missing / extra / changed | equals the injected keys |",
        "|---|---:|---|",
        f"| injected | {expected.counts()} | - |",
        f"| our verify | {ours_diff[3].counts()} | {'yes' if ours_diff[3].as_tuple() == expected.as_tuple() else 'NO'} |",
    ]
    if "pt_diff" in results:
        pt_found = results["pt_diff"][1]
        lines.append(
            f"| pt-table-sync (INSERT / DELETE / UPDATE) | {pt_found.counts()} | "
            f"{'yes' if pt_found.as_tuple() == expected.as_tuple() else 'NO'} |"
        )
        same = pt_found.as_tuple() == ours_diff[3].as_tuple()
        lines += [
            "",
            f"Both tools found {'exactly the same' if same else 'DIFFERENT'} keys. "
            f"After `--verify --repair` (exit {repair[1]}), pt-table-sync printed "
            f"{results['pt_after'][2]} statements.",
        ]
    lines += ["", "Our `--verify` output after the injection:", "", "```", ours_diff[2].rstrip(), "```", ""]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
