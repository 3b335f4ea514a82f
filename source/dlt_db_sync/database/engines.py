"""SQLAlchemy engines for the source and the target, their session settings, and pool status.

Every connection pins ``time_zone='+00:00'`` so TIMESTAMP values never shift, whatever the
servers' or the container's time zone. Target sessions also pin ``sql_mode`` (strict, so a value
that does not fit fails instead of being silently truncated) and a statement time limit.
Engines are created by :func:`create_engines` and disposed by whoever called it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pymysql
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dlt_db_sync.config.settings import DatabaseSettings, Settings
from dlt_db_sync.error_handling.errors import (
    DatabaseError,
    ShutdownRequested,
    describe_error,
    is_transient,
    mysql_error_code,
)
from dlt_db_sync.utils.logging_setup import MASK, log_fields, mask_secrets

logger = logging.getLogger("dlt_sync.database")


def quote_identifier(name: str) -> str:
    """Backtick-quote an identifier that already passed the identifier pattern."""
    return "`" + name.replace("`", "``") + "`"


def _ssl_args(db: DatabaseSettings) -> dict[str, Any] | None:
    """pymysql's ``ssl`` dict (keys ``ca``, ``cert``, ``key``, ``check_hostname``, ``verify_mode``).

    ``verify_mode`` is always explicit: left out, pymysql skips certificate verification whenever
    no CA file is given (a client certificate alone), even with ``..._SSL_VERIFY=true``; with it,
    the server certificate is checked against ``SSL_CA`` or else the system's trusted CAs.
    """
    if not db.uses_tls:
        return None
    ssl: dict[str, Any] = {}
    if db.ssl_ca:
        ssl["ca"] = db.ssl_ca
    if db.ssl_cert:
        ssl["cert"] = db.ssl_cert
    if db.ssl_key:
        ssl["key"] = db.ssl_key
    ssl["check_hostname"] = db.ssl_verify
    ssl["verify_mode"] = db.ssl_verify
    return ssl


def session_init_sql(db: DatabaseSettings, settings: Settings) -> str:
    """The ``init_command`` run on every new connection of ``db``."""
    statements = ["SET time_zone='+00:00'", "SET NAMES utf8mb4 COLLATE utf8mb4_bin"]
    if db.role == "target":
        mode = settings.target_sql_mode.replace("'", "")
        statements.append(f"SET SESSION sql_mode='{mode}'")
        statements.append(f"SET SESSION innodb_lock_wait_timeout={int(settings.lock_wait_timeout)}")
        statements.append(f"SET SESSION lock_wait_timeout={int(settings.lock_wait_timeout)}")
    else:
        # Large extractions stream for minutes; let the server wait for a slow reader.
        statements.append("SET SESSION net_write_timeout=600")
    return "; ".join(statements)


def connect_args(db: DatabaseSettings, settings: Settings) -> dict[str, Any]:
    """pymysql keyword arguments shared by SQLAlchemy pools and direct connections."""
    args: dict[str, Any] = {
        "connect_timeout": db.connect_timeout,
        "read_timeout": db.read_timeout,
        "write_timeout": db.write_timeout,
        "charset": "utf8mb4",
        "init_command": session_init_sql(db, settings),
        "client_flag": pymysql.constants.CLIENT.MULTI_STATEMENTS,
        "local_infile": db.role == "target",
    }
    ssl = _ssl_args(db)
    if ssl is not None:
        args["ssl"] = ssl
    return args


def sqlalchemy_url(db: DatabaseSettings) -> URL:
    """The SQLAlchemy URL (its ``str()`` masks the password)."""
    return URL.create(
        "mysql+pymysql", username=db.user, password=db.password or None, host=db.host, port=db.port, database=db.name
    )


def connectorx_url(db: DatabaseSettings) -> str:
    """URL for connectorx; contains the password, so it must never be logged."""
    password = quote(db.password, safe="")
    user = quote(db.user, safe="")
    auth = f"{user}:{password}" if db.password else user
    # connectorx's client refuses a row over its own packet limit (the server's max_allowed_packet,
    # 16777216 bytes by default) where pymysql reads any row: rows of several large BLOBs need the
    # protocol's maximum, 1073741824 bytes.
    return f"mysql://{auth}@{db.host}:{db.port}/{quote(db.name, safe='')}?max_allowed_packet=1073741824"


# Connections one table sync holds at once: its own (schema, watermark, state) plus the
# extractor's (source) or the loader's (target). A smaller pool could never finish a table.
CONNECTIONS_PER_TABLE = 2


def minimum_pool(db: DatabaseSettings, settings: Settings) -> int:
    """The fewest connections ``db``'s pool needs: one table sync, plus the lease connection."""
    return CONNECTIONS_PER_TABLE + (1 if db.role == "target" and settings.lease_enabled else 0)


class BoundedHandshakeConnection(pymysql.connections.Connection):  # type: ignore[misc]  # pymysql ships no types
    """A pymysql connection whose greeting and login are bounded by ``connect_timeout``.

    pymysql reads the server greeting with ``read_timeout`` (ten minutes here, for long queries),
    so a host that accepts TCP but never answers (a hung server, a dead proxy or load balancer)
    would block start-up that long. The handshake uses ``connect_timeout`` instead; every later
    read uses ``read_timeout`` again (pymysql re-applies it before each packet).
    """

    def connect(self, sock: Any = None) -> None:
        read_timeout: Any = getattr(self, "_read_timeout")  # noqa: B009 - pymysql's attribute, untyped
        self._read_timeout = self.connect_timeout
        try:
            super().connect(sock)
        finally:
            self._read_timeout = read_timeout


