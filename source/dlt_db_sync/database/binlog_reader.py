"""The replication connection: binlog positions, the source's prerequisites, and a reader that
turns the event stream into ordered records (row changes, commits, DDL) for the applier.

Positions are ``file:position`` pairs at transaction boundaries (the end of a commit event): a
reader started there sees whole transactions only. The GTID of the last transaction is kept for
display; resuming always uses the file and position, which both flavors serve.

One reader per source: it registers as a replica with ``BINLOG_SERVER_ID`` (a second reader with
the same id makes the server drop the first). The connection uses the source's TLS settings.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from dlt_db_sync.config.settings import DatabaseSettings, Settings
from dlt_db_sync.data_processing.binlog_rows import RowsPayload, take_payload
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.database.engines import connect_args
from dlt_db_sync.error_handling.errors import (
    BINLOG_POSITION_GONE,
    BinlogPositionLost,
    DatabaseError,
    describe_error,
    is_transient,
    mysql_error_code,
)

logger = logging.getLogger("dlt_sync.binlog_reader")

HEARTBEAT_SECONDS = 1.0  # the source sends a heartbeat when idle this long: the reader sees stop requests
MIN_RETENTION_SECONDS = 86400  # binlogs kept for less than a day: warned about by --check

_FILE_NUMBER = re.compile(r"\.(\d+)$")


@dataclass(frozen=True)
class BinlogPosition:
    """A point in the source's binlog: the start of the next event to read."""

    file: str
    pos: int
    gtid: str | None = field(default=None, compare=False)

    def sort_key(self) -> tuple[str, int, int]:
        match = _FILE_NUMBER.search(self.file)
        base = self.file[: match.start()] if match else self.file
        return (base, int(match.group(1)) if match else 0, self.pos)

    def text(self) -> str:
        """``file:pos``, as stored in ``_dlt_sync_state``."""
        return f"{self.file}:{self.pos}"

    @classmethod
    def parse(cls, text: str | None) -> BinlogPosition | None:
        """The position stored as ``file:pos``; None for anything else (e.g. a cursor watermark)."""
        if not text or ":" not in text:
            return None
        name, _, pos = text.rpartition(":")
        if not name or not pos.isdigit() or not _FILE_NUMBER.search(name):
            return None
        return cls(name, int(pos))


def current_position(conn: Connection) -> BinlogPosition:
    """The source's binlog position now (end of the last committed transaction).

    Raises:
        BinlogPrerequisiteError: binary logging is off.
    """
    from dlt_db_sync.error_handling.errors import BinlogPrerequisiteError

    dialect = Dialect.of(conn)
    row = conn.exec_driver_sql(dialect.binlog_status_sql()).fetchone()
    if row is None:
        raise BinlogPrerequisiteError("the source has binary logging off (log_bin=OFF): start it with --log-bin")
    gtid = None
    if dialect.is_mariadb:
        gtid = conn.exec_driver_sql("SELECT @@GLOBAL.gtid_binlog_pos").scalar() or None
    elif len(row) > 4:
        gtid = row[4] or None
    return BinlogPosition(str(row[0]), int(row[1]), str(gtid) if gtid else None)


def binlog_files(conn: Connection) -> list[str]:
    """The binlog files the source still has (``SHOW BINARY LOGS``)."""
    return [str(r[0]) for r in conn.exec_driver_sql("SHOW BINARY LOGS").fetchall()]


def position_available(conn: Connection, position: BinlogPosition) -> bool:
    """Whether the source still has ``position``'s binlog file (False: purged)."""
    return position.file in binlog_files(conn)


@dataclass
class BinlogCheck:
    """What ``--check`` and the start of the stream found about the source."""

    problems: list[str] = field(default_factory=list)  # each one prevents binlog capture
    warnings: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)


_GRANT = re.compile(r"^GRANT\s+(.+?)\s+ON\s+(\S+)\s+TO\s", re.IGNORECASE)


def granted_global_privileges(conn: Connection) -> set[str]:
    """The privileges the current user holds on ``*.*`` (``ALL PRIVILEGES`` expanded to ``ALL``)."""
    privileges: set[str] = set()
    for (line,) in conn.exec_driver_sql("SHOW GRANTS").fetchall():
        match = _GRANT.match(str(line))
        if not match or match.group(2).replace("`", "") != "*.*":
            continue
        for item in match.group(1).split(","):
            name = " ".join(item.split()).upper()
            privileges.add("ALL" if name in {"ALL", "ALL PRIVILEGES"} else name)
    return privileges


