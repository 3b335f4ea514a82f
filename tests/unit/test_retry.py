"""The one retry layer: attempt counts, no nesting, backoff delays, interruptible waits, terminal errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pymysql
import pytest
import sqlalchemy as sa

from dlt_db_sync.config.settings import DatabaseSettings, Settings
from dlt_db_sync.data_processing.loader import TargetLoader
from dlt_db_sync.error_handling.errors import ShutdownRequested, mysql_error_code
from dlt_db_sync.error_handling.retry import REPLAN, RetryPolicy, call_with_retries, retries_spent


def wrapped(code: int, message: str = "some text") -> sa.exc.DBAPIError:
    """A driver error for ``code`` wrapped by SQLAlchemy exactly as a failing statement raises it."""
    cls = pymysql.err.error_map.get(code, pymysql.err.OperationalError)
    return sa.exc.DBAPIError.instance("SELECT 1", {}, cls(code, message), pymysql.err.Error)


class RecordingEvent(threading.Event):
    """A stop event whose waits return at once and are recorded (``stop_after``: report a stop then)."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def always(error: Callable[[], BaseException]) -> tuple[Callable[[], Any], list[int]]:
    """A function raising a fresh ``error()`` on every call, and its call count."""
    calls: list[int] = []

    def func() -> Any:
        calls.append(1)
        raise error()

    return func, calls


def policy(retries: int = 5, base: float = 10.0, cap: float = 300.0, jitter: float = 0.0) -> RetryPolicy:
    return RetryPolicy(retries=retries, base_delay=base, max_delay=cap, jitter=jitter)


def settings(**overrides: Any) -> Settings:
    db = DatabaseSettings(role="target", host="127.0.0.1", port=3306, name="x", user="u", password="")
    return Settings(source=db, target=db, **overrides)


# ----------------------------------------------------------------------------- attempts and delays


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_a_transient_error_is_tried_exactly_retries_plus_one_times(retries: int) -> None:
    func, calls = always(lambda: wrapped(1205))
    stop = RecordingEvent()
    with pytest.raises(sa.exc.OperationalError) as info:
        policy(retries).call(func, what="x", stop_event=stop)
    assert len(calls) == retries + 1
    assert len(stop.waits) == retries
    assert retries_spent(info.value)  # the error carries the mark: no outer layer retries it


def test_backoff_doubles_from_the_base_delay_up_to_the_cap() -> None:
    func, _calls = always(lambda: wrapped(1213))
    stop = RecordingEvent()
    with pytest.raises(sa.exc.OperationalError):
        policy(retries=5, base=10.0, cap=300.0).call(func, what="x", stop_event=stop)
    assert stop.waits == [10.0, 20.0, 40.0, 80.0, 160.0]  # the README's default budget: 310 s of waits
    stop = RecordingEvent()
    with pytest.raises(sa.exc.OperationalError):
        policy(retries=5, base=10.0, cap=30.0).call(func, what="x", stop_event=stop)
    assert stop.waits == [10.0, 20.0, 30.0, 30.0, 30.0]


def test_jitter_adds_at_most_its_fraction_of_the_base_delay() -> None:
    func, _calls = always(lambda: wrapped(1213))
    stop = RecordingEvent()
    with pytest.raises(sa.exc.OperationalError):
        policy(retries=3, base=10.0, cap=300.0, jitter=0.5).call(func, what="x", stop_event=stop)
    assert [0 <= got - want <= 5.0 for got, want in zip(stop.waits, [10.0, 20.0, 40.0], strict=True)] == [True] * 3


def test_the_policy_comes_from_the_lock_timeout_settings() -> None:
    got = RetryPolicy.from_settings(
        settings(
            lock_timeout_retries=7, lock_timeout_base_delay=2.0, lock_timeout_max_delay=9.0, lock_timeout_jitter=0.2
        )
    )
    assert got == RetryPolicy(retries=7, base_delay=2.0, max_delay=9.0, jitter=0.2)


def test_a_replan_is_one_retry_after_the_base_delay() -> None:
    replan = policy(retries=5, base=10.0, cap=300.0).replan()
    assert (replan.retries, replan.base_delay, replan.max_delay) == (REPLAN, 10.0, 10.0) == (1, 10.0, 10.0)
    func, calls = always(lambda: wrapped(2013))
    stop = RecordingEvent()
    with pytest.raises(sa.exc.OperationalError):
        replan.call(func, what="x", stop_event=stop)
    assert len(calls) == 2 and stop.waits == [10.0]
    assert policy(retries=0).replan().retries == 0  # LOCK_TIMEOUT_RETRIES=0: no retry anywhere


