"""The table of supported architectures: where each family keeps its layers, its neurons and its weights.

One frozen `Architecture` row per family (OPT, GPT-2, GPT-NeoX, Llama/Mistral/Qwen2/Qwen3/OLMo/StableLM,
OLMo-2, Gemma, Gemma-2/3, Phi, GPT-J) says, as module paths, where the decoder layers are, which
module's output is the neuron pre-activation (SPEC §1), which projection writes the neuron's update
direction and where the unembedding is. Everything else here reads those paths; nothing is
special-cased per model class. docs/architectures.md explains how to add a row.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional

import numpy as np
import torch

DOCS = "docs/architectures.md"


@dataclass(frozen=True)
class Architecture:
    """Where one model family keeps its FFN neurons; module paths are relative to the *ForCausalLM."""

    name: str
    hf_classes: tuple            # class names (CausalLM and base model) that identify the family
    model_types: tuple           # config.model_type values of the family
    base_model: str              # the base model inside the CausalLM (run by `run_until`)
    layers: str                  # the decoder layer list
    ffn_input: str               # what the FFN reads (documentation; the hook does not need it)
    neuron_module: str           # per layer: the module whose OUTPUT is the pre-activation [.., F]
    down_module: str             # per layer: the projection F -> d_model (update directions)
    unembedding: str             # the [V, d] output embedding
    positions: str               # "learned" or "rotary"
    activation: str              # the family's usual activation (the config may say otherwise)
    activation_attr: str         # config attribute naming the activation
    max_positions_attr: str      # config attribute with the number of positions
    ffn_dim_attr: str            # config attribute with F
    ffn_dim_factor: Optional[int] = None  # F = factor * hidden_size when ffn_dim_attr is None (GPT-2)
    down_transposed: bool = False         # the down weight is stored [F, d] (GPT-2 Conv1D)
    product_module: Optional[str] = None  # gated only: the module whose INPUT is act(gate) * up
    output_projection: Optional[str] = None  # maps the residual to the unembedding space (OPT-350m)
    ffn_output_norm: Optional[str] = None    # per layer: RMSNorm on the FFN output before the residual add
    ffn_output_norm_offset: float = 0.0      # that norm scales by (offset + weight): 1.0 for Gemma's RMSNorm

    @property
    def gated(self) -> bool:
        """Whether the FFN is gated, down(act(gate(x)) * up(x))."""
        return self.product_module is not None


OPT = Architecture(
    name="opt",
    hf_classes=("OPTForCausalLM", "OPTModel"),
    model_types=("opt",),
    base_model="model",
    layers="model.decoder.layers",
    ffn_input="final_layer_norm(h) when do_layer_norm_before, else h (post-LN, OPT-350m)",
    neuron_module="fc1",
    down_module="fc2",
    unembedding="lm_head",
    positions="learned",
    activation="ReLU",
    activation_attr="activation_function",
    max_positions_attr="max_position_embeddings",
    ffn_dim_attr="ffn_dim",
    output_projection="model.decoder.project_out",
)

GPT2 = Architecture(
    name="gpt2",
    hf_classes=("GPT2LMHeadModel", "GPT2Model"),
    model_types=("gpt2",),
    base_model="transformer",
    layers="transformer.h",
    ffn_input="ln_2(h)",
    neuron_module="mlp.c_fc",
    down_module="mlp.c_proj",
    unembedding="lm_head",
    positions="learned",
    activation="GELU",
    activation_attr="activation_function",
    max_positions_attr="n_positions",
    ffn_dim_attr="n_inner",
    ffn_dim_factor=4,
    down_transposed=True,
)

GPT_NEOX = Architecture(
    name="gpt_neox",
    hf_classes=("GPTNeoXForCausalLM", "GPTNeoXModel"),
    model_types=("gpt_neox",),
    base_model="gpt_neox",
    layers="gpt_neox.layers",
    ffn_input="post_attention_layernorm(h) (h = layer input when use_parallel_residual)",
    neuron_module="mlp.dense_h_to_4h",
    down_module="mlp.dense_4h_to_h",
    unembedding="lm_head",
    positions="rotary",
    activation="GELU",
    activation_attr="hidden_act",
    max_positions_attr="max_position_embeddings",
    ffn_dim_attr="intermediate_size",
)

LLAMA = Architecture(
    name="llama",
    hf_classes=("LlamaForCausalLM", "LlamaModel", "MistralForCausalLM", "MistralModel",
                "Qwen2ForCausalLM", "Qwen2Model", "Qwen3ForCausalLM", "Qwen3Model",
                "OlmoForCausalLM", "OlmoModel", "StableLmForCausalLM", "StableLmModel"),
    model_types=("llama", "mistral", "qwen2", "qwen3", "olmo", "stablelm"),
    base_model="model",
    layers="model.layers",
    ffn_input="post_attention_layernorm(h) (StableLM with use_parallel_residual: input_layernorm(h), "
              "h = layer input)",
    neuron_module="mlp.gate_proj",
    down_module="mlp.down_proj",
    unembedding="lm_head",
    positions="rotary",
    activation="SiLU",
    activation_attr="hidden_act",
    max_positions_attr="max_position_embeddings",
    ffn_dim_attr="intermediate_size",
    product_module="mlp.down_proj",
)

# Gated families that differ from the llama row only where said (norms around the FFN, activation attribute)
OLMO2 = replace(  # no norm before the FFN; its output is normalised instead
    LLAMA, name="olmo2", hf_classes=("Olmo2ForCausalLM", "Olmo2Model"), model_types=("olmo2",),
    ffn_input="h itself (OLMo-2 normalises the FFN output, post_feedforward_layernorm, not its input)",
    ffn_output_norm="post_feedforward_layernorm",
)

GEMMA = replace(
    LLAMA, name="gemma", hf_classes=("GemmaForCausalLM", "GemmaModel"), model_types=("gemma",),
    ffn_input="post_attention_layernorm(h)", activation="GELU",  # tanh approximation (gelu_pytorch_tanh)
)

GEMMA2 = replace(  # Gemma-2 and Gemma-3 text: sandwich norms around the FFN, RMSNorm scale 1 + weight
    LLAMA, name="gemma2", hf_classes=("Gemma2ForCausalLM", "Gemma2Model", "Gemma3ForCausalLM", "Gemma3TextModel"),
    model_types=("gemma2", "gemma3_text"), ffn_input="pre_feedforward_layernorm(h)",
    activation="GELU", activation_attr="hidden_activation",
    ffn_output_norm="post_feedforward_layernorm", ffn_output_norm_offset=1.0,
)

PHI = Architecture(
    name="phi",
    hf_classes=("PhiForCausalLM", "PhiModel"),
    model_types=("phi",),
    base_model="model",
    layers="model.layers",
    ffn_input="input_layernorm(h), h = layer input (attention and FFN in parallel on one norm)",
    neuron_module="mlp.fc1",
    down_module="mlp.fc2",
    unembedding="lm_head",
    positions="rotary",
    activation="GELU",
    activation_attr="hidden_act",
    max_positions_attr="max_position_embeddings",
    ffn_dim_attr="intermediate_size",
)

GPTJ = Architecture(
    name="gptj",
    hf_classes=("GPTJForCausalLM", "GPTJModel"),
    model_types=("gptj",),
    base_model="transformer",
    layers="transformer.h",
    ffn_input="ln_1(h), h = layer input (attention and FFN in parallel on one norm)",
    neuron_module="mlp.fc_in",
    down_module="mlp.fc_out",
    unembedding="lm_head",
    positions="rotary",
    activation="GELU",
    activation_attr="activation_function",
    max_positions_attr="n_positions",
    ffn_dim_attr="n_inner",
    ffn_dim_factor=4,
)

ARCHITECTURES = (OPT, GPT2, GPT_NEOX, LLAMA, OLMO2, GEMMA, GEMMA2, PHI, GPTJ)


class UnsupportedArchitecture(ValueError):
    """The model is not a family in the table (docs/architectures.md says how to add a row)."""


def architecture_for(model_or_config) -> Architecture:
    """The table row for a model, a config, or a class name, matched by class name then model_type."""
    if isinstance(model_or_config, str):
        names, model_type = [model_or_config], None
    else:
        config = getattr(model_or_config, "config", model_or_config)
        names = [type(model_or_config).__name__, *(getattr(config, "architectures", None) or [])]
        model_type = getattr(config, "model_type", None)
    for name in names:
        for arch in ARCHITECTURES:
            if name in arch.hf_classes:
                return arch
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    what = model_type or (names[0] if names else type(model_or_config).__name__)
    supported = ", ".join(c for arch in ARCHITECTURES for c in arch.hf_classes if c.endswith("ForCausalLM")
                          or c == "GPT2LMHeadModel")
    raise UnsupportedArchitecture(
        f"unsupported architecture {what!r}: fastneurons knows {supported}; "
        f"to add a family, add a row to src/fastneurons/models/architectures.py as {DOCS} describes")


def _submodule(model, arch: Architecture, path: str) -> torch.nn.Module:
    """`path` (relative to the CausalLM) in `model`, which may also be the base model itself."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        prefix = arch.base_model + "."
        if path.startswith(prefix) and not hasattr(model, arch.base_model):
            try:
                return model.get_submodule(path[len(prefix):])
            except AttributeError:
                pass
        raise AttributeError(f"{type(model).__name__} has no module {path!r} (architecture {arch.name})") from None


