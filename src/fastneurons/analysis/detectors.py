"""N-gram detectors and the n-grams they detect, layer by layer (SPEC §3, paper §4.2, Fig. 3, 4, 15)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastneurons.analysis._json import PER_NEURON, Result
from fastneurons.analysis.coverage import ceil_fraction, check_table, coverage_and_mass, exact_fraction

DEFAULT_MAX_COVERAGE = {1: 5, 2: 50, 3: 50}  # m_k of SPEC §3


def unpack_key(key: int, k: int, pack_bits: int) -> list:
    """Token ids (x_{p-k+1} .. x_p) packed in an n-gram key."""
    mask = (1 << pack_bits) - 1
    return [(int(key) >> (pack_bits * (k - 1 - i))) & mask for i in range(k)]


def token_texts(ids, vocab) -> list:
    """The vocabulary text of each id (ids outside the vocabulary as '<id>')."""
    return [vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in ids]


@dataclass(frozen=True, eq=False)
class Detectors(Result):
    """One (layer, k): its detectors, and for each its covered n-grams G(n) as CSR arrays.

    The n-grams of detector i are rows `ngram_offsets[i]:ngram_offsets[i+1]` of `ngram_keys`,
    `ngram_active` and `ngram_seen`, most active first.
    """

    layer: int | None
    k: int
    pack_bits: int
    max_coverage: int
    cover_rate: float
    min_count: int
    coverage: float
    num_candidates: int
    num_detectors: int
    neurons: np.ndarray
    coverage_size: np.ndarray
    mass: np.ndarray
    covered_mass: np.ndarray
    covered_share: np.ndarray
    ngram_offsets: np.ndarray
    ngram_keys: np.ndarray
    ngram_active: np.ndarray
    ngram_seen: np.ndarray
    ngram_tokens: list | None  # per row of ngram_keys, the token strings (None without a vocab)
    candidates: np.ndarray = field(metadata=PER_NEURON)  # bool [F]
    num_uncertain: int = 0  # neurons that may be candidates but whose detector status the table cannot decide

    def ngram_ids(self, i: int) -> list:
        """Token-id tuples of detector i's covered n-grams."""
        keys = self.ngram_keys[self.ngram_offsets[i]:self.ngram_offsets[i + 1]]
        return [unpack_key(key, self.k, self.pack_bits) for key in keys.tolist()]

    def detected_keys(self) -> np.ndarray:
        """Sorted unique keys of the layer's detected n-grams (union of G(n) over detectors)."""
        return np.unique(self.ngram_keys)

    def to_dict(self, per_neuron: bool = True) -> dict:
        """Summary fields plus one entry per detector with its n-grams (ids, tokens, counts)."""
        out = {name: value for name, value in super().to_dict(per_neuron).items()
               if not name.startswith("ngram_") and name not in ("neurons", "coverage_size", "mass",
                                                               "covered_mass", "covered_share")}
        detectors = []
        for i, neuron in enumerate(self.neurons.tolist()):
            lo, hi = int(self.ngram_offsets[i]), int(self.ngram_offsets[i + 1])
            ngrams = []
            for row in range(lo, hi):
                entry = {"key": int(self.ngram_keys[row]),
                         "ids": unpack_key(self.ngram_keys[row], self.k, self.pack_bits),
                         "active": int(self.ngram_active[row]), "seen": int(self.ngram_seen[row])}
                if self.ngram_tokens is not None:
                    entry["tokens"] = list(self.ngram_tokens[row])
                ngrams.append(entry)
            detectors.append({"neuron": neuron, "coverage_size": int(self.coverage_size[i]),
                              "mass": int(self.mass[i]), "covered_mass": int(self.covered_mass[i]),
                              "covered_share": float(self.covered_share[i]), "ngrams": ngrams})
        out["detectors"] = detectors
        return out


def covered_ngrams_complete(bound, rare_limit, cover_rate: float = 0.95, min_count: int = 1) -> np.ndarray:
    """Per neuron, whether a table missing only n-grams of count <= ``bound[n]``, but holding every
    pair whose n-gram is seen <= ``rare_limit[n]`` times, holds all of G(n) (bool [F]).

    A missing g has active <= bound, so it is in G(n) only if seen[g] <= bound / cover_rate."""
    fraction = exact_fraction(cover_rate, "cover_rate")
    could = (np.asarray(bound, dtype=np.int64) * fraction.denominator) // fraction.numerator
    return (could < max(int(min_count), 1)) | (np.asarray(rare_limit, dtype=np.int64) >= could)


