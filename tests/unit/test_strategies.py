"""Sync strategies without a database: selection per table, the incremental strategy's decisions,
the full refresh's swap DDL, delete-reconciliation scheduling and the table-level re-plan."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from dlt_db_sync.config.settings import DatabaseSettings, PipelineMode, Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.database.sync_state import TableState
from dlt_db_sync.error_handling.errors import SchemaError, ShutdownRequested
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.context import SyncContext, TargetCapabilities
from dlt_db_sync.pipeline_management.strategies import full_refresh, incremental, reconcile
from dlt_db_sync.pipeline_management.strategies.base import SyncStrategy, TableResult
from dlt_db_sync.pipeline_management.strategies.full_refresh import FullRefreshStrategy, load_and_swap
from dlt_db_sync.pipeline_management.strategies.incremental import IncrementalStrategy
from dlt_db_sync.pipeline_management.strategies.reconcile import ReconcileStrategy
from dlt_db_sync.pipeline_management.syncer import TableSyncer, default_strategies
from dlt_db_sync.schema_management.model import Column, TableDefinition


def wrapped(code: int) -> sa.exc.DBAPIError:
    cls = pymysql.err.error_map.get(code, pymysql.err.OperationalError)
    return sa.exc.DBAPIError.instance("SELECT 1", {}, cls(code, "text"), pymysql.err.Error)


class FakeEngines:
    """Records pool rebuilds; hands out fake connections."""

    def __init__(self) -> None:
        self.rebuilt: list[str] = []

    def rebuild(self, role: str) -> None:
        self.rebuilt.append(role)


class FakeConnection:
    """Records every statement and transaction boundary."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def exec_driver_sql(self, sql: str, *_args: Any) -> None:
        self.log.append(sql)

    def commit(self) -> None:
        self.log.append("COMMIT")

    def rollback(self) -> None:
        self.log.append("ROLLBACK")


def make_context(**overrides: Any) -> SyncContext:
    db = DatabaseSettings(role="target", host="127.0.0.1", port=3306, name="x", user="u", password="")
    values: dict[str, Any] = {"lock_timeout_base_delay": 0.0, "lock_timeout_max_delay": 0.0, "batch_delay": 0.0}
    settings = Settings(source=db, target=db, **(values | overrides))
    return SyncContext(
        FakeEngines(),  # type: ignore[arg-type]
        settings,
        threading.Event(),
        SyncStatus(),
        TargetCapabilities("load_data", temporary_tables=True),
    )


@dataclass
class Scripted(SyncStrategy):
    """A strategy answering from a script: each call pops the next outcome (an exception is raised)."""

    context: SyncContext
    name_: str
    script: list[Any] = field(default_factory=list)
    calls: list[tuple[str, PipelineMode]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def sync(self, spec: TableSpec, mode: PipelineMode) -> TableResult:
        self.calls.append((spec.table, mode))
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, BaseException):
            raise outcome
        return TableResult(spec.table, ok=True, rows=outcome or 0, mode=mode)

    def forget(self, table: str) -> None:
        self.forgotten.append(table)


class ScriptedReconcile(ReconcileStrategy):
    """The real schedule; the deletion answers from a script."""

    def __init__(self, context: SyncContext, script: list[Any] | None = None) -> None:
        super().__init__(context)
        self.script = script or []
        self.calls: list[str] = []

    def sync(self, spec: TableSpec, mode: PipelineMode) -> TableResult:
        self.calls.append(spec.table)
        outcome = self.script.pop(0) if self.script else 0
        if isinstance(outcome, BaseException):
            raise outcome
        self.schedule.done(spec.table)
        return TableResult(spec.table, ok=True, mode=mode, details={"rows_deleted": outcome})


@pytest.fixture
def scheduler() -> Iterator[tuple[TableSyncer, Scripted, Scripted, ScriptedReconcile]]:
    context = make_context()
    inc, full = Scripted(context, "incremental"), Scripted(context, "full_refresh")
    rec = ScriptedReconcile(context)
    yield TableSyncer.from_context(context, {"incremental": inc, "full_refresh": full}, rec), inc, full, rec


# ----------------------------------------------------------------------------- selection


