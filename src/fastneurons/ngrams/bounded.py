"""The bounded n-gram mode's state: per-neuron Misra-Gries summaries (pass 1) and the exact count of
the candidate pairs they name (pass 2). The proofs of the bounds are in docs/bounded-ngrams.md.

A ``Summary`` of one (layer, order) keeps, per neuron, at most ``capacity`` n-grams with counts that
under-count the truth by at most ``delta[n]``, and the exact mass ``A_k(n)``; it does not grow with
tokens and merges (shards) with the same guarantee. A ``CandidatePlan`` fixes which pairs pass 2
counts: every tracked pair, and for neurons that may be detector candidates every pair whose n-gram
is rare enough (``seen <= rare_limit[n]``) to be in G(n) without being tracked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastneurons.numbers import ceil_fraction, exact_fraction
from fastneurons.ngrams import summary as kernels
from fastneurons.ngrams.accumulator import NgramAccumulator, RawRows, Table, check_chunk, merge_many, merge_two
from fastneurons.ngrams.by_neuron import NO_CUT, ByNeuron, HeldRows, Slots, add_mass, fill_slots, fold_rows
from fastneurons.ngrams.keys import check_orders, ngram_rows_and_keys

DEFAULT_CAPACITY = 2048  # > the paper's last histogram edge (2001) and > every m_k
FOLD_EVENTS = 1 << 24  # fold pending events after this many (~16.8M: short runs fold once, at the end), or as
# many as the summaries hold; a fold briefly needs ~36 B per pending event, a snapshot stores them
RARE_FLUSH_ROWS = 1 << 20  # pending rare pairs collapsed into a table beyond this many


def capacities_by_order(capacity, orders) -> dict:
    """{k: capacity} for ``orders``, from one capacity for every order or a {k: capacity} mapping
    (e.g. a larger one for k = 1, whose summaries the vocabulary bounds)."""
    by_order = {int(k): int(capacity[k]) for k in orders} if isinstance(capacity, dict) else \
        {int(k): int(capacity) for k in orders}
    for k, value in by_order.items():
        if value < 1:
            raise ValueError(f"summary capacity must be at least 1, got {value} for order {k}")
    return by_order


def check_continues(summary: Summary, capacity: int) -> None:
    """Refuse to continue ``summary`` at another capacity (its cuts and bounds were made at its own)."""
    if summary.capacity != capacity:
        raise ValueError(f"a summary of capacity {summary.capacity} cannot continue at {capacity} "
                         f"(order {summary.order})")


def fold_due(unfolded: int, held_rows: int) -> bool:
    """The fold schedule both pass-1 accumulators keep: fold once the events added since the last fold
    reach ``FOLD_EVENTS`` or the rows the summaries hold (data alone decides, so a resumed run folds
    where an uninterrupted one does)."""
    return unfolded >= max(FOLD_EVENTS, held_rows)


@dataclass
class Summary:
    """Misra-Gries summary of one (layer, order): its ``rows`` (by neuron; ``table`` is the same rows
    sorted by (key, neuron)) have counts with ``true - delta[n] <= count <= true``; any n-gram not
    held has ``true <= delta[n]``."""

    rows: ByNeuron | Slots  # Slots: a running accumulator's held rows (``SummaryAccumulator.state``)
    delta: np.ndarray  # int64 [F]: total subtracted from neuron n's counters
    mass: np.ndarray  # int64 [F]: exact A_k(n), the neuron's stream length
    capacity: int
    order: int
    _table: Table | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, num_neurons: int, order: int, capacity: int = DEFAULT_CAPACITY) -> Summary:
        """The summary of no tokens."""
        if int(capacity) < 1:
            raise ValueError(f"summary capacity must be at least 1, got {capacity}")
        zeros = np.zeros(int(num_neurons), dtype=np.int64)
        return cls.of_table(Table.empty(order), zeros, zeros.copy(), int(capacity))

    @classmethod
    def of_table(cls, table: Table, delta: np.ndarray, mass: np.ndarray, capacity: int) -> Summary:
        """A summary whose rows are given as a Table (sorted by (key, neuron))."""
        return cls(ByNeuron.of(table, delta.size), delta, mass, int(capacity), int(table.order), table)

    @property
    def num_neurons(self) -> int:
        return int(self.delta.size)

    @property
    def table(self) -> Table:
        """The rows sorted by (key, neuron), built once when first asked for."""
        if self._table is None:
            self._table = self.rows.table(self.order)
        return self._table

    def absorb(self, table: Table) -> Summary:
        """This summary plus an exact table, pruned to ``capacity`` per neuron."""
        rows = ByNeuron.of(table, self.num_neurons)
        mass = np.zeros(self.num_neurons, dtype=np.int64)
        add_mass(rows, mass)
        return self._fold(rows, None, mass)

    def merge(self, other: Summary) -> Summary:
        """Two summaries of disjoint token streams (shards) as one, with the same guarantee."""
        if (other.num_neurons, other.order) != (self.num_neurons, self.order):
            raise ValueError("cannot merge summaries of different widths or orders")
        if other.capacity != self.capacity:
            raise ValueError(f"cannot merge summaries of capacity {self.capacity} and {other.capacity}")
        return self._fold(other.rows, other.delta, other.mass)

    def _fold(self, rows, delta, mass) -> Summary:
        """Agarwal et al.'s merge: the errors add, plus the cut."""
        new_delta = self.delta + (0 if delta is None else delta)
        folded = fold_rows(self.rows, rows, self.capacity, new_delta)
        return Summary(folded, new_delta, self.mass + mass, self.capacity, self.order)


