"""Binlog change capture: snapshot, then stream, applying source transactions atomically.

Start: the stream position (``@binlog`` in ``_dlt_sync_state``) is recorded before any table is
loaded; each binlog table without a finished snapshot is loaded by the existing full-refresh path
(chunked, guarded); then events are applied from the recorded position. Row events carry whole
rows (``binlog_row_image=FULL``), so replaying changes the snapshot already holds converges to
the same rows: an upsert writes the whole row, a delete removes the key.

Apply: rows of committed source transactions are collected per table as the net change per key
(the last image wins; deletes before upserts) and written through the target loader together with
the new stream position in ONE target transaction, committed when ``BINLOG_BATCH_SECONDS`` passed
since the batch began, it holds ``BINLOG_BATCH_ROWS`` rows, or the source has nothing more to send.
A target transaction only ever ends at a source transaction boundary, so no source transaction is
half visible and a crash anywhere resumes from exactly what the target holds. A source
transaction larger than ``BINLOG_BATCH_ROWS`` is written in parts inside the still-open target
transaction, so memory stays bounded by the batch size.

DDL: ``ALTER TABLE`` (and index statements) evolve the target by the schema rules before the next
rows; ``TRUNCATE`` asks the mass-delete guard; ``DROP TABLE`` and a ``RENAME`` away stop the table
(target kept, health failing, new snapshot at the next start); ``CREATE TABLE`` or a ``RENAME`` onto
a captured name takes a new snapshot. Statements on other tables cost one regular expression.

Tables added while streaming (SIGHUP) are snapshotted in a thread of their own; the stream notes
the keys their events touch meanwhile and re-copies those rows when the snapshot is done.

Entry points: :func:`split_binlog_tables` (which tables stream, which fall back to the cycle) and
:class:`BinlogStream` (``start``/``stop`` around the daemon loop, ``catch_up`` for ``--once``).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from sqlalchemy.exc import SQLAlchemyError

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.binlog_rows import TableLayout, build_layout, decode_rows
from dlt_db_sync.data_processing.codec import comparable_expression
from dlt_db_sync.data_processing.loader import TargetLoader
from dlt_db_sync.database.binlog_reader import (
    BinlogPosition,
    BinlogReader,
    CommitRecord,
    DdlRecord,
    IdleRecord,
    ReaderFailed,
    RowsRecord,
    check_binlog_source,
    current_position,
    position_available,
)
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.database.sync_state import (
    BINLOG_SNAPSHOT_PENDING,
    BINLOG_STREAM_ROW,
    ensure_state_table,
    mark_done,
    mark_pending,
    read_state,
    write_position_sql,
)
from dlt_db_sync.error_handling.errors import (
    BinlogPositionLost,
    DataError,
    SchemaError,
    ShutdownRequested,
    SyncError,
    TerminalError,
    describe_error,
    is_connection_error,
    is_transient,
)
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.change_detection import keys_in
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused, check_deletes
from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.schema_management.tables import (
    add_unique_keys,
    describe_table,
    ensure_target_table,
    table_exists,
)
from dlt_db_sync.utils.logging_setup import log_fields
from dlt_db_sync.verification.verifier import copy_rows

logger = logging.getLogger("dlt_sync.binlog")

QUEUE_POLL_SECONDS = 0.05
STOP_DRAIN_SECONDS = 30.0  # after a stop request: longest wait for the open source transaction's commit
DELETE_BATCH = 1000
LEASE_RETRY_SECONDS = 5.0  # a standby replica asks for the stream's lease this often
LEASE_CHECK_SECONDS = 2.0  # the streaming replica confirms it still holds the lease this often
POSITION_ONLY_SECONDS = 1.0  # how often the position advances over transactions of other tables only


def split_binlog_tables(
    engines: Engines, settings: Settings, specs: Sequence[TableSpec], status: SyncStatus
) -> tuple[tuple[TableSpec, ...], tuple[TableSpec, ...], str | None]:
    """(tables for the cycle, tables for the binlog stream, why binlog tables are not synced).

    When the source lacks a prerequisite, the binlog tables are synced by cursor with
    ``BINLOG_FALLBACK=incremental`` (a warning), else they fail with the exact list of what is
    missing (in the log and their health) and are not synced; the other tables go on.
    """
    binlog = [s for s in specs if s.strategy == "binlog"]
    others = tuple(s for s in specs if s.strategy != "binlog")
    if not binlog:
        return others, (), None
    with engines.source.connect() as conn:
        check = check_binlog_source(conn, settings)
    for warning in check.warnings:
        logger.warning("%s", warning, extra=log_fields("BINLOG", "CHECK"))
    if not check.problems:
        return others, tuple(binlog), None
    message = "the source cannot serve binlog change capture: " + "; ".join(check.problems)
    if settings.binlog_fallback == "incremental":
        logger.warning(
            "%s; BINLOG_FALLBACK=incremental: syncing %s by cursor instead",
            message,
            ", ".join(s.table for s in binlog),
            extra=log_fields("BINLOG", "FALLBACK"),
        )
        fallback = tuple(replace(s, sync_strategy=s.cursor_strategy) for s in binlog)
        status.set_tables([*others, *fallback])
        return (*others, *fallback), (), None
    logger.error(
        "%s (or set BINLOG_FALLBACK=incremental to sync these tables by cursor)",
        message,
        extra=log_fields("BINLOG", "CHECK"),
    )
    for spec in binlog:
        status.table_failed(spec.table, message, "schema_errors")
    return others, (), message


class LeaseLost(SyncError):
    """The replica lost the binlog stream's lease (its lease connection broke); it stands by again."""


