"""The cost model of a recording, from the checkpoint's config alone (docs/design.md, "Big models").

FLOPs are 2·P·T for the P weights of the layers that run plus causal attention; weights cross to the
GPU once per layer-major block; a block holds as many tokens as the device memory left after weights,
counters and one micro-batch's workspace allows (at most MAX_BLOCK_TOKENS). The runner chooses its
block with the same `block_tokens_for`, and `fastneurons plan` prints the whole estimate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import torch

from fastneurons.models import architectures as archs

MFU = 0.55                   # share of peak matmul throughput a long prefill-only run reaches (scaleout.md)
COMFORT = 0.7                # share of the device memory the plan uses (as models/offload.py does)
MAX_BLOCK_TOKENS = 1 << 20   # 1M tokens: streaming OPT-66b costs ~1% of compute at this block (scaleout.md)


@dataclass(frozen=True)
class GPU:
    """Peak figures of one accelerator, each from the source named."""

    name: str
    tflops: float            # dense fp16/bf16 tensor-core peak, 1e12 FLOP/s
    memory_gb: float         # device memory, 1e9 bytes
    host_to_device_gbs: float  # sustained pinned host -> device copy, 1e9 bytes/s
    source: str


GPUS = {gpu.name: gpu for gpu in (
    GPU("H100-SXM", 989, 80, 50, "NVIDIA H100 datasheet (989 TFLOPS dense FP16, 80 GB); PCIe Gen5 x16 "
        "~50 GB/s planned (64 theoretical; nvbandwidth issue #24: 35.2 host->device with SM copies, 52.8 back)"),
    GPU("H100-PCIe", 756, 80, 50, "NVIDIA H100 datasheet (756 TFLOPS dense FP16, 80 GB); PCIe Gen5 x16 ~50 GB/s"),
    GPU("H200", 989, 141, 50, "NVIDIA H200 datasheet (989 TFLOPS dense FP16, 141 GB); PCIe Gen5 x16 ~50 GB/s"),
    GPU("A100-80G", 312, 80, 25, "NVIDIA A100 datasheet (312 TFLOPS dense FP16, 80 GB); PCIe Gen4 x16 "
        "25.1 GB/s measured (nvbandwidth issue #42)"),
    GPU("RTX-4090", 165, 24, 25, "NVIDIA Ada whitepaper (165 TFLOPS FP16 with FP32 accumulate, 24 GB); "
        "PCIe Gen4 x16 24-26 GB/s measured (nvbandwidth issue #15)"),
)}


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a model that decide its cost, read from a meta-device skeleton (no weights)."""

    arch: str
    num_layers: int
    hidden: int
    neurons: int
    attention_width: int     # heads x head dim (the width of QK^T and AV)
    layer_params: tuple      # parameters of each decoder layer
    outside_params: int      # embeddings, final norms (the LM head is never run)