class SummaryAccumulator:
    """One layer's pass-1 state: a ``Summary`` per order, fed like ``NgramAccumulator``.

    Events are kept as pending chunks (their bit rows and keys, expanded only at a fold) and folded
    into the summaries once the events added since the last fold reach ``FOLD_EVENTS`` or the
    summaries' size (a fold costs O(summaries + new): amortised O(1) per event), and at the end of the
    recording (``finish``). That rule depends on the data alone, and a snapshot saves the pending
    chunks as they are with the count (``state``), so a run resumed after a kill folds where an
    uninterrupted one does and ends with the same summaries."""

    def __init__(self, num_neurons: int, orders=(1, 2, 3), pack_bits: int = 16,
                 capacity: int | dict = DEFAULT_CAPACITY, vocab_size: int | None = None):
        self.orders = check_orders(orders)
        self.capacities = capacities_by_order(capacity, self.orders)  # {k: rows kept per neuron}
        self.pending = NgramAccumulator(num_neurons, self.orders, pack_bits, vocab_size)
        self.restore({k: Summary.empty(num_neurons, k, self.capacities[k]) for k in self.orders})

    def add(self, bits, token_ids, positions, counted) -> None:
        """Take one chunk (see ``NgramAccumulator.add``)."""
        before = self.pending.events_added
        self.pending.add(bits, token_ids, positions, counted)
        self.unfolded += self.pending.events_added - before
        if fold_due(self.unfolded, sum(held.rows for held in self._held.values())):
            self.fold()

    def fold(self) -> None:
        """Fold everything pending into the summaries, in place: the chunks snapshots saved and those
        since, straight from their bit rows to rows by neuron (and the exact tables of a snapshot
        written before 2026-12-06, when a run resumed from one has not folded since)."""
        raw = RawRows.concat(self._saved + [self.pending.drain()])
        num_neurons = self.pending.num_neurons
        for k, new in fill_slots(raw.bits, {k: (raw.rows[k], raw.keys[k]) for k in self.orders}, num_neurons):
            if self._tables[k]:
                new = fold_rows(new, ByNeuron.of(merge_many(self._tables[k]), num_neurons), NO_CUT,
                                np.zeros(num_neurons, dtype=np.int64))
            if new.rows:
                add_mass(new, self._mass[k])
                self._held[k].fold(new, self._delta[k])
                self.folds += 1
        self._saved, self._tables = [], {k: [] for k in self.orders}
        self.unfolded = 0

    def finish(self) -> None:
        """The recording ended: fold what is pending, so the finished store holds summaries only."""
        self.fold()

    @property
    def summaries(self) -> dict:
        """{k: Summary} of what has been folded (fresh arrays; pending events not included)."""
        return {k: Summary(self._held[k].packed(), self._delta[k].copy(), self._mass[k].copy(), self.capacities[k],
                           k) for k in self.orders}

    def state(self) -> tuple:
        """What a snapshot saves to resume from: (summaries, ``Pending``, events pending, folds). The
        pending chunks are those earlier snapshots saved, unchanged, plus one of the chunks since the
        last: a snapshot writes only what changed (``folds`` says when the summaries last did). The
        summaries' rows are the held ones where they are (``Slots``, no copy: a snapshot of large
        summaries would otherwise double them), valid until the next ``add``."""
        since = self.pending.drain()
        if since.num_rows:
            self._saved.append(since)
        summaries = {k: Summary(self._held[k].view(), self._delta[k].copy(), self._mass[k].copy(),
                                self.capacities[k], k) for k in self.orders}
        return summaries, Pending(list(self._saved), {k: list(t) for k, t in self._tables.items()}), \
            self.unfolded, self.folds

    def restore(self, summaries: dict, pending=None, unfolded: int = 0, folds: int = 0) -> None:
        """Continue from a snapshot's ``state()`` (resume)."""
        self._held, self._delta, self._mass = {}, {}, {}
        for k in self.orders:
            summary = summaries[k]
            check_continues(summary, self.capacities[k])
            self._held[k] = HeldRows(summary.num_neurons, self.capacities[k])
            self._held[k].load(summary.rows)
            self._delta[k], self._mass[k] = summary.delta.copy(), summary.mass.copy()
        self.pending.clear()
        pending = Pending.of(pending, self.orders)
        self._saved, self._tables = list(pending.chunks), {k: list(pending.tables[k]) for k in self.orders}
        self.unfolded, self.folds = int(unfolded), int(folds)

    # the runner's spill interface: there are no exact tables to spill, and the state is fixed-size
    def tables(self) -> dict:
        return {}

    def clear(self) -> None:
        pass

    @property
    def nbytes(self) -> int:
        return 0


