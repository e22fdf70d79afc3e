"""A base for in-memory test stores: the counts-reader interface of docs/analysis.md over dicts.

Subclasses fill ``_active``, ``_pos_active``, ``_domain_active`` ({layer: array}), ``_ngram``
({(layer, k): {(key, neuron): count}}) and ``_seen`` ({k: {key: count}}) by naive counting.
"""
import numpy as np


def pack(ids):
    """The 16-bit n-gram key of a tuple of token ids (SPEC §2), written out by hand."""
    key = 0
    for token in ids:
        key = (key << 16) | token
    return key


class DictCounts:
    def active(self, layer):
        return self._active[layer]

    def pos_active(self, layer):
        return self._pos_active[layer]

    def domain_active(self, layer):
        return self._domain_active[layer]

    def ngram_active(self, layer, k):
        rows = sorted((key, n, c) for (key, n), c in self._ngram[layer, k].items())
        return (np.array([r[0] for r in rows], np.uint64), np.array([r[1] for r in rows], np.uint32),
                np.array([r[2] for r in rows], np.int64))

    def ngram_seen(self, k):
        keys = sorted(self._seen[k])
        return np.array(keys, np.uint64), np.array([self._seen[k][g] for g in keys], np.int64)
