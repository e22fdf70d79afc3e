"""All SPEC §3 analyses of one counts store, with every parameter in one settings object."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from fastneurons.analysis._json import Result, jsonable
from fastneurons.analysis.coverage import PAPER_BINS, neuron_coverage
from fastneurons.analysis.dead import dead_neurons
from fastneurons.analysis.detectors import (DEFAULT_MAX_COVERAGE, covered_ngrams_complete, detected_ngrams_by_layer,
                                            find_detectors)
from fastneurons.analysis.domains import domain_breakdown
from fastneurons.analysis.positional import positional_neurons
from fastneurons.analysis.suppression import as_float_matrix, select_controls, summarize_suppression, suppression
from fastneurons.progress import each

RESULTS_FORMAT = "fastneurons.analysis/1"


@dataclass(frozen=True)
class AnalysisSettings:
    """Every analysis parameter with its SPEC default (docs/analysis.md explains each one)."""

    coverage: float = field(default=0.95, metadata={"help": "C_k(n): share of A_k(n) the top-m n-grams must reach; also detector rule 3"})
    bins: tuple = field(default=PAPER_BINS, metadata={"help": "lower bounds of the coverage histogram bins", "nargs": "+", "type": int})
    max_coverage: dict = field(default_factory=lambda: dict(DEFAULT_MAX_COVERAGE), metadata={"help": "m_k per order k", "nargs": "+", "type": "order_map"})
    cover_rate: float = field(default=0.95, metadata={"help": "g in G(n) iff active[g, n] >= cover_rate * seen[g]"})
    min_count: int = field(default=1, metadata={"help": "least seen[g] a covered n-gram needs"})
    k_top: int = field(default=10, metadata={"help": "top promoted / suppressed tokens listed per detector"})
    center: bool = field(default=False, metadata={"help": "subtract the mean of s = E v before ranking"})
    mi_threshold: float = field(default=0.05, metadata={"help": "positional iff I > mi_threshold"})
    log_base: float = field(default=math.e, metadata={"help": "unit of I"})
    min_run: int = field(default=16, metadata={"help": "shortest on/off range"})
    eps_strong: float = field(default=0.0, metadata={"help": "strong level: on iff fr >= 1 - eps, off iff fr <= eps"})
    eps_weak: float = field(default=0.05, metadata={"help": "weak level"})
    smooth: float = field(default=0.02, metadata={"help": "\"other\" type is strong iff roughness <= smooth"})
    null_samples: int = field(default=200, metadata={"help": "bootstrap draws for the positional null (0 = no null)"})
    null_quantile: float = field(default=0.99, metadata={"help": "corrected positional iff I above this null quantile"})
    seed: int = field(default=0, metadata={"help": "seeds the positional null and the suppression control sample"})
    control_size: int | None = field(default=None, metadata={"help": "control neurons per layer; None = as many as token detectors"})
    orders: tuple = field(default=(1, 2, 3), metadata={"help": "n-gram orders analysed (those the store holds)", "nargs": "+", "type": int})

    def validate(self) -> "AnalysisSettings":
        """Raise ValueError naming the first bad parameter; return self when all are valid."""
        from fastneurons.numbers import require_finite

        require_finite(self)  # NaN passes every range check below
        for name in ("coverage", "cover_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        bins = tuple(self.bins)
        if not bins or bins[0] != 1 or any(int(b) <= int(a) for a, b in zip(bins, bins[1:])):
            raise ValueError(f"bins must be strictly increasing lower bounds starting at 1, got {self.bins}")
        orders = tuple(self.orders)
        if not orders or any(int(k) < 1 for k in orders) or len(set(orders)) != len(orders):
            raise ValueError(f"orders must be distinct n-gram orders >= 1, got {self.orders}")
        for k in orders:
            if k not in self.max_coverage or int(self.max_coverage[k]) < 1:
                raise ValueError(f"max_coverage needs an entry >= 1 for order k={k}, got {self.max_coverage}")
        if int(self.min_count) < 1 or int(self.k_top) < 1 or int(self.min_run) < 1:
            raise ValueError("min_count, k_top and min_run must be >= 1")
        if self.mi_threshold < 0 or self.smooth < 0:
            raise ValueError("mi_threshold and smooth must be >= 0")
        if self.log_base <= 0 or self.log_base == 1:
            raise ValueError(f"log_base must be > 0 and != 1, got {self.log_base}")
        if not 0 <= self.eps_strong <= self.eps_weak < 0.5:
            raise ValueError(f"need 0 <= eps_strong <= eps_weak < 0.5, got {self.eps_strong}, {self.eps_weak}")
        if int(self.null_samples) < 0 or not 0 < self.null_quantile < 1:
            raise ValueError("null_samples must be >= 0 and null_quantile in (0, 1)")
        if self.control_size is not None and int(self.control_size) < 0:
            raise ValueError(f"control_size must be >= 0 or None, got {self.control_size}")
        return self

    def to_dict(self) -> dict:
        """JSON-ready parameters (stored in results.json next to the results they produced)."""
        return jsonable(asdict(self))


@dataclass(frozen=True, eq=False)
class AnalysisResults(Result):
    """Every SPEC §3 result of one store, keyed by layer (and order k), plus what produced them."""

    neuron_definition: str | None
    threshold: float | None
    tokens: int
    num_neurons: int
    layers: list
    ngram_layers: list
    orders: list
    metadata: dict
    settings: dict
    summary: dict  # per-layer headline numbers in `layers` order (figure-ready)
    dead: dict  # {layer: DeadNeurons}
    positional: dict  # {layer: Positional}; empty when the store has no position counts
    domains: dict  # {layer: DomainBreakdown}; empty without domains
    coverage: dict  # {k: {layer: Coverage}}
    detectors: dict  # {k: {layer: Detectors}}
    detected_ngrams: dict  # {k: DetectedNgrams}
    suppression: dict  # {layer: Suppression}; empty when skipped
    suppression_overall: Result | None
    suppression_skipped: str | None  # why suppression was not computed, else None
    positional_skipped: str | None  # why positional neurons were not computed, else None
    format: str = RESULTS_FORMAT


def _plain(value):
    """JSON form of a metadata value; anything unknown becomes its str()."""
    try:
        return jsonable(value)
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _plain(v) for k, v in value.items()}
        return str(value)


def _suppression_per_layer(counts, settings, weights, detectors_k1, active_of, progress) -> dict:
    unembedding = as_float_matrix(weights.unembedding(), "unembedding")
    d = unembedding.shape[1]
    results = {}
    for layer, detectors in each(progress, list(detectors_k1.items()), "suppression"):
        offsets = detectors.ngram_offsets
        triggers = [detectors.ngram_keys[offsets[i]:offsets[i + 1]].astype(np.int64)
                    for i in range(detectors.num_detectors)]
        size = detectors.num_detectors if settings.control_size is None else int(settings.control_size)
        controls = select_controls(active_of(layer) > 0, detectors.neurons, size, settings.seed, layer)
        directions_of = lambda neurons: (weights.update_directions(layer, neurons) if neurons.size
                                         else np.zeros((d, 0), np.float32))
        results[layer] = suppression(
            detectors.neurons, triggers, directions_of(detectors.neurons), unembedding, settings.k_top,
            settings.center, control_neurons=controls, control_directions=directions_of(controls), layer=layer)
    return results


def ngram_table_parts(counts, layer, k, settings):
    """(key, neuron, count, mass, bound, approximate, complete) of one (layer, k): from ``ngram_table``
    (either n-gram mode, with the bounds of what it leaves out or under-counts) or, for readers
    without it, ``ngram_active``. A neuron with approximate counts never has a complete G(n)."""
    if not hasattr(counts, "ngram_table"):
        return (*counts.ngram_active(layer, k), None, None, None, None)
    table = counts.ngram_table(layer, k)
    complete = covered_ngrams_complete(table.bound, table.rare_limit, settings.cover_rate, settings.min_count)
    complete &= ~table.approximate
    return table.key, table.neuron, table.count, table.mass, table.bound, table.approximate, complete


def _certificates(coverage, detectors) -> dict:
    """How many neurons of one (layer, k) have exact results (all of them with exact tables)."""
    return {"layer": coverage.layer, "neurons_with_mass": coverage.neurons_with_mass,
            "certified": coverage.certified, "bin_certified": coverage.bin_certified,
            "uncertain_candidates": detectors.num_uncertain}


def analyze_counts(counts, settings: AnalysisSettings | None = None, weights=None, *, progress=None) -> AnalysisResults:
    """Run every analysis on a counts reader (see docs/analysis.md for the interface it must offer).

    `weights` (update_directions(layer, neurons) -> [d, n], unembedding() -> [V, d]) enables suppression;
    `progress` (fastneurons.progress.bars) shows the per-layer loops.
    """
    settings = (settings or AnalysisSettings()).validate()
    metadata = dict(counts.metadata or {})
    layers, num_neurons, tokens = list(counts.layers), int(counts.num_neurons), int(counts.tokens)
    active_cache = {}

    def active_of(layer):
        if layer not in active_cache:
            active_cache[layer] = np.asarray(counts.active(layer))
        return active_cache[layer]

    dead, positional, domains = {}, {}, {}
    domain_labels = list(getattr(counts, "domains", None) or [])
    has_positions = bool(getattr(counts, "has_positions", True))
    for layer in each(progress, layers, "dead, positional"):
        dead[layer] = dead_neurons(active_of(layer), tokens, layer=layer)
        if has_positions:
            positional[layer] = positional_neurons(
                counts.pos_active(layer), counts.pos_seen, mi_threshold=settings.mi_threshold,
                log_base=settings.log_base, min_run=settings.min_run, eps_strong=settings.eps_strong,
                eps_weak=settings.eps_weak, smooth=settings.smooth, null_samples=settings.null_samples,
                null_quantile=settings.null_quantile, seed=settings.seed, layer=layer)
        if domain_labels:
            domains[layer] = domain_breakdown(counts.domain_active(layer), counts.domain_tokens, domain_labels, layer)

    ngram_layers = list(counts.ngram_layers or [])
    orders = [k for k in settings.orders if k in set(counts.ngram_orders or [])]
    vocab = getattr(counts, "vocab", None)
    coverage, detectors, detected = {}, {}, {}
    for k in each(progress, orders, "n-gram detectors"):
        seen = counts.ngram_seen(k)
        coverage[k], detectors[k] = {}, {}
        for layer in ngram_layers:
            key, neuron, count, mass, bound, approximate, complete = ngram_table_parts(counts, layer, k, settings)
            coverage[k][layer] = neuron_coverage(neuron, count, num_neurons, k, coverage=settings.coverage,
                                                 bins=settings.bins, layer=layer, mass=mass, bound=bound,
                                                 approximate=approximate)
            detectors[k][layer] = find_detectors(
                (key, neuron, count), seen, num_neurons, k, max_coverage=settings.max_coverage[k],
                cover_rate=settings.cover_rate, min_count=settings.min_count, coverage=settings.coverage,
                pack_bits=int(counts.pack_bits), vocab=vocab, layer=layer,
                sizes=coverage[k][layer].sizes, mass=coverage[k][layer].mass, upper=coverage[k][layer].upper,
                complete=complete)
        detected[k] = detected_ngrams_by_layer([detectors[k][layer] for layer in ngram_layers], vocab)

    per_layer_suppression, overall, skipped = {}, None, None
    if weights is None:
        skipped = "no model weights given (pass weights= to analyze_counts)"
    elif 1 not in orders or not ngram_layers:
        skipped = "no order-1 n-gram tables (token detectors) in this store"
    else:
        per_layer_suppression = _suppression_per_layer(counts, settings, weights, detectors[1], active_of, progress)
        overall = summarize_suppression(per_layer_suppression.values())

    summary = {
        "dead_percent": [dead[layer].dead_percent for layer in layers],
        "mean_alive_frequency": [dead[layer].mean_alive_frequency for layer in layers],
        "num_positional": [positional[layer].num_positional for layer in positional],
        "num_positional_corrected": [positional[layer].num_positional_corrected for layer in positional],
        "num_detectors": {k: [detectors[k][layer].num_detectors for layer in ngram_layers] for k in orders},
        "ngram_certified": {k: [_certificates(coverage[k][layer], detectors[k][layer]) for layer in ngram_layers]
                            for k in orders},
    }
    return AnalysisResults(
        neuron_definition=metadata.get("neuron_definition"), threshold=metadata.get("threshold"),
        tokens=tokens, num_neurons=num_neurons, layers=layers, ngram_layers=ngram_layers, orders=orders,
        metadata=_plain(metadata), settings=settings.to_dict(), summary=summary, dead=dead, positional=positional,
        domains=domains, coverage=coverage, detectors=detectors, detected_ngrams=detected,
        suppression=per_layer_suppression, suppression_overall=overall, suppression_skipped=skipped,
        positional_skipped=None if has_positions else "the store was recorded without position counts",
    )
