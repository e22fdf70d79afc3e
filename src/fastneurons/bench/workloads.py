"""What the end-to-end bench runs on: OPT-shaped models (real facebook/opt-* sizes, random or sparse weights),
the stdlib corpus, record's micro-batches, and the Job that names one setting. Nothing is downloaded."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# The released facebook/opt-* configs (vocab 50272, 2048 positions, ReLU): hidden, layers, ffn_dim,
# heads, word_embed_proj_dim, pre-LN. "tiny" is not a release: it keeps --quick fast.
OPT_SIZES = {
    "tiny": (64, 4, 256, 4, 64, True),
    "125m": (768, 12, 3072, 12, 768, True),
    "350m": (1024, 24, 4096, 16, 512, False),
    "1.3b": (2048, 24, 8192, 32, 2048, True),
    "2.7b": (2560, 32, 10240, 32, 2560, True),
    "6.7b": (4096, 32, 16384, 32, 4096, True),
    "13b": (5120, 40, 20480, 40, 5120, True),
    "30b": (7168, 48, 28672, 56, 7168, True),
    "66b": (9216, 64, 36864, 72, 9216, True),
}
DENSITIES = ("random", "sparse")
SPARSE_TARGET = 0.05  # fraction of (token, neuron) pairs active in the first half, as in trained OPTs


def opt_config(size: str, max_positions: int = 2048):
    """The OPTConfig of facebook/opt-``size`` (random weights are built from it; nothing is downloaded)."""
    from transformers import OPTConfig

    if size not in OPT_SIZES:
        raise ValueError(f"unknown OPT size {size!r}: choose one of {', '.join(OPT_SIZES)}")
    hidden, layers, ffn, heads, proj, pre_ln = OPT_SIZES[size]
    return OPTConfig(vocab_size=50272, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                     num_attention_heads=heads, word_embed_proj_dim=proj, do_layer_norm_before=pre_ln,
                     max_position_embeddings=max_positions, activation_function="relu",
                     bos_token_id=50256, eos_token_id=50256, pad_token_id=1)


def corpus_files(directory, tokens: int) -> list:
    """Two real-text domains from the Python stdlib (code, docstrings), enough for ``tokens`` tokens."""
    from fastneurons.demo.stdlib_text import stdlib_text

    directory = Path(directory)
    max_bytes = max(1 << 16, 8 * int(tokens))
    code, docs = stdlib_text(directory, max_bytes=max_bytes)
    return [f"code={code}", f"docstrings={docs}"]


def _plan_batches(model, tokenizer, corpus, tokens, seq_len, batch_size, full_length=True, unit_batches=4):
    """The (input_ids, attention_mask) micro-batches ``record`` runs on, planned exactly as it does."""
    from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus

    vocab = int(model.get_input_embeddings().weight.shape[0])
    plan = plan_corpus([parse_corpus_arg(c) for c in corpus], tokenizer, seq_len=seq_len, batch_size=batch_size,
                       unit_batches=unit_batches, max_tokens=tokens, full_length=full_length, vocab_size=vocab)
    return [(mb.input_ids, mb.attention_mask) for u in range(plan.num_units) for mb in plan.unit(u).batches]


def layer_densities(model, batches, layers) -> list:
    """Fraction of non-pad (token, neuron) pairs with pre-activation > 0, per layer, on ``batches``."""
    from fastneurons.models import architectures as archs

    arch = archs.architecture_for(model)
    sums = {layer: [0, 0] for layer in layers}
    state = {}

    def hook(layer):
        def count(module, args, out):
            on = out.reshape(-1, out.shape[-1])[state["valid"]] > 0
            sums[layer][0] += int(on.sum())
            sums[layer][1] += on.numel()
        return count

    handles = [archs.neuron_module(model, arch, layer).register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                state["valid"] = mask.reshape(-1).bool()
                archs.run_until(model, arch, ids, mask, max(layers))
    finally:
        for handle in handles:
            handle.remove()
    return [a / max(1, n) for a, n in (sums[layer] for layer in layers)]


def make_sparse(model, batches, layers, target: float = SPARSE_TARGET) -> None:
    """Shift each of ``layers``' fc1 biases (in order) by its pre-activation quantile so ~``target`` fire.

    The shift of layer l is calibrated with layers < l already shifted, on ``batches``.
    """
    from fastneurons.models import architectures as archs

    arch = archs.architecture_for(model)
    rng = np.random.default_rng(0)
    for layer in layers:
        module = archs.neuron_module(model, arch, layer)
        captured, state_valid = [], [None]
        handle = module.register_forward_hook(
            lambda mod, args, out: captured.append(out.detach().reshape(-1, out.shape[-1])[state_valid[0]].float()))
        try:
            with torch.inference_mode():
                for ids, mask in batches:
                    state_valid[0] = mask.reshape(-1).bool()
                    archs.run_until(model, arch, ids, mask, layer)
        finally:
            handle.remove()
        values = torch.cat(captured).reshape(-1).numpy()
        sample = values if values.size <= 1 << 22 else rng.choice(values, 1 << 22, replace=False)
        shift = float(np.quantile(sample, 1.0 - target))
        with torch.no_grad():
            module.bias.sub_(shift)


def prepare_opt(size: str, density: str, directory, corpus, seq_len: int, calibration_tokens: int,
                dtype=torch.float32, seed: int = 0) -> dict:
    """Build an OPT-``size``-shaped model with random weights (``density`` random or sparse), save it with
    the GPT-2 tokenizer into ``directory``; return its description (measured densities included)."""
    from transformers import OPTForCausalLM

    from fastneurons.models.loading import gpt2_tokenizer

    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    torch.manual_seed(seed)
    config = opt_config(size)
    model = OPTForCausalLM._from_config(config, dtype=dtype).eval()
    model.requires_grad_(False)
    layers = list(range(config.num_hidden_layers))
    first_half = layers[: (len(layers) + 1) // 2]
    densities = [None] * len(layers)
    if calibration_tokens:
        batches = _plan_batches(model, gpt2_tokenizer(), corpus, calibration_tokens, seq_len, batch_size=4)
        if density == "sparse":
            make_sparse(model, batches, first_half)
        densities = layer_densities(model, batches, layers)
    elif density == "sparse":
        raise ValueError("a sparse model needs calibration_tokens > 0 to calibrate its biases")
    directory = Path(directory)
    model.save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    half = len(first_half)
    return {"name": f"opt-{size}-shaped ({density})", "path": str(directory), "size": size, "density": density,
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden": config.hidden_size, "layers": config.num_hidden_layers, "ffn_dim": config.ffn_dim,
            "layer_density": densities, "first_half_density": _mean(densities[:half]),
            "second_half_density": _mean(densities[half:])}


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@dataclass
class Job:
    """One end-to-end setting: which model, which corpus, how many tokens, how it is cut and run."""

    model: str
    corpus: list
    tokens: int
    work_dir: str
    seq_len: int = 512
    batch_size: int = 2
    full_length: bool = True
    device: str = "cpu"
    dtype: str = "auto"
    threads: Optional[int] = None
    gpu_memory: Optional[str] = None
    reuse_model: bool = False  # record loads the model on its first run only (a GGUF takes seconds to decode)
    bare_in_worker: bool = False  # record and plain-way workers also time a bare forward of their own model
    bare_beside: bool = False  # record workers also run a bare forward beside each micro-batch (bench/beside.py)
    record_overrides: dict = field(default_factory=dict)

    def record_config(self, out, **overrides):
        """The RecordConfig fastneurons runs for this job."""
        from fastneurons.config import RecordConfig

        values = dict(model=self.model, corpus=list(self.corpus), out=str(out), tokens=str(self.tokens),
                      seq_len=self.seq_len, batch_size=self.batch_size, full_length=self.full_length,
                      device=self.device, dtype=self.dtype, threads=self.threads, gpu_memory=self.gpu_memory,
                      progress=False)
        values.update(self.record_overrides)
        values.update(overrides)
        return RecordConfig(**values)
