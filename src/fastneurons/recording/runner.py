"""`record()`: stream a corpus through a model's layers and commit SPEC §2 counts unit by unit.

The model's own forward runs on fixed micro-batches (or, layer-major, a block of them through each
layer in turn); the public counters (recording/taps.py: `attach_counters`, one per recorded layer's
neuron module) hand each pre-activation to the fused kernel (counts stay on the device), and n-gram
tables are built from the packed bits on the CPU (`NgramFeed`). After each chunk
of units the totals are committed to the store, so an interrupted run resumes to exactly the counts
of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch

from fastneurons.models import architectures as archs
from fastneurons.config import RecordConfig, SecondPassConfig, parse_bytes
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.kernels import require_cuda_build
from fastneurons.devices import canonical_device, dtype_from_config, rank_device, resolve_dtype
from fastneurons.host_memory import hold_freed_memory
from fastneurons.models.lazy import load_lazy, wants_lazy
from fastneurons.models.loading import load_model, load_tokenizer, resolve as resolve_checkpoint
from fastneurons.ngrams.keys import pack_bits_for_vocab
from fastneurons.progress import bars, counting_bar
from fastneurons.models.offload import LayerStreamer
from fastneurons.recording import second_pass
from fastneurons.recording.distributed import torchrun_job
from fastneurons.recording.layer_major import run_block
from fastneurons.plan import choose_block_units
from fastneurons.recording.header import build_header
from fastneurons.recording.taps import LayerTaps, MicroBatchTensors, NgramFeed, Recording, _batch_tensors  # noqa: F401
from fastneurons.store import CountsWriter, DenseCounts, StoreError, StoreLock, check_output_path

COMMIT_SHARE = 0.05  # at most this share of a recording's time goes to commits (commit_seconds > 0)


class RecordingError(RuntimeError):
    """A recording that had to stop (the store keeps everything committed before it)."""


def resolve_device(name: str) -> torch.device:
    """The device of ``--device name``, a CUDA one with its index (``cuda`` is the current GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is visible")
        device = canonical_device(device)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _checkpoint_dtype(spec) -> Optional[torch.dtype]:
    """The dtype in a checkpoint directory's config.json (None for GGUF files or unreadable configs)."""
    try:
        resolved = resolve_checkpoint(spec)
        if resolved.gguf_file is not None:
            return None
        return dtype_from_config(json.loads((resolved.directory / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def _unit_tokens(plan, index: int) -> int:
    sequences = plan.unit_sequences(index)
    return int(plan.offsets[sequences.stop] - plan.offsets[sequences.start])


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
    """Under torchrun (WORLD_SIZE > 1) with ``{rank}`` in ``--out``: each rank records shard
    RANK/WORLD_SIZE into its own file, merged afterwards with ``fastneurons merge``; each rank uses
    ``cuda:LOCAL_RANK`` when on GPU. (Without ``{rank}``, distributed.torchrun_job merges them.)
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
        device = rank_device(int(environ.get("LOCAL_RANK", "0")), torch.cuda.device_count(), environ)
        config.device = str(device)
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

    Under torchrun each rank records its shard and rank 0 merges them into ``--out``
    (recording/distributed.py)."""
    job = torchrun_job(config.validate())
    if job is None:
        path = _record(apply_torchrun(config), log)
        if config.ngrams == "bounded" and config.shard is None and "{rank}" not in config.out:
            _second_pass(config, path, log)  # a shard's second pass runs after the merge
        return path
    _record(job.rank_config, log)
    path = job.merge(log)
    if config.ngrams == "bounded" and job.rank == 0:
        _second_pass(config, path, log)
    return path


def _second_pass(config: RecordConfig, path: Path, log) -> None:
    """Pass 2 of a bounded recording (skipped when the store records no n-gram layers)."""
    if second_pass.is_bounded_store(path):
        second_pass.second_pass(SecondPassConfig(store=str(path), device=config.device, threads=config.threads,
                                                 commit_seconds=config.commit_seconds, progress=config.progress),
                                log=log)


def _record(config: RecordConfig, log) -> Path:
    """One process's recording into ``config.out``. One writer per store: the store's lock is held from
    before anything is written to the end, and a resume checks the store it continues (readable, its
    n-gram runs intact) before loading the model."""
    check_output_path(Path(config.out), "--out")
    with StoreLock(config.out):
        if config.resume and Path(config.out).exists():
            CountsWriter.check_resumable(config.out, rerecord_lost=config.rerecord_lost_runs)
        elif not config.resume:
            CountsWriter.check_new(config.out)
        return _record_locked(config, log)


def _record_locked(config: RecordConfig, log) -> Path:
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # streams, events and the kernel's context then stay on this GPU
        require_cuda_build(device.index)  # refuse a _C that cannot run here before loading anything
    dtype = resolve_dtype(config.dtype, device, _checkpoint_dtype(config.model) if config.dtype == "auto" else None)
    _pin_threads(config.threads)
    if device.type == "cpu":
        hold_freed_memory()
    lazy = wants_lazy(config.weights, config.model)
    loaded = load_lazy(config.model, dtype=dtype, log=log) if lazy else load_model(config.model, dtype=dtype)
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
    recording = Recording(config=config, loaded=loaded, tokenizer=tokenizer, plan=plan, layers=layers,
                          ngram_layers=ngram_layers, seq_len=seq_len, pack_bits=pack_bits, device=device, dtype=dtype)
    header = build_header(recording)
    memory = parse_bytes(config.ngram_memory)
    bounded = config.ngrams == "bounded" and bool(ngram_layers)
    restored = second_pass.stored_summaries(config.out) if bounded and config.resume else None
    if config.resume and Path(config.out).exists():
        writer = CountsWriter.resume(config.out, header, memory, compress_runs=config.compress_runs,
                                     extra_groups=second_pass.keep_summaries(restored),
                                     rerecord_lost=config.rerecord_lost_runs)
        _warn_if_float_setup_differs(writer.previous_meta, header.meta, log)
    else:
        writer = CountsWriter.create(config.out, header, memory, compress_runs=config.compress_runs)
    writer.progress = bars(config.progress, unit="table")
    shard, shards = config.shard_index
    todo = [u for u in plan.units_for_shard(shard, shards) if not writer.holds(0, u)]
    log(f"recording {len(layers)} layers of {arch.name} on {device} ({str(dtype).replace('torch.', '')}): "
        f"{len(todo)} units to go of {plan.num_units} in the plan -> {config.out}")
    if writer.lost_units:
        _rerecord_ngrams(recording, writer, log)
    make = (second_pass.summary_accumulators(config, header.meta["num_neurons"], pack_bits, device)
            if bounded else None)
    taps = LayerTaps(recording, writer.dense, make_accumulator=make)
    if bounded:
        second_pass.attach(writer, taps, restored)
    budget = None if config.gpu_memory is None else parse_bytes(config.gpu_memory)
    try:
        streamer = (loaded.streamer(device, layers[-1]) if lazy
                    else LayerStreamer(model, arch, device, layers[-1], gpu_memory_bytes=budget))
        with streamer, torch.inference_mode():
            block_units = choose_block_units(config, model, streamer.plan, seq_len, log)
            _run_units(recording, todo, taps, writer, block_units=block_units)
    finally:
        taps.remove()
    if not writer.complete:  # nothing was left to record (e.g. resuming a finished store)
        taps.finish()
        writer.finalize()
    return Path(config.out)


def _blocks(todo, block_units):
    """`todo` cut into blocks of `block_units` units (None: one unit each, run micro-batch by micro-batch)."""
    size = block_units or 1
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _run_units(recording: Recording, todo, taps: LayerTaps, writer: CountsWriter, *, block_units=None) -> None:
    """Run the units in ``todo`` block by block; commit at most every ``commit_seconds``; the last
    commit finalizes. With ``block_units`` each block runs layer-major (recording/layer_major.py)."""
    config, plan, model, arch = recording.config, recording.plan, recording.model, recording.arch
    memory, last_layer = parse_bytes(config.ngram_memory), recording.layers[-1]
    total = sum(_unit_tokens(plan, u) for u in todo)
    last_commit, done, new_runs = time.monotonic(), [], []
    wait = config.commit_seconds  # grows with the commits' cost (_next_wait)

    in_tables = []  # units with n-grams in the tables not yet written to a run

    def spill(block):
        nonlocal in_tables
        if taps.ngram_bytes() > memory:
            new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
            in_tables = list(block)  # the running block's units may still have n-grams in the tables

    blocks = _blocks(todo, block_units)
    with counting_bar(config.progress, total=total, desc="record", unit="tok") as bar:
        for position, block in enumerate(blocks):
            in_tables.extend(block)
            micros = [(micro, plan.unit(index).domain) for index in block for micro in plan.unit(index).batches]
            batches = [_batch_tensors(micro, domain, config.count_bos, recording.device) for micro, domain in micros]
            if block_units is None:
                for (micro, _), (batch, cpu) in zip(micros, batches):
                    taps.set_batch(batch, cpu)
                    archs.run_until(model, arch, batch.input_ids, batch.attention_mask, last_layer)
                    spill(block)
                    if bar is not None:
                        bar.update(micro.num_tokens)
            else:
                run_block(model, arch, [batch for batch, _ in batches], last_layer,
                          start=lambda i: taps.set_batch(*batches[i]), select=lambda i: taps.select(*batches[i]),
                          after=lambda: spill(block))
                if bar is not None:
                    bar.update(sum(micro.num_tokens for micro, _ in micros))
            done.extend(block)
            final = position == len(blocks) - 1
            if final:
                taps.finish()  # bounded mode: the finished store holds folded summaries only
            if final or time.monotonic() - last_commit >= wait:
                started = time.monotonic()
                totals = taps.totals()
                _check_nans(totals, writer.header.layers)
                if taps.ngrams.layers:
                    new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
                in_tables = []
                if final and bar is not None:
                    bar.set_postfix_str("merging n-gram tables")
                writer.commit(totals, 0, done, new_runs, final=final)
                last_commit, done, new_runs = time.monotonic(), [], []
                wait = _next_wait(config.commit_seconds, last_commit - started)


def _next_wait(commit_seconds: float, commit_took: float) -> float:
    """Seconds until the next commit: ``commit_seconds``, or longer when commits are slow, so that
    at most ``COMMIT_SHARE`` of the time goes to them (a bounded store's snapshot rewrites its
    summaries); 0 keeps "after every unit"."""
    if commit_seconds <= 0:
        return 0.0
    return max(commit_seconds, commit_took / COMMIT_SHARE)


def _rerecord_ngrams(recording: Recording, writer: CountsWriter, log) -> None:
    """Record the n-gram tables of ``writer.lost_units`` again, through taps whose dense counters are
    thrown away (the store's dense counts already hold those units), and commit them as new runs."""
    log(f"recording the n-grams of {len(writer.lost_units)} units again (their runs were lost)")
    config, plan = recording.config, recording.plan
    scratch = DenseCounts.zeros(len(recording.layers), writer.dense.active.shape[1], recording.seq_len,
                                len(writer.header.domain_labels), positions=False)
    taps = LayerTaps(recording, scratch)
    memory, new_runs, in_tables = parse_bytes(config.ngram_memory), [], []
    budget = None if config.gpu_memory is None else parse_bytes(config.gpu_memory)
    try:
        with LayerStreamer(recording.model, recording.arch, recording.device, recording.layers[-1],
                           gpu_memory_bytes=budget), torch.inference_mode():
            for index in writer.lost_units:
                unit = plan.unit(index)
                in_tables.append(index)
                for micro in unit.batches:
                    batch, cpu = _batch_tensors(micro, unit.domain, config.count_bos, recording.device)
                    taps.set_batch(batch, cpu)
                    archs.run_until(recording.model, recording.arch, batch.input_ids, batch.attention_mask,
                                    recording.layers[-1])
                    if taps.ngram_bytes() > memory:
                        new_runs.append(writer.write_run(*taps.take_tables(), units=in_tables))
                        in_tables = [index]
    finally:
        taps.remove()
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
