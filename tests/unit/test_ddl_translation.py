"""DDL translation from real ``SHOW CREATE TABLE`` texts of both flavors (fixtures/ddl): Sakila as
MySQL 8.0 prints it and a table with every type per flavor, translated for each other target."""

from __future__ import annotations

import re

import pytest

from dialect_fixtures import (
    FIXTURES,
    MARIADB104,
    MARIADB114,
    MARIADB1011,
    MYSQL57,
    MYSQL80,
    MYSQL84,
    fixture_statements,
)
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.schema_management.ddl_translation import (
    column_for_target,
    equivalent_columns,
    portable_type,
    translate_column,
    translate_create_table,
)
from dlt_db_sync.schema_management.model import Column

SAKILA = fixture_statements(FIXTURES / "sakila_mysql80.sql")
MYSQL_ALL = fixture_statements(FIXTURES / "all_types_mysql80.sql")[0]
MARIADB_ALL = fixture_statements(FIXTURES / "all_types_mariadb114.sql")[0]


def column_line(sql: str, name: str) -> str:
    match = re.search(rf"^\s*`{name}` (.*?),?$", sql, re.MULTILINE)
    assert match, (name, sql)
    return match.group(1)


def translate(definition: str, source: Dialect, target: Dialect) -> tuple[str, list[str]]:
    warnings: list[str] = []
    return translate_column(definition, source, target, warnings.append), warnings


def test_same_server_is_unchanged() -> None:
    for create in SAKILA:
        assert translate_create_table(create, MYSQL80, MYSQL80, "t").sql == create
    assert translate_create_table(MARIADB_ALL, MARIADB114, MARIADB114, "t").sql == MARIADB_ALL


@pytest.mark.parametrize("target", [MYSQL84, MARIADB114], ids=lambda d: d.label)
def test_sakila_needs_nothing_where_0900_collations_exist(target: Dialect) -> None:
    for create in SAKILA:
        result = translate_create_table(create, MYSQL80, target, "t")
        if target.is_mysql:
            assert result.sql == create and result.warnings == []
        else:  # MariaDB 11.4.4 has no utf8mb4_0900_* yet (11.4.5 adds them) and spells SRID its own way
            assert "_0900_" not in result.sql


def test_sakila_for_mariadb_1011() -> None:
    translated = {
        create.split("`")[1]: translate_create_table(create, MYSQL80, MARIADB1011, create.split("`")[1])
        for create in SAKILA
    }
    address = translated["address"]
    assert column_line(address.sql, "location") == "geometry REF_SYSTEM_ID=0 NOT NULL"
    assert address.sql.endswith("DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_uca1400_nopad_ai_ci")
    assert address.warnings == [
        "table address: collation utf8mb4_0900_ai_ci does not exist on MariaDB 10.11.6; using the nearest, "
        "utf8mb4_uca1400_nopad_ai_ci (sorting and comparison may differ)"
    ]
    staff = translated["staff"]
    assert column_line(staff.sql, "password") == "varchar(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL"
    assert column_line(translated["film"].sql, "rating") == "enum('G','PG','PG-13','R','NC-17') DEFAULT 'G'"
    assert column_line(translated["actor"].sql, "last_update") == (
        "timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP"
    )


def test_sakila_for_mysql57_and_mariadb104() -> None:
    for target in (MYSQL57, MARIADB104):
        for create in SAKILA:
            sql = translate_create_table(create, MYSQL80, target, "t").sql
            assert "_0900_" not in sql and "SRID" not in sql, sql
            assert sql.endswith(
                "COLLATE=utf8mb4_unicode_520_ci" if target.is_mysql else "COLLATE=utf8mb4_unicode_520_nopad_ci"
            )
    address = translate_create_table(SAKILA[1], MYSQL80, MYSQL57, "address")
    assert column_line(address.sql, "location") == "geometry NOT NULL"
    assert any("SRID 0 cannot be declared on MySQL 5.7.44" in w for w in address.warnings)


