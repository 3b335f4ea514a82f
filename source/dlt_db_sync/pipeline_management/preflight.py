"""``--check``: validate configuration and connectivity, print what each server is (flavor,
version, sql_mode, local_infile ...) and what a cycle would do per table (strategy, mode,
extraction backend, key, modifier and current watermark), touching nothing."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.data_processing.extraction import choose_backend
from dlt_db_sync.database.engines import Engines, check_connectivity
from dlt_db_sync.database.server_info import check_supported, read_server_info
from dlt_db_sync.error_handling.errors import ConfigError, SchemaError, describe_error
from dlt_db_sync.index_management import check_merge_key
from dlt_db_sync.pipeline_management.change_detection import target_watermark
from dlt_db_sync.pipeline_management.context import table_mode
from dlt_db_sync.schema_management.tables import describe_table, table_exists


def table_plan(engines: Engines, settings: Settings, spec: TableSpec) -> dict[str, Any]:
    """What a cycle would do for ``spec``; raises SchemaError when the table cannot be synced."""
    plan: dict[str, Any] = {
        "table": spec.table,
        "strategy": spec.strategy,
        "mode": table_mode(spec, settings),
        "primary_key": list(spec.primary_key),
        "modifier": spec.modifier,
        "watermark": None,
    }
    with engines.source.connect() as source, engines.target.connect() as target:
        if not table_exists(source, spec.table):
            raise SchemaError(f"table {spec.table!r} does not exist in the source database")
        source_def = describe_table(source, spec.table)
        check_merge_key(source, spec.table, spec.primary_key)
        plan["backend"] = choose_backend(settings, source_def, spec.modifier)
        plan["target_exists"] = table_exists(target, spec.table)
        if spec.strategy == "binlog":
            from dlt_db_sync.database.sync_state import read_state

            state = read_state(target, spec.table) if table_exists(target, "_dlt_sync_state") else None
            plan["watermark"] = state.last_watermark if state is not None and not state.pending else None
        elif spec.modifier:
            col = source_def.column(spec.modifier)
            if col is None:
                raise SchemaError(
                    f"table {spec.table!r}: modifier column {spec.modifier!r} does not exist in the source"
                )
            if plan["target_exists"]:
                plan["watermark"] = target_watermark(
                    target,
                    spec.table,
                    spec.modifier,
                    col.data_type,
                    settings.lookback_seconds,
                    settings.lookback_versions,
                )[1]
    return plan


def check_binlog(engines: Engines, settings: Settings) -> int:
    """Print what binlog capture needs and the source lacks; 1 when a binlog table cannot be synced."""
    from dlt_db_sync.database.binlog_reader import check_binlog_source

    with engines.source.connect() as conn:
        check = check_binlog_source(conn, settings)
    for warning in check.warnings:
        print(f"binlog: WARNING: {warning}")
    if not check.problems:
        print(f"binlog: OK (server_id {settings.binlog_server_id} for the reader)")
        return 0
    for problem in check.problems:
        print(f"binlog: ERROR: {problem}")
    if settings.binlog_fallback == "incremental":
        print("binlog: BINLOG_FALLBACK=incremental: the binlog tables are synced by cursor instead")
        return 0
    return 1


def run_check(
    engines: Engines, settings: Settings, specs: Sequence[TableSpec], stop: threading.Event | None = None
) -> int:
    """Print the per-table plan; 0 when every table can be synced, 1 otherwise (also when ``stop``
    is set before every table was checked)."""
    code = 0
    check_connectivity(engines)
    for role, engine in (("source", engines.source), ("target", engines.target)):
        with engine.connect() as conn:
            info = read_server_info(conn, role)
        try:
            check_supported(info)
        except ConfigError as exc:
            print(f"{role} server: ERROR: {exc}")
            code = 1
            continue
        print(f"{role} server: {info.describe()}")
    if any(spec.strategy == "binlog" for spec in specs):
        code = max(code, check_binlog(engines, settings))
    print(f"{'table':<32} {'strategy':<13} {'mode':<13} {'backend':<11} {'key':<28} {'modifier':<16} watermark")
    for spec in specs:
        if stop is not None and stop.is_set():
            print("interrupted: not every table was checked")
            return 1
        try:
            plan = table_plan(engines, settings, spec)
        except Exception as exc:  # noqa: BLE001 - reported per table, the others are still checked
            print(f"{spec.table:<32} ERROR: {describe_error(exc)}")
            code = 1
            continue
        print(
            f"{plan['table']:<32} {plan['strategy']:<13} {plan['mode']:<13} {plan['backend']:<11} "
            f"{','.join(plan['primary_key']):<28} {plan['modifier'] or '-':<16} {plan['watermark'] or '-'}"
        )
    return code
