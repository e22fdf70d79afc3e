"""Adding stores: ``add_stores`` sums two compatible headers and dense counters (shards of one corpus
or different corpora), ``merge_stores`` writes finished stores' sum, n-gram tables included, to a new file.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from fastneurons.store.format import (Corpus, DenseCounts, Header, StoreError, _atomic_h5, _check_file, check_output_path, _ngram_group, _write_dense,
                     _write_header, compatibility_problem, read_dense, read_header)
from fastneurons.store.summaries import is_bounded, merge_summaries, read_summaries, write_summaries
from fastneurons.store.lock import StoreLock
from fastneurons.store.writer import merge_ngram_groups


def add_stores(a: Header, a_dense: DenseCounts, b: Header, b_dense: DenseCounts):
    """Add store ``b`` to store ``a`` (settings already compatible) -> (header, dense).

    Corpora with the same fingerprint are shards: their ledgers must be disjoint and their domain
    rows add up. Other corpora are appended with their domains kept apart.
    """
    corpora = [Corpus(c.fingerprint, c.manifest, c.units.copy(), c.num_domains) for c in a.corpora]
    labels = list(a.domain_labels)
    tokens = [row.copy() for row in _blocks(a.corpora, a_dense.domain_tokens)]
    active = [row.copy() for row in _blocks(a.corpora, a_dense.domain_active)]
    b_tokens, b_active = _blocks(b.corpora, b_dense.domain_tokens), _blocks(b.corpora, b_dense.domain_active)
    for corpus, block_tokens, block_active, block_labels in zip(
            b.corpora, b_tokens, b_active, _blocks(b.corpora, b.domain_labels)):
        index = next((i for i, c in enumerate(corpora) if c.fingerprint == corpus.fingerprint), None)
        if index is None:
            corpora.append(Corpus(corpus.fingerprint, corpus.manifest, corpus.units.copy(), corpus.num_domains))
            tokens.append(block_tokens)
            active.append(block_active)
            labels.extend(block_labels)
            continue
        overlap = np.flatnonzero(corpora[index].units & corpus.units)
        if overlap.size:
            raise StoreError(f"both stores hold units {overlap[:5].tolist()} of the same corpus: "
                             "shards must hold disjoint units (adding them would count tokens twice)")
        corpora[index].units |= corpus.units
        tokens[index] = tokens[index] + block_tokens
        active[index] = active[index] + block_active
    dense = DenseCounts(
        tokens=a_dense.tokens + b_dense.tokens,
        pos_seen=a_dense.pos_seen + b_dense.pos_seen,
        active=a_dense.active + b_dense.active,
        pos_active=None if a_dense.pos_active is None else a_dense.pos_active + b_dense.pos_active,
        nan_count=a_dense.nan_count + b_dense.nan_count,
        domain_tokens=np.concatenate(tokens),
        domain_active=np.concatenate(active),
    )
    return Header(a.meta, a.vocab or b.vocab, corpora, labels), dense


def _blocks(corpora: list, rows):
    """Split per-domain rows into one block per corpus (domains are stored corpus by corpus)."""
    out, start = [], 0
    for corpus in corpora:
        out.append(rows[start:start + corpus.num_domains])
        start += corpus.num_domains
    return out


def merge_stores(inputs, out, ngram_memory: int, overwrite: bool = False) -> Path:
    """Add finished, compatible stores into ``out`` (refuses anything else, saying why).

    An existing ``out`` is replaced only with ``overwrite``, and never when it is one of the inputs."""
    paths, out = [Path(p) for p in inputs], Path(out)
    check_output_path(out, "-o")
    if any(_same_file(out, path) for path in paths):
        raise StoreError(f"-o {out}: the merge output must not be one of its inputs")
    with StoreLock(out):  # also keeps --overwrite off a store that a recording is writing
        if out.exists() and not overwrite:
            raise StoreError(f"{out} exists: choose another -o, or pass --overwrite to replace it")
        return _merge_into(paths, out, ngram_memory)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)  # samefile: hard links too
    except OSError:
        return False


def _merge_into(paths: list, out: Path, ngram_memory: int) -> Path:
    headers, denses = [], []
    for path in paths:
        _check_file(path)
        try:
            with h5py.File(path, "r") as f:
                header = read_header(f, path)
                if not bool(f.attrs["complete"]):
                    raise StoreError(f"{path} is an unfinished recording: finish it with --resume before merging")
                headers.append(header)
                denses.append(read_dense(f, path))
        except OSError as err:
            raise StoreError(f"{path}: cannot be read ({err}); it cannot be merged") from err
    merged, dense = headers[0], denses[0]
    for path, header, other in zip(paths[1:], headers[1:], denses[1:]):
        problem = compatibility_problem(merged, header)
        if problem:
            raise StoreError(f"cannot merge {paths[0]} and {path}: {problem}")
        merged, dense = add_stores(merged, dense, header, other)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = [h5py.File(path, "r") for path in paths]
    try:
        def write(f):
            _write_header(f, merged, complete=True)
            _write_dense(f, merged, dense)
            group = _ngram_group(f, merged, [])
            merge_ngram_groups(group, [src["ngrams"] for src in files if "ngrams" in src], merged, ngram_memory)
            if is_bounded(merged.meta) and merged.ngram_layers:  # pass-2 counts are not carried: rerun it
                write_summaries(f, merge_summaries([read_summaries(src, header, path)
                                                    for src, header, path in zip(files, headers, paths)]))

        _atomic_h5(out, write)
    finally:
        for handle in files:
            handle.close()
    return out
