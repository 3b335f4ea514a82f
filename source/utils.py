"""Logging setup, credential masking, human-friendly numbers and progress reporting.

Every module logs through ``logging.getLogger("dlt_sync.<module>")`` with messages shaped
``"COMPONENT - OPERATION - message"``; :func:`setup_logging` turns those records into the TRD 5.4.1
text format or one JSON object per line, and masks credentials in every record it emits.
Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO

import humanize
import orjson
import psutil

from config import Settings

logger = logging.getLogger("dlt_sync.utils")

MASK = "***"
NOISY_LOGGERS = ("dlt", "sqlalchemy", "urllib3", "alive_progress", "filelock", "fsspec")
PROGRESS_LOG_INTERVAL = 10.0
STAGING_REFRESH_SECONDS = 10.0

# Key names whose values are secrets: SOURCE_DB_PASS, password, MYSQL_ROOT_PASSWORD, pwd, ...
_SECRET_KEY = r"\w*(?:password|passwd|pass|pwd|secret|token)"
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:secret@host - the password runs to the last '@' of the token, so an
    # unescaped '@' inside it cannot leak its tail.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)[^\s'\"]+@"), r"\1" + MASK + "@"),
    # "password": "x" / 'password': 'x' (JSON, Python reprs of connect arguments)
    (
        re.compile(r"""((['"])""" + _SECRET_KEY + r"""\2\s*:\s*)(['"])(?:\\.|(?!\3).)*\3""", re.IGNORECASE),
        r"\1\3" + MASK + r"\3",
    ),
    # password=x, SOURCE_DB_PASS='x', ?pwd=x&...
    (
        re.compile(r"""(\b""" + _SECRET_KEY + r"""\b\s*=\s*)(?:'[^']*'|"[^"]*"|[^\s,;&)'"]+)""", re.IGNORECASE),
        r"\1" + MASK,
    ),
    # CREATE USER ... IDENTIFIED BY 'x' (SQL text shown by the long-query watchdog)
    (re.compile(r"(\bIDENTIFIED\s+(?:WITH\s+\S+\s+)?(?:BY|AS)\s+)'[^']*'", re.IGNORECASE), r"\1'" + MASK + "'"),
)
_STRUCTURED_MESSAGE = re.compile(r"([A-Z][A-Z0-9_]*) - ([A-Z][A-Z0-9_]*) - (.*)", re.DOTALL)


def mask_secrets(text: str) -> str:
    """``text`` with passwords in URLs, ``key=value`` pairs, JSON/dict entries and SQL replaced by ``***``."""
    if not text:
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def split_message(record: logging.LogRecord, message: str) -> tuple[str, str, str]:
    """(component, operation, text) of a record whose message may start with ``COMPONENT - OPERATION - ``."""
    match = _STRUCTURED_MESSAGE.fullmatch(message)
    if match:
        return match.group(1), match.group(2), match.group(3)
    # Library records (dlt, urllib3, ...) carry no prefix: name them after their logger.
    component = record.name.rsplit(".", 1)[-1].upper() or "ROOT"
    return component, "GENERAL", message


