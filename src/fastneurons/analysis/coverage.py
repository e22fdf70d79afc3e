"""Coverage C_k(n): how many n-grams explain 95% of a neuron's activations (SPEC §3, Fig. 2, 12, 13)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastneurons.analysis._json import PER_NEURON, Result
from fastneurons.numbers import ceil_fraction, exact_fraction  # noqa: F401 (also imported from here)

# lower bounds of the paper's bins: 1-5, 6-10, 11-20, 21-50, 51-200, 201-1000, 1001-2000, 2001+
PAPER_BINS = (1, 6, 11, 21, 51, 201, 1001, 2001)

_NEURON_SHIFT = 40  # composite sort key: neuron << 40 | (max_count - count)


def check_table(neuron, count, num_neurons: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an n-gram table's `neuron`/`count` columns; return them as int64."""
    neuron, count = np.asarray(neuron), np.asarray(count)
    if neuron.ndim != 1 or neuron.shape != count.shape:
        raise ValueError(f"neuron and count must be 1-D of one length, got {neuron.shape} and {count.shape}")
    if neuron.dtype.kind not in "iu" or count.dtype.kind not in "iu":
        raise TypeError(f"neuron and count must be integer arrays, got {neuron.dtype} and {count.dtype}")
    neuron, count = neuron.astype(np.int64, copy=False), count.astype(np.int64, copy=False)
    if neuron.size and (neuron.min() < 0 or neuron.max() >= num_neurons):
        raise ValueError(f"neuron ids must be in [0, {num_neurons}); is num_neurons the layer's FFN width?")
    if count.size and count.min() < 0:
        raise ValueError("count holds negative values; n-gram counts are never negative")
    return neuron, count


def _sorted_by_neuron_count_desc(neuron: np.ndarray, count: np.ndarray, num_neurons: int) -> np.ndarray:
    """The counts reordered by (neuron ascending, count descending); one uint64 sort when keys fit."""
    max_count = int(count.max()) if count.size else 0
    if num_neurons < 2**23 and max_count < 2**_NEURON_SHIFT:
        composite = (neuron.astype(np.uint64) << np.uint64(_NEURON_SHIFT)) | (max_count - count).astype(np.uint64)
        composite.sort()
        composite &= np.uint64(2**_NEURON_SHIFT - 1)
        return max_count - composite.astype(np.int64)
    return count[np.lexsort((-count, neuron))]


