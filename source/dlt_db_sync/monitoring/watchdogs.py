"""Background watchdog (TRD 5.3.2, 11.1.2): pools, staging usage, connectivity and long queries.

Every ``WATCHDOG_INTERVAL`` seconds the :class:`Watchdog` thread logs a warning when a connection
pool is more than 80 % in use, measures the staging directory for the health endpoint, records
whether each database can be reached (so health turns ``unhealthy`` without waiting for a sync
to fail), and looks for queries of this daemon running longer than ``LONG_QUERY_SECONDS``
(killing them when ``KILL_LONG_QUERIES`` is on). "Of this daemon" means: issued on a connection whose
``CONNECTION_ID()`` was recorded by :func:`track_connections` when our pool opened it. Other
clients' queries, even of the same user, are never logged or touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from dlt_db_sync.config.settings import DatabaseSettings, Settings
from dlt_db_sync.database.engines import Engines, connect_args, pool_status, sqlalchemy_url
from dlt_db_sync.error_handling.errors import (
    KILLED_BY_DAEMON_KEY,
    QUERY_INTERRUPTED,
    describe_error,
    mysql_error_code,
    own_kill_error,
)
from dlt_db_sync.monitoring.resources import StagingMonitor
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.utils.logging_setup import log_fields, mask_secrets

logger = logging.getLogger("dlt_sync.watchdog")

POOL_WARNING_PERCENT = 80.0
SQL_PREVIEW_CHARS = 200
CONNECTION_ID_KEY = "dlt_sync_connection_id"
# Errors meaning "this account may not look at or kill these threads": worth one warning, not a
# warning every interval. The watchdog keeps running; the sync is not affected.
PRIVILEGE_ERROR_CODES: dict[int, str] = {
    1227: "access denied; the PROCESS (or CONNECTION ADMIN) privilege is missing",
    1142: "command denied to user",
    1044: "access denied to the database",
    1095: "you are not the owner of the thread",
}
LONG_QUERY_SQL = sa.text(
    "SELECT ID, USER, TIME, INFO FROM information_schema.PROCESSLIST WHERE COMMAND='Query' AND TIME > :limit"
)


class OwnConnections:
    """Thread-safe set of server connection ids (``CONNECTION_ID()``) our pool has open."""

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set(ids)
        self._infos: dict[int, dict[Any, Any]] = {}  # connection id -> its pool record's info dict

    def add(self, connection_id: int, info: dict[Any, Any] | None = None) -> None:
        """Record a connection opened by this daemon (``info``: its pool record's info dict)."""
        with self._lock:
            self._ids.add(int(connection_id))
            if info is not None:
                self._infos[int(connection_id)] = info

    def remove(self, connection_id: int) -> None:
        """Forget a connection (closed, invalidated or detached from the pool)."""
        with self._lock:
            self._ids.discard(int(connection_id))
            self._infos.pop(int(connection_id), None)

    def mark_killed(self, connection_id: int, killed: bool = True) -> None:
        """Mark (or unmark) the connection whose query the watchdog kills: its 1317 is not retried."""
        with self._lock:
            info = self._infos.get(int(connection_id))
            if info is None:
                return
            if killed:
                info[KILLED_BY_DAEMON_KEY] = True
            else:
                info.pop(KILLED_BY_DAEMON_KEY, None)

    def ids(self) -> frozenset[int]:
        """A copy of the recorded ids."""
        with self._lock:
            return frozenset(self._ids)

    def __contains__(self, connection_id: object) -> bool:
        with self._lock:
            return connection_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


def track_connections(engine: Engine, registry: OwnConnections) -> None:
    """Record in ``registry`` the ``CONNECTION_ID()`` of every DBAPI connection ``engine`` opens.

    Call it right after creating the engine: connections opened before are not tracked (so the
    watchdog will never kill their queries). The listeners survive ``engine.dispose()``.
    """

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT CONNECTION_ID()")
                row = cursor.fetchone()
            finally:
                cursor.close()
        except Exception as exc:  # noqa: BLE001 - tracking must never make a connect fail
            logger.warning(
                "cannot read CONNECTION_ID() of a new connection (%s); its queries will not be watched",
                describe_error(exc),
                extra=log_fields("WATCHDOG", "CONNECTION_TRACKING"),
            )
            return
        connection_id = int(row[0])
        connection_record.info[CONNECTION_ID_KEY] = connection_id
        registry.add(connection_id, connection_record.info)

    def forget(dbapi_connection: Any, connection_record: Any, *_args: Any) -> None:
        connection_id = connection_record.info.pop(CONNECTION_ID_KEY, None) if connection_record else None
        if connection_id is not None:
            registry.remove(connection_id)

    def on_checkin(_dbapi_connection: Any, connection_record: Any) -> None:
        # A kill that arrived after its query ended must not mark a later, unrelated 1317.
        if connection_record is not None:
            connection_record.info.pop(KILLED_BY_DAEMON_KEY, None)

    def on_error(context: Any) -> BaseException | None:
        # Only a 1317 looks at the connection: any other error (a lost connection) passes untouched.
        if mysql_error_code(context.original_exception) != QUERY_INTERRUPTED:
            return None
        connection = context.connection
        if connection is None or connection.closed or connection.invalidated:
            return None
        return own_kill_error(context.original_exception, connection.info)

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "checkin", on_checkin)
    event.listen(engine, "handle_error", on_error, retval=True)
    event.listen(engine, "close", forget)
    event.listen(engine, "invalidate", forget)
    # A detached connection is no longer ours to manage: forgetting it errs on the side of never
    # killing something we do not control.
    event.listen(engine, "detach", forget)