class SecretMaskingFilter(logging.Filter):
    """Masks credentials in the message, arguments, exception and stack text of every record.

    It rewrites the record in place (message formatted with its arguments, then masked), so every
    handler that sees the record afterwards sees the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad format string must not lose the record
            message = f"{record.msg!r} (unformattable arguments: {type(exc).__name__})"
        record.msg = mask_secrets(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class TextFormatter(logging.Formatter):
    """``timestamp - LEVEL - COMPONENT - OPERATION - message`` (TRD 5.4.1).

    Timestamps are local time of the process's ``TZ`` (the image sets Asia/Jakarta) and carry
    their UTC offset, ``2026-12-02 12:30:45+0700``, so lines stay unambiguous across zones.
    """

    converter = time.localtime

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S%z")

    def format(self, record: logging.LogRecord) -> str:
        component, operation, text = split_message(record, record.getMessage())
        line = f"{self.formatTime(record, self.datefmt)} - {record.levelname} - {component} - {operation} - {text}"
        extra = _exception_text(self, record)
        if extra:
            line = f"{line}\n{extra}"
        # Masked again here: records that bypassed the filter (a handler added elsewhere) stay safe.
        return mask_secrets(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, component, operation, message, logger[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        message = mask_secrets(record.getMessage())
        component, operation, text = split_message(record, message)
        stamp = datetime.fromtimestamp(record.created, tz=UTC).astimezone()  # local time of TZ, with offset
        payload: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "component": component,
            "operation": operation,
            "message": text,
            "logger": record.name,
        }
        extra = _exception_text(self, record)
        if extra:
            payload["exception"] = mask_secrets(extra)
        return orjson.dumps(payload, default=str).decode()


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    parts: list[str] = []
    if record.exc_info and not record.exc_text:
        record.exc_text = mask_secrets(formatter.formatException(record.exc_info))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


def setup_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send all logging to stderr (or ``stream``) in the configured format, with secrets masked;
    with ``LOG_FILE`` also to that file, rotated at ``LOG_FILE_MAX_MB`` keeping ``LOG_FILE_BACKUPS``.

    Idempotent: a second call replaces the handlers installed by the first one. Handlers installed
    by others (pytest's capture, for instance) are left alone.

    Raises:
        OSError: ``LOG_FILE`` cannot be opened for appending.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dlt_sync_handler", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream if stream is not None else sys.stderr)]
    if settings.log_file is not None:
        from logging.handlers import RotatingFileHandler

        handlers.append(RotatingFileHandler(
            settings.log_file, maxBytes=settings.log_file_max_mb * 1024 * 1024,
            backupCount=settings.log_file_backups, encoding="utf-8",
        ))
    for handler in handlers:
        handler._dlt_sync_handler = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
        handler.addFilter(SecretMaskingFilter())
        root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(level)
    logging.getLogger("dlt_sync").setLevel(level)
    # Library chatter drowns the daemon's own lines; it is only wanted when debugging.
    library_level = logging.NOTSET if level == logging.DEBUG else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)


def format_rows(n: int | float) -> str:
    """A row count for people: ``950,000``; ``1.2 million``; ``5 million``."""
    n = int(n)
    if abs(n) < 1_000_000:
        return humanize.intcomma(n)
    return humanize.intword(n, "%.1f").replace(".0 ", " ")


def format_rate(rows_per_second: float) -> str:
    """A throughput figure: ``950``, ``95k``, ``1.5k``, ``2.3M`` (rows per second)."""
    if rows_per_second < 1000:
        return f"{rows_per_second:.0f}"
    return humanize.metric(rows_per_second, precision=2).replace(" ", "").replace(".0k", "k")


def format_duration(seconds: float) -> str:
    """A duration for people: ``0.4 seconds``, ``40 seconds``, ``1 minute and 30 seconds``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return humanize.precisedelta(timedelta(seconds=seconds), minimum_unit="seconds", format="%0.1f")
    return humanize.precisedelta(timedelta(seconds=round(seconds)), minimum_unit="seconds", format="%0.0f")


def format_table_summary(
    table: str, rows: int, seconds: float, watermark: Any = None, mode: str | None = None, skipped: bool = False
) -> str:
    """The one-line per-table, per-cycle summary (without the ``COMPONENT - OPERATION - `` prefix)."""
    if skipped:
        return f"{table}: unchanged, skipped ({format_duration(seconds)})"
    rate = rows / seconds if seconds > 0 else 0.0
    text = f"{table}: {format_rows(rows)} rows in {format_duration(seconds)} ({format_rate(rate)} rows/s)"
    if mode:
        text += f", mode {mode}"
    if watermark is not None:
        text += f", watermark {watermark}"
    return text


def format_cycle_summary(cycle: int, tables_ok: int, tables_failed: int, rows: int, seconds: float) -> str:
    """The one-line per-cycle summary (without the ``COMPONENT - OPERATION - `` prefix)."""
    return (
        f"cycle {cycle}: {tables_ok} table(s) synced, {tables_failed} failed, "
        f"{format_rows(rows)} rows in {format_duration(seconds)}"
    )


# --------------------------------------------------------------------------- cached measurements
def directory_usage(directory: Path) -> tuple[float, int]:
    """(size in MB, number of files) below ``directory``; (0, 0) when it does not exist."""
    total = 0
    files = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
                files += 1
            except FileNotFoundError:
                continue  # removed by the retention cleanup while we walked
    return round(total / (1024 * 1024), 3), files


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
            logger.warning("FILE_STAGING - MONITORING - cannot measure %s: %s", self.directory, exc)
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
        """Resident set size in MB."""
        return round(self._process.memory_info().rss / (1024 * 1024), 1)

    def cpu_percent(self) -> float:
        """CPU use since the previous sample (100 = one core)."""
        with self._lock:
            now = time.monotonic()
            if now - self._cpu_sampled >= 1.0:
                self._cpu_percent = self._process.cpu_percent(interval=None)
                self._cpu_sampled = now
            return self._cpu_percent


# --------------------------------------------------------------------------- time and JSON helpers
def as_utc(value: Any) -> datetime | None:
    """``value`` (datetime, date or ISO text) as an aware UTC datetime; None when it is not a time."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        return None
    # Naive values are UTC: every session pins time_zone='+00:00'.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: Any) -> str | None:
    """``2024-01-15T10:30:45Z`` for datetimes, ``str(value)`` for anything else, None for None."""
    moment = as_utc(value) if isinstance(value, datetime) else None
    if moment is not None:
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return None if value is None else str(value)


def mask_all(value: Any) -> Any:
    """``value`` (nested dicts/lists) with :func:`mask_secrets` applied to every string."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: mask_all(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_all(item) for item in value]
    return value


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
            logger.info("SYNC_ENGINE - PROGRESS - %s", self.describe(now))

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
