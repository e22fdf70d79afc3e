"""Intermediate n-gram runs on disk, uncompressed (the default) vs `--compress-runs` (gzip-1 + shuffle):
bytes on disk, time to write a run and to read it back, on the real tables of a finished store.

Usage: PYTHONPATH=. python benchmarks/bench_runs.py STORE [--layers 0 7 14] [--orders 1 3] [--repeats 3]
Prints a markdown table (ratios, as CPU figures are reported here) for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import h5py

from fastneurons.ngrams import runs as ngram_runs
from fastneurons.store import open_counts, table_path


def measure(table, compress: bool, directory: Path, repeats: int) -> dict:
    """Median seconds to write `table` as a run (fsync'd) and to read it back, and its bytes on disk."""
    writes, reads = [], []
    path = directory / ("gzip.h5" if compress else "plain.h5")
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        with h5py.File(path, "w") as f:
            ngram_runs.write_table(f.create_group("t"), table, compress)
        with open(path, "rb+") as handle:  # the store fsyncs every run it writes
            os.fsync(handle.fileno())
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        with h5py.File(path, "r") as f:
            ngram_runs.read_table(f["t"])
        reads.append(time.perf_counter() - start)
    return {"write_s": statistics.median(writes), "read_s": statistics.median(reads), "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a finished counts store with n-gram tables")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="default: first, middle, last n-gram layer")
    parser.add_argument("--orders", type=int, nargs="+", default=None, help="default: every recorded order")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| table | rows | bytes: plain / gzip | write: gzip / plain | read: gzip / plain |")
    print("|---|---|---|---|---|")
    with open_counts(args.store) as counts, tempfile.TemporaryDirectory() as tmp:
        layers = args.layers or sorted({counts.ngram_layers[0], counts.ngram_layers[len(counts.ngram_layers) // 2],
                                         counts.ngram_layers[-1]})
        with h5py.File(args.store, "r") as f:
            for layer in layers:
                for k in args.orders or counts.ngram_orders:
                    table = ngram_runs.read_table(f["ngrams/" + table_path(layer, k)])
                    plain = measure(table, False, Path(tmp), args.repeats)
                    gzip = measure(table, True, Path(tmp), args.repeats)
                    print(f"| layer {layer}, k={k} | {table.rows:,} | {plain['bytes'] / gzip['bytes']:.1f}x "
                          f"| {gzip['write_s'] / plain['write_s']:.1f}x | {gzip['read_s'] / plain['read_s']:.1f}x |")


if __name__ == "__main__":
    main()
