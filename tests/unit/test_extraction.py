"""data_processing/extraction.py without a database: the backend choice, the query and its paging
plan, and a connectorx panic turned into an error the syncer can answer (fake dlt resource)."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from dlt_db_sync.config.settings import Settings, load_settings
from dlt_db_sync.data_processing import extraction
from dlt_db_sync.data_processing.extraction import (
    Paging,
    build_query,
    choose_backend,
    pageable_key,
)
from dlt_db_sync.error_handling.errors import ExtractionBackendError
from dlt_db_sync.schema_management.model import Column, TableDefinition

BASE_ENV = {"SOURCE_DB_NAME": "src", "TARGET_DB_NAME": "tgt"}


def settings_from(**env: str) -> Settings:
    return load_settings({**BASE_ENV, **env}, dotenv_path=None)


def col(name: str, data_type: str, generated: bool = False) -> Column:
    return Column(name, data_type, data_type, True, None, None, generated)


ORDERS = TableDefinition(
    "orders",
    [col("id", "bigint"), col("code", "varchar"), col("updated_at", "datetime"), col("stamp", "timestamp")],
    "CREATE TABLE orders (...)",
)


# ----------------------------------------------------------------------------- backend choice
@pytest.fixture
def connectorx_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        extraction.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "connectorx" else real(name, *a),
    )


def test_auto_prefers_connectorx(connectorx_installed: None) -> None:
    assert choose_backend(settings_from(), ORDERS, "updated_at") == "connectorx"
    assert choose_backend(settings_from(), ORDERS, None) == "connectorx"


def test_auto_reads_a_timestamp_filter_over_pyarrow(connectorx_installed: None) -> None:
    # connectorx's own sessions do not pin time_zone: a TIMESTAMP comparison could shift.
    assert choose_backend(settings_from(), ORDERS, "stamp") == "pyarrow"


def test_auto_with_tls_is_pyarrow(connectorx_installed: None, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert choose_backend(settings_from(SOURCE_DB_SSL_CA=str(ca)), ORDERS, "updated_at") == "pyarrow"


def test_auto_without_connectorx_is_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extraction.importlib.util, "find_spec", lambda name, *a: None)
    assert choose_backend(settings_from(), ORDERS, "updated_at") == "pyarrow"


def test_configured_backend_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extraction.importlib.util, "find_spec", lambda name, *a: None)
    assert choose_backend(settings_from(EXTRACT_BACKEND="connectorx"), ORDERS, "stamp") == "connectorx"
    assert choose_backend(settings_from(EXTRACT_BACKEND="pyarrow"), ORDERS, None) == "pyarrow"


# ----------------------------------------------------------------------------- paging plan
def test_only_a_single_integer_key_is_pageable() -> None:
    assert pageable_key(ORDERS, ["ID"]) == "id"  # the column's own spelling
    assert pageable_key(ORDERS, ["code"]) is None
    assert pageable_key(ORDERS, ["id", "code"]) is None
    assert pageable_key(ORDERS, ["missing"]) is None


def test_query_without_filter_or_paging() -> None:
    query = build_query("orders", ORDERS.columns[:2], None, None)
    assert isinstance(query, sa.TextClause) and not query._bindparams  # noqa: SLF001
    assert str(query).startswith("SELECT ") and str(query).endswith(" FROM `orders`")


def test_query_filters_on_the_modifier_and_pages_on_the_qualified_key() -> None:
    paging = Paging("id", 500)
    first = build_query("orders", ORDERS.columns, "updated_at", "2024-01-01 00:00:00", paging)
    text = str(first)
    assert text.endswith(" FROM `orders` WHERE `updated_at` >= :lower_bound ORDER BY `orders`.`id` LIMIT 500")
    assert first.compile().params == {"lower_bound": "2024-01-01 00:00:00"}
    later = build_query("orders", ORDERS.columns, None, None, paging, after=18446744073709551615)
    assert str(later).endswith(" WHERE `orders`.`id` > :after ORDER BY `orders`.`id` LIMIT 500")
    assert later.compile().params == {"after": 18446744073709551615}  # exact for BIGINT UNSIGNED


def pages(*sizes: int, start: int = 1) -> list[pa.Table]:
    out, first = [], start
    for size in sizes:
        out.append(pa.table({"id": pa.array(range(first, first + size), pa.int64())}))
        first += size
    return out


def test_paging_reads_page_after_page_until_a_short_one(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([pages(2, 1), pages(3, start=4), pages(1, start=7)])  # 3 rows, 3 rows, then 1 < 3
    queries: list[Any] = []

    def fake_read(_engines: Any, _settings: Any, query: sa.TextClause, table: str, *_rest: Any) -> Iterator[pa.Table]:
        queries.append(query.compile().params)
        yield from next(answers)

    monkeypatch.setattr(extraction, "_read", fake_read)
    tables = list(
        extraction.extract.__wrapped__(None, settings_from(), ORDERS, None, None, 2, "pyarrow", Paging("id", 3))  # type: ignore[arg-type]
    )
    assert [t.num_rows for t in tables] == [2, 1, 3, 1]
    assert queries == [{}, {"after": 3}, {"after": 6}]  # each page starts after the last key read


def test_paging_stops_after_an_empty_page(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([pages(3), [pa.table({"id": pa.array([], pa.int64())})]])
    monkeypatch.setattr(extraction, "_read", lambda *_args: iter(next(answers)))
    tables = list(
        extraction.extract.__wrapped__(None, settings_from(), ORDERS, None, None, 10, "pyarrow", Paging("id", 3))
    )  # type: ignore[arg-type]
    assert [t.num_rows for t in tables] == [3, 0]


def test_without_paging_one_query_reads_only_loaded_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    definition = TableDefinition("t", [col("id", "int"), col("total", "int", generated=True)], "")
    seen: list[str] = []
    monkeypatch.setattr(extraction, "_read", lambda _e, _s, query, *_rest: seen.append(str(query)) or iter(pages(5)))
    assert [
        t.num_rows for t in extraction.extract.__wrapped__(None, settings_from(), definition, None, None, 10, "pyarrow")
    ] == [5]  # type: ignore[arg-type]
    assert len(seen) == 1 and "`total`" not in seen[0]  # generated columns are computed by the target


# ----------------------------------------------------------------------------- the dlt resource (faked)
class PanicException(BaseException):  # noqa: N818 - pyo3's name, matched by name
    """Stands in for pyo3's PanicException (a BaseException) raised by connectorx."""


