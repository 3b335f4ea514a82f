"""What every sync strategy shares: one :class:`SyncContext` per syncer, built once at start-up.

The context holds the engines (which hold the pools and the write slots), the frozen settings,
the stop event, the run state (:class:`SyncStatus`) and metrics, the table leases, the target's
capabilities (probed once, never per table), the schema cache of the current cycle and the retry
policy. Strategies read it; none of them keeps a copy of its parts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dlt_db_sync.config.settings import PipelineMode, SanitizePolicy, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.loader import LoadPath, temporary_tables_allowed
from dlt_db_sync.database.engines import Engines, server_allows_local_infile
from dlt_db_sync.database.server_info import ServerInfo, read_servers
from dlt_db_sync.error_handling.errors import is_connection_error
from dlt_db_sync.error_handling.retry import RetryPolicy
from dlt_db_sync.schema_management.schema_cache import SchemaCache
from dlt_db_sync.utils.logging_setup import log_fields

if TYPE_CHECKING:
    from dlt_db_sync.database.leases import LeaseManager
    from dlt_db_sync.monitoring.metrics import Metrics
    from dlt_db_sync.monitoring.run_state import SyncStatus

logger = logging.getLogger("dlt_sync.pipeline_management")


def table_mode(spec: TableSpec, settings: Settings) -> PipelineMode:
    """The table's own ``mode`` from tables.json, else the global ``PIPELINE_MODE``."""
    return spec.mode or settings.pipeline_mode


@dataclass(frozen=True)
class TargetCapabilities:
    """What the target allows, probed once at start-up (and the servers as read then)."""

    load_path: LoadPath  # ``load_data`` when the target allows LOCAL INFILE, else ``insert``
    temporary_tables: bool  # False: upserts stage rows in regular ``_dlt_stage__<table>`` tables
    servers: Mapping[str, ServerInfo] = field(default_factory=dict)

    @property
    def local_infile(self) -> bool:
        """Whether rows load with ``LOAD DATA LOCAL INFILE``."""
        return self.load_path == "load_data"

    @classmethod
    def probe(cls, engines: Engines) -> TargetCapabilities:
        """Read both servers (refusing unsupported versions) and probe the target's load path."""
        servers = read_servers(engines)
        allowed = server_allows_local_infile(engines.target)
        return cls("load_data" if allowed else "insert", temporary_tables_allowed(engines.target), servers)

    def log(self) -> None:
        """The start-up lines saying how rows will load."""
        logger.info(
            "target %s LOCAL INFILE: loading with %s",
            "allows" if self.local_infile else "refuses",
            "LOAD DATA LOCAL INFILE" if self.local_infile else "multi-row INSERT (slower fallback)",
            extra=log_fields("LOADER", "DETECT"),
        )
        if not self.temporary_tables:
            logger.warning(
                "the target user may not create temporary tables; upserts stage rows in regular "
                "tables named _dlt_stage__<table> (GRANT CREATE TEMPORARY TABLES on the target database avoids them)",
                extra=log_fields("LOADER", "DETECT"),
            )


@dataclass(frozen=True)
class SyncContext:
    """Everything a strategy needs besides the table itself."""

    engines: Engines
    settings: Settings
    stop_event: threading.Event
    status: SyncStatus
    capabilities: TargetCapabilities
    metrics: Metrics | None = None
    leases: LeaseManager | None = None  # when several replicas share tables.json
    # Lets idle cycles skip the schema checks of unchanged tables (refreshed by the cycle).
    schemas: SchemaCache = field(default_factory=SchemaCache)

    @property
    def retry(self) -> RetryPolicy:
        """The ``LOCK_TIMEOUT_*`` budget of one chunk or statement (see :mod:`error_handling.retry`)."""
        return RetryPolicy.from_settings(self.settings)

    @property
    def load_path(self) -> LoadPath:
        """How rows load into the target (probed once)."""
        return self.capabilities.load_path

    def mode(self, spec: TableSpec) -> PipelineMode:
        """The table's transfer mode (``direct`` or ``file_staging``)."""
        return table_mode(spec, self.settings)

    def sanitize(self, spec: TableSpec) -> SanitizePolicy:
        """The table's sanitization policy, else ``SANITIZE_POLICY``."""
        return spec.sanitize or self.settings.sanitize_policy

    def chunk_rows(self, spec: TableSpec) -> int:
        """Rows per load transaction: the table's ``batch_size``, else ``CHUNK_SIZE``."""
        return spec.batch_size or self.settings.chunk_size

    def rebuild_pools(self, exc: BaseException) -> None:
        """After a lost connection, drop both pools so the next attempt connects afresh."""
        if is_connection_error(exc):
            self.engines.rebuild("source")
            self.engines.rebuild("target")

    def recovered(self, seconds: float) -> None:
        """A retried operation succeeded ``seconds`` after its first failed attempt (metrics)."""
        if self.metrics is not None:
            self.metrics.observe_recovery(seconds)
