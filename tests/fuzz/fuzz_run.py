"""Run fuzz cases against a source/target server pair, judge them with an oracle, shrink divergences.

A case runs in-process: one :class:`TableSyncer` with fresh engines for the whole case (as the
daemon keeps one across cycles, schema cache included), the workload's SQL on the source before
each cycle. After each cycle every table must equal the source (each source column with the same
exact type and the same values, row for row; the target may keep columns the source dropped and
the modifier index; with ``deletes: ignore`` rows deleted in the source) or the daemon must have
failed that table loudly (``TableResult.ok`` False with a message). A table reported "ok" but
different is a divergence; the daemon's own ``--verify`` (:class:`Verifier`) then runs on it and
saying "identical" is a second finding: the verifier must not be blind.
"""

from __future__ import annotations

import io
import json
import logging
import pprint
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pymysql
from fuzz_case import Case, Step, generate, q

from dlt_db_sync.config import settings as config
from dlt_db_sync.config.tables import parse_tables
from dlt_db_sync.database.engines import create_engines
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.syncer import TableSyncer
from dlt_db_sync.verification.verify_command import Verifier
from mariadb_server import MariaDBServer
from table_checks import BYTE_STRING_TYPES

# Step list of one cycle as plain data: (simulated epoch second, statements run in one transaction).
PlainCycle = list[tuple[int, list[str]]]


_TEXTS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}


@dataclass(frozen=True)
class FuzzPair:
    """The fuzzer's own source and target servers (small max_allowed_packet, different time zones)."""

    source: MariaDBServer
    target: MariaDBServer


@dataclass(frozen=True)
class Finding:
    """A divergence (``kind`` "divergence") or a blind verifier ("verifier-blind") in one table."""

    table: str
    cycle: int
    kind: str
    detail: str


@dataclass
class Outcome:
    """What one run of a case produced."""

    findings: list[Finding] = field(default_factory=list)
    loud: list[tuple[str, int, str]] = field(default_factory=list)  # (table, cycle, error) of failed tables
    invalid: str | None = None  # the workload itself failed on the source (a generator or shrinker artefact)
    cycles: int = 0
    databases: tuple[str, str] = ("", "")  # (source, target) database names


class InvalidCase(Exception):
    """A statement of the case failed on the source."""


# --------------------------------------------------------------------------- oracle
def exact_expression(name: str, data_type: str) -> str:
    """Exact, time-zone-free text of a column, valid for values of any size.

    Bytes and geometry are compared by length and SHA-256 (``HEX()`` of a value over half of
    max_allowed_packet is NULL, which would blind the oracle); texts by the HEX of their bytes in
    their own character set (plus the ENUM/SET index); FLOAT as DOUBLE; TIMESTAMP as the epoch.
    """
    col = q(name)
    if data_type in BYTE_STRING_TYPES:
        return f"CONCAT(LENGTH({col}), ':', SHA2({col}, 256))"
    if data_type in _TEXTS:
        extra = f", '#', {col} + 0" if data_type in {"enum", "set"} else ""
        return f"CONCAT(LENGTH({col}), ':', SHA2(CAST({col} AS BINARY), 256), ':', LEFT(HEX({col}), 200){extra})"
    if data_type == "float":
        return f"CAST({col} AS DOUBLE)"
    if data_type == "bit":
        return f"CAST({col} AS UNSIGNED)"
    if data_type == "timestamp":
        return f"UNIX_TIMESTAMP({col})"
    return f"CAST({col} AS CHAR)"


_COLUMNS = (
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)


def _query(conn: pymysql.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(v)) for v in row)


