"""Shared assertion: two counts stores hold exactly the same counters (dense, per-domain and n-gram)."""
import h5py
import numpy as np

from fastneurons.bench.compare import store_differences


def assert_same_store(a, b):
    assert store_differences(a, b) == []


def assert_same_datasets(a, b, groups):
    """Every dataset under ``groups`` of store ``a`` is in ``b``, equal (bounded stores' summaries, counts)."""
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        for group in groups:
            def same(path, obj, group=group):
                if isinstance(obj, h5py.Dataset):
                    np.testing.assert_array_equal(obj[()], y[group][path][()], err_msg=f"{group}/{path}")
            x[group].visititems(same)