def check_binlog_source(conn: Connection, settings: Settings) -> BinlogCheck:
    """Everything binlog capture needs from the source, each missing item as one exact sentence."""
    dialect = Dialect.of(conn)
    names = (
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "binlog_row_metadata",
        "server_id",
        *dialect.binlog_retention_variables,
    )
    listed = ", ".join(f"'{n}'" for n in names)
    variables = {
        str(r[0]).lower(): str(r[1])
        for r in conn.exec_driver_sql(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({listed})").fetchall()
    }
    check = BinlogCheck(variables=variables)
    if variables.get("log_bin", "OFF").upper() != "ON":
        check.problems.append("log_bin is OFF: start the source with --log-bin (binary logging)")
    fmt = variables.get("binlog_format", "").upper()
    if fmt != "ROW":
        check.problems.append(f"binlog_format is {fmt or 'unset'}: set binlog_format=ROW")
    image = variables.get("binlog_row_image", "FULL").upper()
    if image != "FULL":
        check.problems.append(f"binlog_row_image is {image}: set binlog_row_image=FULL (events must carry whole rows)")
    if dialect.has_binlog_row_metadata:
        metadata = variables.get("binlog_row_metadata", "MINIMAL").upper()
        if metadata != "FULL":
            check.problems.append(
                f"binlog_row_metadata is {metadata}: set binlog_row_metadata=FULL "
                "(events name their columns, so rows written before an ALTER TABLE decode correctly)"
            )
    if str(settings.binlog_server_id) == variables.get("server_id"):
        check.problems.append(
            f"BINLOG_SERVER_ID={settings.binlog_server_id} is the source's own server_id: choose another value"
        )
    held = granted_global_privileges(conn)
    if "ALL" not in held:
        options = dialect.binlog_grant_sets()
        if not any(all(p in held for p in option) for option in options):
            wanted = [p for p in options[0] if p not in held]
            check.problems.append(
                f"the source user lacks {', '.join(wanted)}: GRANT {', '.join(options[0])} ON *.* TO the source user"
            )
    retention = _retention_seconds(variables)
    if retention is not None and retention < MIN_RETENTION_SECONDS:
        check.warnings.append(
            f"the source keeps binlogs only {retention / 3600:g}h: a daemon stopped longer loses its position "
            "and needs a new snapshot (BINLOG_RESNAPSHOT); keep them at least a day"
        )
    return check


def _retention_seconds(variables: dict[str, str]) -> float | None:
    """How long the source keeps binlogs, or None when it never expires them."""
    seconds = float(variables.get("binlog_expire_logs_seconds") or 0)
    if seconds > 0:
        return seconds
    days = float(variables.get("expire_logs_days") or 0)
    return days * 86400 if days > 0 else None


def replication_settings(db: DatabaseSettings, settings: Settings) -> dict[str, Any]:
    """pymysql arguments of the replication connection (TLS as the source's pool uses it)."""
    args: dict[str, Any] = {
        "host": db.host,
        "port": db.port,
        "user": db.user,
        "passwd": db.password,
        "connect_timeout": db.connect_timeout,
        # Heartbeats arrive every HEARTBEAT_SECONDS; anything much longer is a dead connection.
        "read_timeout": max(int(HEARTBEAT_SECONDS * 30), 30),
        "write_timeout": db.write_timeout,
    }
    ssl = connect_args(db, settings).get("ssl")
    if ssl is not None:
        args["ssl"] = ssl
    return args


# ------------------------------------------------------------------ records handed to the applier
@dataclass
class RowsRecord:
    """Undecoded rows of one rows event (decoded by the applier, which knows the table's layout)."""

    table: str
    kind: str  # "write", "update" or "delete"
    layout_source: Any  # the library's Table of the event's table map
    payload: RowsPayload
    position: BinlogPosition
    timestamp: int


@dataclass
class CommitRecord:
    """A source transaction ended; ``position`` is where the next one starts."""

    position: BinlogPosition
    timestamp: int


@dataclass
class DdlRecord:
    """A statement outside row events (DDL) on the captured schema."""

    schema: str
    query: str
    position: BinlogPosition
    timestamp: int


@dataclass
class IdleRecord:
    """The source had nothing to send for a heartbeat period: the reader is caught up."""


@dataclass
class ReaderFailed:
    """The reader stopped on an error (raised by the applier)."""

    error: BaseException


Record = RowsRecord | CommitRecord | DdlRecord | IdleRecord | ReaderFailed
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "XA START", "XA END", "XA COMMIT"})