def _seen_of_rows(keys: np.ndarray, seen_key: np.ndarray, seen_count: np.ndarray) -> np.ndarray:
    """ngram_seen count for each key; every key must be present in the seen table."""
    where = np.searchsorted(seen_key, keys)
    found = where < seen_key.size
    found[found] = seen_key[where[found]] == keys[found]
    if not found.all():
        raise ValueError("an n-gram of the active table is missing from ngram_seen; pass the seen table of the same k")
    return seen_count[where]


def find_detectors(table, seen, num_neurons: int, k: int, *, max_coverage: int | None = None,
                   cover_rate: float = 0.95, min_count: int = 1, coverage: float = 0.95,
                   pack_bits: int = 16, vocab=None, layer: int | None = None,
                   sizes=None, mass=None, upper=None, complete=None) -> Detectors:
    """Detectors of order k (SPEC §3): candidates with 0 < A_k(n), C_k(n) <= m_k whose covered n-grams
    G(n) = {g : active[g,n] >= cover_rate * seen[g], seen[g] >= min_count} hold >= coverage * A_k(n).

    `table` = (key uint64, neuron, count) sorted by (key, neuron); `seen` = (key, count) sorted by key;
    `max_coverage` defaults to m_k = 5, 50, 50 for k = 1, 2, 3. `sizes`/`mass` may pass precomputed
    `coverage_and_mass` results. Comparisons are exact in integers (rates read as decimal fractions).
    Tables that leave n-grams out (bounded mode) pass `upper` (C_k(n) in [sizes, upper]) and
    `complete` (bool [F]: the table holds every n-gram that could be in G(n)); neurons whose status
    these leave open are counted in `num_uncertain`, never listed as detectors or non-detectors.
    """
    key, neuron, count = table
    key = np.asarray(key, dtype=np.uint64)
    neuron, count = check_table(neuron, count, num_neurons)
    if key.shape != neuron.shape:
        raise ValueError(f"table key and neuron columns differ in length: {key.shape} vs {neuron.shape}")
    seen_key = np.asarray(seen[0], dtype=np.uint64)
    seen_count = np.asarray(seen[1], dtype=np.int64)
    if seen_key.size > 1 and not (seen_key[1:] > seen_key[:-1]).all():
        raise ValueError("ngram_seen keys must be sorted ascending and unique")
    if max_coverage is None:
        if k not in DEFAULT_MAX_COVERAGE:
            raise ValueError(f"no default max_coverage for k={k}; pass max_coverage")
        max_coverage = DEFAULT_MAX_COVERAGE[k]
    if int(min_count) < 1 or int(max_coverage) < 1:
        raise ValueError(f"min_count and max_coverage must be >= 1, got {min_count} and {max_coverage}")
    cover_fraction = exact_fraction(cover_rate, "cover_rate")
    coverage_fraction = exact_fraction(coverage, "coverage")
    if sizes is None or mass is None:
        sizes, mass = coverage_and_mass(neuron, count, num_neurons, coverage)

    upper = sizes if upper is None else np.asarray(upper)
    complete = np.ones(num_neurons, dtype=bool) if complete is None else np.asarray(complete, dtype=bool)
    maybe = (mass > 0) & (sizes <= max_coverage)
    candidates = maybe & (upper <= max_coverage) & complete
    rows = np.flatnonzero(candidates[neuron])
    row_seen = _seen_of_rows(key[rows], seen_key, seen_count)
    covered = (row_seen >= int(min_count)) & (count[rows] >= ceil_fraction(row_seen, cover_fraction))
    rows = rows[covered]
    covered_mass = np.zeros(num_neurons, dtype=np.int64)
    np.add.at(covered_mass, neuron[rows], count[rows])
    is_detector = candidates & (covered_mass >= ceil_fraction(mass, coverage_fraction))

    rows = rows[is_detector[neuron[rows]]]
    order = np.lexsort((key[rows], -count[rows], neuron[rows]))  # by neuron, then most active, then key
    rows = rows[order]
    neurons = np.flatnonzero(is_detector).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(np.bincount(neuron[rows], minlength=num_neurons)[neurons])))
    ngram_keys = key[rows]
    tokens = None
    if vocab is not None:
        tokens = [token_texts(unpack_key(g, k, pack_bits), vocab) for g in ngram_keys.tolist()]
    return Detectors(
        layer=layer, k=int(k), pack_bits=int(pack_bits), max_coverage=int(max_coverage),
        cover_rate=float(cover_rate), min_count=int(min_count), coverage=float(coverage),
        num_candidates=int(candidates.sum()), num_detectors=int(neurons.size), neurons=neurons,
        coverage_size=sizes[neurons], mass=mass[neurons], covered_mass=covered_mass[neurons],
        covered_share=covered_mass[neurons] / np.maximum(mass[neurons], 1),
        ngram_offsets=offsets.astype(np.int64), ngram_keys=ngram_keys, ngram_active=count[rows],
        ngram_seen=_seen_of_rows(ngram_keys, seen_key, seen_count), ngram_tokens=tokens, candidates=candidates,
        num_uncertain=int((maybe & ~candidates).sum()),
    )


