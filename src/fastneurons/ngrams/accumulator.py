"""In-memory n-gram tables of one layer (``ngram_active[k]``) and of the corpus (``ngram_seen[k]``).

``add`` keeps the compact inputs (bit rows and keys); ``tables`` turns everything pending into one
sorted run per order with the numba kernels. Runs from successive ``tables`` calls are merged
LSM-style (a run is merged into its predecessor while the predecessor is not much larger), so
alternating adds and ``tables`` is never quadratic either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fastneurons.ngrams import kernels
from fastneurons.ngrams.keys import (check_orders, check_pack_bits, check_token_ids,
                                     ngram_rows_and_keys)

EMPTY_KEYS = np.zeros(0, dtype=np.uint64)
EMPTY_COUNTS = np.zeros(0, dtype=np.int64)
EMPTY_NEURONS = np.zeros(0, dtype=np.uint32)
EMPTY_ROWS = np.zeros(0, dtype=np.int64)
MERGE_RATIO = 2  # merge the newest run into its predecessor while predecessor <= ratio * newest
# below these sizes the single-threaded kernels win: a parallel launch can cost milliseconds
PARALLEL_MIN_WORDS = 1 << 18  # bit-row words scanned by one chunk_table
PARALLEL_MIN_ROWS = 1 << 17  # rows of the larger table in one merge


@dataclass
class Table:
    """``ngram_active[order]``: (key, neuron) -> count, sorted by (key, neuron), no duplicates."""

    key: np.ndarray  # uint64 [M]
    neuron: np.ndarray  # uint32 [M]
    count: np.ndarray  # int64 [M]
    order: int = 0

    @classmethod
    def empty(cls, order: int = 0) -> Table:
        """A table with no rows."""
        return cls(EMPTY_KEYS, EMPTY_NEURONS, EMPTY_COUNTS, order)

    @property
    def rows(self) -> int:
        """Number of (key, neuron) entries."""
        return int(self.key.size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the three arrays."""
        return int(self.key.nbytes + self.neuron.nbytes + self.count.nbytes)


@dataclass
class SeenTable:
    """``ngram_seen[order]``: key -> count, sorted by key, no duplicates."""

    key: np.ndarray  # uint64 [M]
    count: np.ndarray  # int64 [M]
    order: int = 0

    @classmethod
    def empty(cls, order: int = 0) -> SeenTable:
        """A table with no rows."""
        return cls(EMPTY_KEYS, EMPTY_COUNTS, order)

    @property
    def rows(self) -> int:
        """Number of distinct keys."""
        return int(self.key.size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the two arrays."""
        return int(self.key.nbytes + self.count.nbytes)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Counts of ``keys`` (0 for keys not in the table), int64."""
        keys = np.asarray(keys, dtype=np.uint64)
        at = np.searchsorted(self.key, keys)
        found = at < self.key.size
        found[found] = self.key[at[found]] == keys[found]
        out = np.zeros(keys.shape, dtype=np.int64)
        out[found] = self.count[at[found]]
        return out


def check_chunk(token_ids, positions, counted, bits=None, num_neurons=None):
    """Validate and flatten one chunk; return ``(token_ids int64, positions int32, counted bool, bits)``.

    Checks the row layout the n-gram code relies on: ``positions[r] >= 1`` implies
    ``positions[r-1] == positions[r] - 1`` (sequences laid out row-major, right padded)."""
    token_ids = np.ascontiguousarray(token_ids).reshape(-1)
    positions = np.ascontiguousarray(positions).reshape(-1)
    counted = np.ascontiguousarray(counted).reshape(-1)
    if token_ids.dtype.kind not in "iu":
        raise TypeError(f"token_ids must be an integer array, got {token_ids.dtype}")
    if positions.dtype.kind not in "iu":
        raise TypeError(f"positions must be an integer array, got {positions.dtype}")
    if counted.dtype != np.bool_:
        raise TypeError(f"counted must be a bool array, got {counted.dtype}")
    n = token_ids.size
    if positions.size != n or counted.size != n:
        raise ValueError(f"token_ids, positions and counted must have the same number of rows, got "
                         f"{n}, {positions.size}, {counted.size}")
    token_ids = token_ids.astype(np.int64, copy=False)
    positions = positions.astype(np.int32, copy=False)
    if n:
        if counted[positions < 0].any():
            raise ValueError("counted marks a padding row (position -1); padding is never counted")
        later = np.flatnonzero(positions >= 1)
        if later.size and (later[0] == 0 or (positions[later - 1] != positions[later] - 1).any()):
            raise ValueError("rows must be sequences laid out row-major and right padded: a row with "
                             "position p >= 1 must follow the row with position p - 1")
    if bits is None:
        return token_ids, positions, counted, None
    bits = np.ascontiguousarray(bits)
    if bits.dtype == np.int64:
        bits = bits.view(np.uint64)
    if bits.dtype != np.uint64:
        raise TypeError(f"bits must be uint64 (or int64 viewed as uint64), got {bits.dtype}")
    n_words = (int(num_neurons) + 63) // 64
    if bits.ndim < 2 or bits.shape[-1] != n_words or bits.size != n * n_words:
        raise ValueError(f"bits must have shape [N, ceil(F/64)] = [{n}, {n_words}] for F={num_neurons}, "
                         f"got {bits.shape}")
    bits = bits.reshape(n, n_words)
    spare = num_neurons % 64
    if n and spare and (bits[:, -1] >> np.uint64(spare)).any():
        raise ValueError(f"bits has set bits beyond neuron {num_neurons - 1} (F={num_neurons}); "
                         "unused high bits of the last word must be zero")
    return token_ids, positions, counted, bits


def chunk_rows(token_ids, positions, counted, orders, pack_bits: int) -> tuple:
    """``(used, ({k: rows}, {k: keys}))`` of one checked chunk: the rows some order counts (every
    order's rows are among them: counted, position >= 1), and each order's rows as indices into
    ``used`` (ascending) with their n-gram keys."""
    used = np.flatnonzero(counted & (positions >= 1))
    rows, keys = {}, {}
    for k in orders:
        chunk_rows_k, keys[k] = ngram_rows_and_keys(token_ids, positions, counted, k, pack_bits)
        rows[k] = np.searchsorted(used, chunk_rows_k).astype(np.int64)
    return used, (rows, keys)


@dataclass
class RawRows:
    """Events not yet expanded into tables, as the n-gram accumulators keep them: the bit rows of the
    tokens some order counts, and each order's rows of them (ascending) with their n-gram keys. A few
    hundred bytes per token, where the tables take ~17 bytes per event."""

    bits: np.ndarray  # uint64 [R, W]
    rows: dict  # {k: int64 [M_k]}, indices into bits
    keys: dict  # {k: uint64 [M_k]}

    @classmethod
    def concat(cls, parts: list) -> RawRows:
        """Several parts as one (rows renumbered)."""
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0] + [part.num_rows for part in parts])
        orders = parts[0].rows.keys()
        return cls(np.concatenate([part.bits for part in parts]),
                   {k: np.concatenate([part.rows[k] + at for part, at in zip(parts, offsets)]) for k in orders},
                   {k: np.concatenate([part.keys[k] for part in parts]) for k in orders})

    @property
    def num_rows(self) -> int:
        return int(self.bits.shape[0])

    def table(self, order: int) -> Table:
        """The exact table of order ``order`` of these events."""
        return chunk_table(self.bits, self.rows[order], self.keys[order], order)


