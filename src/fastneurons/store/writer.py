"""Writing a store while recording: ``CountsWriter`` creates or resumes it, commits crash-safe
snapshots, spills n-gram runs, compacts them and finalizes.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from fastneurons.ngrams import runs as ngram_runs
from fastneurons.ngrams.accumulator import SeenTable, Table
from fastneurons.progress import each
from fastneurons.store.format import (DenseCounts, Header, StoreError, _atomic_h5, _check_file, _ngram_group,
                                      _write_dense, _write_header, _write_json_attr, check_output_path,
                                      compatibility_problem, read_dense, read_header, runs_dir, seen_path, table_path)
from fastneurons.store.pending import lost_runs, ngram_subs, read_pending, units_to_rerecord


def merge_ngram_groups(dest: h5py.Group, sources: list, header: Header, ngram_memory: int,
                       compress: bool = True, progress=None) -> None:
    """Every table the header asks for, merged from the `ngrams` groups `sources` into `dest` (bounded memory);
    a table no source holds (e.g. an empty shard) is written empty, of the right kind.
    ``progress(tables, desc)``, when given, wraps the list of tables (e.g. a tqdm bar)."""
    for sub in each(progress, ngram_subs(header), "merge n-grams"):
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
                 compress_runs: bool = False, run_units: Optional[dict] = None):
        self.path = Path(path)
        self.run_units = dict(run_units or {})  # run name -> the units whose n-grams it holds (None: unknown)
        self.lost_units = []  # set by resume: units whose n-gram tables were lost, to be recorded again
        self.compress_runs = compress_runs  # gzip the intermediate runs: ~13x less disk, slower commits
        self.previous_meta = None  # set by resume: the metadata the store held before
        self.header = header
        self.dense = dense
        self.pending = list(pending)
        self.ngram_memory = ngram_memory
        self.complete = False
        self.progress = None  # progress(tables, desc) -> iterable: how merges show progress (None: silently)
        self.extra_groups = None  # callable(h5py.File, final): more state every snapshot writes (bounded summaries)
        self._next_run = 1 + max((int(name[4:10]) for name in self.pending if name[4:10].isdigit()), default=0)

    # -- opening
    @classmethod
    def create(cls, path, header: Header, ngram_memory: int, overwrite: bool = False,
               compress_runs: bool = False) -> "CountsWriter":
        path = Path(path)
        if not overwrite:
            cls.check_new(path)
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
               extra_groups=None, rerecord_lost: bool = False) -> "CountsWriter":
        """Continue ``path``: its settings and corpus must equal ``header``'s; leftovers are removed.

        ``extra_groups`` (see ``__init__``) is in place before the first snapshot this writes. Its
        pending runs are checked first: lost ones are refused unless ``rerecord_lost``, which drops
        them and sets ``lost_units`` (the units whose n-gram tables the caller must record again)."""
        path = Path(path)
        stored = _read_for_resume(path)
        old, pending, run_units = stored.header, stored.pending, stored.run_units
        problem = compatibility_problem(old, header)
        if problem:
            raise StoreError(f"cannot resume {path}: {problem}")
        if [c.fingerprint for c in old.corpora] != [c.fingerprint for c in header.corpora]:
            raise StoreError(f"cannot resume {path}: the corpus differs from the one it was recorded on: "
                             f"{corpus_difference(old.corpora, header.corpora)}")
        dropped, lost_units = check_runs(path, old, pending, run_units, rerecord_lost)
        header = Header(header.meta, header.vocab, old.corpora, old.domain_labels)
        directory = runs_dir(path)
        kept = [name for name in pending if name not in dropped]
        for leftover in directory.glob("*") if directory.exists() else []:
            if leftover.name not in kept:
                leftover.unlink()
        writer = cls(path, header, stored.dense, kept, ngram_memory, compress_runs, run_units)
        writer._next_run = max(writer._next_run, 1 + max((int(n[4:10]) for n in pending if n[4:10].isdigit()), default=0))
        writer.previous_meta = old.meta  # the last run's metadata, for the caller's checks
        writer.extra_groups = extra_groups
        writer.lost_units = lost_units
        if stored.complete and stored.has_tables:
            writer._tables_to_run()
        return writer

    @staticmethod
    def check_new(path) -> None:
        """Refuse a new store's path that is a directory or an existing file, naming which."""
        path = Path(path)
        check_output_path(path, "--out")
        if path.exists() and not h5py.is_hdf5(path):
            raise StoreError(f"{path} exists and is not a counts store: choose another --out")
        if path.exists():
            raise StoreError(f"{path} exists: pass --resume to continue it, or choose another --out")

    @staticmethod
    def check_resumable(path, rerecord_lost: bool = False) -> None:
        """What ``resume`` checks in the store alone (readable, its runs intact), without a model: a
        resume runs it before loading anything, so a store that cannot be continued costs no work."""
        path = Path(path)
        check_output_path(path, "--out")
        stored = _read_for_resume(path)
        check_runs(path, stored.header, stored.pending, stored.run_units, rerecord_lost)

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
        self.run_units[name] = np.flatnonzero(self.header.corpora[0].units).tolist()
        self._snapshot(complete=False)

    def holds(self, corpus_index: int, unit: int) -> bool:
        return bool(self.header.corpora[corpus_index].units[unit])

    # -- committing
    def _new_run_name(self) -> str:
        name = f"run-{self._next_run:06d}.h5"
        self._next_run += 1
        return name

    def write_run(self, tables: dict, seen: dict, units=None) -> str:
        """Write n-gram tables {(layer, k): Table} and {k: SeenTable} as a new immutable run file.

        ``units``: the units whose n-grams it holds (all or part of them), so that a lost run costs
        only those. The run belongs to the store only once a later ``commit`` lists it.
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
        self.run_units[name] = None if units is None else sorted(int(u) for u in units)
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
        units = [self.run_units.get(run) for run in old]
        self.run_units[name] = None if None in units else sorted(set().union(*map(set, units)))
        self.pending = [name]
        self._snapshot(complete=False)
        for run in old:
            (directory / run).unlink(missing_ok=True)

    def _snapshot(self, complete: bool, empty: bool = False) -> None:
        def write(f):
            _write_header(f, self.header, complete)
            _write_dense(f, self.header, self.dense, empty=empty)
            _ngram_group(f, self.header, self.pending, self.run_units)
            if self.extra_groups is not None:
                self.extra_groups(f, final=False)

        _atomic_h5(self.path, write)

    def finalize(self) -> None:
        """Merge every pending run into the store's own tables and mark it complete."""
        if self.lost_units:
            raise StoreError(f"{self.path}: the n-gram tables of units {self.lost_units[:5]} were lost and "
                             "not recorded again; the store cannot be finished")
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
                    self.extra_groups(f, final=True)

            _atomic_h5(self.path, write)
        finally:
            for handle in files:
                handle.close()
        self.pending = []
        self.complete = True
        if directory.exists():
            shutil.rmtree(directory)


