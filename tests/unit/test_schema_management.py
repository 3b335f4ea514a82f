"""Unit tests of the schema helpers: widening rules, target DDL and column definition parsing."""

from __future__ import annotations

import pytest

from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.schema_management.tables import (
    column_definitions,
    is_generated_extra,
    is_widening,
    normalized_type,
    same_type,
    target_create_sql,
    time_zone_dependent_generated_columns,
)


def c(column_type: str, charset: str | None = None) -> Column:
    data_type = column_type.split("(")[0].split()[0]
    return Column("x", data_type, column_type, True, charset, None)


UTF8 = "utf8mb4"


@pytest.mark.parametrize(
    ("old", "new", "widening"),
    [
        # integers: rank up, signedness
        (c("int(11)"), c("bigint(20)"), True),
        (c("bigint(20)"), c("int(11)"), False),
        (c("tinyint(1)"), c("smallint(6)"), True),
        (c("int(10) unsigned"), c("int(10) unsigned"), True),
        (c("int(10) unsigned"), c("bigint(20)"), True),
        (c("int(10) unsigned"), c("int(11)"), False),
        (c("int(11)"), c("int(10) unsigned"), False),
        (c("int(11)"), c("bigint(20) unsigned"), False),
        (c("int"), c("int(11)"), True),  # MySQL 8 vs MariaDB display width
        # decimals: integer digits and scale must both not shrink
        (c("decimal(10,2)"), c("decimal(14,2)"), True),
        (c("decimal(10,2)"), c("decimal(12,4)"), True),
        (c("decimal(10,2)"), c("decimal(10,3)"), False),
        (c("decimal(14,2)"), c("decimal(10,2)"), False),
        (c("decimal(10,2)"), c("decimal(10,2) unsigned"), False),
        # floating point
        (c("float"), c("double"), True),
        (c("double"), c("float"), False),
        # strings in one character set
        (c("varchar(50)", UTF8), c("varchar(200)", UTF8), True),
        (c("varchar(200)", UTF8), c("varchar(20)", UTF8), False),
        (c("char(10)", UTF8), c("varchar(10)", UTF8), True),
        (c("varchar(10)", UTF8), c("char(10)", UTF8), False),
        (c("varchar(50)", UTF8), c("text", UTF8), True),
        (c("text", UTF8), c("mediumtext", UTF8), True),
        (c("longtext", UTF8), c("text", UTF8), False),
        (c("varchar(50)", "latin1"), c("varchar(50)", UTF8), True),  # utf8mb4 holds every latin1 character
        (c("varchar(50)", "latin1"), c("text", UTF8), True),
        (c("varchar(50)", UTF8), c("varchar(50)", "latin1"), False),
        (c("varchar(50)", UTF8), c("varchar(60)", "latin1"), False),
        (c("enum('a')", UTF8), c("enum('a','b')", "latin1"), False),
        # bytes
        (c("binary(16)"), c("varbinary(16)"), True),
        (c("varbinary(16)"), c("varbinary(8)"), False),
        (c("varbinary(100)"), c("blob"), True),
        (c("blob"), c("longblob"), True),
        (c("mediumblob"), c("blob"), False),
        # temporal precision
        (c("datetime"), c("datetime(6)"), True),
        (c("datetime(6)"), c("datetime(3)"), False),
        (c("timestamp(3)"), c("timestamp(6)"), True),
        (c("time(6)"), c("time"), False),
        (c("date"), c("datetime"), False),
        (c("datetime"), c("timestamp"), False),
        # enum / set: every existing member kept, anywhere in the list (the server maps values by name)
        (c("enum('a','b')", UTF8), c("enum('a','b','c')", UTF8), True),
        (c("enum('a','c')", UTF8), c("enum('a','b','c')", UTF8), True),
        (c("set('x','z')", UTF8), c("set('x','y','z')", UTF8), True),
        (c("enum('a','b')", UTF8), c("enum('b','a')", UTF8), True),
        (c("enum('a','b')", UTF8), c("enum('a')", UTF8), False),
        (c("enum('A','b')", UTF8), c("enum('a','b','c')", UTF8), False),
        (c("set('x','y')", UTF8), c("set('x','y','z')", UTF8), True),
        # bits
        (c("bit(1)"), c("bit(64)"), True),
        (c("bit(8)"), c("bit(1)"), False),
        # incompatible kinds
        (c("int(11)"), c("varchar(20)", UTF8), False),
        (c("varchar(20)", UTF8), c("int(11)"), False),
        (c("json", UTF8), c("longtext", UTF8), False),
    ],
)
def test_is_widening(old: Column, new: Column, widening: bool) -> None:
    assert is_widening(old, new) is widening


