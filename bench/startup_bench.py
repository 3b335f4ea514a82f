"""Start-up cost of the command line: ``--help``, ``--version`` and an idle ``--once`` over one table.

Process wall time (interpreter start to exit) of each command, best and median of ``--runs``,
for this checkout and, as the baseline in the same run, the ``source/`` of ``--baseline-ref``
(default ``3247c30``, before the imports were made lazy), against one throwaway MariaDB server.
Also the heaviest top-level imports of each command (``python -X importtime``). Writes
``bench/STARTUP_RESULTS.md`` (``make bench`` copies it into ``bench/RESULTS.md``).

    python bench/startup_bench.py [--runs 7] [--baseline-ref 3247c30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests"))

from mariadb_server import MariaDBServer, init_template  # noqa: E402

IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$")


def export_source(ref: str, into: Path) -> Path:
    """``source/`` of ``ref`` (git archive) under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "source"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "source"


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heaviest_imports(command: list[str], env: dict[str, str], cwd: Path, top: int = 5) -> list[tuple[str, float]]:
    """The ``top`` top-level imports by cumulative time (seconds) under ``-X importtime``."""
    result = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], env=env, cwd=cwd, capture_output=True, text=True
    )
    found: list[tuple[str, float]] = []
    for line in result.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and len(match.group(3)) == 1:  # one space: imported by the script itself
            found.append((match.group(4), int(match.group(2)) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:top]


def measure(source: Path, env: dict[str, str], runs: int, workdir: Path) -> dict[str, object]:
    script = str(source / "db_pipeline.py")
    commands = {
        "--help": [sys.executable, script, "--help"],
        "--version": [sys.executable, script, "--version"],
        "idle --once": [sys.executable, script, "--once"],
    }
    if "--version" not in (source / "db_pipeline.py").read_text():
        del commands["--version"]
    timed(commands["idle --once"], env, workdir)  # the first run syncs the table; later runs find it unchanged
    figures: dict[str, object] = {}
    for name, command in commands.items():
        samples = [timed(command, env, workdir) for _ in range(runs)]
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        figures[name] = {
            "best": min(walls),
            "median": statistics.median(walls),
            "cpu": statistics.median(cpus),
            "imports": heaviest_imports(command, env, workdir),
        }
    return figures


def report(current: dict[str, object], baseline: dict[str, object], ref: str, runs: int, load: str) -> str:
    lines = [
        "## Start-up: --help, --version and an idle --once",
        "",
        f"`bench/startup_bench.py --runs {runs}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: process wall "
        "time from `subprocess.run` start to exit (interpreter start-up included) of `python source/db_pipeline.py "
        "<args>`, best and median of the runs, and the median CPU time (user + system, from `getrusage`), which "
        "a busy machine inflates less; `idle --once` syncs one table of 1,000 rows that is already in "
        "the target (one throwaway MariaDB server for source and target, `HEALTH_PORT=0`). Baseline: the same "
        f"commands with `source/` of `{ref}` (before lazy imports), measured in the same run. "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}; load average at the end {load} (shared machine).",
        "",
        "| command | this checkout wall best / median (CPU median) | baseline wall best / median (CPU median) | ratio (best wall) |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in current.items():
        base = baseline.get(name)
        mine = f"{figures['best']:.2f} s / {figures['median']:.2f} s ({figures['cpu']:.2f} s)"  # type: ignore[index]
        if base:
            theirs = f"{base['best']:.2f} s / {base['median']:.2f} s ({base['cpu']:.2f} s)"  # type: ignore[index]
            ratio = f"{base['best'] / figures['best']:.1f}x faster"  # type: ignore[index]
        else:
            theirs, ratio = "(no such flag)", "-"
        lines.append(f"| `{name}` | {mine} | {theirs} | {ratio} |")
    lines += ["", "Heaviest top-level imports (`python -X importtime`, cumulative seconds, one run):", ""]
    for label, figures in (("this checkout", current), ("baseline", baseline)):
        for name, data in figures.items():
            imports = ", ".join(f"{module} {seconds:.2f}" for module, seconds in data["imports"])  # type: ignore[index]
            lines.append(f"- {label}, `{name}`: {imports}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline-ref", default="3247c30")
    parser.add_argument("--output", type=Path, default=BENCH / "STARTUP_RESULTS.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    server = None
    try:
        server = MariaDBServer(work, init_template(work), "bench").start()
        server.execute("CREATE DATABASE src; CREATE DATABASE tgt")
        server.execute(
            "CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40), updated_at DATETIME(6) NOT NULL, "
            "KEY (updated_at)); INSERT INTO items SELECT seq, CONCAT('v', seq), '2024-01-01' "
            "FROM seq_1_to_1000",
            "src",
        )
        tables = work / "tables.json"
        tables.write_text(json.dumps([{"table": "items", "primary_key": "id", "modifier": "updated_at"}]))
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "SOURCE_DB_HOST": server.host,
            "SOURCE_DB_PORT": str(server.port),
            "SOURCE_DB_NAME": "src",
            "SOURCE_DB_USER": "root",
            "TARGET_DB_HOST": server.host,
            "TARGET_DB_PORT": str(server.port),
            "TARGET_DB_NAME": "tgt",
            "TARGET_DB_USER": "root",
            "TABLES_FILE": str(tables),
            "HEALTH_PORT": "0",
            "FILE_STAGING_DIR": str(work / "staging"),
        }
        baseline_source = export_source(args.baseline_ref, work / "baseline")
        current = measure(ROOT / "source", env, args.runs, work)
        server.execute("DROP DATABASE tgt; CREATE DATABASE tgt")
        baseline = measure(baseline_source, env, args.runs, work)
        text = report(current, baseline, args.baseline_ref, args.runs, " ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
