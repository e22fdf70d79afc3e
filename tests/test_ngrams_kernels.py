"""N-gram keys, kernels and accumulators against the naive reference (exact integer equality)."""

import numpy as np
import pytest

from fastneurons.ngrams import (NgramAccumulator, SeenAccumulator, SeenTable, Table, count_seen,
                                merge_many, pack_bits_for_vocab, pack_key, unpack_key, unpack_keys)
from fastneurons.ngrams.naive import naive_seen, naive_table, unpack_bits

ORDERS = (1, 2, 3)


def pack_active(active: np.ndarray) -> np.ndarray:
    """bool [N, F] -> uint64 [N, ceil(F/64)], bit j of word w = neuron 64*w + j."""
    n, f = active.shape
    padded = np.zeros((n, (f + 63) // 64 * 64), dtype=bool)
    padded[:, :f] = active
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def make_chunk(rng, batch=6, seq_len=24, num_neurons=100, vocab=7, density=0.3, lengths=None,
               count_bos=False):
    """Random right-padded chunk: (bits, token_ids, positions, counted), flattened to N = B*S rows."""
    if lengths is None:
        lengths = rng.integers(0, seq_len + 1, batch)
    positions = np.full((batch, seq_len), -1, dtype=np.int32)
    token_ids = np.ones((batch, seq_len), dtype=np.int64)  # pad id 1
    for b, length in enumerate(lengths):
        positions[b, :length] = np.arange(length)
        token_ids[b, :length] = rng.integers(0, vocab, length)
        token_ids[b, 0] = min(2, vocab - 1)  # BOS
    active = (rng.random((batch * seq_len, num_neurons)) < density) & (positions.reshape(-1, 1) >= 0)
    counted = positions >= (0 if count_bos else 1)
    return pack_active(active), token_ids.reshape(-1), positions.reshape(-1), counted.reshape(-1)


def assert_same_table(fast, slow):
    assert fast.order == slow.order
    assert fast.key.dtype == np.uint64 and fast.count.dtype == np.int64
    np.testing.assert_array_equal(fast.key, slow.key)
    np.testing.assert_array_equal(fast.count, slow.count)
    if isinstance(slow, Table):
        assert fast.neuron.dtype == np.uint32
        np.testing.assert_array_equal(fast.neuron, slow.neuron)


def check_against_naive(chunk, num_neurons, pack_bits=16, orders=ORDERS):
    bits, token_ids, positions, counted = chunk
    accumulator = NgramAccumulator(num_neurons, orders, pack_bits)
    accumulator.add(bits, token_ids, positions, counted)
    tables = accumulator.tables()
    seen = count_seen(token_ids, positions, counted, orders, pack_bits)
    for k in orders:
        assert_same_table(tables[k], naive_table(bits, token_ids, positions, counted, num_neurons, k,
                                                 pack_bits))
        assert_same_table(seen[k], naive_seen(token_ids, positions, counted, k, pack_bits))
    return tables, seen


# ---------------------------------------------------------------- keys

def test_pack_bits_for_vocab():
    assert pack_bits_for_vocab(50272) == 16
    assert pack_bits_for_vocab(2**16) == 16
    assert pack_bits_for_vocab(2**16 + 1) == 21
    assert pack_bits_for_vocab(2**21) == 21
    with pytest.raises(ValueError, match="2\\*\\*21"):
        pack_bits_for_vocab(2**21 + 1)


def test_key_layout_matches_spec():
    assert pack_key((5, 6, 7), 16) == 5 << 32 | 6 << 16 | 7
    assert pack_key((2**21 - 1, 3, 4), 21) == (2**21 - 1) << 42 | 3 << 21 | 4
    assert unpack_key(5 << 32 | 6 << 16 | 7, 3, 16) == (5, 6, 7)
    keys = np.array([pack_key(ids, 21) for ids in [(1, 2), (2**21 - 1, 0), (0, 2**21 - 1)]],
                    dtype=np.uint64)
    np.testing.assert_array_equal(unpack_keys(keys, 2, 21), [[1, 2], [2**21 - 1, 0], [0, 2**21 - 1]])


# ---------------------------------------------------------------- one chunk vs naive

@pytest.fixture(params=["serial", "parallel"])
def kernel_path(request, monkeypatch):
    """Run a test through the single-threaded kernels and again through the parallel ones."""
    from fastneurons.ngrams import accumulator

    if request.param == "parallel":
        monkeypatch.setattr(accumulator, "PARALLEL_MIN_WORDS", 0)
        monkeypatch.setattr(accumulator, "PARALLEL_MIN_ROWS", 0)
    return request.param


@pytest.mark.parametrize("density", [0.05, 0.5])
@pytest.mark.parametrize("num_neurons", [64, 100, 200])
def test_random_chunk_matches_naive(density, num_neurons, kernel_path):
    rng = np.random.default_rng(num_neurons + int(density * 100))
    check_against_naive(make_chunk(rng, num_neurons=num_neurons, density=density), num_neurons)


def test_large_groups_and_singletons_match_naive(kernel_path):
    rng = np.random.default_rng(1)
    # vocab 3: few huge unigram groups; vocab 5000: nearly all trigrams unique
    for vocab in (3, 5000):
        chunk = make_chunk(rng, batch=8, seq_len=64, num_neurons=130, vocab=vocab, density=0.2)
        check_against_naive(chunk, 130)


def test_short_sequences_bos_only_and_padding():
    rng = np.random.default_rng(2)
    chunk = make_chunk(rng, batch=5, seq_len=6, num_neurons=70, lengths=[1, 2, 3, 0, 6])
    tables, seen = check_against_naive(chunk, 70)
    # lengths 1 and 0 contribute nothing; length 2 only a unigram; trigrams need length >= 4
    assert int(seen[1].count.sum()) == 1 + 2 + 5
    assert int(seen[2].count.sum()) == 1 + 4
    assert int(seen[3].count.sum()) == 3


def test_count_bos_still_excludes_position_zero():
    rng = np.random.default_rng(3)
    chunk = make_chunk(rng, batch=4, seq_len=10, num_neurons=65, count_bos=True)
    tables, seen = check_against_naive(chunk, 65)
    positions = chunk[2]
    assert int(seen[1].count.sum()) == int((positions >= 1).sum())


def test_empty_chunk_all_padding():
    rng = np.random.default_rng(4)
    chunk = make_chunk(rng, batch=3, seq_len=5, num_neurons=100, lengths=[0, 0, 0])
    tables, seen = check_against_naive(chunk, 100)
    assert all(tables[k].rows == 0 and seen[k].rows == 0 for k in ORDERS)


def test_max_ids_16_and_21_bits():
    rng = np.random.default_rng(5)
    bits, token_ids, positions, counted = make_chunk(rng, batch=4, seq_len=12, num_neurons=66)
    top16 = np.where(positions >= 0, np.where(rng.random(token_ids.size) < 0.5, 2**16 - 1, token_ids), 1)
    check_against_naive((bits, top16, positions, counted), 66, pack_bits=16)
    big = np.where(positions >= 0, rng.integers(2**16, 2**21, token_ids.size), 1)
    tables, _ = check_against_naive((bits, big, positions, counted), 66, pack_bits=21)
    assert unpack_keys(tables[3].key, 3, 21).max() >= 2**16


def test_unpackable_ids_are_refused():
    rng = np.random.default_rng(6)
    bits, token_ids, positions, counted = make_chunk(rng, batch=2, seq_len=5, num_neurons=10,
                                                     lengths=[5, 5])
    token_ids = token_ids.copy()
    token_ids[3] = 2**16
    with pytest.raises(ValueError, match="token id 65536"):
        NgramAccumulator(10).add(bits, token_ids, positions, counted)
    with pytest.raises(ValueError, match="token id 65536"):
        count_seen(token_ids, positions, counted)
    token_ids[3] = -1
    with pytest.raises(ValueError, match="token id -1"):
        NgramAccumulator(10, pack_bits=21).add(bits, token_ids, positions, counted)
    token_ids[3] = 50
    with pytest.raises(ValueError, match="token id 50"):
        NgramAccumulator(10, vocab_size=50).add(bits, token_ids, positions, counted)


def test_bad_layout_and_shapes_are_refused():
    rng = np.random.default_rng(7)
    bits, token_ids, positions, counted = make_chunk(rng, batch=2, seq_len=5, num_neurons=70,
                                                     lengths=[5, 3])
    accumulator = NgramAccumulator(70)
    shuffled = positions.copy()
    shuffled[[1, 2]] = shuffled[[2, 1]]
    with pytest.raises(ValueError, match="row-major"):
        accumulator.add(bits, token_ids, shuffled, counted)
    with pytest.raises(ValueError, match="shape"):
        accumulator.add(bits[:, :1], token_ids, positions, counted)
    high = bits.copy()
    high[1, 1] |= np.uint64(1) << np.uint64(63)
    with pytest.raises(ValueError, match="beyond neuron"):
        accumulator.add(high, token_ids, positions, counted)
    pad_counted = counted.copy()
    pad_counted[-1] = True
    with pytest.raises(ValueError, match="padding"):
        accumulator.add(bits, token_ids, positions, pad_counted)
    with pytest.raises(ValueError, match="orders"):
        NgramAccumulator(70, orders=(4,))


def test_int64_bits_and_batch_shape_are_accepted():
    rng = np.random.default_rng(8)
    bits, token_ids, positions, counted = make_chunk(rng, batch=3, seq_len=8, num_neurons=64)
    flat = NgramAccumulator(64)
    flat.add(bits, token_ids, positions, counted)
    shaped = NgramAccumulator(64)
    shaped.add(bits.view(np.int64).reshape(3, 8, 1), token_ids.reshape(3, 8),
               positions.reshape(3, 8), counted.reshape(3, 8))
    for k in ORDERS:
        assert_same_table(shaped.tables()[k], flat.tables()[k])


# ---------------------------------------------------------------- several chunks

def test_many_chunks_equal_naive_on_concatenation(kernel_path):
    rng = np.random.default_rng(9)
    chunks = [make_chunk(rng, batch=3, seq_len=16, num_neurons=90, vocab=6, density=0.25)
              for _ in range(13)]
    accumulator = NgramAccumulator(90)
    seen_accumulator = SeenAccumulator()
    for i, chunk in enumerate(chunks):
        accumulator.add(*chunk)
        seen_accumulator.add(*chunk[1:])
        if i % 2:  # intermediate tables() calls leave runs that later calls merge
            accumulator.tables()
            seen_accumulator.tables()
    assert accumulator.nbytes > 0 and seen_accumulator.nbytes > 0
    everything = [np.concatenate(column) for column in zip(*chunks, strict=True)]
    tables, seen = accumulator.tables(), seen_accumulator.tables()
    for k in ORDERS:
        assert_same_table(tables[k], naive_table(*everything, 90, k))
        assert_same_table(seen[k], naive_seen(*everything[1:], k))
    accumulator.clear()
    assert accumulator.nbytes == 0 and accumulator.tables()[2].rows == 0


def test_nbytes_bounds_the_tables_to_come():
    rng = np.random.default_rng(12)
    accumulator = NgramAccumulator(100)
    for _ in range(3):
        accumulator.add(*make_chunk(rng, num_neurons=100, vocab=1000, density=0.3))
    promised = accumulator.nbytes
    tables = accumulator.tables()
    assert sum(table.nbytes for table in tables.values()) <= promised
    assert accumulator.nbytes <= promised


def test_unigram_mass_equals_active_counts():
    rng = np.random.default_rng(10)
    bits, token_ids, positions, counted = make_chunk(rng, num_neurons=75)
    accumulator = NgramAccumulator(75, orders=(1,))
    accumulator.add(bits, token_ids, positions, counted)
    table = accumulator.tables()[1]
    active = unpack_bits(bits, 75)[counted].sum(axis=0)
    np.testing.assert_array_equal(np.bincount(table.neuron, table.count, minlength=75), active)


def test_merge_many_sums_duplicates():
    a = Table(np.array([1, 1, 5], np.uint64), np.array([0, 3, 2], np.uint32), np.array([1, 2, 3]), 2)
    b = Table(np.array([1, 4], np.uint64), np.array([3, 0], np.uint32), np.array([10, 20]), 2)
    merged = merge_many([a, b, Table.empty(2)])
    np.testing.assert_array_equal(merged.key, [1, 1, 4, 5])
    np.testing.assert_array_equal(merged.neuron, [0, 3, 0, 2])
    np.testing.assert_array_equal(merged.count, [1, 12, 20, 3])
    seen = merge_many([SeenTable(np.array([2, 9], np.uint64), np.array([1, 1]), 1),
                       SeenTable(np.array([9], np.uint64), np.array([4]), 1)])
    np.testing.assert_array_equal(seen.count, [1, 5])
    np.testing.assert_array_equal(seen.lookup(np.array([9, 3, 2], np.uint64)), [5, 0, 1])


def test_real_opt_activations_match_naive():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.OPTConfig(vocab_size=300, hidden_size=32, ffn_dim=100, num_hidden_layers=1,
                                    num_attention_heads=2, max_position_embeddings=64,
                                    word_embed_proj_dim=32)
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(config).eval()
    rng = np.random.default_rng(11)
    lengths = [20, 7, 1, 13]
    ids = np.ones((4, 20), dtype=np.int64)
    positions = np.full((4, 20), -1, dtype=np.int32)
    for b, length in enumerate(lengths):
        ids[b, :length] = rng.integers(3, 40, length)
        ids[b, 0] = 2
        positions[b, :length] = np.arange(length)
    captured = {}
    fc1 = model.model.decoder.layers[0].fc1
    handle = fc1.register_forward_hook(lambda module, args, out: captured.update(pre=out.detach()))
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(positions >= 0).long())
    handle.remove()
    active = (captured["pre"].reshape(-1, 100).numpy() > 0) & (positions.reshape(-1, 1) >= 0)
    assert 0.2 < active[positions.reshape(-1) >= 0].mean() < 0.8
    check_against_naive((pack_active(active), ids.reshape(-1), positions.reshape(-1),
                         (positions >= 1).reshape(-1)), 100)


def random_table(rng, rows, max_key=50, num_neurons=40, order=3):
    keys = rng.integers(0, max_key, rows).astype(np.uint64)
    neurons = rng.integers(0, num_neurons, rows).astype(np.uint64)
    pairs, first = np.unique(np.stack([keys, neurons], axis=1), axis=0, return_index=True)
    counts = rng.integers(1, 100, first.size).astype(np.int64)
    return Table(pairs[:, 0].copy(), pairs[:, 1].astype(np.uint32), counts, order)


@pytest.mark.parametrize("parts", [1, 2, 7, 64])
def test_parallel_merge_parts_match_reference(parts):
    from fastneurons.ngrams import kernels

    rng = np.random.default_rng(parts)
    for rows_a, rows_b in [(300, 200), (500, 3), (5, 400), (1, 1), (0, 0)]:
        a, b = random_table(rng, rows_a), random_table(rng, rows_b)
        key, neuron, count = kernels.merge_tables_sorted(a.key, a.neuron, a.count, b.key, b.neuron,
                                                         b.count, parts)
        pairs = np.stack([np.concatenate([a.key, b.key]),
                          np.concatenate([a.neuron, b.neuron]).astype(np.uint64)], axis=1)
        unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
        expected = np.bincount(inverse.reshape(-1), np.concatenate([a.count, b.count]),
                               minlength=len(unique)).astype(np.int64)
        np.testing.assert_array_equal(key, unique[:, 0])
        np.testing.assert_array_equal(neuron, unique[:, 1])
        np.testing.assert_array_equal(count, expected)
