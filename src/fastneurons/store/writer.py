"""Writing a store while recording: ``CountsWriter`` creates or resumes it, commits crash-safe
snapshots, spills n-gram runs, compacts them and finalizes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from fastneurons.ngrams import runs as ngram_runs
from fastneurons.ngrams.accumulator import SeenTable, Table
from fastneurons.progress import each
from fastneurons.store.format import (DenseCounts, Header, StoreError, _atomic_h5, _check_file, _ngram_group, _write_dense,
                     _write_header, _write_json_attr, compatibility_problem, read_dense, read_header, runs_dir,
                     seen_path, table_path)


def merge_ngram_groups(dest: h5py.Group, sources: list, header: Header, ngram_memory: int,
                       compress: bool = True, progress=None) -> None:
    """Every table the header asks for, merged from the `ngrams` groups `sources` into `dest` (bounded memory);
    a table no source holds (e.g. an empty shard) is written empty, of the right kind.
    ``progress(tables, desc)``, when given, wraps the list of tables (e.g. a tqdm bar)."""
    bounded = header.meta.get("ngram_mode", "exact") == "bounded"  # no full tables: summaries live apart
    subs = [] if bounded else [table_path(layer, k) for layer in header.ngram_layers for k in header.orders]
    subs += [seen_path(k) for k in header.orders] if header.ngram_layers else []
    for sub in each(progress, subs, "merge n-grams"):
        groups = [src[sub] for src in sources if sub in src]
        if groups:
            ngram_runs.merge_tables(groups, dest.create_group(sub), ngram_memory, compress=compress)
        else:
            k = int(sub[-1])
            empty = SeenTable.empty(k) if sub.startswith("seen") else Table.empty(k)
            ngram_runs.write_table(dest.create_group(sub), empty)


class CountsWriter:
    """Owns an output store while recording: commits snapshots, spills runs, finalizes."""

    def __init__(self, path, header: Header, dense: DenseCounts, pending: list, ngram_memory: int,
                 compress_runs: bool = False):
        self.path = Path(path)
        self.compress_runs = compress_runs  # gzip the intermediate runs: ~13x less disk, slower commits
        self.previous_meta = None  # set by resume: the metadata the store held before
        self.header = header
        self.dense = dense
        self.pending = list(pending)
        self.ngram_memory = ngram_memory
        self.complete = False
        self.progress = None  # progress(tables, desc) -> iterable: how merges show progress (None: silently)
        self.extra_groups = None  # callable(h5py.File): more state every snapshot writes (bounded summaries)
        self._next_run = 1 + max((int(name[4:10]) for name in self.pending if name[4:10].isdigit()), default=0)

    # -- opening
    @classmethod
    def create(cls, path, header: Header, ngram_memory: int, overwrite: bool = False,
               compress_runs: bool = False) -> "CountsWriter":
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} exists: pass --resume to continue it, or choose another --out")
        if runs_dir(path).exists():
            shutil.rmtree(runs_dir(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = header.meta
        dense = DenseCounts.zeros(len(meta["layers"]), meta["num_neurons"], meta["max_positions"],
                                  len(header.domain_labels), positions=meta["positions"])
        writer = cls(path, header, dense, [], ngram_memory, compress_runs)
        writer._snapshot(complete=False, empty=True)
        return writer

    @classmethod
    def resume(cls, path, header: Header, ngram_memory: int, compress_runs: bool = False,
               extra_groups=None) -> "CountsWriter":
        """Continue ``path``: its settings and corpus must equal ``header``'s; leftovers are removed.

        ``extra_groups`` (see ``__init__``) is in place before the first snapshot this writes."""
        path = Path(path)
        _check_file(path)
        try:
            with h5py.File(path, "r") as f:
                old = read_header(f, path)
                dense = read_dense(f, path)
                complete = bool(f.attrs["complete"])
                pending = json.loads(f["ngrams"].attrs.get("pending_runs", "[]")) if "ngrams" in f else []
                has_tables = "ngrams" in f and len(f["ngrams"].keys()) > 0  # seen alone too (bounded mode)
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
        writer = cls(path, header, dense, pending, ngram_memory, compress_runs)
        writer.previous_meta = old.meta  # the last run's metadata, for the caller's checks
        writer.extra_groups = extra_groups
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
                ngram_runs.write_table(group.create_group(table_path(layer, k)), table, self.compress_runs,
                                       check=False)
            for k, table in seen.items():
                ngram_runs.write_table(group.create_group(seen_path(k)), table, self.compress_runs, check=False)

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
        elif len(self.pending) > 16:
            self.compact()  # its one snapshot also commits the above
        else:
            self._snapshot(complete=False)

    def compact(self) -> None:
        """Merge all pending runs into one (bounded memory), so the folder does not grow without end.

        Crash-safe: the merged run belongs to the store only once the snapshot lists it instead of the old ones."""
        old = list(self.pending)
        name = self._new_run_name()
        directory = runs_dir(self.path)
        files = [h5py.File(directory / run, "r") for run in old]
        try:
            def write(f):
                group = _ngram_group(f, self.header, [])
                merge_ngram_groups(group, [src["ngrams"] for src in files], self.header, self.ngram_memory,
                                   compress=self.compress_runs, progress=self.progress)

            _atomic_h5(directory / name, write)
        finally:
            for handle in files:
                handle.close()
        self.pending = [name]
        self._snapshot(complete=False)
        for run in old:
            (directory / run).unlink(missing_ok=True)

    def _snapshot(self, complete: bool, empty: bool = False) -> None:
        def write(f):
            _write_header(f, self.header, complete)
            _write_dense(f, self.header, self.dense, final=False, empty=empty)
            _ngram_group(f, self.header, self.pending)
            if self.extra_groups is not None:
                self.extra_groups(f)

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
                merge_ngram_groups(group, [src["ngrams"] for src in files], self.header, self.ngram_memory,
                                   progress=self.progress)
                if self.extra_groups is not None:
                    self.extra_groups(f)

            _atomic_h5(self.path, write)
        finally:
            for handle in files:
                handle.close()
        self.pending = []
        self.complete = True
        if directory.exists():
            shutil.rmtree(directory)
