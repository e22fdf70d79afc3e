"""The pending n-gram runs of a partial store: which units each holds, checking them, and what a loss costs.

A snapshot lists its runs (``pending_runs``) and, per run, the units whose n-grams it holds
(``run_units``). A resume checks every listed run before any work; when some are missing or damaged,
the units they held (and every run sharing one of those units, since a unit's tables can span two
runs) lose their n-gram tables and must be recorded again; their dense counts are kept
(docs/store-schema.md, "Lost or damaged runs").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from fastneurons.store.format import Header, runs_dir, seen_path, table_path


def ngram_subs(header: Header) -> list:
    """The table groups a store with this header holds under /ngrams (per layer and order, and seen)."""
    bounded = header.meta.get("ngram_mode", "exact") == "bounded"  # no full tables: summaries live apart
    subs = [] if bounded else [table_path(layer, k) for layer in header.ngram_layers for k in header.orders]
    return subs + ([seen_path(k) for k in header.orders] if header.ngram_layers else [])


def read_pending(f: h5py.File) -> tuple[list, dict]:
    """(pending run names, {run: units}) of an open store; a run of a store written before
    ``run_units`` existed maps to None (its units are unknown)."""
    if "ngrams" not in f:
        return [], {}
    attrs = f["ngrams"].attrs
    pending = json.loads(attrs.get("pending_runs", "[]"))
    units = json.loads(attrs.get("run_units", "{}"))
    return pending, {name: units.get(name) for name in pending}


def run_problem(path: Path, header: Header) -> Optional[str]:
    """Why the run file ``path`` cannot be used ('missing', 'damaged (...)'), or None when it reads."""
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            group = f["ngrams"]
            for sub in ngram_subs(header):
                if sub not in group:
                    continue
                table = group[sub]
                rows = int(table.attrs["rows"])
                for name in ("key", "count") + (("neuron",) if "neuron" in table else ()):
                    column = table[name]
                    if column.shape != (rows,):
                        return f"damaged ({sub}/{name} has {column.shape[0]} rows, not {rows})"
                    if rows:
                        column[rows - 1]  # reads the last chunk: a cut-off file fails here
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        return f"damaged ({str(err).splitlines()[0][:160]})"
    return None


def lost_runs(store: Path, header: Header, pending: list) -> dict:
    """{run: problem} for every pending run of ``store`` that is missing or damaged."""
    directory = runs_dir(store)
    problems = {name: run_problem(directory / name, header) for name in pending}
    return {name: problem for name, problem in problems.items() if problem}


def units_to_rerecord(lost: list, run_units: dict, held: np.ndarray) -> tuple[list, list]:
    """(runs to drop, units whose n-grams must be recorded again) after losing the runs ``lost``.

    A lost run of unknown units costs every held unit; a kept run that shares a unit with a dropped
    one is dropped too (that unit is recorded again whole), until no run shares a lost unit."""
    everything = set(np.flatnonzero(held).tolist())
    dropped, units = set(lost), set()
    for name in lost:
        units |= everything if run_units.get(name) is None else set(run_units[name])
    changed = True
    while changed:
        changed = False
        for name, held_units in run_units.items():
            if name not in dropped and (held_units is None or units & set(held_units)):
                dropped.add(name)
                units |= everything if held_units is None else set(held_units)
                changed = True
    return sorted(dropped), sorted(units & everything)
