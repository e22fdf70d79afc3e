"""Shared assertion: two counts stores hold exactly the same counters (dense, per-domain and n-gram)."""
import numpy as np

from fastneurons.store import open_counts


def assert_same_store(a, b):
    with open_counts(a) as x, open_counts(b) as y:
        assert x.tokens == y.tokens
        np.testing.assert_array_equal(x.pos_seen, y.pos_seen)
        np.testing.assert_array_equal(x.domain_tokens, y.domain_tokens)
        assert x.layers == y.layers and x.ngram_layers == y.ngram_layers and x.ngram_orders == y.ngram_orders
        for layer in x.layers:
            np.testing.assert_array_equal(x.active(layer), y.active(layer))
            assert x.has_positions == y.has_positions
            if x.has_positions:
                np.testing.assert_array_equal(x.pos_active(layer), y.pos_active(layer))
            np.testing.assert_array_equal(x.domain_active(layer), y.domain_active(layer))
        for k in x.ngram_orders:
            for u, v in zip(x.ngram_seen(k), y.ngram_seen(k)):
                np.testing.assert_array_equal(u, v)
            for layer in x.ngram_layers:
                for u, v in zip(x.ngram_active(layer, k), y.ngram_active(layer, k)):
                    np.testing.assert_array_equal(u, v)
