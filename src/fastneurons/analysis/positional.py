"""Positional neurons: mutual information between activation and position, and their types (SPEC §3, §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastneurons.analysis._json import PER_NEURON, Result

TYPES = ("oscillatory", "both_extremes", "one_extreme", "other")
_CHUNK_ELEMENTS = 2**23  # float64 elements per working block (64 MiB)
_TOLERANCE = 1e-12  # fr(p) exactly at 1 - eps or eps counts as on / off


def check_positions(pos_active, pos_seen) -> tuple[np.ndarray, np.ndarray]:
    """Validate `pos_active [T, F]` and `pos_seen [T]` (integer counts, active <= seen); return int64."""
    pos_active, pos_seen = np.asarray(pos_active), np.asarray(pos_seen)
    if pos_active.ndim != 2 or pos_seen.ndim != 1 or pos_active.shape[0] != pos_seen.shape[0]:
        raise ValueError(f"need pos_active [T, F] and pos_seen [T], got {pos_active.shape} and {pos_seen.shape}")
    if pos_active.dtype.kind not in "iu" or pos_seen.dtype.kind not in "iu":
        raise TypeError(f"pos_active and pos_seen must be integer counts, got {pos_active.dtype} and {pos_seen.dtype}")
    pos_active, pos_seen = pos_active.astype(np.int64, copy=False), pos_seen.astype(np.int64, copy=False)
    if (pos_seen < 0).any() or (pos_active < 0).any() or (pos_active > pos_seen[:, None]).any():
        raise ValueError("pos_active must satisfy 0 <= pos_active[p, n] <= pos_seen[p]; are they from one store?")
    return pos_active, pos_seen


def _column_blocks(rows: int, columns: int, per_column: int = 1):
    step = max(1, _CHUNK_ELEMENTS // max(1, rows * per_column))
    return [(lo, min(lo + step, columns)) for lo in range(0, columns, step)]


def mi_from_frequencies(fr: np.ndarray) -> np.ndarray:
    """SPEC's I in nats for each column of fr [T, n] (positions kept), with 0 log 0 = 0."""
    mean = fr.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        on = np.where(fr > 0, fr * np.log(fr / mean), 0.0)
        off = np.where(fr < 1, (1 - fr) * np.log((1 - fr) / (1 - mean)), 0.0)
    mi = (on + off).mean(axis=0)
    mi[(mean <= 0) | (mean >= 1)] = 0.0
    return np.maximum(mi, 0.0)


def _negative_entropy(fr: np.ndarray) -> np.ndarray:
    """h(x) = x log x + (1-x) log(1-x) with 0 log 0 = 0; I = mean_p h(fr(p)) - h(fr)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fr > 0, fr * np.log(fr), 0.0) + np.where(fr < 1, (1 - fr) * np.log(1 - fr), 0.0)


def positional_mi(pos_active, pos_seen, log_base: float = math.e) -> np.ndarray:
    """I(act; pos) per neuron [F] (SPEC §3), positions with pos_seen == 0 left out, in units of log_base.

    Computed as I = mean_p h(fr(p)) - h(fr), h(x) = x log x + (1-x) log(1-x), the SPEC's sum regrouped;
    with one seen count on every kept position (full-length data) h(fr(p)) is a table lookup.
    """
    pos_active, pos_seen = check_positions(pos_active, pos_seen)
    kept = pos_seen > 0
    mi = np.zeros(pos_active.shape[1])
    if not kept.any():
        return mi
    seen = pos_seen[kept]
    equal = bool((seen == seen[0]).all())
    table = _negative_entropy(np.arange(seen[0] + 1) / seen[0]) if equal else None
    for lo, hi in _column_blocks(seen.size, pos_active.shape[1]):
        block = pos_active[kept, lo:hi]
        if equal:
            mean = block.sum(axis=0) / (seen[0] * seen.size)
            mean_h = table[block].mean(axis=0)
        else:
            fr = block / seen[:, None]
            mean, mean_h = fr.mean(axis=0), _negative_entropy(fr).mean(axis=0)
        block_mi = np.maximum(mean_h - _negative_entropy(mean), 0.0)
        block_mi[(mean <= 0) | (mean >= 1)] = 0.0
        mi[lo:hi] = block_mi
    return mi / math.log(log_base)


def positional_mi_naive(pos_active, pos_seen, log_base: float = math.e) -> np.ndarray:
    """Slow reference for `positional_mi`: the SPEC's formula term by term."""
    pos_active, pos_seen = np.asarray(pos_active), np.asarray(pos_seen)
    kept = [p for p in range(pos_seen.size) if pos_seen[p] > 0]
    result = np.zeros(pos_active.shape[1])
    for n in range(pos_active.shape[1]):
        fr_p = [pos_active[p, n] / pos_seen[p] for p in kept]
        fr = sum(fr_p) / len(fr_p) if fr_p else 0.0
        if fr <= 0 or fr >= 1:
            continue
        total = 0.0
        for f in fr_p:
            total += f * math.log(f / fr) if f > 0 else 0.0
            total += (1 - f) * math.log((1 - f) / (1 - fr)) if f < 1 else 0.0
        result[n] = total / len(fr_p) / math.log(log_base)
    return result