@pytest.mark.parametrize(
    ("column_type", "normal"),
    [
        ("int(11)", "int"),
        ("bigint(20) unsigned", "bigint unsigned"),
        ("year(4)", "year"),
        ("varchar(20)", "varchar(20)"),
        ("decimal(10,2)", "decimal(10,2)"),
        ("enum('A')", "enum('A')"),
    ],
)
def test_normalized_type(column_type: str, normal: str) -> None:
    assert normalized_type(column_type) == normal


def test_same_type_compares_charset_and_ignores_display_width() -> None:
    assert same_type(c("int"), c("int(11)"))
    assert not same_type(c("varchar(5)", "latin1"), c("varchar(5)", UTF8))
    assert not same_type(c("enum('a')", UTF8), c("enum('A')", UTF8))  # member case is data


SOURCE_DDL = """CREATE TABLE `orders` (
  `id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `customer_id` int(11) NOT NULL,
  `we``ird` varchar(10) DEFAULT 'a,b',
  `doc` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`doc`)),
  `total` decimal(10,2) NOT NULL DEFAULT 0.00 COMMENT 'sum, with tax',
  `updated_at` timestamp(6) NOT NULL DEFAULT current_timestamp(6) ON UPDATE current_timestamp(6),
  PRIMARY KEY (`id`),
  KEY `customer_idx` (`customer_id`),
  CONSTRAINT `fk_customer` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB AUTO_INCREMENT=1234 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"""


def test_target_create_sql_strips_foreign_keys_and_the_counter() -> None:
    sql = target_create_sql(SOURCE_DDL, "orders__dlt_new")
    assert sql.startswith("CREATE TABLE `orders__dlt_new` (\n")
    assert "FOREIGN KEY" not in sql and "fk_customer" not in sql
    assert "AUTO_INCREMENT=1234" not in sql
    assert "`id` bigint(20) unsigned NOT NULL AUTO_INCREMENT," in sql  # the column attribute stays
    assert "  KEY `customer_idx` (`customer_id`)\n)" in sql  # trailing comma removed before ')'
    assert sql.endswith(") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci")


def test_target_create_sql_with_unnamed_foreign_key_and_no_other_keys() -> None:
    ddl = (
        "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `p` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n"
        "  FOREIGN KEY (`p`) REFERENCES `t` (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=7"
    )
    assert target_create_sql(ddl, "t") == (
        "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `p` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB"
    )


def test_column_definitions() -> None:
    definitions = column_definitions(SOURCE_DDL)
    assert list(definitions) == ["id", "customer_id", "we`ird", "doc", "total", "updated_at"]
    assert definitions["id"] == "bigint(20) unsigned NOT NULL AUTO_INCREMENT"
    assert definitions["we`ird"] == "varchar(10) DEFAULT 'a,b'"
    assert (
        definitions["doc"]
        == "longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`doc`))"
    )
    assert definitions["total"] == "decimal(10,2) NOT NULL DEFAULT 0.00 COMMENT 'sum, with tax'"
    assert definitions["updated_at"].endswith("ON UPDATE current_timestamp(6)")


RANGE_DDL = """CREATE TABLE `p1` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `d` date NOT NULL,
  PRIMARY KEY (`id`,`d`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci
 PARTITION BY RANGE (year(`d`))
(PARTITION `p0` VALUES LESS THAN (2020) ENGINE = InnoDB,
 PARTITION `p1` VALUES LESS THAN MAXVALUE ENGINE = InnoDB)"""

HASH_DDL = """CREATE TABLE `p2` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB AUTO_INCREMENT=2 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci
 PARTITION BY HASH (`id`)
PARTITIONS 4"""


def test_target_create_sql_keeps_partition_clauses_whole() -> None:
    sql = target_create_sql(RANGE_DDL, "p1")
    assert "  PRIMARY KEY (`id`,`d`)\n) ENGINE=InnoDB DEFAULT CHARSET" in sql  # the comma between partitions stays
    assert sql.endswith(
        " PARTITION BY RANGE (year(`d`))\n(PARTITION `p0` VALUES LESS THAN (2020) ENGINE = InnoDB,\n"
        " PARTITION `p1` VALUES LESS THAN MAXVALUE ENGINE = InnoDB)"
    )
    assert "AUTO_INCREMENT=" not in sql


