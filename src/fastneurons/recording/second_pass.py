"""The bounded n-gram mode's recording glue: pass-1 summaries ride in every store snapshot, and
``second_pass`` runs the recorded model again over the store's units to count the candidate pairs
exactly (docs/bounded-ngrams.md). It saves its progress beside the store (``STORE.pass2``) every
``commit_seconds`` and rewrites the store atomically at the end, so a kill loses neither pass.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from fastneurons.config import RecordConfig, SecondPassConfig, parse_bytes
from fastneurons.host_memory import hold_freed_memory
from fastneurons.models import architectures as archs
from fastneurons.models.loading import load_model, load_tokenizer
from fastneurons.models.offload import LayerStreamer
from fastneurons.ngrams.accumulator import SeenTable, Table
from fastneurons.ngrams.bounded import CandidateCounter, SummaryAccumulator, plan_candidates
from fastneurons.ngrams.by_neuron import release_scratch
from fastneurons.recording.device_summaries import DeviceSummaryAccumulator
from fastneurons.progress import counting_bar
from fastneurons.recording.corpus import parse_corpus_arg, plan_corpus
from fastneurons.store import DenseCounts, StoreError, open_counts
from fastneurons.store.summaries import (empty_plan_settings, is_bounded, load_pass2_state, read_resume_state,
                                         read_summaries, save_pass2_state, store_is_bounded, write_counted,
                                         write_resume_state, write_second_pass)


def summary_accumulators(config: RecordConfig, num_neurons: int, pack_bits: int, device: torch.device):
    """The taps' accumulator factory of pass 1: one summary accumulator per n-gram layer, on ``device``
    (torch ops, ``--summary-kernels device``, or auto on a GPU) or on the host (numba)."""
    on_device = config.summary_kernels == "device" or (config.summary_kernels == "auto" and device.type == "cuda")
    if on_device:
        return lambda layer: DeviceSummaryAccumulator(num_neurons, config.orders, pack_bits,
                                                      config.summary_capacities(), device=device)
    return lambda layer: SummaryAccumulator(num_neurons, config.orders, pack_bits, config.summary_capacities())


def stored_summaries(path) -> dict | None:
    """The pass-1 state a bounded store's last snapshot holds (read before a resume rewrites it),
    {layer: (summaries, Pending, events pending, folds)}, None if it has none."""
    return read_resume_state(path)


def is_bounded_store(path) -> bool:
    """Whether the store at ``path`` was recorded in bounded mode with n-gram layers (needs pass 2)."""
    return store_is_bounded(path)


def keep_summaries(restored: dict | None):
    """A snapshot writer of the stored pass-1 state, for the snapshots a resume writes before ``attach``."""
    if restored is None:
        return None
    return lambda f, final: write_resume_state(f, restored)


def attach(writer, taps, restored: dict | None) -> None:
    """Continue the taps' summaries from ``restored`` and make every snapshot of ``writer`` hold their
    state (summaries and the events not yet folded), so a resume continues to the same summaries."""
    if restored is not None:
        for layer, accumulator in taps.ngrams.layers.items():
            accumulator.restore(*restored[layer])
    elif any(corpus.units.any() for corpus in writer.header.corpora):
        raise StoreError(f"{writer.path} holds units but no n-gram summaries: it cannot be resumed in bounded mode")

    def write(f, final):  # compressed (store/summaries.py): a snapshot is old + new on disk while it is written
        settings, plans = plan_settings(SecondPassConfig(store="")), {}  # pass 2's default plans, while all empty

        def states():  # one layer at a time: a device accumulator's summaries are on the host only while written
            for layer, accumulator in taps.ngrams.layers.items():
                state = accumulator.state()
                if final and _nothing_to_count(plans):
                    plans.update(plans_of({(layer, k): summary for k, summary in state[0].items()}, settings))
                yield layer, state

        write_resume_state(f, states(), writer.path)
        if final:
            if _nothing_to_count(plans):  # no cut neuron may be a detector candidate: no second pass (or forward)
                write_counted(f, _no_counts(plans), plans, settings)
            release_scratch()  # what the summaries were packed through

    writer.extra_groups = write


def plan_settings(config: SecondPassConfig) -> dict:
    """The settings that decide pass 2's plan (stored with its counts)."""
    return {"max_coverage": config.max_coverage, "coverage": config.coverage, "cover_rate": config.cover_rate}


