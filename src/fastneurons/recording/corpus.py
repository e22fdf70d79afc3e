"""The corpus plan: token sequences -> fixed micro-batches -> numbered units (SPEC §1, §4).

Each input file is one domain. `plan_corpus` reads and tokenises the files once (documents.py) and returns a
`CorpusPlan`, a deterministic, compact description of every micro-batch the runner will feed the
model, grouped into units whose boundaries never depend on the number of processes. See
docs/corpus.md for the choices made here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch

from fastneurons.recording.documents import (CorpusSource, check_format, check_ids, file_sha256, open_domain,
                                             parse_corpus_arg)

PLAN_FORMAT = "fastneurons-corpus/1"
NOT_FINGERPRINTED = ("tokenizer", "vocab_size")  # names/checks only; the tokens pin the plan


@dataclass
class DomainInfo:
    """What the plan took from one file (for the store's manifest and the report)."""

    label: str
    path: str
    sha256: str  # of the file's bytes (compressed bytes for .gz)
    size: int  # file size in bytes
    kind: str  # "text" or "token_ids" (pre-tokenized .jsonl)
    documents: int  # documents (text documents or id lines) read to build the sequences
    sequences: int
    tokens: int  # non-pad tokens, BOS included
    units: int


@dataclass
class MicroBatch:
    """A fixed `[b, seq_len]` right-padded block of one domain's sequences (b <= batch_size)."""

    input_ids: torch.Tensor  # int64 [b, L], pad_id on padding
    attention_mask: torch.Tensor  # int64 [b, L], 1 on tokens, 0 on padding
    positions: torch.Tensor  # int32 [b, L], 0..len-1, -1 on padding
    domain: int
    sequences: range  # global indices of its sequences in the plan

    @property
    def num_tokens(self) -> int:
        """Number of non-pad tokens (BOS included)."""
        return int(self.attention_mask.sum())


@dataclass
class Unit:
    """`unit_batches` consecutive micro-batches of one domain: the atom of the store's ledger."""

    index: int
    domain: int
    batches: list[MicroBatch]


# ---------------------------------------------------------------- the plan


class CorpusPlan:
    """Every sequence of the run, stored flat, and the fixed micro-batches and units cut from it.

    `tokens` int32 [N] holds all sequences back to back, grouped by domain; sequence `s` is
    `tokens[offsets[s]:offsets[s+1]]` and belongs to domain `seq_domain[s]`."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, seq_domain: np.ndarray,
                 domains: list[DomainInfo], settings: dict):
        self.tokens, self.offsets, self.seq_domain = tokens, offsets, seq_domain
        self.domains, self.settings = domains, settings
        self.seq_len, self.batch_size = settings["seq_len"], settings["batch_size"]
        self.unit_batches, self.pad_id = settings["unit_batches"], settings["pad_id"]
        counts = np.bincount(seq_domain, minlength=len(domains)).astype(np.int64)
        self._first_seq = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._num_seq = counts
        per_unit = self.batch_size * self.unit_batches
        units = [-(-int(c) // per_unit) for c in counts]
        order = [(d, k) for k in range(max(units, default=0)) for d in range(len(domains)) if k < units[d]]
        self._unit_domain = np.array([d for d, _ in order], dtype=np.int64)
        self._unit_local = np.array([k for _, k in order], dtype=np.int64)
        for d, info in enumerate(domains):
            info.units = units[d]
        self.fingerprint = self._fingerprint()

    @property
    def num_units(self) -> int:
        return len(self._unit_domain)

    @property
    def num_sequences(self) -> int:
        return len(self.seq_domain)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def sequence(self, s: int) -> np.ndarray:
        """Token ids of sequence `s` (a view into the flat array)."""
        return self.tokens[self.offsets[s]:self.offsets[s + 1]]

    def unit_domain(self, i: int) -> int:
        """Index (into `domains`) of the domain unit `i` belongs to."""
        self._check_unit(i)
        return int(self._unit_domain[i])

    def unit_sequences(self, i: int) -> range:
        """Global indices of the sequences in unit `i`."""
        self._check_unit(i)
        d, k = int(self._unit_domain[i]), int(self._unit_local[i])
        per_unit = self.batch_size * self.unit_batches
        first = int(self._first_seq[d])
        return range(first + k * per_unit, first + min((k + 1) * per_unit, int(self._num_seq[d])))

    def unit(self, i: int) -> Unit:
        """Unit `i` with its micro-batches built as tensors."""
        seqs = self.unit_sequences(i)
        batches = [self._micro_batch(range(s, min(s + self.batch_size, seqs.stop)))
                   for s in range(seqs.start, seqs.stop, self.batch_size)]
        return Unit(index=i, domain=int(self._unit_domain[i]), batches=batches)

    def units_for_shard(self, shard: int, num_shards: int) -> range:
        """Unit indices of shard `shard` of `num_shards` (round-robin: shard, shard+n, ...)."""
        if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard, int) and 0 <= shard < num_shards):
            raise ValueError(f"shard {shard}/{num_shards}: need integers 0 <= shard < num_shards")
        return range(shard, self.num_units, num_shards)

    def manifest(self) -> dict:
        """JSON-ready description of the plan for the store (no token ids)."""
        return {
            "format": PLAN_FORMAT,
            "fingerprint": self.fingerprint,
            "settings": dict(self.settings),
            "domains": [asdict(d) for d in self.domains],
            "num_sequences": self.num_sequences,
            "num_tokens": self.num_tokens,
            "num_units": self.num_units,
        }

    def __repr__(self) -> str:
        labels = ", ".join(f"{d.label}: {d.tokens} tokens" for d in self.domains)
        return f"CorpusPlan({self.num_units} units, {self.num_sequences} sequences, {labels})"

    def _check_unit(self, i: int) -> None:
        if not 0 <= i < self.num_units:
            raise IndexError(f"unit {i} out of range: the plan has {self.num_units} units")

    def _micro_batch(self, seqs: range) -> MicroBatch:
        b, L = len(seqs), self.seq_len
        ids = np.full((b, L), self.pad_id, dtype=np.int64)
        lengths = np.diff(self.offsets[seqs.start:seqs.stop + 1])
        for row, s in enumerate(seqs):
            ids[row, :lengths[row]] = self.sequence(s)
        columns = np.arange(L, dtype=np.int32)[None, :]
        mask = columns < lengths[:, None]
        return MicroBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            positions=torch.from_numpy(np.where(mask, columns, -1).astype(np.int32)),
            domain=int(self.seq_domain[seqs.start]),
            sequences=seqs,
        )

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(PLAN_FORMAT.encode() + b"\0")
        settings = {k: v for k, v in self.settings.items() if k not in NOT_FINGERPRINTED}
        domains = [[d.label, d.kind, d.sha256] for d in self.domains]
        digest.update(json.dumps([settings, domains], sort_keys=True).encode() + b"\0")
        for array, dtype in ((self.tokens, "<i4"), (self.offsets, "<i8"), (self.seq_domain, "<i4")):
            digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        return digest.hexdigest()


def _positive_int(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def plan_corpus(sources: Iterable[CorpusSource | str | os.PathLike], tokenizer, seq_len: int,
                batch_size: int, unit_batches: int, max_tokens: int | None = None,
                full_length: bool = False, bos_id: int | None = None, vocab_size: int | None = None,
                pad_id: int | None = None) -> CorpusPlan:
    """Read, tokenise and cut the corpus files into a deterministic plan of micro-batches and units.

    `max_tokens` caps the non-pad tokens (BOS included), taken one sequence per domain in turn;
    files are read only as far as needed. `vocab_size` (default len(tokenizer)) bounds every id."""
    seq_len = _positive_int("seq_len", seq_len, 2)
    batch_size = _positive_int("batch_size", batch_size, 1)
    unit_batches = _positive_int("unit_batches", unit_batches, 1)
    if max_tokens is not None:
        max_tokens = _positive_int("max_tokens", max_tokens, 1)
    sources = [parse_corpus_arg(s) for s in ([sources] if isinstance(sources, (str, os.PathLike, CorpusSource)) else sources)]
    if not sources:
        raise ValueError("the corpus is empty: give at least one file")
    labels = [s.label for s in sources]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"two corpus files share the domain label {label!r}; give one as label=path")
    for s in sources:
        check_format(s.path)
    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer)
    if vocab_size is not None:
        vocab_size = _positive_int("vocab_size", vocab_size, 1)

    special: dict = {}

    def resolve_ids() -> tuple[int, int]:
        """BOS (default tokenizer BOS, else EOS) and the full-length document separator (EOS, else BOS)."""
        if not special:
            bos = bos_id if bos_id is not None else getattr(tokenizer, "bos_token_id", None)
            eos = getattr(tokenizer, "eos_token_id", None)
            bos = eos if bos is None else bos
            if bos is None:
                raise ValueError("the tokenizer has no BOS or EOS token; pass bos_id (--bos-id)")
            special["bos"] = _positive_int("bos_id", bos, 0)
            special["sep"] = _positive_int("separator id", eos if eos is not None else bos, 0)
            for name, value in special.items():
                check_ids(np.array([value]), vocab_size, f"{name} id")
        return special["bos"], special["sep"]

    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = 0 if pad_id is None else pad_id
    pad_id = _positive_int("pad_id", pad_id, 0)
    check_ids(np.array([pad_id]), vocab_size, "pad id")

    opened = [open_domain(s, tokenizer, seq_len, full_length, resolve_ids, vocab_size) for s in sources]
    taken: list[list[np.ndarray]] = [[] for _ in sources]
    documents = [0] * len(sources)
    live, total = list(range(len(sources))), 0
    while live and (max_tokens is None or total < max_tokens):
        for d in list(live):
            if max_tokens is not None and total >= max_tokens:
                break
            item = next(opened[d][1], None)
            if item is None:
                live.remove(d)
                continue
            seq, documents[d] = item
            if max_tokens is not None and total + len(seq) > max_tokens:
                if full_length:
                    live = []
                    break
                seq = seq[:max_tokens - total]
            taken[d].append(seq)
            total += len(seq)
    if total == 0:
        raise ValueError("the corpus yields no sequences within the token budget; raise max_tokens")

    sequences = [seq for per_domain in taken for seq in per_domain]
    tokens = np.concatenate(sequences).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    seq_domain = np.repeat(np.arange(len(sources), dtype=np.int32), [len(t) for t in taken])
    domains = [DomainInfo(label=s.label, path=str(s.path), sha256=file_sha256(s.path),
                          size=s.path.stat().st_size, kind=opened[d][0], documents=documents[d],
                          sequences=len(taken[d]), tokens=int(sum(len(x) for x in taken[d])), units=0)
               for d, s in enumerate(sources)]
    settings = {
        "seq_len": seq_len, "batch_size": batch_size, "unit_batches": unit_batches,
        "max_tokens": max_tokens, "full_length": bool(full_length),
        "bos_id": special.get("bos"), "sep_id": special.get("sep"), "pad_id": pad_id,
        "vocab_size": vocab_size,
        "tokenizer": (getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__) if tokenizer is not None else None,
    }
    return CorpusPlan(tokens, offsets, seq_domain, domains, settings)
