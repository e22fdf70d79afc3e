"""Positional mutual information, its bootstrap null, on/off ranges and types (analysis.positional)."""

import json
import math

import numpy as np
import pytest

from fastneurons.analysis.positional import (count_alternations, find_runs, find_runs_naive, null_mi_samples,
                                             null_mi_samples_naive, positional_mi, positional_mi_naive,
                                             positional_neurons, positional_types)


def counts_from_rates(rates, seen=10):
    """pos_active [T, F] and pos_seen [T] with pos_active = round(rate * seen)."""
    rates = np.asarray(rates, dtype=np.float64)
    if rates.ndim == 1:
        rates = rates[:, None]
    return np.rint(rates * seen).astype(np.int64), np.full(rates.shape[0], seen, dtype=np.int64)


def test_constant_neurons_have_zero_mi():
    pos_active, pos_seen = counts_from_rates(np.column_stack([np.zeros(32), np.ones(32), np.full(32, 0.5)]))
    mi = positional_mi(pos_active, pos_seen)
    assert mi[:2].tolist() == [0.0, 0.0]  # fr = 0 and fr = 1: exactly 0 by definition
    assert mi[2] == pytest.approx(0.0, abs=1e-12)  # constant 0.5: 0 up to rounding


def test_first_half_neuron_has_ln2():
    rates = np.r_[np.ones(32), np.zeros(32)]
    pos_active, pos_seen = counts_from_rates(rates)
    assert positional_mi(pos_active, pos_seen)[0] == pytest.approx(math.log(2))
    assert positional_mi(pos_active, pos_seen, log_base=2)[0] == pytest.approx(1.0)


def test_two_level_neuron_matches_closed_form():
    a, b = 0.8, 0.2  # rate in the first and the second half; fr = 0.5
    kl = lambda p, q: p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    pos_active, pos_seen = counts_from_rates(np.r_[np.full(20, a), np.full(20, b)])
    assert positional_mi(pos_active, pos_seen)[0] == pytest.approx((kl(a, 0.5) + kl(b, 0.5)) / 2)


def test_unseen_positions_are_left_out():
    pos_active, pos_seen = counts_from_rates(np.r_[np.ones(32), np.zeros(32)])
    padded_active = np.vstack([pos_active, np.zeros((16, 1), np.int64)])
    padded_seen = np.r_[pos_seen, np.zeros(16, np.int64)]
    assert positional_mi(padded_active, padded_seen)[0] == pytest.approx(math.log(2))


@pytest.mark.parametrize("equal_seen", [True, False])
def test_matches_naive(equal_seen):
    rng = np.random.default_rng(1)
    pos_seen = np.full(40, 13) if equal_seen else rng.integers(0, 20, size=40)
    pos_active = rng.integers(0, 21, size=(40, 7)) % (pos_seen[:, None] + 1)
    pos_active[:, 0] = 0
    pos_active[:, 1] = pos_seen
    expected = positional_mi_naive(pos_active, pos_seen)
    assert positional_mi(pos_active, pos_seen) == pytest.approx(expected, rel=1e-9, abs=1e-14)
    assert positional_mi(pos_active, pos_seen, log_base=10) == pytest.approx(expected / math.log(10))


def test_bad_counts():
    with pytest.raises(ValueError, match="pos_active"):
        positional_mi(np.array([[3]]), np.array([2]))
    with pytest.raises(ValueError, match=r"\[T, F\]"):
        positional_mi(np.zeros((3, 2), np.int64), np.zeros(4, np.int64))


def test_bootstrap_null_removes_small_sample_noise():
    rng = np.random.default_rng(0)
    noise = rng.binomial(4, 0.5, size=64)  # no positional dependence, 4 sequences per position
    step = np.r_[np.full(32, 4), np.zeros(32, np.int64)]  # fully positional
    pos_active, pos_seen = np.column_stack([noise, step]), np.full(64, 4)
    result = positional_neurons(pos_active, pos_seen, null_samples=200, seed=0)
    assert result.mi[0] > 0.05  # plug-in I is biased upwards on tiny counts
    assert result.is_positional.tolist() == [True, True]
    assert result.positional_corrected.tolist() == [False, True]
    assert result.mi_pvalue[0] > 0.05 and result.mi_pvalue[1] == pytest.approx(1 / 201)
    assert result.mi_bias_estimate == pytest.approx(63 / 128 / 4)
    assert result.mi_null_q[0] > result.mi[0]


