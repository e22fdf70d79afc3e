"""`record()`: stream a corpus through a model's layers and commit SPEC §2 counts unit by unit.

The model's own forward runs on fixed micro-batches; a hook on each recorded layer's neuron module
hands the pre-activation to the fused kernel (counts stay on the device), and n-gram tables are
built from the packed bits on the CPU. After each chunk of units the totals are committed to the
store, so an interrupted run resumes to exactly the counts of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fastneurons.models import architectures as archs
from fastneurons.config import RecordConfig, parse_bytes
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.kernels import count_activations, words_for
from fastneurons.models.loading import load_model, load_tokenizer
from fastneurons.ngrams.accumulator import NgramAccumulator, SeenAccumulator
from fastneurons.ngrams.keys import pack_bits_for_vocab
from fastneurons.models.offload import LayerStreamer
from fastneurons.store import Corpus, CountsWriter, DenseCounts, Header, StoreError, StoreLock, check_output_path

_VOLATILE_CONFIG_KEYS = {"transformers_version", "torch_dtype", "dtype", "use_cache", "output_hidden_states",
                         "output_attentions", "return_dict", "name_or_path"}


class RecordingError(RuntimeError):
    """A recording that had to stop (the store keeps everything committed before it)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@dataclass
class MicroBatchTensors:
    """One micro-batch on the device: ids, mask, positions (-1 = pad) and the counted mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    counted: torch.Tensor
    domain: int


class LayerTaps:
    """Forward hooks on the recorded layers' neuron modules, feeding the kernel and n-gram tables."""

    def __init__(self, model, arch, layers, ngram_layers, orders, pack_bits, dense: DenseCounts,
                 device, threshold, gated_product):
        self.layers, self.ngram_layers = list(layers), set(ngram_layers)
        self.threshold, self.gated_product = float(threshold), gated_product
        self.device = device
        to = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(device)  # noqa: E731
        self.domain_active = to(dense.domain_active)
        self.pos_active = to(dense.pos_active) if dense.pos_active is not None else None
        self.nan_count = to(dense.nan_count)
        self.scratch_pos = None if self.pos_active is not None else torch.zeros(
            (dense.pos_seen.shape[0], dense.active.shape[1]), dtype=torch.int64, device=device)
        self.pos_seen = to(dense.pos_seen)
        self.domain_tokens = to(dense.domain_tokens)
        self.ngrams = {layer: NgramAccumulator(dense.active.shape[1], orders=orders, pack_bits=pack_bits)
                       for layer in self.ngram_layers}
        self.seen = SeenAccumulator(orders=orders, pack_bits=pack_bits) if self.ngram_layers else None
        self.batch: Optional[MicroBatchTensors] = None
        self._cpu_batch = None
        self._handles = []
        for row, layer in enumerate(self.layers):
            module = archs.neuron_module(model, arch, layer, gated_product=gated_product)
            if gated_product:
                hook = lambda mod, args, row=row, layer=layer: self._count(row, layer, args[0].abs())  # noqa: E731
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                hook = lambda mod, args, out, row=row, layer=layer: self._count(row, layer, out)  # noqa: E731
                self._handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_batch(self, batch: MicroBatchTensors, cpu_arrays) -> None:
        """Make ``batch`` the current micro-batch and add its token-level counts."""
        self.batch, self._cpu_batch = batch, cpu_arrays
        positions = batch.positions.reshape(-1)  # scatter, not boolean indexing: no GPU sync
        self.pos_seen.scatter_add_(0, positions.clamp(min=0).long(), (positions >= 0).long())
        self.domain_tokens[batch.domain] += batch.counted.sum()
        if self.seen is not None:
            ids, pos, counted = cpu_arrays
            self.seen.add(ids, pos, counted)

    def _count(self, row: int, layer: int, pre: torch.Tensor) -> None:
        batch = self.batch
        pre = pre.view(*batch.positions.shape, pre.shape[-1])  # OPT flattens tokens before fc1
        want_bits = layer in self.ngram_layers
        pos_active = self.pos_active[row] if self.pos_active is not None else self.scratch_pos
        bits = count_activations(pre, batch.positions, batch.counted, self.threshold,
                                 self.domain_active[batch.domain, row], pos_active,
                                 bits=None if not want_bits else _bits_buffer(pre),
                                 nan_count=self.nan_count[row:row + 1])
        if want_bits:
            ids, pos, counted = self._cpu_batch
            words = bits.reshape(-1, bits.shape[-1]).cpu().numpy().view(np.uint64)
            self.ngrams[layer].add(words, ids, pos, counted)

    def ngram_bytes(self) -> int:
        total = sum(acc.nbytes for acc in self.ngrams.values())
        return total + (self.seen.nbytes if self.seen is not None else 0)

    def take_tables(self):
        """The n-gram tables built since the last call, {(layer, k): Table} and {k: SeenTable}."""
        tables = {(layer, k): table for layer, acc in self.ngrams.items() for k, table in acc.tables().items()}
        seen = self.seen.tables() if self.seen is not None else {}
        for acc in self.ngrams.values():
            acc.clear()
        if self.seen is not None:
            self.seen.clear()
        return tables, seen

    def totals(self) -> DenseCounts:
        """Copy the device totals to the host (one sync per chunk)."""
        domain_active = self.domain_active.cpu().numpy()
        domain_tokens = self.domain_tokens.cpu().numpy()
        return DenseCounts(
            tokens=int(domain_tokens.sum()),
            pos_seen=self.pos_seen.cpu().numpy(),
            active=domain_active.sum(axis=0),
            pos_active=None if self.pos_active is None else self.pos_active.cpu().numpy(),
            nan_count=self.nan_count.cpu().numpy(),
            domain_tokens=domain_tokens,
            domain_active=domain_active,
        )


