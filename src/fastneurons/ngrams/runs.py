"""N-gram tables on disk as sorted runs in HDF5 groups, their bounded-memory merge, and readers.

The store decides where runs live; this module decides how: datasets ``key`` (uint64), ``neuron``
(uint32, active tables only) and ``count`` (int64), chunked and compressed, attrs ``rows``, ``order``
and ``kind`` ("active" or "seen"). ``merge_tables`` is a streaming k-way merge that never holds much
more than ``memory_bytes`` of rows.
"""

from __future__ import annotations

import h5py
import numpy as np

from fastneurons.hdf5_chunks import COMPRESSION, write_column
from fastneurons.ngrams import kernels
from fastneurons.ngrams.accumulator import SeenTable, Table, merge_many, merge_two

CHUNK_ROWS = 1 << 16  # HDF5 chunk: 512 KiB of keys, fits h5py's default 1 MiB chunk cache
DEFAULT_MERGE_MEMORY = 1 << 30


def _columns(kind: str) -> dict[str, np.dtype]:
    if kind == "active":
        return {"key": np.dtype(np.uint64), "neuron": np.dtype(np.uint32), "count": np.dtype(np.int64)}
    if kind == "seen":
        return {"key": np.dtype(np.uint64), "count": np.dtype(np.int64)}
    raise ValueError(f"unknown n-gram table kind {kind!r} (expected 'active' or 'seen')")


def _kind_of(table) -> str:
    if isinstance(table, Table):
        return "active"
    if isinstance(table, SeenTable):
        return "seen"
    raise TypeError(f"expected a Table or SeenTable, got {type(table).__name__}")


def _create_columns(group: h5py.Group, kind: str, order: int, rows: int, growing: bool,
                    compress: bool = True) -> None:
    chunk = CHUNK_ROWS if growing else max(1, min(CHUNK_ROWS, rows))
    options = COMPRESSION if compress else {}
    for name, dtype in _columns(kind).items():
        if name in group:
            raise ValueError(f"{group.name}/{name} already exists; write each table into a fresh group")
        group.create_dataset(name, shape=(rows,), dtype=dtype, chunks=(chunk,),
                             maxshape=(None,), **options)
    group.attrs["kind"] = kind
    group.attrs["order"] = int(order)
    group.attrs["rows"] = int(rows)


def check_sorted(table) -> None:
    """Raise ValueError unless ``table`` is sorted by (key, neuron) (key for seen) without duplicates."""
    if table.rows < 2:
        return
    ordered = table.key[1:] > table.key[:-1]
    if isinstance(table, Table):
        ordered |= (table.key[1:] == table.key[:-1]) & (table.neuron[1:] > table.neuron[:-1])
    if not ordered.all():
        raise ValueError(f"table of order {table.order} is not sorted by (key, neuron) without "
                         "duplicates; build it with NgramAccumulator or merge_many")


def write_table(group: h5py.Group, table, compress: bool = True, check: bool = True) -> None:
    """Write a ``Table`` or ``SeenTable`` into an empty h5py group (datasets + attrs).

    ``compress=False`` suits intermediate runs that are read back once (no gzip round trip);
    ``check=False`` skips the sort check for tables sorted by construction (the accumulators' output).
    """
    kind = _kind_of(table)
    if check:
        check_sorted(table)
    _create_columns(group, kind, table.order, table.rows, growing=False, compress=compress)
    if table.rows:
        for name in _columns(kind):
            write_column(group[name], getattr(table, name))


def table_kind(group: h5py.Group) -> str:
    """'active' or 'seen' for a group written by ``write_table`` or ``merge_tables``."""
    kind = group.attrs.get("kind")
    if kind is None:
        kind = "active" if "neuron" in group else "seen"
    return str(kind)


def _make_table(kind: str, arrays: dict, order: int):
    if kind == "active":
        return Table(arrays["key"], arrays["neuron"], arrays["count"], order)
    return SeenTable(arrays["key"], arrays["count"], order)


def read_table(group: h5py.Group, start: int = 0, stop: int | None = None):
    """Read rows ``[start, stop)`` of a table group back as a ``Table`` or ``SeenTable``."""
    kind = table_kind(group)
    arrays = {name: group[name][start:stop] for name in _columns(kind)}
    return _make_table(kind, arrays, int(group.attrs.get("order", 0)))


def add_tables(a, b):
    """Sum of two in-memory tables of one kind (``Table`` or ``SeenTable``), still sorted.

    For many tables prefer ``merge_many`` (balanced), or ``merge_tables`` on disk."""
    if _kind_of(a) != _kind_of(b):
        raise TypeError(f"cannot add a {type(a).__name__} and a {type(b).__name__}")
    return merge_two(a, b)


