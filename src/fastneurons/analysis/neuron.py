"""One neuron looked up: everything the analyses say about (layer, neuron), as one frozen dataclass.

The same rules as `analyze_counts` applied to one neuron's rows (coverage, detectors and positional
type depend only on the neuron's own counts, so the answers agree with a full analysis), plus its top
n-grams, per-domain frequency and, with weights, its top promoted and suppressed tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastneurons.analysis._json import Result
from fastneurons.analysis.coverage import UNKNOWN, ceil_fraction, exact_fraction, neuron_coverage
from fastneurons.analysis.detectors import find_detectors, token_texts, unpack_key
from fastneurons.analysis.pipeline import AnalysisSettings, ngram_table_parts
from fastneurons.analysis.positional import positional_neurons
from fastneurons.analysis.suppression import vocab_projection

TOP_NGRAMS = 10  # n-grams listed per order


@dataclass(frozen=True, eq=False)
class TopNgram(Result):
    """One n-gram the neuron fires on: token ids (and texts), active = ngram_active, seen = ngram_seen."""

    ids: list
    tokens: list | None
    active: int
    seen: int
    covered: bool  # in G(n): active >= cover_rate * seen and seen >= min_count


@dataclass(frozen=True, eq=False)
class NgramProfile(Result):
    """Order k: C_k(n), A_k(n), whether the neuron is a k-gram detector, its most active n-grams."""

    k: int
    coverage_size: int
    mass: int
    candidate: bool  # 0 < A_k(n) and C_k(n) <= m_k
    detector: bool
    covered_share: float | None  # share of A_k(n) its covered n-grams G(n) hold (detectors only)
    distinct: int  # n-grams with ngram_active > 0 for this neuron
    top: list  # [TopNgram], most active first
    triggers: list  # [TopNgram]: G(n), the n-grams it detects, most active first (empty if no detector)
    # bounded stores (all exact otherwise): C_k(n) is in [coverage_size, coverage_upper] (None: no upper
    # bound); ``uncertain``: whether it is a detector is not decided; an n-gram not listed has at most
    # ``count_bound`` activations, and with ``lower_bounds`` each listed count may be that much too low
    coverage_upper: int | None = None
    uncertain: bool = False
    count_bound: int = 0
    lower_bounds: bool = False


@dataclass(frozen=True, eq=False)
class PositionalProfile(Result):
    """fr(p) = pos_active[p] / pos_seen[p] summarised: I, positional or not, type, strength, null p-value."""

    mi: float
    mi_threshold: float
    positional: bool
    corrected: bool | None  # above its own bootstrap null quantile (None: no null drawn)
    mi_pvalue: float | None
    type: str | None  # oscillatory / both_extremes / one_extreme / other; None if not positional
    strength: str | None
    mean_fr: float
    min_fr: float
    max_fr: float
    argmin: int
    argmax: int
    positions_kept: int
    fr: list  # fr(p) for every position, None where pos_seen = 0


@dataclass(frozen=True, eq=False)
class TokenProjection(Result):
    """Vocabulary projection s = E v of the neuron's update direction: top promoted and suppressed tokens."""

    promoted: list  # [(id, text or None, score)], highest score first
    suppressed: list  # lowest score first
    trigger_mean_score: float | None  # mean s over its order-1 triggers when it is a token detector
    suppresses_triggers: bool | None


@dataclass(frozen=True, eq=False)
class NeuronProfile(Result):
    """Everything about one neuron: frequency overall and per domain, n-grams per order, positions, projection."""

    layer: int
    neuron: int
    neuron_definition: str | None
    tokens: int
    active: int
    frequency: float
    dead: bool
    domains: list  # [{"domain", "tokens", "active", "frequency"}]
    ngrams: list  # [NgramProfile] for each order the store holds for this layer
    positional: PositionalProfile | None  # None without position counts
    projection: TokenProjection | None  # None without weights

    @property
    def detector_orders(self) -> list:
        """The orders k for which the neuron is a detector."""
        return [p.k for p in self.ngrams if p.detector]


