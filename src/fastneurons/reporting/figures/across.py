"""Figures across models (sizes or families): a per-layer quantity of each model against the layer's relative
depth, one line per model, so models of different depths share one x axis."""
from __future__ import annotations

import matplotlib
import numpy as np

from fastneurons.reporting.figures.style import COLORS, axes_or_new, empty_note, model_label, styled


def relative_depth(results, layers=None) -> np.ndarray:
    """Depth in [0, 1] of ``layers`` (default: every recorded layer): layer / (number of model layers - 1)."""
    config = (results.metadata or {}).get("model_config") or {}
    total = int(config.get("num_hidden_layers") or (max(results.layers) + 1 if results.layers else 1))
    layers = results.layers if layers is None else layers
    return np.asarray(layers, float) / max(1, total - 1)


def _colors(count: int):
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.05, 0.85, count)] if count > 1 else [COLORS["frequency"]]


def _cross(results_list, labels, ax, layers_of, value, ylabel, title):
    """One line per model: ``value(results, layer)`` over ``layers_of(results)`` (models without any: left out)."""
    ax = axes_or_new(ax)
    labels = list(labels) if labels is not None else [model_label(r) for r in results_list]
    drawn = 0
    for results, label, color in zip(results_list, labels, _colors(len(results_list))):
        layers = list(layers_of(results))
        if not layers:
            continue
        ys = np.array([value(results, layer) for layer in layers], float)
        ax.plot(relative_depth(results, layers), ys, marker="o", ms=3, lw=1.6, label=label, color=color)
        drawn += 1
    ax.set_xlabel("relative layer depth (0 = first, 1 = last)")
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.03, 1.03)
    ax.set_title(title)
    if drawn:
        ax.legend()
    else:
        empty_note(ax, "no model has these counts")
    return ax


@styled
def plot_cross_dead_percent(results_list, labels=None, ax=None):
    """Fig. 1a across models: dead neurons (%) against relative layer depth, one line per model."""
    return _cross(results_list, labels, ax, lambda r: r.layers, lambda r, layer: r.dead[layer].dead_percent,
                  "dead neurons (%)", "Dead neurons")


@styled
def plot_cross_alive_frequency(results_list, labels=None, ax=None):
    """Fig. 1b across models: mean alive-neuron frequency against relative layer depth, one line per model."""
    return _cross(results_list, labels, ax, lambda r: r.layers, lambda r, layer: r.dead[layer].mean_alive_frequency,
                  "mean frequency of alive neurons", "Activation frequency of alive neurons")


@styled
def plot_cross_detectors(results_list, labels=None, k: int = 1, ax=None):
    """Fig. 3 across models: k-gram detectors as a share of the layer's neurons, per n-gram layer."""
    return _cross(results_list, labels, ax, lambda r: r.ngram_layers if k in r.orders else [],
                  lambda r, layer: 100.0 * r.detectors[k][layer].num_detectors / r.num_neurons,
                  f"{'token' if k == 1 else f'{k}-gram'} detectors (% of neurons)",
                  f"{'Token' if k == 1 else f'{k}-gram'} detectors")


@styled
def plot_cross_positional(results_list, labels=None, ax=None):
    """Fig. 6 across models: positional neurons (above the bootstrap null) as a share of the layer's neurons."""
    return _cross(results_list, labels, ax, lambda r: sorted(r.positional),
                  lambda r, layer: 100.0 * r.positional[layer].num_positional_corrected / r.num_neurons,
                  "positional neurons (% of neurons)", "Positional neurons")