def base_model(model, arch: Architecture) -> torch.nn.Module:
    """The base transformer (no LM head) inside `model`, or `model` if it is one."""
    return model.get_submodule(arch.base_model) if hasattr(model, arch.base_model) else model


def decoder_layers(model, arch: Architecture) -> torch.nn.ModuleList:
    """The decoder layers, in order."""
    return _submodule(model, arch, arch.layers)


def num_layers(model, arch: Architecture) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model, arch))


def _layer(model, arch: Architecture, layer: int) -> torch.nn.Module:
    layers = decoder_layers(model, arch)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} does not exist: the model has {len(layers)} layers (0..{len(layers) - 1})")
    return layers[layer]


def neuron_module(model, arch: Architecture, layer: int, gated_product: bool = False) -> torch.nn.Module:
    """The module to hook for layer `layer`: its output is the pre-activation [.., F].

    With `gated_product` (gated families only) it is the down projection instead, whose INPUT is
    act(gate) * up: hook it with a forward *pre*-hook and take `args[0].abs()`.
    Note OPT's layer flattens tokens before fc1, so there the hooked tensor is [B*S, F], not [B, S, F].
    """
    if gated_product:
        if not arch.gated:
            raise ValueError(f"gated_product needs a gated FFN; {arch.name} has none (its neuron is {arch.neuron_module})")
        return _layer(model, arch, layer).get_submodule(arch.product_module)
    return _layer(model, arch, layer).get_submodule(arch.neuron_module)


