"""Do token detectors suppress their triggers? Vocabulary projections of update directions (SPEC §3, §4.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastneurons.analysis._json import Result

_CHUNK = 256  # neurons projected at once: bounds memory to CHUNK x V floats


def as_float_matrix(matrix, name: str) -> np.ndarray:
    """A 2-D float32 (or float64) numpy array from numpy or torch input (torch is not imported)."""
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().float().cpu().numpy()
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {matrix.shape}")
    if matrix.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point, got dtype {matrix.dtype}")
    return matrix if matrix.dtype in (np.float32, np.float64) else matrix.astype(np.float32)


def vocab_projection(update_directions, unembedding, center: bool = False) -> np.ndarray:
    """s = E v for each column v of `update_directions [d, n]` with E = `unembedding [V, d]`; returns [n, V]."""
    directions = as_float_matrix(update_directions, "update_directions")
    unembedding = as_float_matrix(unembedding, "unembedding")
    if directions.shape[0] != unembedding.shape[1]:
        raise ValueError(f"update_directions has d={directions.shape[0]} rows but unembedding has "
                         f"d={unembedding.shape[1]} columns; pass fc2 columns [d, n] and lm_head [V, d]")
    scores = np.ascontiguousarray((unembedding @ directions).T)
    if center:
        scores -= scores.mean(axis=1, keepdims=True)
    return scores


def rank_percentiles(scores: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Average rank of scores[t] among all V scores, ascending, divided by V-1 (0 = most suppressed)."""
    ordered = np.sort(scores)
    below = np.searchsorted(ordered, scores[tokens], side="left")
    below_or_equal = np.searchsorted(ordered, scores[tokens], side="right")
    return (below + below_or_equal - 1) / 2 / max(scores.size - 1, 1)


def select_controls(alive, exclude, size: int, seed: int = 0, layer: int = 0) -> np.ndarray:
    """Random sample (without replacement, rng seeded by [seed, layer]) of alive neurons not in `exclude`."""
    pool = np.flatnonzero(np.asarray(alive, dtype=bool))
    pool = pool[~np.isin(pool, np.asarray(exclude, dtype=np.int64))]
    rng = np.random.default_rng([int(seed), int(layer)])
    return rng.choice(pool, size=min(int(size), pool.size), replace=False).astype(np.int64)


def _evaluate(directions: np.ndarray, trigger_sets: list, unembedding: np.ndarray, k_top: int, center: bool):
    """Per neuron: top promoted/suppressed ids, mean score and mean rank percentile over its triggers."""
    n = directions.shape[1]
    top_promoted = np.zeros((n, k_top), dtype=np.int64)
    top_suppressed = np.zeros((n, k_top), dtype=np.int64)
    mean_score, percentile = np.zeros(n), np.zeros(n)
    for lo in range(0, n, _CHUNK):
        scores = vocab_projection(directions[:, lo:lo + _CHUNK], unembedding, center)
        order = np.argsort(scores, axis=1, kind="stable")
        top_suppressed[lo:lo + _CHUNK] = order[:, :k_top]
        top_promoted[lo:lo + _CHUNK] = order[:, ::-1][:, :k_top]
        for j in range(scores.shape[0]):
            tokens = trigger_sets[lo + j]
            mean_score[lo + j] = scores[j, tokens].astype(np.float64).mean()
            percentile[lo + j] = rank_percentiles(scores[j], tokens).mean()
    return top_promoted, top_suppressed, mean_score, percentile


@dataclass(frozen=True, eq=False)
class Suppression(Result):
    """One layer's token detectors: projections onto their triggers, and a matched control sample.

    Control i is a random alive non-detector neuron evaluated on the triggers of detector
    `control_pairs[i]` (= i mod number of detectors).
    """

    layer: int | None
    k_top: int
    center: bool
    neurons: np.ndarray
    triggers: list
    top_promoted: np.ndarray
    top_suppressed: np.ndarray
    mean_score: np.ndarray
    suppresses: np.ndarray
    trigger_percentile: np.ndarray
    num_detectors: int
    num_suppressing: int
    fraction_suppressing: float  # NaN (null) without detectors
    mean_percentile: float
    control_neurons: np.ndarray
    control_pairs: np.ndarray
    control_mean_score: np.ndarray
    control_suppresses: np.ndarray
    control_percentile: np.ndarray
    control_fraction_suppressing: float
    control_mean_percentile: float


