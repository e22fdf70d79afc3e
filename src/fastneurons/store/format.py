"""The store's on-disk format: schema constants, the in-memory Header/DenseCounts, atomic HDF5 writes
and the read/write of headers, dense counters and strings (docs/store-schema.md).

Everything here is shared by the reader, the writer and merge; it knows nothing of runs' lifecycles.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from fastneurons.hdf5_chunks import COMPRESSION, write_column
from fastneurons.store.atomic import atomic_h5 as _atomic_h5  # noqa: F401 (shared by writer and merge)

FORMAT = "fastneurons.counts"
SCHEMA_VERSION = 1

# Metadata fields that must agree for two stores (or a store and a resumed run) to be added.
_SETTING_KEYS = ("architecture", "model_config", "compute_dtype", "threshold", "neuron_definition",
                 "count_bos", "pack_bits", "num_neurons", "max_positions", "layers", "ngram_layers",
                 "orders", "positions", "seq_len", "full_length", "batch_size", "unit_batches", "ngram_mode",
                 "summary_capacity", "unigram_capacity")
_SETTING_DEFAULTS = {"ngram_mode": "exact"}  # stores written before the setting existed


class StoreError(ValueError):
    """A counts file that is missing, corrupt, or incompatible with what was asked."""


@dataclass
class Corpus:
    """One corpus held by a store: its plan fingerprint, manifest and ledger of units held."""

    fingerprint: str
    manifest: dict
    units: np.ndarray  # bool [n_units]
    num_domains: int


@dataclass
class Header:
    """Everything in a store except the counts: settings, vocabulary, corpora and domains."""

    meta: dict
    vocab: Optional[list]
    corpora: list
    domain_labels: list

    @property
    def layers(self) -> list:
        return list(self.meta["layers"])

    @property
    def ngram_layers(self) -> list:
        return list(self.meta["ngram_layers"])

    @property
    def orders(self) -> list:
        return list(self.meta["orders"])

    def settings(self) -> dict:
        return {key: self.meta.get(key, _SETTING_DEFAULTS.get(key)) for key in _SETTING_KEYS}


@dataclass
class DenseCounts:
    """SPEC §2 dense counters for all recorded layers (plus per-domain active counts)."""

    tokens: int
    pos_seen: np.ndarray  # [T]
    active: np.ndarray  # [L, F]
    pos_active: Optional[np.ndarray]  # [L, T, F] or None
    nan_count: np.ndarray  # [L]
    domain_tokens: np.ndarray  # [D]
    domain_active: np.ndarray  # [D, L, F]

    @classmethod
    def zeros(cls, num_layers, num_neurons, max_positions, num_domains, positions=True):
        return cls(
            tokens=0,
            pos_seen=np.zeros(max_positions, np.int64),
            active=np.zeros((num_layers, num_neurons), np.int64),
            pos_active=np.zeros((num_layers, max_positions, num_neurons), np.int64) if positions else None,
            nan_count=np.zeros(num_layers, np.int64),
            domain_tokens=np.zeros(num_domains, np.int64),
            domain_active=np.zeros((num_domains, num_layers, num_neurons), np.int64),
        )


# ----------------------------------------------------------------------------- low-level writing

def _write_json_attr(obj, name, value) -> None:
    obj.attrs[name] = json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_header(f: h5py.File, header: Header, complete: bool) -> None:
    from fastneurons import __version__

    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["complete"] = bool(complete)
    f.attrs["fastneurons_version"] = __version__
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = f.create_group("meta")
    for key, value in header.meta.items():
        _write_json_attr(meta, key, value)
    if header.vocab is not None:
        _write_strings(f.create_group("vocab"), header.vocab)
    corpora = f.create_group("corpora")
    for index, corpus in enumerate(header.corpora):
        group = corpora.create_group(str(index))
        group.attrs["fingerprint"] = corpus.fingerprint
        _write_json_attr(group, "manifest", corpus.manifest)
        group.attrs["num_domains"] = int(corpus.num_domains)
        group.create_dataset("units", data=corpus.units.astype(bool))
    domains = f.create_group("domains")
    _write_json_attr(domains, "labels", header.domain_labels)


def _write_dense(f: h5py.File, header: Header, dense: DenseCounts, empty: bool = False) -> None:
    """The dense counters; ``pos_active`` as uint32 when its counts fit, shuffled and deflated by chunks of
    256 positions of one layer (``write_column``: snapshots too, it costs about as much as writing it raw).

    ``empty``: all counts are zero, so ``pos_active`` is declared (HDF5 fill value 0), not written.
    """
    group = f.create_group("dense")
    group.create_dataset("layers", data=np.asarray(header.layers, np.int64))
    group.create_dataset("tokens", data=np.int64(dense.tokens))
    group.create_dataset("pos_seen", data=dense.pos_seen)
    group.create_dataset("active", data=dense.active)
    group.create_dataset("nan_count", data=dense.nan_count)
    if dense.pos_active is not None:
        pos = dense.pos_active
        if empty:
            group.create_dataset("pos_active", shape=pos.shape, dtype=pos.dtype, fillvalue=0)
        elif not pos.size:
            group.create_dataset("pos_active", data=pos)
        else:
            dtype = np.uint32 if pos.max() <= np.iinfo(np.uint32).max else pos.dtype
            chunks = (1, min(pos.shape[1], 256), pos.shape[2])
            write_column(group.create_dataset("pos_active", shape=pos.shape, dtype=dtype, chunks=chunks,
                                              **COMPRESSION), pos)
    f["domains"].create_dataset("tokens", data=dense.domain_tokens)
    f["domains"].create_dataset("active", data=dense.domain_active)


def _ngram_group(f: h5py.File, header: Header, pending_runs: list, run_units: Optional[dict] = None) -> h5py.Group:
    """The /ngrams group; a snapshot also lists its pending runs and the units each one holds."""
    group = f.create_group("ngrams")
    _write_json_attr(group, "layers", header.ngram_layers)
    _write_json_attr(group, "orders", header.orders)
    group.attrs["pack_bits"] = int(header.meta["pack_bits"])
    _write_json_attr(group, "pending_runs", list(pending_runs))
    if run_units is not None:
        _write_json_attr(group, "run_units", {name: run_units.get(name) for name in pending_runs})
    return group


def _write_strings(group: h5py.Group, strings: list) -> None:
    """Strings as utf-8 bytes + offsets (token texts may contain NUL, which HDF5 strings cannot)."""
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    group.create_dataset("offsets", data=np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64))
    group.create_dataset("bytes", data=np.frombuffer(b"".join(encoded), dtype=np.uint8))


def _read_strings(group: h5py.Group) -> list:
    offsets, data = group["offsets"][()], group["bytes"][()].tobytes()
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1], offsets[1:])]


def table_path(layer: int, k: int) -> str:
    return f"layer{layer}/k{k}"


def seen_path(k: int) -> str:
    return f"seen/k{k}"


# ----------------------------------------------------------------------------- reading

def _check_file(path: Path) -> None:
    if not path.exists():
        raise StoreError(f"{path}: no such counts file")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path}: not an HDF5 file (corrupt or not a fastneurons store)")


def check_output_path(path: Path, flag: str) -> None:
    """Refuse an output path that cannot be a store file, naming why (a directory, a file as its folder)."""
    if path.is_dir():
        raise StoreError(f"{flag} {path} is a directory: give the path of the counts file, e.g. {path / 'counts.h5'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise StoreError(f"{flag} {path}: {parent} is a file, not a folder")


def read_header(f: h5py.File, path) -> Header:
    if f.attrs.get("format") != FORMAT:
        raise StoreError(f"{path}: not a fastneurons counts file (format attribute missing)")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version}, this fastneurons reads {SCHEMA_VERSION}")
    try:
        meta = {key: json.loads(value) for key, value in f["meta"].attrs.items()}
        vocab = _read_strings(f["vocab"]) if "vocab" in f else None
        corpora = [
            Corpus(g.attrs["fingerprint"], json.loads(g.attrs["manifest"]), g["units"][()].astype(bool),
                   int(g.attrs["num_domains"]))
            for _, g in sorted(f["corpora"].items(), key=lambda item: int(item[0]))
        ]
        labels = json.loads(f["domains"].attrs["labels"])
    except (KeyError, ValueError, OSError) as err:
        raise StoreError(f"{path}: corrupt store header ({err})") from err
    return Header(meta, vocab, corpora, labels)


def read_dense(f: h5py.File, path) -> DenseCounts:
    try:
        group = f["dense"]
        return DenseCounts(
            tokens=int(group["tokens"][()]),
            pos_seen=group["pos_seen"][()].astype(np.int64),
            active=group["active"][()].astype(np.int64),
            pos_active=group["pos_active"][()].astype(np.int64) if "pos_active" in group else None,
            nan_count=group["nan_count"][()].astype(np.int64),
            domain_tokens=f["domains/tokens"][()].astype(np.int64),
            domain_active=f["domains/active"][()].astype(np.int64),
        )
    except (KeyError, OSError) as err:
        raise StoreError(f"{path}: corrupt dense counters ({err})") from err


def runs_dir(path: Path) -> Path:
    return path.with_name(path.name + ".runs")


# ----------------------------------------------------------------------------- compatibility

def compatibility_problem(a: Header, b: Header) -> Optional[str]:
    """Why two stores cannot be added, or None when they can."""
    sa, sb = _normalized(a.settings()), _normalized(b.settings())
    for key in _SETTING_KEYS:
        if sa[key] != sb[key]:
            if isinstance(sa[key], dict) and isinstance(sb[key], dict):
                sub = next(k for k in sorted(set(sa[key]) | set(sb[key])) if sa[key].get(k) != sb[key].get(k))
                return f"'{key}.{sub}' differs: {_short(sa[key].get(sub))} vs {_short(sb[key].get(sub))}"
            return f"'{key}' differs: {_short(sa[key])} vs {_short(sb[key])}"
    return None


def _normalized(value):
    """The JSON form of a value (tuples -> lists, int keys -> str), as it reads back from a file."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."

