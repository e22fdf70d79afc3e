"""Bounded pass 1 in torch ops on the device that made the bits: a GPU when recording on one, the CPU
in the tests (the same code). The events never leave the device; only per-token keys go to it, and
only the summaries and the bit rows of the chunks not yet folded come back, at snapshots. The
summaries are bit-identical to ``SummaryAccumulator``'s (numba on the host): same Misra-Gries fold
(docs/bounded-ngrams.md), same fold schedule (``bounded.fold_due``).

Rows live as three int64 tensors ``(neuron, key, count)`` sorted by (neuron, key): the by-neuron
order of ``ByNeuron``. Keys use at most 63 bits (``keys.py``), so int64 holds them unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from fastneurons.ngrams import bounded
from fastneurons.ngrams.accumulator import RawRows, check_chunk, chunk_rows
from fastneurons.ngrams.bounded import ByNeuron, Pending, Summary
from fastneurons.ngrams.keys import check_orders, check_pack_bits, check_token_ids
from fastneurons.ngrams.summary import neuron_of_rows

BIT_SHIFTS = {}  # device -> uint8 [8] shifts that unpack a byte (little-endian bit order)


def active_pairs(bits: torch.Tensor, rows: torch.Tensor, num_neurons: int):
    """(neuron, row index) of every set bit of ``bits[rows]``, sorted by neuron, then row index.

    bits int64 [N, W] (bit j of word w = neuron 64w + j), rows int64 [R]. Unpacks [R, F] as bytes
    (8 bits a byte, little-endian words), transposed so that nonzero comes out neuron-major."""
    shifts = BIT_SHIFTS.get(bits.device)
    if shifts is None:
        shifts = BIT_SHIFTS[bits.device] = torch.arange(8, dtype=torch.uint8, device=bits.device)
    as_bytes = bits.index_select(0, rows).view(torch.uint8)  # [R, 8W], byte b holds neurons 8b..8b+7
    active = ((as_bytes.unsqueeze(-1) >> shifts) & 1).view(rows.numel(), -1)[:, :num_neurons]
    neuron, row = active.t().nonzero(as_tuple=True)
    return neuron, row


def run_starts(neuron: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Indices where a run of equal (neuron, key) starts, in rows sorted by (neuron, key)."""
    change = torch.ones(neuron.numel(), dtype=torch.bool, device=neuron.device)
    if neuron.numel() > 1:
        change[1:] = (neuron[1:] != neuron[:-1]) | (key[1:] != key[:-1])
    return change.nonzero(as_tuple=True)[0]