def find_detectors_naive(table, seen, num_neurons: int, k: int, *, max_coverage: int, cover_rate: float = 0.95,
                         min_count: int = 1, coverage: float = 0.95) -> dict:
    """Slow reference: {detector neuron: sorted list of covered keys}, straight from the SPEC's definition."""
    from fastneurons.analysis.coverage import coverage_sizes_naive

    cover_fraction, coverage_fraction = exact_fraction(cover_rate), exact_fraction(coverage)
    seen_of = dict(zip(np.asarray(seen[0]).tolist(), np.asarray(seen[1]).tolist()))
    key, neuron, count = (np.asarray(column).tolist() for column in table)
    sizes = coverage_sizes_naive(neuron, count, num_neurons, coverage)
    mass = [0] * num_neurons
    covered = {n: [] for n in range(num_neurons)}
    for g, n, c in zip(key, neuron, count):
        mass[n] += c
        if seen_of[g] >= min_count and c >= cover_fraction * seen_of[g]:
            covered[n].append((g, c))
    result = {}
    for n in range(num_neurons):
        if mass[n] > 0 and sizes[n] <= max_coverage and sum(c for _, c in covered[n]) >= coverage_fraction * mass[n]:
            result[n] = sorted(g for g, _ in covered[n])
    return result


@dataclass(frozen=True, eq=False)
class DetectedNgrams(Result):
    """Per layer (in the order given): detectors, detected n-gram set, cumulative union, new n-grams."""

    k: int
    layers: list
    num_detectors: list
    set_size: list  # |union of G(n)| per layer (Fig. 3b solid)
    cumulative_size: list  # |union over layers up to this one| (Fig. 3b dashed)
    new_overall: list  # detected here and by no earlier layer (Fig. 4, 15)
    new_vs_previous: list  # detected here and not by the previous listed layer (all of them for the first)
    keys: list  # per layer, sorted unique keys
    ids: list  # per layer, token-id tuples of those keys
    tokens: list | None  # per layer, token strings of those keys (None without a vocab)


def detected_ngrams_by_layer(detectors_per_layer, vocab=None) -> DetectedNgrams:
    """Fig. 3b/4/15 numbers from one `Detectors` per layer (same k, ordered by layer)."""
    detectors_per_layer = list(detectors_per_layer)
    ks = {d.k for d in detectors_per_layer}
    if len(ks) > 1:
        raise ValueError(f"detectors of one k only, got k in {sorted(ks)}")
    k = ks.pop() if ks else 0
    union = np.zeros(0, dtype=np.uint64)
    previous = np.zeros(0, dtype=np.uint64)
    sizes, cumulative, new_overall, new_previous, keys, ids, tokens = [], [], [], [], [], [], []
    for detectors in detectors_per_layer:
        layer_keys = detectors.detected_keys()
        sizes.append(int(layer_keys.size))
        new_overall.append(int((~np.isin(layer_keys, union)).sum()))
        new_previous.append(int((~np.isin(layer_keys, previous)).sum()))
        union = np.union1d(union, layer_keys)
        cumulative.append(int(union.size))
        previous = layer_keys
        layer_ids = [unpack_key(g, k, detectors.pack_bits) for g in layer_keys.tolist()]
        keys.append(layer_keys)
        ids.append(layer_ids)
        tokens.append([token_texts(i, vocab) for i in layer_ids] if vocab is not None else None)
    return DetectedNgrams(k=k, layers=[d.layer for d in detectors_per_layer],
                          num_detectors=[d.num_detectors for d in detectors_per_layer], set_size=sizes,
                          cumulative_size=cumulative, new_overall=new_overall, new_vs_previous=new_previous,
                          keys=keys, ids=ids, tokens=tokens if vocab is not None else None)
