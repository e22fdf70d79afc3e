"""Dead neurons, activation frequency and the per-domain breakdown (analysis.dead, analysis.domains)."""

import json

import numpy as np
import pytest

from fastneurons.analysis.dead import dead_neurons, dead_neurons_per_layer
from fastneurons.analysis.domains import domain_breakdown


def test_dead_count_percent_and_frequency():
    result = dead_neurons(np.array([0, 10, 0, 30, 0, 0, 20, 40]), tokens=100, layer=3)
    assert result.dead_count == 4 and result.dead_percent == 50.0
    assert result.dead_indices.tolist() == [0, 2, 4, 5]
    assert result.frequency.tolist() == [0, 0.1, 0, 0.3, 0, 0, 0.2, 0.4]
    assert result.mean_alive_frequency == pytest.approx(0.25)  # dead neurons are not averaged
    assert result.layer == 3 and result.num_neurons == 8


def test_all_dead_and_no_tokens():
    result = dead_neurons(np.zeros(4, dtype=np.int64), tokens=0)
    assert result.dead_percent == 100.0 and np.isnan(result.mean_alive_frequency)
    assert result.to_dict()["mean_alive_frequency"] is None  # NaN becomes JSON null
    json.dumps(result.to_dict())


def test_per_layer():
    results = dead_neurons_per_layer({0: np.array([1, 0]), 5: np.array([1, 1])}, tokens=2)
    assert {layer: r.dead_count for layer, r in results.items()} == {0: 1, 5: 0}


def test_bad_input():
    with pytest.raises(ValueError, match="above tokens"):
        dead_neurons(np.array([5]), tokens=4)
    with pytest.raises(TypeError, match="integer"):
        dead_neurons(np.array([0.5]), tokens=4)
    with pytest.raises(ValueError, match="1-D"):
        dead_neurons(np.zeros((2, 2), dtype=np.int64), tokens=4)


def test_domain_breakdown():
    active = np.array([[0, 5, 0, 2],
                       [0, 0, 4, 8],
                       [0, 0, 0, 0]])
    result = domain_breakdown(active, np.array([10, 20, 0]), ["code", "web", "empty"], layer=1)
    assert result.dead_count == [2, 2, 4]
    assert result.dead_percent == [50.0, 50.0, 100.0]
    assert result.mean_alive_frequency[0] == pytest.approx((0.5 + 0.2) / 2)
    assert result.mean_alive_frequency[1] == pytest.approx((0.2 + 0.4) / 2)
    assert np.isnan(result.mean_alive_frequency[2])
    assert result.alive_only_here == [1, 1, 0]  # neuron 1 only in code, neuron 2 only in web
    assert result.dead_everywhere == 1
    json.dumps(result.to_dict())
    with pytest.raises(ValueError, match="labels"):
        domain_breakdown(active, np.array([10, 20, 0]), ["a", "b"])
