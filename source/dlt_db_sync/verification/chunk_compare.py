"""Chunked checksum comparison of one table between the source and the target.

The walk follows pt-table-sync's Chunk algorithm. The key (possibly composite, possibly a string
or ``BINARY(16)``) is cut into buckets ``lower < key <= upper`` of ``BUCKET_ROWS`` source rows
by keyset pagination (``... WHERE key > last ORDER BY key LIMIT BUCKET_ROWS - 1, 1``, an
index-only read). Both servers then answer, per bucket, ``COUNT(*)`` and the ``BIT_XOR`` of a
per-row hash (CRC32 of the SHA1) over every column in its exact form, or over the key alone for
delete detection. One ``UNION ALL`` statement covers many buckets, sized so it takes about
``time_budget`` seconds; the two servers work concurrently while the next edges are read.
Only differing buckets go further: split into ``GROUPS`` groups by a hash of the key (aligned on
both sides, one statement for many buckets), and only the rows of differing groups are fetched
as (key, row hash) and diffed. A bucket much fuller on one side (a gap) is first re-cut into
buckets of that side.

Range predicates are written as expanded lexicographic comparisons
(``k1 > ? OR (k1 = ? AND k2 > ?)``), which MariaDB's range optimizer turns into index ranges;
the row-value form ``(k1, k2) > (?, ?)`` would scan the whole index. Every statement is a
single ``SELECT`` (the edge walk runs in autocommit, the rest on connections returned after one
statement): nothing is written, no temporary table is created and no transaction outlives one
statement on either server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from sqlalchemy.engine import Connection, Engine

from dlt_db_sync.database.dialect import double_expression
from dlt_db_sync.database.engines import Engines, quote_identifier
from dlt_db_sync.error_handling.errors import ShutdownRequested
from dlt_db_sync.index_management import index_columns, merge_key_index
from dlt_db_sync.schema_management.model import Column, TableDefinition
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.chunk_compare")

CompareMode = Literal["rows", "keys"]
Role = Literal["source", "target"]
Key = tuple[Any, ...]

T = TypeVar("T")

BUCKET_ROWS = 1_000  # source rows per compared key range (a "chunk" in reports)
MAX_BUCKETS_PER_QUERY = 250  # UNION ALL parts per statement (more parts cost more than they save)
GROUPS = 32  # key-hash groups a differing bucket is split into before rows are fetched
MAX_GROUPED_ROWS = 20_000  # a differing bucket with more rows on one side is re-cut first
SEPARATOR = "#"
# Types whose values can be long enough (up to 4 GB) that a string function building a copy of
# them hits max_allowed_packet: hashed through SHA1 of the value (see hash_form).
LONG_VALUE_TYPES = frozenset({"tinytext", "text", "mediumtext", "longtext", "json"})


def qi(name: str) -> str:
    """A quoted identifier safe inside a statement that also carries ``%s`` parameters."""
    return quote_identifier(name).replace("%", "%%")


# --------------------------------------------------------------------------- SQL building
def hash_form(col: Column, value: str | None = None) -> str:
    """``col`` (or the expression ``value`` standing for it) in an exact, server-independent text
    or byte form for hashing."""
    name = value or qi(col.name)
    if col.data_type == "bit":
        return f"CAST({name} AS UNSIGNED)"
    if col.data_type == "float":
        return double_expression(name)  # FLOAT's own text form rounds to ~6 digits
    if col.data_type == "timestamp":
        return f"UNIX_TIMESTAMP({name})"  # independent of any time zone
    if col.is_binary or col.data_type in LONG_VALUE_TYPES:
        # The SHA1 of the value itself, whatever its size: HEX() of a value over half of
        # max_allowed_packet returns NULL (warning 1301), and a NULL form would make every
        # change of a large BLOB or TEXT invisible. The digest is hex text, so raw bytes can
        # never contain the separator either.
        return f"SHA1({name})"
    if col.charset is not None and col.charset != "utf8mb4":
        return f"CAST({name} AS BINARY)"  # its own bytes, never a lossy conversion to utf8mb4
    return name


def row_hash_sql(columns: Sequence[Column], values: Mapping[str, str] | None = None) -> str:
    """A 32-bit row hash over ``columns``: CRC32 of the SHA1 of their forms and NULL markers.

    32 bits like pt-table-sync's CRC32, but not linear: XOR-ing plain CRC32s over a chunk cancels
    out whenever an even number of rows get the same change at the same offsets (an UPDATE of two
    rows alike), while SHA1 scrambles every change first. In MariaDB this costs 70 % of a 64-bit
    ``CONV(LEFT(SHA1(..), 16), 16, 10)`` and 40 % of the MD5 equivalent.

    ``values`` replaces a column (by name) with an expression: the value the target stores for it.
    """
    values = values or {}
    forms = [hash_form(c, values.get(c.name)) for c in columns]
    nullable = [c for c in columns if c.nullable]
    if nullable:
        # CONCAT_WS skips NULLs; the markers tell NULL apart from a missing or empty value.
        forms.append("CONCAT(" + ", ".join(f"ISNULL({values.get(c.name) or qi(c.name)})" for c in nullable) + ")")
    return f"CRC32(SHA1(CONCAT_WS('{SEPARATOR}', {', '.join(forms)})))"


def _lexicographic(key: Sequence[str], values: Key, strict: str, last: str) -> tuple[str, list[Any]]:
    """``key <op> values`` expanded so the range optimizer can use the key's index."""
    names = [qi(k) for k in key]
    sql = f"{names[-1]} {last} %s"
    params: list[Any] = [values[-1]]
    for name, value in zip(reversed(names[:-1]), reversed(values[:-1]), strict=True):
        sql = f"({name} {strict} %s OR ({name} = %s AND {sql}))"
        params = [value, value, *params]
    if len(names) > 1:
        # A redundant bound on the leading column keeps the range tight.
        sql = f"{names[0]} {'>=' if strict == '>' else '<='} %s AND {sql}"
        params = [values[0], *params]
    return sql, params


