"""The planted OPT follows its rules exactly: every token at every position, and through the real forward."""

import math

import numpy as np
import pytest
import torch

from fastneurons.demo.planted import (
    PlantSpec,
    build_planted_opt,
    default_spec,
    expected,
    layer0_active,
    positional_profile,
)

TRIGGERS = [262, 286, 290, 13, 11, 357, 1000, 50256 - 7]
SHAPES = [  # hidden, ffn, max_positions, seed
    dict(hidden_size=64, ffn_dim=256, max_positions=256, seed=0),
    dict(hidden_size=32, ffn_dim=128, max_positions=128, seed=1),
    dict(hidden_size=64, ffn_dim=128, max_positions=128, seed=2),
    dict(hidden_size=32, ffn_dim=256, max_positions=256, seed=3),
]
MARGIN = 0.5  # every layer-0 pre-activation of a planted rule is at least this far from 0


def planted_neurons(spec):
    return sorted({*spec.detectors, *spec.dead, *spec.positional_neurons})


def direct_pre(model, token_rows, position_rows, neurons, chunk=1024):
    """Yield (start, fc1(final_layer_norm(embed + position))[neurons]) of layer 0 for chunks of token rows
    against every position row: [chunk, P, k]."""
    layer0 = model.model.decoder.layers[0]
    ln = layer0.final_layer_norm
    weight, bias = layer0.fc1.weight[neurons], layer0.fc1.bias[neurons]
    with torch.no_grad():
        for start in range(0, token_rows.shape[0], chunk):
            h = token_rows[start:start + chunk, None, :] + position_rows[None, :, :]
            x = torch.nn.functional.layer_norm(h, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
            yield start, torch.nn.functional.linear(x, weight, bias)


def tables(model):
    decoder = model.model.decoder
    return decoder.embed_tokens.weight.detach(), decoder.embed_positions.weight[2:].detach()


def rule_tables(spec):
    """The planted rule split into its token part [V, F] and position part [T, F] (and which columns)."""
    vocab = np.arange(spec.vocab_size)
    by_token = layer0_active(spec, vocab, np.zeros_like(vocab))
    by_position = layer0_active(spec, np.zeros(spec.max_positions, dtype=np.int64), np.arange(spec.max_positions))
    positional = np.zeros(spec.ffn_dim, dtype=bool)
    positional[list(spec.positional_neurons)] = True
    return by_token, by_position, positional


def test_every_token_at_every_position_follows_the_planted_rule():
    """Brute force: all 50257 tokens x all 256 positions through LN + fc1, planted neurons of layer 0."""
    spec = default_spec(TRIGGERS)
    model = build_planted_opt(spec)
    tokens, positions = tables(model)
    assert tokens.shape[0] == 50257 and positions.shape[0] == 256
    neurons = planted_neurons(spec)
    by_token, by_position, positional = rule_tables(spec)
    want_position = torch.as_tensor(by_position[:, neurons])  # [T, k]
    want_token = torch.as_tensor(by_token[:, neurons])  # [V, k]
    is_positional = torch.as_tensor(positional[neurons])
    checked = 0
    for start, pre in direct_pre(model, tokens, positions, neurons):
        assert pre.abs().min().item() >= MARGIN
        want = torch.where(is_positional, want_position[None], want_token[start:start + len(pre), None])
        assert torch.equal(pre > 0, want), f"a planted neuron breaks its rule for tokens {start}.."
        checked += pre.shape[0] * pre.shape[1]
    assert checked == spec.vocab_size * spec.max_positions


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s.values())))
def test_all_neurons_follow_the_rule_for_every_distinct_position_row(shape):
    """Every neuron (clean ones too) x every token x every distinct position embedding the model can see."""
    spec = default_spec(TRIGGERS, **shape)
    model = build_planted_opt(spec)
    tokens, positions = tables(model)
    rows, row_of_position = np.unique(positions.numpy(), axis=0, return_inverse=True)
    row_of_position = row_of_position.ravel()
    assert len(rows) < 40  # the position table repeats: few distinct rows to check
    by_token, by_position, positional = rule_tables(spec)
    want_row = []
    for row in range(len(rows)):
        seen_at = np.flatnonzero(row_of_position == row)
        assert (by_position[seen_at] == by_position[seen_at[0]]).all()  # one row, one positional pattern
        want_row.append(by_position[seen_at[0]])
    want_row, positional = torch.as_tensor(np.stack(want_row)), torch.as_tensor(positional)  # [R, F], [F]
    for start, pre in direct_pre(model, tokens, torch.as_tensor(rows), list(range(spec.ffn_dim))):
        assert pre.abs().min().item() >= MARGIN
        want = torch.where(positional, want_row[None], torch.as_tensor(by_token[start:start + len(pre), None]))
        assert torch.equal(pre > 0, want), f"a neuron breaks its rule for tokens {start}.."


