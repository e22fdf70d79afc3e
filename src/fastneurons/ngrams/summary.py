"""Numba kernels of the bounded n-gram mode: the Misra-Gries prune of per-neuron summaries (pass 1)
and the exact count of candidate (n-gram, neuron) pairs (pass 2). docs/bounded-ngrams.md has the proofs.

Like ``kernels.py``: no validation, no allocation policy (``bounded.py`` wraps them). Tables are the
usual parallel arrays ``key uint64, neuron uint32, count int64`` sorted by ``(key, neuron)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from fastneurons.ngrams.kernels import popcount

ONE = np.uint64(1)
ZERO = np.uint64(0)


@njit(cache=True, nogil=True)
def add_mass(neuron, count, mass):
    """``mass[n] += sum of count over rows of neuron n`` (A_k(n) of the rows given)."""
    for i in range(neuron.size):
        mass[np.int64(neuron[i])] += count[i]


@njit(cache=True, nogil=True)
def prune_to_capacity(neuron, count, num_neurons, capacity, delta):
    """Misra-Gries merge step, in place: for every neuron with more than ``capacity`` rows, subtract
    its (capacity+1)-th largest count ``s`` from each of its rows and add ``s`` to ``delta[n]``.

    Returns the mask of rows still positive (at most ``capacity`` per neuron). Each row loses at most
    ``s`` of its true count (it keeps ``count - s`` or is dropped with ``count <= s``)."""
    sizes = np.zeros(num_neurons + 1, dtype=np.int64)
    for i in range(neuron.size):
        sizes[np.int64(neuron[i]) + 1] += 1
    keep = np.ones(neuron.size, dtype=np.bool_)
    over = 0
    for n in range(num_neurons):
        if sizes[n + 1] > capacity:
            over += 1
    if over == 0:
        return keep
    offsets = np.zeros(num_neurons + 1, dtype=np.int64)
    for n in range(num_neurons):
        offsets[n + 1] = offsets[n] + (sizes[n + 1] if sizes[n + 1] > capacity else 0)
    gathered = np.empty(offsets[num_neurons], dtype=np.int64)
    fill = offsets[:-1].copy()
    for i in range(neuron.size):
        n = np.int64(neuron[i])
        if sizes[n + 1] > capacity:
            gathered[fill[n]] = count[i]
            fill[n] += 1
    cut = np.zeros(num_neurons, dtype=np.int64)
    for n in range(num_neurons):
        lo, hi = offsets[n], offsets[n + 1]
        if hi > lo:
            at = hi - lo - capacity - 1  # the (capacity+1)-th largest sits here in ascending order
            cut[n] = np.partition(gathered[lo:hi], at)[at]
            delta[n] += cut[n]
    for i in range(neuron.size):
        s = cut[np.int64(neuron[i])]
        if s > 0:
            count[i] -= s
            keep[i] = count[i] > 0
    return keep


@njit(cache=True, nogil=True)
def _find(keys, lo, hi, key):
    """First index in [lo, hi) with keys[i] >= key."""
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _find_neuron(neurons, lo, hi, neuron):
    """Index of ``neuron`` in the sorted ``neurons[lo:hi]``, or -1."""
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if neurons[mid] < neuron:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and neurons[lo] == neuron:
        return lo
    return -1


@njit(cache=True, nogil=True)
def count_candidates(bits, rows, keys, row_seen, cand_key, cand_neuron, cand_count, rare_limit,
                     rare_mask, out_key, out_neuron):
    """Pass 2 over one chunk of one order: the exact count of the candidate pairs; returns rare rows.

    For each row ``rows[i]`` (k-gram ``keys[i]``, seen ``row_seen[i]`` times in the corpus) and each
    neuron n active there: if ``(key, n)`` is a candidate pair (``cand_key/cand_neuron`` sorted by
    (key, neuron)), its ``cand_count`` += 1; else if n is in ``rare_mask`` (one row of words) and
    ``row_seen[i] <= rare_limit[n]``, the pair is written to ``out_key/out_neuron`` (sized by
    ``rare_row_events``). Returns the number of rare rows written."""
    n_words = bits.shape[1]
    j = 0
    for i in range(rows.size):
        r = rows[i]
        key = keys[i]
        lo = _find(cand_key, 0, cand_key.size, key)
        hi = lo
        while hi < cand_key.size and cand_key[hi] == key:
            hi += 1
        seen = row_seen[i]
        for w in range(n_words):
            x = bits[r, w]
            while x != ZERO:
                bit = np.int64(trailing_zeros(x))
                n = np.uint32(64 * w + bit)
                x &= x - ONE
                at = _find_neuron(cand_neuron, lo, hi, n) if hi > lo else -1
                if at >= 0:
                    cand_count[at] += 1
                elif ((rare_mask[w] >> np.uint64(bit)) & ONE) != ZERO and seen <= rare_limit[n]:
                    out_key[j] = key
                    out_neuron[j] = n
                    j += 1
    return j


@njit(cache=True, nogil=True)
def rare_row_events(bits, rows, rare_mask):
    """Events of ``rows`` among the neurons of ``rare_mask`` (an upper bound of rare pairs)."""
    total = 0
    for i in range(rows.size):
        r = rows[i]
        for w in range(bits.shape[1]):
            total += np.int64(popcount(bits[r, w] & rare_mask[w]))
    return total
