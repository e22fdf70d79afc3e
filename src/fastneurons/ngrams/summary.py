"""Numba kernels of the bounded n-gram mode: pending bits to rows by neuron and the Misra-Gries fold
of per-neuron summaries (pass 1), the exact count of candidate (n-gram, neuron) pairs (pass 2).
docs/bounded-ngrams.md has the proofs.

Like ``kernels.py``: no validation, no allocation policy (``by_neuron.py`` and ``bounded.py`` wrap
them). Tables are the usual parallel arrays ``key uint64, neuron uint32, count int64`` sorted by
``(key, neuron)``; the fold works on rows grouped by neuron (neuron n's rows at ``starts[n]:ends[n]``,
keys ascending), where each neuron's merge and prune touch only its own few thousand rows and
neurons run in parallel.
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
def add_mass_by_neuron(starts, ends, count, mass):
    """``mass[n] += sum of count[starts[n]:ends[n]]`` (neuron n's rows of a by-neuron layout)."""
    for n in range(starts.size):
        for r in range(starts[n], ends[n]):
            mass[n] += count[r]


SELECT_BINS = 256  # counts below this are ranked by a histogram; the few above by a partition


@njit(cache=True, nogil=True)
def count_at_rank(count, lo, hi, rank):
    """The (rank+1)-th largest of ``count[lo:hi]`` (positive counts, ``rank < hi - lo``): a histogram
    of the counts below ``SELECT_BINS`` (most of a summary's), a partition of the others only when
    the answer lies among them. The value ``np.partition`` gives, without sorting thousands of rows."""
    hist = np.zeros(SELECT_BINS + 1, dtype=np.int64)
    for r in range(lo, hi):
        hist[min(count[r], SELECT_BINS)] += 1
    if hist[SELECT_BINS] > rank:
        big = np.empty(hist[SELECT_BINS], dtype=np.int64)
        b = 0
        for r in range(lo, hi):
            if count[r] >= SELECT_BINS:
                big[b] = count[r]
                b += 1
        return np.partition(big, big.size - 1 - rank)[big.size - 1 - rank]
    above = hist[SELECT_BINS]
    for value in range(SELECT_BINS - 1, 0, -1):
        above += hist[value]
        if above > rank:
            return value
    return 0


@njit(cache=True, nogil=True, parallel=True)
def top_sums(starts, ends, count, m, among):
    """For each neuron of the ``among`` mask, the sum of its ``m`` largest counts (of its rows
    ``count[starts[n]:ends[n]]``; all of them when it has at most ``m``); 0 elsewhere. By rank
    (``count_at_rank``), without sorting."""
    out = np.zeros(starts.size, dtype=np.int64)
    for n in prange(starts.size):
        lo, hi = starts[n], ends[n]
        if not among[n] or m <= 0:
            continue
        if hi - lo <= m:
            for r in range(lo, hi):
                out[n] += count[r]
            continue
        at = count_at_rank(count, lo, hi, m - 1)  # the m-th largest: rows above it, then ties at it
        above, total = 0, 0
        for r in range(lo, hi):
            if count[r] > at:
                above += 1
                total += count[r]
        out[n] = total + (m - above) * at
    return out


@njit(cache=True, nogil=True)
def _merge_runs(a_key, a_count, i, i_end, b_key, b_count, j, j_end, out_key, out_count, o):
    """Rows ``a[i:i_end]`` and ``b[j:j_end]`` (keys ascending) merged in key order, equal keys summed,
    at ``out[o:]``; returns the end."""
    while i < i_end and j < j_end:
        if a_key[i] < b_key[j]:
            out_key[o], out_count[o] = a_key[i], a_count[i]
            i += 1
        elif b_key[j] < a_key[i]:
            out_key[o], out_count[o] = b_key[j], b_count[j]
            j += 1
        else:
            out_key[o], out_count[o] = a_key[i], a_count[i] + b_count[j]
            i += 1
            j += 1
        o += 1
    for r in range(i, i_end):
        out_key[o], out_count[o] = a_key[r], a_count[r]
        o += 1
    for r in range(j, j_end):
        out_key[o], out_count[o] = b_key[r], b_count[r]
        o += 1
    return o


@njit(cache=True, nogil=True)
def _prune_into(merged_key, merged, size, capacity, out_key, out_count, o):
    """Misra-Gries prune of ``size`` merged rows: past ``capacity`` rows the (capacity+1)-th largest
    count ``s`` is subtracted from every row and rows reaching 0 go; the rest are written at
    ``out[o:]``. Returns (end, s)."""
    cut = count_at_rank(merged, 0, size, capacity) if size > capacity else 0
    for r in range(size):
        if merged[r] > cut:
            out_key[o], out_count[o] = merged_key[r], merged[r] - cut
            o += 1
    return o, cut


@njit(cache=True, nogil=True, parallel=True)
def fold_by_neuron(held_starts, held_ends, held_key, held_count, new_starts, new_ends, new_key, new_count,
                   capacity, delta, slots, slot_key, slot_count):
    """Misra-Gries merge of two row sets grouped by neuron (keys ascending within a neuron), one
    neuron per iteration in parallel, into neuron n's slot from ``slots[n]`` (room for min(held + new,
    capacity) rows): equal keys summed; past ``capacity`` rows the (capacity+1)-th largest count ``s``
    is subtracted from every row (rows reaching 0 go) and added to ``delta[n]``. A neuron that cannot
    pass ``capacity`` merges straight into its slot, the others through a scratch array. Returns the
    rows written per slot (int64 [F])."""
    num_neurons = delta.size
    sizes = np.zeros(num_neurons, dtype=np.int64)
    for n in prange(num_neurons):
        i, i_end, j, j_end = held_starts[n], held_ends[n], new_starts[n], new_ends[n]
        if i_end - i + j_end - j <= capacity:
            sizes[n] = _merge_runs(held_key, held_count, i, i_end, new_key, new_count, j, j_end, slot_key,
                                   slot_count, slots[n]) - slots[n]
            continue
        merged_key = np.empty(i_end - i + j_end - j, dtype=np.uint64)
        merged = np.empty(i_end - i + j_end - j, dtype=np.int64)
        size = _merge_runs(held_key, held_count, i, i_end, new_key, new_count, j, j_end, merged_key, merged, 0)
        end, cut = _prune_into(merged_key, merged, size, capacity, slot_key, slot_count, slots[n])
        delta[n] += cut
        sizes[n] = end - slots[n]
    return sizes


@njit(cache=True, nogil=True, parallel=True)
def fold_in_place(starts, sizes, key, count, capacity, new_starts, new_ends, new_key, new_count, delta, blocks):
    """``fold_by_neuron`` into fixed slots: neuron n's held rows are ``key/count[starts[n]:][:sizes[n]]``
    in a slot of ``capacity`` rows; its new rows are merged with them into a scratch array and the
    result, pruned to ``capacity`` rows, goes back into the slot (``sizes`` updated). Neurons run in
    ``blocks`` blocks in parallel, one scratch array a block."""
    num_neurons = sizes.size
    for b in prange(blocks):
        lo, hi = b * num_neurons // blocks, (b + 1) * num_neurons // blocks
        most = 0
        for n in range(lo, hi):
            most = max(most, sizes[n] + new_ends[n] - new_starts[n])
        merged_key = np.empty(most, dtype=np.uint64)
        merged = np.empty(most, dtype=np.int64)
        for n in range(lo, hi):
            if new_ends[n] > new_starts[n]:
                size = _merge_runs(key, count, starts[n], starts[n] + sizes[n], new_key, new_count, new_starts[n],
                                   new_ends[n], merged_key, merged, 0)
                end, cut = _prune_into(merged_key, merged, size, capacity, key, count, starts[n])
                delta[n] += cut
                sizes[n] = end - starts[n]


@njit(cache=True, nogil=True, parallel=True)
def copy_rows(starts, ends, key, count, to, out_key, out_count):
    """Copy neuron n's rows ``key/count[starts[n]:ends[n]]`` to ``out_*[to[n]:]``."""
    for n in prange(starts.size):
        size = ends[n] - starts[n]
        out_key[to[n]:to[n] + size] = key[starts[n]:ends[n]]
        out_count[to[n]:to[n] + size] = count[starts[n]:ends[n]]


@njit(cache=True, nogil=True)
def untouched_array(size, dtype_example):
    """``np.empty(size)`` of the example's dtype, allocated by numba: no huge pages are asked for
    (numpy asks for them on large arrays), so only the 4 KiB pages rows land on are ever backed."""
    return np.empty(size, dtype=dtype_example.dtype)


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


NO_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)  # no n-gram key has all 64 bits set (keys use at most 63)