def _bits_buffer(pre: torch.Tensor) -> torch.Tensor:
    return torch.empty((*pre.shape[:-1], words_for(pre.shape[-1])), dtype=torch.int64, device=pre.device)


def _batch_tensors(micro, domain, count_bos, device):
    """Move a micro-batch to the device; also return its flat CPU arrays for the n-gram tables."""
    positions = micro.positions.to(torch.int32).contiguous()
    counted = positions >= (0 if count_bos else 1)
    cpu = (micro.input_ids.reshape(-1).numpy(), positions.reshape(-1).numpy(), counted.reshape(-1).numpy())
    batch = MicroBatchTensors(micro.input_ids.to(device), micro.attention_mask.to(device),
                              positions.to(device), counted.to(device), domain)
    return batch, cpu


def _unit_tokens(plan, index: int) -> int:
    sequences = plan.unit_sequences(index)
    return int(plan.offsets[sequences.stop] - plan.offsets[sequences.start])


def _model_config(model) -> dict:
    config = model.config.to_dict()
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}


def _vocab_strings(tokenizer, size: int) -> list:
    """Text of every token id (ids the tokenizer does not know give '')."""
    known = min(len(tokenizer), size)
    return tokenizer.batch_decode([[i] for i in range(known)]) + [""] * (size - known)


def build_header(config: RecordConfig, loaded, tokenizer, plan, layers, ngram_layers, seq_len, pack_bits,
                 dtype, device) -> Header:
    """The store's metadata for this recording (settings, model, definition, corpus)."""
    arch, model = loaded.arch, loaded.model
    meta = {
        "record_config": config.to_metadata(),
        "architecture": arch.name,
        "model_config": _model_config(model),
        "model": {key: value for key, value in loaded.source.items() if key != "config"},
        "compute_dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),  # pinned by _pin_threads before the model loads
        "tokenizer": getattr(tokenizer, "name_or_path", "") or "",
        "neuron_definition": archs.neuron_definition(arch, config.threshold, config.gated_product),
        "threshold": float(config.threshold),
        "count_bos": bool(config.count_bos),
        "pack_bits": int(pack_bits),
        "num_neurons": int(archs.num_neurons(model.config, arch)),
        "max_positions": int(seq_len),
        "layers": list(layers),
        "ngram_layers": list(ngram_layers),
        "orders": list(config.orders),
        "positions": bool(config.positions),
        "seq_len": int(seq_len),
        "full_length": bool(config.full_length),
        "batch_size": int(config.batch_size),
        "unit_batches": int(config.unit_batches),
        "gated_product": bool(config.gated_product),
    }
    manifest = plan.manifest()
    corpus = Corpus(plan.fingerprint, manifest, np.zeros(plan.num_units, dtype=bool), len(plan.domains))
    vocab = None if tokenizer is None else _vocab_strings(tokenizer, int(model.get_input_embeddings().weight.shape[0]))
    return Header(meta, vocab, [corpus], [d.label for d in plan.domains])


def _select_layers(config: RecordConfig, num_layers: int):
    layers = sorted(set(config.layers)) if config.layers else list(range(num_layers))
    if layers[-1] >= num_layers:
        raise ValueError(f"--layers {layers[-1]}: the model has {num_layers} layers (0..{num_layers - 1})")
    ngram_layers = config.ngram_layer_list(num_layers)
    missing = sorted(set(ngram_layers) - set(layers))
    if missing:
        raise ValueError(f"--ngram-layers {missing} are not among the recorded --layers")
    return layers, ngram_layers


