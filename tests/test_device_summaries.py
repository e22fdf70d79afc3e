"""Bounded pass 1 in torch ops (recording/device_summaries.py) against the numba accumulator on the
same inputs: exact equality of every summary row, delta and mass, across folds, cuts, snapshots and resumes, and
of whole recordings. Runs on the CPU here; benchmarks/gpu_check.py runs the same checks on a GPU."""

import numpy as np
import pytest
import torch

from fastneurons.ngrams import bounded
from fastneurons.ngrams.bounded import SummaryAccumulator
from fastneurons.recording.device_summaries import DeviceSummaryAccumulator, active_pairs, neuron_key_order


def _chunk(rng, n, num_neurons, density, vocab, seq=17):
    ids = rng.integers(0, vocab, n)
    positions = (np.arange(n) % seq).astype(np.int32)
    words = (num_neurons + 63) // 64
    active = rng.random((n, words * 64)) < density
    active[:, num_neurons:] = False
    bits = np.packbits(active, axis=1, bitorder="little").view(np.uint64)
    return bits, ids, positions, positions >= 1


def _assert_same_summaries(host, device):
    for k, want in host.summaries.items():
        got = device.summaries[k]
        assert np.array_equal(got.rows.offsets, want.rows.offsets)
        assert np.array_equal(got.rows.key, want.rows.key)
        assert np.array_equal(got.rows.count, want.rows.count)
        assert np.array_equal(got.delta, want.delta) and np.array_equal(got.mass, want.mass)


def _assert_same_state(a, b):
    (_, pending_a, unfolded_a, folds_a), (_, pending_b, unfolded_b, folds_b) = a, b
    assert (unfolded_a, folds_a) == (unfolded_b, folds_b)
    assert len(pending_a.chunks) == len(pending_b.chunks)
    for chunk, other in zip(pending_a.chunks, pending_b.chunks):
        assert np.array_equal(chunk.bits, other.bits)
        for k in chunk.rows:
            assert np.array_equal(chunk.rows[k], other.rows[k]) and np.array_equal(chunk.keys[k], other.keys[k])


def test_active_pairs_lists_every_set_bit_by_neuron_then_row(device):
    rng = np.random.default_rng(3)
    bits, *_ = _chunk(rng, 40, 150, 0.2, 10)
    rows = np.array([5, 0, 39, 5, 17], dtype=np.int64)
    neuron, row = active_pairs(torch.from_numpy(bits.view(np.int64)).to(device), torch.from_numpy(rows).to(device),
                               150)
    active = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :150].astype(bool)
    want_neuron, want_row = np.nonzero(active[rows].T)
    assert neuron.cpu().tolist() == want_neuron.tolist() and row.cpu().tolist() == want_row.tolist()


def test_both_neuron_key_sorts_agree():
    rng = np.random.default_rng(4)
    neuron = torch.from_numpy(rng.integers(0, 300, 5000))
    key = torch.from_numpy(rng.integers(0, 1 << 40, 5000) // 7 * 7)  # repeated keys
    composite = neuron_key_order(neuron, key, 40, 300)
    two_sorts = neuron_key_order(neuron, key, 62, 300)  # does not fit one int64: stable sorts
    want = np.lexsort((key.numpy(), neuron.numpy()))
    assert np.array_equal(neuron[two_sorts].numpy(), neuron.numpy()[want])
    assert np.array_equal(key[two_sorts].numpy(), key.numpy()[want])
    assert np.array_equal(neuron[composite].numpy(), neuron.numpy()[want])
    assert np.array_equal(key[composite].numpy(), key.numpy()[want])


@pytest.mark.parametrize("capacity, pack_bits, num_neurons", [(1, 16, 130), (5, 16, 200), (5, 21, 64),
                                                                (4096, 16, 97)])
def test_device_summaries_equal_the_host_ones_across_folds_and_resumes(monkeypatch, device, capacity,
                                                                       pack_bits, num_neurons):
    monkeypatch.setattr(bounded, "FOLD_EVENTS", 2500)  # several folds, each with cuts when capacity is small
    rng = np.random.default_rng(capacity + pack_bits)
    where = device
    host = SummaryAccumulator(num_neurons, capacity=capacity, pack_bits=pack_bits)
    device = DeviceSummaryAccumulator(num_neurons, capacity=capacity, pack_bits=pack_bits, device=where)
    for step in range(16):
        bits, ids, positions, counted = _chunk(rng, int(rng.integers(1, 300)), num_neurons, 0.1, 40)
        if pack_bits == 21:
            ids = ids + (1 << 20)  # ids that use the high bits of a 21-bit key
        host.add(bits, ids, positions, counted)
        device.add(torch.from_numpy(bits.view(np.int64)).to(where), ids, positions, counted)
        if step in (2, 8):  # a snapshot that the run goes on from (pending events in parts)
            _assert_same_state(host.state(), device.state())
        if step in (5, 11):  # a snapshot, resumed by the other kind of accumulator
            host_state, device_state = host.state(), device.state()
            _assert_same_state(host_state, device_state)
            host, device = (SummaryAccumulator(num_neurons, capacity=capacity, pack_bits=pack_bits),
                            DeviceSummaryAccumulator(num_neurons, capacity=capacity, pack_bits=pack_bits,
                                                     device=where))
            host.restore(*device_state)
            device.restore(*host_state)
    host.finish()
    device.finish()
    _assert_same_summaries(host, device)
    assert sum(int(s.mass.sum()) for s in device.summaries.values()) > 0
    if capacity < 10:
        assert all((s.delta > 0).any() for s in device.summaries.values())  # the cuts were exercised


def test_device_accumulator_refuses_bits_of_another_width():
    device = DeviceSummaryAccumulator(100)
    ids, positions = np.arange(4), np.arange(4, dtype=np.int32)
    with pytest.raises(ValueError, match="int64"):
        device.add(torch.zeros(4, 3, dtype=torch.int64), ids, positions, positions >= 1)
    with pytest.raises(ValueError, match="cannot be packed"):
        device.add(torch.zeros(4, 2, dtype=torch.int64), ids - 5, positions, positions >= 1)
