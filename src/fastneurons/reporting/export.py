"""`fastneurons export`: a store's dense counters as the files other tools read (docs/export.md).

- lape: one `activation.<domain>.train.<model>` per domain, a `torch.save(dict(n=..., over_zero=[L, F]))`
  as RUCAIBox/Language-Specific-Neurons' identify.py loads it (`torch.load(..., weights_only=True)` works).
- powerinfer: `activation_<layer>.pt` per layer, a 1-D tensor of activation counts [F], the
  per-layer profile PowerInfer's GPU-split solver and GGUF exporter read (only those files in DIR).
- npz: `counts.npz`, every dense counter by name plus the store's metadata as JSON, for numpy/pandas/xarray.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from fastneurons.reporting.outputs import model_name

FORMATS = ("lape", "powerinfer", "npz")
_INT32_MAX = 2**31 - 1


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "model"


def _prefix_layers(counts, fmt: str) -> list:
    """Layers 0..L-1: both tools index rows by layer, so a store with gaps would mislabel them."""
    layers = list(counts.layers)
    if layers != list(range(len(layers))):
        raise ValueError(f"--format {fmt} needs layers 0..L-1 (row i is layer i); this store holds layers {layers}")
    return layers


def _counts_tensor(array: np.ndarray):
    """int32 as LAPE records them when every count fits, else int64 (identify.py divides either)."""
    import torch

    dtype = np.int32 if array.size == 0 or array.max() <= _INT32_MAX else np.int64
    return torch.from_numpy(np.ascontiguousarray(array.astype(dtype)))


def export_lape(counts, folder: Path) -> list:
    """One LAPE activation file per domain: n = counted tokens of the domain, over_zero [layers, F]."""
    import torch

    layers = _prefix_layers(counts, "lape")
    if not counts.domains:
        raise ValueError("the store holds no domains (each corpus file is one)")
    per_layer = [counts.domain_active(layer) for layer in layers]   # each [D, F]
    tag, written = _safe(model_name(counts.metadata)), []
    names = [_safe(d) for d in counts.domains]
    if len(set(names)) != len(names):
        raise ValueError(f"domain labels {counts.domains} collide as file names; relabel them with LABEL=PATH")
    for d, (domain, name) in enumerate(zip(counts.domains, names)):
        over_zero = np.stack([active[d] for active in per_layer])
        path = folder / f"activation.{name}.train.{tag}"
        torch.save({"n": int(counts.domain_tokens[d]), "over_zero": _counts_tensor(over_zero), "domain": domain,
                    "layers": layers, "neuron_definition": str(counts.metadata.get("neuron_definition"))}, path)
        written.append(path)
    return written


def export_powerinfer(counts, folder: Path) -> list:
    """activation_<i>.pt for i = 0..L-1: the layer's activation counts over all counted tokens."""
    import torch

    others = sorted(p.name for p in folder.iterdir() if not re.fullmatch(r"activation_\d+\.pt", p.name))
    if others:  # PowerInfer counts the files in the folder to find the layers
        raise ValueError(f"{folder} holds other files ({', '.join(others[:3])}); PowerInfer reads every file "
                         "there as a layer: export into an empty folder")
    written = []
    for layer in _prefix_layers(counts, "powerinfer"):
        path = folder / f"activation_{layer}.pt"
        torch.save(_counts_tensor(counts.active(layer)), path)
        written.append(path)
    return written


def export_npz(counts, folder: Path) -> list:
    """counts.npz: tokens, layers, active [L, F], pos_seen, pos_active [L, T, F], domains, metadata (JSON)."""
    layers = list(counts.layers)
    arrays = {"tokens": np.int64(counts.tokens), "layers": np.asarray(layers, np.int64),
              "active": np.stack([counts.active(layer) for layer in layers]),
              "pos_seen": counts.pos_seen, "metadata": np.asarray(json.dumps(counts.metadata, default=str))}
    if counts.has_positions:
        arrays["pos_active"] = np.stack([counts.pos_active(layer) for layer in layers])
    if counts.domains:
        arrays["domains"] = np.asarray(counts.domains, dtype=str)
        arrays["domain_tokens"] = counts.domain_tokens
        arrays["domain_active"] = np.stack([counts.domain_active(layer) for layer in layers], axis=1)  # [D, L, F]
    path = folder / "counts.npz"
    np.savez_compressed(path, **arrays)
    return [path]


_EXPORTERS = {"lape": export_lape, "powerinfer": export_powerinfer, "npz": export_npz}


def export(counts, fmt: str, folder) -> list:
    """Write `counts` (an open store) in format `fmt` into `folder` (created); returns the files written."""
    if fmt not in _EXPORTERS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _EXPORTERS[fmt](counts, folder)


def lape_report(config) -> str:
    """`fastneurons lape` (a `LapeConfig`): the selection per domain and layer as text; JSON to config.out."""
    from fastneurons.analysis.lape import lape_from_counts
    from fastneurons.store import open_counts

    with open_counts(config.store) as counts:
        found = lape_from_counts(counts, config.top_rate, config.filter_rate, config.activation_bar_ratio)
    if config.out:
        Path(config.out).write_text(json.dumps(found.to_dict()))
    lines = [f"LAPE (top_rate {found.top_rate}, filter_rate {found.filter_rate}, activation_bar_ratio "
             f"{found.activation_bar_ratio}): {found.num_low_entropy} lowest-entropy neurons; "
             f"probability filter {found.filter_value:.4g}, activation bar {found.activation_bar:.4g}",
             "domain: specific neurons per layer " + str(found.layers)]
    for domain, per_layer in found.counts().items():
        lines.append(f"  {domain}: {sum(per_layer)} in all, {per_layer}")
    return "\n".join(lines)
