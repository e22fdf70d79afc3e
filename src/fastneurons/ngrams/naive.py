"""Slow, obviously-correct n-gram tables that the fast paths are tested against (SPEC §2).

Every (counted token, active neuron) event becomes an explicit (key, neuron) pair; ``np.unique``
counts them. Token by token in Python for the keys, so it is only for tests and small inputs.
"""

from __future__ import annotations

import numpy as np

from fastneurons.ngrams.accumulator import SeenTable, Table
from fastneurons.ngrams.keys import pack_key


def unpack_bits(bits: np.ndarray, num_neurons: int) -> np.ndarray:
    """bool ``[N, F]``: bit j of word w of row r is neuron 64*w + j (little-endian within words)."""
    bits = np.ascontiguousarray(bits).view(np.uint64)
    as_bytes = bits.reshape(bits.shape[0], -1).astype("<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :num_neurons].astype(bool)


def ngram_occurrences(token_ids, positions, counted, k: int, pack_bits: int) -> list[tuple[int, int]]:
    """(row, key) of every recorded k-gram: counted row at position p with p - k + 1 >= 1.

    The k-gram is read by walking back through the sequence's own rows (found from positions)."""
    token_ids = np.asarray(token_ids).reshape(-1)
    positions = np.asarray(positions).reshape(-1)
    counted = np.asarray(counted).reshape(-1)
    out = []
    for r in range(token_ids.size):
        p = int(positions[r])
        if not counted[r] or p - k + 1 < 1:
            continue
        seq_start = r - p  # row of position 0 of this sequence
        ids = [int(token_ids[seq_start + q]) for q in range(p - k + 1, p + 1)]
        out.append((r, pack_key(ids, pack_bits)))
    return out


def naive_table(bits, token_ids, positions, counted, num_neurons: int, k: int,
                pack_bits: int = 16) -> Table:
    """``ngram_active[k]`` of one chunk from explicit (key, neuron) pairs and ``np.unique``."""
    active = unpack_bits(bits, num_neurons)
    pair_keys, pair_neurons = [], []
    for r, key in ngram_occurrences(token_ids, positions, counted, k, pack_bits):
        neurons = np.flatnonzero(active[r])
        pair_keys.append(np.full(neurons.size, key, dtype=np.uint64))
        pair_neurons.append(neurons.astype(np.uint64))
    if not pair_keys:
        return Table.empty(k)
    pairs = np.stack([np.concatenate(pair_keys), np.concatenate(pair_neurons)], axis=1)
    if pairs.shape[0] == 0:
        return Table.empty(k)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)  # sorted by (key, neuron)
    return Table(unique[:, 0].astype(np.uint64), unique[:, 1].astype(np.uint32),
                 counts.astype(np.int64), k)


def naive_seen(token_ids, positions, counted, k: int, pack_bits: int = 16) -> SeenTable:
    """``ngram_seen[k]`` of one chunk with a Python dict."""
    seen: dict[int, int] = {}
    for _, key in ngram_occurrences(token_ids, positions, counted, k, pack_bits):
        seen[key] = seen.get(key, 0) + 1
    keys = np.array(sorted(seen), dtype=np.uint64)
    return SeenTable(keys, np.array([seen[int(key)] for key in keys], dtype=np.int64), k)
