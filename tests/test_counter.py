"""NeuronCounter and attach_counters against hand-written references, exact integer equality."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from fastneurons.recording.counter import NeuronCounter, attach_counters, positions_from_mask
from fastneurons.kernels import pack_bits, unpack_bits


def reference_counts(batches, num_neurons, max_positions, threshold=0.0, count_bos=False):
    """Counts of SPEC §2 by plain loops over (pre [B, S, F], attention_mask [B, S]) batches."""
    ref = {"tokens": 0, "active": np.zeros(num_neurons, np.int64), "pos_seen": np.zeros(max_positions, np.int64),
           "pos_active": np.zeros((max_positions, num_neurons), np.int64), "nan_count": np.zeros(1, np.int64)}
    for pre, mask in batches:
        on = (pre.float() > torch.tensor(threshold, dtype=torch.float32)).numpy()
        for b in range(mask.shape[0]):
            position = 0
            for s in range(mask.shape[1]):
                if not mask[b, s]:
                    continue
                ref["pos_seen"][position] += 1
                ref["pos_active"][position] += on[b, s]
                if position >= (0 if count_bos else 1):
                    ref["tokens"] += 1
                    ref["active"] += on[b, s]
                position += 1
    ref["tokens"] = np.array(ref["tokens"], np.int64)
    return ref


def assert_counts_equal(state, ref):
    assert set(state) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(state[name], ref[name], err_msg=name)


def padded_mask(lengths, seq_len, left=False):
    steps = torch.arange(seq_len)[None, :]
    lengths = torch.tensor(lengths)[:, None]
    return (steps >= seq_len - lengths) if left else (steps < lengths)


def test_positions_from_mask_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 1, 2, -1], [-1, -1, 0, 1]]
    assert positions_from_mask(mask).dtype == torch.int32


def test_neuron_counter_matches_reference(device):
    generator = torch.Generator().manual_seed(0)
    counter = NeuronCounter(70, max_positions=8, threshold=0.25, device=device)
    batches = []
    for lengths in ([8, 5, 1], [3, 8, 0]):
        pre = torch.randn(3, 8, 70, generator=generator)
        mask = padded_mask(lengths, 8)
        counter.update(pre.to(device), positions_from_mask(mask).to(device))
        batches.append((pre, mask))
    assert_counts_equal(counter.state_dict(), reference_counts(batches, 70, 8, threshold=0.25))


def test_counter_on_cuda_without_an_index_takes_the_current_gpu(monkeypatch):
    """torch.device("cuda") != cuda:0, the device of every CUDA tensor: the counter must store cuda:N."""
    monkeypatch.setattr(NeuronCounter, "reset", lambda self: None)   # no CUDA tensors needed here
    counter = NeuronCounter(4, device="cuda")
    expected = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert counter.device == torch.device("cuda", expected)


def test_recent_position_counts_drain_before_they_could_wrap(monkeypatch):
    """The CPU counter adds into uint16 recent counts: calls that would take a position past the limit
    drain them first, and a call with more rows at one position than the limit adds to the totals."""
    monkeypatch.setattr("fastneurons.recording.counter._RECENT_LIMIT", 7)  # the real limit, 65,535, needs 65k rows
    generator = torch.Generator().manual_seed(3)
    counter = NeuronCounter(70, max_positions=4)
    expected = torch.zeros(4, 70, dtype=torch.int64)
    for rows in (3, 4, 2, 9, 1, 5):  # 3 + 4 fit, + 2 drains first; 9 > 7 goes to the totals
        pre = torch.randn(rows, 70, generator=generator)
        counter.update(pre, torch.full((rows,), 2, dtype=torch.int32))
        expected[2] += (pre > 0).sum(0)
        assert counter._recent_bound <= 7 and int(counter._pos_recent.numpy().max()) <= 7
    assert torch.equal(counter.pos_active, expected)
    assert not counter._pos_recent.numpy().any() and int(counter.pos_seen[2]) == 24


def test_counting_positions_into_a_shared_table_keeps_the_counts():
    generator = torch.Generator().manual_seed(4)
    pres = [torch.randn(2, 6, 70, generator=generator) for _ in range(3)]
    mask = padded_mask([6, 4], 6)
    alone, shared = NeuronCounter(70, max_positions=6), NeuronCounter(70, max_positions=6)
    stacked = torch.zeros(3, 6, 70, dtype=torch.int64)
    for step, pre in enumerate(pres):
        alone.update(pre, positions_from_mask(mask))
        shared.update(pre, positions_from_mask(mask))
        if step == 0:  # switched after counting started: the counts so far move along
            shared.count_positions_into(stacked[1])
    assert torch.equal(shared.pos_active, alone.pos_active) and torch.equal(stacked[1], alone.pos_active)
    assert not stacked[0].any() and not stacked[2].any()
    with pytest.raises(ValueError, match="contiguous int64"):
        shared.count_positions_into(torch.zeros(6, 70, dtype=torch.int32))
    with pytest.raises(ValueError, match="keeps no pos_active"):
        NeuronCounter(70, count_positions=False).count_positions_into(stacked[0])


def test_a_counter_given_its_table_first_makes_no_int64_table_of_its_own():
    """record hands each counter a layer of the store's totals before counting: the counter's own
    [T, F] int64 table (zeros) is never made, and the counts land in the table given."""
    generator = torch.Generator().manual_seed(6)
    mask = padded_mask([6, 3], 6)
    given, alone = NeuronCounter(70, max_positions=6), NeuronCounter(70, max_positions=6)
    assert given._pos_total is None  # nothing made yet
    table = torch.full((6, 70), 5, dtype=torch.int64)  # e.g. a resumed store's totals
    given.count_positions_into(table)
    assert given._pos_total is table and int(table.sum()) == 5 * 6 * 70
    for _ in range(3):
        pre = torch.randn(2, 6, 70, generator=generator)
        given.update(pre, positions_from_mask(mask))
        alone.update(pre, positions_from_mask(mask))
    assert given.pos_active is table and torch.equal(table, alone.pos_active + 5)


def test_batch_rows_made_once_serve_every_counter():
    """One BatchRows per batch, shared by the counters of all layers, gives each the counts of its own update."""
    generator = torch.Generator().manual_seed(5)
    mask = padded_mask([5, 2], 5)
    first, second = NeuronCounter(70, max_positions=5), NeuronCounter(70, max_positions=5)
    batch = first.batch_rows(positions_from_mask(mask), torch.ones(2, 5, dtype=torch.bool))
    pres = [torch.randn(2, 5, 70, generator=generator) for _ in range(2)]
    for counter, pre in zip((first, second), pres):
        counter.update(pre, batch)
        assert_counts_equal(counter.state_dict(), reference_counts([(pre, mask)], 70, 5, count_bos=True))
    with pytest.raises(ValueError, match="rows"):
        first.update(pres[0].reshape(10, 70), batch)
    with pytest.raises(ValueError, match="positions"):
        NeuronCounter(70, max_positions=6).update(pres[0], batch)
    with pytest.raises(ValueError, match="counted mask"):
        first.update(pres[0], batch, torch.ones(2, 5, dtype=torch.bool))


def test_counted_mask_flat_rows_and_bits():
    generator = torch.Generator().manual_seed(1)
    pre = torch.randn(2, 5, 130, generator=generator)
    mask = padded_mask([5, 3], 5)
    counter = NeuronCounter(130, max_positions=5, keep_bits=True)
    bits = counter.update(pre.reshape(10, 130), positions_from_mask(mask), counted_mask=torch.ones(2, 5, dtype=torch.bool))
    assert_counts_equal(counter.state_dict(), reference_counts([(pre, mask)], 130, 5, count_bos=True))
    assert torch.equal(bits, pack_bits((pre > 0).reshape(10, 130) & mask.reshape(10, 1)))


def test_reset_and_state_dict_types():
    counter = NeuronCounter(3, max_positions=4)
    counter.update(torch.ones(1, 4, 3), torch.arange(4, dtype=torch.int32)[None])
    assert int(counter.tokens) == 3 and counter.update(torch.ones(4, 3), torch.arange(4)) is None
    state = counter.state_dict()
    assert all(value.dtype == np.int64 for value in state.values()) and state["tokens"].shape == ()
    counter.reset()
    assert all(not value.any() for value in counter.state_dict().values())


def test_counter_errors():
    counter = NeuronCounter(4, max_positions=3)
    with pytest.raises(ValueError, match=r"\[B, S, 4\]"):
        counter.update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="positions must have shape"):
        counter.update(torch.zeros(2, 4), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        counter.update(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_neurons"):
        NeuronCounter(0)
    counter.update(torch.tensor([[float("nan"), 0, 0, 0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="1 pre-activations were NaN"):
        counter.check_no_nans()


def tiny_opt():
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=40, num_attention_heads=2,
                       max_position_embeddings=32, word_embed_proj_dim=16, pad_token_id=1)
    return OPTForCausalLM(config).eval()


def capture(model, names, use_input=False):
    """Plain hooks that record the hooked tensors (the reference)."""
    seen = {name: [] for name in names}
    hooks = []
    for name in names:
        module = model.get_submodule(name)
        if use_input:
            hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach().clone())))
        else:
            hooks.append(module.register_forward_hook(lambda m, a, out, name=name: seen[name].append(out.detach().clone())))
    return seen, hooks


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_attach_counters_on_opt_matches_hooks(left):
    model = tiny_opt()
    names = ["model.decoder.layers.0.fc1", "model.decoder.layers.1.fc1"]
    seen, hooks = capture(model, names)
    generator = torch.Generator().manual_seed(2)
    masks = [padded_mask([9, 4, 7], 9, left=left), padded_mask([6, 6], 6, left=left)]
    with torch.no_grad(), attach_counters(model, names, max_positions=16) as handle:
        for mask in masks:
            ids = torch.randint(2, 64, mask.shape, generator=generator)
            model(input_ids=ids, attention_mask=mask.long())
    for hook in hooks:
        hook.remove()
    for name in names:
        batches = [(pre.reshape(mask.shape + (40,)), mask) for pre, mask in zip(seen[name], masks)]
        assert_counts_equal(handle.counters[name].state_dict(), reference_counts(batches, 40, 16))
    ids = torch.randint(2, 64, (1, 5), generator=generator)
    with torch.no_grad():
        model(input_ids=ids)  # hooks are gone: nothing more is counted
    assert int(handle.counters[names[0]].tokens) == 8 + 3 + 6 + 5 + 5


def test_attach_counters_set_batch_and_count_bos():
    model = tiny_opt()
    name = "model.decoder.layers.0.fc1"
    seen, hooks = capture(model, [name])
    mask = padded_mask([5, 2], 5)
    handle = attach_counters(model, name, max_positions=8, keep_bits=True)
    handle.set_batch(mask, count_bos=True)
    with torch.no_grad():
        model(torch.randint(2, 64, (2, 5)))  # no attention_mask given: set_batch's mask is used
    handle.remove()
    hooks[0].remove()
    pre = seen[name][0].reshape(2, 5, 40)
    assert_counts_equal(handle.counters[name].state_dict(), reference_counts([(pre, mask)], 40, 8, count_bos=True))
    assert handle.bits[name].shape == (10, 1)


def test_attach_counters_positions_callable():
    model = tiny_opt()
    name = "model.decoder.layers.1.fc1"
    handle = attach_counters(model, [name], max_positions=8,
                             positions=lambda pre: torch.tensor([0, 1, 2, -1, 0, 1], dtype=torch.int32))
    with torch.no_grad():
        model(torch.randint(2, 64, (2, 3)))
    handle.remove()
    state = handle.counters[name].state_dict()
    assert state["tokens"] == 3 and state["pos_seen"][:3].tolist() == [2, 2, 1]


def test_attach_counters_input_of_llama_down_proj_with_abs():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    name = "model.layers.1.mlp.down_proj"
    seen, hooks = capture(model, [name], use_input=True)
    mask = padded_mask([7, 3], 7)
    with torch.no_grad(), attach_counters(model, [name], max_positions=8, threshold=0.01, use_input=True,
                                          transform=torch.abs) as handle:
        model(input_ids=torch.randint(0, 64, (2, 7)), attention_mask=mask.long())
    hooks[0].remove()
    pre = seen[name][0].abs()
    assert pre.shape == (2, 7, 40)
    assert_counts_equal(handle.counters[name].state_dict(), reference_counts([(pre, mask)], 40, 8, threshold=0.01))


def test_attach_counters_unknown_module():
    with pytest.raises(ValueError, match="no module named"):
        attach_counters(tiny_opt(), ["model.decoder.layers.9.fc1"])


def test_attach_counters_set_positions_with_counted_mask():
    model = tiny_opt()
    name = "model.decoder.layers.0.fc1"
    handle = attach_counters(model, [name], max_positions=8)
    handle.set_positions(torch.tensor([[0, 1, 2, -1]]), counted=torch.tensor([[True, False, True, True]]))
    with torch.no_grad():
        model(torch.randint(2, 64, (1, 4)), attention_mask=torch.ones(1, 4))  # the model's mask is ignored
    handle.remove()
    state = handle.counters[name].state_dict()
    assert state["tokens"] == 2 and state["pos_seen"][:4].tolist() == [1, 1, 1, 0]


def test_domains_without_positions_and_load_state():
    """Per-domain counts add up to the totals; without positions there is no pos_active; a counter
    started from another's state continues exactly where that one is."""
    generator = torch.Generator().manual_seed(5)
    batches = [(torch.randn(2, 6, 70, generator=generator), padded_mask(lengths, 6)) for lengths in ([6, 3], [2, 6], [5, 5])]
    counter = NeuronCounter(70, max_positions=8, threshold=0.25, domains=2, count_positions=False)
    for (pre, mask), domain in zip(batches[:2], (1, 0)):
        counter.update(pre, positions_from_mask(mask), domain=domain)
    for (pre, mask), domain in zip(batches[:2], (1, 0)):
        ref = reference_counts([(pre, mask)], 70, 8, threshold=0.25)
        np.testing.assert_array_equal(counter.domain_active[domain].numpy(), ref["active"])
        assert int(counter.domain_tokens[domain]) == int(ref["tokens"])
    both = reference_counts(batches[:2], 70, 8, threshold=0.25)
    del both["pos_active"]
    assert counter.pos_active is None
    assert_counts_equal(counter.state_dict(), both)
    resumed = NeuronCounter(70, max_positions=8, threshold=0.25, domains=2, count_positions=False)
    resumed.load_state({name: getattr(counter, name).numpy()
                        for name in ("domain_tokens", "domain_active", "pos_seen", "nan_count")})
    for each in (counter, resumed):
        each.update(batches[2][0], positions_from_mask(batches[2][1]), domain=1)
    assert_counts_equal(resumed.state_dict(), counter.state_dict())
    with pytest.raises(ValueError, match="no 'pos_active'"):
        resumed.load_state({"pos_active": np.zeros((8, 70), np.int64)})
    with pytest.raises(ValueError, match="domain 2"):
        counter.update(batches[0][0], positions_from_mask(batches[0][1]), domain=2)


def test_attach_counters_made_up_front_with_bits_of_some_modules_to_on_bits():
    model = tiny_opt()
    names = ["model.decoder.layers.0.fc1", "model.decoder.layers.1.fc1"]
    seen, hooks = capture(model, names)
    given = []
    handle = attach_counters(model, names, max_positions=8, num_neurons=40, keep_bits=[names[1]],
                             on_bits=lambda name, bits: given.append((name, tuple(bits.shape))))
    assert set(handle.counters) == set(names)  # made before any forward
    mask = padded_mask([5, 2], 5)
    with torch.no_grad(), handle:
        model(torch.randint(2, 64, (2, 5)), attention_mask=mask.long())
    for hook in hooks:
        hook.remove()
    assert given == [(names[1], (10, 1))] and set(handle.bits) == {names[1]}
    for name in names:
        pre = seen[name][0].reshape(2, 5, 40)
        assert_counts_equal(handle.counters[name].state_dict(), reference_counts([(pre, mask)], 40, 8))
    on = pre > 0
    assert torch.equal(unpack_bits(handle.bits[names[1]], 40).bool().reshape(2, 5, 40) & mask[..., None], on & mask[..., None])
