"""Unit tests of the sanitization policy's SQL: which values count as unstorable, the aggregate
count, the value expressions under each policy, the refusal messages and the ENUM fix-up.
"""

from __future__ import annotations

import logging
import re

import pyarrow as pa
import pytest

from dlt_db_sync.data_processing.sanitization import LoadPlan, SanitizeCounter, sql_mode_flags, unstorable_check
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.error_handling.errors import DataError
from dlt_db_sync.schema_management.model import Column
from log_lines import logged_line

STRICT_NO_ZERO = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE"
MARIADB = Dialect("mariadb", (10, 11, 6))


def col(
    name: str, data_type: str, column_type: str | None = None, *, nullable: bool = True, charset: str | None = None
) -> Column:
    return Column(name, data_type, column_type or data_type, nullable, charset, None)


def regex_matches(predicate: str, value: str) -> bool:
    """Evaluate a check's ``REGEXP`` predicate in Python (MariaDB's REGEXP is PCRE, same syntax here)."""
    parts = re.findall(r"(NOT \()?CONVERT\(\{raw\} USING utf8mb4\) REGEXP '([^']*)'\)?", predicate)
    assert parts, predicate
    results = []
    for negated, pattern in parts:
        hit = re.search(pattern.replace("{{", "{").replace("}}", "}"), value) is not None
        results.append(not hit if negated else hit)
    if " AND " in predicate:
        return all(results)
    return any(results)


# What MariaDB 10.11 accepts and refuses, checked by hand against a server (see the module docstring).
@pytest.mark.parametrize(
    ("mode", "value", "refused"),
    [
        ("NO_ZERO_DATE", "0000-00-00", True),
        ("NO_ZERO_DATE", "0000-00-00 00:00:00", True),
        ("NO_ZERO_DATE", "0000-00-00 00:00:00.000", True),
        ("NO_ZERO_DATE", "0000-00-00 00:00:00.001", False),
        ("NO_ZERO_DATE", "0000-00-00 10:00:00", False),
        ("NO_ZERO_DATE", "2020-00-01", False),
        ("NO_ZERO_DATE", "0000-00-01", False),
        ("NO_ZERO_IN_DATE", "0000-00-00", False),
        ("NO_ZERO_IN_DATE", "0000-00-00 00:00:00.000000", False),
        ("NO_ZERO_IN_DATE", "0000-01-01", False),
        ("NO_ZERO_IN_DATE", "2020-00-01", True),
        ("NO_ZERO_IN_DATE", "0000-00-01", True),
        ("NO_ZERO_IN_DATE", "0000-01-00", True),
        ("NO_ZERO_IN_DATE", "0000-00-00 10:00:00", True),
        ("NO_ZERO_IN_DATE", "2000-01-00 10:00:00", True),
        ("NO_ZERO_IN_DATE", "2000-10-10 00:00:00", False),
        (STRICT_NO_ZERO, "0000-00-00", True),
        (STRICT_NO_ZERO, "2020-05-00", True),
        (STRICT_NO_ZERO, "2020-05-06 00:00:00", False),
        (STRICT_NO_ZERO, "1000-01-01", False),
    ],
)
def test_date_checks_match_the_server(mode: str, value: str, refused: bool) -> None:
    check = unstorable_check(col("d", "datetime", "datetime(6)"), 0, sql_mode_flags(mode))
    assert check is not None
    assert regex_matches(check.predicate, value) is refused


def test_no_checks_when_the_target_accepts_zero_dates() -> None:
    flags = sql_mode_flags("STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO")
    for column in (col("d", "date"), col("t", "timestamp"), col("s", "varchar", "varchar(5)")):
        assert unstorable_check(column, 0, flags) is None
    assert unstorable_check(col("s", "varchar", "varchar(5)"), 0, sql_mode_flags(STRICT_NO_ZERO)) is None


def test_timestamp_check_is_on_the_epoch_and_only_for_no_zero_date() -> None:
    ts = col("ts", "timestamp", "timestamp(3)")
    check = unstorable_check(ts, 2, sql_mode_flags("no_zero_date"))
    assert check is not None and check.on("c2") == "(CAST(c2 AS DECIMAL(20,6)) = 0)"
    assert unstorable_check(ts, 2, sql_mode_flags("NO_ZERO_IN_DATE")) is None


def dates_plan(policy: str, sql_mode: str = STRICT_NO_ZERO) -> LoadPlan:
    columns = [
        col("id", "int", "int(11)", nullable=False),
        col("da", "date"),
        col("dn", "date", nullable=False),
        col("ts", "timestamp"),
        col("e", "enum", "enum('a','b')", charset="utf8mb4"),
    ]
    return LoadPlan("t", columns, policy, sql_mode)  # type: ignore[arg-type]


def test_count_sql_is_one_aggregate_over_the_stage() -> None:
    sql = dates_plan("error").count_sql("_stage")
    assert (
        sql is not None
        and sql.startswith("SELECT SUM((CONVERT(c1 USING utf8mb4) REGEXP")
        and sql.endswith("FROM `_stage`")
    )
    assert sql.count("SUM(") == 3  # da, dn, ts
    assert dates_plan("error", "STRICT_ALL_TABLES").count_sql("_stage") is None


