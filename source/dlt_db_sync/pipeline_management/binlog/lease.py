"""One binlog stream per source among replicas: the stream's lease, a named lock on the target.

With ``LEASE_ENABLED`` the streaming replica holds ``GET_LOCK`` on a connection of its own; another
replica takes over from the stored position when that connection ends.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.database.engines import Engines
from dlt_db_sync.error_handling.errors import SyncError, describe_error

LEASE_RETRY_SECONDS = 5.0  # a standby replica asks for the stream's lease this often
LEASE_CHECK_SECONDS = 2.0  # the streaming replica confirms it still holds the lease this often


class LeaseLost(SyncError):
    """The replica lost the binlog stream's lease (its lease connection broke); it stands by again."""


class StreamLease:
    """The binlog stream's named lock on the target (a no-op without ``LEASE_ENABLED``)."""

    def __init__(self, engines: Engines, settings: Settings) -> None:
        self.engines = engines
        self.settings = settings
        self._connection: Any = None  # the target connection holding the stream's GET_LOCK
        self._checked = 0.0

    def _name(self) -> str:
        return f"dlt-sync-binlog:{self.settings.target.name}"[:64]

    def acquire(self) -> bool:
        """Hold the stream's lock; False when another replica holds it (always True without leases)."""
        if not self.settings.lease_enabled:
            return True
        if self._connection is None:
            self._connection = self.engines.target.connect()
        got = self._connection.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self._name(),)).scalar()
        self._connection.rollback()
        self._checked = time.monotonic()
        return bool(got == 1)

    def confirm(self) -> None:
        """Every ``LEASE_CHECK_SECONDS``: raise :class:`LeaseLost` unless this replica still holds the lock."""
        if self._connection is None or time.monotonic() - self._checked < LEASE_CHECK_SECONDS:
            return
        self._checked = time.monotonic()
        try:
            held = self._connection.exec_driver_sql(
                "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self._name(),)
            ).scalar()
            self._connection.rollback()
        except SQLAlchemyError as exc:
            self.release()
            raise LeaseLost(f"the binlog stream's lease connection failed: {describe_error(exc)}") from exc
        if held != 1:
            self.release()
            raise LeaseLost("the binlog stream's lease is held by another replica")

    def release(self) -> None:
        """Give the lock up (closing the session releases ``GET_LOCK``)."""
        if self._connection is not None:
            self._connection.invalidate()
            self._connection.close()
            self._connection = None