def _parallel_blocks(group_starts: np.ndarray) -> np.ndarray:
    """Split groups into blocks of about equal row counts, several per thread, for prange."""
    n_groups = group_starts.size - 1
    n_rows = int(group_starts[-1])
    n_blocks = max(1, min(n_groups, 16 * numba.get_num_threads()))
    targets = np.arange(n_blocks + 1, dtype=np.int64) * n_rows // n_blocks
    block_starts = np.searchsorted(group_starts, targets, side="left").astype(np.int64)
    block_starts[0], block_starts[-1] = 0, n_groups
    return np.unique(block_starts)


def chunk_table(bits: np.ndarray, rows: np.ndarray, keys: np.ndarray, order: int = 0) -> Table:
    """Table of one chunk: for each key, per-neuron counts of the set bits in its rows of ``bits``."""
    if rows.size == 0:
        return Table.empty(order)
    sort = np.argsort(keys)
    sorted_keys = keys[sort]
    sorted_rows = rows[sort]
    boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    group_starts = np.concatenate(([0], boundaries, [sorted_keys.size])).astype(np.int64)
    group_keys = sorted_keys[group_starts[:-1]]
    n_groups = group_keys.size
    parallel = rows.size * bits.shape[1] >= PARALLEL_MIN_WORDS and numba.get_num_threads() > 1
    block_starts = _parallel_blocks(group_starts) if parallel else None
    sizes = np.empty(n_groups, dtype=np.int64)
    if parallel:
        kernels.group_neuron_sizes(bits, sorted_rows, group_starts, block_starts, sizes)
    else:
        kernels.group_neuron_sizes_serial(bits, sorted_rows, group_starts, 0, n_groups, sizes)
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    key = np.empty(total, dtype=np.uint64)
    neuron = np.empty(total, dtype=np.uint32)
    count = np.empty(total, dtype=np.int64)
    if parallel:
        kernels.fill_group_neuron_counts(bits, sorted_rows, group_starts, block_starts, group_keys,
                                         offsets, key, neuron, count)
    else:
        kernels.fill_group_neuron_counts_serial(bits, sorted_rows, group_starts, 0, n_groups,
                                                group_keys, offsets, key, neuron, count)
    return Table(key, neuron, count, order)


