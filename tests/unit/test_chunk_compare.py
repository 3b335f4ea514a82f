"""verification/chunk_compare.py without a database: the statements the comparer sends, how it
batches buckets, walks the key space and narrows differing buckets down to rows (fake reads).

The pure SQL builders (hash_form, row_hash_sql, range and key conditions) are covered in
test_verification.py; this file drives :class:`TableComparer` with its reads replaced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.verification import chunk_compare
from dlt_db_sync.verification.chunk_compare import (
    GROUPS,
    MAX_BUCKETS_PER_QUERY,
    MAX_GROUPED_ROWS,
    ChunkResult,
    ChunkSums,
    CompareSpec,
    KeyRange,
    TableComparer,
    execute,
    row_hash_sql,
)


def col(name: str, data_type: str, nullable: bool = False) -> Column:
    return Column(name, data_type, data_type, nullable, None, None)


SPEC = CompareSpec("t", ("id",), (col("id", "int"), col("v", "varchar", nullable=True)), "rows", "PRIMARY", None)


@pytest.fixture
def comparer() -> Iterator[TableComparer]:
    with TableComparer(None, SPEC, threading.Event()) as made:  # type: ignore[arg-type]  # reads are faked
        yield made


class Reads:
    """Records (role, sql, params) and answers with the rows the test queued per role."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, str, list[Any]]] = []
        self.answers: dict[str, list[list[tuple[Any, ...]]]] = {"source": [], "target": []}

    def __call__(self, role: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.statements.append((role, sql, list(params)))
        return self.answers[role].pop(0) if self.answers[role] else []


# ----------------------------------------------------------------------------- statements
def test_sums_is_one_union_all_statement_with_an_index_hint_on_the_source_only(
    comparer: TableComparer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads()
    monkeypatch.setattr(comparer, "_read", reads)
    reads.answers["source"] = [[(1, 5, 99)]]  # the first range has no rows: no row comes back for it
    ranges = [KeyRange(None, (10,)), KeyRange((10,), None)]
    found, _seconds = comparer.sums("source", ranges)
    assert found == [ChunkSums(0, 0), ChunkSums(5, 99)]
    role, sql, params = reads.statements[0]
    hashed = row_hash_sql(SPEC.columns)
    assert sql == (
        f"SELECT 0, COUNT(*), BIT_XOR({hashed}) FROM `t` FORCE INDEX (`PRIMARY`) WHERE (`id` <= %s) UNION ALL "
        f"SELECT 1, COUNT(*), BIT_XOR({hashed}) FROM `t` FORCE INDEX (`PRIMARY`) WHERE (`id` > %s)"
    )
    assert params == [10, 10]
    reads.answers["target"] = [[(0, 3, None)]]  # BIT_XOR over no non-NULL hash: NULL
    found, _seconds = comparer.sums("target", ranges[:1])
    assert found == [ChunkSums(3, 0)] and "FORCE INDEX" not in reads.statements[1][1]  # no matching target index


def test_group_and_row_statements_select_only_the_differing_groups(
    comparer: TableComparer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads()
    monkeypatch.setattr(comparer, "_read", reads)
    reads.answers["source"] = [[(0, 3, 2, 7)], [(5, 11), (6, 12)]]
    assert comparer.group_sums("source", [KeyRange((0,), (10,))]) == {(0, 3): (2, 7)}
    assert comparer.row_hashes("source", [(KeyRange((0,), (10,)), [3, 17])]) == {(5,): 11, (6,): 12}
    group_sql, row_sql = reads.statements[0][1], reads.statements[1][1]
    assert f"MOD(CRC32(CONCAT_WS('#', `id`)), {GROUPS}) AS _dlt_g" in group_sql and "GROUP BY _dlt_g" in group_sql
    assert row_sql.endswith(f"AND MOD(CRC32(CONCAT_WS('#', `id`)), {GROUPS}) IN (3, 17)")
    assert reads.statements[1][2] == [0, 10]


def test_execute_unescapes_percent_only_without_parameters() -> None:
    class Conn:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def exec_driver_sql(self, *args: Any) -> str:
            self.calls.append(args)
            return "result"

    conn = Conn()
    assert execute(conn, "SELECT `100%%` FROM t") == "result"  # type: ignore[arg-type]
    execute(conn, "SELECT `100%%` FROM t WHERE id > %s", [5])  # type: ignore[arg-type]
    assert conn.calls == [("SELECT `100%` FROM t",), ("SELECT `100%%` FROM t WHERE id > %s", (5,))]


def test_row_hash_can_hash_the_value_the_target_stores() -> None:
    sql = row_hash_sql([col("id", "int"), col("v", "varchar", nullable=True)], {"v": "LEFT(`v`, 3)"})
    assert sql == "CRC32(SHA1(CONCAT_WS('#', `id`, LEFT(`v`, 3), CONCAT(ISNULL(LEFT(`v`, 3))))))"


# ----------------------------------------------------------------------------- batching and the walk
def test_buckets_are_compared_in_statements_of_at_most_the_maximum(
    comparer: TableComparer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[tuple[str, int]] = []

    def sums(role: str, ranges: Sequence[KeyRange]) -> tuple[list[ChunkSums], float]:
        sizes.append((role, len(ranges)))
        return [ChunkSums(1, 1)] * len(ranges), 0.0

    monkeypatch.setattr(comparer, "sums", sums)
    ranges = [KeyRange((i,), (i + 1,)) for i in range(MAX_BUCKETS_PER_QUERY + 1)]
    results = comparer._compare(ranges)
    assert sorted(sizes) == sorted(
        [("source", MAX_BUCKETS_PER_QUERY), ("target", MAX_BUCKETS_PER_QUERY)] + [("source", 1), ("target", 1)]
    )
    assert [r.key_range for r in results] == ranges and not any(r.differs for r in results)


def test_scan_walks_the_whole_key_space_in_order(comparer: TableComparer, monkeypatch: pytest.MonkeyPatch) -> None:
    walks = iter([([(1000,), (2000,)], False), ([(3000,)], True)])
    asked: list[KeyRange] = []

    def edges(role: str, rng: KeyRange, buckets: int | None) -> tuple[list[tuple[int]], bool]:
        assert role == "source" and rng.upper is None and buckets == comparer.buckets_per_query
        asked.append(rng)
        return next(walks)

    def sums(role: str, ranges: Sequence[KeyRange]) -> tuple[list[ChunkSums], float]:
        checksum = 1 if role == "source" else 2  # every bucket differs
        return [ChunkSums(1000, checksum)] * len(ranges), 0.01

    monkeypatch.setattr(comparer, "edges", edges)
    monkeypatch.setattr(comparer, "sums", sums)
    results = comparer.scan()
    assert asked == [KeyRange(None, None), KeyRange((2000,), None)]  # the second walk starts after the last edge
    assert [r.key_range for r in results] == [
        KeyRange(None, (1000,)),
        KeyRange((1000,), (2000,)),
        KeyRange((2000,), None),  # the last edge of a finished walk: the rest of the key space
    ]
    assert all(r.differs for r in results)


# ----------------------------------------------------------------------------- down to rows
def test_resolve_fetches_rows_of_differing_groups_only(
    comparer: TableComparer, monkeypatch: pytest.MonkeyPatch
) -> None:
    same, differing = KeyRange(None, (10,)), KeyRange((10,), None)
    chunks = [
        ChunkResult(same, ChunkSums(10, 1), ChunkSums(10, 1)),
        ChunkResult(differing, ChunkSums(3, 5), ChunkSums(3, 6)),
    ]
    grouped: list[list[KeyRange]] = []
    wanted: list[Any] = []

    def group_sums(role: str, ranges: Sequence[KeyRange]) -> dict[tuple[int, int], tuple[int, int]]:
        grouped.append(list(ranges))
        # Group 4 matches; group 9 differs; group 12 exists on the source only.
        if role == "source":
            return {(0, 4): (1, 1), (0, 9): (1, 2), (0, 12): (1, 3)}
        return {(0, 4): (1, 1), (0, 9): (2, 5)}

    def row_hashes(role: str, groups: Sequence[tuple[KeyRange, Sequence[int]]]) -> dict[tuple[Any, ...], int]:
        wanted.append(list(groups))
        if role == "source":
            return {(13,): 1, (11,): 2, (12,): 3}
        return {(11,): 2, (12,): 30, (14,): 4}

    monkeypatch.setattr(comparer, "group_sums", group_sums)
    monkeypatch.setattr(comparer, "row_hashes", row_hashes)
    found = comparer.resolve(chunks)
    assert grouped == [[differing], [differing]]  # the identical bucket is never looked into
    assert wanted == [[(differing, [9, 12])], [(differing, [9, 12])]]
    assert (found.missing, found.extra, found.changed) == ([(13,)], [(14,)], [(12,)])


def test_a_gap_is_recut_on_the_fuller_side_before_grouping(
    comparer: TableComparer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = ChunkResult(KeyRange((0,), (50_000,)), ChunkSums(10, 1), ChunkSums(MAX_GROUPED_ROWS + 1, 2))
    cut: list[tuple[str, KeyRange, int | None]] = []
    compared: list[list[KeyRange]] = []
    diffed: list[list[ChunkResult]] = []

    def edges(role: str, rng: KeyRange, buckets: int | None) -> tuple[list[tuple[int]], bool]:
        cut.append((role, rng, buckets))
        return [(1000,), (2000,)], True

    def compare(ranges: Sequence[KeyRange]) -> list[ChunkResult]:
        compared.append(list(ranges))
        return [ChunkResult(r, ChunkSums(1, 1), ChunkSums(1, 1 if r.upper == (1000,) else 2)) for r in ranges]

    monkeypatch.setattr(comparer, "edges", edges)
    monkeypatch.setattr(comparer, "_compare", compare)
    monkeypatch.setattr(comparer, "_diff_groups", lambda chunks, out: diffed.append(list(chunks)))
    comparer.resolve([wide])
    assert cut == [("target", wide.key_range, None)]  # the side with more rows
    assert compared == [[KeyRange((0,), (1000,)), KeyRange((1000,), (50_000,))]]
    assert [[c.key_range for c in batch] for batch in diffed] == [[KeyRange((1000,), (50_000,))]]


def test_batches_cover_every_item_once() -> None:
    items = list(range(7))
    assert [list(b) for b in chunk_compare._batches(items, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunk_compare._batches([], 3)) == []