def test_each_table_goes_to_the_strategy_its_spec_names_with_its_mode(scheduler: Any) -> None:
    syncer, inc, full, _rec = scheduler
    syncer.sync_table(TableSpec("a", ("id",), modifier="updated_at"))  # auto + modifier: incremental
    syncer.sync_table(TableSpec("b", ("id",)))  # auto, no modifier: full refresh
    syncer.sync_table(TableSpec("c", ("id",), modifier="updated_at", sync_strategy="full_refresh"))
    syncer.sync_table(TableSpec("d", ("id",), modifier="updated_at", mode="file_staging"))
    assert inc.calls == [("a", "direct"), ("d", "file_staging")]
    assert full.calls == [("b", "direct"), ("c", "direct")]


def test_the_default_strategies_are_keyed_by_the_spec_strategy() -> None:
    strategies = default_strategies(make_context())
    assert isinstance(strategies["incremental"], IncrementalStrategy)
    assert isinstance(strategies["full_refresh"], FullRefreshStrategy)
    assert strategies["incremental"].transfer is strategies["full_refresh"].transfer  # type: ignore[attr-defined]


def test_a_syncer_refuses_to_sync_before_prepare() -> None:
    context = make_context()
    syncer = TableSyncer(context.engines, context.settings, context.status, context.stop_event)
    with pytest.raises(RuntimeError, match="prepare"):
        syncer.sync_table(TableSpec("a", ("id",)))


# ----------------------------------------------------------------------------- failures and the re-plan


def test_a_fresh_transient_error_re_plans_the_table_once_rebuilding_the_pools(scheduler: Any) -> None:
    syncer, inc, _full, _rec = scheduler
    inc.script = [wrapped(2013), 7]
    result = syncer.sync_table(TableSpec("a", ("id",), modifier="m"))
    assert result.ok and result.rows == 7 and len(inc.calls) == 2
    assert syncer.engines.rebuilt == ["source", "target"]


def test_a_table_is_re_planned_at_most_once(scheduler: Any) -> None:
    syncer, inc, _full, _rec = scheduler
    inc.script = [wrapped(1205), wrapped(1205), 1]
    result = syncer.sync_table(TableSpec("a", ("id",), modifier="m"))
    assert not result.ok and result.category == "lock_timeout_errors" and len(inc.calls) == 2
    assert inc.forgotten == ["a"]
    assert syncer.status.snapshot()["tables"]["a"].consecutive_failures == 1


def test_an_error_the_chunk_layer_already_retried_is_not_re_planned(scheduler: Any) -> None:
    syncer, inc, _full, _rec = scheduler
    spent = wrapped(1205)
    spent.dlt_sync_retries_spent = True  # as the loader's retry layer leaves it
    inc.script = [spent, 1]
    assert not syncer.sync_table(TableSpec("a", ("id",), modifier="m")).ok
    assert len(inc.calls) == 1


def test_terminal_errors_fail_the_table_without_a_re_plan(scheduler: Any) -> None:
    syncer, _inc, full, _rec = scheduler
    full.script = [SchemaError("narrowing"), 1]
    result = syncer.sync_table(TableSpec("b", ("id",)))
    assert (result.ok, result.category, result.error) == (False, "schema_errors", "narrowing")
    assert len(full.calls) == 1


# ----------------------------------------------------------------------------- delete reconciliation


def test_reconciliation_runs_after_a_successful_incremental_sync_when_due(scheduler: Any) -> None:
    syncer, inc, _full, rec = scheduler
    spec = TableSpec("a", ("id",), modifier="m", deletes="reconcile", reconcile_every_cycles=2)
    assert syncer.sync_table(spec).details["rows_deleted"] == 0  # the first sync is always due
    assert "rows_deleted" not in syncer.sync_table(spec).details  # 1 of 2
    rec.script = [4]
    assert syncer.sync_table(spec).details["rows_deleted"] == 4
    assert rec.calls == ["a", "a"]
    inc.script = [wrapped(1146)]
    syncer.sync_table(spec)  # a failed sync is not counted and never reconciled
    assert rec.calls == ["a", "a"] and rec.schedule.syncs_since["a"] == 0


def test_reconciliation_skips_full_refresh_tables_and_deletes_ignore(scheduler: Any) -> None:
    syncer, _inc, _full, rec = scheduler
    syncer.sync_table(TableSpec("b", ("id",), deletes="reconcile"))
    syncer.sync_table(TableSpec("a", ("id",), modifier="m"))
    assert rec.calls == []


