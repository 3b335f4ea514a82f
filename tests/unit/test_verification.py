"""Pure parts of verification: SQL builders, the chunk-size rule, result bookkeeping, the
reconcile schedule and the report format."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from dlt_db_sync.config.settings import DatabaseSettings, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.verification import chunk_compare
from dlt_db_sync.verification.chunk_compare import (
    ChunkResult,
    ChunkSums,
    CompareSpec,
    Comparison,
    Differences,
    KeyRange,
    TableComparer,
    hash_form,
    key_condition,
    range_condition,
    row_hash_sql,
)
from dlt_db_sync.verification.repair import ReconcileSchedule
from dlt_db_sync.verification.verify_command import REPORT_HEADER, VerifyReport, column_drift, format_report, run_verify


def col(name: str, data_type: str, nullable: bool = False, charset: str | None = None) -> Column:
    return Column(name, data_type, data_type, nullable, charset, None)


def test_range_condition_single_key() -> None:
    assert range_condition(["id"], KeyRange()) == ("1=1", [])
    sql, params = range_condition(["id"], KeyRange((10,), (20,)))
    assert sql == "(`id` > %s) AND (`id` <= %s)"
    assert params == [10, 20]


def test_range_condition_composite_key_is_expanded_for_the_range_optimizer() -> None:
    sql, params = range_condition(["a", "b", "c"], KeyRange(lower=(1, "x", b"\x00")))
    assert "(`a`, `b`" not in sql  # MariaDB does not range-optimize row-value comparisons
    assert sql == "(`a` >= %s AND (`a` > %s OR (`a` = %s AND (`b` > %s OR (`b` = %s AND `c` > %s)))))"
    assert params == [1, 1, 1, "x", "x", b"\x00"]
    sql, params = range_condition(["a", "b"], KeyRange(upper=(5, "z")))
    assert sql == "(`a` <= %s AND (`a` < %s OR (`a` = %s AND `b` <= %s)))"
    assert params == [5, 5, 5, "z"]


def test_key_condition() -> None:
    assert key_condition(["id"], [(1,), (2,)]) == ("`id` IN (%s, %s)", [1, 2])
    sql, params = key_condition(["a", "b"], [(1, "x"), (2, "y")])
    assert sql == "(`a` = %s AND `b` = %s) OR (`a` = %s AND `b` = %s)"
    assert params == [1, "x", 2, "y"]


def test_percent_in_identifiers_is_escaped_for_parameter_formatting() -> None:
    sql, _ = range_condition(["100%"], KeyRange((1,), None))
    assert sql == "(`100%%` > %s)"


@pytest.mark.parametrize(
    ("column", "form"),
    [
        (col("b", "bit"), "CAST(`b` AS UNSIGNED)"),
        (col("f", "float"), "(`f` * 1e0)"),
        (col("t", "timestamp"), "UNIX_TIMESTAMP(`t`)"),
        # binary and long values: the SHA1 of the value (HEX of a large value is NULL, warning 1301)
        (col("k", "binary"), "SHA1(`k`)"),
        (col("g", "point"), "SHA1(`g`)"),
        (col("t", "longtext", charset="utf8mb4"), "SHA1(`t`)"),
        (col("j", "json", charset="utf8mb4"), "SHA1(`j`)"),
        (col("s", "varchar", charset="latin1"), "CAST(`s` AS BINARY)"),
        (col("u", "varchar", charset="utf8mb4"), "`u`"),
        (col("d", "decimal"), "`d`"),
        (col("dt", "datetime"), "`dt`"),
    ],
)
def test_hash_form(column: Column, form: str) -> None:
    assert hash_form(column) == form


def test_row_hash_marks_nulls_of_nullable_columns_only() -> None:
    sql = row_hash_sql([col("id", "int"), col("v", "varchar", nullable=True, charset="latin1")])
    assert sql == "CRC32(SHA1(CONCAT_WS('#', `id`, CAST(`v` AS BINARY), CONCAT(ISNULL(`v`)))))"
    assert "ISNULL(`id`)" not in sql
    assert "CONCAT(ISNULL" not in row_hash_sql([col("id", "int")])


def sums(count: int, checksum: int = 0) -> ChunkSums:
    return ChunkSums(count, checksum)


def test_comparison_bookkeeping() -> None:
    chunks = [
        ChunkResult(KeyRange(None, (10,)), sums(10, 1), sums(10, 1)),
        ChunkResult(KeyRange((10,), (20,)), sums(10, 2), sums(7, 5)),
        ChunkResult(KeyRange((20,), None), sums(3, 3), sums(3, 4)),
    ]
    comparison = Comparison("t", "rows", chunks)
    assert (comparison.source_rows, comparison.target_rows) == (23, 20)
    assert [c.key_range.lower for c in comparison.differing_chunks] == [(10,), (20,)]
    assert not comparison.identical
    assert comparison.lower_bound_differences() == 3
    comparison.differences = Differences(missing=[(12,)], extra=[], changed=[(21,), (15,)])
    assert comparison.lower_bound_differences() == 3
    comparison.differences.sort()
    assert comparison.differences.changed == [(15,), (21,)]


def test_statement_size_follows_the_time_budget() -> None:
    spec = CompareSpec("t", ("id",), (col("id", "int"),), "rows", "PRIMARY", "PRIMARY")
    with TableComparer(None, spec, threading.Event(), time_budget=0.5, initial_buckets=4) as comparer:  # type: ignore[arg-type]
        comparer._adapt(rows=4_000, seconds=0.1)
        assert comparer.buckets_per_query == 16  # would be 20; growth is capped at 4x per statement
        comparer._adapt(rows=16_000, seconds=0.5)
        assert comparer.buckets_per_query == 16
        comparer._adapt(rows=16_000, seconds=2.0)
        assert comparer.buckets_per_query == 4
        comparer._adapt(rows=4_000, seconds=100.0)
        assert comparer.buckets_per_query == 1
        comparer.buckets_per_query = 200
        comparer._adapt(rows=200_000, seconds=0.01)
        assert comparer.buckets_per_query == chunk_compare.MAX_BUCKETS_PER_QUERY


def test_bucket_ranges_cover_the_whole_range() -> None:
    ranges = TableComparer._ranges(KeyRange((0,), None), [(10,), (20,), (25,)], complete=True)
    assert ranges == [KeyRange((0,), (10,)), KeyRange((10,), (20,)), KeyRange((20,), None)]
    ranges = TableComparer._ranges(KeyRange(None, None), [(10,), (20,)], complete=False)
    assert ranges == [KeyRange(None, (10,)), KeyRange((10,), (20,))]  # the walk goes on after (20,)
    assert TableComparer._ranges(KeyRange((5,), (9,)), [], complete=True) == [KeyRange((5,), (9,))]


def spec(table: str = "t", **kwargs: Any) -> TableSpec:
    return TableSpec(table, ("id",), modifier="updated_at", **kwargs)


def test_reconcile_schedule_every_cycle_by_default() -> None:
    schedule = ReconcileSchedule()
    table = spec(deletes="reconcile")
    assert schedule.due(table, now=0.0)
    schedule.done("t", now=0.0)
    assert schedule.due(table, now=1.0)
    assert not schedule.due(spec(), now=2.0)  # deletes: ignore is never due


def test_reconcile_schedule_every_n_cycles() -> None:
    schedule = ReconcileSchedule()
    table = spec(deletes="reconcile", reconcile_every_cycles=3)
    runs = []
    for cycle in range(1, 9):
        if schedule.due(table, now=float(cycle)):
            schedule.done("t", now=float(cycle))
            runs.append(cycle)
    assert runs == [1, 4, 7]


def test_reconcile_schedule_every_n_minutes_and_failed_runs_stay_due() -> None:
    schedule = ReconcileSchedule()
    table = spec(deletes="reconcile", reconcile_every_minutes=10)
    assert schedule.due(table, now=0.0)
    schedule.done("t", now=0.0)
    assert not schedule.due(table, now=300.0)
    assert schedule.due(table, now=600.0)  # not marked done (it failed): still due next time
    assert schedule.due(table, now=601.0)
    schedule.done("t", now=601.0)
    assert not schedule.due(table, now=602.0)


def test_report_lines() -> None:
    same = VerifyReport("orders", 10, 10, 2, 0, 0, 0, 0, 0.5)
    assert same.identical and format_report(same).endswith("identical")
    assert (
        len(format_report(same).split()) == len(REPORT_HEADER.split()) - 3
    )  # "source rows", "target rows", "diff chunks"
    different = VerifyReport("orders", 10, 11, 2, 1, 0, 1, 2, 0.5, note="after repair")
    assert not different.identical and "DIFFERENT (3 rows) - after repair" in format_report(different)
    failed = VerifyReport("orders", error="MySQL error 1146")
    assert not failed.identical and format_report(failed).endswith("ERROR: MySQL error 1146")


def settings() -> Settings:
    db = DatabaseSettings("source", "127.0.0.1", 1, "db", "u", "")
    return Settings(source=db, target=db, tables_file=Path("tables.json"))


def test_unknown_tables_exit_2_without_touching_a_database(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    code = run_verify(None, settings(), [spec("a")], ["a", "zz"], False, threading.Event(), out=out)  # type: ignore[arg-type]
    assert code == 2
    assert "zz" in capsys.readouterr().err and out.getvalue() == ""


def _col(name: str, column_type: str, nullable: bool = True, collation: str | None = None) -> Column:
    data_type = column_type.split("(")[0]
    charset = collation.split("_")[0] if collation else None
    return Column(name, data_type, column_type, nullable, charset, collation)


def test_column_drift_names_type_collation_nullability_and_missing_columns() -> None:
    source = [
        _col("id", "int(11)", nullable=False),
        _col("price", "decimal(10,2)"),
        _col("name", "varchar(20)", collation="utf8mb4_bin"),
        _col("qty", "int(11)", nullable=False),
        _col("added", "date"),
    ]
    target = [
        _col("id", "int(11)", nullable=False),
        _col("price", "decimal(12,2)"),
        _col("name", "varchar(20)", collation="utf8mb4_general_ci"),
        _col("qty", "int(11)"),
        _col("kept", "int(11)"),  # dropped in the source, kept by the sync on purpose: not drift
    ]
    assert column_drift(source, target) == [
        "price is decimal(12,2) in the target, decimal(10,2) in the source",
        "name is varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci in the target, "
        "varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin in the source",
        "qty is int(11) in the target, int(11) NOT NULL in the source",
        "added missing in the target",
    ]
    assert column_drift(source, source) == []


def test_a_column_drift_alone_makes_the_table_different() -> None:
    report = VerifyReport("t", 3, 3, 1, column_drift=["v is int(11) in the target, bigint(20) in the source"])
    assert not report.identical and report.differences == 0
    line = format_report(report)
    assert "DIFFERENT (column definitions) - columns: v is int(11) in the target, bigint(20) in the source" in line