def merge_two(a, b):
    """Merge two sorted tables (both ``Table`` or both ``SeenTable``), summing duplicate entries."""
    if a.rows < b.rows:
        a, b = b, a
    if b.rows == 0:
        return a
    seen = isinstance(a, SeenTable)
    a_neuron = np.zeros(a.rows, dtype=np.uint32) if seen else a.neuron
    b_neuron = np.zeros(b.rows, dtype=np.uint32) if seen else b.neuron
    if a.rows >= PARALLEL_MIN_ROWS and numba.get_num_threads() > 1:
        parts = 4 * numba.get_num_threads()
        key, neuron, count = kernels.merge_tables_sorted(a.key, a_neuron, a.count,
                                                         b.key, b_neuron, b.count, parts)
    else:
        key, neuron, count = kernels.merge_tables_sorted_serial(a.key, a_neuron, a.count,
                                                                b.key, b_neuron, b.count)
    if seen:
        return SeenTable(key, count, a.order)
    return Table(key, neuron, count, a.order)


def merge_many(tables: list):
    """Merge a list of sorted tables of one kind pairwise, smallest first (balanced cost)."""
    if not tables:
        raise ValueError("merge_many needs at least one table")
    pending = sorted(tables, key=lambda t: t.rows)
    while len(pending) > 1:
        merged = merge_two(pending[0], pending[1])
        pending = sorted(pending[2:] + [merged], key=lambda t: t.rows)
    return pending[0]


class _Runs:
    """Sorted runs of one order, merged LSM-style as they arrive."""

    def __init__(self, empty):
        self.empty = empty
        self.runs: list = []

    def push(self, run) -> None:
        if run.rows == 0:
            return
        self.runs.append(run)
        while len(self.runs) >= 2 and self.runs[-2].rows <= MERGE_RATIO * self.runs[-1].rows:
            newest = self.runs.pop()
            self.runs[-1] = merge_two(self.runs[-1], newest)

    def table(self):
        if not self.runs:
            return self.empty
        self.runs = [merge_many(self.runs)]
        return self.runs[0]

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self.runs)


class NgramAccumulator:
    """One layer's ``ngram_active[k]`` tables for the chunks added since the last ``clear``.

    ``add`` only keeps the chunk's bit rows and keys (a few hundred bytes per token, far less than
    the tables they expand to); ``tables`` sorts everything pending by key once and builds each
    order's table in one pass, so no per-chunk merging is needed."""

    def __init__(self, num_neurons: int, orders=(1, 2, 3), pack_bits: int = 16,
                 vocab_size: int | None = None):
        if int(num_neurons) < 1:
            raise ValueError(f"num_neurons must be positive, got {num_neurons}")
        self.num_neurons = int(num_neurons)
        self.orders = check_orders(orders)
        self.pack_bits = check_pack_bits(pack_bits)
        self.vocab_size = vocab_size
        self.clear()

    def add(self, bits, token_ids, positions, counted) -> None:
        """Take one chunk: bits uint64 ``[N, W]``, token_ids ``[N]``, positions int32 ``[N]``,
        counted bool ``[N]`` (``[B, S, ...]`` shapes are flattened). The bit rows are copied."""
        token_ids, positions, counted, bits = check_chunk(token_ids, positions, counted, bits,
                                                          self.num_neurons)
        check_token_ids(token_ids[positions >= 0], self.pack_bits, self.vocab_size)
        used, rows_and_keys = chunk_rows(token_ids, positions, counted, self.orders, self.pack_bits)
        if used.size:
            self.add_raw(RawRows(bits[used], *rows_and_keys))

    def add_raw(self, raw: RawRows) -> None:
        """Take chunks as ``add`` keeps them (what ``drain`` gave, e.g. saved by a snapshot)."""
        if raw.num_rows == 0:
            return
        active_per_row = kernels.row_popcounts(raw.bits)
        for k in self.orders:
            self._pending[k].append((raw.rows[k] + self._pending_rows, raw.keys[k]))
            self._pending_events += int(active_per_row[raw.rows[k]].sum())
        self._pending_bits.append(raw.bits)
        self._pending_rows += raw.num_rows

    def tables(self) -> dict[int, Table]:
        """The merged table of each order (sorted by (key, neuron), no duplicates)."""
        if self._pending_bits:
            bits = np.concatenate(self._pending_bits)
            self._pending_bits = []
            for k in self.orders:
                rows = np.concatenate([local for local, _ in self._pending[k]])
                keys = np.concatenate([keys for _, keys in self._pending[k]])
                self._pending[k] = []
                self._runs[k].push(chunk_table(bits, rows, keys, k))
            self._pending_rows = self._pending_events = 0
        return {k: self._runs[k].table() for k in self.orders}

    def drain(self) -> RawRows:
        """The chunks added since the last ``clear``, unexpanded, and clear. Tables already built
        (``tables``, ``seed``) are not included: call it on an accumulator that holds none."""
        if any(runs.runs for runs in self._runs.values()):
            raise ValueError("drain() takes unexpanded chunks only; this accumulator holds built tables")
        words = (self.num_neurons + 63) // 64
        bits = np.concatenate(self._pending_bits) if self._pending_bits else np.zeros((0, words), np.uint64)
        rows = {k: np.concatenate([local for local, _ in parts]) if parts else EMPTY_ROWS
                for k, parts in self._pending.items()}
        keys = {k: np.concatenate([keys for _, keys in parts]) if parts else EMPTY_KEYS
                for k, parts in self._pending.items()}
        self.clear()
        return RawRows(bits, rows, keys)

    @property
    def events_added(self) -> int:
        """Active (token, neuron) events of the chunks added since the last ``tables`` or ``clear``."""
        return self._pending_events

    def seed(self, tables: dict) -> None:
        """Continue from {k: Table} of earlier chunks (as ``tables`` returned them)."""
        for k, table in tables.items():
            self._runs[k].push(table)

    @property
    def nbytes(self) -> int:
        """Bytes held, plus an upper bound (20 bytes per pending event) of what ``tables`` will add;
        the runner flushes when this passes its budget."""
        pending = sum(array.nbytes for array in self._pending_bits)
        pending += sum(local.nbytes + keys.nbytes for parts in self._pending.values()
                       for local, keys in parts)
        return sum(runs.nbytes for runs in self._runs.values()) + pending + 20 * self._pending_events

    def clear(self) -> None:
        """Drop everything (after the caller has flushed the tables to disk)."""
        self._runs = {k: _Runs(Table.empty(k)) for k in self.orders}
        self._pending = {k: [] for k in self.orders}
        self._pending_bits: list[np.ndarray] = []
        self._pending_rows = 0
        self._pending_events = 0


