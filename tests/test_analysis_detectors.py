"""Token and n-gram detectors, and detected n-grams across layers (fastneurons.analysis.detectors)."""

import json

import numpy as np
import pytest

from fastneurons.analysis.detectors import (detected_ngrams_by_layer, find_detectors, find_detectors_naive,
                                            unpack_key)


def pack(ids, pack_bits=16):
    key = 0
    for token in ids:
        key = (key << pack_bits) | token
    return key


def make_table(rows, seen):
    """rows: [(key, neuron, count)], seen: {key: count} -> sorted table and seen columns."""
    rows = sorted(rows)
    table = (np.array([r[0] for r in rows], dtype=np.uint64), np.array([r[1] for r in rows], dtype=np.uint32),
             np.array([r[2] for r in rows], dtype=np.int64))
    keys = sorted(seen)
    return table, (np.array(keys, dtype=np.uint64), np.array([seen[k] for k in keys], dtype=np.int64))


SEEN = {1: 20, 2: 20, 3: 100, 4: 5, 5: 1, 6: 1, 7: 14, 8: 13}
ROWS = [
    (1, 0, 19), (3, 0, 1),  # 0: 19 >= 0.95*20 covers token 1, 19 of A=20 -> detector
    (2, 1, 20), (1, 1, 1),  # 1: covers token 2, 20 >= ceil(0.95*21)=20 -> detector
    (1, 2, 18),  # 2: 18 < 19 = 0.95*seen: nothing covered -> candidate, not detector
    (5, 3, 1),  # 3: seen 1, active 1 -> covered only while min_count <= 1
    (1, 4, 1), (2, 4, 1), (3, 4, 1), (4, 4, 1), (5, 4, 1), (6, 4, 1),  # 4: C=6 > m_1=5, not a candidate
    (4, 6, 5), (7, 6, 14), (3, 6, 1),  # 6: covered mass 19 >= 19 -> detector, C=2
    (4, 7, 5), (8, 7, 13), (3, 7, 2),  # 7: covered mass 18 < 19 -> not a detector, C=3
]
VOCAB = [f"t{i}" for i in range(10)]


def test_token_detectors_at_the_boundaries():
    table, seen = make_table(ROWS, SEEN)
    result = find_detectors(table, seen, num_neurons=8, k=1, vocab=VOCAB, layer=2)
    assert result.neurons.tolist() == [0, 1, 3, 6]
    assert result.num_candidates == 6  # 0, 1, 2, 3, 6, 7 (4 too wide, 5 dead)
    assert result.coverage_size.tolist() == [1, 1, 1, 2]
    assert [result.ngram_ids(i) for i in range(4)] == [[[1]], [[2]], [[5]], [[7], [4]]]
    assert result.ngram_active.tolist() == [19, 20, 1, 14, 5]
    assert result.ngram_seen.tolist() == [20, 20, 1, 14, 5]
    assert result.covered_mass.tolist() == [19, 20, 1, 19]
    assert result.covered_share.tolist() == pytest.approx([19 / 20, 20 / 21, 1.0, 19 / 20])
    assert result.detected_keys().tolist() == [1, 2, 4, 5, 7]
    as_dict = result.to_dict()
    json.dumps(as_dict)
    assert as_dict["detectors"][3]["ngrams"][0] == {"key": 7, "ids": [7], "active": 14, "seen": 14, "tokens": ["t7"]}


def test_min_count_and_rates():
    table, seen = make_table(ROWS, SEEN)
    assert find_detectors(table, seen, 8, 1, min_count=2).neurons.tolist() == [0, 1, 6]
    # a looser cover rate lets neuron 2 cover token 1 (18 >= 0.9 * 20)
    assert 2 in find_detectors(table, seen, 8, 1, cover_rate=0.9).neurons.tolist()
    assert find_detectors(table, seen, 8, 1, max_coverage=6).num_candidates == 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    num_neurons, keys = 30, 40
    seen = {g: int(rng.integers(1, 30)) for g in range(keys)}
    rows = []
    for n in range(num_neurons):
        for g in rng.choice(keys, size=int(rng.integers(0, 9)), replace=False).tolist():
            full = rng.random() < 0.7
            rows.append((g, n, seen[g] if full else int(rng.integers(1, seen[g] + 1))))
    table, seen_columns = make_table(rows, seen)
    found = 0
    for cover_rate, min_count in [(0.95, 1), (0.8, 3)]:
        fast = find_detectors(table, seen_columns, num_neurons, 1, max_coverage=5, cover_rate=cover_rate,
                              min_count=min_count)
        naive = find_detectors_naive(table, seen_columns, num_neurons, 1, max_coverage=5, cover_rate=cover_rate,
                                     min_count=min_count)
        assert fast.neurons.tolist() == sorted(naive)
        found += len(naive)
        for i, n in enumerate(fast.neurons.tolist()):
            lo, hi = fast.ngram_offsets[i], fast.ngram_offsets[i + 1]
            assert sorted(fast.ngram_keys[lo:hi].tolist()) == naive[n]
    assert found >= 5  # the random tables do exercise detectors


def test_trigram_keys_decode():
    trigram = pack([3, 1, 2])
    table, seen = make_table([(trigram, 0, 10)], {trigram: 10})
    result = find_detectors(table, seen, 1, k=3, vocab=VOCAB)
    assert result.max_coverage == 50 and result.ngram_ids(0) == [[3, 1, 2]]
    assert result.ngram_tokens == [["t3", "t1", "t2"]]
    assert unpack_key(pack([70000, 5, 2**21 - 1], 21), 3, 21) == [70000, 5, 2**21 - 1]


def test_missing_seen_entry_is_an_error():
    table, _ = make_table([(1, 0, 3)], {})
    with pytest.raises(ValueError, match="missing from ngram_seen"):
        find_detectors(table, (np.array([2], np.uint64), np.array([3])), 1, 1)


def layer_detectors(tokens_per_neuron, layer):
    rows = [(token, neuron, 10) for neuron, token in enumerate(tokens_per_neuron)]
    table, seen = make_table(rows, {token: 10 for token in tokens_per_neuron})
    return find_detectors(table, seen, len(tokens_per_neuron), 1, layer=layer)


def test_detected_ngrams_new_and_cumulative():
    per_layer = [layer_detectors([1, 2], 0), layer_detectors([2, 3], 1), layer_detectors([1, 4, 4], 2)]
    result = detected_ngrams_by_layer(per_layer, vocab=VOCAB)
    assert result.layers == [0, 1, 2] and result.num_detectors == [2, 2, 3]
    assert result.set_size == [2, 2, 2]
    assert result.cumulative_size == [2, 3, 4]
    assert result.new_overall == [2, 1, 1]
    assert result.new_vs_previous == [2, 1, 2]
    assert result.tokens[2] == [["t1"], ["t4"]]
    json.dumps(result.to_dict())
    with pytest.raises(ValueError, match="one k"):
        detected_ngrams_by_layer([per_layer[0], find_detectors(*make_table([(pack([1, 2]), 0, 1)],
                                                                           {pack([1, 2]): 1}), 1, 2)])