def model_shape(config) -> ModelShape:
    """Sizes of the model `config` describes, from its real class built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    arch = archs.architecture_for(model)
    layers = archs.decoder_layers(model, arch)
    layer_params = tuple(sum(p.numel() for p in layer.parameters()) for layer in layers)
    inside = {id(p) for p in layers.parameters()}
    head = arch.unembedding + "."
    outside = sum(p.numel() for name, p in model.named_parameters()
                  if id(p) not in inside and not name.startswith(head))
    return ModelShape(arch.name, len(layers), int(config.hidden_size), archs.num_neurons(config, arch),
                      attention_width(config), layer_params, int(outside))


def attention_width(config) -> int:
    """Heads x head dim: the width of QK^T and AV (hidden_size when the config does not say)."""
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    return int(heads * head_dim) if heads and head_dim else int(config.hidden_size)


def block_tokens_for(free_bytes: int, *, hidden: int, seq_len: int, micro_tokens: int, neurons: int,
                     dtype_bytes: int) -> int:
    """Tokens of a layer-major block that fit `free_bytes` of device memory (before rounding to units).

    Each token of the block keeps its hidden state (hidden x dtype bytes) and its row of a boolean
    [B, 1, S, S] mask (S bytes); one micro-batch's layer workspace (~2 x (F + 4d) values a token)
    is set aside first.
    """
    workspace = 2 * micro_tokens * (neurons + 4 * hidden) * dtype_bytes
    per_token = hidden * dtype_bytes + seq_len
    return int(max(0, min(MAX_BLOCK_TOKENS, (free_bytes - workspace) // per_token)))


def units_for(block_tokens: int, unit_tokens: int) -> int:
    """Whole units in a block of `block_tokens` (at least one)."""
    return max(1, block_tokens // unit_tokens)


@dataclass
class Estimate:
    """What a recording of `tokens` tokens costs on one device."""

    target: str
    tokens: int
    flops: float
    weight_bytes_per_pass: int
    block_tokens: int
    passes: int
    compute_s: float
    transfer_s: float
    gpu_peak_bytes: int
    host_peak_bytes: int
    mode: str                # "resident" (weights fit the device), "stream" (layers cross per block) or "cpu"
    flops_per_s: float

    @property
    def total_s(self) -> float:
        """Copies overlap compute (a second stream), so the slower of the two decides."""
        return max(self.compute_s, self.transfer_s)


def counter_bytes(shape: ModelShape, layers: int, seq_len: int, domains: int = 1) -> int:
    """Device bytes of the dense counters (int64 pos_active [L, T, F] and domain_active)."""
    return 8 * layers * shape.neurons * (seq_len + domains)


def estimate(shape: ModelShape, tokens: int, *, seq_len: int, batch_size: int, unit_batches: int,
             dtype_bytes: int, gpu: Optional[GPU] = None, flops_per_s: Optional[float] = None,
             last_layer: Optional[int] = None, lazy: bool = True, positions: bool = True) -> Estimate:
    """Cost of recording `tokens` tokens on `gpu` (or on this CPU at `flops_per_s`)."""
    last = shape.num_layers - 1 if last_layer is None else last_layer
    params = sum(shape.layer_params[:last + 1])
    largest = max(shape.layer_params[:last + 1])
    layers = last + 1
    attention = 2 * shape.attention_width * seq_len * layers     # causal QK^T + AV per token: 2·2·w·S/2
    flops = float(2 * params * tokens + attention * tokens)
    layer_bytes, outside_bytes = params * dtype_bytes, shape.outside_params * dtype_bytes
    micro_tokens, unit_tokens = batch_size * seq_len, batch_size * seq_len * unit_batches
    counters = counter_bytes(shape, layers, seq_len if positions else 0)
    host_weights = outside_bytes + (2 * largest * dtype_bytes if lazy else layer_bytes)
    if gpu is None:
        if flops_per_s is None:
            raise ValueError("on the CPU the estimate needs the measured flops_per_s (measure_cpu_flops_per_s)")
        rate = flops_per_s
        return Estimate("this CPU", tokens, flops, layer_bytes, unit_tokens, 1, flops / rate, 0.0, 0,
                        host_weights + 2 * counters, "cpu", rate)
    rate = gpu.tflops * 1e12 * MFU
    device = int(COMFORT * gpu.memory_gb * 1e9)
    if outside_bytes + layer_bytes + counters + 2 * micro_tokens * shape.hidden * dtype_bytes <= device:
        mode, weights_on_device = "resident", outside_bytes + layer_bytes
    else:
        mode, weights_on_device = "stream", outside_bytes + 2 * largest * dtype_bytes
    free = device - weights_on_device - counters
    block = block_tokens_for(free, hidden=shape.hidden, seq_len=seq_len, micro_tokens=micro_tokens,
                             neurons=shape.neurons, dtype_bytes=dtype_bytes)
    if block < unit_tokens:
        raise ValueError(f"{gpu.name}: weights and counters leave no room for one unit of {unit_tokens} tokens; "
                         "use a smaller --batch-size or --unit-batches, or fewer --layers")
    block = units_for(block, unit_tokens) * unit_tokens
    passes = 1 if mode == "resident" else math.ceil(tokens / block)
    transfer = (outside_bytes + passes * layer_bytes) / (gpu.host_to_device_gbs * 1e9)
    gpu_peak = weights_on_device + counters + block * (shape.hidden * dtype_bytes + seq_len) \
        + 2 * micro_tokens * (shape.neurons + 4 * shape.hidden) * dtype_bytes
    pinned = 2 * largest * dtype_bytes if mode == "stream" else 0
    return Estimate(gpu.name, tokens, flops, layer_bytes, block if mode == "stream" else unit_tokens, passes,
                    flops / rate, transfer, int(gpu_peak), int(host_weights + pinned + counters), mode, rate)


def measure_cpu_flops_per_s(config, *, seq_len: int, batch_size: int, seconds: float = 1.0) -> float:
    """FLOP/s of this CPU on one real decoder layer of the model (random weights, one micro-batch, fp32)."""
    from transformers import AutoModelForCausalLM

    one = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": 1})
    model = AutoModelForCausalLM.from_config(one).eval()
    arch = archs.architecture_for(model)
    params = sum(p.numel() for p in archs.decoder_layers(model, arch)[0].parameters())
    ids = torch.randint(0, int(one.vocab_size), (batch_size, seq_len))
    mask = torch.ones_like(ids)
    forward = archs.base_model(model, arch)
    with torch.inference_mode():
        forward(input_ids=ids, attention_mask=mask, use_cache=False)   # warm up
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            forward(input_ids=ids, attention_mask=mask, use_cache=False)
            runs += 1
        elapsed = (time.perf_counter() - start) / runs
    return (2 * params + 2 * attention_width(one) * seq_len) * batch_size * seq_len / elapsed


def choose_block_units(config, model, offload_plan, seq_len: int, log=print) -> Optional[int]:
    """Units per layer-major block for `record`: --block-tokens if given; else, when layers stream,
    as many as fit the device memory left (same rule as `estimate`); else None (micro-batch order)."""
    from fastneurons.config import parse_count

    unit_tokens = config.batch_size * seq_len * config.unit_batches
    if config.block_tokens is not None:
        return units_for(parse_count(config.block_tokens), unit_tokens)
    if offload_plan.mode != "stream":
        return None
    from fastneurons.models.lazy import free_ram_bytes

    device = torch.device(offload_plan.device)
    if device.type == "cuda":
        free = int(COMFORT * torch.cuda.mem_get_info(device)[0])
    else:   # lazy weights on the CPU: the block's hidden states live in host RAM
        free = int(COMFORT * (free_ram_bytes() or 8 << 30))
    if offload_plan.budget_bytes is not None:
        free = min(free, offload_plan.budget_bytes - offload_plan.device_weight_bytes)
    dtype_bytes = next(model.parameters()).element_size()
    neurons = archs.num_neurons(model.config, archs.architecture_for(model))
    block = block_tokens_for(free, hidden=int(model.config.hidden_size), seq_len=seq_len,
                             micro_tokens=config.batch_size * seq_len, neurons=neurons, dtype_bytes=dtype_bytes)
    units = units_for(block, unit_tokens)
    log(f"layer-major blocks of {units} units ({units * unit_tokens:,} tokens): each streamed layer crosses once per block")
    return units


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def plan_for(config) -> tuple:
    """(ModelShape, Estimate, GPU or None) for a PlanConfig."""
    from fastneurons.config import parse_count
    from fastneurons.models.loading import load_config

    model_config = load_config(config.model)
    shape = model_shape(model_config)
    gpu = None
    if config.gpu is not None:
        if config.gpu not in GPUS:
            raise ValueError(f"--gpu {config.gpu!r}: the table knows {', '.join(GPUS)}")
        gpu = GPUS[config.gpu]
    positions = archs.max_positions(model_config, archs.architecture_for(model_config))
    seq_len = config.seq_len or min(positions, 2048)
    dtype = config.dtype if config.dtype != "auto" else ("float16" if gpu else "float32")
    dtype_bytes = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    last = None
    if config.layers:
        last = max(config.layers)
        if last >= shape.num_layers:
            raise ValueError(f"--layers {last}: the model has {shape.num_layers} layers")
    rate = None if gpu else measure_cpu_flops_per_s(model_config, seq_len=seq_len, batch_size=config.batch_size)
    result = estimate(shape, parse_count(config.tokens), seq_len=seq_len, batch_size=config.batch_size,
                      unit_batches=config.unit_batches, dtype_bytes=dtype_bytes, gpu=gpu, flops_per_s=rate,
                      last_layer=last, lazy=config.weights == "lazy", positions=config.positions)
    return shape, result, gpu


def plan_command(config) -> str:
    """The text `fastneurons plan` prints."""
    shape, e, gpu = plan_for(config)
    params = sum(shape.layer_params)
    lines = [
        f"{config.model}: {shape.arch}, {shape.num_layers} layers, d={shape.hidden}, {shape.neurons} neurons a layer, "
        f"{params / 1e9:.3g}e9 parameters in the layers ({shape.outside_params / 1e6:.1f}M outside)",
        f"tokens            {e.tokens:,}",
        f"FLOPs             {e.flops:.3g} (2·P·T = {2 * sum(shape.layer_params) * e.tokens:.3g} plus causal attention)",
        f"weights per pass  {_size(e.weight_bytes_per_pass)}",
        f"on                {e.target}: {e.flops_per_s / 1e12:.3g} TFLOP/s "
        + (f"({MFU:.0%} of {gpu.tflops:g} peak; {gpu.source})" if gpu else "(measured on one real layer)"),
        f"mode              {e.mode}" + (": weights fit the device and cross once" if e.mode == "resident" else
                                         ": each layer crosses once per block" if e.mode == "stream" else ""),
        f"block             {e.block_tokens:,} tokens -> {e.passes:,} passes of the weights",
        f"compute           {_duration(e.compute_s)}",
        f"transfer          {_duration(e.transfer_s)}"
        + (f" at {gpu.host_to_device_gbs:g} GB/s host->device, overlapped with compute" if gpu else " (none on the CPU)"),
        f"predicted time    {_duration(e.total_s)}",
        f"peak GPU memory   {_size(e.gpu_peak_bytes)}" if gpu else "peak GPU memory   none",
        f"peak host memory  {_size(e.host_peak_bytes)} ({config.weights} weights, dense counters; "
        "plus --ngram-memory for n-gram tables)",
    ]
    return "\n".join(lines)
