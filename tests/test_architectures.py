"""The architecture table: identification, hook points (SPEC §1), stopping early, update directions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T

from fastneurons import architectures as A

V, D, FF, L = 97, 32, 48, 3


def tiny(kind: str):
    """A random-weight model of each family, small enough to run in milliseconds."""
    torch.manual_seed(0)
    rotary = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=4, intermediate_size=FF,
                  max_position_embeddings=64)
    configs = {
        "opt": lambda: T.OPTConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, ffn_dim=FF,
                                   num_attention_heads=4, max_position_embeddings=64),
        "opt_post_ln": lambda: T.OPTConfig(vocab_size=V, hidden_size=D, word_embed_proj_dim=16, num_hidden_layers=L,
                                           ffn_dim=FF, num_attention_heads=4, max_position_embeddings=64,
                                           do_layer_norm_before=False),
        "gpt2": lambda: T.GPT2Config(vocab_size=V, n_embd=D, n_layer=L, n_head=4, n_positions=64),
        "gpt_neox": lambda: T.GPTNeoXConfig(**rotary),
        "llama": lambda: T.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **rotary),
        "mistral": lambda: T.MistralConfig(num_key_value_heads=2, **rotary),
        "qwen2": lambda: T.Qwen2Config(num_key_value_heads=2, **rotary),
    }
    config = configs[kind]()
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():   # random LayerNorm affine parameters, so a missing norm cannot go unnoticed
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                module.weight.uniform_(0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.uniform_(-0.5, 0.5)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0          # right padding
    return ids, mask


KINDS = ["opt", "opt_post_ln", "gpt2", "gpt_neox", "llama", "mistral", "qwen2"]
FAMILY = {"opt": "opt", "opt_post_ln": "opt", "gpt2": "gpt2", "gpt_neox": "gpt_neox", "llama": "llama",
          "mistral": "llama", "qwen2": "llama"}


@pytest.mark.parametrize("kind", KINDS)
def test_architecture_for_model_config_and_class_name(kind):
    model = tiny(kind)
    assert A.architecture_for(model).name == FAMILY[kind]
    assert A.architecture_for(model.config).name == FAMILY[kind]
    assert A.architecture_for(type(model).__name__).name == FAMILY[kind]
    assert A.num_layers(model, A.architecture_for(model)) == L


def test_unknown_architecture_names_the_supported_ones_and_the_docs():
    config = T.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=1, num_attention_heads=4, intermediate_size=FF)
    with pytest.raises(A.UnsupportedArchitecture, match=r"'bert'.*OPTForCausalLM.*docs/architectures.md"):
        A.architecture_for(config)
    with pytest.raises(ValueError):    # it is a ValueError, so callers can catch bad input uniformly
        A.architecture_for("BertForMaskedLM")


def _layer_norm(module, x):
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _rms_norm(module, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon) * module.weight


def _ffn_reference(kind, layer, h):
    """SPEC §1 written out by hand per family: (pre-activation, FFN output) from the FFN's residual input h."""
    if kind == "opt":               # pre-LN: x = final_layer_norm(h)
        pre = F.linear(_layer_norm(layer.final_layer_norm, h), layer.fc1.weight, layer.fc1.bias)
        return pre, F.linear(torch.relu(pre), layer.fc2.weight, layer.fc2.bias)
    if kind == "opt_post_ln":       # post-LN (350m): x = h, already normalised after attention
        pre = F.linear(h, layer.fc1.weight, layer.fc1.bias)
        return pre, F.linear(torch.relu(pre), layer.fc2.weight, layer.fc2.bias)
    if kind == "gpt2":              # Conv1D: x @ W + b, W stored [in, out]
        pre = _layer_norm(layer.ln_2, h) @ layer.mlp.c_fc.weight + layer.mlp.c_fc.bias
        return pre, layer.mlp.act(pre) @ layer.mlp.c_proj.weight + layer.mlp.c_proj.bias
    if kind == "gpt_neox":
        mlp = layer.mlp
        pre = F.linear(_layer_norm(layer.post_attention_layernorm, h), mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)
        return pre, F.linear(mlp.act(pre), mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias)
    mlp = layer.mlp                 # gated: neuron = gate_proj output
    x = _rms_norm(layer.post_attention_layernorm, h)
    pre = F.linear(x, mlp.gate_proj.weight)
    return pre, F.linear(F.silu(pre) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)


def _residual_module(kind, layer):
    """The module whose input (or output, for post-LN OPT) is the FFN's residual input h."""
    name = {"opt": "final_layer_norm", "gpt2": "ln_2"}.get(kind, "post_attention_layernorm")
    return getattr(layer, name)


