"""Shuffle + gzip chunks deflated by fastneurons: what HDF5's own filters store, read back equal."""

import itertools
import zlib

import h5py
import numba
import numpy as np
import pytest

from fastneurons import hdf5_chunks

CHUNK_ROWS = 1 << 16  # the n-gram runs' chunk


def _write_both_ways(path, values, chunks):
    """{"direct": chunks write_column stored, "filters": chunks HDF5's own shuffle + gzip stored}, each
    file read back equal to ``values`` through the standard filters."""
    stored = {}
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for how in ("direct", "filters"):
            with h5py.File(path / f"{how}.h5", "w") as f:
                dataset = f.create_dataset("x", shape=values.shape, dtype=values.dtype, chunks=chunks,
                                           **hdf5_chunks.COMPRESSION)
                if how == "direct":
                    hdf5_chunks.write_column(dataset, values)
                else:
                    dataset[...] = values
            with h5py.File(path / f"{how}.h5", "r") as f:
                assert f["x"].compression == "gzip" and f["x"].shuffle
                np.testing.assert_array_equal(f["x"][()], values)
                origins = itertools.product(*(range(0, n, c) for n, c in zip(values.shape, chunks)))
                stored[how] = [f["x"].id.read_direct_chunk(origin)[1] for origin in origins]
    finally:
        numba.set_num_threads(before)
    return stored


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64, np.int64])
def test_write_column_stores_standard_shuffle_gzip_chunks(tmp_path, dtype):
    """Chunks deflated in threads (ISA-L when installed) and written directly: standard zlib streams
    whose content is exactly the shuffled chunk HDF5's own filters store; the file reads back equal."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, np.iinfo(dtype).max // 3, 5 * CHUNK_ROWS + 11, dtype=dtype)
    stored = _write_both_ways(tmp_path, values, (CHUNK_ROWS,))
    assert [zlib.decompress(c) for c in stored["direct"]] == [zlib.decompress(c) for c in stored["filters"]]


def test_write_column_writes_chunks_of_any_shape(tmp_path):
    """A 3-D dataset (``pos_active``'s layout) with partial edge chunks: same content as HDF5's own."""
    rng = np.random.default_rng(4)
    values = rng.integers(0, 1000, (3, 300, 70)).astype(np.uint32)
    stored = _write_both_ways(tmp_path, values, (1, 128, 70))
    assert len(stored["direct"]) == 9
    assert [zlib.decompress(c) for c in stored["direct"]] == [zlib.decompress(c) for c in stored["filters"]]


def test_write_column_casts_to_the_dataset_dtype_chunk_by_chunk(tmp_path):
    """int64 counts into a uint32 dataset (how ``pos_active`` is stored): the values, cast."""
    values = np.random.default_rng(6).integers(0, 2**31, (2, 600, 9), dtype=np.int64)
    with h5py.File(tmp_path / "cast.h5", "w") as f:
        dataset = f.create_dataset("x", shape=values.shape, dtype=np.uint32, chunks=(1, 256, 9),
                                   **hdf5_chunks.COMPRESSION)
        hdf5_chunks.write_column(dataset, values)
    with h5py.File(tmp_path / "cast.h5", "r") as f:
        assert f["x"].dtype == np.uint32
        np.testing.assert_array_equal(f["x"][()], values)


def test_write_column_without_isal_writes_the_bytes_hdf5_would(tmp_path, monkeypatch):
    """Without ISA-L (no wheel for the platform) the chunks are zlib level 1: byte for byte HDF5's own."""
    monkeypatch.setattr(hdf5_chunks, "_fast_deflate", None)
    values = np.random.default_rng(5).integers(0, 2**40, 3 * CHUNK_ROWS + 5, dtype=np.uint64)
    stored = _write_both_ways(tmp_path, values, (CHUNK_ROWS,))
    assert stored["direct"] == stored["filters"]
