"""Chunking and the LOAD DATA encoding the loader sends, without a database."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from dlt_db_sync.data_processing.codec import encode_tsv_buffer
from dlt_db_sync.data_processing.loader import rechunk


def table(start: int, stop: int) -> pa.Table:
    return pa.table({"id": pa.array([str(i) for i in range(start, stop)], pa.string())})


def ids(tables: list[pa.Table]) -> list[str]:
    return [v for t in tables for v in t.column("id").to_pylist()]


def test_rechunk_regroups_into_exact_sizes_and_keeps_order() -> None:
    out = list(rechunk([table(0, 7), table(7, 8), table(8, 30), table(30, 31)], 10))
    assert [t.num_rows for t in out] == [10, 10, 10, 1]
    assert ids(out) == [str(i) for i in range(31)]


def test_rechunk_skips_empty_batches_and_yields_nothing_for_no_rows() -> None:
    assert list(rechunk([table(0, 0), table(0, 0)], 5)) == []
    assert [t.num_rows for t in rechunk([table(0, 0), table(0, 5), table(0, 0)], 5)] == [5]


def test_rechunk_passes_exact_chunks_through_without_copying() -> None:
    source = table(0, 10)
    (out,) = list(rechunk([source], 10))
    assert out.column("id").chunks[0].buffers()[2].address == source.column("id").chunks[0].buffers()[2].address


def test_rechunk_is_lazy_and_reads_only_what_the_next_chunk_needs() -> None:
    pulled: list[int] = []

    def batches():
        for i in range(0, 1000, 30):
            pulled.append(i)
            yield table(i, i + 30)

    chunks = rechunk(batches(), 100)
    assert next(chunks).num_rows == 100
    assert len(pulled) == 4  # 4 x 30 rows: nothing beyond the first chunk was extracted yet
    assert [c.num_rows for c in chunks] == [100] * 9 + [20]


def test_rechunk_unifies_string_and_large_string_batches() -> None:
    big = pa.table({"id": pa.array(["a", "b"], pa.large_string())})
    out = list(rechunk([table(0, 1), big], 3))
    assert ids(out) == ["0", "a", "b"]


def reference_tsv(rows: list[tuple[bytes | None, ...]]) -> bytes:
    """The LOAD DATA format spelled out in Python, one row at a time."""

    def field(value: bytes | None) -> bytes:
        if value is None:
            return b"\\N"
        return value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\x00", b"\\0")

    return b"".join(b"\t".join(field(v) for v in row) + b"\n" for row in rows)


@pytest.mark.parametrize("seed", range(20))
def test_encode_tsv_matches_the_reference_for_sliced_and_mixed_columns(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = [b"a", b"\t", b"\n", b"\\", b"\x00", "ü".encode(), b"N"]
    n = rng.randint(1, 40)
    columns: dict[str, pa.Array] = {}
    for c in range(rng.randint(1, 4)):
        plain = rng.random() < 0.5  # a column without any byte that needs escaping
        values = [
            None
            if rng.random() < 0.2
            else b"".join(rng.choice(alphabet[::6] if plain else alphabet) for _ in range(rng.randint(0, 4)))
            for _ in range(n)
        ]
        kind = rng.choice([pa.binary(), pa.string(), pa.large_binary()])
        columns[f"c{c}"] = pa.array([v if v is None or kind != pa.string() else v.decode() for v in values], kind)
    data = pa.table(columns)
    offset = rng.randint(0, n - 1)
    sliced = data.slice(offset, rng.randint(1, n - offset))
    rows = list(
        zip(
            *[
                [v if v is None or isinstance(v, bytes) else v.encode() for v in sliced.column(i).to_pylist()]
                for i in range(sliced.num_columns)
            ],
            strict=True,
        )
    )
    assert encode_tsv_buffer(sliced).to_pybytes() == reference_tsv(rows)


def test_encode_tsv_does_not_escape_bytes_outside_the_slice() -> None:
    parent = pa.table({"a": pa.array(["x\ty", "plain", "z\n"], pa.string())})
    assert encode_tsv_buffer(parent.slice(1, 1)).to_pybytes() == b"plain\n"


def loader(max_concurrent: int = 3, persistent_stage: bool = False) -> Any:
    import threading

    from dlt_db_sync.config.settings import DatabaseSettings, Settings
    from dlt_db_sync.data_processing.loader import TargetLoader

    db = DatabaseSettings(role="target", host="127.0.0.1", port=3306, name="x", user="u", password="")
    settings = Settings(source=db, target=db, max_concurrent_transactions=max_concurrent, lock_timeout_retries=0)
    return TargetLoader(None, settings, threading.Event(), "load_data", persistent_stage=persistent_stage)  # type: ignore[arg-type]


def test_empty_tables_load_two_chunks_at_once_and_report_them_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    target = loader()
    running: list[int] = []
    peak: list[int] = []
    lock = threading.Lock()

    def apply(_self: Any, _table: str, _columns: Any, _key: Any, chunk: pa.Table, _into_empty: bool) -> None:
        with lock:
            running.append(1)
            peak.append(len(running))
        time.sleep(0.02 if chunk.column("id")[0].as_py() != "0" else 0.1)  # the first chunk is the slowest
        with lock:
            running.pop()

    monkeypatch.setattr(type(target), "_apply_chunk", apply)
    monkeypatch.setattr(type(target), "_align", staticmethod(lambda chunk, _columns: chunk))
    reported: list[int] = []
    total = target.load("t", [], ["id"], [table(0, 95)], into_empty=True, chunk_rows=10, on_chunk=reported.append)
    assert total == 95 and reported == [10] * 9 + [5]
    assert max(peak) == 2
    assert target._parallel_loads(into_empty=False) == 1  # upserts stay sequential
    assert loader(max_concurrent=1)._parallel_loads(into_empty=True) == 1
    assert loader(persistent_stage=True)._parallel_loads(into_empty=True) == 1


def test_a_failed_parallel_chunk_raises_its_own_error_and_stops_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    target = loader()
    applied: list[str] = []

    class Boom(Exception):
        pass

    def apply(_self: Any, _table: str, _columns: Any, _key: Any, chunk: pa.Table, _into_empty: bool) -> None:
        first = chunk.column("id")[0].as_py()
        if first == "20":
            raise Boom(first)
        applied.append(first)

    monkeypatch.setattr(type(target), "_apply_chunk", apply)
    monkeypatch.setattr(type(target), "_align", staticmethod(lambda chunk, _columns: chunk))
    with pytest.raises(Boom, match="20"):
        target.load("t", [], ["id"], [table(0, 100)], into_empty=True, chunk_rows=10)
    assert len(applied) <= 3  # chunks 0 and 10, at most one more already in flight
