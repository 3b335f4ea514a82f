"""Numbers, durations and times for people and for JSON: row counts, rates, summaries, ISO timestamps."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import humanize

# The one size unit of the daemon: metrics, the health document, settings and logs say MB and mean
# 10^6 bytes (not MiB), as the README states once.
BYTES_PER_MB = 1_000_000


def megabytes(n_bytes: float, digits: int = 3) -> float:
    """``n_bytes`` in MB (10^6 bytes), rounded to ``digits`` decimals."""
    return round(n_bytes / BYTES_PER_MB, digits)


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


def format_cycle_summary(cycle: int, tables_ok: int, tables_failed: int, rows: int, seconds: float) -> str:
    """The one-line per-cycle summary (without the ``COMPONENT - OPERATION - `` prefix)."""
    return (
        f"cycle {cycle}: {tables_ok} table(s) synced, {tables_failed} failed, "
        f"{format_rows(rows)} rows in {format_duration(seconds)}"
    )


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