def run_sums(starts: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Sum of ``count`` over each run that begins at ``starts`` (runs cover all rows)."""
    ends = torch.cat((starts[1:], starts.new_tensor([count.numel()]))) - 1
    total = torch.cumsum(count, 0)
    sums = total[ends].clone()
    sums[1:] -= total[ends[:-1]]
    return sums


def neuron_key_order(neuron: torch.Tensor, key: torch.Tensor, key_bits: int, num_neurons: int) -> torch.Tensor:
    """Permutation sorting rows by (neuron, key): one sort of ``neuron << key_bits | key`` when that
    fits in 63 bits, else a stable sort by key and then a stable sort by neuron."""
    if key_bits + max(1, int(num_neurons - 1).bit_length()) <= 63:
        return torch.sort((neuron << key_bits) | key).indices
    by_key = torch.sort(key, stable=True).indices
    return by_key[torch.sort(neuron[by_key], stable=True).indices]


def combine(parts: list, key_bits: int, num_neurons: int):
    """Rows of several (neuron, key, count) parts as one set sorted by (neuron, key), equal rows summed."""
    neuron, key, count = (torch.cat([part[i] for part in parts]) for i in range(3))
    if len(parts) > 1:
        order = neuron_key_order(neuron, key, key_bits, num_neurons)
        neuron, key, count = neuron[order], key[order], count[order]
    starts = run_starts(neuron, key)
    if starts.numel() == neuron.numel():
        return neuron, key, count
    return neuron[starts], key[starts], run_sums(starts, count)


def prune(neuron, key, count, capacity: int, num_neurons: int):
    """Misra-Gries prune of rows sorted by (neuron, key): a neuron past ``capacity`` rows loses its
    (capacity+1)-th largest count ``s`` from every row (rows reaching 0 go). Returns the rows and ``s``
    per neuron (int64 [F], 0 where nothing was cut)."""
    sizes = torch.bincount(neuron, minlength=num_neurons)
    cut = torch.zeros(num_neurons, dtype=torch.int64, device=neuron.device)
    over = sizes > capacity
    if not bool(over.any()):
        return (neuron, key, count), cut
    picked = over[neuron].nonzero(as_tuple=True)[0]  # rows of the neurons over capacity
    by_count = picked[torch.sort(count[picked], descending=True, stable=True).indices]
    ranked = by_count[torch.sort(neuron[by_count], stable=True).indices]  # by neuron, counts descending
    sizes = sizes[over]
    starts = torch.cumsum(sizes, 0) - sizes  # where each over-capacity neuron starts in ``ranked``
    rank = torch.arange(ranked.numel(), device=neuron.device) - torch.repeat_interleave(starts, sizes)
    at = ranked[rank == capacity]
    cut[neuron[at]] = count[at]
    left = count - cut[neuron]
    keep = left > 0
    return (neuron[keep], key[keep], left[keep]), cut


class DeviceSummaryAccumulator:
    """One layer's pass-1 state on ``device``, fed like ``SummaryAccumulator`` but with the bits as a
    tensor on that device (``takes_device_bits``): int64 ``[..., ceil(F/64)]`` as the counters keep them."""

    takes_device_bits = True

    def __init__(self, num_neurons: int, orders=(1, 2, 3), pack_bits: int = 16,
                 capacity: int | dict = bounded.DEFAULT_CAPACITY, vocab_size: int | None = None, device="cpu"):
        self.num_neurons = int(num_neurons)
        self.orders = check_orders(orders)
        self.pack_bits = check_pack_bits(pack_bits)
        self.capacities = bounded.capacities_by_order(capacity, self.orders)
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.restore({k: Summary.empty(self.num_neurons, k, self.capacities[k]) for k in self.orders})

    def add(self, bits: torch.Tensor, token_ids, positions, counted) -> None:
        """Take one chunk: ``bits`` on the device, token arrays on the host (see ``NgramAccumulator.add``)."""
        token_ids, positions, counted, _ = check_chunk(token_ids, positions, counted)
        words = (self.num_neurons + 63) // 64
        if bits.dtype != torch.int64 or bits.shape[-1] != words or bits.numel() != token_ids.size * words:
            raise ValueError(f"bits must be int64 [{token_ids.size}, {words}] for F={self.num_neurons}, "
                             f"got {bits.dtype} {tuple(bits.shape)}")
        check_token_ids(token_ids[positions >= 0], self.pack_bits, self.vocab_size)
        used, (rows, keys) = chunk_rows(token_ids, positions, counted, self.orders, self.pack_bits)
        if used.size == 0:
            return
        kept = bits.reshape(-1, words).index_select(0, torch.from_numpy(used).to(self.device))
        self._since.append(RawRows(kept, rows, keys))  # what the next snapshot saves of it
        self.unfolded += self._expand(kept, rows, keys)
        if bounded.fold_due(self.unfolded, sum(int(rows[0].numel()) for rows in self._held.values())):
            self.fold()

    def _expand(self, bits: torch.Tensor, rows: dict, keys: dict) -> int:
        """The events of ``bits[rows[k]]`` (on the device) as pending (neuron, key, count) entries of
        each order, in (neuron, key) order; returns how many events."""
        events = 0
        for k in self.orders:
            if rows[k].size == 0:
                continue
            order = np.argsort(keys[k], kind="stable")  # rows by key: the events come out by (neuron, key)
            rows_t = torch.from_numpy(rows[k][order]).to(self.device, non_blocking=True)
            keys_t = torch.from_numpy(keys[k][order].view(np.int64)).to(self.device, non_blocking=True)
            neuron, row = active_pairs(bits, rows_t, self.num_neurons)
            if neuron.numel() == 0:
                continue
            key = keys_t[row]
            starts = run_starts(neuron, key)
            ones = torch.ones(neuron.numel(), dtype=torch.int64, device=self.device)
            self._pending[k].append((neuron[starts], key[starts], run_sums(starts, ones)))
            events += int(neuron.numel())
        return events

    def fold(self) -> None:
        """Fold everything pending into the summaries (on the device)."""
        for k in self.orders:
            if not self._pending[k]:
                continue
            new = combine(self._pending[k], self.pack_bits * k, self.num_neurons)
            self._mass[k].index_add_(0, new[0], new[2])  # integer adds: exact, in any order
            merged = combine([self._held[k], new], self.pack_bits * k, self.num_neurons)
            self._held[k], cut = prune(*merged, self.capacities[k], self.num_neurons)
            self._delta[k] += cut
            self.folds += 1
        self._pending = {k: [] for k in self.orders}
        self._saved, self._since, self._tables = [], [], {k: [] for k in self.orders}
        self.unfolded = 0

    def finish(self) -> None:
        """The recording ended: fold what is pending."""
        self.fold()

    @property
    def summaries(self) -> dict:
        """{k: Summary} on the host, as ``SummaryAccumulator.summaries`` (without what is pending)."""
        return {k: self._summary(k) for k in self.orders}

    def _summary(self, k: int) -> Summary:
        neuron, key, count = (t.cpu().numpy() for t in self._held[k])
        offsets = np.zeros(self.num_neurons + 1, dtype=np.int64)
        np.cumsum(np.bincount(neuron, minlength=self.num_neurons), out=offsets[1:])
        return Summary(ByNeuron(offsets, key.view(np.uint64), count), self._delta[k].cpu().numpy(),
                       self._mass[k].cpu().numpy(), self.capacities[k], k)

    def state(self) -> tuple:
        """(summaries, ``Pending``, events pending, folds), on the host: what a snapshot saves, as
        ``SummaryAccumulator.state`` (the chunks since the last state, their bit rows brought to the
        host, make one new raw part; the events stay expanded on the device until the next fold)."""
        if self._since:
            self._saved.append(RawRows.concat([RawRows(part.bits.cpu().numpy().view(np.uint64), part.rows,
                                                       part.keys) for part in self._since]))
            self._since = []
        return self.summaries, Pending(list(self._saved), {k: list(t) for k, t in self._tables.items()}), \
            self.unfolded, self.folds

    def restore(self, summaries: dict, pending=None, unfolded: int = 0, folds: int = 0) -> None:
        """Continue from a snapshot's ``state()`` (either accumulator's)."""
        to = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(self.device)  # noqa: E731
        self._held, self._delta, self._mass, self._pending = {}, {}, {}, {}
        for k in self.orders:
            summary = summaries[k]
            bounded.check_continues(summary, self.capacities[k])
            rows = summary.rows.packed()
            self._held[k] = (to(neuron_of_rows(rows.offsets).astype(np.int64)), to(rows.key.view(np.int64)),
                             to(rows.count.astype(np.int64)))
            self._delta[k], self._mass[k] = to(summary.delta.astype(np.int64)), to(summary.mass.astype(np.int64))
            self._pending[k] = []
        pending = Pending.of(pending, self.orders)
        self._saved, self._since, self._tables = list(pending.chunks), [], pending.tables
        for k, tables in self._tables.items():  # an older snapshot's exact tables
            for table in tables:
                neuron, key = to(table.neuron.astype(np.int64)), to(table.key.view(np.int64))
                order = neuron_key_order(neuron, key, self.pack_bits * k, self.num_neurons)
                self._pending[k].append((neuron[order], key[order], to(table.count.astype(np.int64))[order]))
        for chunk in self._saved:
            self._expand(to(chunk.bits.view(np.int64)), chunk.rows, chunk.keys)
        self.unfolded, self.folds = int(unfolded), int(folds)

    # the runner's spill interface, SummaryAccumulator's: nothing to spill, fixed-size state
    tables = bounded.SummaryAccumulator.tables
    clear = bounded.SummaryAccumulator.clear
    nbytes = bounded.SummaryAccumulator.nbytes