@pytest.mark.parametrize("kind", KINDS)
def test_neuron_hook_sees_the_pre_activation_of_spec_1(kind):
    """The hooked tensor equals fc1(x) with x built by hand from h, and the hand-built FFN reproduces the
    layer's output: the hook point and the FFN input are the ones SPEC §1 defines."""
    model, (ids, mask) = tiny(kind), batch()
    arch = A.architecture_for(model)
    seen, handles = {}, []
    for index, layer in enumerate(A.decoder_layers(model, arch)):
        put = lambda key, value, i=index: seen.__setitem__((key, i), value.detach().clone())  # noqa: E731
        handles.append(A.neuron_module(model, arch, index).register_forward_hook(lambda m, a, o, p=put: p("pre", o)))
        handles.append(layer.register_forward_pre_hook(lambda m, a, p=put: p("layer_in", a[0])))
        handles.append(layer.register_forward_hook(
            lambda m, a, o, p=put: p("layer_out", o[0] if isinstance(o, tuple) else o)))
        if kind == "opt_post_ln":
            handles.append(layer.self_attn_layer_norm.register_forward_hook(lambda m, a, o, p=put: p("h", o)))
        else:
            module = _residual_module(kind, layer)
            handles.append(module.register_forward_pre_hook(lambda m, a, p=put: p("h", a[0])))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
        for index, layer in enumerate(A.decoder_layers(model, arch)):
            h = seen["h", index].reshape(-1, seen["h", index].shape[-1])
            pre, ffn_out = _ffn_reference(kind, layer, h)
            hooked = seen["pre", index]
            assert hooked.shape[-1] == A.num_neurons(model.config, arch)
            torch.testing.assert_close(hooked.reshape(-1, hooked.shape[-1]), pre, rtol=1e-5, atol=1e-5)
            out = seen["layer_out", index].reshape(-1, D)
            if kind == "opt_post_ln":
                expected = _layer_norm(layer.final_layer_norm, h + ffn_out)
            elif kind == "gpt_neox":    # parallel residual: h is the layer input, out = input + attn + ffn
                torch.testing.assert_close(seen["layer_in", index].reshape(-1, D), h)
                continue
            else:
                expected = h + ffn_out
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for handle in handles:
        handle.remove()


def _record(model, arch, stop_at=None, gated_product=False):
    """Hook outputs per layer from a full forward (stop_at None) or from run_until(stop_at)."""
    ids, mask = batch()
    seen, handles = {}, []
    for index in range(A.num_layers(model, arch)):
        module = A.neuron_module(model, arch, index, gated_product=gated_product)
        if gated_product:
            handles.append(module.register_forward_pre_hook(lambda m, a, i=index: seen.__setitem__(i, a[0].abs().clone())))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, i=index: seen.__setitem__(i, o.clone())))
    head = model.lm_head.register_forward_hook(lambda *_: seen.__setitem__("head", True))
    with torch.inference_mode():
        if stop_at is None:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        else:
            A.run_until(model, arch, ids, mask, stop_at)
    for handle in handles + [head]:
        handle.remove()
    return seen


@pytest.mark.parametrize("kind", ["opt", "gpt2", "gpt_neox", "llama"])
def test_run_until_matches_full_forward_and_stops(kind):
    model = tiny(kind)
    arch = A.architecture_for(model)
    full = _record(model, arch)
    for last in range(L):
        partial = _record(model, arch, stop_at=last)
        assert sorted(partial) == list(range(last + 1))      # later layers and the LM head never ran
        for index in partial:
            assert torch.equal(partial[index], full[index])


def test_run_until_fires_gated_product_hooks_of_the_last_layer():
    model = tiny("llama")
    arch = A.architecture_for(model)
    full = _record(model, arch, gated_product=True)
    partial = _record(model, arch, stop_at=1, gated_product=True)
    assert sorted(partial) == [0, 1]
    assert torch.equal(partial[1], full[1])
    ids, mask = batch()
    with torch.inference_mode():   # the product hook sees |act(gate) * up|
        x = {}
        layer = A.decoder_layers(model, arch)[1]
        hook = layer.mlp.gate_proj.register_forward_hook(lambda m, a, o: x.__setitem__("in", a[0]))
        A.run_until(model, arch, ids, mask, 1)
        hook.remove()
        expected = (F.silu(layer.mlp.gate_proj(x["in"])) * layer.mlp.up_proj(x["in"])).abs()
    torch.testing.assert_close(partial[1], expected)


