"""``--verify [--repair] [--print]``: one report line per table (rows and column definitions),
the repair plan, and the exit code.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.loader import LoadPath
from dlt_db_sync.database.engines import Engines, server_allows_local_infile
from dlt_db_sync.error_handling.errors import ShutdownRequested, describe_error
from dlt_db_sync.error_handling.retry import RetryPolicy
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused
from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.schema_management.tables import (
    ensure_target_table,
    fetch_columns,
    same_type,
    table_exists,
)
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification.chunk_compare import (
    CompareSpec,
    Comparison,
    Differences,
    execute,
    qi,
)
from dlt_db_sync.verification.repair import compare, describe_for_compare, guard_comparison, repair_differences

EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_UNKNOWN_TABLE = 0, 1, 2

logger = logging.getLogger("dlt_sync.verification")


# --------------------------------------------------------------------------- --verify
def _declared(col: Column) -> str:
    return col.describe() + ("" if col.nullable else " NOT NULL")


def column_drift(source: Sequence[Column], target: Sequence[Column]) -> list[str]:
    """How the target's columns differ from the source's: a column missing in the target, or one
    whose type, character set, collation or NULL-ability differs (equal values in columns of other
    types are still a divergence: the next value may not fit, or may compare differently).

    Columns only the target has are not listed: the sync keeps a column the source dropped on
    purpose (README, "How a cycle works").
    """
    by_name = {col.name.lower(): col for col in target}
    drift: list[str] = []
    for col in source:
        other = by_name.get(col.name.lower())
        if other is None:
            drift.append(f"{col.name} missing in the target")
        elif not same_type(other, col) or other.nullable != col.nullable:
            drift.append(f"{col.name} is {_declared(other)} in the target, {_declared(col)} in the source")
    return drift


@dataclass
class VerifyReport:
    """One table's line of ``--verify`` output."""

    table: str
    source_rows: int = 0
    target_rows: int = 0
    chunks: int = 0
    differing_chunks: int = 0
    missing: int = 0
    extra: int = 0
    changed: int = 0
    seconds: float = 0.0
    note: str = ""
    error: str | None = None
    column_drift: list[str] = field(default_factory=list)  # see column_drift()

    @property
    def differences(self) -> int:
        """Rows that differ (missing, extra or changed)."""
        return self.missing + self.extra + self.changed

    @property
    def identical(self) -> bool:
        """Same rows, same values and the same column definitions."""
        return self.error is None and self.differences == 0 and self.differing_chunks == 0 and not self.column_drift

    @classmethod
    def from_comparison(cls, comparison: Comparison) -> VerifyReport:
        found = comparison.differences or Differences()
        return cls(
            comparison.table,
            comparison.source_rows,
            comparison.target_rows,
            len(comparison.chunks),
            len(comparison.differing_chunks),
            len(found.missing),
            len(found.extra),
            len(found.changed),
            comparison.seconds,
        )


REPORT_HEADER = (
    f"{'table':<30} {'source rows':>12} {'target rows':>12} {'chunks':>7} {'diff chunks':>11} "
    f"{'missing':>8} {'extra':>8} {'changed':>8} {'seconds':>8}  result"
)


def format_report(report: VerifyReport) -> str:
    """One aligned line under :data:`REPORT_HEADER`."""
    if report.error is not None:
        return f"{report.table:<30} ERROR: {report.error}"
    if report.identical:
        result = "identical"
    elif report.column_drift and not (report.differences or report.differing_chunks):
        result = "DIFFERENT (column definitions)"
    else:
        result = f"DIFFERENT ({report.differences} rows)"
    if report.column_drift:
        result += " - columns: " + "; ".join(report.column_drift)
    if report.note:
        result += f" - {report.note}"
    return (
        f"{report.table:<30} {report.source_rows:>12} {report.target_rows:>12} {report.chunks:>7} "
        f"{report.differing_chunks:>11} {report.missing:>8} {report.extra:>8} {report.changed:>8} "
        f"{report.seconds:>8.2f}  {result}"
    )


