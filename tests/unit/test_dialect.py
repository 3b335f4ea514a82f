"""Unit tests of the dialect layer: the exact statements per flavor/version branch, server info, and
the guard that renders every flavor-specific statement the daemon can issue for MySQL 5.7, 8.0,
8.4 and MariaDB 10.4 and fails on the other flavor's syntax."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from dialect_fixtures import (
    FIXTURES,
    MARIADB104,
    MARIADB114,
    MARIADB1011,
    MYSQL57,
    MYSQL80,
    MYSQL80_18,
    MYSQL84,
    MYSQLS,
    fixture_statements,
)
from dlt_db_sync.data_processing.codec import extract_expression
from dlt_db_sync.data_processing.loader import TargetLoader
from dlt_db_sync.data_processing.sanitization import LoadPlan
from dlt_db_sync.database import sync_state
from dlt_db_sync.database.dialect import Dialect, double_expression, parse_version
from dlt_db_sync.database.server_info import ServerInfo, check_supported
from dlt_db_sync.error_handling.errors import ConfigError, is_transient
from dlt_db_sync.schema_management.ddl_translation import translate_create_table
from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.verification.chunk_compare import hash_form, row_hash_sql

ROOT = Path(__file__).resolve().parents[2]


def col(
    name: str, data_type: str, column_type: str | None = None, *, nullable: bool = True, charset: str | None = None
) -> Column:
    return Column(name, data_type, column_type or data_type, nullable, charset, None)


# --------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("text", "flavor", "version"),
    [
        ("8.0.36", "mysql", (8, 0, 36)),
        ("8.4.3-commercial", "mysql", (8, 4, 3)),
        ("5.7.44-log", "mysql", (5, 7, 44)),
        ("10.11.6-MariaDB-0+deb12u1", "mariadb", (10, 11, 6)),
        ("5.5.5-10.4.34-MariaDB-1:10.4.34+maria~ubu2004", "mariadb", (10, 4, 34)),
        ("11.4.4-MariaDB-ubu2404", "mariadb", (11, 4, 4)),
    ],
)
def test_parse_version(text: str, flavor: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == (flavor, version)


def test_dialect_of_reads_sqlalchemys_detected_server() -> None:
    engine = SimpleNamespace(dialect=SimpleNamespace(server_version_info=(10, 11, 6), is_mariadb=True))
    assert Dialect.of(engine) == MARIADB1011
    engine = SimpleNamespace(dialect=SimpleNamespace(server_version_info=(8, 0, 36), is_mariadb=False))
    assert Dialect.of(engine) == MYSQL80


def info(version: str, role: str = "target") -> ServerInfo:
    return ServerInfo(role, version, "comment", "STRICT_ALL_TABLES", False, 0, "utf8mb4_0900_ai_ci", True, True)


@pytest.mark.parametrize("version", ["5.6.51", "10.3.39-MariaDB", "5.5.68-MariaDB"])
def test_unsupported_servers_are_refused_with_the_minimum(version: str) -> None:
    with pytest.raises(
        ConfigError, match=r"target server is (MySQL|MariaDB) .* supports (MySQL 5\.7|MariaDB 10\.4) or newer"
    ):
        check_supported(info(version))


@pytest.mark.parametrize("version", ["5.7.8", "8.0.36", "8.4.3", "10.4.0-MariaDB", "11.4.4-MariaDB"])
def test_supported_servers_pass(version: str) -> None:
    check_supported(info(version))


def test_server_info_for_health_and_logs() -> None:
    server = info("8.0.36")
    body = server.as_dict()
    assert body["flavor"] == "mysql" and body["version"] == "8.0.36" and body["require_primary_key"] is True
    assert "MySQL 8.0.36" in server.describe() and "local_infile=OFF" in server.describe()
    assert "gtid_consistency=ON" in server.describe()


# --------------------------------------------------------------------------- statement limit
def test_statement_limit_per_flavor() -> None:
    assert MARIADB104.statement_limit(30) == ["SET SESSION max_statement_time=30"]
    assert MARIADB104.clear_statement_limit() == ["SET SESSION max_statement_time=0"]
    for dialect in MYSQLS:
        assert dialect.statement_limit(30) == ["SET SESSION max_execution_time=30000"]
        assert dialect.clear_statement_limit() == ["SET SESSION max_execution_time=0"]


def test_both_timeout_codes_are_retried() -> None:
    import pymysql

    for code in (3024, 1969):  # MySQL max_execution_time, MariaDB max_statement_time
        assert is_transient(pymysql.err.OperationalError(code, "interrupted")), code


# --------------------------------------------------------------------------- upserts
def test_upsert_values_forms() -> None:
    updates = {"pending": "1", "pending_from": None}
    old = "INSERT INTO `s` (`k`, `pending`, `pending_from`) VALUES (%s, 1, %s) ON DUPLICATE KEY UPDATE `pending` = 1, `pending_from` = VALUES(`pending_from`)"
    for dialect in (MYSQL57, MYSQL80_18, MARIADB104, MARIADB114):
        assert dialect.upsert_values("s", ["k", "pending", "pending_from"], "(%s, 1, %s)", updates) == old
    new = "INSERT INTO `s` (`k`, `pending`, `pending_from`) VALUES (%s, 1, %s) AS new ON DUPLICATE KEY UPDATE `pending` = 1, `pending_from` = new.`pending_from`"
    for dialect in (Dialect("mysql", (8, 0, 19)), MYSQL80, MYSQL84):
        assert dialect.upsert_values("s", ["k", "pending", "pending_from"], "(%s, 1, %s)", updates) == new


def test_upsert_select_forms() -> None:
    args = ("t", ["id", "name"], ["c0", "CONVERT(c1 USING utf8mb4)"], "`_stage`", ["name"])
    assert (
        MARIADB1011.upsert_select(*args)
        == MYSQL57.upsert_select(*args)
        == (
            "INSERT INTO `t` (`id`, `name`) SELECT c0, CONVERT(c1 USING utf8mb4) FROM `_stage` ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)"
        )
    )
    assert MYSQL84.upsert_select(*args) == (
        "INSERT INTO `t` (`id`, `name`) SELECT * FROM (SELECT c0 AS v0, CONVERT(c1 USING utf8mb4) AS v1 FROM `_stage`) AS new "
        "ON DUPLICATE KEY UPDATE `name` = new.v1"
    )
    # Only key columns: a no-op assignment keeps existing rows as they are.
    assert MYSQL80.upsert_select("t", ["id"], ["c0"], "`_stage`", []).endswith("ON DUPLICATE KEY UPDATE `id` = `id`")
    assert MARIADB104.upsert_select("t", ["id"], ["c0"], "`_stage`", []).endswith("ON DUPLICATE KEY UPDATE `id` = `id`")


# --------------------------------------------------------------------------- one statement under another sql_mode
def test_with_sql_mode_per_flavor() -> None:
    update = "UPDATE `t` AS t JOIN `s` AS s ON t.`k` = s.c0 SET t.`e` = '' WHERE s.c1 = ''"
    assert MARIADB104.with_sql_mode("NO_ZERO_DATE", update, "STRICT_ALL_TABLES,NO_ZERO_DATE") == [
        f"SET STATEMENT sql_mode='NO_ZERO_DATE' FOR {update}"
    ]
    assert MYSQL80.with_sql_mode("NO_ZERO_DATE", update, "x") == [
        "UPDATE /*+ SET_VAR(sql_mode='NO_ZERO_DATE') */ `t` AS t JOIN `s` AS s ON t.`k` = s.c0 SET t.`e` = '' WHERE s.c1 = ''"
    ]
    assert MYSQL57.with_sql_mode("NO_ZERO_DATE", update, "STRICT_ALL_TABLES,NO_ZERO_DATE") == [
        "SET SESSION sql_mode='NO_ZERO_DATE'",
        update,
        "SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ZERO_DATE'",
    ]
    with pytest.raises(ValueError, match="UPDATE statement"):
        MYSQL80.with_sql_mode("", "DELETE FROM t", "")


def test_stage_tables_have_a_primary_key() -> None:
    for dialect in (MYSQL57, MARIADB104):
        sql = dialect.stage_table_sql("_s", 2, temporary=True)
        assert sql == (
            "CREATE TEMPORARY TABLE `_s` (`_dlt_row` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            "c0 LONGBLOB NULL, c1 LONGBLOB NULL) ENGINE=InnoDB"
        )
    assert MYSQL80.stage_table_sql("_s", 1, temporary=False, comment="x").startswith("CREATE TABLE `_s` (")
    assert MYSQL80.stage_columns(3) == "c0, c1, c2"


def test_double_expression_avoids_cast_as_double() -> None:
    assert double_expression("`f`") == "(`f` * 1e0)"


# --------------------------------------------------------------------------- the guard
# Syntax one flavor (or version) does not have. Each entry: pattern, why.
NOT_ON_MYSQL = [
    (r"max_statement_time", "MariaDB's statement limit (MySQL: 1193 unknown variable)"),
    (r"SET STATEMENT", "MariaDB-only statement-scoped variables"),
    (r"uca1400", "MariaDB's UCA 14 collations"),
    (r"\binet6\b|\binet4\b|\buuid\b(?!\()", "MariaDB-only types"),
    (r"_nopad_", "MariaDB's NO PAD collations"),
    (r"REF_SYSTEM_ID", "MariaDB's SRID attribute"),
    (r"\bPERSISTENT\b", "MariaDB's old word for STORED"),
    (r"\bIGNORED\b", "MariaDB's ignored indexes"),
    (r"PAGE_CHECKSUM|TRANSACTIONAL=", "Aria table options"),
    (r"CHECK \(json_valid", "MariaDB's JSON check (MySQL has a JSON type)"),
    (r"DEFAULT uuid\(\)", "an unparenthesized expression default"),
    (r"\btext DEFAULT '", "a literal default on TEXT (MySQL error 1101)"),
    (r"\bc\d+ REGEXP", "REGEXP on a binary staged value (MySQL 8 error 3995)"),
]
NOT_ON_MYSQL57 = [
    (r"current_timestamp\(\)", "current_timestamp() with parentheses in DDL"),
    (r"AS new ON DUPLICATE|AS new\s*$|new\.v\d", "the 8.0.19 row alias"),
    (r"SET_VAR", "an 8.0 optimizer hint"),
    (r"AS DOUBLE", "CAST(... AS DOUBLE) is 8.0.17+"),
    (r"_0900_", "MySQL 8 collations"),
    (r"SRID|/\*!80003", "SRID is 8.0.3+"),
    (r"utf8mb3_", "utf8mb3_ collation names are 8.0.30+"),
    (r"geomcollection", "8.0.11+"),
    (r"INVISIBLE", "8.0.23+"),
    (r"DEFAULT \(", "expression defaults are 8.0.13+"),
]
NOT_ON_MARIADB104 = [
    (r"max_execution_time", "MySQL's SELECT limit"),
    (r"SET_VAR", "MySQL optimizer hint"),
    (r"_0900_", "MySQL 8 collations (MariaDB 11.4.5+ only)"),
    (r"uca1400", "MariaDB 10.10+"),
    (r"AS new ON DUPLICATE|new\.v\d", "MySQL 8.0.19's row alias"),
    (r"/\*!8000[03]|/\*!80023|\bSRID\b", "MySQL 8 versioned attributes"),
    (r"\binet6\b|\binet4\b|\buuid\b(?!\()", "MariaDB 10.5+/10.7+/11.3+ types"),
    (r"utf8mb3_", "collation names of MariaDB 10.6+"),
    (r"geomcollection", "MySQL 8 spelling"),
    (r"COMPRESSION=|ENCRYPTION=", "MySQL table options"),
    (r"\(\(lower", "functional index parts"),
    (r"uuid_to_bin", "MySQL-only function in a default"),
    (r"\bIGNORED\b", "ignored indexes are 10.6+"),
]


class FakeCursor:
    """Records statements; answers like a table with no rows."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.warning_count = 0
        # Answers to fetchall(): the target's other unique key, then a row it displaces.
        self.answers: list[list[tuple[Any, ...]]] = [[("uq_d", "d", None)], [(7,)]]

    def execute(self, sql: str, args: Any = None) -> None:
        self.statements.append(sql)

    def executemany(self, sql: str, rows: Any) -> None:
        self.statements.append(sql)

    def fetchone(self) -> tuple[int, ...]:
        return (0,)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.answers.pop(0) if self.answers else []


