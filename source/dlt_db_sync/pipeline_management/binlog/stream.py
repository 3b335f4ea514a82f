"""The binlog stream: a streaming sync strategy in a thread of its own, and its lifecycle.

The cycle's strategies sync a table per call; binlog tables instead stream, because sub-second lag
cannot wait for the next cycle (see ``strategies/base``). :class:`BinlogStrategy` runs the loop:
the snapshots first (``snapshot``), then events from the stored position, batched and applied
atomically with it (``apply``), DDL between batches (``ddl``), one stream among replicas
(``lease``). ``start``/``join`` run it beside the daemon's cycle; ``catch_up`` serves ``--once``.
A failure restarts the stream from the stored position; a table whose events cannot be applied
stops alone; a purged position is reported (and snapshotted again with ``BINLOG_RESNAPSHOT=auto``).
Tables added or removed by a re-read tables file (SIGHUP) are taken between source transactions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.database.binlog_reader import (
    BinlogPosition,
    BinlogReader,
    CommitRecord,
    DdlRecord,
    IdleRecord,
    ReaderFailed,
    RowsRecord,
    current_position,
)
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.error_handling.errors import (
    BinlogPositionLost,
    ShutdownRequested,
    SyncError,
    describe_error,
    is_connection_error,
    is_transient,
)
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.binlog.apply import BatchApplier, TableApplyFailed
from dlt_db_sync.pipeline_management.binlog.ddl import DdlHandler
from dlt_db_sync.pipeline_management.binlog.lease import LEASE_RETRY_SECONDS, LeaseLost, StreamLease
from dlt_db_sync.pipeline_management.binlog.shared import StreamShared
from dlt_db_sync.pipeline_management.binlog.snapshot import Snapshots
from dlt_db_sync.pipeline_management.binlog.tables import BinlogTables
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.binlog")

QUEUE_POLL_SECONDS = 0.05
STOP_DRAIN_SECONDS = 30.0  # after a stop request: longest wait for the open source transaction's commit


class BinlogStrategy:
    """Snapshot-then-stream of the binlog tables of one source, in a thread of its own."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        specs: Sequence[TableSpec],
        status: SyncStatus,
        stop_event: threading.Event,
        metrics: Any = None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.status = status
        self.stop_event = stop_event
        self.metrics = metrics
        self.caught_up = threading.Event()
        self._syncer: Any = None
        self._thread: threading.Thread | None = None
        self._added: list[TableSpec] = []
        self._removed: list[str] = []
        self._added_lock = threading.Lock()
        self._streamed = False  # the first start's snapshots are done: later ones run beside the stream
        self._tables = BinlogTables(engines, specs, status)
        self._lease = StreamLease(engines, settings)
        shared = StreamShared(engines, settings, stop_event, status, metrics, self._syncer_instance)
        self._applier = BatchApplier(shared, self._tables)
        self._snapshots = Snapshots(shared, self._tables, self._applier)
        self._ddl = DdlHandler(shared, self._tables, self._applier, self._snapshots)

    # ------------------------------------------------------------------ lifecycle
    @property
    def tables(self) -> list[str]:
        """The names of the binlog tables."""
        return self._tables.names

    @property
    def specs(self) -> dict[str, TableSpec]:
        """The binlog tables by lower-case name."""
        return self._tables.specs

    @property
    def position(self) -> BinlogPosition | None:
        """The stream position the target holds (None before the stream started)."""
        return self._applier.position

    def start(self) -> BinlogStrategy:
        """Run the stream in a background thread until ``stop_event`` is set."""
        self._thread = threading.Thread(target=self._run_forever, name="binlog-stream", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread (after ``stop_event``): it commits or rolls back its transaction first."""
        if self._thread is not None:
            self._thread.join(timeout)

    def set_tables(self, specs: Sequence[TableSpec]) -> None:
        """The binlog tables of a re-read tables.json (SIGHUP): added ones are snapshotted beside the
        stream, removed ones stop (their target tables are left as they are); applied between
        source transactions."""
        names = {spec.table.lower() for spec in specs}
        with self._added_lock:
            for spec in specs:
                if spec.table.lower() not in self.specs:
                    self._added.append(spec)
            self._removed = [name for name in self.specs if name not in names]

    def catch_up(self) -> bool:
        """``--once``: snapshot what needs it, apply everything the source has, stop. True when ok."""
        try:
            if not self._lease.acquire():
                logger.error(
                    "another replica streams the binlog; --once left the binlog tables alone",
                    extra=log_fields("LEASE", "BINLOG"),
                )
                return False
            self._run_once(until_idle=True)
        except TableApplyFailed as exc:
            self._tables.stop(exc.table.lower(), str(exc))
            return self.catch_up() and False  # the others still catch up
        except BinlogPositionLost as exc:
            if not self._snapshots.position_lost(exc):
                return False
            return self.catch_up()
        except SyncError as exc:
            logger.error("%s", describe_error(exc), extra=log_fields("BINLOG", "STREAM"))
            self._tables.fail_all(describe_error(exc))
            return False
        finally:
            self._lease.release()
        return not self._tables.failed and not self._tables.stopped

    def _run_forever(self) -> None:
        delay = self.settings.lock_timeout_base_delay
        standing_by = False
        while not self.stop_event.is_set():
            try:
                if not self._lease.acquire():
                    if not standing_by:
                        logger.info(
                            "another replica streams the binlog; standing by",
                            extra=log_fields("LEASE", "BINLOG"),
                        )
                        standing_by = True
                    self.stop_event.wait(LEASE_RETRY_SECONDS)
                    continue
                standing_by = False
                self._run_once(until_idle=False)
                delay = self.settings.lock_timeout_base_delay
            except ShutdownRequested:
                break
            except LeaseLost as exc:
                logger.warning("%s; standing by", exc, extra=log_fields("LEASE", "BINLOG"))
            except TableApplyFailed as exc:
                self._tables.stop(exc.table.lower(), str(exc))  # then resume from the stored position
            except BinlogPositionLost as exc:
                if not self._snapshots.position_lost(exc):
                    self.stop_event.wait()  # the operator decides (BINLOG_RESNAPSHOT=auto, then restart)
                    break
            except Exception as exc:  # noqa: BLE001 - reported, then the stream restarts from the stored position
                transient = is_transient(exc)
                logger.error(
                    "binlog stream stopped: %s; restarting from the stored position in %.0fs",
                    describe_error(exc),
                    delay,
                    extra=log_fields("BINLOG", "STREAM"),
                )
                logger.debug("binlog traceback", exc_info=True, extra=log_fields("BINLOG", "STREAM"))
                if is_connection_error(exc):
                    self.engines.rebuild("target")
                if not transient:
                    self._tables.fail_all(describe_error(exc))
                if self.stop_event.wait(delay):
                    break
                delay = min(max(delay * 2, 0.5), self.settings.lock_timeout_max_delay)
        self._lease.release()
        logger.info(
            "binlog stream stopped at %s",
            self.position and self.position.text(),
            extra=log_fields("BINLOG", "SHUTDOWN"),
        )

    def _syncer_instance(self) -> Any:
        """The TableSyncer that runs the snapshots' full-refresh loads (built on first use)."""
        if self._syncer is None:
            from dlt_db_sync.pipeline_management.syncer import TableSyncer

            self._syncer = TableSyncer(self.engines, self.settings, self.status, self.stop_event, self.metrics)
            self._syncer.prepare()
        return self._syncer

    # ------------------------------------------------------------------ the stream
    def _run_once(self, until_idle: bool) -> None:
        applier = self._applier
        position = self._snapshots.prepare(background=self._streamed and self._thread is not None)
        applier.position = position
        goal: BinlogPosition | None = None
        if until_idle:  # --once: everything the source had written once the snapshots were done
            with self.engines.source.connect() as source:
                goal = current_position(source)
            if goal.sort_key() <= position.sort_key():
                return  # nothing written since the stored position
        self._streamed = True
        reader = BinlogReader(self.settings, position, self.settings.source.name, self.tables).start()
        stopping_since: float | None = None
        try:
            while True:
                if self.stop_event.is_set():
                    if not applier.in_transaction:
                        applier.commit()
                        return
                    stopping_since = stopping_since or time.monotonic()
                    if time.monotonic() - stopping_since > STOP_DRAIN_SECONDS:
                        applier.rollback()
                        return
                self._lease.confirm()
                if self._snapshots.jobs and not applier.in_transaction:
                    self._snapshots.finish_jobs()
                if self._take_added():
                    applier.commit()
                    return  # restart: the reader follows the new table list from the stored position
                try:
                    record = reader.queue.get(timeout=QUEUE_POLL_SECONDS)
                except queue.Empty:
                    if applier.due(idle=True):
                        applier.commit()
                    continue
                if isinstance(record, ReaderFailed):
                    raise record.error
                if isinstance(record, RowsRecord):
                    applier.in_transaction = True
                    if not self._snapshots.note_keys(record) and record.table.lower() in self._tables.active:
                        applier.add(record)
                elif isinstance(record, CommitRecord):
                    applier.source_commit(record)
                    reached = goal is not None and record.position.sort_key() >= goal.sort_key()
                    if reached or applier.due(idle=reader.queue.empty()):
                        applier.commit()
                    if reached:
                        return
                elif isinstance(record, DdlRecord):
                    applier.commit()
                    self._ddl.handle(record)
                    if goal is not None and record.position.sort_key() >= goal.sort_key():
                        return
                elif isinstance(record, IdleRecord):
                    applier.commit()
                    self.caught_up.set()
                    if self.position is not None:
                        self.status.binlog_caught_up(self._tables.active_names(), self.position.text())
                        if self.metrics is not None:
                            for table in self._tables.active_names():
                                self.metrics.binlog_caught_up(table)
                    if until_idle:
                        return
        except BaseException:
            applier.rollback()
            raise
        finally:
            reader.close()

    def _take_added(self) -> bool:
        """Apply a changed table list (between source transactions); True when the reader must restart."""
        if self._applier.in_transaction:
            return False
        with self._added_lock:
            added, self._added = self._added, []
            removed, self._removed = self._removed, []
        for name in removed:
            spec = self.specs.pop(name, None)
            self._tables.active.discard(name)
            self._snapshots.jobs.pop(name, None)
            self._tables.stopped.discard(name)
            if spec is not None:
                logger.info(
                    "%s: removed from the tables file; its binlog events are no longer applied",
                    spec.table,
                    extra=log_fields("BINLOG", "RELOAD"),
                )
        for spec in added:
            self.specs[spec.table.lower()] = spec
        return bool(added or removed)