class Verifier:
    """Runs ``--verify`` (and ``--repair``) table by table, feeding status and metrics."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        stop_event: threading.Event,
        status: Any = None,
        metrics: Any = None,
        out: TextIO | None = None,
        dry_run: bool = False,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.stop_event = stop_event
        self.status = status
        self.metrics = metrics
        self.out = out or sys.stdout
        self.dry_run = dry_run  # --print: list what --repair would do, change nothing
        self._load_path: LoadPath | None = None

    def load_path(self) -> LoadPath:
        if self._load_path is None:
            self._load_path = "load_data" if server_allows_local_infile(self.engines.target) else "insert"
        return self._load_path

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _retrying(self, func: Any, what: str) -> Any:
        return RetryPolicy.from_settings(self.settings).call(func, what=what, stop_event=self.stop_event)

    def _compare(
        self, spec: TableSpec, repair: bool
    ) -> tuple[VerifyReport, Comparison | None, TableDefinition, CompareSpec]:
        """Compare all columns; with ``repair`` the target table is first created or evolved like a sync would."""
        if repair:
            with self.engines.source.connect() as source, self.engines.target.connect() as target:
                ensure_target_table(source, target, spec.table)
                target.commit()
        source_def, compare_spec = describe_for_compare(self.engines, spec.table, spec.primary_key, "rows")
        with self.engines.target.connect() as target:
            exists = table_exists(target, spec.table)
            target_columns = fetch_columns(target, spec.table) if exists else []
        if not exists:
            started = time.monotonic()
            with self.engines.source.connect() as source:
                rows = int(execute(source, f"SELECT COUNT(*) FROM {qi(spec.table)}").scalar() or 0)
            report = VerifyReport(
                spec.table, rows, 0, 0, 0, rows, 0, 0, time.monotonic() - started, note="target table missing"
            )
            return report, None, source_def, compare_spec
        comparison = compare(self.engines, self.stop_event, compare_spec)
        report = VerifyReport.from_comparison(comparison)
        report.column_drift = column_drift(source_def.columns, target_columns)
        return report, comparison, source_def, compare_spec

    def _refused(self, table: str, message: str) -> None:
        if self.status is not None:
            self.status.delete_refused(table, message)
        if self.metrics is not None:
            self.metrics.delete_refused(table)

    def _print_plan(
        self, spec: TableSpec, report: VerifyReport, comparison: Comparison | None, names: Sequence[str]
    ) -> None:
        """``--print``: what ``--repair`` would do to ``spec.table``, key by key; nothing is changed."""
        indent = " " * 31
        if comparison is None or comparison.differences is None:
            self._print(f"{indent}would create the target table and copy all {report.missing} source rows")
            return
        found = comparison.differences
        copies = found.missing + found.changed
        self._print(
            f"{indent}would copy {len(copies)} rows ({len(found.missing)} missing, {len(found.changed)} "
            f"changed) and delete {len(found.extra)} rows:"
        )
        for label, keys in (("copy  ", found.missing), ("update", found.changed), ("delete", found.extra)):
            for key in keys:
                self._print(f"{indent}  {label} " + ", ".join(f"{n}={v!r}" for n, v in zip(names, key, strict=True)))
        try:
            guard_comparison(spec, self.settings, comparison, len(found.extra), "--verify --repair")
        except MassDeleteRefused as exc:
            self._print(f"{indent}--repair would be REFUSED: {exc}")

    def _feed(self, report: VerifyReport) -> None:
        findings = report.differences + len(report.column_drift)
        if self.status is not None:
            self.status.table_verified(report.table, findings)
        if self.metrics is not None and findings:
            self.metrics.differences(report.table, findings)

    def verify(self, spec: TableSpec, repair: bool) -> bool:
        """Verify (and repair) one table, printing its line(s); True when finally identical."""
        try:
            report, comparison, source_def, compare_spec = self._retrying(
                lambda: self._compare(spec, repair and not self.dry_run), f"verifying {spec.table}"
            )
        except ShutdownRequested:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as this table's line; the others still run
            logger.debug("%s traceback", spec.table, exc_info=True, extra=log_fields("VERIFY", "TABLE"))
            self._print(format_report(VerifyReport(spec.table, error=describe_error(exc))))
            return False
        self._print(format_report(report))
        self._feed(report)
        if self.dry_run and not report.identical:
            self._print_plan(spec, report, comparison, compare_spec.key)
            return False
        if report.identical or not repair or comparison is None or comparison.differences is None:
            return bool(report.identical)
        differences = comparison.differences
        try:
            guard_comparison(spec, self.settings, comparison, len(differences.extra), "--verify --repair")
        except MassDeleteRefused as exc:
            self._print(f"{'':<30} REFUSED: {exc}")
            self._refused(spec.table, str(exc))
            return False
        started = time.monotonic()
        copied, deleted = self._retrying(
            lambda: repair_differences(
                self.engines,
                self.settings,
                self.stop_event,
                self.load_path(),
                source_def,
                compare_spec,
                differences,
                spec.sanitize or self.settings.sanitize_policy,
            ),
            f"repairing {spec.table}",
        )
        if deleted and self.status is not None:
            self.status.table_deleted(spec.table, deleted)
        if deleted and self.metrics is not None:
            self.metrics.rows_deleted(spec.table, deleted)
        self._print(
            f"{'':<30} repaired: {copied} rows re-copied, {deleted} rows deleted in {time.monotonic() - started:.2f}s"
        )
        after, _comparison, _def, _spec = self._retrying(lambda: self._compare(spec, False), f"verifying {spec.table}")
        after.note = (after.note + "; " if after.note else "") + "after repair"
        if after.column_drift:
            # Rows can be re-copied; a column definition cannot be changed safely for the operator.
            after.note += " (--repair copies rows, it does not alter columns: ALTER the target table by hand)"
        self._print(format_report(after))
        self._feed(after)
        return bool(after.identical)


def run_verify(
    engines: Engines,
    settings: Settings,
    specs: Sequence[TableSpec],
    tables: Sequence[str],
    repair: bool,
    stop_event: threading.Event,
    status: Any = None,
    metrics: Any = None,
    out: TextIO | None = None,
    print_only: bool = False,
) -> int:
    """``--verify [TABLE ...] [--repair] [--print]``: 0 when every table is identical (after repair),
    1 otherwise, 2 when a named table is not in tables.json. ``print_only`` (``--print``) lists
    the rows repair would copy and delete, key by key, and changes nothing."""
    by_name = {s.table: s for s in specs}
    unknown = [t for t in tables if t not in by_name]
    if unknown:
        print(
            f"unknown table(s) {', '.join(unknown)}: not in {settings.tables_file} "
            f"(configured: {', '.join(by_name) or 'none'})",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN_TABLE
    chosen = [by_name[t] for t in dict.fromkeys(tables)] if tables else list(specs)
    verifier = Verifier(engines, settings, stop_event, status, metrics, out, dry_run=print_only)
    verifier._print(REPORT_HEADER)
    code = EXIT_IDENTICAL
    for spec in chosen:
        if stop_event.is_set():
            return EXIT_DIFFERENT
        try:
            identical = verifier.verify(spec, repair)
        except ShutdownRequested:
            return EXIT_DIFFERENT
        if not identical:
            code = EXIT_DIFFERENT
    return code
