"""Shared assertion: two counts stores hold exactly the same counters (dense, per-domain and n-gram)."""
from fastneurons.bench.compare import store_differences


def assert_same_store(a, b):
    assert store_differences(a, b) == []