def count_seen(token_ids, positions, counted, orders=(1, 2, 3), pack_bits: int = 16,
               vocab_size: int | None = None) -> dict[int, SeenTable]:
    """``ngram_seen[k]`` of one chunk (layer independent): k-gram key -> occurrences."""
    return {k: _seen_table(keys, k)
            for k, keys in _chunk_keys(token_ids, positions, counted, orders, pack_bits,
                                       vocab_size).items()}


def _chunk_keys(token_ids, positions, counted, orders, pack_bits, vocab_size) -> dict[int, np.ndarray]:
    orders = check_orders(orders)
    pack_bits = check_pack_bits(pack_bits)
    token_ids, positions, counted, _ = check_chunk(token_ids, positions, counted)
    check_token_ids(token_ids[positions >= 0], pack_bits, vocab_size)
    return {k: ngram_rows_and_keys(token_ids, positions, counted, k, pack_bits)[1] for k in orders}


def _seen_table(keys: np.ndarray, order: int) -> SeenTable:
    unique, counts = np.unique(keys, return_counts=True)
    return SeenTable(unique.astype(np.uint64), counts.astype(np.int64), order)


class SeenAccumulator:
    """``ngram_seen[k]`` tables for the chunks added since the last ``clear`` (keys kept until
    ``tables`` counts them in one sort)."""

    def __init__(self, orders=(1, 2, 3), pack_bits: int = 16, vocab_size: int | None = None):
        self.orders = check_orders(orders)
        self.pack_bits = check_pack_bits(pack_bits)
        self.vocab_size = vocab_size
        self.clear()

    def add(self, token_ids, positions, counted) -> None:
        """Keep one chunk's k-gram keys."""
        keys = _chunk_keys(token_ids, positions, counted, self.orders, self.pack_bits, self.vocab_size)
        for k in self.orders:
            self._pending[k].append(keys[k])

    def tables(self) -> dict[int, SeenTable]:
        """The merged table of each order (sorted by key, no duplicates)."""
        for k in self.orders:
            if self._pending[k]:
                self._runs[k].push(_seen_table(np.concatenate(self._pending[k]), k))
                self._pending[k] = []
        return {k: self._runs[k].table() for k in self.orders}

    @property
    def nbytes(self) -> int:
        """Bytes held (pending keys and merged tables)."""
        pending = sum(keys.nbytes for parts in self._pending.values() for keys in parts)
        return pending + sum(runs.nbytes for runs in self._runs.values())

    def clear(self) -> None:
        """Drop everything."""
        self._runs = {k: _Runs(SeenTable.empty(k)) for k in self.orders}
        self._pending = {k: [] for k in self.orders}
