"""The bounded n-gram mode in the store (docs/store-schema.md): pass-1 summaries, pass-2 counts.

``summaries/layer{l}/k{k}``: the Misra-Gries summary (group ``by_neuron``: datasets ``offsets``
[F+1], ``key``, ``count``, each in the smallest unsigned integer type that holds it, neuron n's rows
at ``offsets[n]:offsets[n+1]`` with keys ascending; plus ``delta`` and ``mass`` [F], attr
``capacity``; stores written before 2026-12-02 hold a ``table`` group sorted by (key, neuron)
instead, still read). ``counted/layer{l}/k{k}``: pass 2's exact counts (a table group plus
``rare_limit`` [F]); the ``counted`` group's attrs hold the settings that planned it. A store
snapshot writes ``summaries`` anew, copying from the snapshot it replaces what has not changed
(unfolded summaries, earlier pending parts); ``counted`` exists only in a finished store whose
second pass ran.
``counted`` holds only the neurons pass 2 counted (``counted_neurons``: cut and possible detector
candidates); the others are read from their summary (attr ``uncounted_from_summary``; stores
written before it hold every neuron there).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from fastneurons.hdf5_chunks import COMPRESSION, write_column
from fastneurons.ngrams import runs as ngram_runs
from fastneurons.ngrams.accumulator import RawRows, Table, merge_many, merge_two
from fastneurons.ngrams.bounded import ByNeuron, HeldTable, Pending, Summary, summary_rows
from fastneurons.ngrams.by_neuron import packed_in_scratch
from fastneurons.store.format import Header, StoreError, _atomic_h5, _write_json_attr, read_header, table_path

SUMMARIES = "summaries"
COUNTED = "counted"


def is_bounded(meta: dict) -> bool:
    """Whether a store's metadata says it was recorded in the bounded n-gram mode."""
    return meta.get("ngram_mode", "exact") == "bounded"


def write_summaries(f: h5py.File, summaries: dict, pending: dict | None = None, unfolded: dict | None = None,
                    folds: dict | None = None, previous: h5py.File | None = None) -> None:
    """Write {(layer, k): Summary} under ``summaries/`` of an open (new) file; a snapshot of a running
    recording adds its events not yet folded: ``pending`` {layer: Pending} (raw chunks, one per
    snapshot since the last fold, oldest first), ``unfolded`` {layer: events} and ``folds`` {layer:
    folds so far}.

    What the ``previous`` snapshot of the same recording already holds is copied from it chunk by
    chunk (no deflate): a summary whose layer has not folded since (same ``folds``), and the pending
    parts it wrote. So a snapshot deflates only what changed since the last one."""
    root = f.require_group(SUMMARIES)
    reusable = {}  # layer -> its group in the previous snapshot, when the layer has not folded since
    for (layer, k), summary in summaries.items():
        generation = (folds or {}).get(layer)
        if layer not in reusable:
            before = previous.get(f"{SUMMARIES}/layer{layer}") if previous is not None else None
            reusable[layer] = before if before is not None and generation is not None \
                and before.attrs.get("folds") == generation else None
            layer_group = root.require_group(f"layer{layer}")
            if generation is not None:
                layer_group.attrs["folds"] = int(generation)
        group = root.create_group(table_path(layer, k))
        before = reusable[layer].get(f"k{k}") if reusable[layer] is not None else None
        if before is not None and _same_summary(before, summary):
            for name in ("by_neuron", "delta", "mass"):
                previous.copy(before[name], group, name)
        else:
            _write_by_neuron(group.create_group("by_neuron"), summary.rows)
            group.create_dataset("delta", data=summary.delta)
            group.create_dataset("mass", data=summary.mass)
        group.attrs["capacity"] = int(summary.capacity)
        group.attrs["unfolded"] = int((unfolded or {}).get(layer, 0))
        tables = pending[layer].tables.get(k, []) if pending and layer in pending else []
        if tables:  # a resumed run's pending tables from a snapshot written before 2026-12-06
            _write_parts(group.create_group("pending"), tables, before, _write_table_part)
    for layer, state in (pending or {}).items():
        if state.chunks:
            _write_parts(root[f"layer{layer}"].create_group("pending"), state.chunks, reusable.get(layer),
                         _write_chunk)


