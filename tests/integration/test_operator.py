"""The operator's path through the real CLI (``db_pipeline.py`` as a subprocess): signals honoured
in every mode and at any moment, exit codes of interrupted runs, fail-fast ``--verify``, and
SIGHUP reloading ``tables.json`` between cycles.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import create_big_table, run_daemon, start_daemon

from conftest import SyncEnv

pytestmark = pytest.mark.integration

SMALL_TABLES = ("alpha", "beta", "gamma")
STOP_SECONDS = 10.0  # a stop signal must end the process within this (usually well under 1 s)


class Output:
    """Reads a daemon's merged stdout/stderr in a thread; :meth:`pause` lets the pipe fill up, as
    a slow log consumer would, so the daemon blocks inside a log write."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reading = threading.Event()
        self._reading.set()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while self._reading.wait() and (line := self.proc.stdout.readline()):
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def pause(self) -> None:
        """Stop reading (after the current line)."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_for(self, pattern: str, occurrences: int = 1, timeout: float = 60.0) -> bool:
        """True once ``pattern`` was seen ``occurrences`` times."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for line in self.lines if re.search(pattern, line)) < occurrences:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None and not self._thread.is_alive():
                    return False
                self._changed.wait(min(remaining, 0.2))
        return True

    def search(self, pattern: str) -> re.Match[str] | None:
        """The first match of ``pattern`` in the output so far."""
        with self._changed:
            return re.search(pattern, "".join(self.lines))

    def text(self) -> str:
        """Everything the process wrote (waits briefly for the reader when the process ended)."""
        if self.proc.poll() is not None:
            self._thread.join(timeout=5)
        with self._changed:
            return "".join(self.lines)


