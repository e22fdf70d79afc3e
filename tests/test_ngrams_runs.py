"""N-gram tables on disk: roundtrip, bounded-memory external merge, readers by neuron."""

import h5py
import numpy as np
import pytest

from fastneurons.ngrams import runs as ngram_runs
from fastneurons.ngrams import (SeenTable, Table, add_tables, group_by_neuron, merge_many,
                                merge_tables, read_table, write_table)


def random_table(rng, rows, max_key=1000, num_neurons=50, order=2):
    keys = rng.integers(0, max_key, rows).astype(np.uint64)
    neurons = rng.integers(0, num_neurons, rows).astype(np.uint64)
    pairs = np.unique(np.stack([keys, neurons], axis=1), axis=0)
    counts = rng.integers(1, 1000, len(pairs)).astype(np.int64)
    return Table(pairs[:, 0].copy(), pairs[:, 1].astype(np.uint32), counts, order)


def random_seen(rng, rows, max_key=1000, order=2):
    keys = np.unique(rng.integers(0, max_key, rows).astype(np.uint64))
    return SeenTable(keys, rng.integers(1, 1000, keys.size).astype(np.int64), order)


def assert_same(a, b):
    assert type(a) is type(b) and a.order == b.order
    np.testing.assert_array_equal(a.key, b.key)
    np.testing.assert_array_equal(a.count, b.count)
    if isinstance(a, Table):
        np.testing.assert_array_equal(a.neuron, b.neuron)
    assert a.key.dtype == np.uint64 and a.count.dtype == np.int64


def write_runs(h5file, tables):
    groups = []
    for i, table in enumerate(tables):
        group = h5file.create_group(f"run{i}")
        write_table(group, table)
        groups.append(group)
    return groups


def test_write_read_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    table, seen = random_table(rng, 5000, order=3), random_seen(rng, 700, order=1)
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        write_table(f.create_group("active"), table)
        write_table(f.create_group("seen"), seen)
        write_table(f.create_group("empty"), Table.empty(2))
    with h5py.File(tmp_path / "runs.h5", "r") as f:
        assert f["active"].attrs["rows"] == table.rows and f["active"].attrs["order"] == 3
        assert f["active/neuron"].dtype == np.uint32 and f["active/key"].compression is not None
        assert_same(read_table(f["active"]), table)
        assert_same(read_table(f["seen"]), seen)
        assert_same(read_table(f["empty"]), Table.empty(2))
        part = read_table(f["active"], 10, 20)
        np.testing.assert_array_equal(part.key, table.key[10:20])


def test_write_into_used_group_or_unsorted_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        write_table(f.create_group("a"), random_table(rng, 10))
        with pytest.raises(ValueError, match="already exists"):
            write_table(f["a"], random_table(rng, 10))
        table = Table(np.array([4, 4], np.uint64), np.array([2, 1], np.uint32), np.array([1, 1]), 2)
        unsorted_seen = SeenTable(np.array([3, 3], np.uint64), np.array([1, 1]), 1)
        for bad in (table, unsorted_seen):
            with pytest.raises(ValueError, match="not sorted"):
                write_table(f.create_group(f"bad{type(bad).__name__}"), bad)


