"""An already running MySQL or MariaDB server for the integration tests (external mode).

``TEST_SOURCE_URL`` / ``TEST_TARGET_URL`` (``mysql://user:password@host:port``) point the suite at
real servers, e.g. the GitLab CI service containers: each test still gets its own fresh
databases; a test that must start, stop, kill or reconfigure a server skips with that reason.

The fixtures use MariaDB's sequence engine (``seq_1_to_N`` tables); on MySQL the same names are
created on demand as real tables in the test's database, so the fixtures stay unchanged.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote, urlparse

import pymysql
import pytest

# The fixtures are written for MariaDB's default sql_mode; MySQL's default adds ONLY_FULL_GROUP_BY
# and NO_ZERO_DATE/NO_ZERO_IN_DATE, which would refuse fixture rows (zero dates) before any sync runs.
# Only the tests' own sessions use it; the daemon keeps each server's default (source) or
# TARGET_SQL_MODE (target).
FIXTURE_SQL_MODE = "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
SKIP_REASON = "external mode (TEST_SOURCE_URL/TEST_TARGET_URL): this test starts, stops, kills or reconfigures a server"
_SEQUENCE = re.compile(r"\bseq_(\d+)_to_(\d+)\b")


class ExternalServer:
    """A server the tests did not start and must not stop; same interface as ``MariaDBServer``."""

    def __init__(self, url: str, name: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in {"mysql", "mariadb"} or not parsed.hostname:
            raise ValueError(f"{name}: expected mysql://user:password@host:port, got scheme {parsed.scheme!r}")
        self.name = name
        self.host = parsed.hostname
        self.port = parsed.port or 3306
        self.user = unquote(parsed.username or "root")
        self.password = unquote(parsed.password or "")
        self.process = "external"  # never None: the server is always expected to be up
        self._sequences: set[tuple[str, str]] = set()
        self.flavor = "unknown"  # until the server answered
        self.flavor = "mariadb" if "mariadb" in str(self._wait_until_up()).lower() else "mysql"

    def _wait_until_up(self, timeout: float = 180.0) -> str:
        """``VERSION()`` once the server answers (CI service containers take a while to initialise)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return str(self.scalar("SELECT VERSION()"))
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    # The lifecycle belongs to whoever runs the servers.
    def start(self, *args: Any, **kwargs: Any) -> ExternalServer:
        pytest.skip(SKIP_REASON)

    def stop(self) -> None:
        pytest.skip(SKIP_REASON)

    def kill(self) -> None:
        pytest.skip(SKIP_REASON)

    def restart(self, *args: Any, **kwargs: Any) -> ExternalServer:
        pytest.skip(SKIP_REASON)

    def destroy(self) -> None:
        """Nothing to destroy: each test drops its own databases."""

    def error_log(self) -> str:
        return ""

    def connect(
        self, database: str | None = None, user: str | None = None, password: str | None = None, **kwargs: Any
    ) -> pymysql.Connection:
        if user is None:
            user, password = self.user, self.password
        if self.flavor == "mysql":
            kwargs.setdefault("init_command", f"SET SESSION sql_mode='{FIXTURE_SQL_MODE}'")
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password or "",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
            local_infile=True,
            **kwargs,
        )

    def ensure_sequences(self, sql: str, database: str | None) -> None:
        """On MySQL, create every ``seq_A_to_B`` table ``sql`` reads (MariaDB has them built in)."""
        if self.flavor == "mariadb" or database is None:
            return
        for first, last in set(_SEQUENCE.findall(sql)):
            name = f"seq_{first}_to_{last}"
            if (database, name) in self._sequences:
                continue
            conn = self.connect(database)
            try:
                with conn.cursor() as cur:
                    fill_sequence(cur, name, int(first), int(last))
            finally:
                conn.close()
            self._sequences.add((database, name))

    def execute(self, sql: str, database: str | None = None, args: Any = None) -> None:
        """Run one or more ``;``-separated statements (no result)."""
        self.ensure_sequences(sql, database)
        conn = self.connect(database, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                while cur.nextset():
                    pass
        finally:
            conn.close()

    def query(self, sql: str, database: str | None = None, args: Any = None) -> list[tuple[Any, ...]]:
        self.ensure_sequences(sql, database)
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


def fill_sequence(cursor: Any, name: str, first: int, last: int) -> None:
    """Create ``name`` holding ``seq`` = first..last by doubling (MySQL 5.7 has no recursive CTE)."""
    cursor.execute(f"CREATE TABLE IF NOT EXISTS `{name}` (seq BIGINT UNSIGNED NOT NULL PRIMARY KEY) ENGINE=InnoDB")
    cursor.execute(f"INSERT IGNORE INTO `{name}` VALUES (%s)", (first,))
    count = 1
    while count < last - first + 1:
        cursor.execute(
            f"INSERT IGNORE INTO `{name}` SELECT seq + %s FROM `{name}` WHERE seq + %s <= %s", (count, count, last)
        )
        count *= 2