@dataclass(frozen=True)
class KeyRange:
    """The keys ``lower < key <= upper``; ``None`` leaves that side unbounded."""

    lower: Key | None = None
    upper: Key | None = None


def range_condition(key: Sequence[str], rng: KeyRange) -> tuple[str, list[Any]]:
    """WHERE condition (``1=1`` when unbounded) and its parameters for ``rng``."""
    parts: list[str] = []
    params: list[Any] = []
    if rng.lower is not None:
        sql, values = _lexicographic(key, rng.lower, ">", ">")
        parts.append(f"({sql})")
        params += values
    if rng.upper is not None:
        sql, values = _lexicographic(key, rng.upper, "<", "<=")
        parts.append(f"({sql})")
        params += values
    return (" AND ".join(parts) or "1=1"), params


def key_condition(key: Sequence[str], keys: Sequence[Key]) -> tuple[str, list[Any]]:
    """WHERE condition matching exactly ``keys`` (point lookups on the key's index)."""
    if len(key) == 1:
        return f"{qi(key[0])} IN ({', '.join(['%s'] * len(keys))})", [k[0] for k in keys]
    one = "(" + " AND ".join(f"{qi(k)} = %s" for k in key) + ")"
    return " OR ".join([one] * len(keys)), [v for k in keys for v in k]


def execute(conn: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """Run ``sql`` (written with ``%%`` escapes) with or without parameters."""
    if params:
        return conn.exec_driver_sql(sql, tuple(params))
    return conn.exec_driver_sql(sql.replace("%%", "%"))


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ChunkSums:
    """``COUNT(*)`` and ``BIT_XOR`` of the row hashes of one range on one server."""

    count: int
    checksum: int


@dataclass(frozen=True)
class ChunkResult:
    """One range compared on both servers."""

    key_range: KeyRange
    source: ChunkSums
    target: ChunkSums

    @property
    def differs(self) -> bool:
        return (self.source.count, self.source.checksum) != (self.target.count, self.target.checksum)


@dataclass
class Differences:
    """Keys of the rows that differ: only in the source, only in the target, or changed."""

    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    changed: list[Key] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.changed)

    def sort(self) -> None:
        """Order every list by key (for stable reports)."""
        for keys in (self.missing, self.extra, self.changed):
            try:
                keys.sort()
            except TypeError:  # mixed types in one key position (zero dates come back as text)
                keys.sort(key=repr)


