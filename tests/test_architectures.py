"""The architecture table: identification, hook points (SPEC §1), stopping early, update directions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T

from fastneurons.models import architectures as A

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
        "qwen3": lambda: T.Qwen3Config(num_key_value_heads=2, head_dim=D // 4, tie_word_embeddings=False,
                                       **rotary),
        "olmo": lambda: T.OlmoConfig(pad_token_id=None, bos_token_id=None, eos_token_id=None, **rotary),
        "stablelm": lambda: T.StableLmConfig(num_key_value_heads=4, use_parallel_residual=True, **rotary),
        "olmo2": lambda: T.Olmo2Config(pad_token_id=None, bos_token_id=None, eos_token_id=None, **rotary),
        "gemma": lambda: T.GemmaConfig(num_key_value_heads=2, head_dim=D // 4, **rotary),
        "gemma2": lambda: T.Gemma2Config(num_key_value_heads=2, head_dim=D // 4, query_pre_attn_scalar=D // 4,
                                         **rotary),
        "gemma3": lambda: T.Gemma3TextConfig(num_key_value_heads=2, head_dim=D // 4, query_pre_attn_scalar=D // 4,
                                             **rotary),
        "phi": lambda: T.PhiConfig(bos_token_id=None, eos_token_id=None, **rotary),
        "gptj": lambda: T.GPTJConfig(vocab_size=V, n_embd=D, n_layer=L, n_head=4, n_positions=64, rotary_dim=4,
                                     bos_token_id=None, eos_token_id=None),
    }
    config = configs[kind]()
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():   # random LayerNorm affine parameters, so a missing norm cannot go unnoticed
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                module.weight.uniform_(0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.uniform_(-0.5, 0.5)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:   # nor a missing bias
                module.bias.uniform_(-0.1, 0.1)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0          # right padding
    return ids, mask


KINDS = ["opt", "opt_post_ln", "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "olmo", "stablelm",
         "olmo2", "gemma", "gemma2", "gemma3", "phi", "gptj"]
FAMILY = {"opt": "opt", "opt_post_ln": "opt", "gpt2": "gpt2", "gpt_neox": "gpt_neox", "llama": "llama",
          "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "olmo": "llama", "stablelm": "llama",
          "olmo2": "olmo2", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma2", "phi": "phi", "gptj": "gptj"}
PARALLEL = {"gpt_neox", "stablelm", "phi", "gptj"}       # attention and FFN both read the layer input
FFN_OUTPUT_NORM = {"olmo2", "gemma2", "gemma3"}          # post_feedforward_layernorm: an RMSNorm on the FFN output


@pytest.mark.parametrize("kind", KINDS)
def test_architecture_for_model_config_and_class_name(kind):
    model = tiny(kind)
    assert A.architecture_for(model).name == FAMILY[kind]
    assert A.architecture_for(model.config).name == FAMILY[kind]
    assert A.architecture_for(type(model).__name__).name == FAMILY[kind]
    arch = A.architecture_for(model)
    assert A.architecture_for(type(A.base_model(model, arch)).__name__) is arch   # the base model class too
    assert A.num_layers(model, arch) == L


def test_rows_do_not_share_classes_or_model_types():
    classes = [c for arch in A.ARCHITECTURES for c in arch.hf_classes]
    model_types = [t for arch in A.ARCHITECTURES for t in arch.model_types]
    assert len(classes) == len(set(classes)) and len(model_types) == len(set(model_types))
    assert len({arch.name for arch in A.ARCHITECTURES}) == len(A.ARCHITECTURES)


def test_unknown_architecture_names_the_supported_ones_and_the_docs():
    config = T.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=1, num_attention_heads=4, intermediate_size=FF)
    with pytest.raises(A.UnsupportedArchitecture,
                       match=r"'bert'.*OPTForCausalLM.*Gemma2ForCausalLM.*GPTJForCausalLM.*docs/architectures.md"):
        A.architecture_for(config)
    with pytest.raises(ValueError):    # it is a ValueError, so callers can catch bad input uniformly
        A.architecture_for("BertForMaskedLM")


def _layer_norm(module, x):
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _rms_norm(module, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon) * module.weight


def _gemma_rms_norm(module, x):     # Gemma's RMSNorm scales by (1 + weight)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.eps) * (1 + module.weight)


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
    if kind in ("phi", "gptj"):     # parallel: x = the one layer norm of the layer input; GELU (tanh form)
        norm, fc_in, fc_out = ((layer.input_layernorm, layer.mlp.fc1, layer.mlp.fc2) if kind == "phi" else
                               (layer.ln_1, layer.mlp.fc_in, layer.mlp.fc_out))
        pre = F.linear(_layer_norm(norm, h), fc_in.weight, fc_in.bias)
        return pre, F.linear(F.gelu(pre, approximate="tanh"), fc_out.weight, fc_out.bias)
    mlp, act = layer.mlp, F.silu    # gated: neuron = gate_proj output
    if kind == "gemma":
        x, act = _gemma_rms_norm(layer.post_attention_layernorm, h), lambda g: F.gelu(g, approximate="tanh")
    elif kind in ("gemma2", "gemma3"):
        x, act = _gemma_rms_norm(layer.pre_feedforward_layernorm, h), lambda g: F.gelu(g, approximate="tanh")
    elif kind == "olmo2":           # no norm before the FFN
        x = h
    elif kind == "olmo":            # LayerNorm without affine parameters
        x = F.layer_norm(h, (h.shape[-1],), eps=1e-5)
    elif kind == "stablelm":        # parallel residual: input_layernorm of the layer input
        x = _layer_norm(layer.input_layernorm, h)
    else:
        x = _rms_norm(layer.post_attention_layernorm, h)
    pre = F.linear(x, mlp.gate_proj.weight)
    out = F.linear(act(pre) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
    if kind == "olmo2":             # the norm sits on the FFN output
        out = _rms_norm(layer.post_feedforward_layernorm, out)
    elif kind in ("gemma2", "gemma3"):
        out = _gemma_rms_norm(layer.post_feedforward_layernorm, out)
    return pre, out


def _residual_module(kind, layer):
    """The module whose input (or output, for post-LN OPT) is the FFN's residual input h."""
    name = {"opt": "final_layer_norm", "gpt2": "ln_2", "gptj": "ln_1", "phi": "input_layernorm",
            "stablelm": "input_layernorm", "gemma2": "pre_feedforward_layernorm",
            "gemma3": "pre_feedforward_layernorm", "olmo2": "mlp"}.get(kind, "post_attention_layernorm")
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
            elif kind in PARALLEL:      # parallel residual: h is the layer input, out = input + attn + ffn
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