def plans_of(summaries: dict, settings: dict) -> dict:
    """{(layer, k): CandidatePlan} of pass-1 summaries under ``settings``."""
    return {key: plan_candidates(summary, settings["max_coverage"], settings["coverage"], settings["cover_rate"])
            for key, summary in summaries.items()}


def _nothing_to_count(plans: dict) -> bool:
    """Whether every plan is empty: no cut neuron may be a detector candidate, pass 2 has nothing to do."""
    return all(plan.empty for plan in plans.values())


def _no_counts(plans: dict) -> dict:
    """An empty pass-2 table for every (layer, k) of ``plans``."""
    return {key: Table.empty(key[1]) for key in plans}


def _pass1_inputs(path: Path, settings: dict):
    """Header, summaries, seen tables and held units of a finished bounded store (or a clear refusal);
    only the header when its pass-1 counts already say that there is nothing to count."""
    with open_counts(path) as counts:
        header = counts.header
        if not is_bounded(header.meta):
            raise StoreError(f"{path} holds exact n-gram tables (--ngrams exact): it needs no second pass")
        if not counts.complete:
            raise StoreError(f"{path} is an unfinished recording: finish it with record --resume first")
        if len(header.corpora) != 1:
            raise StoreError(f"{path} holds {len(header.corpora)} corpora: run the second pass on each corpus's "
                             "store (its units must be replayed from its own corpus files)")
        if not header.ngram_layers:
            raise StoreError(f"{path} has no n-gram layers: nothing to count")
        if empty_plan_settings(counts._file) == settings:
            return header, None, None, None  # pass 1 found nothing to count under these settings
        seen = {k: SeenTable(*counts.ngram_seen(k), k) for k in header.orders}
        summaries = read_summaries(counts._file, header, path)
    return header, summaries, seen, np.flatnonzero(header.corpora[0].units)


def progress_path(path: Path) -> Path:
    """Where pass 2 saves its progress (counts so far and units done) until it rewrites the store."""
    return path.with_name(path.name + ".pass2")


def _plan_fingerprint(plans: dict, units: np.ndarray) -> str:
    """Identifies what pass 2 counts: the plans and the units (a saved progress must match it)."""
    digest = hashlib.sha1(np.ascontiguousarray(units).tobytes())
    for key in sorted(plans):
        plan = plans[key]
        digest.update(repr(key).encode())
        for array in (plan.key, plan.neuron, plan.rare_limit):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _save_progress(path: Path, fingerprint: str, done: list, taps) -> None:
    """Atomically save pass 2's counts so far and the units they cover."""
    states = {(layer, k): state for layer, counter in taps.ngrams.layers.items()
              for k, state in counter.state().items()}
    save_pass2_state(path, fingerprint, done, states)


def _load_progress(path: Path, fingerprint: str, taps, log) -> set:
    """Units already counted by an interrupted pass 2 of the same plan (their counts restored)."""
    try:
        loaded = load_pass2_state(path, fingerprint, {layer: list(counter.plans) for layer, counter
                                                      in taps.ngrams.layers.items()})
    except (OSError, KeyError) as err:
        log(f"ignoring {path}: unreadable ({err})")
        return set()
    if loaded is None:
        if path.exists():
            log(f"ignoring {path}: saved by a second pass of other summaries or units")
        return set()
    units, states = loaded
    for layer, counter in taps.ngrams.layers.items():
        counter.restore({k: states[(layer, k)] for k in counter.plans})
    return units