class TableApplyFailed(TerminalError):
    """Events of one table cannot be decoded or written; that table stops, the others go on."""

    def __init__(self, table: str, cause: BaseException) -> None:
        super().__init__(f"table {table!r}: binlog apply failed: {describe_error(cause)}")
        self.table = table


@dataclass
class _SnapshotJob:
    """A table snapshotted in the background, and the keys its events changed meanwhile."""

    spec: TableSpec
    keys: set[tuple[bytes | None, ...]] = field(default_factory=set)
    thread: threading.Thread | None = None
    error: str | None = None


@dataclass
class _TablePending:
    """Net changes of one table in the open batch: key -> row values (None: delete)."""

    layout: TableLayout
    rows: dict[tuple[bytes | None, ...], list[bytes | None] | None] = field(default_factory=dict)
    events: int = 0


_NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_QUALIFIED = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_ALTER = re.compile(rf"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.I | re.S)
_ALTER_RENAME = re.compile(rf"\bRENAME\s+(?:TO\s+|AS\s+)?{_QUALIFIED}\s*$", re.I | re.S)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?{_QUALIFIED}", re.I | re.S)
_DROP = re.compile(r"^DROP\s+(?:TEMPORARY\s+)?TABLES?\s+(?:IF\s+EXISTS\s+)?(.+)$", re.I | re.S)
_RENAME = re.compile(r"^RENAME\s+TABLES?\s+(.+)$", re.I | re.S)
_CREATE = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QUALIFIED}", re.I | re.S
)
_INDEX = re.compile(
    rf"^(?:CREATE|DROP)\s+(?:OR\s+REPLACE\s+)?(?:ONLINE\s+)?(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?INDEX\s+.+?\s+ON\s+{_QUALIFIED}",
    re.I | re.S,
)
_COMMENT = re.compile(r"/\*(?!!).*?\*/", re.S)


def _split_name(text: str, default_schema: str) -> tuple[str, str]:
    parts = [p[1:-1].replace("``", "`") if p.startswith("`") else p for p in re.findall(_NAME, text)]
    if len(parts) >= 2:
        return parts[0], parts[-1]
    return default_schema, parts[0]


def parse_ddl(query: str, schema: str) -> list[tuple[str, str, str, str | None]]:
    """``(action, schema, table, other)`` for each table a statement touches.

    Actions: ``alter``, ``truncate``, ``drop``, ``create``, ``rename`` (``other``: the new name).
    Unknown statements give an empty list.
    """
    text = _COMMENT.sub(" ", query).strip()
    for pattern, action in ((_TRUNCATE, "truncate"), (_CREATE, "create"), (_INDEX, "alter")):
        match = pattern.match(text)
        if match:
            return [(action, *_split_name(match.group(1), schema), None)]
    match = _ALTER.match(text)
    if match:
        found_schema, table = _split_name(match.group(1), schema)
        renamed = _ALTER_RENAME.search(text[match.end() :])
        if renamed:
            return [("rename", found_schema, table, _split_name(renamed.group(1), schema)[1])]
        return [("alter", found_schema, table, None)]
    match = _DROP.match(text)
    if match:
        names = re.findall(_QUALIFIED, match.group(1).split("/*")[0])
        words = {"RESTRICT", "CASCADE", "WAIT", "NOWAIT"}
        return [("drop", *_split_name(n, schema), None) for n in names if n.upper() not in words and not n.isdigit()]
    match = _RENAME.match(text)
    if match:
        pairs = re.findall(rf"{_QUALIFIED}\s+TO\s+{_QUALIFIED}", match.group(1), re.I)
        return [("rename", *_split_name(a, schema), _split_name(b, schema)[1]) for a, b in pairs]
    return []


def _key_bytes(key: tuple[Any, ...]) -> tuple[bytes | None, ...]:
    """A key read from the target in the decoder's transport form (exact for integer, text and binary keys)."""
    return tuple(v if isinstance(v, bytes | None) else str(v).encode() for v in key)


