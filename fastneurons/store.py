"""The HDF5 counts store: crash-safe commits, resume, merge and a reader (docs/store-schema.md).

A committed store is never edited in place: each commit writes a complete snapshot next to it and
renames it over the old one, and n-gram tables arrive as immutable run files listed by the
snapshot. The store knows nothing of models or analyses.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from .ngrams import runs as ngram_runs
from .ngrams.accumulator import SeenTable, Table, merge_many

FORMAT = "fastneurons.counts"
SCHEMA_VERSION = 1

# Metadata fields that must agree for two stores (or a store and a resumed run) to be added.
_SETTING_KEYS = ("architecture", "model_config", "compute_dtype", "threshold", "neuron_definition",
                 "count_bos", "pack_bits", "num_neurons", "max_positions", "layers", "ngram_layers",
                 "orders", "positions", "seq_len", "full_length", "batch_size", "unit_batches")


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
        return {key: self.meta.get(key) for key in _SETTING_KEYS}


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

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_h5(path: Path, write) -> None:
    """Write an HDF5 file through ``write(h5file)`` to a temporary name, fsync it, rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path}: {err.strerror or err} (nothing committed was lost)") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    from . import __version__

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


def _write_dense(f: h5py.File, header: Header, dense: DenseCounts, final: bool = True, empty: bool = False) -> None:
    """The dense counters; intermediate snapshots skip the uint32 cast and compression (speed).

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
        elif not final:
            group.create_dataset("pos_active", data=pos)
        else:
            if pos.size and pos.max() <= np.iinfo(np.uint32).max:
                pos = pos.astype(np.uint32)
            chunks = (1, min(pos.shape[1], 256), pos.shape[2]) if pos.size else None
            group.create_dataset("pos_active", data=pos, chunks=chunks, compression="lzf" if chunks else None)
    f["domains"].create_dataset("tokens", data=dense.domain_tokens)
    f["domains"].create_dataset("active", data=dense.domain_active)


def _ngram_group(f: h5py.File, header: Header, pending_runs: list) -> h5py.Group:
    group = f.create_group("ngrams")
    _write_json_attr(group, "layers", header.ngram_layers)
    _write_json_attr(group, "orders", header.orders)
    group.attrs["pack_bits"] = int(header.meta["pack_bits"])
    _write_json_attr(group, "pending_runs", list(pending_runs))
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


class Counts:
    """Read-only view of a store (finished or partial): the arrays the analyses need.

    Dense arrays are read on demand; n-gram tables of a partial store are merged from its
    pending run files on the fly.
    """

    def __init__(self, path):
        self.path = Path(path)
        _check_file(self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(f"{self.path}: cannot open ({err})") from err
        self.header = read_header(self._file, self.path)
        self.complete = bool(self._file.attrs["complete"])
        self._pending = json.loads(self._file["ngrams"].attrs.get("pending_runs", "[]")) if "ngrams" in self._file else []
        self._layer_index = {layer: i for i, layer in enumerate(self.header.layers)}

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- settings
    @property
    def metadata(self) -> dict:
        return dict(self.header.meta)

    @property
    def layers(self) -> list:
        return self.header.layers

    @property
    def num_neurons(self) -> int:
        return int(self.header.meta["num_neurons"])

    @property
    def max_positions(self) -> int:
        return int(self.header.meta["max_positions"])

    @property
    def vocab(self) -> Optional[list]:
        return self.header.vocab

    @property
    def pack_bits(self) -> int:
        return int(self.header.meta["pack_bits"])

    @property
    def ngram_layers(self) -> list:
        return self.header.ngram_layers

    @property
    def ngram_orders(self) -> list:
        return self.header.orders if self.header.ngram_layers else []

    @property
    def domains(self) -> list:
        return list(self.header.domain_labels)

    @property
    def units_held(self) -> int:
        return int(sum(c.units.sum() for c in self.header.corpora))

    # -- dense counters
    @property
    def tokens(self) -> int:
        return int(self._file["dense/tokens"][()])

    @property
    def pos_seen(self) -> np.ndarray:
        return self._file["dense/pos_seen"][()].astype(np.int64)

    def _row(self, layer: int) -> int:
        if layer not in self._layer_index:
            raise KeyError(f"layer {layer} was not recorded (recorded: {self.layers})")
        return self._layer_index[layer]

    def active(self, layer: int) -> np.ndarray:
        return self._file["dense/active"][self._row(layer)].astype(np.int64)

    def pos_active(self, layer: int) -> np.ndarray:
        if "pos_active" not in self._file["dense"]:
            raise KeyError("this store was recorded with --no-positions")
        return self._file["dense/pos_active"][self._row(layer)].astype(np.int64)

    @property
    def has_positions(self) -> bool:
        return "pos_active" in self._file["dense"]

    @property
    def domain_tokens(self) -> np.ndarray:
        return self._file["domains/tokens"][()].astype(np.int64)

    def domain_active(self, layer: int) -> np.ndarray:
        return self._file["domains/active"][:, self._row(layer)].astype(np.int64)

    def dense(self) -> DenseCounts:
        return read_dense(self._file, self.path)

    # -- n-gram tables
    def _merged(self, sub: str):
        """The table ``sub`` of the store plus those of its pending runs (a partial store), added up."""
        tables = []
        if "ngrams" in self._file and sub in self._file["ngrams"]:
            tables.append(ngram_runs.read_table(self._file["ngrams"][sub]))
        for name in self._pending:
            with h5py.File(runs_dir(self.path) / name, "r") as run:
                if sub in run["ngrams"]:
                    tables.append(ngram_runs.read_table(run["ngrams"][sub]))
        if not tables:
            raise KeyError(f"no n-gram table {sub} in {self.path}")
        return merge_many(tables)

    def ngram_active(self, layer: int, k: int):
        """(key uint64, neuron uint32, count int64) sorted by (key, neuron): SPEC ngram_active[k]."""
        if layer not in self.ngram_layers or k not in self.ngram_orders:
            raise KeyError(f"no n-gram table for layer {layer}, order {k} "
                           f"(layers {self.ngram_layers}, orders {self.ngram_orders})")
        table = self._merged(table_path(layer, k))
        return table.key, table.neuron, table.count

    def ngram_seen(self, k: int):
        """(key uint64, count int64) sorted by key: SPEC ngram_seen[k]."""
        if k not in self.ngram_orders:
            raise KeyError(f"no n-gram order {k} (orders {self.ngram_orders})")
        table = self._merged(seen_path(k))
        return table.key, table.count


def open_counts(path) -> Counts:
    """Open a counts file for reading (no model or corpus needed)."""
    return Counts(path)


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


# ----------------------------------------------------------------------------- writing a run

class CountsWriter:
    """Owns an output store while recording: commits snapshots, spills runs, finalizes."""

    def __init__(self, path, header: Header, dense: DenseCounts, pending: list, ngram_memory: int):
        self.path = Path(path)
        self.header = header
        self.dense = dense
        self.pending = list(pending)
        self.ngram_memory = ngram_memory
        self.complete = False
        self._next_run = 1 + max((int(name[4:10]) for name in self.pending if name[4:10].isdigit()), default=0)

    # -- opening
    @classmethod
    def create(cls, path, header: Header, ngram_memory: int, overwrite: bool = False) -> "CountsWriter":
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} exists: pass --resume to continue it, or choose another --out")
        if runs_dir(path).exists():
            shutil.rmtree(runs_dir(path))
        meta = header.meta
        dense = DenseCounts.zeros(len(meta["layers"]), meta["num_neurons"], meta["max_positions"],
                                  len(header.domain_labels), positions=meta["positions"])
        writer = cls(path, header, dense, [], ngram_memory)
        writer._snapshot(complete=False, empty=True)
        return writer

    @classmethod
    def resume(cls, path, header: Header, ngram_memory: int) -> "CountsWriter":
        """Continue ``path``: its settings and corpus must equal ``header``'s; leftovers are removed."""
        path = Path(path)
        _check_file(path)
        try:
            with h5py.File(path, "r") as f:
                old = read_header(f, path)
                dense = read_dense(f, path)
                complete = bool(f.attrs["complete"])
                pending = json.loads(f["ngrams"].attrs.get("pending_runs", "[]")) if "ngrams" in f else []
                has_tables = "ngrams" in f and any(key != "seen" for key in f["ngrams"].keys())
        except OSError as err:
            raise StoreError(f"{path}: cannot be read ({err}); it cannot be resumed") from err
        problem = compatibility_problem(old, header)
        if problem:
            raise StoreError(f"cannot resume {path}: {problem}")
        if [c.fingerprint for c in old.corpora] != [c.fingerprint for c in header.corpora]:
            raise StoreError(f"cannot resume {path}: the corpus differs from the one it was recorded on "
                             "(files, their contents, the token budget or the tokenizer changed)")
        header = Header(header.meta, header.vocab, old.corpora, old.domain_labels)
        directory = runs_dir(path)
        for leftover in directory.glob("*") if directory.exists() else []:
            if leftover.name not in pending:
                leftover.unlink()
        writer = cls(path, header, dense, pending, ngram_memory)
        if complete and has_tables:
            writer._tables_to_run()
        return writer

    def _tables_to_run(self) -> None:
        """A finished store being extended: its merged tables become the first pending run."""
        name = self._new_run_name()
        directory = runs_dir(self.path)
        directory.mkdir(exist_ok=True)

        def write(f):
            with h5py.File(self.path, "r") as src:
                src.copy(src["ngrams"], f, "ngrams")
            _write_json_attr(f["ngrams"], "pending_runs", [])

        _atomic_h5(directory / name, write)
        self.pending.append(name)
        self._snapshot(complete=False)

    def holds(self, corpus_index: int, unit: int) -> bool:
        return bool(self.header.corpora[corpus_index].units[unit])

    # -- committing
    def _new_run_name(self) -> str:
        name = f"run-{self._next_run:06d}.h5"
        self._next_run += 1
        return name

    def write_run(self, tables: dict, seen: dict) -> str:
        """Write n-gram tables {(layer, k): Table} and {k: SeenTable} as a new immutable run file.

        The run belongs to the store only once a later ``commit`` lists it.
        """
        directory = runs_dir(self.path)
        directory.mkdir(exist_ok=True)
        name = self._new_run_name()

        def write(f):
            group = _ngram_group(f, self.header, [])
            for (layer, k), table in tables.items():
                ngram_runs.write_table(group.create_group(table_path(layer, k)), table, compress=False)
            for k, table in seen.items():
                ngram_runs.write_table(group.create_group(seen_path(k)), table, compress=False)

        _atomic_h5(directory / name, write)
        return name

    def commit(self, dense: DenseCounts, corpus_index: int, units, new_runs=(), final: bool = False) -> None:
        """Atomically make ``dense`` (the new totals), the units and the new runs the store's state.

        ``final=True`` also merges every run into the store's own tables and marks it complete.
        """
        self.dense = dense
        ledger = self.header.corpora[corpus_index].units
        ledger[np.asarray(list(units), dtype=np.int64)] = True
        self.pending.extend(new_runs)
        if final:
            self.finalize()
            return
        self._snapshot(complete=False)
        if len(self.pending) > 16:
            self.compact()

    def compact(self) -> None:
        """Merge all pending runs into one (bounded memory), so the folder does not grow without end."""
        old = list(self.pending)
        name = self._new_run_name()
        directory = runs_dir(self.path)
        files = [h5py.File(directory / run, "r") for run in old]
        try:
            def write(f):
                group = _ngram_group(f, self.header, [])
                self._merge_into(group, [src["ngrams"] for src in files], compress=False)

            _atomic_h5(directory / name, write)
        finally:
            for handle in files:
                handle.close()
        self.pending = [name]
        self._snapshot(complete=False)
        for run in old:
            (directory / run).unlink(missing_ok=True)

    def _merge_into(self, dest: h5py.Group, sources: list, compress: bool = True) -> None:
        subs = [table_path(layer, k) for layer in self.header.ngram_layers for k in self.header.orders]
        subs += [seen_path(k) for k in self.header.orders] if self.header.ngram_layers else []
        for sub in subs:
            groups = [src[sub] for src in sources if sub in src]
            if groups:
                ngram_runs.merge_tables(groups, dest.create_group(sub), self.ngram_memory, compress=compress)
            else:  # nothing recorded yet (e.g. an empty shard): an empty table of the right kind
                k = int(sub[-1])
                empty = SeenTable.empty(k) if sub.startswith("seen") else Table.empty(k)
                ngram_runs.write_table(dest.create_group(sub), empty)

    def _snapshot(self, complete: bool, empty: bool = False) -> None:
        def write(f):
            _write_header(f, self.header, complete)
            _write_dense(f, self.header, self.dense, final=False, empty=empty)
            _ngram_group(f, self.header, self.pending)

        _atomic_h5(self.path, write)

    def finalize(self) -> None:
        """Merge every pending run into the store's own tables and mark it complete."""
        directory = runs_dir(self.path)
        files = [h5py.File(directory / run, "r") for run in self.pending]
        try:
            def write(f):
                _write_header(f, self.header, complete=True)
                _write_dense(f, self.header, self.dense)
                group = _ngram_group(f, self.header, [])
                self._merge_into(group, [src["ngrams"] for src in files])

            _atomic_h5(self.path, write)
        finally:
            for handle in files:
                handle.close()
        self.pending = []
        self.complete = True
        if directory.exists():
            shutil.rmtree(directory)


