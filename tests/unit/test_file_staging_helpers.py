"""File staging helpers without a database: part files, the background hand-over, retention."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlt_db_sync.config.settings import DatabaseSettings, Settings
from dlt_db_sync.data_processing.extraction import prefetch
from dlt_db_sync.data_processing.file_staging import (
    compression_codec,
    read_parts,
    remove_expired,
    remove_leftover_runs,
    staged_batches,
    write_parts,
)
from dlt_db_sync.error_handling.errors import StagingError
from dlt_db_sync.monitoring.resources import directory_usage


def settings(tmp_path: Path, compression: str = "snappy") -> Settings:
    db = DatabaseSettings(role="source", host="127.0.0.1", port=3306, name="x", user="u", password="")
    return Settings(source=db, target=db, file_staging_dir=tmp_path / "staging", file_staging_compression=compression)


def batches(total: int, size: int) -> Iterator[pa.Table]:
    """String/binary batches like the projection produces (``id`` 1..total)."""
    for start in range(0, total, size):
        ids = range(start + 1, min(start + size, total) + 1)
        yield pa.table(
            {
                "id": pa.array([str(i) for i in ids], pa.string()),
                "note": pa.array([None if i % 7 == 0 else f"zeile {i} \t ü" for i in ids], pa.string()),
                "raw": pa.array([bytes([i % 256, 0, 92]) for i in ids], pa.binary()),
            }
        )


def all_rows(tables: Iterator[pa.Table]) -> list[dict[str, object]]:
    return [row for table in tables for row in table.to_pylist()]


@pytest.mark.parametrize("compression", ["snappy", "gzip", "brotli", "zstd", "none"])
def test_parts_round_trip_exactly_with_every_compression(tmp_path: Path, compression: str) -> None:
    paths = list(write_parts(batches(1000, 130), tmp_path, 300, compression_codec(compression)))
    assert [p.name for p in paths] == [f"part-{n:06d}.parquet" for n in range(1, 5)]
    metadata = pq.ParquetFile(paths[0]).metadata
    assert metadata.num_rows == 300 and metadata.num_row_groups == 1
    assert metadata.row_group(0).column(0).compression == (
        "UNCOMPRESSED" if compression == "none" else compression.upper()
    )
    assert [pq.ParquetFile(p).metadata.num_rows for p in paths] == [300, 300, 300, 100]
    assert all_rows(read_parts(paths)) == all_rows(batches(1000, 1000))
    assert not list(tmp_path.glob("*.partial"))


def test_a_part_is_removed_only_when_the_next_one_is_requested(tmp_path: Path) -> None:
    paths = list(write_parts(batches(600, 600), tmp_path, 200, None))
    reader = read_parts(paths)
    next(reader)
    assert all(p.exists() for p in paths)  # chunk 1 is loading: its file stays
    next(reader)
    assert not paths[0].exists() and paths[1].exists()
    next(reader)
    assert [p.exists() for p in paths] == [False, False, True]  # the last one goes with the run


def test_staged_batches_streams_and_removes_the_run_on_success(tmp_path: Path) -> None:
    config = settings(tmp_path)
    with staged_batches(config, "orders", batches(950, 100), 200) as staged:
        sizes = [t.num_rows for t in staged]
        assert list((tmp_path / "staging" / "orders").iterdir())  # the run's directory exists meanwhile
    assert sizes == [200, 200, 200, 200, 150]
    assert list((tmp_path / "staging" / "orders").iterdir()) == []


def test_failed_load_keeps_files_and_the_next_run_removes_them(tmp_path: Path) -> None:
    config = settings(tmp_path)
    with (
        pytest.raises(RuntimeError, match="injected"),
        staged_batches(config, "orders", batches(1000, 100), 100) as staged,
    ):
        next(staged)
        raise RuntimeError("injected load failure")
    runs = list((tmp_path / "staging" / "orders").iterdir())
    assert len(runs) == 1 and list(runs[0].glob("part-*.parquet"))
    with staged_batches(config, "orders", batches(10, 10), 100) as staged:
        assert sum(t.num_rows for t in staged) == 10
        assert not runs[0].exists()  # superseded: the new run re-extracts everything it held


def test_extraction_errors_reach_the_loader_unchanged(tmp_path: Path) -> None:
    class ExtractionFailed(Exception):
        pass

    def failing() -> Iterator[pa.Table]:
        yield from batches(100, 100)
        raise ExtractionFailed("source went away")

    with (
        pytest.raises(ExtractionFailed, match="source went away"),
        staged_batches(settings(tmp_path), "t", failing(), 50) as staged,
    ):
        for _ in staged:
            pass


def test_unwritable_staging_directory_is_a_staging_error(tmp_path: Path) -> None:
    blocker = tmp_path / "staging"
    blocker.write_text("not a directory")
    with (
        pytest.raises(StagingError, match="cannot use staging directory"),
        staged_batches(settings(tmp_path), "t", batches(10, 10), 10),
    ):
        pass


def test_remove_leftover_runs_only_touches_run_directories(tmp_path: Path) -> None:
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "part-000001.parquet").write_bytes(b"x")
    (tmp_path / "run2").mkdir()
    assert remove_leftover_runs(tmp_path) == 2
    assert remove_leftover_runs(tmp_path / "missing") == 0
    assert list(tmp_path.iterdir()) == []


def test_remove_expired_removes_old_files_and_empty_directories_and_measures_the_rest(tmp_path: Path) -> None:
    old_run = tmp_path / "orders" / "20240101T000000_aaaa"
    new_run = tmp_path / "customers" / "20240102T000000_bbbb"
    old_run.mkdir(parents=True)
    new_run.mkdir(parents=True)
    old_file = old_run / "part-000001.parquet"
    old_file.write_bytes(b"x" * 1000)
    new_file = new_run / "part-000001.parquet"
    new_file.write_bytes(b"y" * 2_000_000)
    now = time.time()
    os.utime(old_file, (now - 25 * 3600, now - 25 * 3600))
    usage = remove_expired(tmp_path, 24, now=now)
    assert usage.removed_files == 1 and usage.files_count == 1
    assert usage.usage_mb == pytest.approx(2.0)
    assert not (tmp_path / "orders").exists()  # emptied directories go too
    assert new_file.exists()
    # One unit (MB = 10^6 bytes): the cleanup and the watchdog's measurement feed the same health field.
    assert directory_usage(tmp_path) == (usage.usage_mb, usage.files_count) == (2.0, 1)
    assert remove_expired(tmp_path / "missing", 24).files_count == 0


def test_remove_expired_reports_unremovable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "t" / "run" / "part-000001.parquet"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    os.utime(old, (0, 0))

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(StagingError, match="cannot clean staging directory"):
        remove_expired(tmp_path, 1)


def test_prefetch_runs_ahead_by_at_most_depth_items() -> None:
    produced: list[int] = []
    gate = threading.Event()

    def items() -> Iterator[int]:
        for i in range(10):
            produced.append(i)
            yield i

    with prefetch(items(), depth=1, name="test") as stream:
        first = next(stream)
        gate.wait(0.3)  # give the producer time to run ahead as far as it may
        # one item consumed, one queued, one produced and waiting to be queued
        assert first == 0 and len(produced) <= 3
        assert [first, *stream] == list(range(10))


def test_prefetch_stops_the_producer_when_the_consumer_fails() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with pytest.raises(ValueError), prefetch(items(), depth=2, name="test") as stream:
        next(stream)
        raise ValueError("load failed")
    assert closed.is_set()  # the generator was closed in its own thread before the block ended


def test_prefetch_re_raises_the_producers_exception_object() -> None:
    error = KeyError("boom")

    def items() -> Iterator[int]:
        yield 1
        raise error

    with prefetch(items(), depth=None, name="test") as stream:
        assert next(stream) == 1
        with pytest.raises(KeyError) as caught:
            next(stream)
    assert caught.value is error


def test_paged_query_orders_by_the_qualified_key_and_binds_an_exact_integer() -> None:
    from dlt_db_sync.data_processing.extraction import Paging, build_query
    from dlt_db_sync.schema_management.model import Column

    cols = [
        Column("id", "bigint", "bigint(20) unsigned", False, None, None),
        Column("v", "varchar", "varchar(5)", True, "utf8mb4", "x"),
    ]
    query = build_query("t", cols, "updated_at", "2024-01-01", Paging("id", 1000), 18446744073709551615)
    sql = str(query.compile(compile_kwargs={"literal_binds": True}))
    assert sql.endswith(
        "WHERE `updated_at` >= '2024-01-01' AND `t`.`id` > 18446744073709551615 ORDER BY `t`.`id` LIMIT 1000"
    )
    first = str(build_query("t", cols, None, None, Paging("id", 10)).compile(compile_kwargs={"literal_binds": True}))
    assert first.endswith("FROM `t` ORDER BY `t`.`id` LIMIT 10")


def test_only_single_integer_keys_are_pageable() -> None:
    from dlt_db_sync.data_processing.extraction import pageable_key
    from dlt_db_sync.schema_management.model import Column, TableDefinition

    definition = TableDefinition(
        "t",
        [
            Column("id", "int", "int(11)", False, None, None),
            Column("code", "varchar", "varchar(5)", False, "utf8mb4", "x"),
        ],
        "",
    )
    assert pageable_key(definition, ("id",)) == "id"
    assert pageable_key(definition, ("code",)) is None
    assert pageable_key(definition, ("id", "code")) is None


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlt_db_sync.data_processing.extraction import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