def down_module(model, arch: Architecture, layer: int) -> torch.nn.Module:
    """Layer `layer`'s down projection (F -> d_model)."""
    return _layer(model, arch, layer).get_submodule(arch.down_module)


def num_neurons(config, arch: Architecture) -> int:
    """F, the number of neurons per layer, from the config."""
    value = getattr(config, arch.ffn_dim_attr, None)
    if value is None and arch.ffn_dim_factor is not None:
        value = arch.ffn_dim_factor * config.hidden_size
    if value is None:
        raise ValueError(f"the {arch.name} config has no {arch.ffn_dim_attr!r}: cannot tell the number of neurons")
    return int(value)


def max_positions(config, arch: Architecture) -> int:
    """Number of positions the model was built for (OPT 2048; rotary models: max_position_embeddings)."""
    value = getattr(config, arch.max_positions_attr, None)
    if value is None:
        raise ValueError(f"the {arch.name} config has no {arch.max_positions_attr!r}: pass the sequence length explicitly")
    return int(value)


def activation_name(arch: Architecture, config=None) -> str:
    """The activation the config names (e.g. 'relu', 'gelu_new', 'silu'), else the family's usual one."""
    name = getattr(config, arch.activation_attr, None) if config is not None else None
    return str(name) if name else arch.activation


def neuron_definition(arch: Architecture, threshold: float, gated_product: bool = False, config=None) -> str:
    """One human sentence saying when a neuron is active; stored in the metadata of every recording."""
    act = activation_name(arch, config)
    shown = {"relu": "ReLU", "silu": "SiLU", "swish": "SiLU", "gelu": "GELU", "gelu_new": "GELU",
             "gelu_pytorch_tanh": "GELU"}.get(act.lower(), act)
    threshold = float(threshold)
    if gated_product:
        if not arch.gated:
            raise ValueError(f"gated_product needs a gated FFN; {arch.name} has none")
        return f"{arch.name}: |{shown}(gate_proj(x)) * up_proj(x)|[n] > {threshold} (input of {arch.product_module})"
    sentence = f"{arch.name}: {arch.neuron_module}(x)[n] > {threshold}"
    if threshold == 0.0 and shown == "ReLU":
        return sentence + " (ReLU output non-zero)"
    if threshold == 0.0 and shown == "SiLU":
        return sentence + " (SiLU(gate) > 0)"
    if threshold == 0.0 and shown == "GELU" and arch.gated:   # GELU(g) > 0 iff g > 0, tanh form too
        return sentence + " (GELU(gate) > 0)"
    return sentence + f" (pre-activation of {shown})"


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the last needed layer's neurons were seen."""