def _same_summary(group: h5py.Group, summary: Summary) -> bool:
    """A cheap check that a stored summary group holds ``summary`` (its shape and mass)."""
    rows = group.get("by_neuron")
    return (rows is not None and rows["key"].shape == (summary.rows.rows,) and int(group.attrs["capacity"])
            == summary.capacity and np.array_equal(group["mass"][()], summary.mass))


def _write_parts(group: h5py.Group, parts: list, before: h5py.Group | None, write) -> None:
    """Pending parts as ``pending/0``, ``pending/1``, ... (``write(group, part)``); those the previous
    snapshot of this fold wrote already (``before``: same index, same size) are copied from it."""
    old = before.get("pending") if before is not None else None
    for index, part in enumerate(parts):
        name = str(index)
        if old is not None and name in old and old[name].attrs.get("size") == _part_size(part):
            old.file.copy(old[name], group, name)
        else:
            write(group.create_group(name), part)
            group[name].attrs["size"] = _part_size(part)


def _part_size(part) -> int:
    return int(part.rows) if isinstance(part, Table) else int(part.num_rows)


def _write_table_part(group: h5py.Group, table: Table) -> None:
    ngram_runs.write_table(group, table, check=False)


def _write_chunk(group: h5py.Group, chunk: RawRows) -> None:
    """A raw pending chunk: ``bits`` [R * W] (attr ``words``), and per order ``rows_k<k>``, ``keys_k<k>``."""
    _write_compressed(group, "bits", chunk.bits.reshape(-1))
    group.attrs["words"] = int(chunk.bits.shape[1])
    for k in chunk.rows:
        _write_compressed(group, f"rows_k{k}", chunk.rows[k])
        _write_compressed(group, f"keys_k{k}", chunk.keys[k])


def _write_compressed(group: h5py.Group, name: str, column: np.ndarray, dtype=None) -> None:
    """``column`` as a gzip dataset (stored as ``dtype``, default its own)."""
    options = COMPRESSION if column.size else {}
    chunks = {"chunks": (max(1, min(ngram_runs.CHUNK_ROWS, column.size)),)} if options else {}
    dtype = column.dtype if dtype is None else dtype
    write_column(group.create_dataset(name, shape=column.shape, dtype=dtype, **chunks, **options), column)


def _read_chunk(group: h5py.Group) -> RawRows:
    words = int(group.attrs["words"])
    bits = group["bits"][()].astype(np.uint64).reshape(-1, words)
    orders = sorted(int(name[len("rows_k"):]) for name in group if name.startswith("rows_k"))
    rows = {k: group[f"rows_k{k}"][()].astype(np.int64) for k in orders}
    if any(r.size and (r.min() < 0 or r.max() >= bits.shape[0]) for r in rows.values()):
        raise StoreError(f"{group.name}: pending rows outside the chunk's bit rows (corrupt store)")
    return RawRows(bits, rows, {k: group[f"keys_k{k}"][()].astype(np.uint64) for k in orders})


def _narrow_dtype(values: np.ndarray) -> np.dtype:
    """The smallest unsigned dtype that holds these non-negative integers (fewer bytes to gzip and
    store; readers widen them again); their own dtype when some are negative."""
    if values.size and values.dtype.kind == "i" and int(values.min()) < 0:
        return values.dtype
    top = int(values.max()) if values.size else 0
    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)


def _write_by_neuron(group: h5py.Group, rows) -> None:
    """A summary's rows (``ByNeuron``, or a running accumulator's ``Slots``: packed into scratch
    arrays, one summary at a time) as ``offsets``, ``key`` and ``count``, narrowed chunk by chunk."""
    rows = packed_in_scratch(rows)
    group.create_dataset("offsets", data=rows.offsets)
    _write_compressed(group, "key", rows.key, _narrow_dtype(rows.key))
    _write_compressed(group, "count", rows.count, _narrow_dtype(rows.count))


def _read_rows(group: h5py.Group, num_neurons: int, k: int) -> tuple:
    """(ByNeuron, Table or None) of a summary group in either layout."""
    if "by_neuron" in group:
        rows = group["by_neuron"]
        offsets = rows["offsets"][()].astype(np.int64)
        if offsets.size != num_neurons + 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any() \
                or offsets[-1] != rows["key"].shape[0] or rows["count"].shape != rows["key"].shape:
            raise StoreError(f"{group.name}: summary rows with inconsistent offsets (corrupt store)")
        return ByNeuron(offsets, rows["key"][()].astype(np.uint64), rows["count"][()].astype(np.int64)), None
    table = ngram_runs.read_table(group["table"])
    table.order = k
    return ByNeuron.of(table, num_neurons), table