def test_a_failed_reconciliation_fails_the_table_and_a_shutdown_keeps_the_sync(scheduler: Any) -> None:
    syncer, _inc, _full, rec = scheduler
    spec = TableSpec("a", ("id",), modifier="m", deletes="reconcile")
    rec.script = [wrapped(1045)]
    result = syncer.sync_table(spec)
    assert not result.ok and result.error is not None and result.error.startswith("delete reconciliation failed: ")
    rec.script = [ShutdownRequested("stop")]
    result = syncer.sync_table(spec)
    assert result.ok and "rows_deleted" not in result.details


def test_the_reconcile_strategy_reports_deleted_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    context = make_context()
    monkeypatch.setattr(reconcile, "reconcile_deletes", lambda *_args, **_kwargs: (3, None))
    strategy = ReconcileStrategy(context)
    spec = TableSpec("a", ("id",), modifier="m", deletes="reconcile")
    context.status.register_tables([spec])
    assert strategy.due(spec)
    assert strategy.sync(spec, "direct").details == {"rows_deleted": 3}
    assert context.status.snapshot()["tables"]["a"].rows_deleted_total == 3
    assert strategy.schedule.syncs_since["a"] == 0


# ----------------------------------------------------------------------------- full refresh swap


def test_the_shadow_swap_is_drop_create_load_guard_rename_drop() -> None:
    target = FakeConnection()
    steps: list[str] = []

    def load(shadow: str) -> int:
        steps.append(f"load {shadow}")
        return 5

    assert load_and_swap(target, "t", load, lambda shadow: steps.append(f"guard {shadow}")) == 5  # type: ignore[arg-type]
    assert target.log == [
        "DROP TABLE IF EXISTS `t__dlt_new`, `t__dlt_old`",
        "CREATE TABLE `t__dlt_new` LIKE `t`",
        "RENAME TABLE `t` TO `t__dlt_old`, `t__dlt_new` TO `t`",
        "DROP TABLE `t__dlt_old`",
    ]
    assert steps == ["load t__dlt_new", "guard t__dlt_new"]


@pytest.mark.parametrize("failing", ["load", "guard"])
def test_a_failed_load_or_a_refused_swap_drops_the_shadow_and_keeps_the_table(failing: str) -> None:
    target = FakeConnection()

    def fail(_shadow: str) -> int:
        raise SchemaError(f"{failing} failed")

    def ok(_shadow: str) -> int:
        return 1

    with pytest.raises(SchemaError):
        load_and_swap(target, "t", fail if failing == "load" else ok, fail if failing == "guard" else None)  # type: ignore[arg-type]
    assert target.log == [
        "DROP TABLE IF EXISTS `t__dlt_new`, `t__dlt_old`",
        "CREATE TABLE `t__dlt_new` LIKE `t`",
        "DROP TABLE IF EXISTS `t__dlt_new`",
    ]


def test_shadow_names_stay_within_64_characters() -> None:
    target = FakeConnection()
    load_and_swap(target, "x" * 64, lambda _shadow: 0)  # type: ignore[arg-type]
    assert target.log[0] == f"DROP TABLE IF EXISTS `{'x' * 52}__dlt_new`, `{'x' * 52}__dlt_old`"


@dataclass
class FakeTransfer:
    """Records loads and re-copies instead of moving rows."""

    rows: int = 0
    loads: list[dict[str, Any]] = field(default_factory=list)
    copies: list[list[Any]] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)  # the ``created`` flag of each load

    def load(
        self,
        spec: TableSpec,
        mode: str,
        _def: Any,
        table: str,
        lower: Any,
        into_empty: bool,
        *rest: Any,
        created: bool = False,
    ) -> Any:
        self.loads.append({"table": table, "lower": lower, "into_empty": into_empty, "window_rows": rest[:1]})
        self.created.append(created)
        return self.rows, "pyarrow", {}

    def copy_rows(self, _spec: TableSpec, _def: Any, keys: Any) -> int:
        self.copies.append(list(keys))
        return len(keys)


