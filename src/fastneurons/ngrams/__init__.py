"""Exact n-gram -> neuron tables (SPEC §2: ``ngram_seen[k]``, ``ngram_active[k]``), numba kernels."""

from fastneurons.ngrams.accumulator import (NgramAccumulator, SeenAccumulator, SeenTable, Table,
                                            count_seen, merge_many, merge_two)
from fastneurons.ngrams.keys import pack_bits_for_vocab, pack_key, unpack_key, unpack_keys
from fastneurons.ngrams.runs import (add_tables, group_by_neuron, merge_tables, read_table,
                                     write_table)

__all__ = [
    "NgramAccumulator", "SeenAccumulator", "SeenTable", "Table", "count_seen", "merge_many",
    "merge_two", "pack_bits_for_vocab", "pack_key", "unpack_key", "unpack_keys", "group_by_neuron",
    "add_tables", "merge_tables", "read_table", "write_table",
]
