"""Logging setup and credential masking.

Records carry their component and operation as structured fields (``extra=log_fields(...)``);
:func:`setup_logging` renders them in the TRD 5.4.1 text format or as one JSON object per line, and
masks credentials in every record it emits. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from dlt_db_sync.utils.formatting import BYTES_PER_MB

if TYPE_CHECKING:
    from dlt_db_sync.config.settings import Settings

logger = logging.getLogger("dlt_sync.utils")


MASK = "***"


NOISY_LOGGERS = ("dlt", "sqlalchemy", "urllib3", "alive_progress", "filelock", "fsspec")


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


def mask_secrets(text: str) -> str:
    """``text`` with passwords in URLs, ``key=value`` pairs, JSON/dict entries and SQL replaced by ``***``."""
    if not text:
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def log_fields(component: str, operation: str) -> dict[str, str]:
    """``extra=`` of a log call: the record's component and operation, e.g. ``SYNC_ENGINE``, ``CYCLE``."""
    return {"component": component, "operation": operation}


def record_fields(record: logging.LogRecord) -> tuple[str, str]:
    """(component, operation) of ``record``; records without them (dlt, urllib3, ...) are named
    after their logger, operation ``GENERAL``."""
    component = getattr(record, "component", None)
    operation = getattr(record, "operation", None)
    if isinstance(component, str) and isinstance(operation, str):
        return component, operation
    return record.name.rsplit(".", 1)[-1].upper() or "ROOT", "GENERAL"


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


class PoolNoiseFilter(logging.Filter):
    """SQLAlchemy's pool logs an ERROR with a traceback when a connection it returns, closes or
    resets is already dead (the server was killed or restarted). The daemon meets the same lost
    connection in its own statement and recovers from it, so this becomes one WARNING line naming
    the exception, without a traceback that reads like a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Shorten the pool's own reports of a dead connection; pass every record on."""
        if record.name.startswith("sqlalchemy.pool") and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.args = (record.getMessage(), type(exc).__name__, exc)
            record.msg = "%s (%s: %s); the connection is discarded"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class TextFormatter(logging.Formatter):
    """``timestamp - LEVEL - COMPONENT - OPERATION - message`` (TRD 5.4.1).

    Timestamps are local time of the process's ``TZ`` (the image sets Asia/Jakarta) and carry
    their UTC offset, ``2026-12-02 12:30:45+0700``, so lines stay unambiguous across zones.
    """

    converter = staticmethod(time.localtime)

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S%z")

    def format(self, record: logging.LogRecord) -> str:
        component, operation = record_fields(record)
        text = record.getMessage()
        line = f"{self.formatTime(record, self.datefmt)} - {record.levelname} - {component} - {operation} - {text}"
        extra = _exception_text(self, record)
        if extra:
            line = f"{line}\n{extra}"
        # Masked again here: records that bypassed the filter (a handler added elsewhere) stay safe.
        return mask_secrets(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, component, operation, message, logger[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        text = mask_secrets(record.getMessage())
        component, operation = record_fields(record)
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

        handlers.append(
            RotatingFileHandler(
                settings.log_file,
                maxBytes=settings.log_file_max_mb * BYTES_PER_MB,
                backupCount=settings.log_file_backups,
                encoding="utf-8",
            )
        )
    for handler in handlers:
        handler._dlt_sync_handler = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
        handler.addFilter(PoolNoiseFilter())
        handler.addFilter(SecretMaskingFilter())
        root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(level)
    logging.getLogger("dlt_sync").setLevel(level)
    # Library chatter drowns the daemon's own lines; it is only wanted when debugging.
    library_level = logging.NOTSET if level == logging.DEBUG else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)


def mask_all(value: Any) -> Any:
    """``value`` (nested dicts/lists) with :func:`mask_secrets` applied to every string."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: mask_all(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_all(item) for item in value]
    return value
