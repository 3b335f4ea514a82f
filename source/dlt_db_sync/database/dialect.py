"""The one place that writes SQL differing between MySQL and MariaDB (and between their versions).

Everything else in ``source/`` writes SQL both flavors accept and asks a :class:`Dialect` for the
statements that differ:

* statement time limit: MariaDB ``max_statement_time`` (seconds, every statement, error 1969);
  MySQL only has ``max_execution_time`` (milliseconds, read-only SELECTs, error 3024), so a MySQL
  write is bounded by ``innodb_lock_wait_timeout`` / ``lock_wait_timeout`` (set per session by
  ``database.session_init_sql``), the client read timeout and the watchdog's ``KILL QUERY``;
* upsert: ``ON DUPLICATE KEY UPDATE c = VALUES(c)`` on MariaDB and MySQL < 8.0.19; the row/table
  alias form on MySQL >= 8.0.19, where ``VALUES()`` is deprecated (warning 1287);
* one statement under another ``sql_mode``: MariaDB ``SET STATEMENT ... FOR``, MySQL >= 8.0.3
  the ``SET_VAR`` optimizer hint, MySQL 5.7 a session change around the statement (the loader
  never returns a connection that failed in between to the pool);
* staging tables: always with a primary key (``sql_require_primary_key``);
* a DOUBLE form of a FLOAT that MySQL 5.7 accepts (it has no ``CAST(... AS DOUBLE)``).

The flavor and version come from the SQLAlchemy engine's first connection (``Dialect.of``), so
no caller has to carry server information around. DDL translation lives in ``ddl_translation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dlt_db_sync.database.engines import quote_identifier as q

Flavor = Literal["mysql", "mariadb"]
Version = tuple[int, int, int]

MINIMUM_VERSION: dict[str, Version] = {"mysql": (5, 7, 0), "mariadb": (10, 4, 0)}

# Error codes of an interrupted statement that ran past the limit, per flavor.

UPSERT_ROW_ALIAS = "new"  # name of the incoming row in the MySQL >= 8.0.19 upsert form


def parse_version(text: str) -> tuple[Flavor, Version]:
    """('mariadb', (10, 11, 6)) from ``VERSION()`` text such as '10.11.6-MariaDB-0+deb12u1'.

    MariaDB's protocol greeting may carry a '5.5.5-' prefix; ``VERSION()`` does not, but both work.
    """
    flavor: Flavor = "mariadb" if "mariadb" in text.lower() else "mysql"
    head = text.split("-")
    if flavor == "mariadb" and head[0] == "5.5.5" and len(head) > 1:
        head = head[1:]
    numbers = [int(part) for part in head[0].split(".")[:3] if part.isdigit()]
    numbers += [0] * (3 - len(numbers))
    return flavor, (numbers[0], numbers[1], numbers[2])


@dataclass(frozen=True)
class Dialect:
    """SQL that differs between flavors, for one server's flavor and version."""

    flavor: Flavor
    version: Version

    @classmethod
    def of(cls, bind: Any) -> Dialect:
        """The dialect of an SQLAlchemy Engine or Connection (connects once if never connected)."""
        sa_dialect = bind.dialect
        if sa_dialect.server_version_info is None:
            with bind.connect():
                pass  # SQLAlchemy reads the server version on the first connection
        info = tuple(int(v) for v in sa_dialect.server_version_info[:3] if isinstance(v, int))
        version = (info + (0, 0, 0))[:3]
        return cls("mariadb" if sa_dialect.is_mariadb else "mysql", (version[0], version[1], version[2]))

    @classmethod
    def from_version_text(cls, text: str) -> Dialect:
        """The dialect of a server whose ``VERSION()`` is ``text``."""
        return cls(*parse_version(text))

    @property
    def is_mariadb(self) -> bool:
        return self.flavor == "mariadb"

    @property
    def is_mysql(self) -> bool:
        return self.flavor == "mysql"

    def at_least(self, major: int, minor: int = 0, patch: int = 0) -> bool:
        """Whether the server version is ``major.minor.patch`` or newer."""
        return self.version >= (major, minor, patch)

    def mysql_at_least(self, major: int, minor: int = 0, patch: int = 0) -> bool:
        """Whether this is MySQL at ``major.minor.patch`` or newer."""
        return self.is_mysql and self.at_least(major, minor, patch)

    def mariadb_at_least(self, major: int, minor: int = 0, patch: int = 0) -> bool:
        """Whether this is MariaDB at ``major.minor.patch`` or newer."""
        return self.is_mariadb and self.at_least(major, minor, patch)

    @property
    def label(self) -> str:
        """'MySQL 8.0.36' / 'MariaDB 10.11.6'."""
        return f"{'MariaDB' if self.is_mariadb else 'MySQL'} {'.'.join(map(str, self.version))}"

    # ------------------------------------------------------------ statement time limit
    def statement_limit(self, seconds: float) -> list[str]:
        """Statements bounding each following statement of the session to ``seconds``.

        MySQL cannot bound writes per statement; ``max_execution_time`` bounds its SELECTs and
        lock waits are bounded by the session's ``innodb_lock_wait_timeout``.
        """
        if self.is_mariadb:
            return [f"SET SESSION max_statement_time={int(seconds)}"]
        return [f"SET SESSION max_execution_time={int(seconds * 1000)}"]

    def clear_statement_limit(self) -> list[str]:
        """Statements lifting :meth:`statement_limit` again."""
        if self.is_mariadb:
            return ["SET SESSION max_statement_time=0"]
        return ["SET SESSION max_execution_time=0"]

    # ------------------------------------------------------------ upserts
    @property
    def upsert_uses_row_alias(self) -> bool:
        """MySQL >= 8.0.19 names the incoming row; ``VALUES(col)`` is deprecated there."""
        return self.mysql_at_least(8, 0, 19)

    def upsert_values(self, table: str, columns: Sequence[str], row_sql: str, updates: Mapping[str, str | None]) -> str:
        """``INSERT INTO table (columns) VALUES row_sql ON DUPLICATE KEY UPDATE ...``.

        ``updates`` maps a column to a SQL expression, or to None for "the incoming row's value".
        """
        names = ", ".join(q(c) for c in columns)
        if self.upsert_uses_row_alias:
            alias = f" AS {UPSERT_ROW_ALIAS}"
            incoming = {c: f"{UPSERT_ROW_ALIAS}.{q(c)}" for c in columns}
        else:
            alias = ""
            incoming = {c: f"VALUES({q(c)})" for c in columns}
        sets = ", ".join(f"{q(c)} = {incoming[c] if e is None else e}" for c, e in updates.items())
        return f"INSERT INTO {q(table)} ({names}) VALUES {row_sql}{alias} ON DUPLICATE KEY UPDATE {sets}"

    def upsert_select(
        self, table: str, columns: Sequence[str], values: Sequence[str], from_sql: str, update: Sequence[str]
    ) -> str:
        """``INSERT INTO table (columns) SELECT values FROM ... ON DUPLICATE KEY UPDATE`` each of ``update``
        to the incoming value (``update`` empty: a no-op assignment, so duplicates are kept as they are).

        MySQL >= 8.0.19 reads the incoming row from a derived table (the documented form for
        ``INSERT ... SELECT``) instead of the deprecated ``VALUES()``.
        """
        names = ", ".join(q(c) for c in columns)
        if self.upsert_uses_row_alias:
            position = {c: i for i, c in enumerate(columns)}
            derived = ", ".join(f"{v} AS v{i}" for i, v in enumerate(values))
            select = f"SELECT * FROM (SELECT {derived} FROM {from_sql}) AS {UPSERT_ROW_ALIAS}"
            sets = [f"{q(c)} = {UPSERT_ROW_ALIAS}.v{position[c]}" for c in update]
        else:
            select = f"SELECT {', '.join(values)} FROM {from_sql}"
            sets = [f"{q(c)} = VALUES({q(c)})" for c in update]
        if not sets:
            sets = [f"{q(columns[0])} = {q(columns[0])}"]
        return f"INSERT INTO {q(table)} ({names}) {select} ON DUPLICATE KEY UPDATE {', '.join(sets)}"

    # ------------------------------------------------------------ sql_mode for one statement
    def with_sql_mode(self, sql_mode: str, update_sql: str, session_mode: str) -> list[str]:
        """Statements running the ``UPDATE`` statement ``update_sql`` under ``sql_mode``.

        ``session_mode`` is the connection's own mode, restored afterwards where the server has no
        statement-scoped form (MySQL 5.7).
        """
        if not update_sql.startswith("UPDATE "):
            raise ValueError(f"with_sql_mode takes an UPDATE statement, not {update_sql[:20]!r}")
        mode = sql_mode.replace("'", "")
        if self.is_mariadb:
            return [f"SET STATEMENT sql_mode='{mode}' FOR {update_sql}"]
        if self.at_least(8, 0, 3):
            return [f"UPDATE /*+ SET_VAR(sql_mode='{mode}') */ {update_sql[len('UPDATE ') :]}"]
        restore = session_mode.replace("'", "")
        return [f"SET SESSION sql_mode='{mode}'", update_sql, f"SET SESSION sql_mode='{restore}'"]

    # ------------------------------------------------------------ staging tables
    def stage_table_sql(self, name: str, columns: int, *, temporary: bool, comment: str | None = None) -> str:
        """``CREATE [TEMPORARY] TABLE`` of a staging table with raw byte columns ``c0..c{n-1}``.

        A hidden auto-increment primary key satisfies ``sql_require_primary_key`` (MySQL 8.0.13+)
        on every flavor; loads name their columns, so it never receives a value.
        """
        body = ", ".join(
            ["`_dlt_row` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY"]
            + [f"c{i} LONGBLOB NULL" for i in range(columns)]
        )
        kind = "TEMPORARY TABLE" if temporary else "TABLE"
        tail = f" COMMENT='{comment}'" if comment else ""
        return f"CREATE {kind} {q(name)} ({body}) ENGINE=InnoDB{tail}"

    @staticmethod
    def stage_columns(columns: int) -> str:
        """The column list of a staging table's data columns, for loads into it."""
        return ", ".join(f"c{i}" for i in range(columns))

    # ------------------------------------------------------------ binlog change capture
    def binlog_status_sql(self) -> str:
        """The statement reporting the current binlog file and position (``SHOW MASTER STATUS``
        was removed in MySQL 8.4; MariaDB keeps it as an alias of ``SHOW BINLOG STATUS``)."""
        if self.mysql_at_least(8, 2):
            return "SHOW BINARY LOG STATUS"
        return "SHOW MASTER STATUS"

    def binlog_grant_sets(self) -> list[tuple[str, ...]]:
        """Alternative privilege sets a binlog reader needs; any one of them suffices.

        Reading the stream takes ``REPLICATION SLAVE``; asking for the position and the list of
        binlogs takes ``REPLICATION CLIENT`` (MySQL, MariaDB < 10.5) or ``BINLOG MONITOR``
        (MariaDB 10.5+, where ``REPLICATION CLIENT`` became its alias).
        """
        if self.mariadb_at_least(10, 5):
            return [("REPLICATION SLAVE", "BINLOG MONITOR"), ("REPLICATION SLAVE", "REPLICATION CLIENT")]
        return [("REPLICATION SLAVE", "REPLICATION CLIENT")]

    @property
    def has_binlog_row_metadata(self) -> bool:
        """Whether the server has ``binlog_row_metadata`` (MySQL 8.0.1+, MariaDB 10.5+): with
        ``FULL`` each row event names its columns, so events written before an ALTER decode by name."""
        return self.mysql_at_least(8, 0, 1) or self.mariadb_at_least(10, 5)

    @property
    def binlog_retention_variables(self) -> tuple[str, ...]:
        """Variables holding how long binlogs are kept (seconds first where the server has them)."""
        return ("binlog_expire_logs_seconds", "expire_logs_days")


def double_expression(expr: str) -> str:
    """``expr`` as a DOUBLE on every flavor and version.

    ``CAST(x AS DOUBLE)`` exists only from MySQL 8.0.17; multiplying by the DOUBLE literal ``1e0``
    converts exactly (FLOAT to DOUBLE widens) and keeps the sign of zero.
    """
    return f"({expr} * 1e0)"
