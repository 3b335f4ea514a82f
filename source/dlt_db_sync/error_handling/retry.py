"""The one retry layer: transient errors are retried where a retry is safe and cheap.

Where retries happen (with ``LOCK_TIMEOUT_RETRIES`` = N, default 5):

* **a load chunk** (``data_processing.loader``) and **a delete statement** (delete reconciliation,
  repair): each is its own short transaction, so a transient error (lock wait, deadlock, lost
  connection, busy pool; see ``errors.TRANSIENT_ERROR_CODES``) is retried up to N times, N + 1
  attempts in all, waiting ``LOCK_TIMEOUT_BASE_DELAY`` x 2^(k-1) seconds before retry k, capped at
  ``LOCK_TIMEOUT_MAX_DELAY``, plus a random 0 .. ``LOCK_TIMEOUT_JITTER`` x base delay;
* **a table** is *re-planned* once (:data:`REPLAN`): when its sync (or its delete reconciliation)
  fails with a transient error that no inner layer has retried yet (a lost connection while the
  rows are read, a fingerprint query that hit a lock wait), the pools are rebuilt on a lost
  connection and the table starts over once after ``LOCK_TIMEOUT_BASE_DELAY``, from the state it
  committed (the pending bound, the untouched shadow table): nothing is lost or duplicated.

No nesting: an error that leaves a retry layer is marked as spent and never retried by an outer
layer, so a failing chunk is tried exactly N + 1 times, not (N + 1)^2. Terminal errors (classified
by MySQL error code) are never retried. Every wait is ``stop_event.wait``: a shutdown ends it at
once with :class:`ShutdownRequested`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from dlt_db_sync.error_handling.errors import ShutdownRequested, describe_error, is_transient
from dlt_db_sync.utils.logging_setup import log_fields

if TYPE_CHECKING:
    import tenacity

logger = logging.getLogger("dlt_sync.error_handling")

T = TypeVar("T")

# Attribute set on an exception that already used up a retry layer's budget (see retries_spent).
SPENT_ATTRIBUTE = "dlt_sync_retries_spent"
REPLAN = 1  # retries of a whole table: one re-plan, never a backoff series


def retries_spent(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it wraps) already left a retry layer: not to be retried again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, SPENT_ATTRIBUTE, False):
            return True
        current = current.__cause__ or current.__context__
    return False


def retryable(exc: BaseException) -> bool:
    """The retry predicate: transient (by MySQL error code or class) and not retried by an inner layer."""
    return is_transient(exc) and not retries_spent(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters (attributes, so tests can shrink them) and the call that applies them."""

    retries: int
    base_delay: float
    max_delay: float
    jitter: float

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """The ``LOCK_TIMEOUT_*`` budget of one chunk or statement."""
        return cls(
            retries=settings.lock_timeout_retries,
            base_delay=settings.lock_timeout_base_delay,
            max_delay=settings.lock_timeout_max_delay,
            jitter=settings.lock_timeout_jitter,
        )

    def replan(self) -> RetryPolicy:
        """The budget of a whole table: :data:`REPLAN` retry after the base delay (no backoff series)."""
        return replace(self, retries=min(self.retries, REPLAN), max_delay=self.base_delay)

    def call(
        self,
        func: Callable[[], T],
        *,
        what: str,
        stop_event: threading.Event,
        on_retry: Callable[[BaseException], None] | None = None,
        on_recovered: Callable[[float], None] | None = None,
    ) -> T:
        """:func:`call_with_retries` with this policy."""
        return call_with_retries(
            func,
            what=what,
            retries=self.retries,
            base_delay=self.base_delay,
            max_delay=self.max_delay,
            jitter=self.jitter,
            stop_event=stop_event,
            on_retry=on_retry,
            on_recovered=on_recovered,
        )


def call_with_retries(
    func: Callable[[], T],
    *,
    what: str,
    retries: int,
    base_delay: float,
    max_delay: float,
    jitter: float,
    stop_event: threading.Event,
    on_retry: Callable[[BaseException], None] | None = None,
    on_recovered: Callable[[float], None] | None = None,
) -> T:
    """Run ``func``; retry transient errors up to ``retries`` times with exponential backoff and jitter.

    The wait between attempts is ``stop_event.wait`` so a shutdown interrupts it at once
    (raising :class:`ShutdownRequested`). Terminal errors, errors an inner layer already retried
    and the last transient error propagate; a transient error leaving here is marked spent (see
    :func:`retries_spent`). ``on_recovered`` gets the seconds from the first failed attempt to
    the success of a retry.
    """
    import tenacity  # here, not at module level: the command line answers --help without it

    first_failure: list[float] = []

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s failed (attempt %d/%d): %s; retrying in %.1fs",
            what,
            state.attempt_number,
            retries + 1,
            describe_error(exc) if exc else "?",
            delay,
            extra=log_fields("ERROR_RECOVERY", "RETRY"),
        )
        if not first_failure:
            first_failure.append(time.monotonic())
        if on_retry is not None and exc is not None:
            on_retry(exc)

    def interruptible_sleep(seconds: float) -> None:
        if stop_event.wait(seconds):
            raise ShutdownRequested(f"shutdown requested while waiting to retry {what}")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=base_delay, max=max_delay)
        + tenacity.wait_random(0, base_delay * jitter if base_delay else 0),
        sleep=interruptible_sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        result = retrying(func)
    except Exception as exc:
        if is_transient(exc):
            setattr(exc, SPENT_ATTRIBUTE, True)  # this layer had its say: outer layers leave it alone
        raise
    if first_failure and on_recovered is not None:
        on_recovered(time.monotonic() - first_failure[0])
    return result
