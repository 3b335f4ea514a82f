"""Throwaway MariaDB servers for integration tests and the benchmark.

A data directory is initialised once with ``mariadb-install-db`` and copied for every further
server, so starting one costs about a second. Servers listen on free ports of 127.0.0.1 and are
started, killed and restarted by the tests themselves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pymysql

INSTALL_DB = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db") or "mariadb-install-db"
SERVER_BIN = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_template(directory: Path) -> Path:
    """Create an initialised, empty data directory to copy servers from."""
    datadir = directory / "template"
    if (datadir / "mysql").is_dir():
        return datadir
    datadir.mkdir(parents=True, exist_ok=True)
    command = [
        INSTALL_DB,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--user=" + (os.environ.get("USER") or "root"),
    ]
    if os.geteuid() == 0:
        command[-1] = "--user=root"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {result.stderr[-2000:]}")
    return datadir


class MariaDBServer:
    """One mariadbd process with its own data directory and port."""

    def __init__(self, base: Path, template: Path, name: str, extra_args: list[str] | None = None) -> None:
        self.name = name
        self.root = base / f"{name}-{uuid.uuid4().hex[:6]}"
        self.datadir = self.root / "data"
        shutil.copytree(template, self.datadir)
        # A private tmpdir: a starting mariadbd deletes every '#sql*' file in its tmpdir, which
        # would break the temporary tables of other servers sharing /tmp.
        (self.root / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "root"  # the credentials tests use (ExternalServer reads them from its URL)
        self.password = ""
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "mysqld.sock"

    def command(self) -> list[str]:
        args = [
            SERVER_BIN,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--tmpdir={self.root / 'tmp'}",
            f"--log-error={self.root / 'error.log'}",
            "--skip-log-bin",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
            "--max-connections=300",
            "--local-infile=1",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        return args + self.extra_args

    def start(self, timeout: float = 60.0) -> MariaDBServer:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd {self.name} exited: {self.error_log()[-2000:]}")
            try:
                self.connect().close()
                return self
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"mariadbd {self.name} did not start within {timeout}s")

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """``kill -9`` the server, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, extra_args: list[str] | None = None) -> MariaDBServer:
        self.stop()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        return self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(
        self, database: str | None = None, user: str = "root", password: str = "", **kwargs: Any
    ) -> pymysql.Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
            local_infile=True,
            **kwargs,
        )

    def execute(self, sql: str, database: str | None = None, args: Any = None) -> None:
        """Run one or more ``;``-separated statements (no result)."""
        conn = self.connect(database, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                while cur.nextset():
                    pass
        finally:
            conn.close()

    def query(self, sql: str, database: str | None = None, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def scalar(self, sql: str, database: str | None = None, args: Any = None) -> Any:
        rows = self.query(sql, database, args)
        return rows[0][0] if rows else None
