"""Shared look of every figure: colours, rc settings, titles, and Axes creation without pyplot.

Figures are plain `matplotlib.figure.Figure` objects (no pyplot, no global state, no GUI backend),
so they render headless and are freed with their last reference.
"""
from __future__ import annotations

import functools
import textwrap

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fastneurons.reporting.outputs import model_name, quantization

RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 8.5, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "axes.grid.axis": "y", "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "figure.dpi": 100, "savefig.dpi": 130, "svg.fonttype": "none",
}
COLORS = {
    "dead": "#c44e52", "frequency": "#4c72b0", "k1": "#4c72b0", "k2": "#8172b3", "k3": "#dd8452",
    "new_overall": "#55a868", "new_vs_previous": "#8fc99a", "set": "#bbbbbb",
    "promoted": "#55a868", "suppressed": "#c44e52", "trigger": "#f2b701", "control": "#9a9a9a",
    "detectors": "#c44e52", "reference": "#333333",
}
TYPE_COLORS = {"oscillatory": "#4c72b0", "both_extremes": "#dd8452", "one_extreme": "#55a868", "other": "#8172b3"}
TYPE_LABELS = {"oscillatory": "oscillatory", "both_extremes": "both extremes", "one_extreme": "one extreme",
               "other": "other"}


def styled(func):
    """Run a plotting function under the package's rc settings (they apply to the artists it creates)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return func(*args, **kwargs)
    return wrapper


def new_figure(width: float = 7.0, height: float = 4.0, **subplots):
    """A constrained-layout Figure and its Axes (`subplots` as for `Figure.subplots`)."""
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(width, height), layout="constrained")
        return figure, figure.subplots(**subplots)


def axes_or_new(ax, width: float = 7.0, height: float = 4.0):
    """`ax` itself, or the Axes of a new figure when `ax` is None (the pingouin convention)."""
    if ax is not None:
        return ax
    return new_figure(width, height)[1]


def layer_axis(ax, layers=None, label: str = "layer") -> None:
    """Ticks on the x axis at recorded layers: every one when there are few, else every step-th one
    (never a tick past the last layer, and the same ticks on every panel of a figure)."""
    layers = sorted(layers) if layers is not None else []
    if layers:
        ax.set_xticks(layers[::-(-len(layers) // 16)])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=16))
    ax.set_xlabel(label)


def shorten(text: str, limit: int = 22) -> str:
    """`text` cut to `limit` characters with an ellipsis (long tokens would squash the plots)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def model_label(results) -> str:
    """Model name for titles, with the quantization of a quantized checkpoint ('smollm2 (Q4_1 GGUF)')."""
    quantized = quantization(results.metadata)
    return model_name(results.metadata) + (f" ({quantized})" if quantized else "")


def definition_label(results) -> str:
    """'active: <neuron definition> · 1.2M tokens' for figure subtitles."""
    definition = results.neuron_definition or f"pre-activation > {results.threshold}"
    return f"active: {definition} · {format_count(results.tokens)} tokens"


def format_count(value) -> str:
    """1234567 -> '1.2M', 5300 -> '5.3k'."""
    value = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


TITLE_CHARS_PER_INCH = 12  # about what fits at the titles' 10.5 pt


def suptitle(figure, results, title: str) -> None:
    """'<model> — <title>' over a subtitle with the neuron definition, threshold and token count,
    wrapped to the figure's width (a one-panel figure must not cut the definition off)."""
    width = max(20, int(figure.get_figwidth() * TITLE_CHARS_PER_INCH))
    lines = [f"{model_label(results)} — {title}", definition_label(results)]
    figure.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=10.5)


def empty_note(ax, text: str):
    """Write `text` in the middle of an Axes that has nothing to draw, and return the Axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax
