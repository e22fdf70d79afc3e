"""Rows grouped by neuron, the form the bounded mode's Misra-Gries fold works in: ``ByNeuron`` (a
summary's rows, packed), ``Slots`` (pending events counted straight from the bit rows, each neuron
in a slot with room to spare) and ``fold_rows`` between them. docs/bounded-ngrams.md has the proofs.

Within a neuron keys are ascending, so a fold merges each neuron's few thousand rows in cache, and
neurons are independent: they run in parallel and the result does not depend on the thread count.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np

from fastneurons.ngrams import summary as kernels
from fastneurons.ngrams.accumulator import EMPTY_COUNTS, EMPTY_KEYS, Table

NO_CUT = np.iinfo(np.int64).max  # a capacity no neuron reaches: fold_rows then only adds


@dataclass
class ByNeuron:
    """Rows grouped by neuron, packed: neuron n's rows are ``key[offsets[n]:offsets[n+1]]`` with their
    counts, keys ascending."""

    offsets: np.ndarray  # int64 [F+1]
    key: np.ndarray  # uint64 [M]
    count: np.ndarray  # int64 [M]

    @classmethod
    def of(cls, table: Table, num_neurons: int) -> ByNeuron:
        """The rows of a table (sorted by (key, neuron)), regrouped by neuron (a counting sort)."""
        return cls(*kernels.regroup_by_neuron(table.key, table.neuron, table.count, int(num_neurons)))

    @property
    def starts(self) -> np.ndarray:
        return self.offsets[:-1]

    @property
    def ends(self) -> np.ndarray:
        return self.offsets[1:]

    @property
    def rows(self) -> int:
        return int(self.key.size)

    def packed(self) -> ByNeuron:
        """The rows as a ``ByNeuron``: these."""
        return self

    def table(self, order: int, neurons: np.ndarray | None = None) -> Table:
        """The rows (of the ``neurons`` mask, default all) as a Table sorted by (key, neuron): a stable
        radix sort by key keeps the neurons of equal keys ascending."""
        neuron = kernels.neuron_of_rows(self.offsets)
        key, count = self.key, self.count
        if neurons is not None:
            pick = np.asarray(neurons, dtype=bool)[neuron]
            key, neuron, count = key[pick], neuron[pick], count[pick]
        if key.size == 0:
            return Table.empty(order)
        sort = kernels.stable_key_order(key)
        return Table(key[sort], neuron[sort], count[sort], order)


@dataclass
class Slots:
    """Rows grouped by neuron with gaps: neuron n's rows are ``key[starts[n]:ends[n]]``, keys
    ascending. What pending events become before a fold, which reads them where they are."""

    starts: np.ndarray  # int64 [F]
    ends: np.ndarray  # int64 [F]
    key: np.ndarray  # uint64, room for every event
    count: np.ndarray  # int64

    @property
    def rows(self) -> int:
        return int((self.ends - self.starts).sum())

    def packed(self, into=None) -> ByNeuron:
        """The same rows as a ``ByNeuron``: in fresh arrays, or in those ``into(name, size, dtype)`` gives."""
        offsets = np.zeros(self.starts.size + 1, dtype=np.int64)
        np.cumsum(self.ends - self.starts, out=offsets[1:])
        make = into or (lambda name, size, dtype: np.empty(size, dtype=dtype))
        key, count = make("packed key", offsets[-1], np.uint64), make("packed count", offsets[-1], np.int64)
        kernels.copy_rows(self.starts, self.ends, self.key, self.count, offsets[:-1], key, count)
        return ByNeuron(offsets, key, count)

    def table(self, order: int, neurons: np.ndarray | None = None) -> Table:
        """The rows (of the ``neurons`` mask, default all) as a Table sorted by (key, neuron)."""
        ends = self.ends if neurons is None else np.where(np.asarray(neurons, dtype=bool), self.ends, self.starts)
        return Slots(self.starts, ends, self.key, self.count).packed().table(order)


class HeldRows:
    """A summary's rows as pass 1 holds them between folds: neuron n's in a slot of ``capacity`` rows
    from ``n * capacity``, so a fold merges into them in place and allocates nothing. The arrays are
    reserved whole (F x capacity rows) but only the pages that rows land on are ever backed."""

    def __init__(self, num_neurons: int, capacity: int):
        num_neurons, capacity = int(num_neurons), int(capacity)
        self.capacity = capacity
        self.starts = np.arange(num_neurons, dtype=np.int64) * capacity
        self.sizes = np.zeros(num_neurons, dtype=np.int64)
        self.rows = 0  # sizes.sum(), kept current: the fold schedule reads it on every add
        try:
            self.key = kernels.untouched_array(num_neurons * capacity, EMPTY_KEYS)
            self.count = kernels.untouched_array(num_neurons * capacity, EMPTY_COUNTS)
        except MemoryError:
            raise MemoryError(f"a summary of capacity {capacity} for {num_neurons} neurons reserves "
                              f"{num_neurons * capacity * 16 / 2**30:.1f} GiB (what it holds once full), more "
                              "than this machine can map: choose a smaller --summary-capacity "
                              "(or --unigram-capacity)") from None

    @property
    def ends(self) -> np.ndarray:
        return self.starts + self.sizes

    def fold(self, new, delta: np.ndarray) -> None:
        """Misra-Gries merge of ``new`` (a ``ByNeuron`` or ``Slots``) into these rows, in place; the cut
        of each neuron is added to ``delta``. The same result as ``fold_rows``."""
        blocks = min(self.sizes.size, 16 * numba.get_num_threads())
        kernels.fold_in_place(self.starts, self.sizes, self.key, self.count, self.capacity, new.starts, new.ends,
                              new.key, new.count, delta, blocks)
        self.rows = int(self.sizes.sum())

    def load(self, rows) -> None:
        """Hold ``rows`` (a ``ByNeuron`` or ``Slots``, at most ``capacity`` per neuron) instead."""
        sizes = rows.ends - rows.starts
        if sizes.size != self.sizes.size or (sizes > self.capacity).any():
            raise ValueError(f"cannot hold rows of {sizes.size} neurons (at most {sizes.max(initial=0)} each) in "
                             f"{self.sizes.size} slots of {self.capacity}")
        kernels.copy_rows(rows.starts, rows.ends, rows.key, rows.count, self.starts, self.key, self.count)
        self.sizes[:] = sizes
        self.rows = int(sizes.sum())

    def packed(self) -> ByNeuron:
        """The rows as a ``ByNeuron`` (fresh arrays)."""
        return self.view().packed()

    def view(self) -> Slots:
        """The rows where they are (no copy): valid until the next ``fold`` or ``load``."""
        return Slots(self.starts, self.ends, self.key, self.count)


def fill_slots(bits: np.ndarray, rows_and_keys: dict, num_neurons: int):
    """Yield ``(k, Slots)``: the events of ``bits[rows]`` for each order (``rows_and_keys[k] = (rows,
    keys)``, rows ascending: a repeated row could overrun a slot) counted per (key, neuron), grouped by
    neuron, straight from the bit rows (no (key, neuron) table in between). Each order's rows are put
    in key order (their bits gathered, so the kernel reads them in sequence), and every neuron appends
    to its slot a new key or +1 on its last one. Slots are sized by each neuron's set bits over all of
    ``bits``, which bound its rows in every order. Each order's slots are valid until the next."""
    block_words = max(1, min(8, bits.shape[1] // (4 * numba.get_num_threads())))  # a few blocks a thread
    starts = np.zeros(int(num_neurons) + 1, dtype=np.int64)
    if bits.shape[0]:
        np.cumsum(kernels.column_counts(bits, int(num_neurons), block_words), out=starts[1:])
    key, count = scratch("fill key", starts[-1], np.uint64), scratch("fill count", starts[-1], np.int64)
    for k, (rows, keys) in rows_and_keys.items():
        if rows.size > 1 and not (rows[1:] > rows[:-1]).all():
            raise ValueError(f"the pending rows of order {k} must be ascending")
        by_key = np.argsort(keys)
        ends = kernels.rows_by_neuron(bits[rows[by_key]], keys[by_key], starts, block_words, key, count)
        yield k, Slots(starts[:-1], ends, key, count)


def slots_of_bits(bits: np.ndarray, rows: np.ndarray, keys: np.ndarray, num_neurons: int) -> Slots:
    """The events of ``bits[rows]`` (row ``rows[i]`` has n-gram ``keys[i]``; rows may repeat) counted
    per (key, neuron), grouped by neuron."""
    rows = np.asarray(rows, dtype=np.int64)
    return next(fill_slots(bits[rows], {0: (np.arange(rows.size), keys)}, num_neurons))[1]


def fold_rows(held, new, capacity: int, delta: np.ndarray) -> ByNeuron:
    """Misra-Gries merge of ``new`` into ``held`` (each a ``ByNeuron`` or ``Slots``), pruned to
    ``capacity`` rows per neuron; the cut of each neuron is added to ``delta`` (in place). The merge
    writes into slots of min(held + new, capacity) rows per neuron, then the rows are packed."""
    room = np.minimum(held.ends - held.starts + new.ends - new.starts, int(capacity))
    slots = np.zeros(room.size + 1, dtype=np.int64)
    np.cumsum(room, out=slots[1:])
    key, count = scratch("fold key", slots[-1], np.uint64), scratch("fold count", slots[-1], np.int64)
    sizes = kernels.fold_by_neuron(held.starts, held.ends, held.key, held.count, new.starts, new.ends, new.key,
                                   new.count, int(capacity), delta, slots, key, count)
    return Slots(slots[:-1], slots[:-1] + sizes, key, count).packed()


def add_mass(rows, mass: np.ndarray) -> None:
    """``mass[n] +=`` the counts of neuron n's rows (a ``ByNeuron`` or ``Slots``)."""
    kernels.add_mass_by_neuron(rows.starts, rows.ends, rows.count, mass)


_SCRATCH = threading.local()


def scratch(name: str, size: int, dtype) -> np.ndarray:
    """A reusable array of ``size`` elements, this thread's (kept from fold to fold, for every layer:
    fresh pages cost more than the work that fills them); ``release_scratch`` frees them."""
    arrays = _SCRATCH.__dict__.setdefault("arrays", {})
    if name not in arrays or arrays[name].size < size:
        arrays.pop(name, None)  # free the old one before the new one is made
        arrays[name] = np.empty(max(int(size), 1), dtype=dtype)
    return arrays[name][:size]


def packed_in_scratch(rows) -> ByNeuron:
    """``rows`` (a ``ByNeuron`` or ``Slots``) as a ``ByNeuron``; slots are packed into this thread's
    scratch arrays, valid until the next call. A snapshot writes every summary through them: it holds
    one summary's copy at a time, in pages already backed."""
    return rows.packed(into=scratch) if isinstance(rows, Slots) else rows


def release_scratch() -> None:
    """Free this thread's scratch arrays (a recording's folds are over)."""
    _SCRATCH.__dict__.pop("arrays", None)
