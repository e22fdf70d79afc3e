"""A base for in-memory test stores: the counts-reader interface of docs/analysis.md over dicts.

Subclasses call ``start`` and then ``count_sequence`` once per sequence: naive SPEC §2 counting into
``_active``, ``_pos_active``, ``_domain_active`` ({layer: array}), ``_ngram`` ({(layer, k): {(key, neuron):
count}}) and ``_seen`` ({k: {key: count}}).
"""
import numpy as np


def pack(ids):
    """The 16-bit n-gram key of a tuple of token ids (SPEC §2), written out by hand."""
    key = 0
    for token in ids:
        key = (key << 16) | token
    return key


class DictCounts:
    def start(self, layers, ngram_layers, orders, num_neurons, positions, domains):
        """Empty counters for these layers, orders, neurons, positions and domain labels."""
        self.layers, self.ngram_layers, self.ngram_orders = list(layers), list(ngram_layers), list(orders)
        self.num_neurons, self.pack_bits, self.tokens, self.domains = num_neurons, 16, 0, list(domains)
        self.pos_seen = np.zeros(positions, np.int64)
        self.domain_tokens = np.zeros(len(domains), np.int64)
        self._active = {layer: np.zeros(num_neurons, np.int64) for layer in layers}
        self._pos_active = {layer: np.zeros((positions, num_neurons), np.int64) for layer in layers}
        self._domain_active = {layer: np.zeros((len(domains), num_neurons), np.int64) for layer in layers}
        self._seen = {k: {} for k in orders}
        self._ngram = {(layer, k): {} for layer in ngram_layers for k in orders}

    def count_sequence(self, sequence, domain, fires):
        """Count one sequence (position 0 is BOS, not counted); ``fires(layer, n, p)`` says who is active."""
        for p in range(len(sequence)):
            self.pos_seen[p] += 1
            counted = p >= 1
            self.tokens += counted
            self.domain_tokens[domain] += counted
            grams = {k: pack(sequence[p - k + 1:p + 1]) for k in self.ngram_orders if p - k + 1 >= 1}
            for k, key in grams.items():
                self._seen[k][key] = self._seen[k].get(key, 0) + 1
            for layer in self.layers:
                for n in range(self.num_neurons):
                    if not fires(layer, n, p):
                        continue
                    self._pos_active[layer][p, n] += 1
                    if counted:
                        self._active[layer][n] += 1
                        self._domain_active[layer][domain, n] += 1
                        if layer in self.ngram_layers:
                            for k, key in grams.items():
                                table = self._ngram[layer, k]
                                table[key, n] = table.get((key, n), 0) + 1

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