# ----------------------------------------------------------------------------- merge

def merge_stores(inputs, out, ngram_memory: int) -> Path:
    """Add finished, compatible stores into ``out`` (refuses anything else, saying why)."""
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if out.resolve() in [p.resolve() for p in paths]:
        raise StoreError("the merge output must not be one of its inputs")
    headers, denses = [], []
    for path in paths:
        _check_file(path)
        with h5py.File(path, "r") as f:
            header = read_header(f, path)
            if not bool(f.attrs["complete"]):
                raise StoreError(f"{path} is an unfinished recording: finish it with --resume before merging")
            headers.append(header)
            denses.append(read_dense(f, path))
    merged, dense = headers[0], denses[0]
    for path, header, other in zip(paths[1:], headers[1:], denses[1:]):
        problem = compatibility_problem(merged, header)
        if problem:
            raise StoreError(f"cannot merge {paths[0]} and {path}: {problem}")
        merged, dense = add_stores(merged, dense, header, other)
    files = [h5py.File(path, "r") for path in paths]
    try:
        def write(f):
            _write_header(f, merged, complete=True)
            _write_dense(f, merged, dense)
            group = _ngram_group(f, merged, [])
            writer = CountsWriter(out, merged, dense, [], ngram_memory)
            writer._merge_into(group, [src["ngrams"] for src in files if "ngrams" in src])

        _atomic_h5(out, write)
    finally:
        for handle in files:
            handle.close()
    return out
