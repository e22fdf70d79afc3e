"""Dead neurons and activation frequency broken down by corpus domain."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastneurons.analysis._json import PER_NEURON, Result
from fastneurons.analysis.dead import check_counts_1d


@dataclass(frozen=True, eq=False)
class DomainBreakdown(Result):
    """One layer, per domain: dead share, mean alive frequency, neurons alive in that domain only."""

    layer: int | None
    domains: list
    tokens: list
    dead_count: list
    dead_percent: list
    mean_alive_frequency: list  # NaN (null) for a domain with no alive neuron
    alive_only_here: list  # alive in this domain and dead in every other one
    dead_everywhere: int
    frequency: np.ndarray = field(metadata=PER_NEURON)  # [D, F]; 0 for a domain with no tokens


def domain_breakdown(domain_active, domain_tokens, labels, layer: int | None = None) -> DomainBreakdown:
    """Per-domain dead/frequency figures from `domain_active [D, F]`, `domain_tokens [D]` and domain labels."""
    active = np.asarray(domain_active)
    tokens = check_counts_1d(domain_tokens, "domain_tokens")
    labels = [str(label) for label in labels]
    if active.ndim != 2 or active.shape[0] != tokens.size or len(labels) != tokens.size:
        raise ValueError(f"need domain_active [D, F], domain_tokens [D] and D labels, got {active.shape}, "
                         f"{tokens.shape} and {len(labels)} labels")
    if active.dtype.kind not in "iu":
        raise TypeError(f"domain_active must hold integer counts, got dtype {active.dtype}")
    active = active.astype(np.int64, copy=False)
    if (active < 0).any() or (active > tokens[:, None]).any():
        raise ValueError("domain_active must satisfy 0 <= domain_active[d, n] <= domain_tokens[d]")
    alive = active > 0
    frequency = np.divide(active, tokens[:, None], out=np.zeros(active.shape), where=tokens[:, None] > 0)
    num_neurons = active.shape[1]
    dead_count = (~alive).sum(axis=1)
    mean_alive = [float(frequency[d, alive[d]].mean()) if alive[d].any() else float("nan")
                  for d in range(tokens.size)]
    alive_domains = alive.sum(axis=0)
    only_here = (alive & (alive_domains == 1)[None, :]).sum(axis=1)
    return DomainBreakdown(
        layer=layer, domains=labels, tokens=tokens.tolist(), dead_count=dead_count.tolist(),
        dead_percent=(100.0 * dead_count / max(num_neurons, 1)).tolist(), mean_alive_frequency=mean_alive,
        alive_only_here=only_here.tolist(), dead_everywhere=int((alive_domains == 0).sum()), frequency=frequency,
    )