class BinlogStream:
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
        self.specs = {s.table.lower(): s for s in specs}
        self.status = status
        self.stop_event = stop_event
        self.metrics = metrics
        self.schema = settings.source.name
        self._active: set[str] = set()  # tables whose snapshot is done: their events apply
        self._failed: set[str] = set()  # tables that could not start this time (reported in health)
        # Tables stopped while streaming (DROP, RENAME away, a refused TRUNCATE, events that cannot be
        # applied): left alone until this process restarts (then snapshotted) or the table is created again.
        self._stopped: set[str] = set()
        self._definitions: dict[str, TableDefinition] = {}
        self._layouts: dict[int, tuple[Any, TableLayout]] = {}
        self._pending: dict[str, _TablePending] = {}
        self._pending_rows = 0
        self._in_transaction = False  # rows of a source transaction whose commit was not seen yet
        self._batch_started: float | None = None
        self._last_commit: CommitRecord | None = None
        self._raw: Any = None  # the open target transaction's DBAPI connection
        self._cursor: Any = None
        self._loader: TargetLoader | None = None
        self._syncer: Any = None
        self._thread: threading.Thread | None = None
        self._added: list[TableSpec] = []
        self._removed: list[str] = []
        self._added_lock = threading.Lock()
        # Row events and rows per table in the open target transaction, for health and metrics.
        self._stats: dict[str, tuple[int, int]] = {}
        # Keys the loader removed because they held a unique value a written row took (see _flush).
        self._displaced: dict[str, list[tuple[Any, ...]]] = {}
        self.position: BinlogPosition | None = None
        self.caught_up = threading.Event()
        self._jobs: dict[str, _SnapshotJob] = {}  # tables added while streaming, being snapshotted
        self._streamed = False  # the first start's snapshots are done: later ones run beside the stream
        self._lease: Any = None  # the target connection holding the stream's GET_LOCK (LEASE_ENABLED)
        self._lease_checked = 0.0

    # ------------------------------------------------------------------ lifecycle
    @property
    def tables(self) -> list[str]:
        return [s.table for s in self.specs.values()]

    def start(self) -> BinlogStream:
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
            if not self._acquire_lease():
                logger.error(
                    "another replica streams the binlog; --once left the binlog tables alone",
                    extra=log_fields("LEASE", "BINLOG"),
                )
                return False
            self._run_once(until_idle=True)
        except TableApplyFailed as exc:
            self._stop_table(exc.table.lower(), str(exc))
            return self.catch_up() and False  # the others still catch up
        except BinlogPositionLost as exc:
            if not self._position_lost(exc):
                return False
            return self.catch_up()
        except SyncError as exc:
            logger.error("%s", describe_error(exc), extra=log_fields("BINLOG", "STREAM"))
            self._fail_all(describe_error(exc))
            return False
        finally:
            self._release_lease()
        return not self._failed and not self._stopped

    # ------------------------------------------------------------------ one stream per source (leases)
    def _lease_name(self) -> str:
        return f"dlt-sync-binlog:{self.settings.target.name}"[:64]

    def _acquire_lease(self) -> bool:
        """With ``LEASE_ENABLED``: hold the stream's named lock on the target (one reader among the
        replicas; another one takes over from the stored position when this one's connection ends)."""
        if not self.settings.lease_enabled:
            return True
        if self._lease is None:
            self._lease = self.engines.target.connect()
        got = self._lease.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self._lease_name(),)).scalar()
        self._lease.rollback()
        self._lease_checked = time.monotonic()
        return bool(got == 1)

    def _confirm_lease(self) -> None:
        if self._lease is None or time.monotonic() - self._lease_checked < LEASE_CHECK_SECONDS:
            return
        self._lease_checked = time.monotonic()
        try:
            held = self._lease.exec_driver_sql(
                "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self._lease_name(),)
            ).scalar()
            self._lease.rollback()
        except SQLAlchemyError as exc:
            self._release_lease()
            raise LeaseLost(f"the binlog stream's lease connection failed: {describe_error(exc)}") from exc
        if held != 1:
            self._release_lease()
            raise LeaseLost("the binlog stream's lease is held by another replica")

    def _release_lease(self) -> None:
        if self._lease is not None:
            self._lease.invalidate()  # closing the session releases GET_LOCK
            self._lease.close()
            self._lease = None

    def _run_forever(self) -> None:
        delay = self.settings.lock_timeout_base_delay
        standing_by = False
        while not self.stop_event.is_set():
            try:
                if not self._acquire_lease():
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
                self._stop_table(exc.table.lower(), str(exc))  # then resume from the stored position
            except BinlogPositionLost as exc:
                if not self._position_lost(exc):
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
                    self._fail_all(describe_error(exc))
                if self.stop_event.wait(delay):
                    break
                delay = min(max(delay * 2, 0.5), self.settings.lock_timeout_max_delay)
        self._release_lease()
        logger.info(
            "binlog stream stopped at %s",
            self.position and self.position.text(),
            extra=log_fields("BINLOG", "SHUTDOWN"),
        )

    def _fail_all(self, message: str) -> None:
        for table in self.tables:
            self.status.table_failed(table, message, "other_errors")

    def _position_lost(self, exc: BinlogPositionLost) -> bool:
        """Report a purged position; True when a new snapshot is taken (``BINLOG_RESNAPSHOT=auto``)."""
        message = str(exc)
        for table in self.tables:
            self.status.binlog_position_lost(table, message)
            if self.metrics is not None:
                self.metrics.binlog_position_lost(table)
        if self.settings.binlog_resnapshot != "auto":
            logger.error(
                "%s; the binlog tables are NOT synced until they are snapshotted again: restart with "
                "BINLOG_RESNAPSHOT=auto (or delete their rows and the '%s' row from _dlt_sync_state)",
                message,
                BINLOG_STREAM_ROW,
                extra=log_fields("BINLOG", "POSITION_LOST"),
            )
            return False
        logger.warning(
            "%s; BINLOG_RESNAPSHOT=auto: taking a new snapshot of %s",
            message,
            ", ".join(self.tables),
            extra=log_fields("BINLOG", "POSITION_LOST"),
        )
        with self.engines.target.begin() as target:
            target.exec_driver_sql(
                "DELETE FROM `_dlt_sync_state` WHERE table_name IN ("
                + ", ".join(["%s"] * (len(self.tables) + 1))
                + ")",
                (BINLOG_STREAM_ROW, *self.tables),
            )
        return True

    # ------------------------------------------------------------------ start: position and snapshots
    def _syncer_instance(self) -> Any:
        if self._syncer is None:
            from dlt_db_sync.pipeline_management.syncer import TableSyncer

            self._syncer = TableSyncer(self.engines, self.settings, self.status, self.stop_event, self.metrics)
            self._syncer.prepare()
        return self._syncer

    def _prepare(self) -> BinlogPosition:
        """The stored stream position (recorded now if there is none) after every snapshot is done."""
        with self.engines.target.begin() as target:
            ensure_state_table(target)
            stored = read_state(target, BINLOG_STREAM_ROW)
        position = BinlogPosition.parse(stored.last_watermark) if stored is not None else None
        with self.engines.source.connect() as source:
            if position is None:
                position = current_position(source)  # first: nothing written after it is missed
                self._store_position(position, 0)
                logger.info("binlog stream starts at %s", position.text(), extra=log_fields("BINLOG", "START"))
            elif not position_available(source, position):
                raise BinlogPositionLost(
                    f"the stored binlog position {position.text()} was purged from the source (binlog file "
                    f"{position.file} is gone)"
                )
        self._active.clear()
        self._failed.clear()
        for spec in list(self.specs.values()):
            if spec.table.lower() in self._stopped or spec.table.lower() in self._jobs:
                continue
            try:
                with self.engines.source.connect() as source:
                    if not table_exists(source, spec.table):
                        raise SchemaError(f"table {spec.table!r} does not exist in the source database")
                with self.engines.target.connect() as target:
                    state = read_state(target, spec.table)
                if state is None or state.pending or BinlogPosition.parse(state.last_watermark) is None:
                    if self._streamed and self._thread is not None:
                        self._start_job(spec)  # the daemon's stream goes on for the others meanwhile
                    else:
                        self._snapshot(spec)
                else:
                    self._activate(spec)
            except (SyncError, SQLAlchemyError) as exc:
                if is_transient(exc) or isinstance(exc, ShutdownRequested):
                    raise
                # One table that cannot start never stops the others.
                self._failed.add(spec.table.lower())
                message = describe_error(exc)
                logger.error("%s: %s", spec.table, message, extra=log_fields("BINLOG", "SNAPSHOT"))
                self.status.table_failed(spec.table, message, "schema_errors")
        return position

    # ------------------------------------------------------------------ snapshots of tables added later
    def _start_job(self, spec: TableSpec) -> None:
        """Snapshot ``spec`` in a thread of its own while the stream applies the other tables.

        Meanwhile the stream notes the keys of the table's row events instead of applying them;
        when the snapshot is done, those rows are re-copied from the source (or removed when the
        source no longer has them) and the table's events apply from there on.
        """
        with self.engines.target.begin() as target:
            mark_pending(target, spec.table, BINLOG_SNAPSHOT_PENDING)
        job = _SnapshotJob(spec)

        def run() -> None:
            from dlt_db_sync.pipeline_management.syncer import TableSyncer

            try:
                syncer = TableSyncer(self.engines, self.settings, self.status, self.stop_event, self.metrics)
                syncer.prepare()
                result = syncer.sync_table(replace(spec, sync_strategy="full_refresh"))
                if not result.ok:
                    job.error = result.error or "failed"
            except Exception as exc:  # noqa: BLE001 - handed to the stream thread, which reports it
                job.error = describe_error(exc)

        job.thread = threading.Thread(target=run, name=f"binlog-snapshot-{spec.table}", daemon=True)
        self._jobs[spec.table.lower()] = job
        logger.info("%s: snapshot started while the stream goes on", spec.table, extra=log_fields("BINLOG", "SNAPSHOT"))
        job.thread.start()

    def _finish_jobs(self) -> None:
        """Activate the tables whose background snapshot finished (between source transactions)."""
        for name, job in list(self._jobs.items()):
            if job.thread is None or job.thread.is_alive():
                continue
            del self._jobs[name]
            spec = job.spec
            if job.error is not None:
                self._stopped.add(name)
                message = f"table {spec.table!r}: binlog snapshot failed: {job.error}"
                logger.error("%s", message, extra=log_fields("BINLOG", "SNAPSHOT"))
                self.status.table_failed(spec.table, message, "schema_errors")
                continue
            self._commit()  # the other tables' rows so far, at their position
            with self.engines.source.connect() as source:
                definition = describe_table(source, spec.table)
            keys = sorted(job.keys, key=repr)
            copied = 0
            if keys:
                with self.engines.source.connect() as source:
                    present = {_key_bytes(k) for k in keys_in(source, spec.table, spec.primary_key, keys)}
                gone = [k for k in keys if k not in present]
                if gone:
                    self._begin()
                    key_columns = [c for c in (definition.column(k) for k in spec.primary_key) if c is not None]
                    self._delete_keys(spec.table, key_columns, gone)
                    self._raw.commit()
                    self._close_transaction()
                copied = copy_rows(
                    self.engines,
                    self.settings,
                    self.stop_event,
                    self._syncer_instance().context.load_path,
                    definition,
                    spec.primary_key,
                    [k for k in keys if k in present],
                    spec.sanitize or self.settings.sanitize_policy,
                )
            position = self.position.text() if self.position is not None else None
            with self.engines.target.begin() as target:
                mark_done(target, spec.table, copied, position)
            self._activate(spec)
            logger.info(
                "%s: snapshot done; %d row(s) changed meanwhile re-copied; its events apply from %s",
                spec.table,
                len(keys),
                position,
                extra=log_fields("BINLOG", "SNAPSHOT"),
            )

    def _store_position(self, position: BinlogPosition, rows: int) -> None:
        with self.engines.target.begin() as target:
            target.exec_driver_sql(write_position_sql(Dialect.of(target)), (BINLOG_STREAM_ROW, rows, position.text()))

    def _activate(self, spec: TableSpec) -> None:
        with self.engines.source.connect() as source:
            self._definitions[spec.table.lower()] = describe_table(source, spec.table)
        self._active.add(spec.table.lower())
        self._failed.discard(spec.table.lower())
        self._layouts.clear()

    def _snapshot(self, spec: TableSpec) -> None:
        """Load ``spec`` with the full-refresh path, recording the position taken before it."""
        if self.stop_event.is_set():
            raise ShutdownRequested("shutdown requested before a binlog snapshot")
        with self.engines.source.connect() as source:
            start = current_position(source)
        with self.engines.target.begin() as target:
            mark_pending(target, spec.table, BINLOG_SNAPSHOT_PENDING)
        logger.info("%s: binlog snapshot from %s", spec.table, start.text(), extra=log_fields("BINLOG", "SNAPSHOT"))
        result = self._syncer_instance().sync_table(replace(spec, sync_strategy="full_refresh"))
        if not result.ok:
            raise TerminalError(f"table {spec.table!r}: binlog snapshot failed: {result.error}")
        with self.engines.target.begin() as target:
            mark_done(target, spec.table, result.rows, start.text())
        self._activate(spec)

    # ------------------------------------------------------------------ the stream
    def _run_once(self, until_idle: bool) -> None:
        position = self._prepare()
        self.position = position
        goal: BinlogPosition | None = None
        if until_idle:  # --once: everything the source had written once the snapshots were done
            with self.engines.source.connect() as source:
                goal = current_position(source)
            if goal.sort_key() <= position.sort_key():
                return  # nothing written since the stored position
        self._streamed = True
        reader = BinlogReader(self.settings, position, self.schema, self.tables).start()
        stopping_since: float | None = None
        try:
            while True:
                if self.stop_event.is_set():
                    if not self._in_transaction:
                        self._commit()
                        return
                    stopping_since = stopping_since or time.monotonic()
                    if time.monotonic() - stopping_since > STOP_DRAIN_SECONDS:
                        self._rollback()
                        return
                self._confirm_lease()
                if self._jobs and not self._in_transaction:
                    self._finish_jobs()
                if self._take_added():
                    self._commit()
                    return  # restart: the reader follows the new table list from the stored position
                try:
                    record = reader.queue.get(timeout=QUEUE_POLL_SECONDS)
                except queue.Empty:
                    if self._due(idle=True):
                        self._commit()
                    continue
                if isinstance(record, ReaderFailed):
                    raise record.error
                if isinstance(record, RowsRecord):
                    self._rows(record)
                elif isinstance(record, CommitRecord):
                    self._in_transaction = False
                    self._last_commit = record
                    if self._batch_started is None:
                        self._batch_started = time.monotonic()  # also position-only batches get written
                    reached = goal is not None and record.position.sort_key() >= goal.sort_key()
                    if reached or self._due(idle=reader.queue.empty()):
                        self._commit()
                    if reached:
                        return
                elif isinstance(record, DdlRecord):
                    self._commit()
                    self._ddl(record)
                    if goal is not None and record.position.sort_key() >= goal.sort_key():
                        return
                elif isinstance(record, IdleRecord):
                    self._commit()
                    self.caught_up.set()
                    if self.position is not None:
                        self.status.binlog_caught_up(self._active_names(), self.position.text())
                        if self.metrics is not None:
                            for table in self._active_names():
                                self.metrics.binlog_caught_up(table)
                    if until_idle:
                        return
        except BaseException:
            self._rollback()
            raise
        finally:
            reader.close()

    def _active_names(self) -> list[str]:
        return [self.specs[t].table for t in self._active if t in self.specs]

    def _take_added(self) -> bool:
        """Apply a changed table list (between source transactions); True when the reader must restart."""
        if self._in_transaction:
            return False
        with self._added_lock:
            added, self._added = self._added, []
            removed, self._removed = self._removed, []
        for name in removed:
            spec = self.specs.pop(name, None)
            self._active.discard(name)
            self._jobs.pop(name, None)
            self._stopped.discard(name)
            if spec is not None:
                logger.info(
                    "%s: removed from the tables file; its binlog events are no longer applied",
                    spec.table,
                    extra=log_fields("BINLOG", "RELOAD"),
                )
        for spec in added:
            self.specs[spec.table.lower()] = spec
        return bool(added or removed)

    def _due(self, idle: bool) -> bool:
        if self._last_commit is None or self._in_transaction or self._batch_started is None:
            return False
        if not self._pending and not self._stats and self._raw is None:
            # Only transactions of other tables: the position is written now and then, not per batch.
            return time.monotonic() - self._batch_started >= max(
                POSITION_ONLY_SECONDS, self.settings.binlog_batch_seconds
            )
        if idle or self._pending_rows >= self.settings.binlog_batch_rows:
            return True
        return time.monotonic() - self._batch_started >= self.settings.binlog_batch_seconds

    def _layout(self, record: RowsRecord, spec: TableSpec) -> TableLayout:
        key = id(record.layout_source)
        cached = self._layouts.get(key)
        if cached is not None and cached[0] is record.layout_source:
            return cached[1]
        definition = self._definitions[record.table.lower()]
        layout = build_layout(record.layout_source, definition, spec.primary_key)
        if len(self._layouts) > 256:
            self._layouts.clear()
        self._layouts[key] = (record.layout_source, layout)
        return layout

    def _rows(self, record: RowsRecord) -> None:
        name = record.table.lower()
        self._in_transaction = True
        job = self._jobs.get(name)
        if job is not None:
            self._note_keys(job, record)
            return
        if name not in self._active:
            return
        spec = self.specs[name]
        try:
            self._collect(name, spec, record)
        except (DataError, SchemaError) as exc:
            raise TableApplyFailed(spec.table, exc) from exc
        if self._pending_rows >= self.settings.binlog_batch_rows and self._in_transaction:
            # A large source transaction: write this part into the open target transaction.
            self._flush()

    def _note_keys(self, job: _SnapshotJob, record: RowsRecord) -> None:
        """The keys a row event of a table being snapshotted touches (re-copied when it is done)."""
        try:
            definition = self._definitions.get(record.table.lower())
            if definition is None:
                with self.engines.source.connect() as source:
                    definition = self._definitions[record.table.lower()] = describe_table(source, job.spec.table)
            layout = build_layout(record.layout_source, definition, job.spec.primary_key)
            for images in decode_rows(layout, record.payload, record.kind):
                for image in images:
                    job.keys.add(tuple(image[i] for i in layout.key_indexes))
        except (DataError, SchemaError) as exc:
            raise TableApplyFailed(job.spec.table, exc) from exc

    def _collect(self, name: str, spec: TableSpec, record: RowsRecord) -> None:
        """Decode ``record`` into the net change per key of ``spec``'s pending rows."""
        layout = self._layout(record, spec)
        pending = self._pending.get(name)
        if pending is not None and pending.layout.loaded != layout.loaded:
            self._flush()  # the columns changed within the batch: write what has the old ones
            pending = None
        if pending is None:
            pending = self._pending[name] = _TablePending(layout)
        if self._batch_started is None:
            self._batch_started = time.monotonic()
        keys = layout.key_indexes
        loaded = [i for i, _ in layout.loaded]
        for images in decode_rows(layout, record.payload, record.kind):
            after = images[-1]
            if record.kind == "update":
                before_key = tuple(images[0][i] for i in keys)
                if before_key != tuple(after[i] for i in keys):
                    pending.rows.pop(before_key, None)
                    pending.rows[before_key] = None
            key = tuple(after[i] for i in keys)
            pending.rows.pop(key, None)  # re-inserted at the end: dict order follows the last change
            pending.rows[key] = None if record.kind == "delete" else [after[i] for i in loaded]
            self._pending_rows += 1
        pending.events += 1

    # ------------------------------------------------------------------ writing
    def _begin(self) -> None:
        if self._raw is not None:
            return
        raw = self.engines.target.raw_connection()
        cursor = raw.cursor()
        dialect = Dialect.of(self.engines.target)
        for statement in dialect.statement_limit(self.settings.transaction_timeout):
            cursor.execute(statement)
        cursor.execute("START TRANSACTION")
        self._raw, self._cursor = raw, cursor

    def _loader_instance(self) -> TargetLoader:
        if self._loader is None:
            syncer = self._syncer_instance()
            self._loader = TargetLoader(
                self.engines,
                self.settings,
                self.stop_event,
                syncer.context.load_path,
                sanitize=self.settings.sanitize_policy,
                label="binlog",
                persistent_stage=not syncer.context.capabilities.temporary_tables,
            )
        return self._loader

    def _flush(self) -> None:
        """Write the collected net changes into the open target transaction (no commit)."""
        if not self._pending:
            return
        self._begin()
        loader = self._loader_instance()
        for name, pending in self._pending.items():
            try:
                self._write_table(loader, name, pending)
            except (DataError, SchemaError) as exc:
                raise TableApplyFailed(self.specs[name].table, exc) from exc
        self._stats_pending(self._pending)
        self._pending = {}
        self._pending_rows = 0

    def _write_table(self, loader: TargetLoader, name: str, pending: _TablePending) -> None:
        """Deletes, then upserts, of one table's net changes, on the open target transaction."""
        spec = self.specs[name]
        columns = pending.layout.loaded_columns
        deletes = [k for k, v in pending.rows.items() if v is None]
        upserts = [v for v in pending.rows.values() if v is not None]
        key_columns = [pending.layout.columns[i] for i in pending.layout.key_indexes]
        definition = self._definitions[name]
        key_defs = [definition.column(c.name) for c in key_columns]
        if deletes:
            self._delete_keys(spec.table, [c for c in key_defs if c is not None], deletes)
        if upserts:
            chunk = pa.table(
                {c.name: pa.array([row[i] for row in upserts], type=pa.binary()) for i, c in enumerate(columns)}
            )
            loader.displaced_keys.clear()
            loader.upsert_in_transaction(self._cursor, spec.table, columns, spec.primary_key, chunk)
            # A removed row whose key is in this batch was written again by the upsert. Any other
            # one held a unique value the stream had not released (a target that differed from
            # the source, or a replay after the snapshot): re-copied from the source after the commit.
            written = {k for k, v in pending.rows.items() if v is not None}
            others = [k for k in loader.displaced_keys if _key_bytes(k) not in written]
            if others:
                self._displaced.setdefault(name, []).extend(others)

    def _stats_pending(self, pending: dict[str, _TablePending]) -> None:
        for name, table in pending.items():
            events, rows = self._stats.get(name, (0, 0))
            self._stats[name] = (events + table.events, rows + len(table.rows))

    def _delete_keys(self, table: str, key_columns: Sequence[Column], keys: Sequence[tuple[bytes | None, ...]]) -> None:
        match = " AND ".join(f"{q(c.name)} = {comparable_expression(c, '%s')}" for c in key_columns)
        for start in range(0, len(keys), DELETE_BATCH):
            part = keys[start : start + DELETE_BATCH]
            where = " OR ".join(f"({match})" for _ in part)
            self._cursor.execute(f"DELETE FROM {q(table)} WHERE {where}", [v for key in part for v in key])

    def _commit(self) -> None:
        """Write the batch and the position after its last source transaction; commit both at once."""
        commit = self._last_commit
        if commit is None or self._in_transaction:
            return
        started = time.monotonic()
        self._displaced = {}
        with self.engines.write_slot(self.stop_event):
            self._flush()
            self._begin()
            rows = sum(rows for _, rows in self._stats.values())
            self._cursor.execute(
                write_position_sql(Dialect.of(self.engines.target)), (BINLOG_STREAM_ROW, rows, commit.position.text())
            )
            self._raw.commit()
            self._close_transaction()
        self.position = commit.position
        self._last_commit = None
        self._batch_started = None
        lag = max(time.time() - commit.timestamp, 0.0)
        source_time = datetime.fromtimestamp(commit.timestamp, UTC)
        for name, (events, count) in self._stats.items():
            table = self.specs[name].table
            self.status.binlog_applied(table, commit.position.text(), lag, events, count, source_time)
            if self.metrics is not None:
                self.metrics.binlog_applied(table, events, count, lag)
        self._stats = {}
        if self.metrics is not None:
            self.metrics.observe_binlog_batch(time.monotonic() - started)
        for name, keys in self._displaced.items():
            self._recopy(name, keys)

    def _recopy(self, name: str, keys: list[tuple[Any, ...]]) -> None:
        spec = self.specs[name]
        logger.warning(
            "%s: %d target row(s) held unique values the source has released; re-copied from the source",
            spec.table,
            len(keys),
            extra=log_fields("BINLOG", "UNIQUE_KEYS"),
        )
        copy_rows(
            self.engines,
            self.settings,
            self.stop_event,
            self._syncer_instance().context.load_path,
            self._definitions[name],
            spec.primary_key,
            keys,
            spec.sanitize or self.settings.sanitize_policy,
        )

    def _rollback(self) -> None:
        self._pending = {}
        self._pending_rows = 0
        self._stats = {}
        self._last_commit = None
        self._batch_started = None
        self._in_transaction = False
        if self._raw is not None:
            try:
                self._raw.rollback()
            except Exception as exc:  # noqa: BLE001 - the connection is broken; it is discarded below
                logger.debug("rollback failed: %s", exc, extra=log_fields("BINLOG", "ROLLBACK"))
            self._raw.invalidate()
            self._close_transaction()

    def _close_transaction(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
        if self._raw is not None:
            self._raw.close()
        self._raw = self._cursor = None

    # ------------------------------------------------------------------ DDL
    def _ddl(self, record: DdlRecord) -> None:
        actions = [a for a in parse_ddl(record.query, record.schema) if a[1].lower() == self.schema.lower()]
        handled = False
        for action, _schema, table, other in actions:
            name = table.lower()
            if action == "rename" and other is not None:
                if name in self._active:
                    self._stop_table(name, f"renamed to {other!r} in the source")
                    handled = True
                if other.lower() in self.specs:
                    self._resnapshot(other.lower(), f"{table!r} was renamed to it")
                    handled = True
                continue
            if name not in self.specs:
                continue
            handled = True
            if action == "create":
                self._resnapshot(name, "created again in the source")
            elif name not in self._active:
                continue
            elif action == "alter":
                self._evolve(name)
            elif action == "truncate":
                self._truncate(name)
            elif action == "drop":
                self._stop_table(name, "dropped in the source")
        if handled:
            self._store_position(record.position, 0)
            self.position = record.position

    def _evolve(self, name: str) -> None:
        spec = self.specs[name]
        with self.engines.source.connect() as source, self.engines.target.connect() as target:
            definition, changes = ensure_target_table(source, target, spec.table)
            target.commit()
            if changes.unique_keys_to_add:
                add_unique_keys(target, spec.table, changes.unique_keys_to_add)
        self._definitions[name] = definition
        self._layouts.clear()
        self._loader = None  # it caches the unique keys and columns of the table
        logger.info(
            "%s: schema change in the binlog applied to the target (added %s, widened %s)",
            spec.table,
            changes.added or "-",
            changes.widened or "-",
            extra=log_fields("BINLOG", "DDL"),
        )

    def _truncate(self, name: str) -> None:
        spec = self.specs[name]
        with self.engines.target.connect() as target:
            rows = int(target.exec_driver_sql(f"SELECT COUNT(*) FROM {q(spec.table)}").scalar() or 0)
            try:
                check_deletes(
                    spec, self.settings, target_rows=rows, deleting=rows, source_rows=0, what="TRUNCATE from the binlog"
                )
            except MassDeleteRefused as exc:
                self.status.delete_refused(spec.table, str(exc))
                if self.metrics is not None:
                    self.metrics.delete_refused(spec.table)
                self._stop_table(name, str(exc))
                return
            target.exec_driver_sql(f"TRUNCATE TABLE {q(spec.table)}")
        logger.info("%s: TRUNCATE applied (%d rows)", spec.table, rows, extra=log_fields("BINLOG", "DDL"))

    def _stop_table(self, name: str, reason: str) -> None:
        """Stop applying events of a table (target kept); the next start takes a new snapshot."""
        spec = self.specs[name]
        self._active.discard(name)
        self._stopped.add(name)
        with self.engines.target.begin() as target:
            mark_pending(target, spec.table, BINLOG_SNAPSHOT_PENDING)
        message = (
            f"table {spec.table!r}: {reason}; its binlog events are no longer applied and the target table is "
            "kept as it is; a new snapshot is taken at the next start (or when it is created again)"
        )
        logger.error("%s", message, extra=log_fields("BINLOG", "DDL"))
        self.status.table_failed(spec.table, message, "schema_errors")

    def _resnapshot(self, name: str, reason: str) -> None:
        spec = self.specs[name]
        logger.warning("%s: %s; taking a new snapshot", spec.table, reason, extra=log_fields("BINLOG", "DDL"))
        self._active.discard(name)
        self._stopped.discard(name)
        self._snapshot(spec)
