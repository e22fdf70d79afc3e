"""The figures of one analysis (and of several models side by side), each with a caption stating its parameters.

`build_figures` composes the plot functions into titled figures; it draws what the results hold and
computes nothing. Figures with nothing to show are left out and reported in `skipped` with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from matplotlib.figure import Figure

from fastneurons.analysis.positional import TYPES
from fastneurons.reporting.figures import across, dead, ngrams, positional, suppression
from fastneurons.reporting.figures.style import new_figure, suptitle


@dataclass
class FigureItem:
    """One figure to save and show: file stem, title, caption (what it shows, with the SPEC parameters)."""

    name: str
    title: str
    caption: str
    figure: Figure


def _base(value) -> str:
    return "e" if math.isclose(float(value), math.e) else f"{float(value):g}"


def _item(results, name, title, caption, figure) -> FigureItem:
    suptitle(figure, results, title)
    return FigureItem(name, title, caption, figure)


def _dead_figures(results, settings):
    figure, (left, right) = new_figure(11, 3.9, ncols=2)
    dead.plot_dead_percent(results, left)
    dead.plot_alive_frequency(results, right)
    caption = ("Fig. 1 (a) share of dead neurons per layer: never active on any of the counted tokens "
               f"(BOS excluded unless --count-bos); (b) mean activation frequency active/tokens of the "
               f"alive neurons. Active means {results.neuron_definition or 'pre-activation > threshold'}.")
    items = [_item(results, "fig1_dead_frequency", "dead neurons and activation frequency", caption, figure)]
    if len(next(iter(results.domains.values())).domains if results.domains else []) > 1:
        figure, (left, right) = new_figure(11, 3.9, ncols=2)
        dead.plot_domain_dead_percent(results, left)
        dead.plot_domain_frequency(results, right)
        items.append(_item(results, "domains_dead_frequency", "per corpus domain", figure=figure, caption=(
            "Dead neurons (%) and mean frequency of alive neurons per layer, computed on each corpus domain "
            "alone (a neuron dead on one domain may be alive on another; see domains.csv).")))
    return items


def _orders_text(mapping) -> str:
    return ", ".join(f"m_{k} = {v}" for k, v in sorted((int(k), v) for k, v in (mapping or {}).items()))


def _ngram_figures(results, settings):
    if not results.orders:
        return [], {"n-gram figures (Fig. 2-4, 12, 13, 15)": "the store holds no n-gram tables"}
    coverage, bins = settings.get("coverage", 0.95), settings.get("bins")
    paper_figure = {1: "Fig. 2", 2: "Fig. 12", 3: "Fig. 13"}
    figure, axes = new_figure(4.0 * len(results.orders) + 1.3, 4.0, ncols=len(results.orders), squeeze=False)
    for i, (k, ax) in enumerate(zip(results.orders, axes[0])):
        ngrams.plot_coverage(results, k, ax, legend=i == len(results.orders) - 1)
    which = ", ".join(f"{paper_figure.get(k, 'k=' + str(k))} (k={k})" for k in results.orders)
    items = [_item(results, "fig2_coverage", "coverage of the alive neurons by n-grams", figure=figure, caption=(
        f"{which}: per layer, alive neurons binned by coverage C_k(n) = the fewest k-grams whose counts reach "
        f"{coverage:g} of the neuron's activations (--coverage; bins with lower bounds {bins}, --bins). A small "
        "C_k means the neuron fires on a few n-grams only."))]
    figure, (left, right) = new_figure(11, 3.9, ncols=2)
    ngrams.plot_detector_counts(results, left)
    ngrams.plot_detected_ngrams(results, 1 if 1 in results.orders else results.orders[0], right)
    items.append(_item(results, "fig3_detectors", "n-gram detectors", figure=figure, caption=(
        f"Fig. 3 (a) detectors per layer: alive neurons with C_k <= m_k ({_orders_text(settings.get('max_coverage'))}) "
        f"whose covered n-grams (each active on at least {settings.get('cover_rate', 0.95):g} of its occurrences, "
        f"--cover-rate, and seen at least {settings.get('min_count', 1)} time(s), --min-count) hold at least "
        f"{coverage:g} of its activations; (b) tokens detected by the layer's token detectors (solid) and by all "
        "layers up to it (dashed).")))
    shown = [(k, number) for k, number in ((1, "4"), (3, "15")) if k in results.orders]
    if shown:
        figure, axes = new_figure(5.6 * len(shown), 3.9, ncols=len(shown), squeeze=False)
        for (k, _), ax in zip(shown, axes[0]):
            ngrams.plot_new_ngrams(results, k, ax)
        which = " and ".join(f"Fig. {number} ({ngrams.ngram_name(k, True)})" for k, number in shown)
        items.append(_item(results, "fig4_new_ngrams", "new detected n-grams per layer", figure=figure, caption=(
            f"{which}: for each layer, the n-grams detected by its detectors (grey), those detected by no "
            "earlier layer (new overall) and those not detected by the previous n-gram layer (new against the "
            "previous layer; every n-gram of the first layer is new).")))
    return items, {}


def _suppression_figures(results, settings, examples):
    if not results.suppression:
        return [], {"suppression figures (Fig. 5, 6)": results.suppression_skipped or "no token detectors"}
    items = []
    params = (f"s = E v with E the unembedding (lm_head.weight) and v the neuron's column of the down projection "
              f"(fc2.weight[:, n] for OPT; no layer norm, "
              f"{'centred' if settings.get('center') else 'not centred'}; --center)")
    if examples:
        columns = min(2, len(examples))
        rows = -(-len(examples) // columns)
        figure, axes = new_figure(5.2 * columns, 4.9 * rows, nrows=rows, ncols=columns, squeeze=False)
        for example, ax in zip(examples, axes.flat):
            suppression.plot_projection_example(example, ax)
        for ax in list(axes.flat)[len(examples):]:
            ax.set_axis_off()
        items.append(_item(results, "fig5_projection_examples", "what token detectors promote and suppress",
                           figure=figure, caption=(
            f"Fig. 5 Example token detectors (those with the most activations): the {settings.get('k_top', 10)} "
            f"tokens with the largest (top) and smallest (bottom) score, {params}. Trigger tokens are gold "
            "and bold; the percentile is the triggers' mean rank in s (0 = the most suppressed token, 1 = the most "
            "promoted).")))
    figure, ax = new_figure(9, 3.9)
    suppression.plot_suppression_by_layer(results, ax)
    control = settings.get("control_size")
    items.append(_item(results, "fig6_suppression_by_layer", "trigger suppression per layer", figure=figure, caption=(
        f"Share of token detectors whose triggers' mean score is negative ({params}), per layer, beside a control "
        f"of {'as many' if control is None else control} random alive non-detector neurons per layer scored on "
        f"the same trigger sets (seed {settings.get('seed', 0)}). The dashed line is the paper's 'over 80%', "
        "stated for OPT.")))
    return items, {}


def _positional_figures(results, settings, curves):
    if not results.positional:
        return [], {"positional figures (Fig. 7-9)": results.positional_skipped or "no position counts"}
    params = (f"Positional iff I(act; pos) > {settings.get('mi_threshold', 0.05):g} (--mi-threshold; log base "
              f"{_base(settings.get('log_base', math.e))}); ranges are runs of >= {settings.get('min_run', 16)} "
              "positions (--min-run) with "
              f"fr(p) >= 1-eps or <= eps, eps = {settings.get('eps_strong', 0.0):g} (strong) then "
              f"{settings.get('eps_weak', 0.05):g} (weak); 'other' is strong iff its roughness <= "
              f"{settings.get('smooth', 0.02):g} (--smooth)")
    items, skipped = [], {}
    if curves:
        figure, axes = new_figure(11, 7.0, nrows=2, ncols=2)
        for kind, ax in zip(TYPES, axes.flat):
            positional.plot_positional_curves([c for c in curves if c.type == kind], ax,
                                              positional.type_axes_title(kind, results))
        items.append(_item(results, "fig7_positional_examples", "positional neurons by type", figure=figure, caption=(
            "Fig. 7 Activation frequency fr(p) = pos_active[p, n] / pos_seen[p] against position for the positional "
            f"neurons with the largest I of each type. {params}.")))
    figure, ax = new_figure(9, 4.0)
    positional.plot_positional_types(results, ax)
    items.append(_item(results, "fig8_positional_types", "positional neurons per layer", figure=figure, caption=(
        f"Fig. 8 Positional neurons per layer by type and strength. {params}. The counts use the plug-in I; "
        "positional.csv also flags the neurons that pass the bootstrap null (--null-samples "
        f"{settings.get('null_samples', 200)}).")))
    layer = positional.strong_oscillatory_layer(results)
    if layer is None:
        skipped["Fig. 9 (on-ranges)"] = "no strongly oscillatory neuron in any layer"
    else:
        ax = positional.plot_on_ranges(results, layer)
        items.append(_item(results, "fig9_oscillatory_ranges", f"oscillatory neurons of layer {layer}",
                           figure=ax.figure, caption=(
            f"Fig. 9 On-ranges (fr(p) = 1 on at least {settings.get('min_run', 16)} consecutive positions) of "
            f"the strongly oscillatory neurons of layer {layer}, the layer with the most of them; one row per "
            "neuron, sorted by where its first range starts.")))
    return items, skipped


def build_figures(results, examples=(), curves=()) -> tuple:
    """All figures of one analysis -> ([FigureItem], {figure: why it was not drawn}).

    `examples` ([ProjectionExample]) feed Fig. 5 and `curves` ([PositionalCurve]) Fig. 7; both are
    prepared from the counts and weights by the caller (figures open no files).
    """
    settings = results.settings or {}
    items = _dead_figures(results, settings)
    skipped = {}
    for more, why in (_ngram_figures(results, settings), _suppression_figures(results, settings, list(examples)),
                      _positional_figures(results, settings, list(curves))):
        items += more
        skipped.update(why)
    return items, skipped


def build_cross_figures(results_list, labels=None) -> list:
    """Figures comparing several stores (model sizes or families) against relative layer depth: Fig. 1, and
    token detectors with positional neurons where the stores have them."""
    figure, (left, right) = new_figure(11, 4.2, ncols=2)
    across.plot_cross_dead_percent(results_list, labels, left)
    across.plot_cross_alive_frequency(results_list, labels, right)
    figure.suptitle("Dead neurons and activation frequency across models", fontsize=10.5)
    definitions = sorted({str(r.neuron_definition) for r in results_list})
    active = "Active: " + "; ".join(definitions) + "."
    caption = ("Fig. 1 across models: dead neurons (%) and the mean activation frequency of alive neurons, per "
               "layer, against the layer's relative depth (layer / (layers - 1)); one line per model. " + active)
    items = [FigureItem("cross_dead_frequency", "dead neurons and frequency across models", caption, figure)]
    if any(1 in r.orders and r.ngram_layers for r in results_list) or any(r.positional for r in results_list):
        figure, (left, right) = new_figure(11, 4.2, ncols=2)
        across.plot_cross_detectors(results_list, labels, 1, left)
        across.plot_cross_positional(results_list, labels, right)
        figure.suptitle("Token detectors and positional neurons across models", fontsize=10.5)
        caption = ("Fig. 3 and Fig. 6 across models: token (k = 1) detectors and positional neurons (above the "
                   "bootstrap null) as a percentage of each layer's neurons, against relative depth; a model "
                   "without n-gram tables or position counts has no line in that panel. " + active)
        items.append(FigureItem("cross_detectors_positional", "detectors and positional neurons across models",
                                caption, figure))
    return items
