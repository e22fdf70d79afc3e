"""Coverage sizes C_k(n) and their histogram (fastneurons.analysis.coverage)."""

import numpy as np
import pytest

from fastneurons.analysis.coverage import (PAPER_BINS, ceil_fraction, coverage_and_mass, coverage_histogram,
                                           coverage_sizes, coverage_sizes_naive, exact_fraction, neuron_coverage)


def table(per_neuron: dict):
    """(neuron, count) columns from {neuron: [counts of its n-grams]}."""
    neuron = [n for n, counts in per_neuron.items() for _ in counts]
    count = [c for counts in per_neuron.values() for c in counts]
    return np.array(neuron, dtype=np.uint32), np.array(count, dtype=np.int64)


def test_exact_95_percent_boundary():
    # A = 20: 95% is exactly 19. Top-1 = 19 reaches it; top-1 = 18 needs a second n-gram.
    neuron, count = table({0: [19, 1], 1: [18, 1, 1], 2: [1] * 20, 3: [10, 9, 1]})
    assert coverage_sizes(neuron, count, 5).tolist() == [1, 2, 19, 2, 0]


def test_ties_do_not_change_size():
    neuron, count = table({0: [5, 5, 5, 5], 1: [3, 3, 3, 1]})
    # 0: A=20, need 19 -> 4 n-grams; 1: A=10, need ceil(9.5)=10 -> all 4
    assert coverage_sizes(neuron, count, 2).tolist() == [4, 4]
    assert coverage_sizes(neuron, count, 2, coverage=0.5).tolist() == [2, 2]


def test_order_of_rows_and_dead_neurons():
    neuron, count = table({3: [1, 96, 4], 1: [7]})
    sizes, mass = coverage_and_mass(neuron[::-1].copy(), count[::-1].copy(), 4)
    assert sizes.tolist() == [0, 1, 0, 1]  # 3: A=101, need ceil(95.95)=96: the largest row alone
    assert mass.tolist() == [0, 7, 0, 101]
    sizes = coverage_sizes(np.array([0, 0, 0]), np.array([1, 96, 5]), 1)
    assert sizes.tolist() == [2]  # A=102, need ceil(96.9)=97: 96 + 5


def test_size_one_when_top_reaches_exactly():
    neuron, count = table({0: [95, 5]})
    assert coverage_sizes(neuron, count, 1).tolist() == [1]
    neuron, count = table({0: [94, 6]})
    assert coverage_sizes(neuron, count, 1).tolist() == [2]


def test_ceil_fraction_is_exact():
    fraction = exact_fraction(0.95)
    assert (fraction.numerator, fraction.denominator) == (19, 20)
    values = np.array([0, 1, 19, 20, 21, 40, 10**12 + 7])
    expected = [-(-v * 19 // 20) for v in values.tolist()]
    assert ceil_fraction(values, fraction).tolist() == expected


@pytest.mark.parametrize("coverage", [0.95, 0.5, 1.0, 0.333])
def test_matches_naive_on_random_tables(coverage):
    rng = np.random.default_rng(7)
    num_neurons = 40
    neuron = rng.integers(0, num_neurons - 3, size=3000).astype(np.uint32)
    count = rng.geometric(0.3, size=3000).astype(np.int64) * rng.integers(1, 4, size=3000)
    fast = coverage_sizes(neuron, count, num_neurons, coverage)
    assert fast.tolist() == coverage_sizes_naive(neuron, count, num_neurons, coverage).tolist()


def test_large_counts_use_the_lexsort_path():
    neuron, count = table({0: [2**41, 1], 1: [3, 2**41]})
    assert coverage_sizes(neuron, count, 2).tolist() == [1, 1]


def test_histogram_paper_bins():
    sizes = np.array([0, 1, 5, 6, 10, 11, 20, 21, 50, 51, 200, 201, 1000, 1001, 2000, 2001, 50000])
    histogram = coverage_histogram(sizes)
    assert histogram.labels == ["1-5", "6-10", "11-20", "21-50", "51-200", "201-1000", "1001-2000", "2001+"]
    assert histogram.counts.tolist() == [2, 2, 2, 2, 2, 2, 2, 2]
    assert histogram.neurons == 16
    assert histogram.fractions.sum() == pytest.approx(1.0)
    custom = coverage_histogram(sizes, bins=(1, 2, 3))
    assert custom.labels == ["1", "2", "3+"] and custom.counts.tolist() == [1, 0, 15]


def test_neuron_coverage_result_is_json_ready():
    import json

    neuron, count = table({0: [19, 1], 2: [1, 1]})
    result = neuron_coverage(neuron, count, 3, k=1, layer=4)
    assert result.neurons_with_mass == 2 and result.histogram.counts[0] == 2
    json.dumps(result.to_dict())
    assert "sizes" not in result.to_dict(per_neuron=False)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="neuron ids"):
        coverage_sizes(np.array([5]), np.array([1]), 3)
    with pytest.raises(ValueError, match="coverage"):
        coverage_sizes(np.array([0]), np.array([1]), 3, coverage=1.5)
    with pytest.raises(TypeError, match="integer"):
        coverage_sizes(np.array([0]), np.array([1.0]), 3)
    with pytest.raises(ValueError, match="bins"):
        coverage_histogram(np.array([1]), bins=(2, 5))
    assert PAPER_BINS[0] == 1