def _check_neuron(counts, layer: int, neuron: int) -> None:
    if layer not in counts.layers:
        raise KeyError(f"layer {layer} was not recorded (recorded: {list(counts.layers)})")
    if not 0 <= neuron < counts.num_neurons:
        raise ValueError(f"neuron {neuron} is out of range: layers have {counts.num_neurons} neurons (0..{counts.num_neurons - 1})")


def _ngram_profile(counts, layer: int, neuron: int, k: int, settings: AnalysisSettings, top: int) -> NgramProfile:
    """The neuron as the only neuron of its own rows, with the store's bounds (either n-gram mode): its
    C_k, A_k and detector verdict equal what the whole-layer analysis finds for it."""
    key, neurons, count, mass, bound, approximate, complete = ngram_table_parts(counts, layer, k, settings)
    mine = np.flatnonzero(np.asarray(neurons) == neuron)
    key, count = np.asarray(key)[mine], np.asarray(count)[mine]
    alone = np.zeros(mine.size, dtype=np.uint32)  # the neuron's rows as neuron 0 of a one-neuron table
    own = lambda column: None if column is None else np.asarray(column)[[neuron]]  # noqa: E731
    seen_key, seen_count = counts.ngram_seen(k)
    cov = neuron_coverage(alone, count, 1, k, coverage=settings.coverage, mass=own(mass), bound=own(bound),
                          approximate=own(approximate))
    found = find_detectors((key, alone, count), (seen_key, seen_count), 1, k,
                           max_coverage=settings.max_coverage[k], cover_rate=settings.cover_rate,
                           min_count=settings.min_count, coverage=settings.coverage, pack_bits=counts.pack_bits,
                           layer=layer, sizes=cov.sizes, mass=cov.mass, upper=cov.upper, complete=own(complete))
    detector = found.num_detectors == 1
    order = np.lexsort((key, -count))[:top]   # most active first, ties by key
    seen = seen_count[np.searchsorted(seen_key, key[order])] if order.size else np.zeros(0, np.int64)
    covered = (seen >= int(settings.min_count)) & (
        count[order] >= ceil_fraction(seen, exact_fraction(settings.cover_rate, "cover_rate")))
    rows = []
    for g, active, g_seen, g_covered in zip(key[order].tolist(), count[order].tolist(), seen.tolist(), covered):
        ids = unpack_key(g, k, counts.pack_bits)
        rows.append(TopNgram(ids=ids, tokens=_texts(ids, counts.vocab), active=int(active), seen=int(g_seen),
                             covered=bool(g_covered)))
    triggers = [TopNgram(ids=ids, tokens=_texts(ids, counts.vocab), active=int(a), seen=int(g_seen), covered=True)
                for ids, a, g_seen in zip((found.ngram_ids(0) if detector else []), found.ngram_active.tolist(),
                                          found.ngram_seen.tolist())]
    upper = int(cov.upper[0])
    return NgramProfile(k=k, coverage_size=int(cov.sizes[0]), mass=int(cov.mass[0]),
                        candidate=bool(found.candidates[0]), detector=detector,
                        covered_share=float(found.covered_share[0]) if detector else None,
                        distinct=int(mine.size), top=rows, triggers=triggers,
                        coverage_upper=None if upper == UNKNOWN else upper,
                        uncertain=found.num_uncertain > 0,
                        count_bound=int(own(bound)[0]) if bound is not None else 0,
                        lower_bounds=bool(own(approximate)[0]) if approximate is not None else False)


def _texts(ids, vocab):
    return token_texts(ids, vocab) if vocab is not None else None