def _directions(matrix, name: str, d: int) -> np.ndarray:
    """Update directions as [d, n] floats; n may be 0."""
    if matrix is None:
        raise ValueError(f"{name} is required: pass the fc2 columns [d, n] of those neurons")
    matrix = as_float_matrix(matrix, name)
    if matrix.shape[0] != d:
        raise ValueError(f"{name} must be [d={d}, n] (fc2 columns), got shape {matrix.shape}")
    return matrix


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def suppression(neurons, triggers, update_directions, unembedding, k_top: int = 10, center: bool = False, *,
                control_neurons=None, control_directions=None, layer: int | None = None) -> Suppression:
    """Token detectors `neurons` with trigger token ids `triggers[i]` and fc2 columns `update_directions
    [d, len(neurons)]`: a detector suppresses iff mean_{t in triggers} s[t] < 0, s = E v (SPEC §4.4).

    `control_neurons` (ids) with `control_directions [d, C]` are scored on trigger set i mod len(neurons).
    """
    neurons = np.asarray(neurons, dtype=np.int64).reshape(-1)
    trigger_sets = [np.asarray(t, dtype=np.int64).reshape(-1) for t in triggers]
    unembedding = as_float_matrix(unembedding, "unembedding")
    directions = _directions(update_directions, "update_directions", unembedding.shape[1])
    vocab_size = unembedding.shape[0]
    if len(trigger_sets) != neurons.size or directions.shape[1] != neurons.size:
        raise ValueError(f"{neurons.size} neurons need as many trigger sets and direction columns, "
                         f"got {len(trigger_sets)} and {directions.shape[1]}")
    for t in trigger_sets:
        if t.size == 0 or t.min() < 0 or t.max() >= vocab_size:
            raise ValueError(f"each trigger set must be non-empty token ids in [0, {vocab_size})")
    if int(k_top) < 1:
        raise ValueError(f"k_top must be >= 1, got {k_top}")
    k_top = min(int(k_top), vocab_size)
    promoted, suppressed, mean_score, percentile = _evaluate(directions, trigger_sets, unembedding, k_top, center)

    control_neurons = np.zeros(0, np.int64) if control_neurons is None else np.asarray(control_neurons, np.int64)
    if control_neurons.size and neurons.size:
        control_directions = _directions(control_directions, "control_directions", unembedding.shape[1])
        if control_directions.shape[1] != control_neurons.size:
            raise ValueError(f"control_directions needs {control_neurons.size} columns, "
                             f"got {control_directions.shape[1]}")
        pairs = np.arange(control_neurons.size) % neurons.size
        _, _, control_score, control_percentile = _evaluate(
            control_directions, [trigger_sets[i] for i in pairs], unembedding, k_top, center)
    else:
        control_neurons = np.zeros(0, np.int64)
        pairs, control_score, control_percentile = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    suppresses = mean_score < 0
    control_suppresses = control_score < 0
    return Suppression(
        layer=layer, k_top=k_top, center=bool(center), neurons=neurons, triggers=trigger_sets,
        top_promoted=promoted, top_suppressed=suppressed, mean_score=mean_score, suppresses=suppresses,
        trigger_percentile=percentile, num_detectors=int(neurons.size), num_suppressing=int(suppresses.sum()),
        fraction_suppressing=_mean(suppresses), mean_percentile=_mean(percentile),
        control_neurons=control_neurons, control_pairs=pairs.astype(np.int64), control_mean_score=control_score,
        control_suppresses=control_suppresses, control_percentile=control_percentile,
        control_fraction_suppressing=_mean(control_suppresses), control_mean_percentile=_mean(control_percentile),
    )


def suppression_naive(direction, triggers, unembedding) -> tuple[float, float]:
    """Slow reference for one neuron: (mean score over triggers, mean rank percentile by counting)."""
    scores = np.asarray(unembedding, dtype=np.float64) @ np.asarray(direction, dtype=np.float64)
    percentiles = []
    for t in triggers:
        below = sum(1 for s in scores if s < scores[t])
        equal_others = sum(1 for s in scores if s == scores[t]) - 1
        percentiles.append((below + equal_others / 2) / (scores.size - 1))
    return float(np.mean(scores[list(triggers)])), float(np.mean(percentiles))


@dataclass(frozen=True, eq=False)
class SuppressionSummary(Result):
    """Suppression pooled over layers: every token detector (and control) of every layer counts once."""

    layers: list
    num_detectors: int
    num_suppressing: int
    fraction_suppressing: float
    mean_percentile: float
    control_size: int
    control_fraction_suppressing: float
    control_mean_percentile: float
    fraction_suppressing_by_layer: list
    mean_percentile_by_layer: list


def summarize_suppression(per_layer) -> SuppressionSummary:
    """Overall figures (the paper's 'over 80% suppress') from per-layer `Suppression` results."""
    per_layer = list(per_layer)
    joined = lambda name: np.concatenate([np.asarray(getattr(r, name), dtype=np.float64) for r in per_layer]) \
        if per_layer else np.zeros(0)
    suppresses, percentile = joined("suppresses"), joined("trigger_percentile")
    control_suppresses, control_percentile = joined("control_suppresses"), joined("control_percentile")
    return SuppressionSummary(
        layers=[r.layer for r in per_layer], num_detectors=int(suppresses.size),
        num_suppressing=int(suppresses.sum()), fraction_suppressing=_mean(suppresses),
        mean_percentile=_mean(percentile), control_size=int(control_suppresses.size),
        control_fraction_suppressing=_mean(control_suppresses), control_mean_percentile=_mean(control_percentile),
        fraction_suppressing_by_layer=[r.fraction_suppressing for r in per_layer],
        mean_percentile_by_layer=[r.mean_percentile for r in per_layer],
    )