@pytest.mark.parametrize("kind", ["opt", "gpt2", "gpt_neox", "llama", "qwen3", "olmo2", "gemma", "gemma2", "gemma3",
                                  "phi", "gptj"])
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
    assert A.num_neurons(tiny("gptj").config, A.GPTJ) == 4 * D          # n_inner None -> 4 * n_embd
    assert A.num_neurons(T.GPTJConfig(n_embd=D, n_inner=40), A.GPTJ) == 40
    assert A.max_positions(tiny("gptj").config, A.GPTJ) == 64            # GPTJConfig.n_positions
    assert A.num_neurons(tiny("phi").config, A.PHI) == A.num_neurons(tiny("gemma2").config, A.GEMMA2) == FF
    assert A.max_positions(tiny("gemma3").config, A.GEMMA2) == 64


def test_neuron_definitions_are_readable():
    assert A.neuron_definition(A.OPT, 0.0) == "opt: fc1(x)[n] > 0.0 (ReLU output non-zero)"
    assert A.neuron_definition(A.LLAMA, 0.0) == "llama: mlp.gate_proj(x)[n] > 0.0 (SiLU(gate) > 0)"
    assert "|SiLU(gate_proj(x)) * up_proj(x)|[n] > 0.0" in A.neuron_definition(A.LLAMA, 0.0, gated_product=True)
    assert "GELU" in A.neuron_definition(A.GPT2, 0.5, config=tiny("gpt2").config)
    assert A.neuron_definition(A.GEMMA2, 0.0) == "gemma2: mlp.gate_proj(x)[n] > 0.0 (GELU(gate) > 0)"
    assert A.neuron_definition(A.GEMMA, 0.0, config=tiny("gemma").config).endswith("(GELU(gate) > 0)")
    assert A.activation_name(A.GEMMA2, tiny("gemma3").config) == "gelu_pytorch_tanh"
    assert "|GELU(gate_proj(x)) * up_proj(x)|" in A.neuron_definition(A.GEMMA2, 0.1, gated_product=True)
    assert A.neuron_definition(A.PHI, 0.0) == "phi: mlp.fc1(x)[n] > 0.0 (pre-activation of GELU)"
    assert A.neuron_definition(A.GPTJ, 0.0).startswith("gptj: mlp.fc_in(x)[n] > 0.0")


@pytest.mark.parametrize("kind", KINDS)
def test_update_directions_project_into_the_vocabulary_like_the_model(kind):
    """E @ v equals what the model's own head computes from the layer's FFN output direction."""
    model = tiny(kind)
    arch = A.architecture_for(model)
    neurons = [0, 5, FF - 1] if kind not in ("gpt2", "gptj") else [0, 5, 4 * D - 1]
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
        if kind in FFN_OUTPUT_NORM:  # the residual gets norm(out) = gain * out / rms(out): undo the positive 1/rms
            norm = A.decoder_layers(model, arch)[1].post_feedforward_layernorm
            eps = norm.eps if kind != "olmo2" else norm.variance_epsilon
            direction = norm(direction) * torch.sqrt(direction.pow(2).mean(-1, keepdim=True) + eps)
        logits = model.lm_head(direction) - model.lm_head(torch.zeros_like(direction))   # Phi, GPT-J: head bias
        torch.testing.assert_close((E @ v).T, logits, rtol=1e-5, atol=1e-5)
    if kind == "gpt2":
        torch.testing.assert_close(v, down.weight[neurons, :].T)
    if kind == "opt":
        torch.testing.assert_close(v, down.weight[:, neurons])
    if kind == "opt_post_ln":
        assert v.shape[0] == 16 != D
    if kind in ("gemma2", "gemma3"):   # Gemma's RMSNorm gain is 1 + weight
        gain = 1 + A.decoder_layers(model, arch)[1].post_feedforward_layernorm.weight
        torch.testing.assert_close(v, gain[:, None] * down.weight[:, neurons])


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