def track_engines(engines: Engines) -> dict[str, OwnConnections]:
    """:func:`track_connections` for both engines; returns ``{"source": ..., "target": ...}``."""
    registries = {"source": OwnConnections(), "target": OwnConnections()}
    track_connections(engines.source, registries["source"])
    track_connections(engines.target, registries["target"])
    return registries


class Watchdog(threading.Thread):
    """Periodic pool, staging, connectivity and long-query checks; stop it with :meth:`stop`.

    Connectivity and long queries are checked over an unpooled connection of its own, so the
    checks still work when the sync has exhausted the pool, and that connection is never in
    ``own_connections`` (the watchdog cannot kill itself).
    """

    def __init__(
        self,
        settings: Settings,
        status: SyncStatus,
        engines_provider: Callable[[], Engines | None],
        own_connections: Mapping[str, OwnConnections],
        stop_event: threading.Event | None = None,
        staging: StagingMonitor | None = None,
    ) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.settings = settings
        self.status = status
        self.engines_provider = engines_provider
        self.own_connections = own_connections
        self.stop_event = stop_event or threading.Event()
        self.staging = staging or StagingMonitor(settings.file_staging_dir, status.set_staging_usage)
        self.interval = max(settings.watchdog_interval, 0.1)
        self._probes: dict[str, Engine] = {}
        self._privilege_warned: set[str] = set()
        self._failing: set[str] = set()

    # ----------------------------------------------------------------- thread
    def run(self) -> None:
        """Check, then wait ``WATCHDOG_INTERVAL`` (interrupted at once by the stop event)."""
        logger.info(
            "every %.0fs: pool use, staging usage, connectivity, queries over %.0fs%s",
            self.interval,
            self.settings.long_query_seconds,
            " (killed)" if self.settings.kill_long_queries else " (logged)",
            extra=log_fields("WATCHDOG", "STARTUP"),
        )
        try:
            while not self.stop_event.is_set():
                try:
                    self.check_once()
                except Exception:  # noqa: BLE001 - one broken round must not end the watchdog
                    logger.exception("check round failed", extra=log_fields("WATCHDOG", "MONITORING"))
                if self.stop_event.wait(self.interval):
                    break
        finally:
            for probe in self._probes.values():
                probe.dispose()
            self._probes.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def check_once(self) -> None:
        """One round of checks; each failure is logged and the other checks still run."""
        self.staging.refresh()
        try:
            engines = self.engines_provider()
        except Exception:  # noqa: BLE001 - keep watching; the provider's failure is logged
            logger.exception("engines provider failed", extra=log_fields("WATCHDOG", "MONITORING"))
            engines = None
        for role in ("source", "target"):
            if engines is not None:
                self.check_pool(role, getattr(engines, role))
            self.check_database(role)

    # ----------------------------------------------------------------- pools
    def check_pool(self, role: str, engine: Engine) -> dict[str, Any] | None:
        """Warn when ``role``'s pool is more than 80 % in use; returns the pool status."""
        try:
            state = pool_status(engine)
        except Exception:  # noqa: BLE001 - a broken pool object must not stop the other checks
            logger.exception("cannot read the %s pool status", role, extra=log_fields("CONNECTION_POOL", "MONITORING"))
            return None
        logger.debug(
            "%s pool status - Size: %s, Checked out: %s, Overflow: %s",
            role, state["pool_size"], state["checked_out"], state["overflow"],extra=log_fields("CONNECTION_POOL", "MONITORING")
        )  # fmt: skip
        if state["utilization_percent"] > POOL_WARNING_PERCENT:
            logger.warning(
                "%s pool utilization %.1f%% above %.0f%% "
                "(size %s, checked out %s, overflow %s)",
                role, state["utilization_percent"], POOL_WARNING_PERCENT,
                state["pool_size"], state["checked_out"], state["overflow"],extra=log_fields("CONNECTION_POOL", "MONITORING")
            )  # fmt: skip
        return state

    # ----------------------------------------------------------------- long queries
    def _probe(self, role: str) -> Engine:
        if role not in self._probes:
            db: DatabaseSettings = getattr(self.settings, role)
            self._probes[role] = sa.create_engine(
                sqlalchemy_url(db), poolclass=NullPool, connect_args=connect_args(db, self.settings)
            )
        return self._probes[role]

    def check_database(self, role: str) -> list[int]:
        """Connect to ``role`` and record in the status whether it is reachable (what makes the health
        endpoint say ``unhealthy`` even while no sync runs), then check its long queries.

        Returns the connection ids of our queries found running too long.
        """
        try:
            conn = self._probe(role).connect()
        except Exception as exc:  # noqa: BLE001 - an unreachable database is a finding, not a crash
            self.status.set_database_status(role, False, describe_error(exc))
            self._failed(role, "CONNECTIVITY", f"{role} database unreachable", exc)
            return []
        self.status.set_database_status(role, True)
        self._recovered(role, "CONNECTIVITY", f"{role} database reachable again")
        with conn:
            return self.check_long_queries(role, conn)

    def check_long_queries(self, role: str, conn: sa.Connection) -> list[int]:
        """Log (and kill, when enabled) our queries on ``role`` running too long; returns their ids."""
        registry = self.own_connections.get(role)
        if self.settings.long_query_seconds <= 0 or not registry:
            return []
        found: list[int] = []
        try:
            rows = conn.execute(LONG_QUERY_SQL, {"limit": self.settings.long_query_seconds}).fetchall()
            for row in rows:
                thread_id = int(row.ID)
                if thread_id not in registry:
                    continue  # another client's query: none of our business
                found.append(thread_id)
                self._handle_long_query(conn, role, thread_id, row.TIME, row.INFO, registry)
        except Exception as exc:  # noqa: BLE001 - the watchdog must outlive database trouble
            if mysql_error_code(exc) in PRIVILEGE_ERROR_CODES:
                self._privilege_problem(role, exc)
            else:
                self._failed(role, "LONG_QUERY", f"{role} long-query check failed", exc)
            return found
        self._recovered(role, "LONG_QUERY", f"{role} long-query check works again")
        return found

    def _handle_long_query(
        self, conn: sa.Connection, role: str, thread_id: int, seconds: Any, sql: str | None, registry: OwnConnections
    ) -> None:
        # Mask before cutting, so a cut cannot split a password out of its pattern.
        preview = mask_secrets((sql or "")[: SQL_PREVIEW_CHARS * 10])[:SQL_PREVIEW_CHARS]
        logger.warning(
            "%s connection %d has run a query for %ss (limit %.0fs): %s",
            role, thread_id, seconds, self.settings.long_query_seconds, preview,extra=log_fields("WATCHDOG", "LONG_QUERY")
        )  # fmt: skip
        if not self.settings.kill_long_queries:
            return
        if thread_id not in registry:  # closed since the SELECT: its id is no longer ours
            return
        registry.mark_killed(thread_id)  # before the KILL: the interrupted statement may fail at once
        try:
            conn.exec_driver_sql(f"KILL QUERY {thread_id:d}")
        except Exception as exc:  # noqa: BLE001 - report and keep going with the next query
            registry.mark_killed(thread_id, killed=False)
            code = mysql_error_code(exc)
            if code in PRIVILEGE_ERROR_CODES:
                self._privilege_problem(role, exc)
            else:
                logger.error(
                    "cannot kill %s connection %d's query: %s",
                    role, thread_id, describe_error(exc),extra=log_fields("WATCHDOG", "LONG_QUERY")
                )  # fmt: skip
            return
        logger.warning(
            "killed the query of %s connection %d", role, thread_id, extra=log_fields("WATCHDOG", "LONG_QUERY")
        )

    def _privilege_problem(self, role: str, exc: BaseException) -> None:
        if role in self._privilege_warned:
            logger.debug("%s: %s", role, describe_error(exc), extra=log_fields("WATCHDOG", "LONG_QUERY"))
            return
        self._privilege_warned.add(role)
        logger.warning(
            "%s: %s; long queries cannot be watched or killed by this account "
            "(grant PROCESS to see them); the sync itself is not affected. Logged once.",
            role, describe_error(exc),extra=log_fields("WATCHDOG", "LONG_QUERY")
        )  # fmt: skip

    def _failed(self, role: str, operation: str, what: str, exc: BaseException) -> None:
        # Once per failure streak: while a database is down the sync loop reports it too.
        key = f"{role}:{operation}"
        if key in self._failing:
            logger.debug("%s again: %s", what, describe_error(exc), extra=log_fields("WATCHDOG", operation))
            return
        self._failing.add(key)
        logger.warning(
            "%s: %s (repeats logged at DEBUG)", what, describe_error(exc), extra=log_fields("WATCHDOG", operation)
        )

    def _recovered(self, role: str, operation: str, what: str) -> None:
        key = f"{role}:{operation}"
        if key in self._failing:
            self._failing.discard(key)
            logger.info("%s", what, extra=log_fields("WATCHDOG", operation))