def second_pass(config: SecondPassConfig, log=print) -> Path:
    """Pass 2 of a bounded store: count every planned (n-gram, neuron) pair exactly over its units."""
    from fastneurons.recording.runner import _pin_threads, _unit_tokens, resolve_device
    from fastneurons.recording.taps import LayerTaps, Recording, _batch_tensors

    config = config.validate()
    path = Path(config.store)
    settings = plan_settings(config)
    header, summaries, seen, units = _pass1_inputs(path, settings)
    if summaries is None:
        log(f"second pass of {path}: not needed (no neuron its summaries cut can be a detector candidate)")
        return path
    meta = header.meta
    recorded = RecordConfig(**meta["record_config"])
    plans = plans_of(summaries, settings)
    if _nothing_to_count(plans):
        write_second_pass(path, _no_counts(plans), plans, settings)
        log(f"second pass of {path}: nothing to count under {settings}")
        return path
    device = resolve_device(config.device)
    _pin_threads(config.threads or meta.get("torch_threads"))
    if device.type == "cpu":
        hold_freed_memory()
    loaded = load_model(config.model or recorded.model, dtype=getattr(torch, meta["compute_dtype"]))
    model, arch = loaded.model, loaded.arch
    tokenizer = load_tokenizer(recorded.tokenizer) if recorded.tokenizer else loaded.tokenizer
    plan = plan_corpus([parse_corpus_arg(arg) for arg in recorded.corpus], tokenizer, seq_len=meta["seq_len"],
                       batch_size=meta["batch_size"], unit_batches=meta["unit_batches"],
                       max_tokens=recorded.max_tokens, full_length=meta["full_length"], bos_id=recorded.bos_id,
                       vocab_size=int(model.get_input_embeddings().weight.shape[0]))
    if plan.fingerprint != header.corpora[0].fingerprint:
        raise StoreError(f"cannot run the second pass of {path}: its corpus differs from the one the first pass "
                         "read (files, their contents, the token budget or the tokenizer changed)")
    orders, pack_bits = header.orders, int(meta["pack_bits"])
    layers = [layer for layer in header.ngram_layers if any(not plans[(layer, k)].empty for k in orders)]
    dense = DenseCounts.zeros(len(layers), meta["num_neurons"], meta["max_positions"], len(plan.domains),
                              positions=False)  # scratch: pass 1 holds the dense counts
    make = lambda layer: CandidateCounter({k: plans[(layer, k)] for k in orders}, seen, pack_bits)  # noqa: E731
    recording = Recording(config=recorded, loaded=loaded, tokenizer=tokenizer, plan=plan, layers=list(layers),
                          ngram_layers=list(layers), seq_len=meta["seq_len"], pack_bits=pack_bits, device=device,
                          dtype=getattr(torch, meta["compute_dtype"]))
    taps = LayerTaps(recording, dense, make_accumulator=make, count_seen=False)
    pairs = sum(plan_.key.size for plan_ in plans.values())
    log(f"second pass over {units.size} units of {path}, layers {layers[0]}..{layers[-1]}: {pairs} tracked pairs "
        f"of cut neurons, {sum(int((p.rare_limit > 0).sum()) for p in plans.values())} (layer, order, neuron) "
        "with rare pairs")
    budget = None if recorded.gpu_memory is None else parse_bytes(recorded.gpu_memory)
    saved = progress_path(path)
    fingerprint = _plan_fingerprint({key: plan for key, plan in plans.items() if key[0] in layers}, units)
    done = sorted(_load_progress(saved, fingerprint, taps, log))
    todo = [int(u) for u in units if int(u) not in set(done)]
    if done:
        log(f"continuing the second pass saved in {saved}: {len(done)} units counted, {len(todo)} to go")
    last_save = time.monotonic()
    try:
        with LayerStreamer(model, arch, device, layers[-1], gpu_memory_bytes=budget), torch.inference_mode(), \
                counting_bar(config.progress, total=sum(_unit_tokens(plan, u) for u in todo), desc="second pass",
                             unit="tok") as bar:
            for index in todo:
                unit = plan.unit(index)
                for micro in unit.batches:
                    batch, cpu = _batch_tensors(micro, unit.domain, meta["count_bos"], device)
                    taps.set_batch(batch, cpu)
                    archs.run_until(model, arch, batch.input_ids, batch.attention_mask, layers[-1])
                    if bar is not None:
                        bar.update(micro.num_tokens)
                done.append(index)
                if index != todo[-1] and time.monotonic() - last_save >= config.commit_seconds:
                    _save_progress(saved, fingerprint, done, taps)
                    last_save = time.monotonic()
    finally:
        taps.remove()
    tables = _no_counts(plans)  # layers with nothing to count keep these
    tables.update({(layer, k): table for layer, acc in taps.ngrams.layers.items() for k, table in acc.tables().items()})
    write_second_pass(path, tables, plans, settings)
    saved.unlink(missing_ok=True)
    return path
