"""Unit tests of utils: credential masking, log formats, number/duration formatting, progress."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from dlt_db_sync.config.settings import Settings, load_settings
from dlt_db_sync.monitoring.resources import ProcessSampler, StagingMonitor, directory_usage
from dlt_db_sync.utils.formatting import (
    as_utc,
    format_cycle_summary,
    format_duration,
    format_rate,
    format_rows,
    iso,
)
from dlt_db_sync.utils.logging_setup import log_fields, mask_all, mask_secrets, setup_logging
from dlt_db_sync.utils.progress import LogProgress, NullProgress, progress
from log_lines import logged_line

SECRET = "s3cret"
URL = f"mysql+pymysql://u:{SECRET}@h/db"


def make_settings(**env: str) -> Settings:
    return load_settings({"SOURCE_DB_NAME": "s", "TARGET_DB_NAME": "t", **env}, dotenv_path=None)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo setup_logging's changes to the root logger and the library loggers."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("dlt", "sqlalchemy", "urllib3", "dlt_sync")}
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def configured(log_format: str, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(make_settings(LOG_FORMAT=log_format, LOG_LEVEL=level), stream=stream)
    return stream


# --------------------------------------------------------------------------- masking
@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (URL, SECRET),
        ("mysql://root:p@ss@127.0.0.1:3306/x", "p@ss"),
        ("connecting with password=hunter2 now", "hunter2"),
        ("SOURCE_DB_PASS=hunter2; TARGET_DB_PASS='x y z'", "hunter2"),
        ("TARGET_DB_PASS='quoted secret'", "quoted secret"),
        ('{"password": "hunter2", "user": "u"}', "hunter2"),
        ("{'password': 'hunter2', 'host': 'h'}", "hunter2"),
        ("url?user=u&pwd=hunter2&x=1", "hunter2"),
        ("CREATE USER a@'%' IDENTIFIED BY 'hunter2'", "hunter2"),
    ],
)
def test_mask_secrets_hides_the_secret(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


def test_mask_secrets_keeps_harmless_text() -> None:
    for text in ("http://host:8080/path", "mysql://root@h/db", "orders: 1,000 rows", ""):
        assert mask_secrets(text) == text
    assert mask_secrets(URL) == "mysql+pymysql://u:***@h/db"


def test_mask_all_walks_nested_structures() -> None:
    data = {"a": [URL, {"b": f"password={SECRET}"}], "n": 3, "none": None}
    masked = mask_all(data)
    assert SECRET not in orjson.dumps(masked).decode()
    assert masked["n"] == 3 and masked["none"] is None


# --------------------------------------------------------------------------- log formats
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - [A-Z0-9_]+ - [A-Z0-9_]+ - "
)


def emit_everything(log: logging.Logger) -> None:
    """Records with a password in arguments, message text, exceptions (chained) and a library logger."""
    log.info("orders: 10 rows via %s", URL, extra=log_fields("SYNC_ENGINE", "TABLE_SYNC"))
    log.warning("plain message with password=%s", SECRET)
    try:
        try:
            raise ConnectionError(f"cannot reach {URL}")
        except ConnectionError as inner:
            raise RuntimeError(f"engine {URL} failed, PASS={SECRET}") from inner
    except RuntimeError:
        log.exception("failed for %s", URL, extra=log_fields("DATABASE", "CONNECT"))
    logging.getLogger("sqlalchemy.pool").warning("library says %s", URL)


def test_text_format_and_no_secret(restore_logging: None) -> None:
    stream = configured("text")
    emit_everything(logging.getLogger("dlt_sync.pipeline_management"))
    output = stream.getvalue()
    assert SECRET not in output
    lines = [line for line in output.splitlines() if TEXT_LINE.match(line)]
    assert len(lines) == 4, output
    assert " - INFO - SYNC_ENGINE - TABLE_SYNC - orders: 10 rows via mysql+pymysql://u:***@h/db" in lines[0]
    # No COMPONENT - OPERATION prefix: the logger's last name segment and GENERAL.
    assert " - WARNING - PIPELINE_MANAGEMENT - GENERAL - plain message with password=***" in lines[1]
    assert " - ERROR - DATABASE - CONNECT - failed for mysql+pymysql://u:***@h/db" in lines[2]
    assert " - WARNING - POOL - GENERAL - library says" in lines[3]
    assert "Traceback (most recent call last)" in output
    assert "ConnectionError: cannot reach mysql+pymysql://u:***@h/db" in output


def test_json_format_and_no_secret(restore_logging: None) -> None:
    stream = configured("json")
    emit_everything(logging.getLogger("dlt_sync.pipeline_management"))
    output = stream.getvalue()
    assert SECRET not in output
    records = [orjson.loads(line) for line in output.splitlines()]
    assert len(records) == 4
    first = records[0]
    assert set(first) == {"timestamp", "level", "component", "operation", "message", "logger"}
    assert first["component"] == "SYNC_ENGINE" and first["operation"] == "TABLE_SYNC"
    assert first["message"] == "orders: 10 rows via mysql+pymysql://u:***@h/db"
    assert first["logger"] == "dlt_sync.pipeline_management"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["timestamp"])
    assert records[1]["component"] == "PIPELINE_MANAGEMENT" and records[1]["operation"] == "GENERAL"
    assert records[2]["level"] == "ERROR"
    assert "RuntimeError: engine mysql+pymysql://u:***@h/db failed, PASS=***" in records[2]["exception"]
    assert "exception" not in records[3]


def test_setup_logging_is_idempotent_and_sets_levels(restore_logging: None) -> None:
    configured("text")
    stream = configured("json", level="WARNING")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_dlt_sync_handler", False)]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("sqlalchemy").level == logging.WARNING
    logging.getLogger("dlt_sync.x").info("X - Y - hidden")
    logging.getLogger("dlt_sync.x").warning("X - Y - shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
    configured("text", level="DEBUG")
    assert logging.getLogger("dlt").level == logging.NOTSET  # libraries inherit DEBUG


# --------------------------------------------------------------------------- formatting
def test_format_rows_rate_and_duration() -> None:
    assert format_rows(950_000) == "950,000"
    assert format_rows(1_234_567) == "1.2 million"
    assert format_rows(5_000_000) == "5 million"
    assert format_rate(95_000) == "95k"
    assert format_rate(1_500) == "1.5k"
    assert format_rate(12.4) == "12"
    assert format_duration(40) == "40 seconds"
    assert format_duration(0.4) == "0.4 seconds"
    assert format_duration(90) == "1 minute and 30 seconds"


def test_summaries() -> None:
    assert format_cycle_summary(3, 2, 1, 1_500_000, 61).startswith("cycle 3: 2 table(s) synced, 1 failed, 1.5 million")


def test_time_helpers() -> None:
    assert iso(as_utc("2024-01-15 10:30:45")) == "2024-01-15T10:30:45Z"
    assert as_utc("12345") is None and as_utc(None) is None
    assert iso(7) == "7" and iso(None) is None


# --------------------------------------------------------------------------- progress
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_logs_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    settings = make_settings()
    with caplog.at_level(logging.INFO, logger="dlt_sync"):
        with progress("orders", 5_000_000, settings, stream=io.StringIO(), clock=clock) as bar:
            assert isinstance(bar, LogProgress)
            for _ in range(19):  # 9.5 s: no line yet
                clock.now += 0.5
                bar.advance(50_000)
            assert not [r for r in caplog.records if "PROGRESS" in logged_line(r)]
            clock.now += 3.13  # 12.63 s after the start, 1.2 million rows
            bar.advance(250_000)
            clock.now += 1
            bar.advance(10)  # only 1 s after the last line: silent
    lines = [logged_line(r) for r in caplog.records if "PROGRESS" in logged_line(r)]
    assert len(lines) == 1
    assert lines[0] == "SYNC_ENGINE - PROGRESS - orders: 1.2 million / 5 million rows (24%), 95k rows/s, ETA 40 seconds"


def test_progress_without_estimate_and_beyond_it() -> None:
    clock = FakeClock()
    reporter = LogProgress("t", None, clock=clock)
    clock.now += 2
    reporter.advance(2_000)
    assert reporter.describe(clock.now) == "t: 2,000 rows, 1k rows/s"
    reporter = LogProgress("t", 10, clock=clock)
    reporter.advance(20)
    assert "ETA" not in reporter.describe(clock.now + 1)


def test_progress_modes() -> None:
    with progress("t", 10, make_settings(PROGRESS="off"), stream=Terminal()) as reporter:
        assert isinstance(reporter, NullProgress)
        reporter.advance(5)
    with progress("t", 10, make_settings(PROGRESS="log"), stream=Terminal()) as reporter:
        assert isinstance(reporter, LogProgress)
    with progress("t", 10, make_settings(PROGRESS="bar"), stream=io.StringIO()) as reporter:
        assert isinstance(reporter, LogProgress)  # not a terminal: never draw a bar into a log


def test_progress_bar_on_a_terminal() -> None:
    terminal = Terminal()
    with progress("orders", 1_000, make_settings(), stream=terminal) as reporter:
        for _ in range(10):
            reporter.advance(100)
    output = terminal.getvalue()
    assert "orders" in output and "100%" in output


# --------------------------------------------------------------------------- staging usage
def test_directory_usage_and_staging_monitor(tmp_path: Path) -> None:
    assert directory_usage(tmp_path / "missing") == (0.0, 0)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.parquet").write_bytes(b"x" * 1_000_000)  # MB = 10^6 bytes (README)
    (tmp_path / "two.parquet").write_bytes(b"x" * 500_000)
    assert directory_usage(tmp_path) == (1.5, 2)
    seen: list[tuple[float, int]] = []
    monitor = StagingMonitor(tmp_path, lambda mb, files: seen.append((mb, files)))
    monitor.refresh()
    assert seen == [(1.5, 2)]
    monitor.refresh_in_background_if_stale(1.0)  # fresh enough: nothing happens
    assert seen == [(1.5, 2)]


def test_memory_is_reported_in_mb_of_a_million_bytes() -> None:
    # MiB would read 4.9 % lower; two RSS readings a moment apart differ far less than that.
    reported = ProcessSampler().memory_mb()
    assert reported == pytest.approx(psutil.Process().memory_info().rss / 1e6, rel=0.01)


def test_a_dead_connection_reported_by_the_pool_is_one_warning_line_without_traceback(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(make_settings(), stream=stream)
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        logging.getLogger("sqlalchemy.pool.impl.QueuePool").error("Exception during reset or similar", exc_info=True)
    output = stream.getvalue()
    assert "Traceback" not in output
    assert " - WARNING - " in output and "Exception during reset or similar (ConnectionResetError:" in output
    assert "the connection is discarded" in output