def run_until(model, arch: Architecture, input_ids, attention_mask, last_layer: int) -> None:
    """Run the base model's forward on a batch and stop inside layer `last_layer`.

    It stops in a forward pre-hook of that layer's down projection, so every hook on the neuron
    module (output) or on the down projection (pre-hook, registered earlier) has fired, for layers
    0..last_layer, and no later layer runs. Call it under torch.inference_mode() / no_grad().
    """
    stop_at = down_module(model, arch, last_layer)

    def stop(module, args):
        raise _StopForward

    handle = stop_at.register_forward_pre_hook(stop)
    try:
        base_model(model, arch)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    else:
        raise RuntimeError(f"the forward ended without reaching layer {last_layer}'s {arch.down_module}")
    finally:
        handle.remove()


def _as_neuron_index(neurons, size: int) -> Optional[torch.Tensor]:
    if neurons is None:
        return None
    index = torch.as_tensor(np.asarray(neurons), dtype=torch.long).reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(f"neuron indices must be in 0..{size - 1}")
    return index


def update_directions(model, arch: Architecture, layer: int, neurons=None) -> torch.Tensor:
    """Columns of layer `layer`'s down projection in the residual stream, float32 [d_model, n].

    GPT-2's Conv1D stores [F, d] and is transposed; OPT with project_out maps each column into the
    unembedding space, v <- project_out.weight @ v (SPEC §3, suppression). Where an RMSNorm sits on
    the FFN output (Gemma-2/3, OLMo-2) the residual receives its gain times the column, up to a
    positive per-token factor 1/rms: v <- (offset + norm.weight) * v.
    """
    weight = down_module(model, arch, layer).weight.detach()
    weight = weight.T if arch.down_transposed else weight          # [d, F]
    index = _as_neuron_index(neurons, weight.shape[1])
    columns = weight.float() if index is None else weight.index_select(1, index.to(weight.device)).float()
    if arch.ffn_output_norm is not None:
        norm = _layer(model, arch, layer).get_submodule(arch.ffn_output_norm)
        gain = norm.weight.detach().float().to(columns.device) + arch.ffn_output_norm_offset
        columns = gain[:, None] * columns
    if arch.output_projection is not None:
        try:
            project = _submodule(model, arch, arch.output_projection)
        except AttributeError:
            project = None
        if project is not None:
            columns = project.weight.detach().float().to(columns.device) @ columns
    return columns


def suppression_parameters(model, arch: Architecture, layer: int) -> list:
    """Names of the parameters `update_directions(model, arch, layer)` reads (lazy weights read only these)."""
    prefix = f"{arch.layers}.{layer}."
    names = [prefix + arch.down_module + ".weight"]
    if arch.ffn_output_norm is not None:
        names.append(prefix + arch.ffn_output_norm + ".weight")
    if arch.output_projection is not None:
        try:
            _submodule(model, arch, arch.output_projection)
            names.append(arch.output_projection + ".weight")
        except AttributeError:
            pass
    return names


def unembedding(model, arch: Architecture) -> torch.Tensor:
    """The output embedding E = lm_head.weight, [V, d] (no final norm, SPEC §3)."""
    try:
        head = _submodule(model, arch, arch.unembedding)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no {arch.unembedding}: load the CausalLM "
                         f"({arch.hf_classes[0]}), not the base model") from None
    return head.weight.detach()


class ModelWeights:
    """The weights the suppression analysis needs, as numpy float32 (update directions, unembedding)."""

    def __init__(self, model, arch: Optional[Architecture] = None):
        self.model = model
        self.arch = arch or architecture_for(model)
        self._unembedding = None

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return num_layers(self.model, self.arch)

    def update_directions(self, layer: int, neurons: Optional[Iterable[int]] = None) -> np.ndarray:
        """Float32 [d, n] columns for `neurons` of `layer` (all neurons when None)."""
        return update_directions(self.model, self.arch, layer, neurons).cpu().numpy()

    def unembedding(self) -> np.ndarray:
        """Float32 [V, d] output embedding (computed once)."""
        if self._unembedding is None:
            self._unembedding = np.ascontiguousarray(unembedding(self.model, self.arch).float().cpu().numpy())
        return self._unembedding
