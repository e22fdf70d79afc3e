"""Numba kernels for n-gram tables: per-key neuron counts from bit rows, and merges of sorted tables.

Kernels do no validation and no allocation policy; the wrappers in ``accumulator.py`` do. All are
``nogil`` so the runner can call them from a worker thread, and ``cache=True`` so they compile once.
A "table" is three parallel arrays ``key uint64, neuron uint32, count int64`` sorted by
``(key, neuron)`` with no duplicates; a seen table uses an all-zero neuron column here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

ONE = np.uint64(1)
ZERO = np.uint64(0)


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of a uint64 (LLVM ctpop)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(cache=True, nogil=True)
def group_neuron_sizes_serial(bits, rows, group_starts, g_lo, g_hi, sizes):
    """For groups g in [g_lo, g_hi) (rows[group_starts[g]:group_starts[g+1]] share one key), write
    into ``sizes[g]`` how many distinct neurons fire in the group."""
    n_words = bits.shape[1]
    union = np.empty(n_words, dtype=np.uint64)
    for g in range(g_lo, g_hi):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        total = 0
        if hi - lo == 1:
            r = rows[lo]
            for w in range(n_words):
                total += np.int64(popcount(bits[r, w]))
        else:
            union[:] = ZERO
            for i in range(lo, hi):
                r = rows[i]
                for w in range(n_words):
                    union[w] |= bits[r, w]
            for w in range(n_words):
                total += np.int64(popcount(union[w]))
        sizes[g] = total


@njit(cache=True, nogil=True)
def fill_group_neuron_counts_serial(bits, rows, group_starts, g_lo, g_hi, group_keys, offsets,
                                    out_key, out_neuron, out_count):
    """For groups g in [g_lo, g_hi), write the group's (key, neuron, count) triplets, neurons
    ascending, at ``offsets[g]``."""
    n_words = bits.shape[1]
    union = np.empty(n_words, dtype=np.uint64)
    scratch = np.zeros(n_words * 64, dtype=np.int64)
    for g in range(g_lo, g_hi):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        key = group_keys[g]
        j = offsets[g]
        if hi - lo == 1:  # most 2- and 3-grams occur once per chunk: emit the bits directly
            r = rows[lo]
            for w in range(n_words):
                x = bits[r, w]
                while x != ZERO:
                    out_key[j] = key
                    out_neuron[j] = np.uint32(64 * w + np.int64(trailing_zeros(x)))
                    out_count[j] = 1
                    j += 1
                    x &= x - ONE
            continue
        union[:] = ZERO
        for i in range(lo, hi):
            r = rows[i]
            for w in range(n_words):
                x = bits[r, w]
                union[w] |= x
                while x != ZERO:
                    scratch[64 * w + np.int64(trailing_zeros(x))] += 1
                    x &= x - ONE
        for w in range(n_words):
            x = union[w]
            while x != ZERO:
                n = 64 * w + np.int64(trailing_zeros(x))
                out_key[j] = key
                out_neuron[j] = np.uint32(n)
                out_count[j] = scratch[n]
                scratch[n] = 0
                j += 1
                x &= x - ONE


@njit(cache=True, nogil=True, parallel=True)
def group_neuron_sizes(bits, rows, group_starts, block_starts, sizes):
    """``group_neuron_sizes_serial`` over blocks of groups in parallel."""
    for block in prange(block_starts.size - 1):
        group_neuron_sizes_serial(bits, rows, group_starts, block_starts[block],
                                  block_starts[block + 1], sizes)


@njit(cache=True, nogil=True, parallel=True)
def fill_group_neuron_counts(bits, rows, group_starts, block_starts, group_keys, offsets,
                             out_key, out_neuron, out_count):
    """``fill_group_neuron_counts_serial`` over blocks of groups in parallel."""
    for block in prange(block_starts.size - 1):
        fill_group_neuron_counts_serial(bits, rows, group_starts, block_starts[block],
                                        block_starts[block + 1], group_keys, offsets,
                                        out_key, out_neuron, out_count)


@njit(cache=True, nogil=True)
def lower_bound(keys, neurons, lo, hi, key, neuron):
    """First index i in [lo, hi) with (keys[i], neurons[i]) >= (key, neuron)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < key or (keys[mid] == key and neurons[mid] < neuron):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def merge_part(ak, an, ac, a_lo, a_hi, bk, bn, bc, b_lo, b_hi, out_k, out_n, out_c, o, write):
    """Merge a[a_lo:a_hi] and b[b_lo:b_hi] summing equal (key, neuron); return rows produced.

    With ``write`` False nothing is written (sizing pass)."""
    i = a_lo
    j = b_lo
    start = o
    while i < a_hi and j < b_hi:
        if ak[i] < bk[j] or (ak[i] == bk[j] and an[i] < bn[j]):
            if write:
                out_k[o] = ak[i]
                out_n[o] = an[i]
                out_c[o] = ac[i]
            i += 1
        elif ak[i] == bk[j] and an[i] == bn[j]:
            if write:
                out_k[o] = ak[i]
                out_n[o] = an[i]
                out_c[o] = ac[i] + bc[j]
            i += 1
            j += 1
        else:
            if write:
                out_k[o] = bk[j]
                out_n[o] = bn[j]
                out_c[o] = bc[j]
            j += 1
        o += 1
    if write:
        for t in range(a_hi - i):
            out_k[o + t] = ak[i + t]
            out_n[o + t] = an[i + t]
            out_c[o + t] = ac[i + t]
    o += a_hi - i
    if write:
        for t in range(b_hi - j):
            out_k[o + t] = bk[j + t]
            out_n[o + t] = bn[j + t]
            out_c[o + t] = bc[j + t]
    o += b_hi - j
    return o - start