def read_summaries(f: h5py.File, header: Header, path) -> dict:
    """{(layer, k): Summary} of a bounded store (every n-gram layer and order of its header)."""
    out = {}
    for layer in header.ngram_layers:
        for k in header.orders:
            if f"{SUMMARIES}/{table_path(layer, k)}" not in f:
                raise StoreError(f"{path}: bounded store without its summary {SUMMARIES}/{table_path(layer, k)} "
                                 "(corrupt or not finished)")
            out[(layer, k)] = _read_summary(f, layer, k)
    return out


def merge_summaries(parts: list) -> dict:
    """Summaries of disjoint shards, merged (Agarwal et al.): same keys in every part."""
    merged = dict(parts[0])
    for part in parts[1:]:
        merged = {key: merged[key].merge(part[key]) for key in merged}
    return merged


def write_counted(f: h5py.File, tables: dict, plans: dict, settings: dict) -> None:
    """Write pass 2's {(layer, k): Table} with their plans' rare limits and counted neurons under
    ``counted/`` (an empty plan: empty tables, which pass 1's final snapshot writes itself)."""
    root = f.create_group(COUNTED)
    _write_json_attr(root, "settings", settings)
    root.attrs["uncounted_from_summary"] = 1  # neurons pass 2 did not count are read from /summaries
    root.attrs["empty_plan"] = int(all(plan.empty for plan in plans.values()))
    for (layer, k), table in tables.items():
        group = root.create_group(table_path(layer, k))
        ngram_runs.write_table(group.create_group("table"), table, check=False)
        group.create_dataset("rare_limit", data=plans[(layer, k)].rare_limit)
        group.create_dataset("counted_neurons", data=plans[(layer, k)].counted)


def has_counted(f: h5py.File) -> bool:
    return COUNTED in f


def empty_plan_settings(f: h5py.File) -> dict | None:
    """The plan settings under which the store's pass 2 had nothing to count (None: it had, or has
    not run)."""
    if COUNTED not in f or not f[COUNTED].attrs.get("empty_plan", 0):
        return None
    return json.loads(f[COUNTED].attrs["settings"])


def _summary_parts(f: h5py.File, layer: int, k: int) -> tuple:
    """(Summary, Pending of the layer, events pending, folds) of (layer, k) as a snapshot saved them."""
    group = f[f"{SUMMARIES}/{table_path(layer, k)}"]
    delta, mass = group["delta"][()].astype(np.int64), group["mass"][()].astype(np.int64)
    rows, table = _read_rows(group, delta.size, k)
    summary = Summary(rows, delta, mass, int(group.attrs["capacity"]), k, table)
    tables = []
    if "pending" in group:  # exact tables: a snapshot written before 2026-12-06 (one table), or a
        pending = group["pending"]  # resumed run's copy of them (parts)
        for sub in ([pending] if "key" in pending else [pending[name] for name in sorted(pending, key=int)]):
            part = ngram_runs.read_table(sub)
            part.order = k
            tables.append(part)
    layer_group = f[f"{SUMMARIES}/layer{layer}"]
    chunks = [_read_chunk(layer_group["pending"][name]) for name in sorted(layer_group["pending"], key=int)] \
        if "pending" in layer_group else []
    folds = int(layer_group.attrs.get("folds", group.attrs.get("folds", 0)))
    return summary, Pending(chunks, {k: tables}), int(group.attrs.get("unfolded", 0)), folds


def _read_summary(f: h5py.File, layer: int, k: int) -> Summary:
    """The summary of (layer, k) with any pending events of an unfinished snapshot folded in (Lemma 1
    holds for it as for any absorb)."""
    summary, pending, _, _ = _summary_parts(f, layer, k)
    parts = [part for part in pending.exact_tables(k) if part.rows]
    return summary.absorb(merge_many(parts)) if parts else summary


def read_exact_summary(f: h5py.File, layer: int, k: int) -> Table | None:
    """The exact ``ngram_active`` table of (layer, k) when its summary never cut a neuron, else None."""
    summary = _read_summary(f, layer, k)
    return summary.table if not summary.delta.any() else None