@dataclass
class _Stored:
    """What a resume reads from the store it continues."""

    header: Header
    dense: DenseCounts
    complete: bool
    has_tables: bool
    pending: list
    run_units: dict


def _read_for_resume(path: Path) -> _Stored:
    check_output_path(path, "--out")
    _check_file(path)
    try:
        with h5py.File(path, "r") as f:
            pending, run_units = read_pending(f)
            has_tables = "ngrams" in f and len(f["ngrams"].keys()) > 0  # seen alone too (bounded mode)
            return _Stored(read_header(f, path), read_dense(f, path), bool(f.attrs["complete"]), has_tables,
                           pending, run_units)
    except OSError as err:
        raise StoreError(f"{path}: cannot be read ({err}); it cannot be resumed") from err


def check_runs(path: Path, header: Header, pending: list, run_units: dict, rerecord_lost: bool):
    """(runs to drop, units to record again) for the store's lost runs; refuses a loss without ``rerecord_lost``."""
    lost = lost_runs(path, header, pending)
    if not lost:
        return [], []
    dropped, units = units_to_rerecord(list(lost), run_units, header.corpora[0].units)
    if not rerecord_lost:
        named = ", ".join(f"{name} ({problem})" for name, problem in list(lost.items())[:3])
        more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
        raise StoreError(f"cannot resume {path}: n-gram run {named}{more}; continue with --resume "
                         f"--rerecord-lost-runs to record the n-grams of the {len(units)} units they held again "
                         "(their dense counts are kept)")
    return dropped, units


def corpus_difference(old: list, new: list) -> str:
    """Why a resumed corpus is not the recorded one, in the user's terms (files, labels, contents, settings)."""
    if len(old) != len(new):
        return f"the store holds {len(old)} corpora; one corpus is given"
    a, b = old[0].manifest, new[0].manifest
    was, now = a.get("domains", []), b.get("domains", [])
    if len(was) != len(now):
        return f"it was recorded on {len(was)} corpus files, {len(now)} are given now"
    for x, y in zip(was, now):
        if x.get("sha256") != y.get("sha256"):
            return f"the contents of {y.get('path')} differ from those of {x.get('path')} (files in recording order)"
        if x.get("label") != y.get("label"):
            return (f"domain {x.get('label')!r} is now labelled {y.get('label')!r}; the contents are the same "
                    f"(a domain is labelled by its file name unless LABEL=PATH): pass {x.get('label')}={y.get('path')}")
    settings = sorted(k for k in set(a.get("settings", {})) | set(b.get("settings", {}))
                      if a.get("settings", {}).get(k) != b.get("settings", {}).get(k))
    if settings:
        key = settings[0]
        return (f"the corpus setting {key!r} differs: {a['settings'].get(key)} recorded, "
                f"{b['settings'].get(key)} now (the token budget, tokenizer or BOS id changed)")
    return "its tokens differ (the tokenizer changed)"
