"""The plain way: Hugging Face forward hooks + torch/numpy counting, as a competent researcher writes it.

This is both the baseline of ``python -m fastneurons.bench`` and the independent reference the
recording tests compare against (it shares no counting code with fastneurons). It is written the way
a careful user would: dense counts accumulate in place on the activations' device (a sum over the
batch when padding is on the right), n-gram events become one fused 64-bit ``key * F + neuron``
per event and one ``np.unique`` per batch, and the KV cache is off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


class _Stop(Exception):
    pass


@dataclass
class PlainCounts:
    """SPEC §2 counters computed the plain way (n-gram tables as sorted arrays)."""

    tokens: int = 0
    pos_seen: np.ndarray = None
    active: dict = field(default_factory=dict)  # layer -> [F]
    pos_active: dict = field(default_factory=dict)  # layer -> [T, F]
    ngram_seen: dict = field(default_factory=dict)  # k -> (key, count)
    ngram_active: dict = field(default_factory=dict)  # (layer, k) -> (key, neuron, count)


def ngram_keys(ids: np.ndarray, k: int, pack_bits: int) -> np.ndarray:
    """Keys of the k-grams ending at each column of ``ids`` [B, S] (garbage where p < k-1)."""
    keys = np.zeros(ids.shape, dtype=np.uint64)
    for i in range(k):  # token at offset -(k-1-i) goes into bits pack_bits*(k-1-i)
        shift = k - 1 - i
        shifted = np.zeros(ids.shape, dtype=np.uint64)
        shifted[:, shift:] = ids[:, : ids.shape[1] - shift].astype(np.uint64)
        keys |= shifted << np.uint64(pack_bits * shift)
    return keys


def _fits_fused(k: int, pack_bits: int, num_neurons: int) -> bool:
    """Whether ``key * F + neuron`` of a k-gram fits in 64 bits (then one 1-D np.unique suffices)."""
    return k * pack_bits + max(1, int(num_neurons - 1).bit_length()) <= 64


def _unique_pairs(keys: np.ndarray, neurons: np.ndarray, num_neurons: int, fused: bool):
    """Unique (key, neuron) pairs sorted by (key, neuron), as ([n, 2] uint64 rows, int64 counts)."""
    if len(keys) == 0:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    if fused:
        unique, counts = np.unique(keys * np.uint64(num_neurons) + neurons.astype(np.uint64), return_counts=True)
        rows = np.stack([unique // np.uint64(num_neurons), unique % np.uint64(num_neurons)], axis=1)
        return rows, counts.astype(np.int64)
    rows, counts = np.unique(np.stack([keys, neurons.astype(np.uint64)], axis=1), axis=0, return_counts=True)
    return rows, counts.astype(np.int64)


def _sum_pairs(chunks, num_neurons: int, fused: bool):
    """Add per-batch (rows, counts) of unique (key, neuron) pairs."""
    if not chunks:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    rows = np.concatenate([c[0] for c in chunks])
    counts = np.concatenate([c[1] for c in chunks])
    if len(rows) == 0:
        return rows, counts
    if fused:
        unique, inverse = np.unique(rows[:, 0] * np.uint64(num_neurons) + rows[:, 1], return_inverse=True)
        unique = np.stack([unique // np.uint64(num_neurons), unique % np.uint64(num_neurons)], axis=1)
    else:
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    return unique, np.bincount(inverse.reshape(-1), weights=counts, minlength=len(unique)).astype(np.int64)


def plain_record(model, modules: dict, batches, *, max_positions: int, threshold: float = 0.0,
                 count_bos: bool = False, ngram_layers=(), orders=(1, 2, 3), pack_bits: int = 16,
                 use_input: bool = False, transform=None, stop_module=None) -> PlainCounts:
    """Count with forward hooks on ``modules`` {layer: module} over ``batches`` of (input_ids, attention_mask).

    ``use_input`` hooks a module's input instead of its output (gated product definition) and
    ``transform`` is applied first (e.g. ``torch.abs``). If ``stop_module`` is given, the forward
    is cut short after it ran (only the layers needed are computed). Batches go to the model's device.
    """
    out = PlainCounts(pos_seen=np.zeros(max_positions, np.int64))
    device = next(model.parameters()).device
    pair_chunks = {(layer, k): [] for layer in ngram_layers for k in orders}
    seen_chunks = {k: [] for k in orders}
    active_sums, pos_sums, widths = {}, {}, {}
    state = {}

    def make_hook(layer):
        def hook(module, args, output=None):
            pre = args[0] if use_input else output
            if transform is not None:
                pre = transform(pre)
            positions, counted = state["positions"], state["counted"]
            acts = pre.reshape(*positions.shape, pre.shape[-1]) > threshold  # [B, S, F] (OPT gives [B*S, F])
            num_neurons = acts.shape[-1]
            if layer not in active_sums:
                widths[layer] = num_neurons
                active_sums[layer] = torch.zeros(num_neurons, dtype=torch.int64, device=acts.device)
                pos_sums[layer] = torch.zeros((max_positions, num_neurons), dtype=torch.int64, device=acts.device)
            active_sums[layer] += (acts & counted[..., None]).sum(dim=(0, 1))
            valid = state["valid"]
            if state["right_padded"]:  # position == column index: a sum over the batch
                pos_sums[layer][: acts.shape[1]] += (acts & valid[..., None]).sum(dim=0)
            else:
                pos_sums[layer].index_add_(0, positions[valid].long(), acts[valid].long())
            if layer in ngram_layers:
                acts_np = acts.cpu().numpy()
                for k in orders:
                    rows = state["gram_rows"][k]
                    r, neuron = np.nonzero(acts_np[rows])
                    keys = state["keys"][k][rows][r]
                    pair_chunks[(layer, k)].append(
                        _unique_pairs(keys, neuron, num_neurons, _fits_fused(k, pack_bits, num_neurons)))
            if module is stop_module:
                raise _Stop

        return hook

    handles = []
    for layer, module in modules.items():
        if use_input:
            handles.append(module.register_forward_pre_hook(make_hook(layer)))
        else:
            handles.append(module.register_forward_hook(make_hook(layer)))
    try:
        with torch.no_grad():
            for input_ids, attention_mask in batches:
                positions = torch.cumsum(attention_mask, dim=1) - 1
                positions = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1))
                counted = positions >= (0 if count_bos else 1)
                valid = positions >= 0
                columns = torch.arange(positions.shape[1]).expand_as(positions)
                state["right_padded"] = bool(positions.shape[1] <= max_positions
                                             and torch.equal(positions[valid], columns[valid]))
                state["positions"], state["counted"] = positions.to(device), counted.to(device)
                state["valid"] = valid.to(device)
                out.tokens += int(counted.sum())
                out.pos_seen += np.bincount(positions[valid].numpy(), minlength=max_positions)[:max_positions]
                ids = input_ids.cpu().numpy()
                state["keys"], state["gram_rows"] = {}, {}
                for k in orders:
                    keys = ngram_keys(ids, k, pack_bits)
                    rows = counted.numpy() & (positions.numpy() - k + 1 >= 1)
                    state["keys"][k], state["gram_rows"][k] = keys, rows
                    seen_keys, seen_counts = np.unique(keys[rows], return_counts=True)
                    seen_chunks[k].append((seen_keys, seen_counts.astype(np.int64)))
                try:
                    model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    for layer in active_sums:
        out.active[layer] = active_sums[layer].cpu().numpy()
        out.pos_active[layer] = pos_sums[layer].cpu().numpy()
    for (layer, k), chunks in pair_chunks.items():
        fused = layer in widths and _fits_fused(k, pack_bits, widths[layer])
        rows, counts = _sum_pairs(chunks, widths.get(layer, 1), fused)
        out.ngram_active[(layer, k)] = (rows[:, 0].copy(), rows[:, 1].astype(np.uint32), counts)
    for k, chunks in seen_chunks.items():
        if ngram_layers:
            keys = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.uint64)
            counts = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
            unique, inverse = np.unique(keys, return_inverse=True)
            out.ngram_seen[k] = (unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64))
    return out
