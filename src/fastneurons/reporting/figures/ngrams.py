"""N-gram figures: coverage histograms (paper Fig. 2, 12, 13), detectors and detected n-grams (Fig. 3, 4, 15)."""
from __future__ import annotations

import matplotlib
import numpy as np

from fastneurons.reporting.figures.style import COLORS, axes_or_new, empty_note, layer_axis, styled

ORDER_NAMES = {1: "token", 2: "bigram", 3: "trigram"}


def ngram_name(k: int, plural: bool = False) -> str:
    """'token', 'bigram', 'trigram', or 'k-gram'; with plural an 's' is added."""
    return ORDER_NAMES.get(k, f"{k}-gram") + ("s" if plural else "")


@styled
def plot_coverage(results, k: int = 1, ax=None, normalize: bool = False, legend: bool = True):
    """Fig. 2 (k=1), 12 (k=2), 13 (k=3): per n-gram layer, neurons in each coverage bin of C_k, stacked.

    Coverage C_k(n) = fewest k-grams holding the `coverage` share of the neuron's activations; small
    bins are the n-gram-like neurons. `normalize` shows shares of the neurons instead of counts; `legend`
    False leaves the bin legend out (for panels side by side).
    """
    ax = axes_or_new(ax)
    per_layer = results.coverage.get(k) or {}
    if not per_layer:
        return empty_note(ax, f"no k={k} n-gram tables")
    layers = list(per_layer)
    histograms = [per_layer[layer].histogram for layer in layers]
    labels = histograms[0].labels
    values = np.array([h.fractions if normalize else h.counts for h in histograms], float)  # [layers, bins]
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(x) for x in np.linspace(0.0, 0.95, len(labels))]
    bottom = np.zeros(len(layers))
    for b, (label, color) in enumerate(zip(labels, colors)):
        ax.bar(layers, values[:, b], bottom=bottom, color=color, width=0.8, label=label)
        bottom += values[:, b]
    # bounded stores: neurons whose bin is not certain are drawn, never dropped (their C is at least
    # the bin of its lower bound; docs/bounded-ngrams.md)
    uncertain = np.array([h.uncertain.sum() / (h.neurons if normalize and h.neurons else 1) for h in histograms],
                         float)
    if uncertain.any():
        ax.bar(layers, uncertain, bottom=bottom, color="0.85", hatch="//", edgecolor="0.6", width=0.8,
               label="bin not certain")
    ax.set_ylabel("share of neurons" if normalize else "neurons with k-gram mass")
    ax.set_title(f"C{k}: {ngram_name(k, True)} holding {results.settings.get('coverage', 0.95):g} of activations")
    if legend:
        ax.legend(title="coverage bin", loc="center left", bbox_to_anchor=(1.0, 0.5), reverse=True)
    layer_axis(ax, layers)
    return ax


@styled
def plot_detector_counts(results, ax=None):
    """Fig. 3a: number of token detectors (k=1) and trigram detectors (k=3) in each n-gram layer."""
    ax = axes_or_new(ax)
    if not results.detectors:
        return empty_note(ax, "no n-gram tables")
    for k in results.orders:
        per_layer = results.detectors[k]
        layers = list(per_layer)
        counts = [per_layer[layer].num_detectors for layer in layers]
        ax.plot(layers, counts, marker="o", ms=4, color=COLORS.get(f"k{k}"), ls="-" if k != 2 else ":",
                label=f"{ngram_name(k)} detectors (C{k} <= {per_layer[layers[0]].max_coverage})")
    ax.set_ylabel("detectors")
    ax.set_ylim(bottom=0)
    ax.set_title("N-gram detectors per layer")
    ax.legend()
    layer_axis(ax, results.ngram_layers)
    return ax


@styled
def plot_detected_ngrams(results, k: int = 1, ax=None):
    """Fig. 3b: n-grams detected by each layer (solid) and by all layers up to it (dashed)."""
    ax = axes_or_new(ax)
    detected = results.detected_ngrams.get(k)
    if detected is None or not detected.layers:
        return empty_note(ax, f"no k={k} n-gram tables")
    color = COLORS.get(f"k{k}")
    ax.plot(detected.layers, detected.set_size, marker="o", ms=4, color=color, label="detected by the layer")
    ax.plot(detected.layers, detected.cumulative_size, ls="--", color=color, label="cumulative (layers <= l)")
    ax.set_ylabel(f"detected {ngram_name(k, True)}")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Detected {ngram_name(k, True)} per layer")
    ax.legend()
    layer_axis(ax, detected.layers)
    return ax


@styled
def plot_new_ngrams(results, k: int = 1, ax=None):
    """Fig. 4 (k=1) / 15 (k=3): per layer, detected n-grams, those new overall, those new against layer l-1."""
    ax = axes_or_new(ax)
    detected = results.detected_ngrams.get(k)
    if detected is None or not detected.layers:
        return empty_note(ax, f"no k={k} n-gram tables")
    x = np.asarray(detected.layers, float)
    width = 0.27
    ax.bar(x - width, detected.set_size, width, color=COLORS["set"], label="detected")
    ax.bar(x, detected.new_overall, width, color=COLORS["new_overall"], label="new overall (no earlier layer)")
    ax.bar(x + width, detected.new_vs_previous, width, color=COLORS["new_vs_previous"],
           label="new against the previous layer")
    ax.set_ylabel(ngram_name(k, True))
    ax.set_title(f"New {ngram_name(k, True)} per layer")
    ax.legend()
    layer_axis(ax, detected.layers)
    return ax