def _binomial_pmf(trials: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Support and probabilities of Binomial(trials, rate), 0 < rate < 1, dropping values below 1e-16."""
    x = np.arange(trials + 1)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log(trials - x[1:] + 1.0) - np.log(x[1:]))))
    log_pmf = log_choose + x * math.log(rate) + (trials - x) * math.log1p(-rate)
    pmf = np.exp(log_pmf - log_pmf.max())
    keep = pmf > 1e-16
    return x[keep], pmf[keep] / pmf[keep].sum()


def null_mi_samples(seen: np.ndarray, rate: float, null_samples: int, rng: np.random.Generator) -> np.ndarray:
    """`null_samples` draws of I (nats) when pos_active[p] ~ Binomial(seen[p], rate) independently.

    Positions sharing one seen count N are drawn together: how many of them take each value x is
    Multinomial(#positions, Binomial(N, rate) pmf), so the cost follows the pmf's width, not T.
    """
    if not 0 < rate < 1:
        return np.zeros(null_samples)
    sum_fr, sum_h = np.zeros(null_samples), np.zeros(null_samples)
    for trials, positions in zip(*np.unique(seen, return_counts=True)):
        x, pmf = _binomial_pmf(int(trials), rate)
        if x.size <= positions:
            histogram = rng.multinomial(int(positions), pmf, size=null_samples).astype(np.float64)
            fr = x / trials
            sum_fr += histogram @ fr
            sum_h += histogram @ _negative_entropy(fr)
        else:
            fr = rng.binomial(int(trials), rate, size=(null_samples, int(positions))) / trials
            sum_fr += fr.sum(axis=1)
            sum_h += _negative_entropy(fr).sum(axis=1)
    return np.maximum(sum_h / seen.size - _negative_entropy(sum_fr / seen.size), 0.0)


def null_mi_samples_naive(seen: np.ndarray, rate: float, null_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Slow reference for `null_mi_samples`: draw every position, then the SPEC formula."""
    fr = rng.binomial(seen[:, None], rate, size=(seen.size, null_samples)) / seen[:, None]
    return mi_from_frequencies(fr)


def mi_null(pos_active, pos_seen, neurons, null_samples: int = 200, null_quantile: float = 0.99,
            seed=0, log_base: float = math.e) -> tuple[np.ndarray, np.ndarray]:
    """Parametric-bootstrap null of I for `neurons`: (null quantile, p-value) per neuron.

    Under no positional dependence pos_active[p, n] ~ Binomial(pos_seen[p], f_n), with f_n the pooled
    rate sum_p pos_active / sum_p pos_seen; I is recomputed on `null_samples` such draws
    (`np.random.default_rng(seed)`, seed an int or a list of ints);
    p-value = (1 + #{null >= I}) / (1 + null_samples).
    """
    pos_active, pos_seen = check_positions(pos_active, pos_seen)
    neurons = np.asarray(neurons, dtype=np.int64)
    kept = pos_seen > 0
    seen = pos_seen[kept]
    quantiles, pvalues = np.full(neurons.size, np.nan), np.full(neurons.size, np.nan)
    if not kept.any() or neurons.size == 0 or null_samples < 1:
        return quantiles, pvalues
    observed = pos_active[np.ix_(kept, neurons)]
    observed_mi = positional_mi(observed, seen)
    pooled = observed.sum(axis=0) / seen.sum()
    rng = np.random.default_rng(seed)
    for i in range(neurons.size):
        null = null_mi_samples(seen, float(pooled[i]), int(null_samples), rng)
        quantiles[i] = np.quantile(null, null_quantile)
        pvalues[i] = (1 + (null >= observed_mi[i] - _TOLERANCE).sum()) / (1 + null_samples)
    return quantiles / math.log(log_base), pvalues


def find_runs(mask: np.ndarray, min_run: int) -> list:
    """Per column of a bool [T, n] mask, the maximal runs of True of length >= min_run as [start, end] (inclusive)."""
    columns = mask.shape[1]
    padded = np.zeros((columns, mask.shape[0] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask.T
    step = np.diff(padded, axis=1)
    start_column, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)  # exclusive ends, aligned with starts
    runs = [[] for _ in range(columns)]
    for column, start, end in zip(start_column.tolist(), starts.tolist(), ends.tolist()):
        if end - start >= min_run:
            runs[column].append([start, end - 1])
    return runs


def find_runs_naive(values: list, min_run: int) -> list:
    """Slow reference for one column of `find_runs`."""
    runs, start = [], None
    for p, value in enumerate(list(values) + [False]):
        if value and start is None:
            start = p
        elif not value and start is not None:
            if p - start >= min_run:
                runs.append([start, p - 1])
            start = None
    return runs


def count_alternations(on_ranges: list, off_ranges: list) -> int:
    """Changes between on and off when all ranges are read in position order (on,off,on,off -> 3)."""
    labels = [label for _, label in sorted([(r[0], 1) for r in on_ranges] + [(r[0], 0) for r in off_ranges])]
    return sum(a != b for a, b in zip(labels, labels[1:]))


def range_type(on_ranges: list, off_ranges: list) -> str | None:
    """SPEC §5.2 type from one level's ranges; None when the level found no range."""
    if not on_ranges and not off_ranges:
        return None
    if count_alternations(on_ranges, off_ranges) >= 3:
        return "oscillatory"
    return "both_extremes" if on_ranges and off_ranges else "one_extreme"


def roughness(fr: np.ndarray) -> np.ndarray:
    """mean over interior kept positions of |fr(p) - (fr(p-1) + fr(p+1)) / 2| per column of fr [T, n]."""
    if fr.shape[0] < 3:
        return np.zeros(fr.shape[1])
    return np.abs(fr[1:-1] - (fr[:-2] + fr[2:]) / 2).mean(axis=0)


def positional_types(fr_full: np.ndarray, min_run: int = 16, eps_strong: float = 0.0, eps_weak: float = 0.05,
                     smooth: float = 0.02) -> tuple[list, list, list]:
    """(types, strengths, on-ranges of strong oscillatory neurons) per column of fr_full [T, n].

    fr_full is NaN at left-out positions (they break runs). The first level (strong, then weak) that
    finds any range decides type and strength; with no range anywhere the type is "other".
    """
    kept = ~np.isnan(fr_full[:, 0]) if fr_full.shape[1] else np.zeros(fr_full.shape[0], bool)
    levels = []
    for eps in (eps_strong, eps_weak):
        with np.errstate(invalid="ignore"):
            levels.append((find_runs(fr_full >= 1 - eps - _TOLERANCE, min_run),
                           find_runs(fr_full <= eps + _TOLERANCE, min_run)))
    rough = roughness(fr_full[kept])
    types, strengths, strong_on_ranges = [], [], []
    for n in range(fr_full.shape[1]):
        found = None
        for strength, (on_runs, off_runs) in zip(("strong", "weak"), levels):
            kind = range_type(on_runs[n], off_runs[n])
            if kind is not None:
                found = (kind, strength, on_runs[n])
                break
        if found is None:
            found = ("other", "strong" if rough[n] <= smooth else "weak", [])
        types.append(found[0])
        strengths.append(found[1])
        strong_on_ranges.append(found[2] if found[:2] == ("oscillatory", "strong") else [])
    return types, strengths, strong_on_ranges


@dataclass(frozen=True, eq=False)
class Positional(Result):
    """One layer: I per neuron, the positional neurons (plug-in I > mi_threshold), their types and the null."""

    layer: int | None
    log_base: float
    mi_threshold: float
    positions_kept: int
    mi_bias_estimate: float  # (T-1)/(2T) * mean_p 1/pos_seen[p], in log_base units: E[I] with no dependence
    null_samples: int
    null_quantile: float
    num_positional: int
    num_positional_corrected: int
    type_counts: dict  # {type: {"strong": count, "weak": count}}
    neurons: np.ndarray  # positional neurons (plug-in), ascending
    types: list
    strengths: list
    corrected: np.ndarray  # bool per positional neuron: also above its null quantile
    on_ranges: dict  # {neuron: [[start, end], ...]} for strong oscillatory neurons
    mi: np.ndarray = field(metadata=PER_NEURON)
    frequency: np.ndarray = field(metadata=PER_NEURON)  # mean_p fr(p)
    is_positional: np.ndarray = field(metadata=PER_NEURON)
    mi_null_q: np.ndarray = field(metadata=PER_NEURON)  # NaN where not computed (I <= threshold)
    mi_pvalue: np.ndarray = field(metadata=PER_NEURON)
    positional_corrected: np.ndarray = field(metadata=PER_NEURON)


def positional_neurons(pos_active, pos_seen, *, mi_threshold: float = 0.05, log_base: float = math.e,
                       min_run: int = 16, eps_strong: float = 0.0, eps_weak: float = 0.05, smooth: float = 0.02,
                       null_samples: int = 200, null_quantile: float = 0.99, seed: int = 0,
                       layer: int | None = None) -> Positional:
    """I for every neuron of a layer; type and strength of the positional ones (I > mi_threshold);
    a bootstrap null for them (null_samples = 0 skips it and then corrected == plug-in)."""
    if not 0 <= eps_strong <= eps_weak < 0.5:
        raise ValueError(f"need 0 <= eps_strong <= eps_weak < 0.5, got {eps_strong} and {eps_weak}")
    if int(min_run) < 1 or int(null_samples) < 0 or not 0 < null_quantile < 1 or log_base <= 0 or log_base == 1:
        raise ValueError("need min_run >= 1, null_samples >= 0, 0 < null_quantile < 1, log_base > 0 and != 1")
    pos_active, pos_seen = check_positions(pos_active, pos_seen)
    mi = positional_mi(pos_active, pos_seen, log_base)
    kept = pos_seen > 0
    positions = int(kept.sum())
    frequency = np.zeros(mi.size)
    if positions:
        for lo, hi in _column_blocks(positions, mi.size):
            frequency[lo:hi] = (pos_active[kept, lo:hi] / pos_seen[kept][:, None]).mean(axis=0)
    is_positional = mi > mi_threshold
    neurons = np.flatnonzero(is_positional).astype(np.int64)

    null_q, pvalue = np.full(mi.size, np.nan), np.full(mi.size, np.nan)
    if null_samples > 0:
        layer_seed = [int(seed), 0 if layer is None else int(layer)]
        null_q[neurons], pvalue[neurons] = mi_null(pos_active, pos_seen, neurons, int(null_samples),
                                                   null_quantile, layer_seed, log_base)
        corrected = is_positional & (mi > np.nan_to_num(null_q, nan=np.inf))
    else:
        corrected = is_positional.copy()

    fr_full = np.full((pos_seen.size, neurons.size), np.nan)
    fr_full[kept] = pos_active[np.ix_(kept, neurons)] / pos_seen[kept][:, None]
    types, strengths, on = positional_types(fr_full, int(min_run), eps_strong, eps_weak, smooth)
    counts = {kind: {"strong": 0, "weak": 0} for kind in TYPES}
    for kind, strength in zip(types, strengths):
        counts[kind][strength] += 1
    bias = (positions - 1) / (2 * positions) * float(np.mean(1 / pos_seen[kept])) if positions else 0.0
    return Positional(
        layer=layer, log_base=float(log_base), mi_threshold=float(mi_threshold), positions_kept=positions,
        mi_bias_estimate=bias / math.log(log_base), null_samples=int(null_samples),
        null_quantile=float(null_quantile), num_positional=int(neurons.size),
        num_positional_corrected=int(corrected.sum()), type_counts=counts, neurons=neurons, types=types,
        strengths=strengths, corrected=corrected[neurons],
        on_ranges={int(n): r for n, r in zip(neurons.tolist(), on) if r},
        mi=mi, frequency=frequency, is_positional=is_positional, mi_null_q=null_q, mi_pvalue=pvalue,
        positional_corrected=corrected,
    )
