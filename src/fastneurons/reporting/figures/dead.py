"""Dead neurons and activation frequency: per layer (paper Fig. 1) and per domain (across models: across.py)."""
from __future__ import annotations

import matplotlib
import numpy as np

from fastneurons.reporting.figures.style import COLORS, axes_or_new, empty_note, layer_axis, styled


@styled
def plot_dead_percent(results, ax=None):
    """Fig. 1a: percentage of dead neurons (never active on a counted token) in each layer, as bars."""
    ax = axes_or_new(ax)
    values = [results.dead[layer].dead_percent for layer in results.layers]
    ax.bar(results.layers, values, color=COLORS["dead"], width=0.8)
    ax.set_ylabel("dead neurons (%)")
    ax.set_ylim(0, max(5.0, max(values, default=0) * 1.12))
    ax.set_title("Dead neurons per layer")
    layer_axis(ax, results.layers)
    return ax


@styled
def plot_alive_frequency(results, ax=None):
    """Fig. 1b: mean activation frequency (active / tokens) of the alive neurons of each layer."""
    ax = axes_or_new(ax)
    values = np.array([results.dead[layer].mean_alive_frequency for layer in results.layers], float)
    ax.plot(results.layers, values, marker="o", ms=4, color=COLORS["frequency"])
    ax.set_ylabel("mean frequency of alive neurons")
    ax.set_ylim(0, max(0.05, np.nanmax(values) * 1.15) if np.isfinite(values).any() else 1)
    ax.set_title("Activation frequency of alive neurons")
    layer_axis(ax, results.layers)
    return ax


def _domain_colors(count: int):
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def _per_domain(results, ax, field: str, ylabel: str, title: str):
    """One line per corpus domain of the per-domain statistic `field` (a DomainBreakdown attribute)."""
    ax = axes_or_new(ax)
    if not results.domains:
        return empty_note(ax, "one domain only")
    layers = sorted(results.domains)
    labels = results.domains[layers[0]].domains
    for d, (label, color) in enumerate(zip(labels, _domain_colors(len(labels)))):
        row = np.array([getattr(results.domains[layer], field)[d] for layer in layers], float)
        ax.plot(layers, row, marker="o", ms=3.5, label=label, color=color)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(title="domain")
    layer_axis(ax, layers)
    return ax


@styled
def plot_domain_dead_percent(results, ax=None):
    """Dead neurons (%) per layer computed on each corpus domain alone, one line per domain."""
    return _per_domain(results, ax, "dead_percent", "dead neurons (%)", "Dead neurons per domain")


@styled
def plot_domain_frequency(results, ax=None):
    """Mean activation frequency of the alive neurons per layer on each domain, one line per domain."""
    return _per_domain(results, ax, "mean_alive_frequency", "mean frequency of alive neurons",
                       "Activation frequency per domain")
