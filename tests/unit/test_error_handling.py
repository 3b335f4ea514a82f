"""Classification of real driver exceptions by MySQL error code, and interruptible retries."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from dlt_db_sync.error_handling.errors import (
    ConfigError,
    DatabaseError,
    DataError,
    ShutdownRequested,
    StagingError,
    TerminalError,
    TransientError,
    describe_error,
    is_connection_error,
    is_transient,
    mysql_error_code,
)
from dlt_db_sync.error_handling.retry import call_with_retries

# A message that says the opposite of what the code means: classification must ignore it.
MISLEADING = {
    1205: "Access denied for user 'x'",
    1213: "Unknown column 'y'",
    2006: "Table 'z' doesn't exist",
    2013: "Access denied",
    2003: "Unknown column",
    1040: "doesn't exist",
    1045: "Lost connection to MySQL server during query",
    1146: "Deadlock found when trying to get lock",
    1054: "Lock wait timeout exceeded; try restarting transaction",
}


def driver_error(code: int, message: str = "") -> pymysql.err.MySQLError:
    """The pymysql exception class the driver itself raises for ``code``."""
    cls = pymysql.err.error_map.get(code)
    if cls is None:  # client-side codes (2xxx) are raised as OperationalError by pymysql
        cls = pymysql.err.OperationalError
    return cls(code, message or MISLEADING.get(code, "some text"))


def wrapped(code: int, message: str = "") -> sa.exc.DBAPIError:
    """The driver error wrapped by SQLAlchemy exactly as a failing statement would be."""
    return sa.exc.DBAPIError.instance("SELECT 1", {}, driver_error(code, message), pymysql.err.Error)


def real_pool_timeout() -> sa.exc.TimeoutError:
    """A genuine QueuePool checkout timeout (pool of one connection, already checked out)."""
    engine = sa.create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.05)
    held = engine.connect()
    try:
        with pytest.raises(sa.exc.TimeoutError) as info:
            engine.connect()
        return info.value
    finally:
        held.close()
        engine.dispose()


@pytest.mark.parametrize("code", [1205, 1213, 2006, 2013, 2003, 1040])
def test_transient_codes_are_retryable(code: int) -> None:
    exc = wrapped(code)
    assert isinstance(exc, sa.exc.OperationalError | sa.exc.InternalError | sa.exc.DatabaseError)
    assert mysql_error_code(exc) == code
    assert is_transient(exc)
    assert is_transient(exc.orig)  # the bare driver error too


@pytest.mark.parametrize("code", [1045, 1146, 1054])
def test_terminal_codes_are_not_retryable(code: int) -> None:
    exc = wrapped(code)
    assert mysql_error_code(exc) == code
    assert not is_transient(exc)


def test_sqlalchemy_classes_follow_the_driver_mapping() -> None:
    # pymysql maps 1146 to ProgrammingError and 1054 to OperationalError; SQLAlchemy mirrors it.
    assert isinstance(wrapped(1146), sa.exc.ProgrammingError)
    assert isinstance(wrapped(2013), sa.exc.OperationalError)


def test_pool_checkout_timeout_is_transient() -> None:
    exc = real_pool_timeout()
    assert mysql_error_code(exc) is None
    assert is_transient(exc)
    assert not is_connection_error(exc)


def test_config_and_other_terminal_errors() -> None:
    for exc in (ConfigError("bad"), StagingError("full"), DataError("too long")):
        assert isinstance(exc, TerminalError)
        assert not is_transient(exc)
    assert is_transient(TransientError("try again"))


def test_terminal_marker_wins_over_a_transient_cause() -> None:
    try:
        try:
            raise wrapped(1205)
        except sa.exc.DBAPIError as inner:
            raise DataError("value does not fit") from inner
    except DataError as exc:
        assert not is_transient(exc)


def test_code_found_through_wrapping_exceptions() -> None:
    """dlt wraps extraction errors (``raise ResourceExtractionError(...) from ex``)."""
    try:
        try:
            raise wrapped(2013)
        except sa.exc.DBAPIError as inner:
            raise RuntimeError("extraction of resource failed") from inner
    except RuntimeError as exc:
        assert mysql_error_code(exc) == 2013
        assert is_transient(exc)
        assert is_connection_error(exc)


def test_classified_database_error() -> None:
    assert mysql_error_code(DatabaseError("x", 1045, transient=False)) == 1045
    assert not is_transient(DatabaseError("x", 1045, transient=False))
    assert is_transient(DatabaseError("x", 2003, transient=True))


def test_connection_errors() -> None:
    assert is_connection_error(wrapped(2013))
    assert is_connection_error(wrapped(2006))
    assert not is_connection_error(wrapped(1205))
    assert not is_connection_error(wrapped(1045))


def test_unknown_errors_are_terminal() -> None:
    assert not is_transient(ValueError("2013 lost connection"))  # text alone means nothing
    assert mysql_error_code(ValueError(2013, "x")) is None  # not a driver exception


def test_describe_error_names_code_and_meaning() -> None:
    text = describe_error(wrapped(1045, "Access denied for user 'u'@'h' (using password: YES)"))
    assert text.startswith("MySQL error 1045 (access denied")
    assert "Access denied for user 'u'@'h'" in text
    assert describe_error(ConfigError("POOL_SIZE is bad")) == "POOL_SIZE is bad"


def test_describe_error_keeps_the_message_of_a_classified_error() -> None:
    try:
        raise DatabaseError("cannot connect to the target database u@h:1/db", 1045, transient=False) from wrapped(1045)
    except DatabaseError as exc:
        assert describe_error(exc).startswith("cannot connect to the target database")


# ----------------------------------------------------------------------------- retries


def failing(errors: list[BaseException], result: str = "done") -> tuple[Callable[[], str], list[float]]:
    """A function raising ``errors`` in turn, then returning ``result``; records call times."""
    calls: list[float] = []

    def func() -> str:
        calls.append(time.monotonic())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return func, calls


def retry(func: Callable[[], str], stop: threading.Event | None = None, **overrides: float) -> str:
    kwargs = {"retries": 5, "base_delay": 0.01, "max_delay": 0.05, "jitter": 0.1} | overrides
    return call_with_retries(func, what="test", stop_event=stop or threading.Event(), **kwargs)  # type: ignore[arg-type]


def test_deadlock_is_retried_until_it_succeeds() -> None:
    func, calls = failing([wrapped(1213), wrapped(1213, "Deadlock found when trying to get lock")])
    assert retry(func) == "done"
    assert len(calls) == 3


def test_pool_timeout_is_retried() -> None:
    func, calls = failing([real_pool_timeout()])
    assert retry(func) == "done"
    assert len(calls) == 2


def test_terminal_error_is_not_retried() -> None:
    func, calls = failing([wrapped(1146)])
    with pytest.raises(sa.exc.ProgrammingError):
        retry(func)
    assert len(calls) == 1


def test_last_transient_error_propagates_after_the_retries() -> None:
    func, calls = failing([wrapped(1205)] * 10)
    with pytest.raises(sa.exc.OperationalError) as info:
        retry(func, retries=2)
    assert mysql_error_code(info.value) == 1205
    assert len(calls) == 3


def test_backoff_is_exponential_and_capped() -> None:
    func, calls = failing([wrapped(1205)] * 4)
    retry(func, base_delay=0.05, max_delay=0.2, jitter=0.0)
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert [round(g, 2) >= expected for g, expected in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True)] == [True] * 4
    assert max(gaps) < 0.2 + 0.15  # capped at max_delay (plus scheduling slack)


def test_jitter_spreads_the_delays(caplog: pytest.LogCaptureFixture) -> None:
    """The chosen delays (logged before waiting) lie in [base, base * (1 + jitter)] and differ."""
    caplog.set_level(logging.WARNING, logger="dlt_sync.error_handling")
    for _ in range(20):
        stop = threading.Event()
        func, _calls = failing([wrapped(1213)])
        # on_retry runs before the wait: setting stop there ends the wait at once.
        with pytest.raises(ShutdownRequested):
            call_with_retries(
                func,
                what="jitter",
                retries=3,
                base_delay=10.0,
                max_delay=60.0,
                jitter=0.5,
                stop_event=stop,
                on_retry=lambda _exc, stop=stop: stop.set(),
            )
    delays = [float(m) for m in re.findall(r"retrying in ([\d.]+)s", caplog.text)]
    assert len(delays) == 20
    assert all(10.0 <= d <= 15.05 for d in delays)
    assert len(set(delays)) > 3


def test_stop_event_interrupts_the_wait_immediately() -> None:
    stop = threading.Event()
    func, calls = failing([wrapped(2013)] * 10)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ShutdownRequested):
        retry(func, stop, base_delay=30.0, max_delay=60.0)
    assert time.monotonic() - started < 2.0
    assert len(calls) == 1


def test_stop_already_set_means_no_second_attempt() -> None:
    stop = threading.Event()
    stop.set()
    func, calls = failing([wrapped(1205)])
    started = time.monotonic()
    with pytest.raises(ShutdownRequested):
        retry(func, stop, base_delay=30.0, max_delay=60.0)
    assert time.monotonic() - started < 1.0
    assert len(calls) == 1


def test_retry_callback_sees_each_transient_error() -> None:
    seen: list[int | None] = []
    func, _calls = failing([wrapped(2006), wrapped(1040)])
    call_with_retries(
        func,
        what="x",
        retries=3,
        base_delay=0.0,
        max_delay=0.0,
        jitter=0.0,
        stop_event=threading.Event(),
        on_retry=lambda exc: seen.append(mysql_error_code(exc)),
    )
    assert seen == [2006, 1040]