class FakeConnection:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = SimpleNamespace(server_version_info=dialect.version, is_mariadb=dialect.is_mariadb)
        self.statements: list[str] = []

    def exec_driver_sql(self, sql: str, args: Any = None) -> Any:
        self.statements.append(sql)
        return SimpleNamespace(fetchone=lambda: None, scalar=lambda: None)


def loader_statements(dialect: Dialect, persistent: bool) -> list[str]:
    """Every statement one upsert chunk issues (temporary or regular stage, ENUM fix-up included)."""
    engines = SimpleNamespace(target=FakeConnection(dialect))
    settings = SimpleNamespace(transaction_timeout=30)
    loader = TargetLoader(engines, settings, threading.Event(), "insert", persistent_stage=persistent)  # type: ignore[arg-type]
    columns = [col("id", "int", nullable=False), col("e", "enum", "enum('x')", charset="utf8mb4"), col("d", "date")]
    plan = LoadPlan("t", columns, "null", "STRICT_ALL_TABLES,NO_ZERO_DATE")
    cursor = FakeCursor()
    cursor.statements += dialect.statement_limit(30)
    chunk = pa.table({"id": ["1"], "e": [""], "d": ["0000-00-00"]})
    loader._upsert_via_stage(cursor, "t", columns, ["id"], chunk, plan)
    cursor.statements += dialect.clear_statement_limit()
    return cursor.statements