@njit(cache=True, nogil=True, parallel=True)
def merge_tables_sorted(ak, an, ac, bk, bn, bc, parts):
    """Merge two sorted, duplicate-free tables into one, summing counts of equal (key, neuron).

    Splits ``a`` into ``parts`` equal slices at (key, neuron) pivots so the parts merge in parallel;
    call with ``a`` the longer table for balance."""
    na = ak.size
    nb = bk.size
    a_split = np.empty(parts + 1, dtype=np.int64)
    b_split = np.empty(parts + 1, dtype=np.int64)
    for p in range(parts + 1):
        i = p * na // parts
        a_split[p] = i
        if p == 0:
            b_split[p] = 0
        elif i >= na:
            b_split[p] = nb
        else:
            b_split[p] = lower_bound(bk, bn, 0, nb, ak[i], an[i])
    sizes = np.zeros(parts + 1, dtype=np.int64)
    for p in prange(parts):
        sizes[p + 1] = merge_part(ak, an, ac, a_split[p], a_split[p + 1], bk, bn, bc,
                                  b_split[p], b_split[p + 1], ak, an, ac, 0, False)
    offsets = np.cumsum(sizes)
    total = offsets[parts]
    out_k = np.empty(total, dtype=ak.dtype)
    out_n = np.empty(total, dtype=an.dtype)
    out_c = np.empty(total, dtype=ac.dtype)
    for p in prange(parts):
        merge_part(ak, an, ac, a_split[p], a_split[p + 1], bk, bn, bc, b_split[p], b_split[p + 1],
                   out_k, out_n, out_c, offsets[p], True)
    return out_k, out_n, out_c


@njit(cache=True, nogil=True)
def merge_tables_sorted_serial(ak, an, ac, bk, bn, bc):
    """Single-threaded ``merge_tables_sorted`` (no parallel launch cost, for small tables)."""
    total = merge_part(ak, an, ac, 0, ak.size, bk, bn, bc, 0, bk.size, ak, an, ac, 0, False)
    out_k = np.empty(total, dtype=ak.dtype)
    out_n = np.empty(total, dtype=an.dtype)
    out_c = np.empty(total, dtype=ac.dtype)
    merge_part(ak, an, ac, 0, ak.size, bk, bn, bc, 0, bk.size, out_k, out_n, out_c, 0, True)
    return out_k, out_n, out_c


@njit(cache=True, nogil=True)
def row_popcounts(bits):
    """Set bits of each row of a uint64 ``[N, W]`` array (active neurons per token)."""
    out = np.zeros(bits.shape[0], dtype=np.int64)
    for r in range(bits.shape[0]):
        total = 0
        for w in range(bits.shape[1]):
            total += np.int64(popcount(bits[r, w]))
        out[r] = total
    return out


@njit(cache=True, nogil=True)
def order_by_neuron(neuron, num_neurons):
    """Counting sort: ``(offsets [F+1], order)`` with ``order`` listing rows neuron by neuron, in
    their original (key) order within a neuron."""
    offsets = np.zeros(num_neurons + 1, dtype=np.int64)
    for i in range(neuron.size):
        offsets[np.int64(neuron[i]) + 1] += 1
    for n in range(num_neurons):
        offsets[n + 1] += offsets[n]
    fill = offsets[:-1].copy()
    order = np.empty(neuron.size, dtype=np.int64)
    for i in range(neuron.size):
        n = np.int64(neuron[i])
        order[fill[n]] = i
        fill[n] += 1
    return offsets, order


@njit(cache=True, nogil=True, parallel=True)
def sort_segments_by_count_descending(order, count, offsets):
    """Within each ``order[offsets[n]:offsets[n+1]]``, stable-sort rows by count, largest first."""
    for n in prange(offsets.size - 1):
        lo = offsets[n]
        hi = offsets[n + 1]
        if hi - lo > 1:
            segment = order[lo:hi].copy()
            by_count = np.argsort(-count[segment], kind="mergesort")
            order[lo:hi] = segment[by_count]