def test_counts_map_columns_and_treat_null_sums_as_zero() -> None:
    plan = dates_plan("null")
    assert plan.counts((2, None, 1)) == {"da": 2, "dn": 0, "ts": 1}
    assert plan.counts(None) == {"da": 0, "dn": 0, "ts": 0}


def test_error_policy_refuses_with_table_columns_counts_and_what_to_do() -> None:
    plan = dates_plan("error")
    plan.refuse({"da": 0, "dn": 0, "ts": 0})
    with pytest.raises(DataError) as info:
        plan.refuse({"da": 2, "dn": 0, "ts": 1})
    message = str(info.value)
    assert message.startswith("table 't': the target cannot store column 'da': 2 value(s), zero date")
    assert "column 'ts': 1 value(s), zero timestamp" in message and "'dn'" not in message
    assert '"sanitize": "null"' in message and "SANITIZE_POLICY=null" in message and "TARGET_SQL_MODE" in message


def test_null_policy_refuses_only_not_null_columns() -> None:
    plan = dates_plan("null")
    plan.refuse({"da": 5, "dn": 0, "ts": 3})
    with pytest.raises(DataError, match=r"column 'dn': 1 value\(s\).*NOT NULL, so the null policy cannot apply"):
        plan.refuse({"da": 5, "dn": 1, "ts": 0})


def test_value_expressions_wrap_only_nullable_checked_columns_under_null() -> None:
    raws = ["c0", "c1", "c2", "c3", "c4"]
    error = dates_plan("error").value_expressions(raws)
    assert error[:3] == ["c0", "c1", "c2"]
    null = dates_plan("null").value_expressions(raws)
    assert null[0] == "c0" and null[2] == "c2"
    assert null[1].startswith("IF((CONVERT(c1 USING utf8mb4) REGEXP ") and null[1].endswith(", NULL, c1)")
    assert null[3].startswith("IF((CAST(c3 AS DECIMAL(20,6)) = 0), NULL, IF(c3 IS NULL")
    # The ENUM's invalid value '' is loaded as a placeholder under every policy.
    assert error[4] == null[4] == "IF(c4 = '', NULL, CONVERT(c4 USING utf8mb4))"


def test_enum_fixup_updates_only_that_column_in_a_non_strict_statement() -> None:
    columns = [
        col("k", "binary", "binary(16)", nullable=False),
        col("name", "varchar", "varchar(5)", nullable=False, charset="utf8mb4"),
        col("e", "enum", "enum('x','y')", nullable=False, charset="utf8mb4"),
    ]
    plan = LoadPlan("t", columns, "error", STRICT_NO_ZERO)
    assert plan.value_expressions(["c0", "c1", "c2"])[2] == "IF(c2 = '', 'x', CONVERT(c2 USING utf8mb4))"
    assert plan.fixup_statements("t__dlt_new", "_stage", ["k", "NAME"], MARIADB) == [
        "SET STATEMENT sql_mode='NO_ZERO_DATE,NO_ZERO_IN_DATE' FOR UPDATE `t__dlt_new` AS t JOIN `_stage` AS s "
        "ON t.`k` = s.c0 AND t.`NAME` = CONVERT(s.c1 USING utf8mb4) SET t.`e` = '' WHERE s.c2 = ''"
    ]
    assert LoadPlan("t", columns[:2], "error", STRICT_NO_ZERO).fixup_statements("t", "_stage", ["k"], MARIADB) == []


def test_needs_stage_only_for_checks_or_an_empty_enum_value() -> None:
    columns = [col("id", "int"), col("e", "enum", "enum('a')", charset="utf8mb4")]
    plan = LoadPlan("t", columns, "error", "STRICT_ALL_TABLES")
    assert not plan.needs_stage(pa.table({"id": ["1", "2"], "e": ["a", None]}))
    assert not plan.needs_stage(pa.table({"id": ["1"], "e": pa.array([None], pa.string())}))
    assert plan.needs_stage(pa.table({"id": ["1", "2"], "e": ["a", ""]}))
    assert plan.needs_stage(pa.table({"id": ["1"], "e": pa.array([b""], pa.binary())}))
    assert dates_plan("error").needs_stage(pa.table({c: ["1"] for c in ["id", "da", "dn", "ts", "e"]}))


def test_counter_adds_committed_chunks_and_logs_once_per_column(caplog: pytest.LogCaptureFixture) -> None:
    counter = SanitizeCounter()
    reasons = {"da": "zero date, forbidden by the target sql_mode NO_ZERO_DATE", "ts": "zero timestamp"}
    counter.add({"da": 2, "ts": 0}, reasons)
    counter.add({"da": 3}, reasons)
    assert counter.counts == {"da": 5}
    caplog.set_level(logging.WARNING, logger="dlt_sync")
    counter.log("orders")
    assert [logged_line(r) for r in caplog.records] == [
        "DATA_PROCESSING - SANITIZE - orders.da: 5 value(s) set to NULL (zero date, forbidden by the target sql_mode NO_ZERO_DATE)"
    ]