def compare_table(
    source: pymysql.Connection,
    target: pymysql.Connection,
    source_db: str,
    target_db: str,
    table: str,
    key: Sequence[str],
    deletes_ignored: bool,
) -> str | None:
    """None when the target holds the source's columns (exact types) and rows; else the first difference."""
    src_cols = _query(source, _COLUMNS, (source_db, table))
    tgt_cols = {r[0]: r for r in _query(target, _COLUMNS, (target_db, table))}
    if not tgt_cols:
        return "target table missing"
    for name, _data_type, column_type, charset, collation in src_cols:
        got = tgt_cols.get(name)
        if got is None:
            return f"column {name!r} missing in the target"
        if (got[2], got[3], got[4]) != (column_type, charset, collation):
            return f"column {name!r}: source {column_type} {charset} {collation}, target {got[2]} {got[3]} {got[4]}"
    exprs = ", ".join(exact_expression(name, data_type) for name, data_type, *_ in src_cols)
    names = [r[0] for r in src_cols]
    src_rows = sorted(_query(source, f"SELECT {exprs} FROM {q(table)}"), key=_sort_key)
    tgt_rows = sorted(_query(target, f"SELECT {exprs} FROM {q(table)}"), key=_sort_key)
    if deletes_ignored:  # rows deleted in the source may stay in the target by design
        positions = [names.index(k) for k in key]
        keys = {tuple(r[i] for i in positions) for r in src_rows}
        tgt_rows = [r for r in tgt_rows if tuple(r[i] for i in positions) in keys]
    if src_rows == tgt_rows:
        return None
    only_src = [r for r in src_rows if r not in tgt_rows]
    only_tgt = [r for r in tgt_rows if r not in src_rows]
    detail = f"{len(src_rows)} source rows, {len(tgt_rows)} target rows; {len(only_src)} only in the source, {len(only_tgt)} only in the target"
    if only_src and only_tgt:
        a, b = only_src[0], only_tgt[0]
        cols = [n for n, x, y in zip(names, a, b, strict=True) if x != y]
        detail += f"; e.g. columns {cols}: source {[a[names.index(c)] for c in cols][:3]} target {[b[names.index(c)] for c in cols][:3]}"
    elif only_src:
        detail += f"; e.g. source row {only_src[0][:4]}"
    elif only_tgt:
        detail += f"; e.g. target row {only_tgt[0][:4]}"
    return detail


# --------------------------------------------------------------------------- running
def _environ(pair: FuzzPair, source_db: str, target_db: str, workdir: Path, env: dict[str, str]) -> dict[str, str]:
    return {
        "SOURCE_DB_HOST": pair.source.host,
        "SOURCE_DB_PORT": str(pair.source.port),
        "SOURCE_DB_NAME": source_db,
        "SOURCE_DB_USER": "root",
        "SOURCE_DB_PASS": "",
        "TARGET_DB_HOST": pair.target.host,
        "TARGET_DB_PORT": str(pair.target.port),
        "TARGET_DB_NAME": target_db,
        "TARGET_DB_USER": "root",
        "TARGET_DB_PASS": "",
        "INTERVAL": "1",
        "BATCH_DELAY": "0",
        "LOCK_TIMEOUT_BASE_DELAY": "0.1",
        "LOCK_TIMEOUT_MAX_DELAY": "0.2",
        "LOCK_TIMEOUT_RETRIES": "1",
        "HEALTH_PORT": "0",
        "POOL_SIZE": "3",
        "MAX_OVERFLOW": "3",
        "PROGRESS": "off",
        "FILE_STAGING_DIR": str(workdir / "staging"),
        "PIPELINES_DIR": str(workdir / "pipelines"),
        "TABLES_FILE": str(workdir / "tables.json"),
        **env,
    }


def apply_steps(conn: pymysql.Connection, steps: PlainCycle) -> None:
    """Run each step's statements in one transaction at its simulated second."""
    for ts, statements in steps:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET timestamp = {int(ts)}")
                cur.execute("SET SESSION lock_wait_timeout = 20")
                cur.execute("START TRANSACTION")
                for sql in statements:
                    cur.execute(sql)
                cur.execute("COMMIT")
        except pymysql.MySQLError as exc:
            conn.rollback()
            raise InvalidCase(f"{exc} in {statements[0][:300]}") from exc