def every_statement(dialect: Dialect) -> list[str]:
    """Every flavor-specific statement, plus the DDL of the fixtures translated for ``dialect``."""
    statements = loader_statements(dialect, False) + loader_statements(dialect, True)
    conn = FakeConnection(dialect)
    sync_state.mark_pending(conn, "t", "2024-01-01")  # type: ignore[arg-type]
    sync_state.mark_done(conn, "t", 1, "2024-01-01")  # type: ignore[arg-type]
    statements += conn.statements
    columns = [col("f", "float"), col("b", "bit"), col("ts", "timestamp"), col("v", "varchar", charset="latin1")]
    statements += [row_hash_sql(columns), *(hash_form(c) for c in columns), *(extract_expression(c) for c in columns)]
    sources = [MYSQL80, MARIADB114] if dialect.is_mysql else [MYSQL80, MYSQL84]
    for source in sources:
        for fixture in FIXTURES.glob("*.sql"):
            if ("mysql" in fixture.name) != source.is_mysql:
                continue
            for create in fixture_statements(fixture):
                statements.append(translate_create_table(create, source, dialect, "t").sql)
    return statements


def offending(statements: list[str], rules: list[tuple[str, str]]) -> list[str]:
    found = []
    for sql in statements:
        masked = re.sub(r"'(?:[^'\\]|''|\\.)*'", "'…'", sql)  # string contents may say anything
        for pattern, why in rules:
            if re.search(pattern, masked, re.IGNORECASE | re.MULTILINE):
                found.append(f"{why}: {sql[:160]}")
    return found