def test_an_empty_target_is_loaded_by_a_swap_without_comparison_or_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    source, target, transfer = FakeConnection(), FakeConnection(), FakeTransfer(rows=9)
    monkeypatch.setattr(full_refresh, "has_rows", lambda conn, _table: conn is source)
    monkeypatch.setattr(full_refresh, "refresh_by_chunks", pytest.fail)  # an empty target is not compared
    monkeypatch.setattr(full_refresh, "count_rows", pytest.fail)  # nor guarded
    strategy = FullRefreshStrategy(make_context(), transfer)  # type: ignore[arg-type]
    result = strategy.run(TableSpec("t", ("id",)), "direct", source, target, DEFINITION, backfill=False)  # type: ignore[arg-type]
    assert (result.ok, result.rows, result.details) == (True, 9, {"refresh": "swap"})
    assert transfer.loads == [{"table": "t__dlt_new", "lower": None, "into_empty": True, "window_rows": ()}]
    assert [sql.split()[0] for sql in target.log if sql not in ("ROLLBACK", "COMMIT")] == [
        "DROP",
        "CREATE",
        "RENAME",
        "DROP",
    ]


# ----------------------------------------------------------------------------- incremental decisions

MODIFIER = Column("updated_at", "datetime", "datetime", False, None, None)
DEFINITION = TableDefinition("t", [Column("id", "int", "int", False, None, None), MODIFIER], "CREATE TABLE t")
SPEC = TableSpec("t", ("id",), modifier="updated_at")


@dataclass
class World:
    """What the incremental strategy reads from both databases, and what it writes to the state."""

    state: TableState | None = None
    watermark: tuple[str | None, str | None] = ("2024-01-01 10:00:00", "2024-01-01 09:55:00")
    after_load: tuple[str | None, str | None] = ("2024-01-01 11:00:00", "2024-01-01 10:55:00")
    target_has_rows: bool = True
    source_window: tuple[Any, ...] = (10, "2024-01-01 10:00:00", 123)
    target_window: tuple[Any, ...] = (10, "2024-01-01 10:00:00", 123)
    loaded: bool = False
    writes: list[tuple[Any, ...]] = field(default_factory=list)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    source, target = FakeConnection(), FakeConnection()
    w.source, w.target = source, target  # type: ignore[attr-defined]

    def window(conn: Any, *_args: Any) -> tuple[Any, ...]:
        if w.loaded:  # after the load the target holds the source's window
            return w.source_window
        return w.source_window if conn is source else w.target_window

    def mark_pending(_conn: Any, table: str, lower: Any) -> None:
        w.writes.append(("pending", table, lower))

    def mark_done(_conn: Any, table: str, rows: int, newest: Any) -> None:
        w.writes.append(("done", table, rows, newest))

    monkeypatch.setattr(incremental, "advise_source_modifier_index", lambda *_args: None)
    monkeypatch.setattr(incremental, "read_state", lambda *_args: w.state)
    monkeypatch.setattr(incremental, "source_clock_cap", lambda *_args: None)
    monkeypatch.setattr(incremental, "target_watermark", lambda *_args: w.after_load if w.loaded else w.watermark)
    monkeypatch.setattr(incremental, "has_rows", lambda *_args: w.target_has_rows)
    monkeypatch.setattr(incremental, "window_fingerprint", window)
    monkeypatch.setattr(incremental, "mark_pending", mark_pending)
    monkeypatch.setattr(incremental, "mark_done", mark_done)
    return w


def run_incremental(
    world: World, backfill: bool = False, rows: int = 4, created: bool = False
) -> tuple[TableResult, FakeTransfer]:
    class Loading(FakeTransfer):
        def load(self, *args: Any, **kwargs: Any) -> Any:
            world.loaded = True
            return super().load(*args, **kwargs)

    transfer = Loading(rows=rows)
    strategy = IncrementalStrategy(make_context(), transfer)  # type: ignore[arg-type]
    if created:
        strategy.created.add(SPEC.table)  # as sync() does when its schema check created the table
    result = strategy.run(SPEC, "direct", world.source, world.target, DEFINITION, backfill)  # type: ignore[attr-defined]
    return result, transfer


def test_an_unchanged_window_is_skipped_without_a_load(world: World) -> None:
    result, transfer = run_incremental(world)
    assert result.ok and result.skipped and result.watermark == "2024-01-01 10:00:00"
    assert transfer.loads == [] and world.writes == []


