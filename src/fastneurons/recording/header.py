"""The store's metadata for a recording: settings, model, neuron definition, vocabulary and corpus."""
from __future__ import annotations

import numpy as np
import torch

from fastneurons.models import architectures as archs
from fastneurons.recording.taps import Recording
from fastneurons.store import Corpus, Header

_VOLATILE_CONFIG_KEYS = {"transformers_version", "torch_dtype", "dtype", "use_cache", "output_hidden_states",
                         "output_attentions", "return_dict", "name_or_path"}


def _model_config(model) -> dict:
    config = model.config.to_dict()
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}


def _vocab_strings(tokenizer, size: int) -> list:
    """Text of every token id (ids the tokenizer does not know give ''). A fast tokenizer that cleans up
    no spaces decodes them in its Rust backend at once (what ``batch_decode`` gives, in half the time:
    part of every recording's start-up)."""
    known = min(len(tokenizer), size)
    ids = [[i] for i in range(known)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        texts = backend.decode_batch(ids, skip_special_tokens=False)
    else:
        texts = tokenizer.batch_decode(ids)
    return texts + [""] * (size - known)


def _unigram_capacity(config) -> int | None:
    """The k = 1 summaries' capacity where it differs from the other orders' (None otherwise, as in
    stores written before ``--unigram-capacity`` existed, so those still resume and merge)."""
    if config.ngrams != "bounded" or 1 not in config.orders:
        return None
    capacity = config.summary_capacities()[1]
    return None if capacity == config.summary_capacity else int(capacity)


def build_header(recording: Recording) -> Header:
    """The store's metadata for this recording (settings, model, definition, corpus)."""
    config, loaded, tokenizer, plan = recording.config, recording.loaded, recording.tokenizer, recording.plan
    arch, model, seq_len = loaded.arch, loaded.model, recording.seq_len
    meta = {
        "record_config": config.to_metadata(),
        "architecture": arch.name,
        "model_config": _model_config(model),
        "model": {key: value for key, value in loaded.source.items() if key != "config"},
        "compute_dtype": str(recording.dtype).replace("torch.", ""),
        "device": str(recording.device),
        "torch_threads": torch.get_num_threads(),  # pinned by _pin_threads before the model loads
        "tokenizer": getattr(tokenizer, "name_or_path", "") or "",
        "neuron_definition": archs.neuron_definition(arch, config.threshold, config.gated_product),
        "threshold": float(config.threshold),
        "count_bos": bool(config.count_bos),
        "pack_bits": int(recording.pack_bits),
        "num_neurons": int(archs.num_neurons(model.config, arch)),
        "max_positions": int(seq_len),
        "layers": list(recording.layers),
        "ngram_layers": list(recording.ngram_layers),
        "orders": list(config.orders),
        "positions": bool(config.positions),
        "seq_len": int(seq_len),
        "full_length": bool(config.full_length),
        "batch_size": int(config.batch_size),
        "unit_batches": int(config.unit_batches),
        "gated_product": bool(config.gated_product),
        "ngram_mode": config.ngrams,
        "summary_capacity": int(config.summary_capacity) if config.ngrams == "bounded" else None,
        "unigram_capacity": _unigram_capacity(config),
    }
    manifest = plan.manifest()
    corpus = Corpus(plan.fingerprint, manifest, np.zeros(plan.num_units, dtype=bool), len(plan.domains))
    vocab = None if tokenizer is None else _vocab_strings(tokenizer, int(model.get_input_embeddings().weight.shape[0]))
    return Header(meta, vocab, [corpus], [d.label for d in plan.domains])