@pytest.fixture
def fake_sql_table(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces ``dlt.sources.sql_database.sql_table``; the test sets ``items`` (a failure: raised)."""
    calls: dict[str, Any] = {"items": []}

    def sql_table(**kwargs: Any) -> Iterator[Any]:
        calls.update(kwargs)
        for item in calls["items"]:
            if isinstance(item, BaseException):
                raise item
            yield item

    module = types.ModuleType("dlt.sources.sql_database")
    module.sql_table = sql_table  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dlt.sources.sql_database", module)
    return calls


def read(backend: Any, chunk_size: int = 100) -> list[pa.Table]:
    settings = settings_from(SOURCE_DB_PASS="s3cret")
    engines = types.SimpleNamespace(source="engine")
    return list(extraction._read(engines, settings, sa.text("SELECT 1"), "orders", chunk_size, backend))  # type: ignore[arg-type]


def test_a_connectorx_panic_becomes_an_extraction_backend_error(fake_sql_table: dict[str, Any]) -> None:
    panic = PanicException("called `Option::unwrap()` on a `None` value " + "x" * 1000)
    fake_sql_table["items"] = [pages(2)[0], panic]
    with pytest.raises(ExtractionBackendError) as caught:
        read("connectorx")
    assert str(caught.value).startswith("connectorx failed reading orders: called `Option::unwrap()`")
    assert len(str(caught.value)) < 400 and caught.value.__cause__ is panic
    # An ordinary Exception subclass: the syncer's `except` clauses can catch it and retry with pyarrow.
    assert isinstance(caught.value, Exception)


def test_other_failures_pass_unchanged(fake_sql_table: dict[str, Any]) -> None:
    interrupt = KeyboardInterrupt()
    fake_sql_table["items"] = [interrupt]
    with pytest.raises(KeyboardInterrupt) as caught:
        read("pyarrow")
    assert caught.value is interrupt


def test_resource_arguments_per_backend(fake_sql_table: dict[str, Any]) -> None:
    batch = pa.record_batch({"id": pa.array([1, 2], pa.int64())})
    fake_sql_table["items"] = [batch]
    tables = read("connectorx", chunk_size=7)
    assert [t.num_rows for t in tables] == [2] and isinstance(tables[0], pa.Table)  # batches become tables
    kwargs = fake_sql_table["backend_kwargs"]
    assert kwargs["return_type"] == "arrow_stream" and kwargs["batch_size"] == 7
    assert kwargs["conn"].startswith("mysql://root:s3cret@127.0.0.1:3306/src")
    assert fake_sql_table["backend"] == "connectorx" and fake_sql_table["chunk_size"] == 7
    assert fake_sql_table["reflection_level"] == "minimal" and fake_sql_table["defer_table_reflect"]
    assert str(fake_sql_table["query_adapter_callback"](None, None)) == "SELECT 1"  # our query, not dlt's
    fake_sql_table["items"] = []
    read("pyarrow")
    assert fake_sql_table["backend_kwargs"] == {} and fake_sql_table["credentials"] == "engine"