def run_plan(
    pair: FuzzPair,
    workdir: Path,
    entries: list[dict[str, Any]],
    creates: list[str],
    cycles: list[PlainCycle],
    env: dict[str, str],
    keep: bool = False,
) -> Outcome:
    """Create the tables, then per cycle: the steps on the source, one sync, the oracle on every table.

    The databases are dropped afterwards unless ``keep`` (the caller drops ``Outcome.databases``)."""
    suffix = uuid.uuid4().hex[:10]
    source_db, target_db = f"fz_src_{suffix}", f"fz_tgt_{suffix}"
    workdir = workdir / suffix
    workdir.mkdir(parents=True)
    outcome = Outcome(databases=(source_db, target_db))
    pair.source.execute(f"CREATE DATABASE {source_db} CHARACTER SET utf8mb4")
    pair.target.execute(f"CREATE DATABASE {target_db} CHARACTER SET utf8mb4")
    source = pair.source.connect(source_db)
    target = pair.target.connect(target_db)
    engines = None
    try:
        try:
            apply_steps(source, [(0, [sql]) for sql in creates])
        except InvalidCase as exc:
            outcome.invalid = f"CREATE: {exc}"
            return outcome
        environ = _environ(pair, source_db, target_db, workdir, env)
        (workdir / "tables.json").write_text(json.dumps(entries))
        settings = config.load_settings(environ, dotenv_path=None)
        specs = parse_tables(entries, workdir / "tables.json")
        engines = create_engines(settings)
        status = SyncStatus()
        status.register_tables(specs)
        syncer = TableSyncer(engines, settings, status, threading.Event())
        syncer.prepare()
        for number, steps in enumerate(cycles):
            try:
                apply_steps(source, steps)
            except InvalidCase as exc:
                outcome.invalid = f"cycle {number}: {exc}"
                return outcome
            results = {r.table: r for r in syncer.run_cycle(specs)}
            outcome.cycles = number + 1
            for spec in specs:
                result = results[spec.table]
                if not result.ok:
                    outcome.loud.append((spec.table, number, result.error or "(no message)"))
                target.rollback()  # a fresh snapshot for the comparison
                difference = compare_table(
                    source,
                    target,
                    source_db,
                    target_db,
                    spec.table,
                    spec.primary_key,
                    spec.deletes == "ignore" and spec.strategy == "incremental",
                )
                if difference is None:
                    continue
                if result.ok:
                    outcome.findings.append(
                        Finding(spec.table, number, "divergence", f"reported ok but differs: {difference}")
                    )
                verifier = Verifier(engines, settings, threading.Event(), out=io.StringIO())
                if verifier.verify(spec, repair=False):
                    outcome.findings.append(
                        Finding(spec.table, number, "verifier-blind", f"--verify says identical but: {difference}")
                    )
            leaked = engines.source.pool.checkedout() + engines.target.pool.checkedout()
            if leaked:
                # Connections still checked out between cycles hold transactions (and metadata
                # locks: the source's DDL waits on them) and drain the pool by one per cycle.
                failed = [t for t, c, _m in outcome.loud if c == number]
                outcome.findings.append(
                    Finding(
                        failed[0] if failed else specs[0].table,
                        number,
                        "connection-leak",
                        f"{leaked} connection(s) still checked out after the cycle",
                    )
                )
            if outcome.findings:
                return outcome
        return outcome
    finally:
        if engines is not None:
            engines.dispose()
        source.close()
        target.close()
        if not keep:
            pair.source.execute(f"DROP DATABASE IF EXISTS {source_db}")
            pair.target.execute(f"DROP DATABASE IF EXISTS {target_db}")


def plain(case: Case) -> tuple[list[dict[str, Any]], list[str], list[PlainCycle]]:
    """tables.json entries, CREATE statements and cycles of SQL of ``case``."""
    cycles = [[(s.ts, s.sql()) for s in steps if s.sql()] for steps in case.cycles]
    return case.entries(), [t.create_sql() for t in case.tables], cycles


def run_case(pair: FuzzPair, workdir: Path, case: Case, keep: bool = False) -> Outcome:
    """Run ``case`` (see :func:`run_plan`)."""
    entries, creates, cycles = plain(case)
    return run_plan(pair, workdir, entries, creates, cycles, case.env, keep)


def replay(
    pair: FuzzPair,
    workdir: Path,
    entries: list[dict[str, Any]],
    creates: list[str],
    cycles: list[PlainCycle],
    env: dict[str, str],
) -> None:
    """A printed reproduction's body: fails with the finding while the divergence is there."""
    outcome = run_plan(pair, workdir, entries, creates, cycles, env)
    assert outcome.invalid is None, outcome.invalid
    assert not outcome.findings, "\n".join(f"{f.table} cycle {f.cycle}: {f.kind}: {f.detail}" for f in outcome.findings)


# --------------------------------------------------------------------------- shrinking
def _without_table(case: Case, keep: str) -> Case:
    new = case.copy()
    new.tables = [t for t in new.tables if t.name == keep]
    new.cycles = [[s for s in steps if s.table == keep] for steps in new.cycles]
    return new


def _drop_column(case: Case, table: str, name: str) -> Case | None:
    """``case`` without column ``name`` of ``table`` anywhere (None when it is the key or modifier)."""
    new = case.copy()
    t = next(t for t in new.tables if t.name == table)
    col = next((c for c in t.cols if c.name == name), None)
    if col is None or col.kind in {"key", "modifier"}:
        return None
    dependent = {c.name for c in t.cols if name in c.reads}
    gone = {name} | dependent
    t.cols = [c for c in t.cols if c.name not in gone]
    t.indexes = [i for i in t.indexes if not set(i.columns) & gone]
    cycles = []
    for steps in new.cycles:
        kept: list[Step] = []
        for s in steps:
            if s.table != table:
                kept.append(s)
            elif s.kind == "insert":
                kept.append(replace(s, rows=[{c: v for c, v in r.items() if c not in gone} for r in s.rows]))
            elif s.kind == "update":
                sets = {c: v for c, v in s.sets.items() if c not in gone}
                if sets:
                    kept.append(replace(s, sets=sets))
            elif s.kind == "delete" or not (s.uses & gone):
                kept.append(s)
        cycles.append(kept)
    new.cycles = cycles
    return new