@pytest.mark.parametrize("memory_bytes", [1, 700, 5000, 1 << 30])
def test_external_merge_equals_in_memory_merge(tmp_path, memory_bytes):
    rng = np.random.default_rng(memory_bytes)
    sizes = (300, 0, 1, 80, 250) if memory_bytes < 1000 else (3000, 0, 1, 800, 2500)
    tables = [random_table(rng, rows, max_key=sizes[0] // 3) for rows in sizes]
    seens = [random_seen(rng, rows, max_key=sizes[0] // 3) for rows in (sizes[0], 0, sizes[3])]
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        rows = merge_tables(write_runs(f, tables), f.create_group("merged"), memory_bytes)
        merge_tables(write_runs(f.create_group("seen"), seens), f.create_group("merged_seen"),
                     memory_bytes)
        expected = merge_many(tables)
        assert rows == expected.rows == f["merged"].attrs["rows"]
        assert_same(read_table(f["merged"]), expected)
        assert_same(read_table(f["merged_seen"]), merge_many(seens))


def test_external_merge_appends_whole_deflated_chunks(tmp_path):
    """A merged table of several chunks, flushed many times (rows short of a chunk carried to the next
    flush): equal to the in-memory merge, stored as standard shuffle + gzip chunks."""
    rng = np.random.default_rng(8)
    tables = [random_table(rng, 90_000, max_key=2**40) for _ in range(4)]
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        rows = merge_tables(write_runs(f, tables), f.create_group("merged"), memory_bytes=2 << 20)
        expected = merge_many(tables)
        assert rows == expected.rows > 4 * ngram_runs.CHUNK_ROWS
        assert f["merged/key"].compression == "gzip" and f["merged/key"].shuffle
        assert_same(read_table(f["merged"]), expected)


def test_external_merge_with_one_key_larger_than_the_budget(tmp_path):
    rng = np.random.default_rng(2)
    # key 7 has 50 neurons in every run; a 60-byte budget holds one row per run
    tables = [random_table(rng, 200, max_key=20) for _ in range(3)]
    heavy = Table(np.full(50, 7, np.uint64), np.arange(50, dtype=np.uint32), np.ones(50, np.int64), 2)
    tables.append(heavy)
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        merge_tables(write_runs(f, tables), f.create_group("merged"), memory_bytes=60)
        assert_same(read_table(f["merged"]), merge_many(tables))


def test_external_merge_of_many_runs_and_single_or_empty_sources(tmp_path):
    rng = np.random.default_rng(3)
    tables = [random_table(rng, int(rows)) for rows in rng.integers(0, 300, 40)]
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        merge_tables(write_runs(f, tables), f.create_group("merged"), memory_bytes=20000)
        assert_same(read_table(f["merged"]), merge_many(tables))
        merge_tables([f["run0"]], f.create_group("single"), memory_bytes=100)
        assert_same(read_table(f["single"]), tables[0])
        empty = f.create_group("empty")
        write_table(empty, Table.empty(2))
        assert merge_tables([empty, empty], f.create_group("merged_empty")) == 0
        assert read_table(f["merged_empty"]).rows == 0


def test_add_tables_equals_merge_many():
    rng = np.random.default_rng(6)
    a, b = random_table(rng, 400, max_key=100), random_table(rng, 300, max_key=100)
    assert_same(add_tables(a, b), merge_many([a, b]))
    with pytest.raises(TypeError, match="cannot add"):
        add_tables(a, random_seen(rng, 5))


def test_merge_refuses_mixed_kinds(tmp_path):
    rng = np.random.default_rng(4)
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        groups = write_runs(f, [random_table(rng, 10), random_seen(rng, 10)])
        with pytest.raises(ValueError, match="different kinds"):
            merge_tables(groups, f.create_group("merged"))
        with pytest.raises(ValueError, match="at least one"):
            merge_tables([], f.create_group("nothing"))


def test_group_by_neuron_sorts_by_count_descending():
    table = Table(np.array([1, 1, 2, 3, 3, 4], np.uint64), np.array([0, 2, 2, 0, 2, 2], np.uint32),
                  np.array([5, 1, 9, 7, 1, 9], np.int64), 1)
    offsets, keys, counts = group_by_neuron(table, num_neurons=4)
    np.testing.assert_array_equal(offsets, [0, 2, 2, 6, 6])
    np.testing.assert_array_equal(keys[0:2], [3, 1])
    np.testing.assert_array_equal(counts[0:2], [7, 5])
    np.testing.assert_array_equal(keys[2:6], [2, 4, 1, 3])  # ties broken by key
    np.testing.assert_array_equal(counts[2:6], [9, 9, 1, 1])
    with pytest.raises(ValueError, match="num_neurons"):
        group_by_neuron(table, num_neurons=2)


def test_group_by_neuron_matches_lexsort_on_a_random_table():
    rng = np.random.default_rng(5)
    table = random_table(rng, 20000, max_key=3000, num_neurons=70)
    table.count = rng.integers(1, 4, table.rows).astype(np.int64)  # many ties
    offsets, keys, counts = group_by_neuron(table, num_neurons=80)
    order = np.lexsort((table.key, -table.count, table.neuron))
    np.testing.assert_array_equal(keys, table.key[order])
    np.testing.assert_array_equal(counts, table.count[order])
    np.testing.assert_array_equal(np.diff(offsets), np.bincount(table.neuron, minlength=80))