def coverage_and_mass(neuron, count, num_neurons: int, coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """C_k(n) and A_k(n) for every neuron of one (layer, k) table; C = 0 where A = 0 (no mass, undefined).

    C_k(n) is the smallest m whose top-m count sum is >= coverage * A_k(n), compared in integers
    (sum >= ceil(A * coverage) with coverage read as its decimal fraction).
    """
    neuron, count = check_table(neuron, count, num_neurons)
    fraction = exact_fraction(coverage, "coverage")
    sorted_count = _sorted_by_neuron_count_desc(neuron, count, num_neurons)
    rows = np.bincount(neuron, minlength=num_neurons)
    ends = np.cumsum(rows)
    starts = ends - rows
    cumulative = np.concatenate(([0], np.cumsum(sorted_count)))  # cumulative[i] = sum of the first i rows
    before = cumulative[starts]
    mass = cumulative[ends] - before
    need = ceil_fraction(mass, fraction)
    first_enough = np.searchsorted(cumulative, before + need, side="left")
    sizes = np.where(mass > 0, first_enough - starts, 0).astype(np.int64)
    return sizes, mass


UNKNOWN = np.iinfo(np.int64).max  # an upper bound of C_k(n) that the table cannot give


def coverage_bounds(neuron, count, num_neurons: int, coverage: float = 0.95, *, mass=None,
                    bound=None, approximate=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lower, upper, mass)``: C_k(n) lies in [lower, upper] (equal when exact; 0 where A = 0).

    The table holds exact counts; ``mass`` is the exact A_k(n) (default: the table's own sums) and
    ``bound[n]`` the largest count any n-gram missing from the table can have (default 0: the table
    is complete). The top-m sums are exact while the m-th count is >= bound (no missing n-gram can
    outrank it); beyond that each further n-gram adds at most ``bound``, and all of them together at
    most the missing mass plus the table's next counts (docs/bounded-ngrams.md).
    ``upper`` is ``UNKNOWN`` where the table's counts do not reach ``coverage * A``.
    ``approximate`` (bool [F]) marks neurons whose counts are lower bounds, each at most ``bound``
    below the truth (a Misra-Gries summary's): their bounds follow Lemma 4 of docs/bounded-ngrams.md."""
    neuron, count = check_table(neuron, count, num_neurons)
    if mass is None:
        sizes, mass = coverage_and_mass(neuron, count, num_neurons, coverage)
        return sizes, sizes.copy(), mass
    mass = np.asarray(mass, dtype=np.int64)
    bound = np.zeros(num_neurons, np.int64) if bound is None else np.asarray(bound, dtype=np.int64)
    fraction = exact_fraction(coverage, "coverage")
    sorted_count = _sorted_by_neuron_count_desc(neuron, count, num_neurons)
    rows = np.bincount(neuron, minlength=num_neurons)
    ends = np.cumsum(rows)
    starts = ends - rows
    cumulative = np.concatenate(([0], np.cumsum(sorted_count)))
    before = cumulative[starts]
    need = ceil_fraction(mass, fraction)
    first_enough = np.searchsorted(cumulative, before + need, side="left")
    upper = np.where(first_enough <= ends, first_enough - starts, UNKNOWN)
    row_neuron = np.repeat(np.arange(num_neurons), rows)
    outranking = np.bincount(row_neuron, weights=sorted_count >= bound[row_neuron],
                             minlength=num_neurons).astype(np.int64)  # M*: rows no missing n-gram beats
    exact = (bound == 0) | (upper <= outranking)
    # past the top M*, j more n-grams add at most min(j * bound, missing mass + the next j table counts)
    rest = before + (cumulative[starts + outranking] - before)
    short = need - (rest - before)  # still needed after the top M*
    missing = mass - (cumulative[ends] - before)
    step = np.maximum(bound, 1)
    by_bound = (short + step - 1) // step
    by_mass = np.where(short > missing, np.searchsorted(cumulative, rest + short - missing, side="left")
                       - (starts + outranking), 0)
    lower = np.where(exact, upper, outranking + np.maximum(by_bound, by_mass))
    if approximate is not None and np.any(approximate):
        # counts s <= true <= s + bound: the true top-m sum is >= S_m (upper as above) and <= S_m + m * bound
        # while m <= rows, then + bound per further n-gram; so C >= the least m reaching need that way
        approximate = np.asarray(approximate, dtype=bool)
        raised = np.concatenate(([0], np.cumsum(sorted_count + bound[row_neuron])))
        first = np.searchsorted(raised, raised[starts] + need, side="left")
        left = need - (raised[ends] - raised[starts])  # still needed after every row at s + bound
        beyond = rows + (np.maximum(left, 0) + step - 1) // step
        lower = np.where(approximate, np.where(first <= ends, first - starts, beyond), lower)
    alive = mass > 0
    return np.where(alive, lower, 0), np.where(alive, upper, 0), mass


def coverage_sizes(neuron, count, num_neurons: int, coverage: float = 0.95) -> np.ndarray:
    """C_k(n) for every neuron (int64 [F]); 0 for neurons with A_k(n) = 0."""
    return coverage_and_mass(neuron, count, num_neurons, coverage)[0]


def coverage_sizes_naive(neuron, count, num_neurons: int, coverage: float = 0.95) -> np.ndarray:
    """Slow reference for `coverage_sizes`: per neuron, sort and add counts one by one."""
    fraction = exact_fraction(coverage, "coverage")
    per_neuron = [[] for _ in range(num_neurons)]
    for n, c in zip(np.asarray(neuron).tolist(), np.asarray(count).tolist()):
        per_neuron[n].append(c)
    sizes = np.zeros(num_neurons, dtype=np.int64)
    for n, counts in enumerate(per_neuron):
        mass = sum(counts)
        running = 0
        for m, c in enumerate(sorted(counts, reverse=True), start=1):
            running += c
            if mass > 0 and running >= mass * fraction:
                sizes[n] = m
                break
    return sizes


@dataclass(frozen=True, eq=False)
class CoverageHistogram(Result):
    """Counts of neurons per coverage bin; `fractions` are over `neurons` (those with C >= 1)."""

    labels: list
    lower: list
    counts: np.ndarray  # neurons whose bin is certain
    fractions: np.ndarray
    neurons: int
    uncertain: np.ndarray  # per bin, neurons whose bin is unknown and whose C is at least that bin


def _bin_labels(lower: tuple) -> list:
    labels = [f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo) for lo, hi in zip(lower[:-1], lower[1:])]
    return labels + [f"{lower[-1]}+"]


def coverage_histogram(sizes, bins=PAPER_BINS, upper=None) -> CoverageHistogram:
    """Histogram of coverage sizes over bins given by their lower bounds (first must be 1, last open).

    With ``upper`` (C_k(n) in [sizes, upper]), a neuron counts in a bin only when both bounds fall
    in it; the others count in ``uncertain`` at the bin of their lower bound ("at least")."""
    lower = tuple(int(b) for b in bins)
    if not lower or lower[0] != 1 or any(b >= a for a, b in zip(lower[1:], lower[:-1])):
        raise ValueError(f"bins must be strictly increasing lower bounds starting at 1, got {bins}")
    sizes = np.asarray(sizes)
    upper = sizes if upper is None else np.asarray(upper)
    alive = sizes > 0
    sizes, upper = sizes[alive], upper[alive]
    index = np.searchsorted(np.asarray(lower), sizes, side="right") - 1
    upper_index = np.searchsorted(np.asarray(lower), upper, side="right") - 1
    certain = index == upper_index
    counts = np.bincount(index[certain], minlength=len(lower)).astype(np.int64)
    uncertain = np.bincount(index[~certain], minlength=len(lower)).astype(np.int64)
    total = int(sizes.size)
    fractions = counts / total if total else np.zeros(len(lower))
    return CoverageHistogram(labels=_bin_labels(lower), lower=list(lower), counts=counts,
                             fractions=fractions, neurons=total, uncertain=uncertain)


@dataclass(frozen=True, eq=False)
class Coverage(Result):
    """One (layer, k): coverage histogram, plus bounds of C_k(n) and A_k(n) per neuron.

    ``sizes`` is the lower bound and ``upper`` the upper bound of C_k(n) (equal, = C_k(n), for the
    ``certified`` neurons: all of them with exact tables)."""

    layer: int | None
    k: int
    coverage: float
    neurons_with_mass: int
    certified: int  # neurons with mass whose C_k(n) is exact
    bin_certified: int  # neurons with mass whose histogram bin is certain
    histogram: CoverageHistogram
    sizes: np.ndarray = field(metadata=PER_NEURON)
    upper: np.ndarray = field(metadata=PER_NEURON)
    mass: np.ndarray = field(metadata=PER_NEURON)


def neuron_coverage(neuron, count, num_neurons: int, k: int, *, coverage: float = 0.95,
                    bins=PAPER_BINS, layer: int | None = None, mass=None, bound=None,
                    approximate=None) -> Coverage:
    """Coverage bounds, masses and their histogram for one (layer, k) n-gram table (``mass``,
    ``bound`` and ``approximate`` as in ``coverage_bounds``: for tables that leave out n-grams of
    bounded count or under-count some)."""
    lower, upper, mass = coverage_bounds(neuron, count, num_neurons, coverage, mass=mass, bound=bound,
                                         approximate=approximate)
    histogram = coverage_histogram(lower, bins, upper)
    alive = mass > 0
    return Coverage(layer=layer, k=int(k), coverage=float(coverage), neurons_with_mass=int(alive.sum()),
                    certified=int((alive & (lower == upper)).sum()),
                    bin_certified=int(histogram.counts.sum()), histogram=histogram, sizes=lower,
                    upper=upper, mass=mass)
