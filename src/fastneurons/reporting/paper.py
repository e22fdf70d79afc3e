"""The paper's reference figures for real OPT checkpoints (SPEC §5) as data, and how ours read against them.

Only the statements of SPEC §5 are here (nothing else from the paper is quoted as a number). Each
`Finding` knows which OPT size it is about and how to read the matching number off an
`AnalysisResults`; `compare(results)` gives one `Comparison` row per finding for the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

# (hidden_size, num_hidden_layers) of each released OPT checkpoint; ffn_dim = 4 * hidden_size for all.
OPT_SIZES = {
    (768, 12): "125m", (1024, 24): "350m", (2048, 24): "1.3b", (2560, 32): "2.7b",
    (4096, 32): "6.7b", (5120, 40): "13b", (7168, 48): "30b", (9216, 64): "66b",
}
SIZE_ORDER = ["125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b"]
PAPER = "Voita, Ferrando, Nalmpantis (2023), Neurons in Large Language Models: Dead, N-gram, Positional"
PAPER_TOKENS = {"dead": 20_000_000, "other": 5_000_000}  # SPEC §4: over 20M tokens for dead neurons, over 5M otherwise


def opt_size(metadata: dict) -> Optional[str]:
    """The OPT checkpoint size ('125m' ... '66b') a store was recorded from, or None if it is not one of them.

    Read from the recorded architecture and model_config (hidden_size, num_hidden_layers, ffn_dim).
    """
    metadata = metadata or {}
    config = metadata.get("model_config") or {}
    if metadata.get("architecture") not in (None, "opt") or config.get("model_type", "opt") != "opt":
        return None
    try:
        key = (int(config["hidden_size"]), int(config["num_hidden_layers"]))
    except (KeyError, TypeError, ValueError):
        return None
    size = OPT_SIZES.get(key)
    ffn = config.get("ffn_dim")
    if size is None or (ffn is not None and int(ffn) != 4 * key[0]):
        return None
    return size


@dataclass(frozen=True)
class Comparison:
    """One paper statement next to our number; `agrees` is None where the paper gives no threshold to test."""

    size: str
    figure: str
    statement: str
    ours: str
    agrees: Optional[bool]


@dataclass(frozen=True)
class Finding:
    """One SPEC §5 statement about an OPT size and how to read our matching figure from the results."""

    sizes: tuple
    figure: str
    statement: str
    measure: Callable  # results -> (text, agrees or None)


def _num_layers(results) -> int:
    config = (results.metadata or {}).get("model_config") or {}
    return int(config.get("num_hidden_layers") or (max(results.layers) + 1 if results.layers else 0))


def _max_dead(results):
    if not results.layers:
        return "no layers recorded", None
    values = [results.dead[layer].dead_percent for layer in results.layers]
    worst = int(np.argmax(values))
    return f"max {values[worst]:.1f}% (layer {results.layers[worst]})", values[worst] > 70


def _dead_first_half(results):
    half = _num_layers(results) / 2
    late = [layer for layer in results.layers if layer >= half]
    if not late:
        return "second-half layers not recorded", None
    dead = sum(results.dead[layer].dead_count for layer in late)
    return f"{dead} dead neurons in layers >= {int(np.ceil(half))}", dead == 0


def _detected(results, k=1):
    return results.detected_ngrams.get(k)


def _token_detectors(results):
    detected = _detected(results)
    if detected is None or not detected.layers:
        return "no token-detector tables", None
    total = sum(detected.num_detectors)
    return f"{total} over n-gram layers {detected.layers[0]}–{detected.layers[-1]}", None


def _max_per_layer(results):
    detected = _detected(results)
    if detected is None or not detected.layers:
        return "no token-detector tables", None
    return f"at most {max(detected.set_size)} tokens in one layer", None


def _cumulative(results):
    detected = _detected(results)
    if detected is None or not detected.layers:
        return "no token-detector tables", None
    return f"{detected.cumulative_size[-1]} cumulatively", detected.cumulative_size[-1] > 10_000


def _mostly_new(results):
    detected = _detected(results)
    if detected is None:
        return "no token-detector tables", None
    shares = [new / size for new, size in zip(detected.new_overall[1:], detected.set_size[1:]) if size]
    if not shares:
        return "too few layers with detected tokens", None
    return f"new share per layer: min {min(shares):.0%}, mean {np.mean(shares):.0%}", min(shares) > 0.5


def _suppressing(results):
    overall = results.suppression_overall
    if overall is None or not overall.num_detectors:
        return f"not computed ({results.suppression_skipped or 'no token detectors'})", None
    fraction = overall.fraction_suppressing
    return (f"{fraction:.0%} of {overall.num_detectors} (control: {overall.control_fraction_suppressing:.0%})",
            fraction > 0.8)


def _oscillatory_second_layer(results):
    positional = results.positional.get(1)
    if positional is None:
        return "layer 1 positions not recorded", None
    ranges = list(positional.on_ranges.values())
    if not ranges:
        return "no strongly oscillatory neuron in layer 1", False
    covered = np.zeros(positional.positions_kept or 1, bool)
    for neuron_ranges in ranges:
        for start, end in neuron_ranges:
            covered[start:end + 1] = True
    plural = "s" if len(ranges) != 1 else ""
    return f"{len(ranges)} strongly oscillatory neuron{plural}; on-ranges cover {covered.mean():.0%} of positions", None


def _no_dead(results):
    dead = sum(results.dead[layer].dead_count for layer in results.layers)
    return f"{dead} dead neurons over {len(results.layers)} layers", dead == 0


def _ngram_sparsity(results):
    detected = _detected(results)
    if detected is None or not detected.layers:
        return "no token-detector tables", None
    return f"{sum(detected.num_detectors)} token detectors", None


ALL = tuple(SIZE_ORDER)
FINDINGS = (
    Finding(("66b",), "Fig. 1a", "over 70% dead neurons in some layers", _max_dead),
    Finding(("66b",), "Fig. 1a", "dead neurons only in the first half of the layers", _dead_first_half),
    Finding(("66b",), "Fig. 3a", "5351 token detectors overall", _token_detectors),
    Finding(("66b",), "Fig. 3b", "each layer detects at most about 1.5k tokens", _max_per_layer),
    Finding(("66b",), "Fig. 3b", "over 10k detected tokens cumulatively", _cumulative),
    Finding(("66b",), "Fig. 4", "each layer's detected tokens are mostly new", _mostly_new),
    Finding(ALL, "§4.4", "over 80% of token detectors suppress their triggers", _suppressing),
    Finding(("125m",), "Fig. 9", "second layer: 10 strongly oscillatory neurons whose ranges tile the positions",
            _oscillatory_second_layer),
    Finding(("350m",), "§6", "no dead neurons (post-LN model)", _no_dead),
    Finding(("350m",), "§6", "no n-gram sparsity (post-LN model)", _ngram_sparsity),
)
CROSS_SIZE = "larger models have more dead neurons and rarer activation of alive neurons"


def compare(results, size: Optional[str] = None) -> list:
    """Our numbers beside every SPEC §5 finding for this OPT size (empty for other models)."""
    size = size or opt_size(results.metadata)
    rows = []
    for finding in FINDINGS:
        if size in finding.sizes:
            ours, agrees = finding.measure(results)
            rows.append(Comparison(size, finding.figure, finding.statement, ours, agrees))
    return rows


def compare_sizes(results_list) -> Optional[Comparison]:
    """The cross-size statement of Fig. 1 over several OPT stores (None with fewer than two OPT sizes).

    OPT-350m (post-LN, no dead neurons, §6) is left out of the trend, as in the paper.
    """
    sized = [(SIZE_ORDER.index(opt_size(r.metadata)), r) for r in results_list
             if opt_size(r.metadata) not in (None, "350m")]
    if len({index for index, _ in sized}) < 2:
        return None
    sized.sort(key=lambda item: item[0])
    dead = [100 * sum(r.dead[layer].dead_count for layer in r.layers) / max(1, r.num_neurons * len(r.layers))
            for _, r in sized]
    freq = [float(np.nanmean([r.dead[layer].mean_alive_frequency for layer in r.layers])) for _, r in sized]
    names = [SIZE_ORDER[index] for index, _ in sized]
    ours = ", ".join(f"{name}: {d:.1f}% dead, freq {f:.3f}" for name, d, f in zip(names, dead, freq))
    agrees = all(b > a for a, b in zip(dead, dead[1:])) and all(b < a for a, b in zip(freq, freq[1:]))
    return Comparison(" < ".join(names), "Fig. 1", CROSS_SIZE, ours, agrees)
