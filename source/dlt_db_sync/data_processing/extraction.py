"""Reads changed rows from the source as Arrow tables through dlt's ``sql_table`` resource.

The query is the exact projection of ``data_processing.select_list`` filtered on the modifier
(``>=`` the lower bound computed from the target), so dlt keeps no per-row cursor state. The
backend is connectorx (Rust, ~10x faster than building Arrow from pymysql rows) when it can read
the table exactly, else pyarrow over the pinned-UTC SQLAlchemy connection.

:func:`prefetch` runs an extraction in a background thread so the next chunk is read while the
current one is written to the target (connectorx, pyarrow kernels and socket I/O release the GIL).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar

import pyarrow as pa
import sqlalchemy as sa

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.data_processing.codec import select_list
from dlt_db_sync.database.engines import Engines, connectorx_url
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.error_handling.errors import ExtractionBackendError
from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.extraction")

Backend = Literal["connectorx", "pyarrow"]
T = TypeVar("T")
P = ParamSpec("P")
HANDOVER_POLL_SECONDS = 0.1


def choose_backend(settings: Settings, source_def: TableDefinition, modifier: str | None) -> Backend:
    """connectorx unless configured off, unavailable, TLS is needed, or a time zone could matter.

    connectorx opens its own connections without our session settings, so a filter on a
    TIMESTAMP modifier (interpreted in the session time zone) must run over pyarrow instead.
    """
    if settings.extract_backend != "auto":
        return settings.extract_backend
    if importlib.util.find_spec("connectorx") is None or settings.source.uses_tls:
        return "pyarrow"
    if modifier:
        col = source_def.column(modifier)
        if col is not None and col.data_type == "timestamp":
            return "pyarrow"
    return "connectorx"


INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})


@dataclass(frozen=True)
class Paging:
    """Read in pages of ``rows`` rows ordered by the single integer key column ``key``.

    Each page is its own query (``key > last ORDER BY key LIMIT rows``), so a reader that cannot
    keep up holds at most one page in connectorx's buffers instead of the whole result.
    """

    key: str
    rows: int


def pageable_key(source_def: TableDefinition, primary_key: Sequence[str]) -> str | None:
    """The key column to page by: a single-column integer primary key, else None."""
    if len(primary_key) != 1:
        return None
    col = source_def.column(primary_key[0])
    return col.name if col is not None and col.data_type in INTEGER_TYPES else None


def build_query(
    table: str,
    columns: Sequence[Column],
    modifier: str | None,
    lower_bound: str | None,
    paging: Paging | None = None,
    after: int | None = None,
) -> sa.TextClause:
    """``SELECT <exact projection> FROM table [WHERE modifier >= :lower_bound]`` (one page of it with ``paging``)."""
    sql = f"SELECT {select_list(columns)} FROM {q(table)}"
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if modifier and lower_bound is not None:
        conditions.append(f"{q(modifier)} >= :lower_bound")
        params["lower_bound"] = lower_bound
    if paging is not None and after is not None:
        conditions.append(f"{q(table)}.{q(paging.key)} > :after")
        params["after"] = int(after)  # an integer literal: exact for any BIGINT UNSIGNED
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if paging is not None:
        # Qualified: the bare name would be the projection's text alias, ordering '10' before '9'.
        sql += f" ORDER BY {q(table)}.{q(paging.key)} LIMIT {int(paging.rows)}"
    return sa.text(sql).bindparams(**params) if params else sa.text(sql)


def preload_extraction_libraries() -> None:
    """Import pandas and dlt's ``sql_table`` resource in the calling thread (once per process).

    dlt and pyarrow import pandas lazily, and dlt's check for DataFrames failed with "partially
    initialized module 'pandas'" while a worker thread was importing it, so both are imported
    before any extraction thread starts. Not at module import: together they cost about a second
    that ``--help``, ``--check`` and idle cycles (nothing to extract) never need.
    """
    import dlt.sources.sql_database  # noqa: F401
    import pandas  # noqa: F401


def _preloaded_first(generator: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """``generator`` that imports the extraction libraries when called, not when first iterated.

    Call the result in the main thread (the rows may then be read in another): dlt and pandas
    must not be imported for the first time in a worker thread (see :func:`preload_extraction_libraries`).
    ``__wrapped__`` is the plain generator (unit tests iterate it with fakes).
    """

    @functools.wraps(generator)
    def call(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        preload_extraction_libraries()
        return generator(*args, **kwargs)

    return call


@_preloaded_first
def extract(
    engines: Engines,
    settings: Settings,
    source_def: TableDefinition,
    modifier: str | None,
    lower_bound: str | None,
    chunk_size: int,
    backend: Backend,
    paging: Paging | None = None,
) -> Iterator[pa.Table]:
    """Yield the selected rows of the table as Arrow tables of at most ``chunk_size`` rows
    (by pages of ``paging`` when given)."""
    if paging is None:
        yield from _read(
            engines,
            settings,
            build_query(source_def.name, source_def.loaded_columns, modifier, lower_bound),
            source_def.name,
            chunk_size,
            backend,
        )
        return
    after: int | None = None
    while True:
        query = build_query(source_def.name, source_def.loaded_columns, modifier, lower_bound, paging, after)
        rows = 0
        for table in _read(engines, settings, query, source_def.name, chunk_size, backend):
            if table.num_rows:
                rows += table.num_rows
                after = int(table.column(paging.key)[-1].as_py())
            yield table
        if rows < paging.rows:
            return


def _read(
    engines: Engines, settings: Settings, query: sa.TextClause, table: str, chunk_size: int, backend: Backend
) -> Iterator[pa.Table]:
    """Run ``query`` through dlt's ``sql_table`` resource; yield its Arrow tables.

    Runs in :func:`prefetch`'s worker thread, after :func:`extract` preloaded dlt and pandas.
    """
    from dlt.sources.sql_database import sql_table  # already imported by preload_extraction_libraries

    def adapt(_query: Any, _table: Any, *_args: Any) -> sa.TextClause:
        return query

    backend_kwargs: dict[str, Any] = {}
    if backend == "connectorx":
        backend_kwargs = {
            "conn": connectorx_url(settings.source),
            "return_type": "arrow_stream",
            "batch_size": chunk_size,
        }
    resource = sql_table(
        credentials=engines.source,
        table=table,
        backend=backend,
        chunk_size=chunk_size,
        reflection_level="minimal",
        defer_table_reflect=True,
        query_adapter_callback=adapt,
        backend_kwargs=backend_kwargs,
    )
    with warnings.catch_warnings():
        # SQLAlchemy does not know GEOMETRY; the projection reads it as bytes anyway.
        warnings.simplefilter("ignore", category=sa.exc.SAWarning)
        try:
            for item in resource:
                if isinstance(item, pa.Table):
                    yield item
                elif isinstance(item, pa.RecordBatch):
                    yield pa.Table.from_batches([item])
                else:  # pragma: no cover - other backends are never configured here
                    raise TypeError(f"unexpected extraction item {type(item).__name__}")
        except BaseException as exc:
            # A Rust panic in connectorx surfaces as pyo3's PanicException, a BaseException that no
            # ``except Exception`` stops: it would end the daemon. It is the backend failing, not
            # the data, so it becomes an error the caller can answer by reading with pyarrow.
            if type(exc).__name__ == "PanicException":
                raise ExtractionBackendError(f"{backend} failed reading {table}: {str(exc)[:300]}") from exc
            raise


M_ARENA_MAX = -8  # glibc's mallopt() parameter number for the arena limit


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process, as ``MALLOC_ARENA_MAX`` would; True when applied.

    connectorx allocates Arrow buffers in its own threads and Python frees them in another, so
    with glibc's default (8 arenas per core) freed memory stays scattered over arenas and the
    resident size creeps up query after query (measured: 12 pages of 200,000 rows, +240 MB;
    with 2 arenas flat). An operator's own ``MALLOC_ARENA_MAX`` wins; other C libraries are left alone.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


class _Failed:
    """An exception raised by the producer thread, handed to the consumer to re-raise."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class _Prefetcher(Generic[T]):
    """Iterates ``items`` in a worker thread and hands the items over through a queue."""

    def __init__(self, items: Iterable[T], depth: int | None, name: str) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth or 0)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=HANDOVER_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = iter(self._items)
        failure: BaseException | None = None
        try:
            for item in iterator:
                if not self._put(item):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed over and re-raised in the consumer
            failure = exc
        try:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator: release its cursor and files in this thread
        except BaseException as exc:  # noqa: BLE001 - handed over like any other failure
            if failure is None and not self._cancel.is_set():
                failure = exc
            else:  # the consumer is gone or has an earlier error: say what happened, do not hide it
                logger.warning(
                    "%s: closing the extraction failed: %s",
                    self._thread.name,
                    exc,
                    extra=log_fields("EXTRACTION", "CLEANUP"),
                )
        if not self._cancel.is_set():
            self._put(_DONE if failure is None else _Failed(failure))

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=HANDOVER_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"{self._thread.name}: producer thread ended without a result") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def close(self) -> None:
        """Stop the producer after its current item and wait for it."""
        self._cancel.set()
        self._thread.join()


@contextmanager
def prefetch(items: Iterable[T], depth: int | None, name: str) -> Iterator[Iterator[T]]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead (None: unbounded).

    The producer's exceptions are re-raised by the consumer unchanged (so a caller can still tell
    an extraction error from a load error); leaving the block stops and joins the producer.
    """
    prefetcher = _Prefetcher(items, depth, name)
    try:
        yield iter(prefetcher)
    finally:
        prefetcher.close()