@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "-".join(map(str, s.values())))
def test_real_forward_matches_the_rule_on_padded_batches(shape):
    spec = default_spec(TRIGGERS, **shape)
    model = build_planted_opt(spec)
    t = spec.max_positions
    rng = np.random.default_rng(7)
    ids = rng.integers(0, spec.vocab_size, size=(4, t))
    ids[:, 0] = spec.bos_token_id
    ids[0, 5:9] = TRIGGERS[:4]
    lengths = [t, t - 1, t // 2 + 3, 20]
    mask = (np.arange(t)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids[mask == 0] = spec.pad_token_id
    captured = {}
    hooks = [model.model.decoder.layers[l].fc1.register_forward_hook(
        lambda module, args, output, l=l: captured.__setitem__(l, output.detach()))
        for l in range(spec.num_layers)]
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(logits).all()
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, -1)  # SPEC §1: non-pad tokens before
    real = mask == 1
    pre0 = captured[0].reshape(4, t, spec.ffn_dim)[torch.as_tensor(real)]  # [non-pad slots, F]
    assert np.array_equal((pre0 > 0).numpy(), layer0_active(spec, ids, positions)[real])
    assert pre0.abs().min().item() >= MARGIN
    tokens, position_rows = tables(model)  # the forward's layer-0 input is exactly embed + position
    h = tokens[torch.as_tensor(ids[real])] + position_rows[torch.as_tensor(positions[real])]
    no_position = torch.zeros(1, spec.hidden_size)
    direct = torch.cat([pre[:, 0] for _, pre in direct_pre(model, h, no_position, list(range(spec.ffn_dim)))])
    assert torch.allclose(direct, pre0, atol=1e-5)
    for layer, neurons in spec.dead_later_layers.items():
        pre = captured[layer].reshape(4, t, spec.ffn_dim)[..., list(neurons)]
        assert (pre[torch.as_tensor(real)] < 0).all()
    for layer in range(1, spec.num_layers):  # random later layers: alive, both signs
        fires = (captured[layer].reshape(4, t, spec.ffn_dim)[torch.as_tensor(real)] > 0).float().mean()
        assert 0.2 < fires.item() < 0.8


@pytest.mark.parametrize("seed", [0, 5])
def test_detectors_suppress_or_promote_their_triggers(seed):
    spec = default_spec(TRIGGERS, seed=seed)
    model = build_planted_opt(spec)
    truth = expected(spec)
    unembed = model.lm_head.weight.detach()
    assert unembed.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()  # tied, as in OPT
    fc2 = model.model.decoder.layers[0].fc2.weight.detach()
    assert set(truth.suppresses.values()) == {True, False}  # the demo must tell the two apart
    for n, triggers in truth.detectors.items():
        s = unembed @ fc2[:, n]
        on = torch.zeros(spec.vocab_size, dtype=torch.bool)
        on[list(triggers)] = True
        if truth.suppresses[n]:
            assert s[on].mean() < 0 and s[on].max() < 0
            assert s[on].max() < s[~on].min()  # the triggers are the most suppressed tokens
        else:
            assert s[on].min() > 0 and s[on].min() > s[~on].max()


def test_expected_positional_types_and_ranges():
    spec = default_spec(TRIGGERS)
    truth = expected(spec)
    assert {n: p.kind for n, p in truth.positional.items()} == {
        20: "oscillatory", 21: "oscillatory", 40: "both_extremes", 50: "one_extreme"}
    assert all(p.strength == "strong" for p in truth.positional.values())
    assert truth.positional[20].on_ranges == tuple((s, s + 15) for s in range(0, 256, 32))
    assert truth.positional[20].off_ranges == tuple((s, s + 15) for s in range(16, 256, 32))
    assert truth.positional[40].on_ranges == ((0, 95),) and truth.positional[40].off_ranges == ((96, 255),)
    assert truth.positional[50].on_ranges == ((12, 255),) and truth.positional[50].off_ranges == ()
    for n, p in truth.positional.items():  # a 0/1 profile's I(act; pos) is the entropy of its on-share
        q = positional_profile(spec, n).mean()
        assert p.mutual_information == pytest.approx(-q * math.log(q) - (1 - q) * math.log(1 - q))
        assert p.mutual_information > 0.05
    short = expected(spec, num_positions=64)
    assert short.positional[21].kind == "both_extremes"  # one period of 64 is on-off only
    assert short.positional[40].kind == "one_extreme"  # the step at 96 is past the data


def test_expected_dead_detectors_and_clean():
    spec = default_spec(TRIGGERS)
    truth = expected(spec)
    assert truth.dead == {0: frozenset({3, 30, 77}), 1: frozenset({5, 6, 60})}
    assert truth.detectors == {10: frozenset(TRIGGERS[:3]), 19: frozenset(TRIGGERS[3:6]),
                               28: frozenset(TRIGGERS[6:])}
    assert truth.suppresses == {10: True, 19: True, 28: False}
    planted = set(truth.detectors) | truth.dead[0] | set(truth.positional)
    assert truth.clean == frozenset(range(spec.ffn_dim)) - planted
    vocab = np.arange(spec.vocab_size)
    share = layer0_active(spec, vocab, np.ones_like(vocab))[:, sorted(truth.clean)].mean(axis=0)
    assert share.min() > 0.3 and share.max() < 0.7  # clean neurons fire on about half the vocabulary


def test_layer0_active_marks_padding_and_checks_input():
    spec = default_spec(TRIGGERS, hidden_size=32, ffn_dim=128, max_positions=128)
    act = layer0_active(spec, [[262, 5, spec.pad_token_id]], [[0, 1, -1]])
    assert act.shape == (1, 3, 128)
    assert act[0, 0, 10] and not act[0, 1, 10] and not act[0, 2].any()
    with pytest.raises(ValueError, match="shape"):
        layer0_active(spec, [1, 2], [0])
    with pytest.raises(ValueError, match="max_positions"):
        layer0_active(spec, [1], [128])
    with pytest.raises(ValueError, match="vocabulary|token ids"):
        layer0_active(spec, [spec.vocab_size], [0])


def test_same_seed_same_model_other_seed_other_model():
    spec = default_spec(TRIGGERS, hidden_size=32, ffn_dim=128, max_positions=128)
    a, b = build_planted_opt(spec).state_dict(), build_planted_opt(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_planted_opt(default_spec(TRIGGERS, hidden_size=32, ffn_dim=128, max_positions=128, seed=9))
    assert not torch.equal(a["model.decoder.embed_tokens.weight"], c.state_dict()["model.decoder.embed_tokens.weight"])


def test_model_is_a_plain_eval_float32_opt():
    spec = default_spec(TRIGGERS, hidden_size=32, ffn_dim=128, max_positions=128, num_layers=2)
    model = build_planted_opt(spec)
    assert type(model).__name__ == "OPTForCausalLM" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    config = model.config
    assert config.do_layer_norm_before and config.activation_function == "relu"
    assert (config.vocab_size, config.bos_token_id, config.pad_token_id) == (50257, 50256, 50256)


@pytest.mark.parametrize("change, message", [
    (dict(dead=(10,)), "planted twice"),
    (dict(oscillatory={20: 30}), "period"),
    (dict(steps={40: 250}), "boundary"),
    (dict(one_extreme={50: 16}), "silent prefix"),
    (dict(detectors={10: (60000,)}), "outside the vocabulary"),
    (dict(detectors={10: ()}), "no trigger"),
    (dict(promoting=(11,)), "not detectors"),
    (dict(dead_later_layers={4: (1,)}), "dead_later_layers"),
    (dict(hidden_size=16, num_heads=4), "too small"),
    (dict(hidden_size=30, num_heads=4), "divisible"),
    (dict(dead=(300,)), "outside layer 0"),
    (dict(bos_token_id=50257), "bos_token_id"),
    (dict(oscillatory={20: 32, 21: 192}), "looks 'both_extremes'"),
])
def test_bad_specs_are_refused_with_a_reason(change, message):
    values = dict(detectors={10: (1, 2), 28: (3,)}, promoting=(28,), dead=(3,), oscillatory={20: 32},
                  steps={40: 96}, one_extreme={50: 12}, dead_later_layers={1: (5,)})
    values.update(change)
    with pytest.raises(ValueError, match=message):
        PlantSpec(**values)


def test_default_spec_refuses_too_many_triggers_or_too_few_positions():
    with pytest.raises(ValueError, match="at most"):
        default_spec(list(range(100)))
    with pytest.raises(ValueError, match="max_positions"):
        default_spec(TRIGGERS, max_positions=32)
    assert default_spec([5]).promoting == ()
