"""Stop and reload signals for the daemon loop, and running work so that a stop signal ends it within seconds."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from dlt_db_sync.config.command_line import EXIT_FAILED
from dlt_db_sync.utils.logging_setup import log_fields

# After a stop signal, --check and --verify get this long to reach their next stop check.
logger = logging.getLogger("dlt_sync.main")

STOP_GRACE_SECONDS = 3.0


POLL_SECONDS = 0.2


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Signals:
    """SIGTERM/SIGINT request a stop (``stop``), SIGHUP a reload of the tables file (``reload``).

    The Python handlers do no I/O and take no lock: logging from a handler raised "reentrant
    call" when the signal landed while the main thread was writing a log line, and even
    ``Event.set`` takes the event's lock, which the interrupted main thread may hold inside
    ``Event.wait``. So the C-level handler's wakeup byte (``signal.set_wakeup_fd``) is read by a
    watcher thread, which sets the events; the loops log what happened. A second stop signal
    raises KeyboardInterrupt in the main thread (stop now); nothing else in a handler.
    """

    def __init__(self, stop: threading.Event, reload: threading.Event | None = None) -> None:
        self.stop = stop
        self.reload = reload or threading.Event()
        self.received: int | None = None  # the first stop signal, set by the watcher thread
        self._stop_signals = 0  # counted by the handler itself: the watcher may lag behind
        self._handled: int | None = None  # the first stop signal as the handler saw it
        self._restore: list[tuple[int, object]] = []
        self._fds: tuple[int, int] | None = None
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Install the handlers and start the watcher thread (main thread only)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._fds = (read_fd, write_fd)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_hangup),
        ):
            self._restore.append((signum, signal.getsignal(signum)))
            signal.signal(signum, handler)
        threading.Thread(target=self._watch, args=(read_fd,), name="signals", daemon=True).start()

    def uninstall(self) -> None:
        """Put the previous handlers back (``main`` may run in-process, e.g. under pytest)."""
        for signum, handler in reversed(self._restore):
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._restore.clear()
        if self._fds is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            os.close(self._fds[1])  # the watcher reads end-of-file and ends
            self._fds = None

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signals += 1
        if self._handled is None:
            self._handled = signum
        if self._stop_signals > 1:
            raise KeyboardInterrupt  # second signal: stop now

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        """Nothing to do here: the watcher thread sets ``reload``."""

    def _watch(self, read_fd: int) -> None:
        while data := os.read(read_fd, 64):
            for signum in data:
                if signum == signal.SIGHUP:
                    self.reload.set()
                elif signum in STOP_SIGNALS:
                    if self.received is None:
                        self.received = signum
                    self.stop.set()
        os.close(read_fd)

    def interrupted_code(self) -> int | None:
        """128 + the first stop signal's number (130 SIGINT, 143 SIGTERM), or None."""
        signum = self.received if self.received is not None else self._handled  # the watcher may lag behind
        return None if signum is None else 128 + int(signum)


def log_stop(signals: Signals) -> None:
    """The shutdown line a signal handler must not write itself."""
    if signals.received is not None:
        logger.info(
            "%s received; finishing the current chunk and stopping",
            signal.Signals(signals.received).name,
            extra=log_fields("SYNC_ENGINE", "SHUTDOWN"),
        )


def run_interruptible(work: Callable[[], int], stop: threading.Event, grace: float = STOP_GRACE_SECONDS) -> int:
    """``work()`` in a worker thread, so a stop signal ends --check and --verify within seconds.

    The work checks ``stop`` between tables and chunks; one blocked in a connect or a long query
    cannot, so after ``grace`` seconds the main thread returns EXIT_FAILED without it (the thread
    is a daemon thread: the process exits, the server rolls back what it did not commit).
    Exceptions of the work are raised here.
    """
    outcome: list[int] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="work", daemon=True).start()
    while not done.wait(POLL_SECONDS):
        if stop.is_set():
            done.wait(grace)
            break
    if failure:
        raise failure[0]
    if not outcome:
        logger.warning(
            "still busy %.0fs after the stop signal; exiting without it",
            grace,
            extra=log_fields("SYNC_ENGINE", "SHUTDOWN"),
        )
        return EXIT_FAILED
    return outcome[0]