def create_engine(db: DatabaseSettings, settings: Settings) -> Engine:
    """A pooled engine for ``db`` with bounded connect/read timeouts and pre-ping.

    ``POOL_SIZE`` + ``MAX_OVERFLOW`` below :func:`minimum_pool` gets the missing connections as
    overflow (with a warning): a tiny pool makes tables wait for each other, never fail.
    """
    overflow = settings.max_overflow
    needed = minimum_pool(db, settings)
    if settings.pool_size + overflow < needed:
        overflow = needed - settings.pool_size
        logger.warning(
            "%s: POOL_SIZE=%d + MAX_OVERFLOW=%d is below the %d connections one table "
            "sync holds at once; allowing %d overflow connection(s)",
            db.role,
            settings.pool_size,
            settings.max_overflow,
            needed,
            overflow,
            extra=log_fields("CONNECTION_POOL", "CONFIG"),
        )
    engine = sa.create_engine(
        sqlalchemy_url(db),
        pool_size=settings.pool_size,
        max_overflow=overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=True,
        connect_args=connect_args(db, settings),
    )

    @sa.event.listens_for(engine, "do_connect")
    def _bounded_connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        return BoundedHandshakeConnection(*cargs, **cparams)

    keep_parameter_free_sql_literal(engine)
    return engine


def keep_parameter_free_sql_literal(engine: Engine) -> None:
    """Send driver-level SQL without parameters to the server exactly as written.

    SQLAlchemy hands ``exec_driver_sql(sql)`` to pymysql with an empty parameter dict, and pymysql
    then applies ``sql % {}``: a column named ``pct%s`` became ``pct{}`` in DDL. Passing no
    parameters at all makes pymysql leave the text alone, so DDL and other parameter-free
    statements never go through ``%`` formatting. Statements with parameters still escape a
    literal ``%`` as ``%%``; compiled SQLAlchemy constructs (``text()``) escape it themselves.
    """

    @sa.event.listens_for(engine, "before_cursor_execute", retval=True)
    def _literal(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> tuple[str, Any]:
        if not executemany and not parameters and context is not None and context.compiled is None:
            return statement, None
        return statement, parameters


@dataclass
class Engines:
    """The source and target engines plus the write-transaction limiter."""

    source: Engine
    target: Engine
    settings: Settings
    write_slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.write_slots = threading.BoundedSemaphore(self.settings.max_concurrent_transactions)

    def dispose(self) -> None:
        """Close every pooled connection of both engines."""
        self.source.dispose()
        self.target.dispose()

    def rebuild(self, role: str) -> None:
        """Drop the pool of ``role`` after a lost connection; new connections are made lazily."""
        engine = self.source if role == "source" else self.target
        logger.warning("rebuilding the %s connection pool", role, extra=log_fields("CONNECTION_POOL", "RECOVERY"))
        engine.dispose()

    @contextmanager
    def write_slot(self, stop_event: threading.Event) -> Iterator[None]:
        """Hold one of ``MAX_CONCURRENT_TRANSACTIONS`` target write slots."""
        while not self.write_slots.acquire(timeout=0.5):
            if stop_event.is_set():
                raise ShutdownRequested("shutdown requested while waiting for a write slot")
        try:
            yield
        finally:
            self.write_slots.release()


def create_engines(settings: Settings) -> Engines:
    """Create both engines; the caller disposes them with :meth:`Engines.dispose`."""
    return Engines(
        source=create_engine(settings.source, settings),
        target=create_engine(settings.target, settings),
        settings=settings,
    )


def pool_status(engine: Engine) -> dict[str, Any]:
    """Size, checked-out and overflow counts of ``engine``'s pool (no database query)."""
    pool = engine.pool
    size = getattr(pool, "size", lambda: 0)()
    checked_out = getattr(pool, "checkedout", lambda: 0)()
    overflow = max(getattr(pool, "overflow", lambda: 0)(), 0)
    capacity = size + max(getattr(pool, "_max_overflow", 0), 0)
    return {
        "pool_size": size,
        "checked_out": checked_out,
        "overflow": overflow,
        "utilization_percent": round(100.0 * checked_out / capacity, 1) if capacity else 0.0,
    }


def server_allows_local_infile(engine: Engine) -> bool:
    """Whether the target accepts ``LOAD DATA LOCAL INFILE`` from this client."""
    with engine.connect() as conn:
        value = conn.exec_driver_sql("SELECT @@GLOBAL.local_infile").scalar()
    return bool(int(value or 0))


def check_connectivity(engines: Engines) -> None:
    """Open one connection to each database; raise DatabaseError with a credential-free reason."""
    for role, engine in (("source", engines.source), ("target", engines.target)):
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - re-raised as one credential-free line
            db = engines.settings.source if role == "source" else engines.settings.target
            reason = mask_secrets(describe_error(exc))
            if db.password:  # a driver or proxy may echo it in any form, not only inside a URL
                reason = reason.replace(db.password, MASK)
            message = f"cannot connect to the {role} database {db.describe()}: {reason}"
            raise DatabaseError(message, mysql_error_code(exc), transient=is_transient(exc)) from exc
