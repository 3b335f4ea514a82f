"""Shared fixtures: source path on sys.path, throwaway MariaDB servers, per-test databases.

External mode: with ``TEST_SOURCE_URL`` and ``TEST_TARGET_URL`` (``mysql://user:pw@host:port``) the
integration tests use those servers instead (MySQL or MariaDB, see tests/external_server.py);
every test still gets fresh databases, and tests that start their own servers skip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # shared helpers of the integration tests
sys.path.append(str(ROOT / "tests" / "fuzz"))  # the fuzzer's modules (appended: its conftest must not shadow this one)

from external_server import SKIP_REASON, ExternalServer  # noqa: E402
from mariadb_server import MariaDBServer, init_template  # noqa: E402

EXTERNAL_URLS = (os.environ.get("TEST_SOURCE_URL", ""), os.environ.get("TEST_TARGET_URL", ""))
EXTERNAL = all(EXTERNAL_URLS)
if any(EXTERNAL_URLS) and not EXTERNAL:
    raise RuntimeError("set both TEST_SOURCE_URL and TEST_TARGET_URL for external mode, or neither")


class ServerFactory:
    """Starts MariaDB servers from one initialised template; destroys them at session end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.template = init_template(base)
        self.servers: list[MariaDBServer] = []

    def start(self, name: str, extra_args: list[str] | None = None) -> MariaDBServer:
        server = MariaDBServer(self.base, self.template, name, extra_args)
        self.servers.append(server)
        return server.start()

    def destroy_all(self) -> None:
        for server in self.servers:
            server.destroy()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    if EXTERNAL:
        pytest.skip(SKIP_REASON)
    factory = ServerFactory(tmp_path_factory.mktemp("mariadb"))
    yield factory
    factory.destroy_all()


@pytest.fixture(scope="session")
def source_server(request: pytest.FixtureRequest) -> MariaDBServer:
    """A shared source server (UTC+7); tests must not stop it — start their own to do that."""
    if EXTERNAL:
        return ExternalServer(EXTERNAL_URLS[0], "source")  # type: ignore[return-value]
    return request.getfixturevalue("server_factory").start("source", ["--default-time-zone=+07:00"])


@pytest.fixture(scope="session")
def target_server(request: pytest.FixtureRequest) -> MariaDBServer:
    """A shared target server in a different time zone from the source."""
    if EXTERNAL:
        return ExternalServer(EXTERNAL_URLS[1], "target")  # type: ignore[return-value]
    return request.getfixturevalue("server_factory").start("target", ["--default-time-zone=-05:00"])


# A source that writes the row-based binlog binlog change capture reads (issue 16).
BINLOG_SOURCE_ARGS = [
    "--default-time-zone=+07:00",
    "--log-bin=binlog",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--server-id=1",
]


@pytest.fixture(scope="session")
def binlog_source_server(request: pytest.FixtureRequest) -> MariaDBServer:
    """A shared binlog-enabled source (UTC+7); tests that purge or restart it start their own."""
    return request.getfixturevalue("server_factory").start("binlog-source", BINLOG_SOURCE_ARGS)


@dataclass
class SyncEnv:
    """A fresh source and target database pair plus the environment to sync them."""

    source: MariaDBServer
    target: MariaDBServer
    source_db: str
    target_db: str
    workdir: Path

    def environ(self, **overrides: Any) -> dict[str, str]:
        env = {
            "SOURCE_DB_HOST": self.source.host,
            "SOURCE_DB_PORT": str(self.source.port),
            "SOURCE_DB_NAME": self.source_db,
            "SOURCE_DB_USER": self.source.user,
            "SOURCE_DB_PASS": self.source.password,
            "TARGET_DB_HOST": self.target.host,
            "TARGET_DB_PORT": str(self.target.port),
            "TARGET_DB_NAME": self.target_db,
            "TARGET_DB_USER": self.target.user,
            "TARGET_DB_PASS": self.target.password,
            "INTERVAL": "1",
            "BATCH_DELAY": "0",
            "LOCK_TIMEOUT_BASE_DELAY": "0.2",
            "LOCK_TIMEOUT_MAX_DELAY": "1",
            "LOCK_TIMEOUT_RETRIES": "3",
            "FILE_STAGING_DIR": str(self.workdir / "staging"),
            "TABLES_FILE": str(self.workdir / "tables.json"),
            "HEALTH_PORT": "0",
            "POOL_SIZE": "5",
            "MAX_OVERFLOW": "5",
        }
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def src(self, sql: str, args: Any = None) -> None:
        self.source.execute(sql, self.source_db, args)

    def tgt(self, sql: str, args: Any = None) -> None:
        self.target.execute(sql, self.target_db, args)

    def src_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self.source.query(sql, self.source_db, args)

    def tgt_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self.target.query(sql, self.target_db, args)

    def write_tables(self, entries: list[dict[str, Any]]) -> Path:
        import json

        path = self.workdir / "tables.json"
        path.write_text(json.dumps(entries, indent=2))
        return path


@pytest.fixture
def sync_env(source_server: MariaDBServer, target_server: MariaDBServer, tmp_path: Path) -> Iterator[SyncEnv]:
    suffix = uuid.uuid4().hex[:8]
    env = SyncEnv(source_server, target_server, f"src_{suffix}", f"tgt_{suffix}", tmp_path)
    source_server.execute(f"CREATE DATABASE `{env.source_db}` CHARACTER SET utf8mb4")
    target_server.execute(f"CREATE DATABASE `{env.target_db}` CHARACTER SET utf8mb4")
    yield env
    for server, db in ((source_server, env.source_db), (target_server, env.target_db)):
        try:
            server.execute(f"DROP DATABASE IF EXISTS `{db}`")
        except Exception:  # noqa: BLE001 - a test may have stopped its server on purpose
            if server.process is not None:
                raise


@pytest.fixture
def binlog_env(binlog_source_server: MariaDBServer, target_server: MariaDBServer, tmp_path: Path) -> Iterator[SyncEnv]:
    """Like ``sync_env``, with the binlog-enabled source."""
    suffix = uuid.uuid4().hex[:8]
    env = SyncEnv(binlog_source_server, target_server, f"src_{suffix}", f"tgt_{suffix}", tmp_path)
    binlog_source_server.execute(f"CREATE DATABASE `{env.source_db}` CHARACTER SET utf8mb4")
    target_server.execute(f"CREATE DATABASE `{env.target_db}` CHARACTER SET utf8mb4")
    yield env
    for server, db in ((binlog_source_server, env.source_db), (target_server, env.target_db)):
        server.execute(f"DROP DATABASE IF EXISTS `{db}`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration are integration tests even when a marker is forgotten."""
    for item in items:
        if "integration" in str(item.fspath) and "integration" not in item.keywords:
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("DLT_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
