"""Language- (domain-) specific neurons by LAPE (Tang et al. 2024): low entropy of activation probability across domains.

The rule of RUCAIBox/Language-Specific-Neurons' identify.py, on our per-domain counts (`over_zero`
there is `domains/active` here): p[l, n, d] = active / tokens of domain d; neurons whose normalised
p has the lowest entropy (a `top_rate` share of all neurons), among those with some p above the
`filter_rate` quantile of all p, are specific to each domain whose p exceeds the
`activation_bar_ratio` quantile. Computed in float32 like the original; ties at the entropy cut are
broken by (layer, neuron) order (torch.topk leaves them unspecified).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastneurons.analysis._json import Result


@dataclass(frozen=True, eq=False)
class LapeNeurons(Result):
    """The selection: per domain, per layer, the neuron ids LAPE calls specific to that domain."""

    top_rate: float
    filter_rate: float
    activation_bar_ratio: float
    domains: list
    layers: list
    filter_value: float  # the filter_rate quantile of all p (a neuron needs some p above it)
    activation_bar: float  # the activation_bar_ratio quantile of all p
    num_low_entropy: int  # neurons kept by the entropy cut (round(top_rate * layers * F))
    neurons: dict  # {domain: {layer: int64 array of neuron ids, ascending}}

    def counts(self) -> dict:
        """{domain: [number of specific neurons per layer]}."""
        return {d: [int(self.neurons[d][layer].size) for layer in self.layers] for d in self.domains}


def _kth_smallest(values: np.ndarray, k: int) -> float:
    """torch.kthvalue's k-th smallest (1-based) of a flat array."""
    k = min(max(int(k), 1), values.size)
    return float(np.partition(values, k - 1)[k - 1])


def activation_probabilities(over_zero, n) -> np.ndarray:
    """p = over_zero / n in float32, [layers, F, domains] (`over_zero` [L, F, D] counts, `n` [D] tokens)."""
    over_zero, n = np.asarray(over_zero), np.asarray(n)
    if over_zero.ndim != 3 or n.shape != (over_zero.shape[2],):
        raise ValueError(f"need over_zero [layers, F, domains] and n [domains], got {over_zero.shape} and {n.shape}")
    if (n <= 0).any():
        raise ValueError("every domain needs at least one counted token (n > 0)")
    return over_zero.astype(np.float32) / n.astype(np.float32)


def lape_neurons(over_zero, n, domains, layers, top_rate: float = 0.05, filter_rate: float = 0.95,
                 activation_bar_ratio: float = 0.95) -> LapeNeurons:
    """LAPE's selection from `over_zero` [L, F, D] and `n` [D]; the defaults are those of identify.py."""
    for name, value in (("top_rate", top_rate), ("filter_rate", filter_rate),
                        ("activation_bar_ratio", activation_bar_ratio)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    probs = activation_probabilities(over_zero, n)
    if probs.shape[2] < 2:
        raise ValueError("LAPE compares domains: the store needs at least two domains")
    if len(domains) != probs.shape[2] or len(layers) != probs.shape[0]:
        raise ValueError("domains and layers must match over_zero's shape")
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = probs / probs.sum(axis=-1, keepdims=True)
        normed[np.isnan(normed)] = 0
        entropy = -(normed * np.where(normed > 0, np.log(normed), 0)).sum(axis=-1, dtype=np.float32)
    flat = probs.reshape(-1)
    filter_value = _kth_smallest(flat, round(flat.size * filter_rate))
    entropy[(probs > filter_value).sum(axis=-1) == 0] = np.inf
    keep = round(entropy.size * top_rate)
    chosen = np.lexsort((np.arange(entropy.size), entropy.reshape(-1)))[:keep]   # lowest entropy, then index
    rows, cols = np.divmod(chosen, entropy.shape[1])
    bar = _kth_smallest(flat, round(flat.size * activation_bar_ratio))
    specific = probs[rows, cols] > bar   # [chosen, D]
    neurons = {}
    for d, domain in enumerate(domains):
        mine_rows, mine_cols = rows[specific[:, d]], cols[specific[:, d]]
        neurons[domain] = {layer: np.sort(mine_cols[mine_rows == i]).astype(np.int64) for i, layer in enumerate(layers)}
    return LapeNeurons(top_rate=float(top_rate), filter_rate=float(filter_rate),
                       activation_bar_ratio=float(activation_bar_ratio), domains=list(domains), layers=list(layers),
                       filter_value=filter_value, activation_bar=bar, num_low_entropy=int(keep), neurons=neurons)


def over_zero_of(counts) -> tuple[np.ndarray, np.ndarray]:
    """(over_zero [L, F, D], n [D]) from a counts reader: per-domain active counts and counted tokens."""
    over_zero = np.stack([counts.domain_active(layer).T for layer in counts.layers])
    return over_zero, np.asarray(counts.domain_tokens, dtype=np.int64)


def lape_from_counts(counts, top_rate: float = 0.05, filter_rate: float = 0.95,
                     activation_bar_ratio: float = 0.95) -> LapeNeurons:
    """`lape_neurons` on a store's per-domain counts (each corpus file is a domain)."""
    over_zero, n = over_zero_of(counts)
    return lape_neurons(over_zero, n, counts.domains, counts.layers, top_rate, filter_rate, activation_bar_ratio)
