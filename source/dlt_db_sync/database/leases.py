"""Table leases across replicas with MariaDB/MySQL named locks (``GET_LOCK``) on the target.

Several replicas share one tables.json. Each holds one dedicated target connection; the named
locks it takes there are its leases, and the server releases them when that connection ends,
so a replica that dies (or loses its connection) frees its tables at once. No coordination
service is involved.

* Each replica takes a *slot* lock ``dlt_sync:<db>:replica:<n>``; the number of slot locks in use
  is the number of live replicas.
* A replica keeps at most ``ceil(tables / replicas)`` table locks ``dlt_sync:<db>:table:<name>``,
  takes free ones up to that share (starting at an offset given by its slot, so replicas do not all
  race for the same tables) and releases any excess when replicas join.
* Before syncing a table the lease is confirmed with ``IS_USED_LOCK(name) = CONNECTION_ID()``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence

from sqlalchemy.engine import Connection, Engine

from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.leases")

MAX_REPLICAS = 64


def _lock_name(database: str, kind: str, name: str) -> str:
    text = f"dlt_sync:{database}:{kind}:{name}"
    if len(text) <= 64:
        return text
    # Lock names are limited to 64 characters; keep them unique with a digest.
    return f"dlt_sync:{hashlib.sha1(text.encode()).hexdigest()}"


class LeaseManager:
    """Holds this replica's slot and table leases on one dedicated target connection."""

    def __init__(self, engine: Engine, database: str) -> None:
        self.engine = engine
        self.database = database
        self.conn: Connection | None = None
        self.slot: int | None = None
        self.connection_id: int | None = None
        self.owned: set[str] = set()

    def _connection(self) -> Connection:
        if self.conn is not None:
            try:
                self.conn.exec_driver_sql("SELECT 1")
                return self.conn
            except Exception as exc:  # noqa: BLE001 - a dead lease connection means every lease is gone
                logger.warning(
                    "lease connection failed (%s); all leases are released",
                    type(exc).__name__,
                    extra=log_fields("LEASE", "LOST"),
                )
                self._forget()
        self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.connection_id = int(self.conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
        for slot in range(MAX_REPLICAS):
            if self.conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self._slot_lock(slot),)).scalar() == 1:
                self.slot = slot
                break
        logger.info(
            "slot %s, lease connection id %s", self.slot, self.connection_id, extra=log_fields("LEASE", "REPLICA")
        )
        return self.conn

    def _forget(self) -> None:
        if self.conn is not None:
            try:
                self.conn.invalidate()
                self.conn.close()
            except Exception as exc:  # noqa: BLE001 - the connection is already broken
                logger.debug("%s", exc, extra=log_fields("LEASE", "CLOSE"))
        self.conn = None
        self.slot = None
        self.connection_id = None
        self.owned.clear()

    def _slot_lock(self, slot: int) -> str:
        return _lock_name(self.database, "replica", str(slot))

    def table_lock(self, table: str) -> str:
        """The named lock that leases ``table``."""
        return _lock_name(self.database, "table", table)

    def live_replicas(self, conn: Connection) -> int:
        """How many replicas hold a slot lock right now (at least 1: this one)."""
        checks = ", ".join("IS_USED_LOCK(%s) IS NOT NULL" for _ in range(MAX_REPLICAS))
        row = conn.exec_driver_sql(f"SELECT {checks}", tuple(self._slot_lock(i) for i in range(MAX_REPLICAS))).one()
        return max(1, len([used for used in row if used]))

    def acquire(self, specs: Sequence[TableSpec]) -> list[TableSpec]:
        """Take or keep this replica's fair share of table leases; return the owned tables."""
        conn = self._connection()
        replicas = self.live_replicas(conn)
        share = math.ceil(len(specs) / replicas)
        names = [s.table for s in specs]
        # Release excess leases (replicas joined) so the others can take them this interval.
        for table in sorted(self.owned - set(names)) + sorted(self.owned & set(names))[share:]:
            conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (self.table_lock(table),))
            self.owned.discard(table)
            logger.info(
                "%s (share is %d of %d tables, %d replicas)",
                table,
                share,
                len(names),
                replicas,
                extra=log_fields("LEASE", "RELEASE"),
            )
        offset = ((self.slot or 0) * share) % max(len(names), 1)
        for table in names[offset:] + names[:offset]:
            if len(self.owned) >= share:
                break
            if table in self.owned:
                continue
            if conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self.table_lock(table),)).scalar() == 1:
                self.owned.add(table)
                logger.info("%s (connection id %s)", table, self.connection_id, extra=log_fields("LEASE", "ACQUIRE"))
        return [s for s in specs if s.table in self.owned]

    def confirm(self, table: str) -> bool:
        """Whether this replica still holds the lease of ``table`` (checked on the server)."""
        if self.conn is None or table not in self.owned:
            return False
        holder = self.conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (self.table_lock(table),)).scalar()
        return holder is not None and int(holder) == self.connection_id

    def release_all(self) -> None:
        """Give every lease back (graceful shutdown)."""
        if self.conn is not None:
            try:
                self.conn.exec_driver_sql("SELECT RELEASE_ALL_LOCKS()")
                self.conn.close()
            except Exception as exc:  # noqa: BLE001 - a closed connection has released its locks anyway
                logger.warning(
                    "could not release leases cleanly (%s); the server frees them when the connection ends",
                    type(exc).__name__,
                    extra=log_fields("LEASE", "RELEASE"),
                )
        self.conn = None
        self.owned.clear()
