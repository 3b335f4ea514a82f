"""What every part of one binlog stream shares, passed as one object instead of five arguments."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlt_db_sync.config.settings import Settings
    from dlt_db_sync.database.engines import Engines
    from dlt_db_sync.monitoring.run_state import SyncStatus
    from dlt_db_sync.pipeline_management.syncer import TableSyncer


@dataclass(frozen=True)
class StreamShared:
    """The engines, settings, stop event, status and metrics of the stream, and its ``TableSyncer``.

    ``syncer`` makes the syncer on first use: it runs the snapshots (full-refresh loads) and knows
    the target's load path and capabilities, probed once.
    """

    engines: Engines
    settings: Settings
    stop_event: threading.Event
    status: SyncStatus
    metrics: Any  # monitoring.metrics.Metrics or None (the callers guard every use)
    syncer: Callable[[], TableSyncer]