def _all_columns(case: Case, table: str) -> list[str]:
    t = next(t for t in case.tables if t.name == table)
    names = [c.name for c in t.cols]
    for steps in case.cycles:
        for s in steps:
            if s.table == table and s.kind == "sql":
                names += [n for n in s.uses if n not in names]
    return names


class Shrinker:
    """Reduces a case while it still produces a finding of the same table and kind."""

    def __init__(
        self, pair: FuzzPair, workdir: Path, budget_seconds: float, log: Callable[[str], None] = print
    ) -> None:
        self.pair = pair
        self.workdir = workdir
        self.deadline = time.monotonic() + budget_seconds
        self.log = log
        self.runs = 0

    def _reproduces(self, case: Case, table: str, kind: str) -> Finding | None:
        self.runs += 1
        outcome = run_case(self.pair, self.workdir, case)
        return next((f for f in outcome.findings if f.table == table and f.kind == kind), None)

    def shrink(self, case: Case, finding: Finding) -> tuple[Case, Finding]:
        table, kind = finding.table, finding.kind
        best = _without_table(case, table)
        best.cycles = best.cycles[: finding.cycle + 1]
        found = self._reproduces(best, table, kind)
        if found is None:  # the other tables mattered: keep them, only cut the later cycles
            best = case.copy()
            best.cycles = best.cycles[: finding.cycle + 1]
            found = finding
        progress = True
        while progress and time.monotonic() < self.deadline:
            progress = False
            for candidate in self._candidates(best, table):
                if time.monotonic() >= self.deadline:
                    break
                hit = self._reproduces(candidate, table, kind)
                if hit is not None:
                    best, found, progress = candidate, hit, True
                    best.cycles = best.cycles[: hit.cycle + 1]
                    break
        self.log(f"shrunk in {self.runs} runs to {best.describe()}")
        return best, found

    def _candidates(self, case: Case, table: str):  # noqa: ANN202 - a generator of cases
        # Whole cycles first (their steps dropped, or merged into the next cycle), then steps in
        # halves, quarters ... singles, then columns, rows, indexes and settings.
        for i in range(len(case.cycles)):
            new = case.copy()
            if i + 1 < len(case.cycles):
                new.cycles[i + 1] = new.cycles[i] + new.cycles[i + 1]
            del new.cycles[i]
            if new.cycles:
                yield new
        flat = [(i, j) for i, steps in enumerate(case.cycles) for j in range(len(steps))]
        size = max(1, len(flat) // 2)
        while size >= 1:
            for start in range(0, len(flat), size):
                drop = set(flat[start : start + size])
                new = case.copy()
                new.cycles = [
                    [s for j, s in enumerate(steps) if (i, j) not in drop] for i, steps in enumerate(case.cycles)
                ]
                yield new
            size //= 2
        for name in _all_columns(case, table):
            new = _drop_column(case, table, name)
            if new is not None:
                yield new
        for i, steps in enumerate(case.cycles):
            for j, s in enumerate(steps):
                if s.kind == "insert" and len(s.rows) > 1:
                    for rows in (s.rows[: len(s.rows) // 2], s.rows[len(s.rows) // 2 :], s.rows[:1]):
                        new = case.copy()
                        new.cycles[i][j] = replace(s, rows=rows)
                        yield new
        t = next(t for t in case.tables if t.name == table)
        for index in t.indexes:
            new = case.copy()
            nt = next(x for x in new.tables if x.name == table)
            nt.indexes = [x for x in nt.indexes if x.name != index.name]
            yield new
        if t.partition:
            new = case.copy()
            next(x for x in new.tables if x.name == table).partition = None
            yield new
        for key in ("mode", "deletes", "sync_strategy"):
            if key in t.entry:
                new = case.copy()
                del next(x for x in new.tables if x.name == table).entry[key]
                yield new
        for key, value in (("CHUNK_SIZE", "1000"), ("PIPELINE_MODE", "direct"), ("LOOKBACK_SECONDS", "300")):
            if case.env.get(key) != value:
                new = case.copy()
                new.env[key] = value
                yield new


# --------------------------------------------------------------------------- reproduction
def reproduction(case: Case, finding: Finding, features: Sequence[str] = ()) -> str:
    """A runnable pytest module (for tests/fuzz/) reproducing ``finding``, with the SQL spelled out."""
    entries, creates, _cycles = plain(case)
    name = f"test_fuzz_repro_seed_{case.seed}"
    lines = [
        f"# Minimal reproduction: fuzz seed {case.seed}, table {finding.table}, cycle {finding.cycle}: {finding.kind}",
        f"# {finding.detail[:400]}",
        "# Each cycle: the source statements (each group in one transaction at the simulated epoch second,",
        "# SET timestamp = second), then one sync of every table. Servers: tests/fuzz/conftest.py fuzz_pair",
        "# (max_allowed_packet=1M). Save as tests/fuzz/test_repro.py and run pytest on it.",
        "import pytest",
        "from fuzz_run import replay",
        "",
        f"TABLES_JSON = {pprint.pformat(entries, width=110)}",
        "CREATE = [",
        *(f"    {sql!r}," for sql in creates),
        "]",
        "CYCLES = [",
    ]
    for number, steps in enumerate(case.cycles):
        lines.append(f"    [  # cycle {number}")
        lines += [f"        ({s.ts}, {s.sql()!r}),  # {s.note}" for s in steps if s.sql()]
        lines.append("    ],")
    lines += [
        "]",
        f"ENV = {case.env!r}",
        "",
        "",
        "@pytest.mark.integration",
        f"def {name}(fuzz_pair, tmp_path):",
        "    replay(fuzz_pair, tmp_path, TABLES_JSON, CREATE, CYCLES, ENV)",
    ]
    return "\n".join(lines)


def quiet_daemon_logs() -> None:
    """The daemon logs every table's failure; the fuzzer reports them itself."""
    logging.getLogger("dlt_sync").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------- sessions
@dataclass
class SessionReport:
    """What a run over many seeds found."""

    cases: int = 0
    clean: int = 0  # ran every cycle without a divergence (loud failures allowed)
    with_loud: int = 0  # had at least one table failing loudly
    invalid: list[str] = field(default_factory=list)
    findings: list[tuple[int, Finding, str]] = field(default_factory=list)  # (seed, finding, reproduction)
    loud: Counter[str] = field(default_factory=Counter)  # loud failure messages (first line, shortened)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"fuzz: {self.cases} cases in {self.seconds:.0f}s: {self.clean} clean (no divergence), "
            f"{len(self.findings)} with a divergence, {len(self.invalid)} invalid; "
            f"{self.with_loud} had a table failing loudly"
        ]
        lines += [f"  loud x{n}: {message}" for message, n in self.loud.most_common(12)]
        lines += [f"  invalid case: {text}" for text in self.invalid[:10]]
        lines += [
            f"  DIVERGENCE seed {seed}: {f.table} cycle {f.cycle} {f.kind}: {f.detail[:300]}"
            for seed, f, _ in self.findings
        ]
        return "\n".join(lines)


def _loud_key(message: str) -> str:
    """The first line of a failure message without table and column names: one bucket per kind."""
    return re.sub(r"(table|column|key)( '[^']*'| `[^`]*`)", r"\1 …", message.splitlines()[0])[:160]


def fuzz_session(
    pair: FuzzPair,
    workdir: Path,
    seeds: Iterable[int],
    features: frozenset[str],
    deadline: float | None = None,
    shrink_seconds: float = 90.0,
    max_shrinks: int = 6,
    log: Callable[[str], None] = print,
) -> SessionReport:
    """Run ``generate(seed, features)`` for each seed (until ``deadline``), shrinking each divergence."""
    report = SessionReport()
    started = time.monotonic()
    for seed in seeds:
        if deadline is not None and time.monotonic() >= deadline:
            break
        case = generate(seed, features)
        outcome = run_case(pair, workdir, case)
        report.cases += 1
        if outcome.invalid:
            report.invalid.append(f"seed {seed}: {outcome.invalid}")
            continue
        report.with_loud += bool(outcome.loud)
        report.loud.update({_loud_key(message) for _table, _cycle, message in outcome.loud})
        if not outcome.findings:
            report.clean += 1
            continue
        finding = outcome.findings[0]
        log(f"seed {seed}: {finding.table} cycle {finding.cycle}: {finding.kind}: {finding.detail}")
        if len(report.findings) < max_shrinks:
            shrinker = Shrinker(pair, workdir, shrink_seconds, log)
            shrunk, found = shrinker.shrink(case, finding)
            text = reproduction(shrunk, found)
        else:
            text = f"# not shrunk (limit of {max_shrinks} per run): reproduce with FUZZ_SEED={seed} FUZZ_MINUTES=0.1"
        log(text)
        report.findings.append((seed, finding, text))
    report.seconds = time.monotonic() - started
    return report