def read_held(f: h5py.File, layer: int, k: int, path) -> HeldTable:
    """The analyses' view of a bounded store's (layer, k): pass 2's exact counts of the neurons it
    counted, and the summary's rows of the others (exact for neurons never cut, within ``delta`` for
    the rest: ``approximate``), with the bounds."""
    if COUNTED not in f:
        raise StoreError(f"{path}: a bounded store whose second pass has not run (it holds summaries, not "
                         f"counts): run `fastneurons second-pass {path}` first")
    summary = _read_summary(f, layer, k)
    counted = f[f"{COUNTED}/{table_path(layer, k)}"]
    table = ngram_runs.read_table(counted["table"])
    table.order = k
    approximate = None
    if f[COUNTED].attrs.get("uncounted_from_summary", 0):
        was_counted = counted["counted_neurons"][()].astype(bool)
        table = merge_two(table, summary_rows(summary, was_counted))  # disjoint neurons: a union
        approximate = (summary.delta > 0) & ~was_counted
    return HeldTable(table.key, table.neuron, table.count, summary.mass, summary.delta,
                     counted["rare_limit"][()].astype(np.int64), approximate)


def read_resume_state(path) -> dict | None:
    """{layer: ({k: Summary}, Pending, events pending, folds)} of the bounded store at
    ``path``, as its last snapshot saved them (None if it holds no summaries or does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if SUMMARIES not in f:
            return None
        header = read_header(f, path)
        out = {}
        for layer in header.ngram_layers:
            parts = {k: _summary_parts(f, layer, k) for k in header.orders}
            first = next(iter(parts.values()))
            pending = Pending(first[1].chunks, {k: p[1].tables[k] for k, p in parts.items()})
            out[layer] = ({k: p[0] for k, p in parts.items()}, pending, first[2], first[3])
        return out


def write_resume_state(f: h5py.File, states, previous_path=None) -> None:
    """Write {layer: (summaries, Pending, unfolded, folds)} (``read_resume_state``'s form), or such
    (layer, state) pairs taken one at a time, into a snapshot, layer by layer, copying what has not
    changed from the snapshot at ``previous_path`` that this one replaces (see ``write_summaries``;
    written anew when there is none or it cannot be read)."""
    try:
        previous = h5py.File(previous_path, "r") if previous_path is not None and Path(previous_path).exists() \
            else None
    except OSError:
        previous = None
    try:
        for layer, (summaries, pending, unfolded, folds) in (states.items() if isinstance(states, dict) else states):
            write_summaries(f, {(layer, k): summary for k, summary in summaries.items()}, {layer: pending},
                            {layer: unfolded}, {layer: folds}, previous)
    finally:
        if previous is not None:
            previous.close()


def store_is_bounded(path) -> bool:
    """Whether the store at ``path`` was recorded in bounded mode with n-gram layers (it needs pass 2)."""
    with h5py.File(path, "r") as f:
        header = read_header(f, Path(path))
    return is_bounded(header.meta) and bool(header.ngram_layers)


def save_pass2_state(path, fingerprint: str, units, states: dict) -> None:
    """Atomically save an interrupted pass 2: its units and {(layer, k): (counts, rare Table)}."""
    def write(f):
        f.attrs["fingerprint"] = fingerprint
        f.create_dataset("units", data=np.asarray(units, dtype=np.int64))
        for (layer, k), (counts, rare) in states.items():
            group = f.create_group(table_path(layer, k))
            group.create_dataset("counts", data=counts)
            ngram_runs.write_table(group.create_group("rare"), rare, compress=False, check=False)

    _atomic_h5(Path(path), write)


def load_pass2_state(path, fingerprint: str, orders_by_layer: dict):
    """(units, {(layer, k): (counts, rare Table)}) saved by ``save_pass2_state`` for the same plan, or
    None when there is no such file or it was saved for another plan (OSError/KeyError: unreadable)."""
    path = Path(path)
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if f.attrs.get("fingerprint") != fingerprint:
            return None
        states = {(layer, k): (f[table_path(layer, k)]["counts"][()], ngram_runs.read_table(f[table_path(layer, k)]["rare"]))
                  for layer, orders in orders_by_layer.items() for k in orders}
        return set(f["units"][()].tolist()), states


def write_second_pass(path, tables: dict, plans: dict, settings: dict) -> None:
    """Rewrite the store at ``path`` atomically with pass 2's exact counts added under ``counted/``."""
    path = Path(path)

    def write(f):
        with h5py.File(path, "r") as src:
            for key, value in src.attrs.items():
                f.attrs[key] = value
            for name in src:
                if name != COUNTED:
                    src.copy(src[name], f, name)
        write_counted(f, tables, plans, settings)

    _atomic_h5(path, write)