def _positional_profile(counts, layer: int, neuron: int, settings: AnalysisSettings) -> PositionalProfile:
    column, seen = counts.pos_active(layer)[:, [neuron]], counts.pos_seen
    result = positional_neurons(column, seen, mi_threshold=settings.mi_threshold, log_base=settings.log_base,
                                min_run=settings.min_run, eps_strong=settings.eps_strong,
                                eps_weak=settings.eps_weak, smooth=settings.smooth,
                                null_samples=settings.null_samples, null_quantile=settings.null_quantile,
                                seed=settings.seed, layer=layer)
    kept = seen > 0
    fr = np.full(seen.size, np.nan)
    fr[kept] = column[kept, 0] / seen[kept]
    positional = bool(result.is_positional[0])
    drawn = positional and settings.null_samples > 0
    extremes = (np.nanmin(fr), np.nanmax(fr), int(np.nanargmin(fr)), int(np.nanargmax(fr))) if kept.any() else (0, 0, 0, 0)
    return PositionalProfile(
        mi=float(result.mi[0]), mi_threshold=float(settings.mi_threshold), positional=positional,
        corrected=bool(result.positional_corrected[0]) if drawn else None,
        mi_pvalue=float(result.mi_pvalue[0]) if drawn else None,
        type=result.types[0] if positional else None, strength=result.strengths[0] if positional else None,
        mean_fr=float(result.frequency[0]), min_fr=float(extremes[0]), max_fr=float(extremes[1]),
        argmin=extremes[2], argmax=extremes[3], positions_kept=int(kept.sum()),
        fr=[None if np.isnan(x) else float(x) for x in fr])


def _projection(weights, layer: int, neuron: int, settings: AnalysisSettings, vocab, triggers) -> TokenProjection:
    scores = vocab_projection(weights.update_directions(layer, [neuron]), weights.unembedding(), settings.center)[0]
    order = np.argsort(scores, kind="stable")
    k_top = min(int(settings.k_top), scores.size)

    def listed(ids):
        texts = _texts(ids, vocab) or [None] * len(ids)
        return [(int(i), text, float(scores[i])) for i, text in zip(ids, texts)]

    mean = float(scores[triggers].astype(np.float64).mean()) if triggers else None
    return TokenProjection(promoted=listed(order[::-1][:k_top].tolist()), suppressed=listed(order[:k_top].tolist()),
                           trigger_mean_score=mean, suppresses_triggers=None if mean is None else mean < 0)


def neuron_profile(counts, layer: int, neuron: int, settings: AnalysisSettings | None = None, *,
                   weights=None, top: int = TOP_NGRAMS) -> NeuronProfile:
    """Profile of `neuron` in `layer` from a counts reader (`open_counts`), with `settings` as in `analyze`.

    `weights` (`ModelWeights`) adds the vocabulary projection. The positional null p-value is drawn for
    this neuron alone (seeded by settings.seed and the layer), so it can differ slightly from a full
    analysis, whose draws run over all of a layer's positional neurons in turn; I and the type are the same.
    """
    settings = (settings or AnalysisSettings()).validate()
    layer, neuron = int(layer), int(neuron)
    _check_neuron(counts, layer, neuron)
    tokens = int(counts.tokens)
    active = int(counts.active(layer)[neuron])
    domains = []
    if counts.domains:
        per_domain, domain_tokens = counts.domain_active(layer)[:, neuron], counts.domain_tokens
        domains = [{"domain": label, "tokens": int(t), "active": int(a), "frequency": a / t if t else 0.0}
                   for label, t, a in zip(counts.domains, domain_tokens.tolist(), per_domain.tolist())]
    orders = [k for k in settings.orders if k in counts.ngram_orders] if layer in counts.ngram_layers else []
    ngrams = [_ngram_profile(counts, layer, neuron, k, settings, top) for k in orders]
    positional = _positional_profile(counts, layer, neuron, settings) if counts.has_positions else None
    projection = None
    if weights is not None:
        token_detector = next((p for p in ngrams if p.k == 1 and p.detector), None)
        triggers = [t.ids[0] for t in token_detector.triggers] if token_detector else []
        projection = _projection(weights, layer, neuron, settings, counts.vocab, triggers)
    return NeuronProfile(layer=layer, neuron=neuron, neuron_definition=counts.metadata.get("neuron_definition"),
                         tokens=tokens, active=active, frequency=active / tokens if tokens else 0.0, dead=active == 0,
                         domains=domains, ngrams=ngrams, positional=positional, projection=projection)