def test_target_create_sql_strips_the_counter_before_a_hash_partition_clause() -> None:
    sql = target_create_sql(HASH_DDL, "p2")
    assert "AUTO_INCREMENT=" not in sql
    assert sql.endswith("COLLATE=utf8mb4_general_ci\n PARTITION BY HASH (`id`)\nPARTITIONS 4")


@pytest.mark.parametrize(
    ("extra", "generated"),
    [
        ("VIRTUAL GENERATED", True),
        ("STORED GENERATED", True),
        ("DEFAULT_GENERATED", False),
        ("DEFAULT_GENERATED on update CURRENT_TIMESTAMP", False),
        ("auto_increment", False),
        ("", False),
        (None, False),
    ],
)
def test_is_generated_extra(extra: str | None, generated: bool) -> None:
    assert is_generated_extra(extra) is generated


def test_column_describe_names_charset_and_collation() -> None:
    assert Column("v", "varchar", "varchar(20)", True, "latin1", "latin1_swedish_ci").describe() == (
        "varchar(20) CHARACTER SET latin1 COLLATE latin1_swedish_ci"
    )
    assert c("int(11)").describe() == "int(11)"


def test_same_type_sees_a_collation_change() -> None:
    ci = Column("e", "varchar", "varchar(9)", False, "utf8mb4", "utf8mb4_general_ci")
    binary = Column("e", "varchar", "varchar(9)", False, "utf8mb4", "utf8mb4_bin")
    assert not same_type(ci, binary)
    assert is_widening(ci, binary)  # the bytes stay; only comparison changes


def test_loaded_columns_leave_out_generated_ones() -> None:
    table = TableDefinition("t", [c("int"), Column("g", "int", "int(11)", True, None, None, generated=True)], "")
    assert [col.name for col in table.loaded_columns] == ["x"]


def test_generated_columns_over_a_timestamp_are_named() -> None:
    ddl = (
        "CREATE TABLE `g` (\n  `id` int(11) NOT NULL,\n  `ts` timestamp(3) NULL DEFAULT NULL,\n"
        "  `c` bigint(20) GENERATED ALWAYS AS (crc32(`ts`)) STORED,\n  `d` int(11) GENERATED ALWAYS AS (`id` * 2) VIRTUAL,\n"
        "  PRIMARY KEY (`id`)\n) ENGINE=InnoDB"
    )
    columns = [
        Column("id", "int", "int(11)", False, None, None),
        Column("ts", "timestamp", "timestamp(3)", True, None, None),
        Column("c", "bigint", "bigint(20)", True, None, None, generated=True),
        Column("d", "int", "int(11)", True, None, None, generated=True),
    ]
    assert time_zone_dependent_generated_columns(TableDefinition("g", columns, ddl, column_definitions(ddl))) == ["c"]


def test_deferrable_indexes_are_the_plain_keys_with_their_own_text() -> None:
    from dlt_db_sync.schema_management.deferred_indexes import deferrable_indexes, load_table_name

    create = """CREATE TABLE `t` (
  `id` int(11) NOT NULL,
  `seq` int(11) NOT NULL AUTO_INCREMENT,
  `a` varchar(40) NOT NULL,
  `b` text NOT NULL,
  `g` point NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uq_a` (`a`),
  KEY `ix_seq` (`seq`),
  KEY `ix_a_b` (`a`,`b`(12) DESC) COMMENT 'it''s, reporting',
  KEY `ix``odd` (`b`(3)) IGNORED,
  FULLTEXT KEY `ft_b` (`b`),
  SPATIAL KEY `sp_g` (`g`),
  CONSTRAINT `c` CHECK (`id` > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
    found = deferrable_indexes(create)
    assert [i.add_clause for i in found] == [
        "ADD KEY `ix_a_b` (`a`,`b`(12) DESC) COMMENT 'it''s, reporting'",
        "ADD KEY `ix``odd` (`b`(3)) IGNORED",
    ]
    assert [i.drop_clause for i in found] == ["DROP INDEX `ix_a_b`", "DROP INDEX `ix``odd`"]
    assert len(load_table_name("x" * 64)) == 64 and load_table_name("t") == "t__dlt_load"
