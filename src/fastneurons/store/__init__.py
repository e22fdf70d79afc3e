"""The HDF5 counts store (docs/store-schema.md): format, reader, writer and merge, re-exported here."""
from fastneurons.store.format import (FORMAT, SCHEMA_VERSION, Corpus, DenseCounts, Header, StoreError,
                                      check_output_path, compatibility_problem, read_dense, read_header, runs_dir, seen_path, table_path)
from fastneurons.store.merge import add_stores, merge_stores
from fastneurons.store.reader import Counts, open_counts
from fastneurons.store.lock import StoreLock
from fastneurons.store.writer import CountsWriter

__all__ = ["FORMAT", "SCHEMA_VERSION", "Corpus", "Counts", "CountsWriter", "DenseCounts", "Header", "StoreError",
           "StoreLock", "add_stores", "check_output_path", "compatibility_problem", "merge_stores", "open_counts", "read_dense", "read_header",
           "runs_dir", "seen_path", "table_path"]