@pytest.mark.parametrize("dialect", MYSQLS, ids=lambda d: d.label)
def test_guard_no_mariadb_syntax_for_mysql(dialect: Dialect) -> None:
    rules = NOT_ON_MYSQL + (NOT_ON_MYSQL57 if not dialect.at_least(8) else [])
    assert offending(every_statement(dialect), rules) == []


def test_guard_no_mysql_syntax_for_mariadb104() -> None:
    assert offending(every_statement(MARIADB104), NOT_ON_MARIADB104) == []


def test_guard_catches_what_it_is_for() -> None:
    """The guard itself fails on the other flavor's statements (so the tests above can fail)."""
    assert offending(every_statement(MARIADB1011), NOT_ON_MYSQL)
    assert offending(every_statement(MYSQL84), NOT_ON_MARIADB104)
    assert offending(every_statement(MYSQL84), NOT_ON_MYSQL57)


FLAVOR_SQL = re.compile(
    r"max_statement_time|max_execution_time|SET STATEMENT|SET_VAR|AS DOUBLE|uca1400|_0900_|REF_SYSTEM_ID|SRID|(?-i:VALUES\()",
    re.IGNORECASE,
)


def test_no_flavor_specific_sql_outside_the_dialect_modules() -> None:
    """Nothing else in source/ writes SQL that differs between flavors (docstrings and comments aside)."""
    found = []
    for path in sorted((ROOT / "source").rglob("*.py")):
        if path.name in {"dialect.py", "ddl_translation.py", "errors.py"}:  # the last classifies codes
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if (
                ('"' in code or "'" in code)
                and FLAVOR_SQL.search(code)
                and not code.strip().startswith(('"""', "``", "*"))
            ):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert found == []
