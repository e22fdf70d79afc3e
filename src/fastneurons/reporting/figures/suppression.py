"""Suppression figures: an example detector's vocabulary projection (paper Fig. 5) and per-layer fractions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastneurons.reporting.figures.style import COLORS, axes_or_new, empty_note, layer_axis, shorten, styled


@dataclass(frozen=True)
class ProjectionExample:
    """One token detector's top promoted / suppressed tokens with their scores s = E v (drawn by Fig. 5).

    `promoted` and `suppressed` are (token text, s, is a trigger) triples, most extreme first.
    """

    layer: int
    neuron: int
    triggers: list  # display texts of the trigger tokens
    trigger_score: float  # mean s over the triggers
    trigger_percentile: float  # mean rank percentile of the triggers (0 = most suppressed)
    suppresses: bool
    promoted: list
    suppressed: list


@styled
def plot_projection_example(example: ProjectionExample, ax=None):
    """Fig. 5: horizontal bars of s for a detector's top promoted (top) and top suppressed (bottom) tokens;
    its trigger tokens are drawn in gold with bold labels."""
    ax = axes_or_new(ax, 4.2, 4.6)
    rows = list(example.promoted) + list(reversed(example.suppressed))  # top: most promoted; bottom: most suppressed
    rows = rows[::-1]  # barh draws from the bottom
    y = np.arange(len(rows))
    scores = [score for _, score, _ in rows]
    colors = [COLORS["trigger"] if trigger else (COLORS["promoted"] if score >= 0 else COLORS["suppressed"])
              for _, score, trigger in rows]
    ax.barh(y, scores, color=colors, height=0.75)
    ax.axvline(0, color=COLORS["reference"], lw=0.8)
    reach = max((abs(v) for v in scores), default=1.0) * 1.08 or 1.0
    ax.set_xlim(-reach, reach)
    ax.set_yticks(y, [shorten(text) for text, _, _ in rows], fontsize=8)
    for label, (_, _, trigger) in zip(ax.get_yticklabels(), rows):
        if trigger:
            label.set_fontweight("bold")
    if example.promoted and example.suppressed:
        ax.axhline(len(example.suppressed) - 0.5, color="#cccccc", lw=0.8, ls=":")
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("s = E v")
    triggers = ", ".join(shorten(t, 16) for t in example.triggers[:4]) + (" …" if len(example.triggers) > 4 else "")
    verdict = "suppresses its triggers" if example.suppresses else "does not suppress its triggers"
    ax.set_title(f"layer {example.layer}, neuron {example.neuron}: {verdict}\ntriggers {triggers}\n"
                 f"mean s on triggers {example.trigger_score:+.3g}, percentile {example.trigger_percentile:.2f}",
                 fontsize=8.5)
    return ax


@styled
def plot_suppression_by_layer(results, ax=None, reference: float | None = 0.8):
    """Fraction of token detectors whose triggers' mean score s is below 0, per layer, beside the control
    (random alive non-detectors scored on the same triggers); `reference` draws the paper's 80% line."""
    ax = axes_or_new(ax)
    if not results.suppression:
        return empty_note(ax, f"suppression not computed: {results.suppression_skipped or 'no detectors'}")
    layers = list(results.suppression)
    x = np.asarray(layers, float)
    detectors = [results.suppression[layer].fraction_suppressing for layer in layers]
    control = [results.suppression[layer].control_fraction_suppressing for layer in layers]
    width = 0.38
    ax.bar(x - width / 2, detectors, width, color=COLORS["detectors"], label="token detectors")
    ax.bar(x + width / 2, control, width, color=COLORS["control"], label="control (random alive neurons)")
    if reference is not None:
        ax.axhline(reference, color=COLORS["reference"], ls="--", lw=0.9, label=f"paper: over {reference:.0%} (OPT)")
    overall = results.suppression_overall
    if overall is not None and overall.num_detectors:
        ax.text(0.01, 0.98, f"overall: {overall.fraction_suppressing:.0%} of {overall.num_detectors} detectors, "
                f"control {overall.control_fraction_suppressing:.0%}", transform=ax.transAxes, va="top", fontsize=8.5)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction suppressing their triggers")
    ax.set_title("Token detectors that suppress their triggers")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    layer_axis(ax, layers)
    return ax