def test_gated_product_is_refused_for_ungated_families():
    model = tiny("opt")
    arch = A.architecture_for(model)
    with pytest.raises(ValueError, match="gated"):
        A.neuron_module(model, arch, 0, gated_product=True)
    with pytest.raises(ValueError, match="gated"):
        A.neuron_definition(arch, 0.0, gated_product=True)


def test_layer_out_of_range_is_a_clear_error():
    model = tiny("gpt2")
    arch = A.architecture_for(model)
    with pytest.raises(ValueError, match="has 3 layers"):
        A.neuron_module(model, arch, 3)


def test_sizes_from_config():
    assert A.num_neurons(tiny("gpt2").config, A.GPT2) == 4 * D          # n_inner None -> 4 * n_embd
    assert A.num_neurons(T.GPT2Config(n_embd=D, n_inner=40), A.GPT2) == 40
    assert A.num_neurons(tiny("opt").config, A.OPT) == FF
    assert A.num_neurons(tiny("llama").config, A.LLAMA) == FF
    assert A.max_positions(T.OPTConfig(), A.OPT) == 2048
    assert A.max_positions(tiny("gpt2").config, A.GPT2) == 64
    assert A.max_positions(tiny("gpt_neox").config, A.GPT_NEOX) == 64


def test_neuron_definitions_are_readable():
    assert A.neuron_definition(A.OPT, 0.0) == "opt: fc1(x)[n] > 0.0 (ReLU output non-zero)"
    assert A.neuron_definition(A.LLAMA, 0.0) == "llama: mlp.gate_proj(x)[n] > 0.0 (SiLU(gate) > 0)"
    assert "|SiLU(gate_proj(x)) * up_proj(x)|[n] > 0.0" in A.neuron_definition(A.LLAMA, 0.0, gated_product=True)
    assert "GELU" in A.neuron_definition(A.GPT2, 0.5, config=tiny("gpt2").config)


@pytest.mark.parametrize("kind", KINDS)
def test_update_directions_project_into_the_vocabulary_like_the_model(kind):
    """E @ v equals what the model's own head computes from the layer's FFN output direction."""
    model = tiny(kind)
    arch = A.architecture_for(model)
    neurons = [0, 5, FF - 1] if kind not in ("gpt2",) else [0, 5, 4 * D - 1]
    v = A.update_directions(model, arch, 1, neurons)
    E = A.unembedding(model, arch)
    assert E.shape == (V, model.lm_head.in_features)
    assert v.shape == (model.lm_head.in_features, 3) and v.dtype == torch.float32
    with torch.no_grad():
        down = A.down_module(model, arch, 1)
        unit = torch.zeros(len(neurons), down.weight.numel() // D)
        unit[torch.arange(len(neurons)), neurons] = 1.0
        # the residual-stream direction written by a unit activation of neuron n (bias removed)
        direction = down(unit) - down(torch.zeros_like(unit))
        if kind == "opt_post_ln":
            direction = model.model.decoder.project_out(direction)
        torch.testing.assert_close((E @ v).T, model.lm_head(direction), rtol=1e-5, atol=1e-5)
    if kind == "gpt2":
        torch.testing.assert_close(v, down.weight[neurons, :].T)
    if kind == "opt":
        torch.testing.assert_close(v, down.weight[:, neurons])
    if kind == "opt_post_ln":
        assert v.shape[0] == 16 != D


def test_update_directions_reject_bad_neurons_and_default_to_all():
    model = tiny("opt")
    assert A.update_directions(model, A.OPT, 0).shape == (D, FF)
    with pytest.raises(ValueError, match="neuron indices"):
        A.update_directions(model, A.OPT, 0, [FF])


def test_model_weights_adapter_returns_float32_numpy():
    model = tiny("opt_post_ln").to(torch.bfloat16)
    weights = A.ModelWeights(model)
    directions = weights.update_directions(2, [1, 2])
    E = weights.unembedding()
    assert isinstance(directions, np.ndarray) and directions.dtype == np.float32 and directions.shape == (16, 2)
    assert E.dtype == np.float32 and E.shape == (V, 16)
    assert weights.unembedding() is E and weights.num_layers == L


def test_base_model_paths_resolve_too():
    model = tiny("llama").model       # LlamaModel, not the CausalLM
    arch = A.architecture_for(model)
    assert arch is A.LLAMA and A.num_layers(model, arch) == L
    assert A.neuron_module(model, arch, 0) is model.layers[0].mlp.gate_proj
    with pytest.raises(ValueError, match="CausalLM"):
        A.unembedding(model, arch)