def test_a_changed_window_is_marked_pending_loaded_from_its_lower_bound_and_marked_done(world: World) -> None:
    world.target_window = (9, "2024-01-01 10:00:00", 99)
    result, transfer = run_incremental(world)
    assert transfer.loads == [
        {"table": "t", "lower": "2024-01-01 09:55:00", "into_empty": False, "window_rows": (10,)}
    ]  # the source window's row count sizes the extraction plan
    assert world.writes == [("pending", "t", "2024-01-01 09:55:00"), ("done", "t", 4, "2024-01-01 11:00:00")]
    assert (result.rows, result.watermark, result.details["lower_bound"]) == (
        4,
        "2024-01-01 11:00:00",
        "2024-01-01 09:55:00",
    )


def test_an_unfinished_load_is_read_again_from_its_pending_bound(world: World) -> None:
    world.state = TableState(pending=True, pending_from="2024-01-01 08:00:00", last_success=None, last_watermark=None)
    world.target_window = (0, None, 0)
    _result, transfer = run_incremental(world)
    assert transfer.loads[0]["lower"] == "2024-01-01 08:00:00"


def test_an_unfinished_load_with_nothing_left_is_marked_done(world: World) -> None:
    world.state = TableState(pending=True, pending_from="2024-01-01 08:00:00", last_success=None, last_watermark=None)
    result, transfer = run_incremental(world)
    assert result.skipped and transfer.loads == []
    assert world.writes == [("done", "t", 0, "2024-01-01 10:00:00")]


def test_an_empty_target_loads_every_row_straight_in(world: World) -> None:
    world.watermark, world.target_has_rows = (None, None), False
    _result, transfer = run_incremental(world)
    assert transfer.loads == [{"table": "t", "lower": None, "into_empty": True, "window_rows": (None,)}]
    assert transfer.created == [False]  # an empty table it did not create: indexes stay during the load
    assert world.writes[0] == ("pending", "t", None)


def test_the_first_load_of_a_table_this_attempt_created_says_so(world: World) -> None:
    """The transfer then builds the table's secondary indexes after the load (deferred_indexes)."""
    world.watermark, world.target_has_rows = (None, None), False
    _result, transfer = run_incremental(world, created=True)
    assert transfer.created == [True]


def test_a_new_column_re_reads_the_whole_table_as_an_upsert(world: World) -> None:
    _result, transfer = run_incremental(world, backfill=True)
    assert transfer.loads == [{"table": "t", "lower": None, "into_empty": False, "window_rows": (None,)}]


def test_a_difference_left_after_a_load_is_not_read_again_until_a_side_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.target_window = (11, "2024-01-01 10:00:00", 7)  # a row the source deleted, kept by deletes: ignore
    monkeypatch.setattr(
        incremental,
        "window_fingerprint",
        lambda conn, *_args: (
            world.source_window if conn is world.source else world.target_window  # type: ignore[attr-defined]
        ),
    )
    # No target row in the window moved back out of it in the source: nothing to re-copy.
    monkeypatch.setattr(incremental, "window_keys", lambda *_args: set())
    monkeypatch.setattr(incremental, "keys_in", lambda *_args: set())
    strategy = IncrementalStrategy(make_context(), FakeTransfer())  # type: ignore[arg-type]
    first = strategy.run(SPEC, "direct", world.source, world.target, DEFINITION, False)  # type: ignore[attr-defined]
    assert not first.skipped  # loaded: the target still differs afterwards (settled)
    second = strategy.run(SPEC, "direct", world.source, world.target, DEFINITION, False)  # type: ignore[attr-defined]
    assert second.skipped  # the same known difference: no second load
    world.source_window = (12, "2024-01-01 10:00:00", 8)  # the source changed
    third = strategy.run(SPEC, "direct", world.source, world.target, DEFINITION, False)  # type: ignore[attr-defined]
    assert not third.skipped


def test_missing_modifier_column_is_a_schema_error(world: World) -> None:
    strategy = IncrementalStrategy(make_context(), FakeTransfer())  # type: ignore[arg-type]
    spec = TableSpec("t", ("id",), modifier="nope")
    with pytest.raises(SchemaError, match="modifier column 'nope'"):
        strategy.run(spec, "direct", world.source, world.target, DEFINITION, False)  # type: ignore[attr-defined]
