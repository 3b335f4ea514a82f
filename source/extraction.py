"""Reads changed rows from the source as Arrow tables through dlt's ``sql_table`` resource.

The query is the exact projection of ``data_processing.select_list`` filtered on the modifier
(``>=`` the lower bound computed from the target), so dlt keeps no per-row cursor state. The
backend is connectorx (Rust, ~10x faster than building Arrow from pymysql rows) when it can read
the table exactly, else pyarrow over the pinned-UTC SQLAlchemy connection.

:func:`prefetch` runs an extraction in a background thread so the next chunk is read while the
current one is written to the target (connectorx, pyarrow kernels and socket I/O release the GIL).
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Literal, TypeVar

import pyarrow as pa
import sqlalchemy as sa

from config import Settings
from data_processing import select_list
from database import Engines, connectorx_url
from database import quote_identifier as q
from schema_management import Column, TableDefinition

logger = logging.getLogger("dlt_sync.extraction")

Backend = Literal["connectorx", "pyarrow"]
T = TypeVar("T")
HANDOVER_POLL_SECONDS = 0.1


def choose_backend(settings: Settings, source_def: TableDefinition, modifier: str | None) -> Backend:
    """connectorx unless configured off, unavailable, TLS is needed, or a time zone could matter.

    connectorx opens its own connections without our session settings, so a filter on a
    TIMESTAMP modifier (interpreted in the session time zone) must run over pyarrow instead.
    """
    if settings.extract_backend != "auto":
        return settings.extract_backend  # type: ignore[return-value]
    if importlib.util.find_spec("connectorx") is None or settings.source.uses_tls:
        return "pyarrow"
    if modifier:
        col = source_def.column(modifier)
        if col is not None and col.data_type == "timestamp":
            return "pyarrow"
    return "connectorx"


def build_query(table: str, columns: Sequence[Column], modifier: str | None, lower_bound: str | None) -> sa.TextClause:
    """``SELECT <exact projection> FROM table [WHERE modifier >= :lower_bound]``."""
    sql = f"SELECT {select_list(columns)} FROM {q(table)}"
    if modifier and lower_bound is not None:
        return sa.text(sql + f" WHERE {q(modifier)} >= :lower_bound").bindparams(lower_bound=lower_bound)
    return sa.text(sql)


def extract(
    engines: Engines,
    settings: Settings,
    source_def: TableDefinition,
    modifier: str | None,
    lower_bound: str | None,
    chunk_size: int,
    backend: Backend,
) -> Iterator[pa.Table]:
    """Yield the selected rows of the table as Arrow tables of at most ``chunk_size`` rows."""
    from dlt.sources.sql_database import sql_table

    query = build_query(source_def.name, source_def.columns, modifier, lower_bound)

    def adapt(_query: Any, _table: Any, *_args: Any) -> sa.TextClause:
        return query

    backend_kwargs: dict[str, Any] = {}
    if backend == "connectorx":
        backend_kwargs = {"conn": connectorx_url(settings.source), "return_type": "arrow_stream", "batch_size": chunk_size}
    resource = sql_table(
        credentials=engines.source,
        table=source_def.name,
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
        for item in resource:
            if isinstance(item, pa.Table):
                yield item
            elif isinstance(item, pa.RecordBatch):
                yield pa.Table.from_batches([item])
            else:  # pragma: no cover - other backends are never configured here
                raise TypeError(f"unexpected extraction item {type(item).__name__}")


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
        try:
            for item in iterator:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed over and re-raised in the consumer
            self._put(_Failed(exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator: release its cursor and files in this thread
        self._put(_DONE)

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
