"""Every plot function of fastneurons.reporting.figures draws on real analysis results and returns its Axes.

The results come from `analyze_counts` on a small in-memory counts object whose neurons are built to be
token / bigram detectors, dead, and positional of each type, with fake weights for suppression.
"""
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.axes import Axes

from dict_counts import DictCounts
from fastneurons.reporting import figures
from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts
from fastneurons.reporting.analyze import positional_curves, projection_examples
from fastneurons.reporting.figures.style import TITLE_CHARS_PER_INCH, layer_axis, new_figure, suptitle

LAYERS, NGRAM_LAYERS, ORDERS, F, T, V = [0, 1, 2], [0, 1], [1, 2, 3], 12, 64, 16
VOCAB = [f"w{i}" for i in range(V)]
VOCAB[5] = "<script>x</script>"
VOCAB[6] = "\n"


def fires(n, sequence, p, rng):
    """0 detects token 3; 1 detects tokens 4 and 5; 2 oscillates (period 32); 3 is dead; 4 is a step (p < 24);
    5 is one extreme (p >= 4); 6 rises with p (other); 7 detects the bigram (7, 6); the rest are random."""
    token = sequence[p]
    rules = {0: token == 3, 1: token in (4, 5), 2: (p // 16) % 2 == 0, 3: False, 4: p < 24, 5: p >= 4,
             6: rng.random() < 0.1 + 0.8 * p / T, 7: token == 6 and p >= 1 and sequence[p - 1] == 7}
    return rules[n] if n in rules else rng.random() < 0.4


class FakeCounts(DictCounts):
    """The counts-reader interface of docs/analysis.md, filled by naive counting of a random corpus."""

    def __init__(self, sequences=30, seed=0, domains=("web", "code")):
        rng = np.random.default_rng(seed)
        self.start(LAYERS, NGRAM_LAYERS, ORDERS, F, T, domains)
        self.vocab = VOCAB
        self.metadata = {"neuron_definition": "opt: fc1(x)[n] > 0.0 (ReLU output non-zero)", "threshold": 0.0,
                         "architecture": "opt", "model": {"spec": "toy/opt-fake"},
                         "model_config": {"hidden_size": 8, "num_hidden_layers": 3, "ffn_dim": F}}
        for s in range(sequences):
            sequence = [2] + rng.integers(3, V, size=T - 1).tolist()
            self.count_sequence(sequence, s % len(domains), lambda layer, n, p: fires(n, sequence, p, rng))


class FakeWeights:
    """E = identity over the vocabulary; neuron 0 suppresses token 3, neuron 1 promotes tokens 4 and 5."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.directions = rng.standard_normal((V, F)).astype(np.float32)
        self.directions[:, 0] = 0.0
        self.directions[3, 0] = -1.0
        self.directions[:, 1] = 0.0
        self.directions[[4, 5], 1] = 1.0

    def update_directions(self, layer, neurons):
        return self.directions[:, list(neurons)]

    def unembedding(self):
        return np.eye(V, dtype=np.float32)


SETTINGS = AnalysisSettings(null_samples=20, control_size=3)


@pytest.fixture(scope="module")
def counts():
    return FakeCounts()


@pytest.fixture(scope="module")
def results(counts):
    return analyze_counts(counts, SETTINGS, weights=FakeWeights())


def drawn(ax):
    """Artists an Axes holds besides its frame (lines, bars, texts)."""
    return len(ax.lines) + len(ax.patches) + len(ax.collections) + len(ax.texts)


def test_the_fake_results_hold_every_kind_of_neuron(results):
    layer0 = results.positional[0]
    kinds = dict(zip(layer0.neurons.tolist(), zip(layer0.types, layer0.strengths)))
    assert kinds[2] == ("oscillatory", "strong") and kinds[4] == ("both_extremes", "strong")
    assert kinds[5][0] == "one_extreme" and kinds[6][0] == "other"
    assert {0, 1} <= set(results.detectors[1][0].neurons.tolist())
    assert results.suppression[0].num_detectors >= 2 and results.dead[0].dead_count == 1


PLOTS_OF_RESULTS = [
    figures.plot_dead_percent, figures.plot_alive_frequency, figures.plot_domain_dead_percent,
    figures.plot_domain_frequency, figures.plot_detector_counts, figures.plot_suppression_by_layer,
    figures.plot_positional_types, figures.plot_on_ranges,
    lambda r, ax=None: figures.plot_coverage(r, 1, ax), lambda r, ax=None: figures.plot_coverage(r, 3, ax, True),
    lambda r, ax=None: figures.plot_detected_ngrams(r, 1, ax), lambda r, ax=None: figures.plot_new_ngrams(r, 3, ax),
]


@pytest.mark.parametrize("plot", PLOTS_OF_RESULTS)
def test_plot_functions_return_their_axes_with_artists(results, plot):
    ax = plot(results)
    assert isinstance(ax, Axes) and drawn(ax) > 0 and ax.get_title()
    fresh = figures.plot_dead_percent(results).figure.subplots()  # an Axes passed in is the one drawn on
    assert plot(results, ax=fresh) is fresh and drawn(fresh) > 0


def test_plots_draw_the_numbers_of_the_results(results):
    bars = figures.plot_dead_percent(results).patches
    assert [bar.get_height() for bar in bars] == [results.dead[layer].dead_percent for layer in results.layers]
    ax = figures.plot_positional_types(results)
    assert sum(bar.get_height() for bar in ax.patches) == sum(p.num_positional for p in results.positional.values())
    ax = figures.plot_on_ranges(results, 0)
    assert results.positional[0].on_ranges == {2: [[0, 15], [32, 47]]}
    starts = sorted(path.vertices[:, 0].min() for path in ax.collections[0].get_paths())
    assert len(ax.collections) == 1 and starts == [0, 32]
    ax = figures.plot_new_ngrams(results, 1)
    detected = results.detected_ngrams[1]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == detected.set_size + detected.new_overall + detected.new_vs_previous


def test_cross_model_plots_draw_one_line_per_model(results, counts):
    other = analyze_counts(FakeCounts(sequences=10, seed=3, domains=("web",)), SETTINGS)
    for plot in (figures.plot_cross_dead_percent, figures.plot_cross_alive_frequency):
        ax = plot([results, other], ["a", "b"])
        assert len(ax.lines) == 2 and [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
        assert max(ax.lines[0].get_xdata()) == 1.0  # relative depth of the last of 3 layers
    ax = figures.plot_cross_detectors([results, other], ["a", "b"], k=1)
    line = ax.lines[0]
    expected = [100.0 * results.detectors[1][layer].num_detectors / results.num_neurons
                for layer in results.ngram_layers]
    assert list(line.get_ydata()) == pytest.approx(expected) and len(ax.lines) == 2
    ax = figures.plot_cross_positional([results, other], ["a", "b"])
    expected = [100.0 * results.positional[layer].num_positional_corrected / results.num_neurons
                for layer in sorted(results.positional)]
    assert list(ax.lines[0].get_ydata()) == pytest.approx(expected)


def test_examples_and_curves_plots(results, counts):
    examples = projection_examples(results, FakeWeights(), VOCAB)
    assert examples and all(e.suppresses == (e.trigger_score < 0) for e in examples)
    first = {e.neuron: e for e in examples if e.layer == 0}[0]
    assert first.suppressed[0] == ("'w3'", -1.0, True)  # the trigger is the most suppressed token
    ax = figures.plot_projection_example(first)
    assert isinstance(ax, Axes) and len(ax.patches) == len(first.promoted) + len(first.suppressed)
    assert any(label.get_fontweight() == "bold" for label in ax.get_yticklabels())
    curves = positional_curves(results, counts)
    assert {c.type for c in curves} == {"oscillatory", "both_extremes", "one_extreme", "other"}
    oscillatory = next(c for c in curves if c.neuron == 2)
    np.testing.assert_array_equal(oscillatory.fr, ((np.arange(T) // 16) % 2 == 0).astype(float))
    ax = figures.plot_positional_curves([c for c in curves if c.type == "other"])
    assert isinstance(ax, Axes) and len(ax.lines) >= 1
    empty = figures.plot_positional_curves([], title="none")
    assert isinstance(empty, Axes) and empty.texts


def test_titles_wrap_to_the_figure_width(results):
    definition = "llama: mlp.gate_proj(x)[n] > 1.0 (pre-activation of SiLU), a long definition " * 2
    figure, _ = new_figure(4.0, 3.0)
    suptitle(figure, replace(results, neuron_definition=definition), "what token detectors promote")
    lines = figure.get_suptitle().split("\n")
    assert len(lines) > 2 and all(len(line) <= 4 * TITLE_CHARS_PER_INCH for line in lines)
    assert " ".join(" ".join(lines).split()).count("gate_proj(x)[n] > 1.0") == 2  # nothing cut off


def test_layer_ticks_are_recorded_layers_only():
    for layers, expected in ((range(30), list(range(0, 30, 2))), ([3, 7, 9], [3, 7, 9]), (range(64), list(range(0, 64, 4)))):
        _, ax = new_figure()
        layer_axis(ax, layers)
        assert ax.get_xticks().tolist() == expected and ax.get_xlabel() == "layer"


def test_build_figures_captions_and_skips(results, counts):
    items, skipped = figures.build_figures(results, projection_examples(results, FakeWeights(), VOCAB),
                                           positional_curves(results, counts))
    names = [item.name for item in items]
    assert names == ["fig1_dead_frequency", "domains_dead_frequency", "fig2_coverage", "fig3_detectors",
                     "fig4_new_ngrams", "fig5_projection_examples", "fig6_suppression_by_layer",
                     "fig7_positional_examples", "fig8_positional_types", "fig9_oscillatory_ranges"]
    assert skipped == {}
    assert all(item.caption and "toy/opt-fake" in item.figure.get_suptitle() for item in items)
    assert "fc1(x)[n] > 0.0" in items[0].figure.get_suptitle()  # titles say which definition of active
    coverage = next(item for item in items if item.name == "fig2_coverage")
    assert "0.95" in coverage.caption and "1, 6, 11" in coverage.caption
    bare = analyze_counts(FakeCounts(sequences=4, domains=("web",)), AnalysisSettings(null_samples=0, orders=(1,)))
    items, skipped = figures.build_figures(bare)
    assert "fig5_projection_examples" not in [i.name for i in items] and any("Fig. 5" in key for key in skipped)