@dataclass(frozen=True)
class CompareSpec:
    """What to compare: the table, its key in index order, the hashed columns and index hints."""

    table: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    mode: CompareMode
    source_index: str | None
    target_index: str | None

    @property
    def key_columns(self) -> tuple[Column, ...]:
        by_name = {c.name.lower(): c for c in self.columns}
        return tuple(by_name[k.lower()] for k in self.key)


def _matching_index(conn: Connection, table: str, wanted: Sequence[str], ordered: bool) -> tuple[str, list[str]] | None:
    for name, (unique, columns) in index_columns(conn, table).items():
        if not unique:
            continue
        lowered = [c.lower() for c in columns]
        if (
            (lowered == [w.lower() for w in wanted])
            if ordered
            else (sorted(lowered) == sorted(w.lower() for w in wanted))
        ):
            return name, columns
    return None


def build_spec(
    source: Connection, target: Connection, source_def: TableDefinition, key: Sequence[str], mode: CompareMode
) -> CompareSpec:
    """The comparison of ``source_def`` on ``key``: key columns in the order of its unique index.

    Raises:
        SchemaError: ``key`` is not a primary or unique key of the source table.
    """
    merge_index = merge_key_index(source, source_def.name, key)  # refuses NULL-able keys too
    index, ordered_key = merge_index.name, [part.column for part in merge_index.parts]
    target_found = _matching_index(target, source_def.name, ordered_key, ordered=True)
    key_set = {k.lower() for k in ordered_key}
    columns = tuple(c for c in source_def.columns if mode == "rows" or c.name.lower() in key_set)
    return CompareSpec(
        source_def.name, tuple(ordered_key), columns, mode, index, target_found[0] if target_found else None
    )