@njit(cache=True, nogil=True, parallel=True)
def column_counts(bits, num_neurons, block_words):
    """Set bits of each neuron over all rows of ``bits`` (int64 [F]); blocks of ``block_words`` words
    run in parallel."""
    n_words = bits.shape[1]
    counts = np.zeros(n_words * 64, dtype=np.int64)
    for b in prange((n_words + block_words - 1) // block_words):
        for r in range(bits.shape[0]):
            for w in range(b * block_words, min(n_words, (b + 1) * block_words)):
                x = bits[r, w]
                while x != ZERO:
                    counts[64 * w + np.int64(trailing_zeros(x))] += 1
                    x &= x - ONE
    return counts[:num_neurons]


@njit(cache=True, nogil=True, parallel=True)
def rows_by_neuron(sorted_bits, keys, slots, block_words, slot_key, slot_count):
    """The (key, neuron) counts of the set bits of ``sorted_bits`` (row i has n-gram ``keys[i]``, keys
    ascending), grouped by neuron with keys ascending: neuron n's rows land in its slot from
    ``slots[n]`` (room for its set bits, ``slots[n+1]`` on) of ``slot_key/slot_count``, a new (key, 1)
    when its key changes, else +1 on its last row. Returns where each slot's rows end (int64 [F]).

    Blocks of ``block_words`` words (64 neurons each) run in parallel, each reading its slice of every
    row; the writes of a block go to its own neurons' slots. A key on one row only (most 2- and
    3-grams of a fold) appends without looking at ``last``: keys ascend, so no neuron can have met it;
    ``last`` is only kept inside runs of equal keys."""
    num_neurons = slots.size - 1
    n_words = sorted_bits.shape[1]
    heads = np.zeros(n_words * 64, dtype=np.int64)
    heads[:num_neurons] = slots[:-1]
    last = np.full(n_words * 64, NO_KEY, dtype=np.uint64)
    for b in prange((n_words + block_words - 1) // block_words):
        w_lo, w_hi = b * block_words, min(n_words, (b + 1) * block_words)
        for i in range(keys.size):
            key = keys[i]
            alone = (i == 0 or keys[i - 1] != key) and (i + 1 == keys.size or keys[i + 1] != key)
            for w in range(w_lo, w_hi):
                x = sorted_bits[i, w]
                while x != ZERO:
                    n = 64 * w + np.int64(trailing_zeros(x))
                    x &= x - ONE
                    if alone or last[n] != key:
                        if not alone:
                            last[n] = key
                        slot_key[heads[n]] = key
                        slot_count[heads[n]] = 1
                        heads[n] += 1
                    else:
                        slot_count[heads[n] - 1] += 1
    return heads[:num_neurons]


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
