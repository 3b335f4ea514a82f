"""Progress of a long table load: an alive-progress bar on a terminal, a log line elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from dlt_db_sync.utils.formatting import format_duration, format_rate, format_rows
from dlt_db_sync.utils.logging_setup import log_fields

if TYPE_CHECKING:
    from dlt_db_sync.config.settings import Settings

logger = logging.getLogger("dlt_sync.progress")


PROGRESS_LOG_INTERVAL = 10.0


class ProgressReporter(Protocol):
    """What :func:`progress` yields: call ``advance`` with the rows just processed."""

    def advance(self, rows: int) -> None: ...


class NullProgress:
    """Progress reporting switched off."""

    def advance(self, rows: int) -> None:
        """Ignore ``rows``."""


class LogProgress:
    """Progress as a log line at most every ``interval`` seconds (for ``docker logs`` and pipes)."""

    def __init__(
        self,
        table: str,
        total: int | None,
        interval: float = PROGRESS_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.total = total if total and total > 0 else None
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.started = clock()
        self.last_logged = self.started

    def advance(self, rows: int) -> None:
        """Count ``rows`` and log a progress line when ``interval`` has passed since the last one."""
        self.done += rows
        now = self.clock()
        if now - self.last_logged >= self.interval:
            self.last_logged = now
            logger.info("%s", self.describe(now), extra=log_fields("SYNC_ENGINE", "PROGRESS"))

    def describe(self, now: float) -> str:
        """``orders: 1.2 million / 5 million rows (24%), 95k rows/s, ETA 40 seconds``."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total is None or self.done > self.total:
            # No estimate, or the estimate (information_schema row counts) was too low.
            return f"{self.table}: {format_rows(self.done)} rows, {format_rate(rate)} rows/s"
        percent = 100.0 * self.done / self.total
        eta = f"ETA {format_duration((self.total - self.done) / rate)}" if rate > 0 else "ETA unknown"
        return (
            f"{self.table}: {format_rows(self.done)} / {format_rows(self.total)} rows ({percent:.0f}%), "
            f"{format_rate(rate)} rows/s, {eta}"
        )


class BarProgress:
    """Adapter from ``advance(rows)`` to an alive-progress bar handle."""

    def __init__(self, bar: Callable[[int], Any]) -> None:
        self._bar = bar

    def advance(self, rows: int) -> None:
        """Move the bar by ``rows``."""
        self._bar(rows)


def use_bar(settings: Settings, stream: TextIO) -> bool:
    """Bars only on a terminal; ``PROGRESS=log`` or ``off`` never shows them."""
    if settings.progress not in ("auto", "bar"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream: treat as "not a terminal"
        return False


@contextmanager
def progress(
    table: str,
    total_rows_estimate: int | None,
    settings: Settings,
    stream: TextIO | None = None,
    interval: float = PROGRESS_LOG_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[ProgressReporter]:
    """Report the progress of loading ``table``; yields an object with ``advance(rows)``.

    Terminal (``PROGRESS=auto|bar``): an alive-progress bar with rows/s and ETA. Not a terminal,
    or ``PROGRESS=log``: a log line at most every ``interval`` seconds. ``PROGRESS=off``: nothing.
    """
    target = stream if stream is not None else sys.stderr
    if settings.progress == "off":
        yield NullProgress()
        return
    if not use_bar(settings, target):
        yield LogProgress(table, total_rows_estimate, interval=interval, clock=clock)
        return
    from alive_progress import alive_bar  # imported lazily: it is only needed on a terminal

    total = total_rows_estimate if total_rows_estimate and total_rows_estimate > 0 else None
    with alive_bar(
        total,
        title=table,
        unit=" rows",
        scale="SI",
        file=target,
        enrich_print=False,
        receipt=True,
        dual_line=False,
    ) as bar:
        yield BarProgress(bar)