# --------------------------------------------------------------------------- comparison
def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TableComparer:
    """Compares one table bucket by bucket; use as a context manager (it owns a thread pool).

    The scan reads the edges of the next ``buckets_per_query`` buckets on the source, then sends
    each server one ``UNION ALL`` statement with a ``COUNT(*)``/``BIT_XOR`` part per bucket;
    ``parallel`` such statements are in flight per server while the next edges are read.
    ``buckets_per_query`` follows the time budget.
    """

    def __init__(
        self,
        engines: Engines,
        spec: CompareSpec,
        stop_event: threading.Event,
        *,
        time_budget: float = 0.5,
        parallel: int = 2,
        initial_buckets: int = 16,
    ) -> None:
        self.engines = engines
        self.spec = spec
        self.stop_event = stop_event
        self.time_budget = time_budget
        self.parallel = max(1, parallel)
        self.buckets_per_query = min(max(1, initial_buckets), MAX_BUCKETS_PER_QUERY)
        self._pool = ThreadPoolExecutor(max_workers=2 * self.parallel, thread_name_prefix=f"verify-{spec.table}")
        self._key_sql = ", ".join(qi(k) for k in spec.key)
        self._hash_sql = row_hash_sql(spec.columns)
        forms = ", ".join(hash_form(c) for c in spec.key_columns)
        self._group_sql = f"MOD(CRC32(CONCAT_WS('{SEPARATOR}', {forms})), {GROUPS})"
        self.queries = 0
        self._edge_connections: dict[Role, Connection] = {}

    def __enter__(self) -> TableComparer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._edge_connections.values():
            conn.close()

    # ---------------------------------------------------------------- queries
    def _engine(self, role: Role) -> Engine:
        return self.engines.source if role == "source" else self.engines.target

    def _from(self, role: Role) -> str:
        index = self.spec.source_index if role == "source" else self.spec.target_index
        hint = f" FORCE INDEX ({qi(index)})" if index else ""
        return f"{qi(self.spec.table)}{hint}"

    def _read(self, role: Role, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self.stop_event.is_set():
            raise ShutdownRequested(f"shutdown requested while comparing {self.spec.table}")
        self.queries += 1
        with self._engine(role).connect() as conn:  # one statement; returned (rolled back) at once
            return [tuple(r) for r in execute(conn, sql, params).fetchall()]

    def _pair(self, method: Callable[..., T], *args: Any) -> tuple[T, T]:
        """``method(role, *args)`` on the source and the target concurrently."""
        source = self._pool.submit(method, "source", *args)
        target = method("target", *args)
        return source.result(), target

    def _edge_connection(self, role: Role) -> Connection:
        """The walk's own connection per server, in autocommit: every statement its own snapshot."""
        conn = self._edge_connections.get(role)
        if conn is None:
            conn = self._engine(role).connect().execution_options(isolation_level="AUTOCOMMIT")
            self._edge_connections[role] = conn
        return conn

    def edges(self, role: Role, rng: KeyRange, buckets: int | None) -> tuple[list[Key], bool]:
        """The upper keys of the next ``buckets`` (None: all) buckets of ``BUCKET_ROWS`` rows in
        ``rng`` on ``role``, and whether ``rng`` ran out of rows (its rest is one last bucket).

        Keyset pagination, one cheap index-only statement per bucket
        (``WHERE key > last ORDER BY key LIMIT BUCKET_ROWS - 1, 1``) on one connection.
        """
        keys: list[Key] = []
        lower = rng.lower
        conn = self._edge_connection(role)
        while buckets is None or len(keys) < buckets:
            if self.stop_event.is_set():
                raise ShutdownRequested(f"shutdown requested while comparing {self.spec.table}")
            where, params = range_condition(self.spec.key, KeyRange(lower, rng.upper))
            self.queries += 1
            row = execute(
                conn,
                f"SELECT {self._key_sql} FROM {self._from(role)} WHERE {where} "
                f"ORDER BY {self._key_sql} LIMIT {BUCKET_ROWS - 1}, 1",
                params,
            ).first()
            if row is None:
                return keys, True
            lower = tuple(row)
            keys.append(lower)
        return keys, False

    def sums(self, role: Role, ranges: Sequence[KeyRange]) -> tuple[list[ChunkSums], float]:
        """COUNT(*) and BIT_XOR of the row hashes of every range on ``role`` (one statement)."""
        parts: list[str] = []
        params: list[Any] = []
        for i, rng in enumerate(ranges):
            where, values = range_condition(self.spec.key, rng)
            parts.append(f"SELECT {i}, COUNT(*), BIT_XOR({self._hash_sql}) FROM {self._from(role)} WHERE {where}")
            params += values
        started = time.monotonic()
        rows = self._read(role, " UNION ALL ".join(parts), params)
        found = [ChunkSums(0, 0)] * len(ranges)
        for row in rows:
            found[int(row[0])] = ChunkSums(int(row[1]), int(row[2] or 0))
        return found, time.monotonic() - started

    def group_sums(self, role: Role, ranges: Sequence[KeyRange]) -> dict[tuple[int, int], tuple[int, int]]:
        """(range index, key-hash group) -> (COUNT(*), BIT_XOR of row hashes) on ``role``."""
        parts: list[str] = []
        params: list[Any] = []
        for i, rng in enumerate(ranges):
            where, values = range_condition(self.spec.key, rng)
            parts.append(
                f"(SELECT {i}, {self._group_sql} AS _dlt_g, COUNT(*), BIT_XOR({self._hash_sql}) "
                f"FROM {self._from(role)} WHERE {where} GROUP BY _dlt_g)"
            )
            params += values
        return {
            (int(r[0]), int(r[1])): (int(r[2]), int(r[3] or 0))
            for r in self._read(role, " UNION ALL ".join(parts), params)
        }

    def row_hashes(self, role: Role, wanted: Sequence[tuple[KeyRange, Sequence[int]]]) -> dict[Key, int]:
        """Key -> row hash of the rows of the given key-hash groups of the given ranges on ``role``."""
        parts: list[str] = []
        params: list[Any] = []
        for rng, groups in wanted:
            where, values = range_condition(self.spec.key, rng)
            listed = ", ".join(str(int(g)) for g in groups)
            parts.append(
                f"SELECT {self._key_sql}, {self._hash_sql} FROM {self._from(role)} "
                f"WHERE {where} AND {self._group_sql} IN ({listed})"
            )
            params += values
        width = len(self.spec.key)
        return {r[:width]: int(r[width]) for r in self._read(role, " UNION ALL ".join(parts), params)}

    # ---------------------------------------------------------------- bucket walk
    @staticmethod
    def _ranges(rng: KeyRange, keys: Sequence[Key], complete: bool) -> list[KeyRange]:
        """Buckets ending at ``keys``; when ``complete`` the last one reaches ``rng.upper``."""
        ranges: list[KeyRange] = []
        lower = rng.lower
        for key in keys:
            ranges.append(KeyRange(lower, key))
            lower = key
        if complete:
            ranges = ranges[:-1] + [KeyRange(ranges[-1].lower, rng.upper)] if ranges else [rng]
        return ranges

    def _compare(self, ranges: Sequence[KeyRange]) -> list[ChunkResult]:
        results: list[ChunkResult] = []
        for batch in _batches(ranges, MAX_BUCKETS_PER_QUERY):
            (source, _s), (target, _t) = self._pair(self.sums, batch)
            results += [ChunkResult(r, s, t) for r, s, t in zip(batch, source, target, strict=True)]
        return results

    def scan(self) -> list[ChunkResult]:
        """Compare the whole key space bucket by bucket (bucket edges read on the source)."""
        results: list[ChunkResult] = []
        inflight: deque[tuple[list[KeyRange], Future[Any], Future[Any]]] = deque()
        lower: Key | None = None
        while True:
            keys, complete = self.edges("source", KeyRange(lower, None), self.buckets_per_query)
            ranges = self._ranges(KeyRange(lower, None), keys, complete)
            inflight.append(
                (ranges, self._pool.submit(self.sums, "source", ranges), self._pool.submit(self.sums, "target", ranges))
            )
            if len(inflight) >= self.parallel:
                self._collect(inflight.popleft(), results)
            if complete:
                break
            lower = keys[-1]
        while inflight:
            self._collect(inflight.popleft(), results)
        return results

    def _collect(self, item: tuple[list[KeyRange], Future[Any], Future[Any]], results: list[ChunkResult]) -> None:
        ranges, source_future, target_future = item
        (source, source_seconds), (target, target_seconds) = source_future.result(), target_future.result()
        results += [ChunkResult(r, s, t) for r, s, t in zip(ranges, source, target, strict=True)]
        rows = max(sum(s.count for s in source), sum(t.count for t in target), 1)
        self._adapt(rows, max(source_seconds, target_seconds))

    def _adapt(self, rows: int, seconds: float) -> None:
        """Size the next statements so one takes about ``time_budget`` on the slower server."""
        current = self.buckets_per_query
        wanted = rows * self.time_budget / max(seconds, 1e-3) / BUCKET_ROWS
        self.buckets_per_query = int(max(1, min(max(wanted, current / 4), current * 4, MAX_BUCKETS_PER_QUERY)))

    def compare_slice(self, lower: Key | None, buckets: int) -> tuple[list[ChunkResult], Key | None, bool]:
        """Compare the next ``buckets`` buckets after ``lower`` (the verification sweep's step):
        (chunk results, the key the next slice starts after, whether the key space ran out)."""
        keys, complete = self.edges("source", KeyRange(lower, None), max(1, buckets))
        chunks = self._compare(self._ranges(KeyRange(lower, None), keys, complete))
        return chunks, (keys[-1] if keys else lower), complete

    # ---------------------------------------------------------------- down to rows
    def resolve(self, chunks: Sequence[ChunkResult]) -> Differences:
        """The differing rows of the differing buckets among ``chunks``."""
        out = Differences()
        pending = [c for c in chunks if c.differs]
        while pending:
            wide = [c for c in pending if max(c.source.count, c.target.count) > MAX_GROUPED_ROWS]
            narrow = [c for c in pending if max(c.source.count, c.target.count) <= MAX_GROUPED_ROWS]
            for batch in _batches(narrow, MAX_BUCKETS_PER_QUERY):
                self._diff_groups(batch, out)
            pending = []
            for chunk in wide:  # a gap on one side: cut it into buckets of the fuller side first
                role: Role = "source" if chunk.source.count >= chunk.target.count else "target"
                keys, _complete = self.edges(role, chunk.key_range, None)
                ranges = self._ranges(chunk.key_range, keys, complete=True)
                if len(ranges) < 2:  # changed meanwhile: group it as it is
                    self._diff_groups([chunk], out)
                    continue
                pending += [c for c in self._compare(ranges) if c.differs]
        out.sort()
        return out

    def _diff_groups(self, chunks: Sequence[ChunkResult], out: Differences) -> None:
        ranges = [c.key_range for c in chunks]
        source_groups, target_groups = self._pair(self.group_sums, ranges)
        differing: dict[int, list[int]] = {}
        for index, group in sorted(set(source_groups) | set(target_groups)):
            if source_groups.get((index, group)) != target_groups.get((index, group)):
                differing.setdefault(index, []).append(group)
        if not differing:
            return
        wanted = [(ranges[i], groups) for i, groups in differing.items()]
        source_rows, target_rows = self._pair(self.row_hashes, wanted)
        for key, digest in source_rows.items():
            other = target_rows.get(key)
            if other is None:
                out.missing.append(key)
            elif other != digest:
                out.changed.append(key)
        out.extra.extend(k for k in target_rows if k not in source_rows)


@dataclass
class Comparison:
    """Outcome of comparing one table."""

    table: str
    mode: CompareMode
    chunks: list[ChunkResult]
    differences: Differences | None = None
    seconds: float = 0.0

    @property
    def source_rows(self) -> int:
        return sum(c.source.count for c in self.chunks)

    @property
    def target_rows(self) -> int:
        return sum(c.target.count for c in self.chunks)

    @property
    def differing_chunks(self) -> list[ChunkResult]:
        return [c for c in self.chunks if c.differs]

    @property
    def identical(self) -> bool:
        return not self.differing_chunks

    def lower_bound_differences(self) -> int:
        """Differing rows when not resolved: at least one per differing chunk and the count gaps."""
        if self.differences is not None:
            return self.differences.total
        gaps = sum(abs(c.source.count - c.target.count) for c in self.differing_chunks)
        return max(gaps, len(self.differing_chunks))


def compare_table(
    engines: Engines,
    spec: CompareSpec,
    stop_event: threading.Event,
    *,
    resolve: bool | Callable[[Comparison], bool] = True,
    time_budget: float = 0.5,
    parallel: int = 2,
) -> Comparison:
    """Scan ``spec.table`` chunk by chunk, then bisect the differing chunks down to rows when
    ``resolve`` is true or, given a callable, when it returns true for the chunk-level result."""
    started = time.monotonic()
    with TableComparer(engines, spec, stop_event, time_budget=time_budget, parallel=parallel) as comparer:
        chunks = comparer.scan()
        comparison = Comparison(spec.table, spec.mode, chunks)
        if resolve if isinstance(resolve, bool) else resolve(comparison):
            comparison.differences = comparer.resolve(chunks)
        comparison.seconds = time.monotonic() - started
        logger.debug(
            "%s (%s): %d chunks, %d differing, %d queries in %.2fs",
            spec.table,
            spec.mode,
            len(chunks),
            len(comparison.differing_chunks),
            comparer.queries,
            comparison.seconds,
            extra=log_fields("VERIFY", "COMPARE"),
        )
    return comparison