class _Source:
    """Sequential reader of one sorted table group with a buffer of not-yet-merged rows."""

    def __init__(self, group: h5py.Group, kind: str):
        self.datasets = {name: group[name] for name in _columns(kind)}
        self.kind = kind
        self.rows = int(self.datasets["key"].shape[0])
        self.next_row = 0  # first row on disk not yet in the buffer
        self.buffer = {name: np.zeros(0, dtype) for name, dtype in _columns(kind).items()}

    @property
    def exhausted(self) -> bool:
        return self.next_row >= self.rows

    @property
    def buffered(self) -> int:
        return int(self.buffer["key"].size)

    def read_more(self, rows: int) -> None:
        stop = min(self.rows, self.next_row + max(1, rows))
        for name, dataset in self.datasets.items():
            fresh = dataset[self.next_row:stop]
            self.buffer[name] = np.concatenate((self.buffer[name], fresh))
        self.next_row = stop

    def take_below(self, bound):
        """Remove and return the buffered rows with key < bound (all rows when bound is None)."""
        cut = self.buffered if bound is None else int(np.searchsorted(self.buffer["key"], bound))
        taken = {name: array[:cut] for name, array in self.buffer.items()}
        self.buffer = {name: array[cut:] for name, array in self.buffer.items()}
        return _make_table(self.kind, taken, 0)


def _append(datasets: dict[str, h5py.Dataset], tables: list, kind: str, final: bool) -> tuple:
    """Append the rows of ``tables`` (in order) to the resizable ``datasets`` in whole chunks, so that
    ``write_column`` deflates them; the rows short of a chunk wait for the next call unless ``final``.
    Returns (rows added, [the table of rows kept back] or [])."""
    rows = sum(table.rows for table in tables)
    keep = 0 if final else rows % CHUNK_ROWS
    if rows == keep:
        return 0, tables
    arrays = {name: np.concatenate([getattr(table, name) for table in tables]) for name in datasets}
    start = datasets["key"].shape[0]
    for name, dataset in datasets.items():
        dataset.resize((start + rows - keep,))
        write_column(dataset, arrays[name][:rows - keep], first_row=start)
    kept = [_make_table(kind, {name: array[rows - keep:] for name, array in arrays.items()}, 0)] if keep else []
    return rows - keep, kept


def merge_tables(sources: list[h5py.Group], dest: h5py.Group,
                 memory_bytes: int = DEFAULT_MERGE_MEMORY, compress: bool = True) -> int:
    """Merge sorted table groups into ``dest`` summing duplicates; return the rows written.

    Streaming k-way merge: each source keeps a buffer of about ``memory_bytes / (3 * sources)``
    bytes; rows with keys below the smallest buffered-last-key of the unfinished sources are final
    and get merged and appended. A single key with more rows than the buffers is read whole (the
    only case where memory exceeds the budget, by at most that key's rows)."""
    if not sources:
        raise ValueError("merge_tables needs at least one source group")
    kinds = {table_kind(group) for group in sources}
    orders = {int(group.attrs.get("order", 0)) for group in sources}
    if len(kinds) != 1 or len(orders) != 1:
        raise ValueError(f"cannot merge tables of different kinds/orders: kinds {kinds}, orders {orders}")
    kind, order = kinds.pop(), orders.pop()
    names = list(_columns(kind))
    row_bytes = sum(dtype.itemsize for dtype in _columns(kind).values())
    block_rows = max(1, int(memory_bytes) // (3 * row_bytes * len(sources)))
    _create_columns(dest, kind, order, 0, growing=True, compress=compress)
    outputs = {name: dest[name] for name in names}
    readers = [_Source(group, kind) for group in sources]
    pending: list = []  # merged rows not yet written, flushed in batches of about a buffer's size
    written = 0
    while True:
        for reader in readers:
            if not reader.exhausted and reader.buffered < block_rows:
                reader.read_more(block_rows - reader.buffered)
        unfinished = [reader for reader in readers if not reader.exhausted]
        if not unfinished and not any(reader.buffered for reader in readers):
            break
        # rows of a key equal to the bound may continue on disk in that source: not final yet
        bound = min((reader.buffer["key"][-1] for reader in unfinished), default=None)
        if bound is not None and not any(
                reader.buffered and reader.buffer["key"][0] < bound for reader in readers):
            for reader in unfinished:  # one key fills a whole buffer: read that key completely
                if reader.buffer["key"][-1] == bound:
                    reader.read_more(block_rows)
            continue
        parts = [reader.take_below(bound) for reader in readers]
        pending.append(merge_many([part for part in parts if part.rows] or parts[:1]))
        if sum(table.rows for table in pending) >= block_rows * len(readers):
            added, pending = _append(outputs, pending, kind, final=False)
            written += added
    written += _append(outputs, pending, kind, final=True)[0]
    dest.attrs["rows"] = written
    return written


def group_by_neuron(table: Table, num_neurons: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(offsets [F+1], keys, counts)`` ordered by neuron, then count descending, then key.

    Neuron n's n-grams are ``keys[offsets[n]:offsets[n+1]]`` with their counts, largest first.
    Expects ``table`` sorted by (key, neuron) as every Table is (ties keep key order)."""
    if table.rows and int(table.neuron.max()) >= num_neurons:
        raise ValueError(f"table has neuron {int(table.neuron.max())} >= num_neurons={num_neurons}")
    offsets, order = kernels.order_by_neuron(table.neuron, int(num_neurons))
    kernels.sort_segments_by_count_descending(order, table.count, offsets)
    return offsets, table.key[order], table.count[order]
