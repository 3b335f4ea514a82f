"""One exception hierarchy and the classification of driver errors by MySQL error code.

Transient errors (lock waits, deadlocks, lost connections, pool exhaustion) are retried (see
:mod:`dlt_db_sync.error_handling.retry`); terminal errors (access denied, missing table, bad
config) are not. Classification reads the numeric MySQL error code from the driver exception,
never the message.
"""

from __future__ import annotations

from typing import Any

# MySQL / MariaDB error codes, each with why it is (or is not) worth retrying.
TRANSIENT_ERROR_CODES: dict[int, str] = {
    1205: "lock wait timeout exceeded (another session holds the rows)",
    1213: "deadlock found; the transaction was rolled back and can be retried",
    1040: "too many connections on the server",
    1158: "network read error (communication packets)",
    1159: "network read timeout",
    1160: "network write error",
    1161: "network write timeout",
    2003: "cannot connect to the server (down or restarting)",
    2006: "server has gone away",
    2013: "lost connection to the server during a query",
    2014: "commands out of sync after a broken connection",
    2055: "lost connection to the server (system error)",
    1927: "connection was killed (server shutdown or KILL)",
    1053: "server shutdown in progress",
    3024: "query execution was interrupted, maximum statement execution time exceeded",
    1969: "query execution was interrupted (max_statement_time exceeded)",
    # Retried only when someone else killed the query: see own_kill_error.
    1317: "query execution was interrupted (KILL QUERY from another session)",
}
QUERY_INTERRUPTED = 1317
# Key in a pooled connection's ``info`` dict: the watchdog is about to KILL QUERY on it.
KILLED_BY_DAEMON_KEY = "dlt_sync_killed_by_watchdog"
CONNECTION_ERROR_CODES = frozenset({2003, 2006, 2013, 2014, 2055, 1927, 1053, 1158, 1159, 1160, 1161})
TERMINAL_ERROR_CODES: dict[int, str] = {
    1044: "access denied to the database",
    1045: "access denied (wrong user or password)",
    1142: "command denied to user (missing privilege)",
    1146: "table does not exist",
    1054: "unknown column",
    1049: "unknown database",
    1064: "SQL syntax error",
    1406: "data too long for column",
    1292: "incorrect value for a typed column",
    1264: "value out of range for column",
    1366: "incorrect value for column",
    3750: "table without a primary key refused by the target's sql_require_primary_key (MySQL 8.0.13+)",
    1236: "the source cannot send the requested binlog position (purged or never written)",
}
# Error 1236 (ER_MASTER_FATAL_ERROR_READING_BINLOG): the binlog file or position asked for is gone.
BINLOG_POSITION_GONE = 1236


class SyncError(Exception):
    """Root of every error this daemon raises on purpose."""


class TransientError(SyncError):
    """An error that may go away when retried (marker)."""


class TerminalError(SyncError):
    """An error retrying cannot fix (marker)."""


class ConfigError(TerminalError):
    """Configuration (environment or tables.json) cannot be used; the message says what to fix."""


class SchemaError(TerminalError):
    """Source and target table definitions are incompatible; the message says what to do."""


class DataError(TerminalError):
    """A value cannot be stored in the target under the table's sanitization policy."""


class ExtractionBackendError(TerminalError):
    """The extraction backend itself broke (a Rust panic inside connectorx); pyarrow can read the table."""


class StagingError(TerminalError):
    """The file-staging directory cannot be used (not writable, disk full)."""


class BinlogPrerequisiteError(TerminalError):
    """The source cannot serve binlog change capture (settings or grants); the message lists what is missing."""


class BinlogPositionLost(TerminalError):
    """The stored binlog position is no longer on the source (purged); the table needs a new snapshot."""


class ShutdownRequested(SyncError):
    """Raised inside retries/waits when the daemon was asked to stop."""


class DatabaseError(SyncError):
    """A classified driver error; ``code`` is the MySQL error code (or None)."""

    def __init__(self, message: str, code: int | None, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


def mysql_error_code(exc: BaseException | None) -> int | None:
    """The MySQL error code carried by ``exc`` or any exception it wraps, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DatabaseError):
            return exc.code
        orig = getattr(exc, "orig", None)  # SQLAlchemy DBAPIError wraps the driver error
        for candidate in (exc, orig):
            args = getattr(candidate, "args", None)
            if candidate is not None and args and isinstance(args[0], int):
                module = type(candidate).__module__
                if module.startswith(("pymysql", "MySQLdb", "mysql")):
                    return args[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _is_pool_timeout(exc: BaseException) -> bool:
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    return isinstance(exc, PoolTimeoutError)


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` may succeed (lock, deadlock, lost connection, busy pool)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TerminalError):
            return False
        if isinstance(current, TransientError):
            return True
        if isinstance(current, DatabaseError):
            return current.transient
        if _is_pool_timeout(current):
            return True
        current = current.__cause__ or current.__context__
    code = mysql_error_code(exc)
    return code in TRANSIENT_ERROR_CODES


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the connection itself is gone (the pool should be rebuilt)."""
    return mysql_error_code(exc) in CONNECTION_ERROR_CODES


def describe_error(exc: BaseException) -> str:
    """One credential-free line: the MySQL code and its meaning when known, else the type.

    Errors raised on purpose (:class:`SyncError`) already carry a message that says what to fix
    (a classified :class:`DatabaseError` names the database and the code), so it is kept as is.
    """
    if isinstance(exc, SyncError):
        return str(exc)
    code = mysql_error_code(exc)
    if code is not None:
        meaning = TRANSIENT_ERROR_CODES.get(code) or TERMINAL_ERROR_CODES.get(code)
        driver_message = ""
        current: BaseException | None = exc
        while current is not None:
            orig = getattr(current, "orig", None)
            source = orig if orig is not None else current
            args: tuple[Any, ...] = tuple(getattr(source, "args", ()))
            if len(args) >= 2 and isinstance(args[0], int):
                driver_message = str(args[1])
                break
            current = current.__cause__ or current.__context__
        text = f"MySQL error {code}"
        if meaning:
            text += f" ({meaning})"
        if driver_message:
            text += f": {driver_message}"
        return text
    return f"{type(exc).__name__}: {exc}"


def own_kill_error(exc: BaseException, info: Any) -> DatabaseError | None:
    """A terminal error for ``exc`` when it is 1317 and the daemon's watchdog killed the query.

    ``info`` is the connection's ``info`` dict, where the watchdog marks a connection right
    before its ``KILL QUERY`` (the mark is consumed here). Another session's kill is left to
    the usual classification, which retries 1317.
    """
    if mysql_error_code(exc) != QUERY_INTERRUPTED or not isinstance(info, dict):
        return None
    if not info.pop(KILLED_BY_DAEMON_KEY, False):
        return None
    return DatabaseError(
        f"MySQL error 1317: the watchdog killed this query after LONG_QUERY_SECONDS (KILL_LONG_QUERIES); "
        f"not retried: {describe_error(exc)}",
        QUERY_INTERRUPTED,
        transient=False,
    )
