"""Vocabulary projections of update directions and trigger suppression (fastneurons.analysis.suppression)."""

import json

import numpy as np
import pytest

from fastneurons.analysis.suppression import (rank_percentiles, select_controls, summarize_suppression,
                                              suppression, suppression_naive, vocab_projection)

IDENTITY = np.eye(6, dtype=np.float32)  # E = I: the projection s equals v, so ranks are read off v
DIRECTIONS = np.array([
    [0, -3, 1, 2, -1, 0.5],  # triggers {1}: the most suppressed token -> percentile 0, suppresses
    [5, 4, 3, 2, 1, 0],  # triggers {0, 1}: ranks 5 and 4 of 0..5 -> percentile 0.9, promotes
    [1, 1, 0, 0, 0, 2],  # triggers {0}: 3 below, one tie -> average rank 3.5 -> 0.7
], dtype=np.float32).T
TRIGGERS = [[1], [0, 1], [0]]


def test_projection_shape_and_center():
    unembedding = np.arange(12, dtype=np.float32).reshape(4, 3)  # V=4, d=3
    directions = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32)  # two neurons
    scores = vocab_projection(directions, unembedding)
    assert scores.shape == (2, 4) and scores[1].tolist() == [1, 4, 7, 10]
    centered = vocab_projection(directions, unembedding, center=True)
    assert centered[1].tolist() == pytest.approx([-4.5, -1.5, 1.5, 4.5])
    with pytest.raises(ValueError, match="d=3"):
        vocab_projection(np.ones((2, 1), np.float32), unembedding)


def test_known_detectors():
    result = suppression([7, 8, 9], TRIGGERS, DIRECTIONS, IDENTITY, k_top=3, layer=1)
    assert result.mean_score.tolist() == [-3.0, 4.5, 1.0]
    assert result.suppresses.tolist() == [True, False, False]
    assert result.trigger_percentile.tolist() == pytest.approx([0.0, 0.9, 0.7])
    assert result.fraction_suppressing == pytest.approx(1 / 3)
    assert result.mean_percentile == pytest.approx((0.0 + 0.9 + 0.7) / 3)
    assert result.top_promoted[0].tolist() == [3, 2, 5]
    assert result.top_suppressed[0].tolist() == [1, 4, 0]
    assert result.num_detectors == 3 and result.num_suppressing == 1
    json.dumps(result.to_dict())


def test_center_changes_the_sign():
    direction = np.array([[10, 10, 10, 10, 10, 4]], dtype=np.float32).T
    assert not suppression([0], [[5]], direction, IDENTITY).suppresses[0]
    assert suppression([0], [[5]], direction, IDENTITY, center=True).suppresses[0]


def test_controls_are_paired_with_trigger_sets():
    controls = np.array([[-1, 0, 0, 0, 0, 0], [0, -1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]],
                        dtype=np.float32).T
    result = suppression([7, 8, 9], TRIGGERS, DIRECTIONS, IDENTITY, control_neurons=[20, 21, 22, 23],
                         control_directions=controls)
    assert result.control_pairs.tolist() == [0, 1, 2, 0]
    # control 20 on {1}: 0 -> not; 21 on {0,1}: mean -0.5 -> yes; 22 on {0}: 0 -> not; 23 on {1}: 1 -> not
    assert result.control_mean_score.tolist() == [0.0, -0.5, 0.0, 1.0]
    assert result.control_suppresses.tolist() == [False, True, False, False]
    assert result.control_fraction_suppressing == 0.25
    assert result.control_percentile[3] == pytest.approx(1.0)


def test_matches_naive_on_random_matrices():
    rng = np.random.default_rng(3)
    unembedding = rng.standard_normal((50, 8)).astype(np.float32)
    directions = rng.standard_normal((8, 5)).astype(np.float32)
    triggers = [rng.choice(50, size=int(rng.integers(1, 4)), replace=False) for _ in range(5)]
    result = suppression(np.arange(5), triggers, directions, unembedding)
    for i in range(5):
        # the naive reference works in float64: compare against scores rounded the same way
        mean, percentile = suppression_naive(directions[:, i], triggers[i], unembedding)
        assert result.mean_score[i] == pytest.approx(mean, rel=1e-5)
        assert result.trigger_percentile[i] == pytest.approx(percentile)


def test_rank_percentiles_ties():
    scores = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    assert rank_percentiles(scores, np.array([0, 4])).tolist() == [0.5, 0.5]


def test_select_controls():
    alive = np.array([True] * 8 + [False] * 2)
    first = select_controls(alive, exclude=[0, 1], size=4, seed=5, layer=2)
    assert first.size == 4 and not set(first.tolist()) & {0, 1, 8, 9}
    assert first.tolist() == select_controls(alive, [0, 1], 4, seed=5, layer=2).tolist()
    assert select_controls(alive, [0, 1], 100, seed=5).size == 6  # capped by the pool


def test_summary_pools_layers():
    one = suppression([7, 8, 9], TRIGGERS, DIRECTIONS, IDENTITY, layer=0)
    two = suppression([1], [[1]], DIRECTIONS[:, :1], IDENTITY, layer=1)
    summary = summarize_suppression([one, two])
    assert summary.num_detectors == 4 and summary.num_suppressing == 2
    assert summary.fraction_suppressing == 0.5
    assert summary.fraction_suppressing_by_layer == pytest.approx([1 / 3, 1.0])
    assert summary.control_size == 0 and summary.to_dict()["control_fraction_suppressing"] is None


def test_bad_input():
    with pytest.raises(ValueError, match="trigger"):
        suppression([0], [[6]], DIRECTIONS[:, :1], IDENTITY)
    with pytest.raises(ValueError, match="trigger sets"):
        suppression([0, 1], [[1]], DIRECTIONS[:, :2], IDENTITY)
    with pytest.raises(ValueError, match="fc2 columns"):
        suppression([0], [[1]], np.ones((5, 1), np.float32), IDENTITY)