# ----------------------------------------------------------------------------- no nesting


def test_an_error_an_inner_layer_retried_is_not_retried_by_an_outer_one() -> None:
    func, calls = always(lambda: wrapped(1205))
    stop = RecordingEvent()

    def inner() -> Any:
        return policy(retries=2).call(func, what="chunk", stop_event=stop)

    with pytest.raises(sa.exc.OperationalError):
        policy(retries=5).call(inner, what="table", stop_event=stop)
    assert len(calls) == 3  # the chunk's own 1 + 2 attempts; nested layers would make it 18
    assert stop.waits == [10.0, 20.0]


def test_a_wrapped_spent_error_stays_spent() -> None:
    """An error raised ``from`` a spent one (a classified DatabaseError, say) is not retried either."""
    spent, _calls = always(lambda: wrapped(2006))
    stop = RecordingEvent()
    calls: list[int] = []

    def outer_work() -> Any:
        calls.append(1)
        try:
            policy(retries=1).call(spent, what="chunk", stop_event=stop)
        except sa.exc.OperationalError as exc:
            raise RuntimeError("loading failed") from exc

    with pytest.raises(RuntimeError):
        call_with_retries(outer_work, what="t", retries=3, base_delay=1, max_delay=1, jitter=0, stop_event=stop)
    assert calls == [1]


def test_a_fresh_error_outside_any_inner_layer_is_retried_by_the_outer_one() -> None:
    errors = [wrapped(2013)]

    def work() -> str:
        if errors:
            raise errors.pop()
        return "done"

    stop = RecordingEvent()
    assert policy(retries=5).replan().call(work, what="table", stop_event=stop) == "done"
    assert stop.waits == [10.0]


def test_a_failing_chunk_is_tried_exactly_n_plus_one_times_by_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = TargetLoader(
        None,  # type: ignore[arg-type]  # never reached: _apply_chunk is replaced
        settings(lock_timeout_retries=3, lock_timeout_base_delay=0.0, lock_timeout_max_delay=0.0),
        RecordingEvent(),
        "insert",
    )
    applied: list[int] = []

    def apply(*_args: Any) -> None:
        applied.append(1)
        raise wrapped(1205)

    monkeypatch.setattr(loader, "_apply_chunk", apply)
    monkeypatch.setattr(TargetLoader, "_align", staticmethod(lambda chunk, _columns: chunk))
    chunk = pa.table({"id": pa.array(["1", "2"])})
    with pytest.raises(sa.exc.OperationalError) as info:
        RetryPolicy(retries=5, base_delay=0.0, max_delay=0.0, jitter=0.0).replan().call(
            lambda: loader.load("t", [], ["id"], [chunk], into_empty=False, chunk_rows=10),
            what="syncing t",
            stop_event=threading.Event(),
        )
    assert len(applied) == 4  # LOCK_TIMEOUT_RETRIES=3 at the chunk; the table's re-plan adds none
    assert mysql_error_code(info.value) == 1205


# ----------------------------------------------------------------------------- stop and terminal errors


def test_a_stop_during_the_wait_ends_the_retries_at_once() -> None:
    func, calls = always(lambda: wrapped(2013))
    stop = RecordingEvent(stop_after=1)
    with pytest.raises(ShutdownRequested):
        policy(retries=5, base=300.0).call(func, what="x", stop_event=stop)
    assert len(calls) == 1 and stop.waits == [300.0]


@pytest.mark.parametrize("code", [1045, 1146, 1054, 1064, 1406, 1292, 3750])
def test_terminal_codes_are_tried_once(code: int) -> None:
    # The message says "deadlock": classification must read the code, not the text.
    func, calls = always(lambda: wrapped(code, "Deadlock found when trying to get lock"))
    stop = RecordingEvent()
    with pytest.raises(sa.exc.DBAPIError):
        policy().call(func, what="x", stop_event=stop)
    assert len(calls) == 1 and stop.waits == []


def test_a_transient_code_with_a_terminal_sounding_message_is_retried() -> None:
    func, calls = always(lambda: wrapped(1213, "Access denied for user 'x'"))
    with pytest.raises(sa.exc.OperationalError):
        policy(retries=2).call(func, what="x", stop_event=RecordingEvent())
    assert len(calls) == 3