def test_mariadb_every_type_for_mysql80() -> None:
    result = translate_create_table(MARIADB_ALL, MARIADB114, MYSQL80, "all_types")
    sql = result.sql
    expected = {
        "id": "bigint unsigned NOT NULL AUTO_INCREMENT",
        "uid": "char(36) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL",
        "flag": "tinyint(1) DEFAULT NULL",
        "z32": "int(8) unsigned zerofill DEFAULT NULL",
        "ts": "timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)",
        "yr": "year DEFAULT NULL",
        "cs": "varchar(255) COLLATE utf8mb4_0900_as_cs DEFAULT NULL",
        "np": "varchar(255) COLLATE utf8mb4_bin DEFAULT NULL",
        "tx": "text",
        "j": "json DEFAULT NULL",
        "ip6": "varchar(39) CHARACTER SET ascii COLLATE ascii_general_ci DEFAULT NULL",
        "ip4": "varchar(15) CHARACTER SET ascii COLLATE ascii_general_ci DEFAULT NULL",
        "pt": "point NOT NULL",  # MariaDB keeps no SRID in its DDL
        "created": "datetime DEFAULT CURRENT_TIMESTAMP",
        "secret": "varchar(20) INVISIBLE DEFAULT NULL",
        "note": "varchar(40) DEFAULT 'it''s DEFAULT uuid() here'",
    }
    for name, definition in expected.items():
        assert column_line(sql, name) == definition, name
    assert "KEY `idx_i32` (`i32`) /*!80000 INVISIBLE */," in sql
    assert sql.endswith(
        "ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci COMMENT='every type'"
    )
    assert (
        "table all_types column uid: type UUID does not exist on MySQL 8.0.36; stored as its text form char(36)"
        in result.warnings
    )
    assert "table all_types: table option PAGE_CHECKSUM=1 does not exist on MySQL 8.0.36; left out" in result.warnings


def test_mariadb_every_type_for_mysql57() -> None:
    sql = translate_create_table(MARIADB_ALL, MARIADB114, MYSQL57, "all_types").sql
    assert column_line(sql, "i32") == "int(11) DEFAULT NULL"  # 5.7 keeps display widths
    assert column_line(sql, "v3") == "varchar(10) CHARACTER SET utf8 COLLATE utf8_general_ci DEFAULT NULL"
    assert column_line(sql, "cs") == "varchar(255) COLLATE utf8mb4_bin DEFAULT NULL"
    assert column_line(sql, "secret") == "varchar(20) DEFAULT NULL"
    assert column_line(sql, "i32") == "int(11) DEFAULT NULL"
    assert column_line(sql, "pt") == "point NOT NULL"
    assert "KEY `idx_i32` (`i32`)," in sql


def test_mysql_every_type_for_mariadb() -> None:
    result = translate_create_table(MYSQL_ALL, MYSQL80, MARIADB1011, "all_types")
    sql = result.sql
    assert column_line(sql, "uid") == "binary(16) NOT NULL"
    assert column_line(sql, "txt_default") == "text"
    assert column_line(sql, "vc") == "varchar(255) COLLATE utf8mb4_uca1400_nopad_as_cs DEFAULT NULL"
    assert (
        column_line(sql, "de") == "varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_nopad_ai_ci DEFAULT NULL"
    )
    assert column_line(sql, "gc") == "geometrycollection DEFAULT NULL"
    assert column_line(sql, "pt") == "point REF_SYSTEM_ID=4326 NOT NULL"
    assert column_line(sql, "secret") == "varchar(20) DEFAULT NULL INVISIBLE"
    assert "idx_lower_vc" not in sql and "KEY `idx_i32` (`i32`) IGNORED," in sql
    assert "CONSTRAINT `chk_i8` CHECK ((`i8` >= 0))\n)" in sql  # no dangling comma after the dropped index
    assert sql.endswith("STATS_PERSISTENT=1 COMMENT='every type; ENGINE=MyISAM in a comment'")
    assert (
        "table all_types: table option COMPRESSION='zlib' does not exist on MariaDB 10.11.6; left out"
        in result.warnings
    )
    old = translate_create_table(MYSQL_ALL, MYSQL80, MARIADB104, "all_types").sql
    assert column_line(old, "vc") == "varchar(255) COLLATE utf8mb4_nopad_bin DEFAULT NULL"
    assert (
        column_line(old, "de") == "varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_nopad_ci DEFAULT NULL"
    )
    assert column_line(old, "v3") == "varchar(10) CHARACTER SET utf8 COLLATE utf8_general_ci DEFAULT NULL"
    assert "KEY `idx_i32` (`i32`)," in old  # no IGNORED before 10.6


def test_engine_becomes_innodb_with_a_warning() -> None:
    create = "CREATE TABLE `t` (\n  `id` int NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=Aria DEFAULT CHARSET=latin1 PAGE_CHECKSUM=1 ROW_FORMAT=PAGE"
    result = translate_create_table(create, MARIADB1011, MYSQL80, "t")
    assert result.sql.endswith(") ENGINE=InnoDB DEFAULT CHARSET=latin1")
    assert "table t: engine Aria replaced by InnoDB (the loader needs transactions)" in result.warnings