def test_fast_null_matches_per_position_draws():
    seen = np.r_[np.full(50, 6), np.full(14, 3), [1]]  # two big groups and one single position
    for rate in (0.02, 0.5):
        fast = null_mi_samples(seen, rate, 4000, np.random.default_rng(0))
        slow = null_mi_samples_naive(seen, rate, 4000, np.random.default_rng(1))
        assert fast.mean() == pytest.approx(slow.mean(), rel=0.05)
        assert np.quantile(fast, 0.9) == pytest.approx(np.quantile(slow, 0.9), rel=0.08)
    assert null_mi_samples(seen, 0.0, 5, np.random.default_rng(0)).tolist() == [0.0] * 5


def test_runs_at_the_edges():
    column = np.zeros(40, dtype=bool)
    column[:16] = True  # touches position 0, exactly min_run
    column[20:35] = True  # min_run - 1: too short
    column[36:] = False
    assert find_runs(column[:, None], 16) == [[[0, 15]]]
    column[24:] = True  # now touches T-1: 20..39 is 20 long
    assert find_runs(column[:, None], 16) == [[[0, 15], [20, 39]]]
    assert find_runs(column[:, None], 16)[0] == find_runs_naive(column.tolist(), 16)
    rng = np.random.default_rng(2)
    masks = rng.random((60, 5)) < 0.8
    assert find_runs(masks, 3) == [find_runs_naive(masks[:, n].tolist(), 3) for n in range(5)]


def test_alternations():
    assert count_alternations([[0, 9], [20, 29]], [[10, 19], [30, 39]]) == 3
    assert count_alternations([[0, 9], [20, 29]], [[10, 19]]) == 2
    assert count_alternations([[0, 9], [10, 19]], [[30, 39]]) == 1
    assert count_alternations([[0, 9]], []) == 0


def blocks(*levels, size=32):
    return np.concatenate([np.full(size, level, dtype=np.float64) for level in levels])


def test_types_and_strengths():
    ramp = np.linspace(0.1, 0.9, 128)
    zigzag = np.tile([0.3, 0.7], 64)
    columns = {
        "oscillatory strong": blocks(1, 0, 1, 0),
        "both strong (1 alternation)": blocks(1, 1, 0, 0),
        "both strong (2 alternations)": blocks(0, 1, 1, 0),
        "one strong": blocks(0, 0.5, 0.5, 0.5),
        "oscillatory weak": blocks(0.97, 0.03, 0.95, 0.05),
        "one strong beats weak oscillation": blocks(1, 0.03, 0.97, 0.03),
        "other strong": ramp,
        "other weak": zigzag,
        "short run is other": np.r_[np.ones(15), np.full(113, 0.5)],
    }
    types, strengths, on_ranges = positional_types(np.column_stack(list(columns.values())))
    assert list(zip(types, strengths)) == [
        ("oscillatory", "strong"), ("both_extremes", "strong"), ("both_extremes", "strong"),
        ("one_extreme", "strong"), ("oscillatory", "weak"), ("one_extreme", "strong"),
        ("other", "strong"), ("other", "weak"), ("other", "strong")]
    assert on_ranges[0] == [[0, 31], [64, 95]]
    assert all(ranges == [] for ranges in on_ranges[1:])


def test_left_out_position_breaks_a_run():
    fr = np.r_[np.ones(20), np.full(20, 0.5)][:, None]
    fr[10] = np.nan  # pos_seen == 0 there
    types, _, _ = positional_types(fr)
    assert types == ["other"]


def test_positional_neurons_layer():
    rates = np.column_stack([blocks(1, 0, 1, 0), np.full(128, 0.5), blocks(1, 1, 0, 0)])
    pos_active, pos_seen = counts_from_rates(rates, seen=20)
    result = positional_neurons(pos_active, pos_seen, layer=1, null_samples=50)
    assert result.neurons.tolist() == [0, 2] and result.num_positional == 2
    assert result.types == ["oscillatory", "both_extremes"] and result.strengths == ["strong", "strong"]
    assert result.on_ranges == {0: [[0, 31], [64, 95]]}
    assert result.type_counts["oscillatory"] == {"strong": 1, "weak": 0}
    assert result.corrected.tolist() == [True, True] and np.isnan(result.mi_null_q[1])
    assert result.frequency.tolist() == pytest.approx([0.5, 0.5, 0.5])
    as_dict = result.to_dict()
    json.dumps(as_dict)
    assert as_dict["on_ranges"] == {"0": [[0, 31], [64, 95]]}
    assert "mi" not in result.to_dict(per_neuron=False)
    no_null = positional_neurons(pos_active, pos_seen, null_samples=0)
    assert no_null.positional_corrected.tolist() == no_null.is_positional.tolist()
