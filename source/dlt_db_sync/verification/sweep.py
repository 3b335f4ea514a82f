"""Continuous verification: a background sweep that compares every table chunk by chunk and
repairs what differs, so late commits, foreign-key cascades and edits in the target are caught
without anyone remembering ``--verify``.

Each table's key space is walked one slice (a few buckets of :mod:`chunk_compare`) at a time with
the ``--verify`` checksums; differing buckets are resolved down to rows and repaired like
``--verify --repair`` does (missing and changed rows re-copied from the source; extra rows deleted
only for ``"deletes": "reconcile"`` and full-refresh tables, under the mass-delete guard applied
to the slice's rows on both sides).

Pacing: after a slice of ``n`` rows the sweep waits ``n / VERIFY_ROWS_PER_SECOND`` before its next
slice of any table (the databases never see more than that rate), and the table's next slice
waits its share of ``verify_every_minutes`` (default one full pass a day). Every wait is
``stop_event.wait`` and every statement checks the event, so SIGTERM stops it within a statement.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.loader import LoadPath
from dlt_db_sync.database.engines import Engines, server_allows_local_infile
from dlt_db_sync.error_handling.errors import ShutdownRequested, describe_error
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused, check_deletes
from dlt_db_sync.schema_management.model import TableDefinition
from dlt_db_sync.schema_management.tables import table_exists
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification import chunk_compare
from dlt_db_sync.verification.chunk_compare import CompareSpec, Key, TableComparer
from dlt_db_sync.verification.repair import CHUNK_SECONDS, describe_for_compare, repair_differences

logger = logging.getLogger("dlt_sync.verification_sweep")

DEFAULT_PASS_MINUTES = 24 * 60.0  # one full pass a day unless the table sets verify_every_minutes
SLICE_SECONDS = 1.0  # a slice holds about this many seconds of the global rate
MAX_SLICE_BUCKETS = 50
RETRY_SECONDS = 60.0  # after a failed slice
NOT_READY_SECONDS = 5.0  # a table not synced yet (or being synced) is looked at again after this


@dataclass
class TablePass:
    """Where the sweep stands in one table."""

    spec: TableSpec
    next_due: float = 0.0
    lower: Key | None = None  # the next slice starts after this key (None: at the start)
    started: float | None = None
    rows: int = 0  # rows compared in the current pass
    estimate: int = 0  # rows of the table (the last pass's count, or the server's estimate)
    refused: bool = False
    compare: tuple[TableDefinition, CompareSpec] | None = field(default=None, repr=False)


class VerificationSweep(threading.Thread):
    """The sweep thread; :meth:`stop` (or the shared stop event) ends it promptly."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        specs: Sequence[TableSpec],
        stop_event: threading.Event,
        status: Any,
        metrics: Any = None,
    ) -> None:
        super().__init__(name="verification-sweep", daemon=True)
        self.engines = engines
        self.settings = settings
        self.stop_event = stop_event
        self.status = status
        self.metrics = metrics
        self.passes = [TablePass(spec) for spec in specs]
        self._global_next = 0.0
        self._load_path: LoadPath | None = None

    # ---------------------------------------------------------------- loop
    def run(self) -> None:
        logger.info(
            "started: %d table(s), at most %g rows/s",
            len(self.passes),
            self.settings.verify_rows_per_second,
            extra=log_fields("VERIFY", "SWEEP"),
        )
        while not self.stop_event.is_set() and self.passes:
            current = min(self.passes, key=lambda p: p.next_due)
            wait = max(current.next_due, self._global_next) - time.monotonic()
            if wait > 0 and self.stop_event.wait(wait):
                break
            try:
                self.step(current)
            except ShutdownRequested:
                break
            except Exception as exc:  # noqa: BLE001 - the sweep outlives one table's trouble; logged, retried later
                logger.warning(
                    "%s: %s; retrying in %.0fs",
                    current.spec.table,
                    describe_error(exc),
                    RETRY_SECONDS,
                    extra=log_fields("VERIFY", "SWEEP"),
                )
                logger.debug("%s traceback", current.spec.table, exc_info=True, extra=log_fields("VERIFY", "SWEEP"))
                current.compare = None
                current.next_due = time.monotonic() + RETRY_SECONDS
        logger.info("stopped", extra=log_fields("VERIFY", "SWEEP"))

    def set_tables(self, specs: Sequence[TableSpec]) -> None:
        """SIGHUP changed the table list: kept tables keep their place, new ones start, removed ones stop.

        One list assignment, read by the sweep thread at its next step (no lock needed).
        """
        kept = {p.spec.table: p for p in self.passes}
        self.passes = [
            kept[spec.table] if spec.table in kept and kept[spec.table].spec == spec else TablePass(spec)
            for spec in specs
        ]

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the sweep to stop and wait up to ``timeout`` seconds for it."""
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def slice_buckets(self) -> int:
        """Buckets per slice: about ``SLICE_SECONDS`` of the global rate."""
        rows = self.settings.verify_rows_per_second * SLICE_SECONDS
        return int(max(1, min(MAX_SLICE_BUCKETS, rows // chunk_compare.BUCKET_ROWS)))

    # ---------------------------------------------------------------- one slice
    def step(self, current: TablePass) -> int:
        """Compare (and repair) the next slice of ``current``'s table; returns the rows compared."""
        spec = current.spec
        if not self._ready(spec.table):
            current.next_due = time.monotonic() + NOT_READY_SECONDS
            return 0
        if current.compare is None:
            if not self._target_exists(spec.table):
                current.next_due = time.monotonic() + RETRY_SECONDS
                return 0
            current.compare = describe_for_compare(self.engines, spec.table, spec.primary_key, "rows")
        if current.started is None:
            current.started, current.rows, current.refused = time.monotonic(), 0, False
            current.estimate = current.estimate or self._estimate(spec.table)
        source_def, compare_spec = current.compare
        with TableComparer(
            self.engines, compare_spec, self.stop_event, time_budget=CHUNK_SECONDS, parallel=1
        ) as comparer:
            chunks, upper, complete = comparer.compare_slice(current.lower, self.slice_buckets())
            checked = max(sum(c.source.count for c in chunks), sum(c.target.count for c in chunks))
            differing = [c for c in chunks if c.differs]
            repaired, refused = 0, None
            if differing:
                repaired, refused = self._repair(spec, source_def, compare_spec, comparer, chunks)
        current.rows += checked
        current.refused = current.refused or refused is not None
        fraction = current.rows / max(current.estimate, current.rows, 1)
        self.status.sweep_progress(spec.table, checked, repaired, 1.0 if complete else fraction, refused)
        if self.metrics is not None:
            self.metrics.sweep_slice(spec.table, checked, repaired, 1.0 if complete else fraction)
        self._schedule(current, checked, complete)
        if complete:
            self._pass_done(current)
        else:
            current.lower = upper
        return checked

    def _repair(
        self,
        spec: TableSpec,
        source_def: TableDefinition,
        compare_spec: CompareSpec,
        comparer: TableComparer,
        chunks: Sequence[Any],
    ) -> tuple[int, str | None]:
        """Resolve the differing buckets of a slice to rows and repair them; (rows repaired, refusal)."""
        differences = comparer.resolve(chunks)
        if spec.deletes != "reconcile" and spec.strategy != "full_refresh":
            differences.extra = []  # "deletes": "ignore": rows deleted in the source stay in the target
        if not differences.total:
            return 0, None
        try:
            check_deletes(
                spec,
                self.settings,
                target_rows=sum(c.target.count for c in chunks),
                deleting=len(differences.extra),
                source_rows=sum(c.source.count for c in chunks),
                what="verification sweep",
            )
        except MassDeleteRefused as exc:
            logger.error("%s", exc, extra=log_fields("VERIFY", "SWEEP"))
            self.status.delete_refused(spec.table, str(exc))
            if self.metrics is not None:
                self.metrics.delete_refused(spec.table)
            return 0, str(exc)
        copied, deleted = repair_differences(
            self.engines,
            self.settings,
            self.stop_event,
            self.load_path(),
            source_def,
            compare_spec,
            differences,
            spec.sanitize or self.settings.sanitize_policy,
            on_recovered=self.metrics.observe_recovery if self.metrics is not None else None,
        )
        logger.info(
            "%s: %d missing, %d changed, %d extra rows found; %d re-copied, %d deleted",
            spec.table,
            len(differences.missing),
            len(differences.changed),
            len(differences.extra),
            copied,
            deleted,
            extra=log_fields("VERIFY", "SWEEP"),
        )
        if deleted:
            self.status.table_deleted(spec.table, deleted)
            if self.metrics is not None:
                self.metrics.rows_deleted(spec.table, deleted)
        return copied + deleted, None

    def _schedule(self, current: TablePass, checked: int, complete: bool) -> None:
        """The global spacing (``VERIFY_ROWS_PER_SECOND``) and the table's share of its pass period."""
        now = time.monotonic()
        rate = self.settings.verify_rows_per_second
        self._global_next = now + (checked / rate if rate > 0 else 0.0)
        period = 60.0 * (current.spec.verify_every_minutes or DEFAULT_PASS_MINUTES)
        # Unknown size (a first pass without statistics): paced by the global rate alone.
        share = min(1.0, checked / max(current.estimate, current.rows)) if current.estimate else 0.0
        if complete:  # the rest of the period; a pass never starts before its period is over
            share = max(0.0, 1.0 - (now - (current.started or now)) / period) if period else 0.0
        current.next_due = now + share * period

    def _pass_done(self, current: TablePass) -> None:
        seconds = time.monotonic() - (current.started or time.monotonic())
        logger.info(
            "%s: full pass over %d rows in %.1fs",
            current.spec.table,
            current.rows,
            seconds,
            extra=log_fields("VERIFY", "SWEEP"),
        )
        self.status.sweep_pass_done(current.spec.table, seconds, current.refused)
        if self.metrics is not None:
            self.metrics.sweep_pass_done(current.spec.table)
        current.estimate = current.rows
        current.lower, current.started, current.compare = None, None, None  # a new pass re-reads the definition

    # ---------------------------------------------------------------- helpers
    def load_path(self) -> LoadPath:
        if self._load_path is None:
            self._load_path = "load_data" if server_allows_local_infile(self.engines.target) else "insert"
        return self._load_path

    def _ready(self, table: str) -> bool:
        """Whether ``table`` may be swept now: synced once by this process (never during its first
        load, which writes into an empty table without upserts), not being synced right now, and
        not leased by another replica."""
        snapshot = self.status.snapshot()
        entry = snapshot["tables"].get(table)
        return (
            entry is not None and entry.owned and entry.last_success is not None and snapshot["current_table"] != table
        )

    def _target_exists(self, table: str) -> bool:
        with self.engines.target.connect() as target:
            return table_exists(target, table)

    def _estimate(self, table: str) -> int:
        with self.engines.source.connect() as conn:
            value = conn.exec_driver_sql(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                (table,),
            ).scalar()
        return int(value or 0)


def start_sweep(
    engines: Engines,
    settings: Settings,
    specs: Sequence[TableSpec],
    stop_event: threading.Event,
    status: Any,
    metrics: Any = None,
) -> VerificationSweep | None:
    """Start the sweep thread (daemon mode); None when ``VERIFY_ROWS_PER_SECOND`` is 0."""
    if settings.verify_rows_per_second <= 0:
        logger.info("disabled (VERIFY_ROWS_PER_SECOND=0)", extra=log_fields("VERIFY", "SWEEP"))
        return None
    sweep = VerificationSweep(engines, settings, specs, stop_event, status, metrics)
    sweep.start()
    return sweep
