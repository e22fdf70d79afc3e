"""Dead neurons and activation frequency (SPEC §3, paper Fig. 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastneurons.analysis._json import PER_NEURON, Result


@dataclass(frozen=True, eq=False)
class DeadNeurons(Result):
    """One layer's dead neurons (`active == 0`) and activation frequencies `active / tokens`."""

    layer: int | None
    tokens: int
    num_neurons: int
    dead_count: int
    dead_percent: float
    mean_alive_frequency: float  # NaN (null in JSON) when no neuron is alive
    dead_indices: np.ndarray = field(metadata=PER_NEURON)  # int64, ascending
    frequency: np.ndarray = field(metadata=PER_NEURON)  # float64 [F]; 0 for every neuron when tokens == 0


def check_counts_1d(values, name: str) -> np.ndarray:
    """Return `values` as a 1-D int64 array of non-negative counts, or raise a one-line error."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer counts, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} holds negative counts; counts are never negative")
    return array


def dead_neurons(active, tokens: int, layer: int | None = None) -> DeadNeurons:
    """Dead count/percentage/indices and per-neuron frequency of one layer from `active [F]`, `tokens`."""
    active = check_counts_1d(active, "active")
    tokens = int(tokens)
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    if active.size and active.max() > tokens:
        raise ValueError(f"active has a count above tokens={tokens}; pass the counted-token total of the same store")
    num_neurons = int(active.size)
    dead = active == 0
    frequency = active / tokens if tokens > 0 else np.zeros(num_neurons)
    alive = ~dead
    mean_alive = float(frequency[alive].mean()) if alive.any() else float("nan")
    dead_count = int(dead.sum())
    return DeadNeurons(
        layer=layer,
        tokens=tokens,
        num_neurons=num_neurons,
        dead_count=dead_count,
        dead_percent=100.0 * dead_count / num_neurons if num_neurons else 0.0,
        mean_alive_frequency=mean_alive,
        dead_indices=np.flatnonzero(dead).astype(np.int64),
        frequency=frequency,
    )


def dead_neurons_per_layer(active_by_layer: dict, tokens: int) -> dict:
    """`dead_neurons` for each `{layer: active}` entry, returned as `{layer: DeadNeurons}`."""
    return {layer: dead_neurons(active, tokens, layer=layer) for layer, active in active_by_layer.items()}
