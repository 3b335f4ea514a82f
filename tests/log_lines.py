"""Log records as the text format shows them, for assertions on caplog records."""

from __future__ import annotations

import logging

from dlt_db_sync.utils.logging_setup import record_fields


def logged_line(record: logging.LogRecord) -> str:
    """``COMPONENT - OPERATION - message`` of ``record`` (the text format without time and level)."""
    component, operation = record_fields(record)
    return f"{component} - {operation} - {record.getMessage()}"