@contextmanager
def daemon(env: dict[str, str], *args: str, cwd: Path) -> Iterator[Output]:
    proc = start_daemon(env, *args, cwd=cwd)
    try:
        yield Output(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stopped_within(proc: subprocess.Popen[str], seconds: float) -> int | None:
    """The exit code when ``proc`` ended within ``seconds``, else None."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def small_tables(env: SyncEnv, names: tuple[str, ...] = SMALL_TABLES) -> list[dict[str, Any]]:
    entries = []
    for name in names:
        env.src(f"CREATE TABLE {name} (id INT PRIMARY KEY, v VARCHAR(20), updated_at DATETIME(6) NOT NULL)")
        env.src(f"INSERT INTO {name} SELECT seq, CONCAT('v', seq), '2024-01-01' FROM seq_1_to_20")
        entries.append({"table": name, "primary_key": "id", "modifier": "updated_at"})
    return entries


def busy_environ(env: SyncEnv, **overrides: Any) -> dict[str, str]:
    """Cycles back to back with debug logging: the daemon writes a log line every few milliseconds,
    through a buffered stderr (PYTHONUNBUFFERED unset, as under ``make test``) whose writer object
    refuses a reentrant write."""
    return env.environ(INTERVAL="0", LOG_LEVEL="DEBUG", WATCHDOG_INTERVAL="0", PYTHONUNBUFFERED="", **overrides)


# ----------------------------------------------------------------------------- signal storm


def test_fifty_signals_at_random_moments_are_all_honoured(sync_env: SyncEnv) -> None:
    """SIGTERM/SIGINT land while the busy daemon writes log lines, often blocked in a write to a
    full pipe: each one stops it (the handler used to log and raised "reentrant call" there, before
    setting the stop event); 40 SIGHUPs to one daemon each cause a reload before the next cycle."""
    sync_env.write_tables(small_tables(sync_env))
    rng = random.Random(12)
    honoured = 0
    # 10 short-lived daemons, half stopped by SIGTERM, half by SIGINT, at a random moment of cycling.
    for number in range(10):
        signum = signal.SIGTERM if number % 2 == 0 else signal.SIGINT
        with daemon(busy_environ(sync_env), cwd=sync_env.workdir) as out:
            assert out.wait_for(r"SYNC_ENGINE - CYCLE - cycle 2\b"), out.text()
            out.pause()
            time.sleep(rng.uniform(0, 0.5))  # the pipe fills within milliseconds: the daemon blocks in a write
            out.proc.send_signal(signum)
            time.sleep(0.1)
            out.resume()
            code = stopped_within(out.proc, STOP_SECONDS)
            text = out.text()
            assert code == 0, f"{signum.name} #{number} not honoured within {STOP_SECONDS}s:\n{text[-3000:]}"
            assert f"{signum.name} received" in text
            assert "Logging error" not in text and "reentrant" not in text, text
            honoured += 1
    # 40 SIGHUPs to one daemon: every one is followed by a reload.
    with daemon(busy_environ(sync_env), cwd=sync_env.workdir) as out:
        assert out.wait_for(r"SYNC_ENGINE - CYCLE - cycle 2\b"), out.text()
        for number in range(1, 41):
            out.pause()
            time.sleep(rng.uniform(0, 0.05))
            out.proc.send_signal(signal.SIGHUP)
            out.resume()
            assert out.wait_for(r"SYNC_ENGINE - RELOAD - ", number, timeout=STOP_SECONDS), (
                f"SIGHUP #{number} not honoured:\n{out.text()[-3000:]}"
            )
            honoured += 1
        out.proc.send_signal(signal.SIGTERM)
        assert stopped_within(out.proc, STOP_SECONDS) == 0, out.text()[-3000:]
        assert "Logging error" not in out.text()
    assert honoured == 50


# ----------------------------------------------------------------------------- --verify / --check


@pytest.fixture
def big_pair(sync_env: SyncEnv) -> SyncEnv:
    """A 300,000-row table in the source and a copy with a few differences in the target."""
    create_big_table(sync_env.source, sync_env.source_db, "big", 300_000)
    create_big_table(sync_env.target, sync_env.target_db, "big", 300_000)
    sync_env.tgt("UPDATE big SET name = 'changed' WHERE id % 50000 = 7")
    sync_env.write_tables([{"table": "big", "primary_key": "id", "modifier": "updated_at"}])
    return sync_env


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_verify_stops_on_a_signal_and_never_exits_0(big_pair: SyncEnv, signum: signal.Signals) -> None:
    with daemon(big_pair.environ(CHUNK_SIZE="2000"), "--verify", "--repair", "big", cwd=big_pair.workdir) as out:
        assert out.wait_for(r"^table\s+source rows", timeout=60), out.text()  # the comparison has begun
        time.sleep(0.3)
        assert out.proc.poll() is None, "verify ended before the signal; make the table bigger:\n" + out.text()
        sent = time.monotonic()
        out.proc.send_signal(signum)
        code = stopped_within(out.proc, STOP_SECONDS)
        assert code == 128 + signum, out.text()
        assert time.monotonic() - sent < 5.0


class SilentServer:
    """A TCP port that accepts connections and never answers: a MySQL client waits for the
    greeting until its connect timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("mode", ["--check", "--verify"])
def test_blocked_check_and_verify_stop_on_sigterm_within_seconds(sync_env: SyncEnv, mode: str) -> None:
    """Even while a connect hangs (no greeting for 60 s), SIGTERM ends the run with 143."""
    server = SilentServer()
    try:
        sync_env.write_tables([{"table": "t", "primary_key": "id"}])
        env = sync_env.environ(SOURCE_DB_PORT=server.port, SOURCE_DB_CONNECT_TIMEOUT="60")
        with daemon(env, mode, cwd=sync_env.workdir) as out:
            deadline = time.monotonic() + 30
            while not server.accepted and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.accepted, out.text()
            sent = time.monotonic()
            out.proc.send_signal(signal.SIGTERM)
            assert stopped_within(out.proc, STOP_SECONDS) == 143, out.text()
            assert time.monotonic() - sent < 6.0
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("role", ["SOURCE", "TARGET"])
def test_verify_fails_fast_on_a_refused_port(sync_env: SyncEnv, role: str) -> None:
    sync_env.write_tables([{"table": "t", "primary_key": "id"}])
    started = time.monotonic()
    result = run_daemon(
        sync_env.environ(**{f"{role}_DB_PORT": closed_port()}), "--verify", cwd=sync_env.workdir, timeout=60
    )
    assert result.returncode == 1, result.stdout
    assert time.monotonic() - started < 30
    assert f"cannot connect to the {role.lower()} database" in result.stdout


# ----------------------------------------------------------------------------- SIGHUP reload


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:  # noqa: S310 - local test server
        return json.loads(response.read())


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_sighup_reloads_tables_between_cycles(sync_env: SyncEnv) -> None:
    entries = dict(zip(SMALL_TABLES, small_tables(sync_env), strict=True))
    tables_file = sync_env.write_tables([entries["alpha"], entries["beta"]])
    env = sync_env.environ(INTERVAL="0.5", WATCHDOG_INTERVAL="0")
    with daemon(env, cwd=sync_env.workdir) as out:
        assert out.wait_for(r"listening on http://"), out.text()
        listening = out.search(r"listening on http://[^:]+:(\d+)/")
        assert listening is not None
        port = int(listening.group(1))
        assert out.wait_for(r"cycle 1\b"), out.text()
        assert set(health(port)["tables"]) == {"alpha", "beta"}
        # New list: gamma added, alpha removed.
        tables_file.write_text(json.dumps([entries["beta"], entries["gamma"]]))
        out.proc.send_signal(signal.SIGHUP)
        assert out.wait_for(r"RELOAD - .*added: gamma; removed \(target tables left as they are\): alpha"), out.text()
        assert wait_until(
            lambda: (
                sync_env.tgt_query("SELECT COUNT(*) FROM gamma")[0][0] == 20
                if sync_env.tgt_query("SHOW TABLES LIKE 'gamma'")
                else False
            )
        ), out.text()
        assert set(health(port)["tables"]) == {"beta", "gamma"}
        cycles = out.count(r"SYNC_ENGINE - CYCLE - cycle \d+")
        sync_env.src("UPDATE alpha SET v = 'late', updated_at = '2030-01-01' WHERE id = 1")
        sync_env.src("UPDATE beta SET v = 'late', updated_at = '2030-01-01' WHERE id = 1")
        assert out.wait_for(r"SYNC_ENGINE - CYCLE - cycle \d+", cycles + 2), out.text()
        assert sync_env.tgt_query("SELECT v FROM beta WHERE id = 1") == [("late",)]
        assert sync_env.tgt_query("SELECT v FROM alpha WHERE id = 1") == [("v1",)]  # left alone, not dropped
        # A broken file: reported with --check's message, the list in force stays.
        tables_file.write_text(json.dumps([entries["beta"], {"table": "gamma"}]))
        check = run_daemon(env, "--check", cwd=sync_env.workdir, timeout=60)
        assert check.returncode == 2
        message = check.stdout.strip().removeprefix("configuration error: ")
        assert "'primary_key' is required" in message
        out.proc.send_signal(signal.SIGHUP)
        assert out.wait_for(re.escape(message) + r"; keeping the 2 table\(s\) in force"), out.text()
        cycles = out.count(r"SYNC_ENGINE - CYCLE - cycle \d+")
        sync_env.src("UPDATE gamma SET v = 'later', updated_at = '2030-01-02' WHERE id = 2")
        assert out.wait_for(r"SYNC_ENGINE - CYCLE - cycle \d+", cycles + 2), out.text()
        assert sync_env.tgt_query("SELECT v FROM gamma WHERE id = 2") == [("later",)]
        assert set(health(port)["tables"]) == {"beta", "gamma"}
        out.proc.send_signal(signal.SIGTERM)
        assert stopped_within(out.proc, STOP_SECONDS) == 0, out.text()


def test_text_log_lines_follow_tz_and_go_to_log_file(sync_env: SyncEnv) -> None:
    sync_env.write_tables(small_tables(sync_env, ("alpha",)))
    log_file = sync_env.workdir / "output.log"
    env = {**sync_env.environ(LOG_FILE=log_file, DEBUG_MODE="true"), "TZ": "Asia/Jakarta"}
    result = run_daemon(env, "--once", cwd=sync_env.workdir, timeout=120)
    assert result.returncode == 0, result.stdout
    logged = log_file.read_text(encoding="utf-8")
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0700 - DEBUG - ", logged, flags=re.M), logged[:2000]
    cycle_line = next(line for line in logged.splitlines() if "SYNC_ENGINE - CYCLE - cycle 1" in line)
    assert cycle_line in result.stdout  # stderr still gets every line


def test_unknown_variables_with_our_prefixes_are_warned_once(sync_env: SyncEnv) -> None:
    sync_env.write_tables(small_tables(sync_env, ("alpha",)))
    env = sync_env.environ(SOURCE_DB_PASWORD="x", FILE_STAGING_RETENTION="1", PIPELINES_DIR="/tmp/x", UNRELATED_VAR="1")
    result = run_daemon(env, "--once", cwd=sync_env.workdir, timeout=120)
    assert result.returncode == 0, result.stdout
    for name in ("SOURCE_DB_PASWORD", "FILE_STAGING_RETENTION", "PIPELINES_DIR"):
        assert result.stdout.count(f"environment variable {name} ") == 1, result.stdout
    assert "UNRELATED_VAR" not in result.stdout
