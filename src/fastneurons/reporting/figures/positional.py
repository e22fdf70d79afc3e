"""Positional figures: example fr(p) curves by type (paper Fig. 7), types per layer (Fig. 8), on-ranges (Fig. 9)."""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np

from fastneurons.analysis.positional import TYPES
from fastneurons.reporting.figures.style import TYPE_COLORS, TYPE_LABELS, axes_or_new, empty_note, layer_axis, styled


@dataclass(frozen=True)
class PositionalCurve:
    """fr(p) = pos_active[p, n] / pos_seen[p] of one neuron over all positions (NaN where pos_seen is 0)."""

    layer: int
    neuron: int
    type: str
    strength: str
    mi: float
    fr: np.ndarray


@styled
def plot_positional_curves(curves, ax=None, title: str | None = None):
    """Fig. 7: activation frequency fr(p) against position p for a few neurons (one line each)."""
    ax = axes_or_new(ax)
    curves = list(curves)
    if not curves:
        ax.set_title(title or "")
        return empty_note(ax, "no positional neuron of this type")
    base = matplotlib.colors.to_rgb(TYPE_COLORS.get(curves[0].type, "#4c72b0"))
    for i, curve in enumerate(curves):
        shade = 1.0 - 0.55 * i / max(1, len(curves) - 1) if len(curves) > 1 else 1.0
        color = tuple(1 - shade * (1 - c) for c in base)
        ax.plot(np.arange(curve.fr.size), curve.fr, lw=1.3, color=color,
                label=f"layer {curve.layer}, neuron {curve.neuron} ({curve.strength}, I={curve.mi:.2f})")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(0, max(c.fr.size for c in curves) - 1)
    ax.set_xlabel("position p")
    ax.set_ylabel("fr(p)")
    ax.set_title(title or TYPE_LABELS.get(curves[0].type, curves[0].type))
    ax.legend(loc="best", fontsize=7.5)
    return ax


def _lighter(color, amount: float = 0.5):
    rgb = matplotlib.colors.to_rgb(color)
    return tuple(1 - (1 - c) * (1 - amount) for c in rgb)


@styled
def plot_positional_types(results, ax=None):
    """Fig. 8: positional neurons (I > mi_threshold) per layer, stacked by type; weak types lighter and hatched."""
    ax = axes_or_new(ax)
    if not results.positional:
        return empty_note(ax, f"no position counts ({results.positional_skipped or 'none recorded'})")
    layers = list(results.positional)
    bottom = np.zeros(len(layers))
    for kind in TYPES:
        for strength in ("strong", "weak"):
            values = np.array([results.positional[layer].type_counts[kind][strength] for layer in layers], float)
            color = TYPE_COLORS[kind] if strength == "strong" else _lighter(TYPE_COLORS[kind])
            ax.bar(layers, values, bottom=bottom, width=0.8, color=color, hatch=None if strength == "strong" else "//",
                   edgecolor="white" if strength == "strong" else TYPE_COLORS[kind], linewidth=0.3,
                   label=f"{TYPE_LABELS[kind]} ({strength})")
            bottom += values
    ax.set_ylabel("positional neurons")
    threshold = next(iter(results.positional.values())).mi_threshold
    ax.set_title(f"Positional neurons (I(act; pos) > {threshold:g}) by type")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), reverse=True)
    layer_axis(ax, layers)
    return ax


def strong_oscillatory_layer(results):
    """The layer with the most strongly oscillatory neurons (the first such layer on ties), or None."""
    counts = {layer: len(p.on_ranges) for layer, p in results.positional.items()}
    best = max(counts.values(), default=0)
    return next((layer for layer, count in counts.items() if count == best), None) if best else None


@styled
def plot_on_ranges(results, layer=None, ax=None, max_rows: int = 60):
    """Fig. 9: on-ranges (fr(p) = 1) of the strongly oscillatory neurons of one layer, one row per neuron
    (the first `max_rows` by where their first range starts)."""
    layer = strong_oscillatory_layer(results) if layer is None else layer
    ranges = results.positional[layer].on_ranges if layer in results.positional else {}
    ax = axes_or_new(ax, 7.0, max(2.2, 0.9 + 0.28 * min(len(ranges), max_rows)))
    if not ranges:
        return empty_note(ax, "no strongly oscillatory neurons")
    neurons = sorted(ranges, key=lambda n: (ranges[n][0][0], n))[:max_rows]
    cmap = matplotlib.colormaps["tab20"]
    for row, neuron in enumerate(neurons):
        bars = [(start, end - start + 1) for start, end in ranges[neuron]]
        ax.broken_barh(bars, (row - 0.38, 0.76), facecolors=cmap(row % 20))
    ax.set_yticks(range(len(neurons)), [str(n) for n in neurons], fontsize=8)
    ax.set_ylim(-0.7, len(neurons) - 0.3)
    ax.invert_yaxis()
    ax.set_xlim(0, results.positional[layer].positions_kept)
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("position p")
    ax.set_ylabel("neuron")
    shown = f" (first {len(neurons)} of {len(ranges)})" if len(neurons) < len(ranges) else ""
    ax.set_title(f"Layer {layer}: on-ranges of strongly oscillatory neurons{shown}")
    return ax


def type_axes_title(kind: str, results) -> str:
    """Panel title for one type in Fig. 7, with its count over all layers."""
    total = sum(sum(p.type_counts[kind].values()) for p in results.positional.values())
    return f"{TYPE_LABELS[kind]} ({total} neuron{'' if total == 1 else 's'})"