class BinlogReader:
    """Reads the binlog from a position into a bounded queue of records (a thread of its own).

    Row events of tables outside ``tables`` are filtered by the library before any decoding
    (``only_schemas``/``only_tables``); statements of other schemas are dropped here.
    """

    def __init__(
        self,
        settings: Settings,
        start: BinlogPosition,
        schema: str,
        tables: Sequence[str],
        capacity: int = 2000,
    ) -> None:
        self.settings = settings
        self.start_position = start
        self.schema = schema
        self.tables = list(tables)
        self.queue: queue.Queue[Record] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._stream: Any = None

    def start(self) -> BinlogReader:
        self._thread = threading.Thread(target=self._run, name="binlog-reader", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading; the blocked read ends at the next heartbeat at the latest."""
        self._closing.set()
        if self._thread is not None:
            # Drain so a reader blocked on a full queue can see the close request.
            deadline = time.monotonic() + timeout
            while self._thread.is_alive() and time.monotonic() < deadline:
                try:
                    self.queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join(timeout=0.1)

    def _put(self, record: Record) -> bool:
        while not self._closing.is_set():
            try:
                self.queue.put(record, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _open(self) -> Any:
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        return BinLogStreamReader(
            connection_settings=replication_settings(self.settings.source, self.settings),
            server_id=self.settings.binlog_server_id,
            resume_stream=True,
            blocking=True,
            log_file=self.start_position.file,
            log_pos=self.start_position.pos,
            only_events=[
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
                QueryEvent,
                XidEvent,
                RotateEvent,
                HeartbeatLogEvent,
                GtidEvent,
                MariadbGtidEvent,
            ],
            only_schemas=[self.schema],
            only_tables=self.tables or [""],
            slave_heartbeat=HEARTBEAT_SECONDS,
            enable_logging=False,
        )

    def _run(self) -> None:
        from pymysqlreplication.event import GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        kinds: dict[type, str] = {WriteRowsEvent: "write", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}
        gtid: str | None = None
        try:
            self._stream = stream = self._open()
            # Not stopped by the stop event: after a stop request the applier still needs the
            # rest of the open source transaction; it closes the reader when it is done.
            while not self._closing.is_set():
                event = stream.fetchone()
                if event is None:
                    continue
                position = BinlogPosition(stream.log_file, int(event.packet.log_pos), gtid)
                kind = kinds.get(type(event))
                if kind is not None:
                    payload = take_payload(event)
                    table_map = stream.table_map[event.table_id]
                    record: Record = RowsRecord(event.table, kind, table_map, payload, position, event.timestamp)
                elif isinstance(event, XidEvent):
                    record = CommitRecord(position, event.timestamp)
                elif isinstance(event, QueryEvent):
                    query = event.query.strip()
                    if query.upper() in _TRANSACTION_CONTROL:
                        if query.upper() != "COMMIT":
                            continue
                        record = CommitRecord(position, event.timestamp)  # non-transactional tables
                    else:
                        schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema)
                        record = DdlRecord(schema, query, position, event.timestamp)
                elif isinstance(event, (GtidEvent, MariadbGtidEvent)):
                    gtid = str(event.gtid)
                    continue
                elif isinstance(event, HeartbeatLogEvent):
                    record = IdleRecord()
                else:
                    continue
                if not self._put(record):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the applier, which raises it
            self._put(ReaderFailed(classify_stream_error(exc)))
        finally:
            if self._stream is not None:
                self._stream.close()


def classify_stream_error(exc: BaseException) -> BaseException:
    """A purged position becomes :class:`BinlogPositionLost`; driver errors a classified DatabaseError."""
    code = mysql_error_code(exc)
    if code == BINLOG_POSITION_GONE:
        return BinlogPositionLost(f"the source no longer has the stored binlog position: {describe_error(exc)}")
    if code is not None:
        return DatabaseError(f"binlog stream failed: {describe_error(exc)}", code, transient=is_transient(exc))
    return exc