@dataclass
class Pending:
    """The events of one layer not yet folded, as a snapshot saves them: raw chunks (their bit rows and
    keys, one per snapshot since the last fold) and, in a run resumed from a snapshot written before
    2026-12-06 that has not folded since, that snapshot's exact tables per order."""

    chunks: list  # [RawRows]
    tables: dict  # {k: [Table]}

    @classmethod
    def of(cls, pending: Pending | None, orders) -> Pending:
        """``pending`` with a (possibly empty) table list for every order; nothing pending for None."""
        if pending is None:
            return cls([], {k: [] for k in orders})
        return cls(pending.chunks, {k: [t for t in pending.tables.get(k, []) if t.rows] for k in orders})

    def exact_tables(self, order: int) -> list:
        """The pending events of one order as exact tables (what a reader folds in)."""
        return self.tables.get(order, []) + [chunk.table(order) for chunk in self.chunks]


@dataclass
class CandidatePlan:
    """The pairs pass 2 counts for one (layer, order): ``key/neuron`` (the tracked pairs of the counted
    neurons, sorted by (key, neuron)) and, per neuron, ``rare_limit`` (pairs with n-grams seen at most
    this often are counted too; 0 = none)."""

    key: np.ndarray  # uint64 [P]
    neuron: np.ndarray  # uint32 [P]
    rare_limit: np.ndarray  # int64 [F]
    order: int
    counted: np.ndarray  # bool [F]: the neurons whose pairs pass 2 counts (cut, possible candidates)

    @property
    def empty(self) -> bool:
        """Nothing to count: no neuron was both cut and a possible candidate."""
        return not self.counted.any()

    @property
    def rare_mask(self) -> np.ndarray:
        """Bits of the neurons with a rare limit, as one row of uint64 words."""
        num_neurons = self.rare_limit.size
        words = np.zeros(((num_neurons + 63) // 64) * 64, dtype=bool)
        words[:num_neurons] = self.rare_limit > 0
        return np.packbits(words, bitorder="little").view(np.uint64).copy()


def possible_candidates(summary: Summary, max_coverage: int, coverage: float,
                        among: np.ndarray | None = None) -> np.ndarray:
    """Neurons (of ``among``, default all) whose C_k(n) may be <= ``max_coverage`` given the summary's
    upper bounds (bool [F]): the sum of their ``max_coverage`` largest counts (found by rank, not by
    sorting each neuron), each possibly under-counted by delta, reaches the coverage's share."""
    among = (summary.mass > 0) if among is None else (np.asarray(among, dtype=bool) & (summary.mass > 0))
    rows = summary.rows
    top = kernels.top_sums(rows.starts, rows.ends, rows.count, int(max_coverage), among)
    upper = top + int(max_coverage) * summary.delta  # each of the top m can be under-counted by delta
    need = ceil_fraction(summary.mass, exact_fraction(coverage, "coverage"))
    return among & (upper >= need)


def plan_candidates(summary: Summary, max_coverage: int = 50, coverage: float = 0.95,
                    cover_rate: float = 0.95) -> CandidatePlan:
    """Pass 2's pairs: for the neurons the summary cut that may be detector candidates, every tracked
    pair and every pair rare enough to be in G(n) untracked. Neurons never cut are exact in the
    summary; cut neurons that cannot be candidates keep the summary's counts, whose
    bounds still bound C_k(n) (docs/bounded-ngrams.md, Lemma 4).

    An untracked n-gram g of neuron n has active <= delta[n]; it can be in G(n) only if
    active >= cover_rate * seen[g], so only if seen[g] <= delta[n] / cover_rate."""
    fraction = exact_fraction(cover_rate, "cover_rate")
    counted = possible_candidates(summary, max_coverage, coverage, among=summary.delta > 0)
    limit = np.where(counted, (summary.delta * fraction.denominator) // fraction.numerator, 0).astype(np.int64)
    chosen = summary.rows.table(summary.order, counted)
    return CandidatePlan(chosen.key, chosen.neuron, limit, summary.order, counted)


def summary_rows(summary: Summary, counted: np.ndarray) -> Table:
    """The summary's rows of the neurons pass 2 did not count (``counted`` False): exact for neurons
    never cut, lower bounds within ``delta`` for the others."""
    counted = np.asarray(counted, dtype=bool)
    return summary.table if not counted.any() else summary.rows.table(summary.order, ~counted)


def _pairs_table(key: np.ndarray, neuron: np.ndarray, order: int) -> Table:
    """(key, neuron) rows -> Table of their multiplicities, sorted by (key, neuron)."""
    if key.size == 0:
        return Table.empty(order)
    sort = np.lexsort((neuron, key))
    key, neuron = key[sort], neuron[sort]
    starts = np.flatnonzero(np.concatenate(([True], (key[1:] != key[:-1]) | (neuron[1:] != neuron[:-1]))))
    counts = np.diff(np.concatenate((starts, [key.size]))).astype(np.int64)
    return Table(key[starts], neuron[starts], counts, order)


class CandidateCounter:
    """One layer's pass-2 state: exact counts of the planned pairs, fed like ``NgramAccumulator``."""

    def __init__(self, plans: dict, seen: dict, pack_bits: int = 16):
        self.plans = plans
        self.seen = seen  # {k: SeenTable} of the whole corpus (pass 1)
        self.pack_bits = pack_bits
        self.counts = {k: np.zeros(plan.key.size, dtype=np.int64) for k, plan in plans.items()}
        self.masks = {k: plan.rare_mask for k, plan in plans.items()}
        self.rare = {k: Table.empty(k) for k in plans}
        self._rare_pending = {k: [] for k in plans}
        self._rare_rows = 0

    def add(self, bits, token_ids, positions, counted) -> None:
        """Count one chunk's planned pairs."""
        num_neurons = next(iter(self.plans.values())).rare_limit.size
        token_ids, positions, counted, bits = check_chunk(token_ids, positions, counted, bits, num_neurons)
        for k, plan in self.plans.items():
            rows, keys = ngram_rows_and_keys(token_ids, positions, counted, k, self.pack_bits)
            if rows.size == 0:
                continue
            mask = self.masks[k]
            bound = kernels.rare_row_events(bits, rows, mask) if mask.any() else 0
            out_key = np.empty(bound, dtype=np.uint64)
            out_neuron = np.empty(bound, dtype=np.uint32)
            written = kernels.count_candidates(bits, rows, keys, self.seen[k].lookup(keys), plan.key,
                                               plan.neuron, self.counts[k], plan.rare_limit, mask,
                                               out_key, out_neuron)
            if written:
                self._rare_pending[k].append((out_key[:written], out_neuron[:written]))
                self._rare_rows += written
        if self._rare_rows >= RARE_FLUSH_ROWS:
            self._collapse()

    def _collapse(self) -> None:
        for k, parts in self._rare_pending.items():
            if parts:
                fresh = _pairs_table(np.concatenate([p[0] for p in parts]),
                                     np.concatenate([p[1] for p in parts]), k)
                self.rare[k] = merge_two(self.rare[k], fresh)
            self._rare_pending[k] = []
        self._rare_rows = 0

    def tables(self) -> dict:
        """{k: Table} of exact counts: the planned pairs seen at least once, and the rare pairs."""
        self._collapse()
        out = {}
        for k, plan in self.plans.items():
            hit = self.counts[k] > 0
            tracked = Table(plan.key[hit], plan.neuron[hit], self.counts[k][hit], k)
            out[k] = merge_two(tracked, self.rare[k])
        return out

    def state(self) -> dict:
        """{k: (planned pair counts, rare Table)} so far: what a resumable pass 2 saves."""
        self._collapse()
        return {k: (self.counts[k], self.rare[k]) for k in self.plans}

    def restore(self, state: dict) -> None:
        """Continue from ``state()`` saved under the same plans."""
        for k, (counts, rare) in state.items():
            if counts.shape != self.counts[k].shape:
                raise ValueError(f"saved pass-2 counts of order {k} do not match the plan")
            self.counts[k], self.rare[k] = counts.astype(np.int64), rare

    def clear(self) -> None:
        pass

    @property
    def nbytes(self) -> int:
        return 0



@dataclass
class HeldTable:
    """What the analyses read of one (layer, order), in either mode: counts of the pairs held, the
    exact ``mass`` A_k(n), ``bound[n]`` >= the count of any pair left out, and ``rare_limit[n]``
    (every pair whose n-gram is seen at most this often is held). Counts are exact except for the
    ``approximate`` neurons (bounded mode, cut and not counted by pass 2), whose counts are the
    summary's: each at most ``bound[n]`` below the true one."""

    key: np.ndarray
    neuron: np.ndarray
    count: np.ndarray
    mass: np.ndarray
    bound: np.ndarray
    rare_limit: np.ndarray
    approximate: np.ndarray | None = None  # bool [F]; None: no neuron

    def __post_init__(self):
        if self.approximate is None:
            self.approximate = np.zeros(self.mass.size, dtype=bool)

    @classmethod
    def exact(cls, table: Table, num_neurons: int) -> HeldTable:
        """A complete exact table: nothing left out."""
        mass = np.zeros(int(num_neurons), dtype=np.int64)
        kernels.add_mass(table.neuron, table.count, mass)
        zeros = np.zeros(int(num_neurons), dtype=np.int64)
        return cls(table.key, table.neuron, table.count, mass, zeros, zeros.copy())