@pytest.mark.parametrize(
    ("source", "target", "definition", "expected"),
    [
        (
            MARIADB1011,
            MYSQL80,
            "datetime(6) NOT NULL DEFAULT current_timestamp(6)",
            "datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        ),
        (
            MARIADB1011,
            MYSQL57,
            "timestamp NOT NULL DEFAULT current_timestamp() ON UPDATE current_timestamp()",
            "timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP",
        ),
        (
            MARIADB1011,
            MYSQL80,
            "decimal(10,2) GENERATED ALWAYS AS (`a` * 2) PERSISTENT",
            "decimal(10,2) GENERATED ALWAYS AS (`a` * 2) STORED",
        ),
        (MYSQL80, MYSQL57, "binary(16) NOT NULL DEFAULT (uuid_to_bin(uuid()))", "binary(16) NOT NULL"),
        (
            MYSQL80,
            MYSQL84,
            "binary(16) NOT NULL DEFAULT (uuid_to_bin(uuid()))",
            "binary(16) NOT NULL DEFAULT (uuid_to_bin(uuid()))",
        ),
        (Dialect("mysql", (8, 0, 18)), MYSQL57, "int DEFAULT NULL", "int DEFAULT NULL"),
        (MARIADB1011, Dialect("mysql", (8, 0, 18)), "int(11) DEFAULT NULL", "int(11) DEFAULT NULL"),
        (MARIADB1011, Dialect("mysql", (8, 0, 22)), "int(11) DEFAULT NULL INVISIBLE", "int DEFAULT NULL"),
        (
            MARIADB1011,
            MARIADB104,
            "inet6 DEFAULT NULL",
            "varchar(39) CHARACTER SET ascii COLLATE ascii_general_ci DEFAULT NULL",
        ),
        (MARIADB114, MARIADB1011, "uuid NOT NULL", "uuid NOT NULL"),
        (
            MARIADB114,
            Dialect("mariadb", (11, 4, 5)),
            "varchar(5) COLLATE utf8mb4_0900_ai_ci",
            "varchar(5) COLLATE utf8mb4_0900_ai_ci",
        ),
        (MYSQL80, MARIADB114, "varchar(5) COLLATE utf8mb4_0900_bin", "varchar(5) COLLATE utf8mb4_nopad_bin"),
        (MARIADB1011, MYSQL57, "varchar(5) COLLATE utf8mb4_uca1400_ai_ci", "varchar(5) COLLATE utf8mb4_unicode_520_ci"),
        (
            MARIADB1011,
            MYSQL80,
            "varchar(5) COLLATE utf8mb4_unicode_520_nopad_ci",
            "varchar(5) COLLATE utf8mb4_unicode_520_ci",
        ),
        (MARIADB1011, MYSQL80, "point REF_SYSTEM_ID=4326 NOT NULL", "point SRID 4326 NOT NULL"),
        (MARIADB1011, MYSQL57, "point REF_SYSTEM_ID=4326 NOT NULL", "point NOT NULL"),
        (MYSQL80, MARIADB104, "point NOT NULL /*!80003 SRID 4326 */", "point REF_SYSTEM_ID=4326 NOT NULL"),
    ],
)
def test_column_translations(source: Dialect, target: Dialect, definition: str, expected: str) -> None:
    assert translate(definition, source, target)[0] == expected


def column(column_type: str, charset: str | None = None, collation: str | None = None) -> Column:
    return Column("c", column_type.split("(")[0], column_type, True, charset, collation)


def test_comparisons_treat_translated_columns_as_the_same() -> None:
    assert equivalent_columns(column("json"), column("longtext", "utf8mb4", "utf8mb4_bin"))
    assert equivalent_columns(column("longtext", "utf8mb4", "utf8mb4_bin"), column("json"))
    assert equivalent_columns(column("varchar(39)", "ascii", "ascii_general_ci"), column("inet6"))
    assert equivalent_columns(column("int(11)"), column("int"))
    assert equivalent_columns(
        column("varchar(10)", "utf8", "utf8_general_ci"), column("varchar(10)", "utf8mb3", "utf8mb3_general_ci")
    )
    assert not equivalent_columns(
        column("varchar(10)", "utf8", "utf8_bin"), column("varchar(10)", "utf8mb3", "utf8mb3_general_ci")
    )
    assert not equivalent_columns(column("varchar(10)", "latin1"), column("varchar(10)", "utf8mb4"))
    assert not equivalent_columns(column("varchar(40)", "ascii"), column("inet6"))
    assert not equivalent_columns(
        column("varchar(5)", "utf8mb4", "utf8mb4_bin"), column("varchar(5)", "utf8mb4", "utf8mb4_general_ci")
    )


def test_source_columns_compare_with_the_collation_the_target_gets() -> None:
    from types import SimpleNamespace

    def bind(dialect: Dialect) -> SimpleNamespace:
        return SimpleNamespace(
            dialect=SimpleNamespace(server_version_info=dialect.version, is_mariadb=dialect.is_mariadb)
        )

    source = column("varchar(5)", "utf8mb4", "utf8mb4_0900_ai_ci")
    assert column_for_target(bind(MYSQL80), bind(MARIADB1011), source).collation == "utf8mb4_uca1400_nopad_ai_ci"
    assert column_for_target(bind(MYSQL80), bind(MYSQL84), source) is source
    assert portable_type("enum('A')") == "enum('A')"  # members are data: case kept
