"""Resource measurements of the daemon: the staging directory's size and the process's memory and CPU."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from dlt_db_sync.utils.formatting import megabytes
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.resources")


STAGING_REFRESH_SECONDS = 10.0


# --------------------------------------------------------------------------- cached measurements
def directory_usage(directory: Path) -> tuple[float, int]:
    """(size in MB = 10^6 bytes, number of files) below ``directory``; (0, 0) when it does not exist."""
    total = 0
    files = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
                files += 1
            except FileNotFoundError:
                continue  # removed by the retention cleanup while we walked
    return megabytes(total), files


class StagingMonitor:
    """Measures the staging directory into ``sink(usage_mb, files_count)``; one measurement at a time.

    Walking a large directory can be slow, so request handlers never call :meth:`refresh`
    themselves: the watchdog does, and handlers use :meth:`refresh_in_background_if_stale`.
    """

    def __init__(
        self, directory: Path, sink: Callable[[float, int], None], max_age: float = STAGING_REFRESH_SECONDS
    ) -> None:
        self.directory = Path(directory)
        self.sink = sink
        self.max_age = max_age
        self._running = threading.Lock()

    def refresh(self) -> None:
        """Measure now; errors are logged, never raised."""
        if not self._running.acquire(blocking=False):
            return  # another thread is measuring right now
        try:
            usage_mb, files = directory_usage(self.directory)
            self.sink(usage_mb, files)
        except OSError as exc:
            logger.warning("cannot measure %s: %s", self.directory, exc, extra=log_fields("FILE_STAGING", "MONITORING"))
        finally:
            self._running.release()

    def refresh_in_background_if_stale(self, age_seconds: float | None) -> None:
        """Start a background measurement when the cached one is missing or older than ``max_age``."""
        if age_seconds is not None and age_seconds < self.max_age:
            return
        if self._running.locked():
            return
        threading.Thread(target=self.refresh, name="staging-usage", daemon=True).start()


class ProcessSampler:
    """Memory and CPU of this process; CPU is averaged over at least one second between samples."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._cpu_percent = 0.0
        self._cpu_sampled = time.monotonic()
        self._process.cpu_percent(interval=None)  # the first call only starts the measurement

    def memory_mb(self) -> float:
        """Resident set size in MB (10^6 bytes)."""
        return megabytes(float(self._process.memory_info().rss), 1)

    def cpu_percent(self) -> float:
        """CPU use since the previous sample (100 = one core)."""
        with self._lock:
            now = time.monotonic()
            if now - self._cpu_sampled >= 1.0:
                self._cpu_percent = self._process.cpu_percent(interval=None)
                self._cpu_sampled = now
            return self._cpu_percent
