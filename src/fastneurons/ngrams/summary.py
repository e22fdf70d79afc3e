"""Numba kernels of the bounded n-gram mode: the Misra-Gries fold of per-neuron summaries (pass 1)
and the exact count of candidate (n-gram, neuron) pairs (pass 2). docs/bounded-ngrams.md has the proofs.

Like ``kernels.py``: no validation, no allocation policy (``bounded.py`` wraps them). Tables are the
usual parallel arrays ``key uint64, neuron uint32, count int64`` sorted by ``(key, neuron)``; the fold
works on rows grouped by neuron (``offsets [F+1]``, keys ascending within a neuron), where each
neuron's merge and prune touch only its own few thousand rows and neurons run in parallel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
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
def _fold_neuron(n, held_offsets, held_key, held_count, new_offsets, new_key, new_count, capacity, delta,
                 out_key, out_count):
    """Merge neuron n's held rows with its new rows into ``out[held_offsets[n] + new_offsets[n]:]``;
    past ``capacity`` rows, subtract the (capacity+1)-th largest count ``s`` from each, drop rows that
    reach 0 and add ``s`` to ``delta[n]``. Returns the rows written."""
    i, i_end = held_offsets[n], held_offsets[n + 1]
    j, j_end = new_offsets[n], new_offsets[n + 1]
    start = i + j
    o = start
    while i < i_end and j < j_end:
        if held_key[i] < new_key[j]:
            out_key[o], out_count[o] = held_key[i], held_count[i]
            i += 1
        elif new_key[j] < held_key[i]:
            out_key[o], out_count[o] = new_key[j], new_count[j]
            j += 1
        else:
            out_key[o], out_count[o] = held_key[i], held_count[i] + new_count[j]
            i += 1
            j += 1
        o += 1
    while i < i_end:
        out_key[o], out_count[o] = held_key[i], held_count[i]
        i += 1
        o += 1
    while j < j_end:
        out_key[o], out_count[o] = new_key[j], new_count[j]
        j += 1
        o += 1
    size = o - start
    if size <= capacity:
        return size
    at = size - capacity - 1  # the (capacity+1)-th largest sits here in ascending order
    cut = np.partition(out_count[start:o].copy(), at)[at]
    delta[n] += cut
    w = start
    for r in range(start, o):
        left = out_count[r] - cut
        if left > 0:
            out_key[w], out_count[w] = out_key[r], left
            w += 1
    return w - start


@njit(cache=True, nogil=True, parallel=True)
def fold_by_neuron(held_offsets, held_key, held_count, new_offsets, new_key, new_count, capacity, delta,
                   out_key, out_count, sizes):
    """Misra-Gries merge of two row sets grouped by neuron (keys ascending within a neuron), one
    neuron per iteration (``prange``): ``sizes[n]`` rows of neuron n land at ``out[held_offsets[n] +
    new_offsets[n]:]`` (``out`` sized held + new); see ``_fold_neuron``. Each row loses at most the
    ``s`` of its neuron."""
    for n in prange(sizes.size):
        sizes[n] = _fold_neuron(n, held_offsets, held_key, held_count, new_offsets, new_key, new_count,
                                capacity, delta, out_key, out_count)


@njit(cache=True, nogil=True)
def fold_by_neuron_serial(held_offsets, held_key, held_count, new_offsets, new_key, new_count, capacity,
                          delta, out_key, out_count, sizes):
    """``fold_by_neuron`` on one thread (small folds, where a parallel launch costs more)."""
    for n in range(sizes.size):
        sizes[n] = _fold_neuron(n, held_offsets, held_key, held_count, new_offsets, new_key, new_count,
                                capacity, delta, out_key, out_count)


@njit(cache=True, nogil=True, parallel=True)
def compact_by_neuron(starts, sizes, offsets, key, count, out_key, out_count):
    """Copy neuron n's ``sizes[n]`` rows from ``starts[n]`` to ``offsets[n]`` of the out arrays."""
    for n in prange(sizes.size):
        for r in range(sizes[n]):
            out_key[offsets[n] + r] = key[starts[n] + r]
            out_count[offsets[n] + r] = count[starts[n] + r]


@njit(cache=True, nogil=True)
def regroup_by_neuron(key, neuron, count, num_neurons):
    """Rows sorted by (key, neuron) -> ``(offsets [F+1], key, count)`` grouped by neuron, keys still
    ascending within a neuron (a stable counting sort: one pass to size, one to scatter)."""
    offsets = np.zeros(num_neurons + 1, dtype=np.int64)
    for i in range(neuron.size):
        offsets[np.int64(neuron[i]) + 1] += 1
    for n in range(num_neurons):
        offsets[n + 1] += offsets[n]
    fill = offsets[:-1].copy()
    out_key = np.empty(key.size, dtype=np.uint64)
    out_count = np.empty(key.size, dtype=np.int64)
    for i in range(neuron.size):
        n = np.int64(neuron[i])
        out_key[fill[n]] = key[i]
        out_count[fill[n]] = count[i]
        fill[n] += 1
    return offsets, out_key, out_count


RADIX_BITS = 11  # digits of the key sort: 2048 buckets (their counters and write heads stay in L1)


@njit(cache=True, nogil=True)
def stable_key_order(key):
    """Indices that sort ``key`` stably (ties keep their order): an LSD radix sort, one pass per
    ``RADIX_BITS`` digit up to the largest key's highest bit (n-gram keys use k x pack_bits bits)."""
    n = key.size
    order = np.arange(n, dtype=np.int64)
    if n < 2:
        return order
    keys = key.copy()
    top = keys.max()
    spare_order = np.empty(n, dtype=np.int64)
    spare_keys = np.empty(n, dtype=np.uint64)
    buckets = 1 << RADIX_BITS
    mask = np.uint64(buckets - 1)
    shift = 0
    while shift < 64 and (shift == 0 or (top >> np.uint64(shift)) != ZERO):
        heads = np.zeros(buckets + 1, dtype=np.int64)
        for i in range(n):
            heads[np.int64((keys[i] >> np.uint64(shift)) & mask) + 1] += 1
        for d in range(buckets):
            heads[d + 1] += heads[d]
        for i in range(n):
            d = np.int64((keys[i] >> np.uint64(shift)) & mask)
            spare_keys[heads[d]] = keys[i]
            spare_order[heads[d]] = order[i]
            heads[d] += 1
        keys, spare_keys = spare_keys, keys
        order, spare_order = spare_order, order
        shift += RADIX_BITS
    return order


@njit(cache=True, nogil=True)
def neuron_of_rows(offsets):
    """uint32 neuron of every row of a by-neuron layout."""
    out = np.empty(offsets[-1], dtype=np.uint32)
    for n in range(offsets.size - 1):
        for r in range(offsets[n], offsets[n + 1]):
            out[r] = n
    return out


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
