"""Reading a store: ``open_counts(path) -> Counts``, a read-only view of a finished or partial store.

Analyses need nothing else from the store; pending n-gram runs of a partial store are merged on read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from fastneurons.ngrams import runs as ngram_runs
from fastneurons.ngrams.accumulator import Table, merge_many
from fastneurons.ngrams.bounded import HeldTable
from fastneurons.store import summaries as bounded_store
from fastneurons.store.format import DenseCounts, StoreError, _check_file, read_dense, read_header, runs_dir, seen_path, table_path
from fastneurons.store.pending import read_pending, run_problem

_SNAPSHOT_TRIES = 5


class Counts:
    """Read-only view of a store (finished or partial): the arrays the analyses need.

    Dense arrays are read on demand; n-gram tables of a partial store are merged from its
    pending run files on the fly.
    """

    def __init__(self, path):
        self.path = Path(path)
        _check_file(self.path)
        for attempt in range(_SNAPSHOT_TRIES):  # a recording may commit while we open: take the next snapshot
            self._open_snapshot()
            if not self.lost_runs or attempt == _SNAPSHOT_TRIES - 1 or not self._replaced():
                break
            self.close()
        self._layer_index = {layer: i for i, layer in enumerate(self.header.layers)}

    def _open_snapshot(self) -> None:
        """Open the store and every run its snapshot lists: open files stay readable after a recording
        replaces the store or removes runs, so this view is one consistent snapshot."""
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(f"{self.path}: cannot open ({err})") from err
        self._inode = os.fstat(self._file.id.get_vfd_handle()).st_ino
        try:
            self.header = read_header(self._file, self.path)
            self.complete = bool(self._file.attrs["complete"])
            self._pending, _ = read_pending(self._file)
        except (KeyError, OSError) as err:
            self._file.close()
            raise StoreError(f"{self.path}: corrupt store ({err})") from err
        self._runs, self.lost_runs = {}, {}
        for name in self._pending:
            problem = run_problem(runs_dir(self.path) / name, self.header)
            if problem is None:
                try:
                    self._runs[name] = h5py.File(runs_dir(self.path) / name, "r")
                    continue
                except OSError as err:
                    problem = f"damaged ({err})"
            self.lost_runs[name] = problem  # run name -> 'missing' or 'damaged (...)'

    def _replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return False

    def close(self) -> None:
        for run in self._runs.values():
            run.close()
        self._runs = {}
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
        if self.lost_runs:
            name, problem = next(iter(self.lost_runs.items()))
            raise StoreError(f"{self.path}: its n-gram run {name} is {problem}: continue the recording with "
                             "record --resume --rerecord-lost-runs")
        for run in self._runs.values():
            if sub in run["ngrams"]:
                tables.append(ngram_runs.read_table(run["ngrams"][sub]))
        if not tables:
            raise KeyError(f"no n-gram table {sub} in {self.path}")
        return merge_many(tables)

    @property
    def ngram_mode(self) -> str:
        """'exact' (full ngram_active tables) or 'bounded' (summaries + pass-2 counts)."""
        return "bounded" if bounded_store.is_bounded(self.header.meta) else "exact"

    @property
    def second_pass_done(self) -> bool:
        """Bounded mode: whether pass 2 has run, or pass 1 found it had nothing to count (always True
        for exact tables)."""
        return self.ngram_mode == "exact" or bounded_store.has_counted(self._file)

    @property
    def second_pass_state(self) -> str:
        """'done', 'not needed' (bounded: pass 1 found nothing for it to count) or 'not run'."""
        if not self.second_pass_done:
            return "not run"
        empty = self.ngram_mode == "bounded" and bounded_store.empty_plan_settings(self._file) is not None
        return "not needed" if empty else "done"

    def _check_table(self, layer: int, k: int) -> None:
        if layer not in self.ngram_layers or k not in self.ngram_orders:
            raise KeyError(f"no n-gram table for layer {layer}, order {k} "
                           f"(layers {self.ngram_layers}, orders {self.ngram_orders})")

    def ngram_active(self, layer: int, k: int):
        """(key uint64, neuron uint32, count int64) sorted by (key, neuron): SPEC ngram_active[k]."""
        self._check_table(layer, k)
        if self.ngram_mode == "bounded":
            table = bounded_store.read_exact_summary(self._file, layer, k)
            if table is None:
                raise StoreError(f"{self.path} was recorded with --ngrams bounded and its summary of layer {layer}, "
                                 f"order {k} cut some neurons: it holds no full ngram_active table; read "
                                 "ngram_table(layer, k) (exact counts of the pairs held, with bounds)")
            return table.key, table.neuron, table.count
        table = self._merged(table_path(layer, k))
        return table.key, table.neuron, table.count

    def ngram_table(self, layer: int, k: int) -> HeldTable:
        """What the analyses read in either mode: exact counts of the pairs held, A_k(n), and the bound
        of every pair left out (all zero for exact tables)."""
        self._check_table(layer, k)
        if self.ngram_mode == "bounded":
            return bounded_store.read_held(self._file, layer, k, self.path)
        key, neuron, count = self.ngram_active(layer, k)
        return HeldTable.exact(Table(key, neuron, count, k), self.num_neurons)

    def ngram_seen(self, k: int):
        """(key uint64, count int64) sorted by key: SPEC ngram_seen[k]."""
        if k not in self.ngram_orders:
            raise KeyError(f"no n-gram order {k} (orders {self.ngram_orders})")
        table = self._merged(seen_path(k))
        return table.key, table.count


def open_counts(path) -> Counts:
    """Open a counts file for reading (no model or corpus needed)."""
    return Counts(path)