def apply_torchrun(config: RecordConfig, environ=os.environ) -> RecordConfig:
    """Under torchrun (WORLD_SIZE > 1) each rank records shard RANK/WORLD_SIZE into its own file.

    ``--out`` must then contain ``{rank}``; each rank uses ``cuda:LOCAL_RANK`` when on GPU. Merge
    the rank files with ``fastneurons merge`` afterwards.
    """
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1 or config.shard is not None:
        return config
    rank = int(environ.get("RANK", "0"))
    if "{rank}" not in config.out:
        raise ValueError("under torchrun every rank needs its own file: put {rank} in --out, "
                         "e.g. --out counts-{rank}.h5, then fastneurons merge them")
    config = dataclasses.replace(config, shard=f"{rank}/{world}", out=config.out.format(rank=rank))
    if config.device in ("auto", "cuda") and torch.cuda.is_available():
        config.device = f"cuda:{int(environ.get('LOCAL_RANK', '0'))}"
    return config


def _pin_threads(threads) -> int:
    """Fix numba's, then torch's thread count for the whole run (same count -> same float results); returns it.

    numba first: its first ``set_num_threads`` starts its OpenMP layer, which resets the process's
    OpenMP thread count, torch's included (``--threads 1`` used to run and be stored as 2)."""
    import numba

    wanted = threads or torch.get_num_threads()
    numba.set_num_threads(min(wanted, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(wanted)
    if torch.get_num_threads() != wanted:
        raise RecordingError(f"--threads {wanted}: torch runs {torch.get_num_threads()} threads")
    return wanted


FLOAT_SETUP = ("device", "torch_threads")  # not settings (resume allows them) but they can move float sums


def _warn_if_float_setup_differs(before: dict, meta: dict, log) -> None:
    """Say so when a resumed run computes on another device or thread count than the store's last run:
    its units' pre-activations may then differ in the last bits, and a neuron within rounding of the
    threshold can flip (docs/store-schema.md, "Compatibility rules")."""
    changed = [f"{key} {before[key]} -> {meta[key]}" for key in FLOAT_SETUP
               if key in before and before[key] != meta.get(key)]
    if changed:
        log(f"warning: resuming with another {', '.join(changed)}: the units recorded now may differ from "
            "an uninterrupted run's for pre-activations within float rounding of the threshold")


def record(config: RecordConfig, log=print) -> Path:
    """Run a recording described by ``config``; returns the path of the finished store.

    One writer per store: the store's lock is held from before anything is written to the end, and
    a resume checks the store it continues (readable, its n-gram runs intact) before loading the model."""
    config = apply_torchrun(config.validate())
    check_output_path(Path(config.out), "--out")
    with StoreLock(config.out):
        if config.resume and Path(config.out).exists():
            CountsWriter.check_resumable(config.out, rerecord_lost=config.rerecord_lost_runs)
        elif not config.resume:
            CountsWriter.check_new(config.out)
        return _record_locked(config, log)


def _record_locked(config: RecordConfig, log) -> Path:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    _pin_threads(config.threads)
    loaded = load_model(config.model, dtype=dtype)
    model, arch = loaded.model, loaded.arch
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else loaded.tokenizer  # None: id corpora only
    num_layers = archs.num_layers(model, arch)
    layers, ngram_layers = _select_layers(config, num_layers)
    model_positions = archs.max_positions(model.config, arch)
    seq_len = config.seq_len or min(model_positions, 2048)
    if seq_len > model_positions:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's {model_positions} positions")
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    pack_bits = pack_bits_for_vocab(vocab_size)
    sources = [parse_corpus_arg(arg) for arg in config.corpus]
    plan = plan_corpus(sources, tokenizer, seq_len=seq_len, batch_size=config.batch_size,
                       unit_batches=config.unit_batches, max_tokens=config.max_tokens,
                       full_length=config.full_length, bos_id=config.bos_id, vocab_size=vocab_size)
    header = build_header(config, loaded, tokenizer, plan, layers, ngram_layers, seq_len, pack_bits, dtype, device)
    memory = parse_bytes(config.ngram_memory)
    if config.resume and Path(config.out).exists():
        writer = CountsWriter.resume(config.out, header, memory, compress_runs=config.compress_runs,
                                     rerecord_lost=config.rerecord_lost_runs)
        _warn_if_float_setup_differs(writer.previous_meta, header.meta, log)
    else:
        writer = CountsWriter.create(config.out, header, memory, compress_runs=config.compress_runs)
    shard, shards = config.shard_index
    todo = [u for u in plan.units_for_shard(shard, shards) if not writer.holds(0, u)]
    log(f"recording {len(layers)} layers of {arch.name} on {device} ({str(dtype).replace('torch.', '')}): "
        f"{len(todo)} units to go of {plan.num_units} in the plan -> {config.out}")
    budget = None if config.gpu_memory is None else parse_bytes(config.gpu_memory)
    if writer.lost_units:
        log(f"recording the n-grams of {len(writer.lost_units)} units again (their runs were lost)")
        scratch = DenseCounts.zeros(len(layers), writer.dense.active.shape[1], seq_len,
                                    len(writer.header.domain_labels), positions=False)
        taps = LayerTaps(model, arch, layers, ngram_layers, config.orders, pack_bits, scratch, device,
                         config.threshold, config.gated_product)
        try:
            with LayerStreamer(model, arch, device, layers[-1], gpu_memory_bytes=budget), torch.inference_mode():
                _rerecord_ngrams(config, plan, writer, taps, model, arch, layers[-1], device, memory)
        finally:
            taps.remove()
    taps = LayerTaps(model, arch, layers, ngram_layers, config.orders, pack_bits, writer.dense, device,
                     config.threshold, config.gated_product)
    try:
        with LayerStreamer(model, arch, device, layers[-1], gpu_memory_bytes=budget), torch.inference_mode():
            _run_units(config, plan, todo, taps, writer, model, arch, layers[-1], device, memory)
    finally:
        taps.remove()
    if not writer.complete:  # nothing was left to record (e.g. resuming a finished store)
        writer.finalize()
    return Path(config.out)


def _progress(config, total_tokens):
    if not config.progress:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="record", smoothing=0.1)


def _run_units(config, plan, todo, taps, writer, model, arch, last_layer, device, memory) -> None:
    """Run the units in ``todo``; commit at most every ``commit_seconds``; the last commit finalizes."""
    total = sum(_unit_tokens(plan, u) for u in todo)
    last_commit, done, new_runs = time.monotonic(), [], []
    in_tables = []  # units with n-grams in the tables not yet written to a run
    with _progress(config, total) as bar:
        for position, index in enumerate(todo):
            unit = plan.unit(index)
            in_tables.append(index)
            for micro in unit.batches:
                batch, cpu = _batch_tensors(micro, unit.domain, config.count_bos, device)
                taps.set_batch(batch, cpu)
                archs.run_until(model, arch, batch.input_ids, batch.attention_mask, last_layer)
                if taps.ngram_bytes() > memory:
                    new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
                    in_tables = [index]
            done.append(index)
            if bar is not None:
                bar.update(_unit_tokens(plan, index))
            final = position == len(todo) - 1
            if final or time.monotonic() - last_commit >= config.commit_seconds:
                totals = taps.totals()
                _check_nans(totals, writer.header.layers)
                if taps.ngrams:
                    new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
                in_tables = []
                writer.commit(totals, 0, done, new_runs, final=final)
                last_commit, done, new_runs = time.monotonic(), [], []


def _rerecord_ngrams(config, plan, writer, taps, model, arch, last_layer, device, memory) -> None:
    """Record the n-gram tables of ``writer.lost_units`` again through ``taps``, whose dense counters are
    thrown away (the store's dense counts already hold those units), and commit them as new runs."""
    new_runs, in_tables = [], []
    for index in writer.lost_units:
        unit = plan.unit(index)
        in_tables.append(index)
        for micro in unit.batches:
            batch, cpu = _batch_tensors(micro, unit.domain, config.count_bos, device)
            taps.set_batch(batch, cpu)
            archs.run_until(model, arch, batch.input_ids, batch.attention_mask, last_layer)
            if taps.ngram_bytes() > memory:
                new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
                in_tables = [index]
    new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
    writer.lost_units = []
    writer.commit(writer.dense, 0, [], new_runs)


def _check_nans(totals: DenseCounts, layers) -> None:
    bad = [(layer, int(n)) for layer, n in zip(layers, totals.nan_count) if n]
    if bad:
        where = ", ".join(f"layer {layer}: {n}" for layer, n in bad[:4])
        raise RecordingError(f"NaN pre-activations ({where}); the last chunk was not committed. "
                             "The model or its dtype produces NaNs: try --dtype float32.")


__all__ = ["record", "RecordingError", "StoreError"]
