"""analyze_counts end to end on a small in-memory counts object (fastneurons.analysis.pipeline)."""

import json

import numpy as np
import pytest

from dict_counts import DictCounts
from fastneurons.analysis.pipeline import AnalysisSettings, analyze_counts

LAYERS, NGRAM_LAYERS, ORDERS, F, T, VOCAB_SIZE = [0, 1, 2], [0, 1], [1, 3], 8, 16, 12


def fires(layer, n, sequence, p, rng):
    """Which neurons are active: 0 detects token 3; 1 detects 4 (layer 0) or 5 (later); 2 is positional;
    3 is dead; 5 detects the bigram (7, 6); the rest fire at random."""
    token = sequence[p]
    rules = {0: token == 3, 1: token == (4 if layer == 0 else 5), 2: p < 8, 3: False,
             5: token == 6 and p >= 1 and sequence[p - 1] == 7}
    return rules[n] if n in rules else rng.random() < 0.4


class MemoryCounts(DictCounts):
    """The counts-reader interface of docs/analysis.md, filled by naive counting of a random corpus."""

    def __init__(self, seed=0, sequences=30):
        rng = np.random.default_rng(seed)
        self.start(LAYERS, NGRAM_LAYERS, ORDERS, F, T, ["web", "code"])
        self.vocab = [f"tok{i}" for i in range(VOCAB_SIZE)]
        self.metadata = {"neuron_definition": "fc1 pre-activation > threshold", "threshold": 0.0,
                         "model": {"name": "toy", "sizes": (1, 2)}}
        for s in range(sequences):
            sequence = [2] + rng.integers(3, VOCAB_SIZE, size=T - 1 - s % 3).tolist()
            self.count_sequence(sequence, s % 2, lambda layer, n, p: fires(layer, n, sequence, p, rng))


class Weights:
    """E = identity over the vocabulary; neuron 0 suppresses token 3, neuron 1 promotes 4 and 5."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.directions = {layer: rng.standard_normal((VOCAB_SIZE, F)).astype(np.float32) for layer in LAYERS}
        for layer in LAYERS:
            self.directions[layer][:, 0] = 0.0
            self.directions[layer][3, 0] = -1.0
            self.directions[layer][:, 1] = 0.0
            self.directions[layer][[4, 5], 1] = 1.0
        self.calls = []

    def update_directions(self, layer, neurons):
        self.calls.append((layer, list(neurons)))
        return self.directions[layer][:, neurons]

    def unembedding(self):
        return np.eye(VOCAB_SIZE, dtype=np.float32)


@pytest.fixture(scope="module")
def counts():
    return MemoryCounts()


def test_end_to_end(counts):
    weights = Weights()
    results = analyze_counts(counts, AnalysisSettings(null_samples=50), weights=weights)
    assert results.neuron_definition == "fc1 pre-activation > threshold" and results.threshold == 0.0
    assert results.layers == LAYERS and results.orders == ORDERS
    assert all(results.dead[layer].dead_indices.tolist() == [3] for layer in LAYERS)
    assert results.summary["dead_percent"] == [12.5, 12.5, 12.5]
    assert [results.positional[layer].neurons.tolist() for layer in LAYERS] == [[2], [2], [2]]
    token_detectors = results.detectors[1]
    assert {0, 1} <= set(token_detectors[0].neurons.tolist()) and 4 not in token_detectors[0].neurons
    assert token_detectors[0].ngram_ids(0) == [[3]]
    assert 5 in results.detectors[3][0].neurons.tolist()  # the bigram (7, 6) is covered by its trigrams
    detected = results.detected_ngrams[1]
    assert detected.set_size == [2, 2] and detected.new_vs_previous == [2, 1] and detected.cumulative_size == [2, 3]
    layer0 = results.suppression[0]
    suppresses = dict(zip(layer0.neurons.tolist(), layer0.suppresses.tolist()))
    assert suppresses[0] is True and suppresses[1] is False
    assert layer0.control_neurons.size == layer0.num_detectors
    assert not set(layer0.control_neurons.tolist()) & (set(layer0.neurons.tolist()) | {3})  # alive non-detectors
    assert results.suppression_overall.num_detectors == sum(r.num_detectors for r in results.suppression.values())
    assert results.suppression_skipped is None and results.positional_skipped is None
    assert results.domains[0].domains == ["web", "code"]
    assert results.coverage[1][0].histogram.neurons == F - 1

    text = json.dumps(results.to_dict(), allow_nan=False)
    loaded = json.loads(text)
    assert loaded["format"] == "fastneurons.analysis/1"
    assert loaded["metadata"]["threshold"] == 0.0 and loaded["metadata"]["model"]["sizes"] == [1, 2]
    assert loaded["settings"]["max_coverage"] == {"1": 5, "2": 50, "3": 50}
    assert loaded["detectors"]["1"]["0"]["detectors"][0]["ngrams"][0]["tokens"] == ["tok3"]
    assert loaded["summary"]["num_detectors"]["1"] == [len(token_detectors[0].neurons),
                                                       len(token_detectors[1].neurons)]
    small = json.dumps(results.to_dict(per_neuron=False), allow_nan=False)
    assert len(small) < len(text) and '"frequency"' not in small


def test_without_weights_suppression_is_skipped(counts):
    results = analyze_counts(counts, AnalysisSettings(null_samples=0, orders=(1,)))
    assert results.suppression == {} and "no model weights" in results.suppression_skipped
    assert results.orders == [1] and list(results.detectors) == [1]
    json.dumps(results.to_dict(), allow_nan=False)


def test_settings_validation():
    assert AnalysisSettings().validate().max_coverage == {1: 5, 2: 50, 3: 50}
    for bad in [dict(coverage=0.0), dict(bins=(0, 5)), dict(orders=(4,)), dict(eps_weak=0.6),
                dict(log_base=1.0), dict(null_quantile=1.0), dict(control_size=-1), dict(min_run=0)]:
        with pytest.raises(ValueError):
            AnalysisSettings(**bad).validate()
    json.dumps(AnalysisSettings().to_dict())


def test_store_without_positions(counts):
    class NoPositions(MemoryCounts):
        has_positions = False

        def pos_active(self, layer):
            raise KeyError("recorded with --no-positions")

    results = analyze_counts(NoPositions(sequences=4), AnalysisSettings(orders=(1,)))
    assert results.positional == {} and "without position counts" in results.positional_skipped
    assert results.summary["num_positional"] == []


def test_progress_sees_every_per_layer_loop(counts):
    shown = []

    def progress(items, desc):
        items = list(items)
        shown.append((desc, len(items)))
        return items

    quiet = analyze_counts(counts, AnalysisSettings(null_samples=20), weights=Weights())
    results = analyze_counts(counts, AnalysisSettings(null_samples=20), weights=Weights(), progress=progress)
    assert shown == [("dead, positional", len(LAYERS)), ("n-gram detectors", len(ORDERS)),
                     ("suppression", len(results.suppression))]
    assert json.dumps(results.to_dict()) == json.dumps(quiet.to_dict())  # progress changes nothing
