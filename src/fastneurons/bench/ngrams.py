"""Benchmark of the n-gram accumulator against the naive np.unique reference and a plain Python dict.

An *event* is one active (counted token, neuron) pair; every method builds the tables of all the
requested orders from the same events, so events/s compare directly. The slow references run on a
prefix of the tokens (reported) and are timed on that prefix.
"""

from __future__ import annotations

import time
import tracemalloc

import numba
import numpy as np

from fastneurons.ngrams.accumulator import NgramAccumulator
from fastneurons.ngrams.keys import pack_bits_for_vocab
from fastneurons.ngrams.naive import naive_table, ngram_occurrences, unpack_bits


def zipf_token_ids(rng, count: int, vocab: int, exponent: float = 1.0) -> np.ndarray:
    """``count`` token ids drawn with probability proportional to ``1 / (rank + 1) ** exponent``."""
    weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    cumulative = np.cumsum(weights)
    return np.searchsorted(cumulative, rng.random(count) * cumulative[-1]).astype(np.int64)


def random_bits(rng, rows: int, neurons: int, density: float, block: int = 2048) -> np.ndarray:
    """uint64 ``[rows, ceil(neurons/64)]``: each neuron active independently with ``density``."""
    words = (neurons + 63) // 64
    out = np.zeros((rows, words), dtype=np.uint64)
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        active = np.zeros((stop - start, words * 64), dtype=bool)
        active[:, :neurons] = rng.random((stop - start, neurons), dtype=np.float32) < density
        out[start:stop] = np.packbits(active, axis=1, bitorder="little").view("<u8")
    return out


def synthetic_chunk(rng, tokens: int, neurons: int, density: float, vocab: int, seq_len: int):
    """Full-length sequences of ``seq_len`` (BOS id 2 at position 0, not counted), flattened rows."""
    batch = max(1, tokens // seq_len)
    token_ids = zipf_token_ids(rng, batch * seq_len, vocab).reshape(batch, seq_len)
    token_ids[:, 0] = 2
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).reshape(-1).copy()
    bits = random_bits(rng, batch * seq_len, neurons, density)
    return bits, token_ids.reshape(-1), positions, positions >= 1


def count_events(bits: np.ndarray, counted: np.ndarray) -> int:
    """Active (counted token, neuron) pairs."""
    return int(np.unpackbits(bits[counted].view(np.uint8)).sum())


def python_dict_tables(bits, token_ids, positions, counted, neurons, orders, pack_bits) -> dict:
    """The tables as a plain Python dict {(k, key, neuron): count}, event by event."""
    active = unpack_bits(bits, neurons)
    table: dict = {}
    for k in orders:
        for row, key in ngram_occurrences(token_ids, positions, counted, k, pack_bits):
            for neuron in np.flatnonzero(active[row]).tolist():
                table[(k, key, neuron)] = table.get((k, key, neuron), 0) + 1
    return table


def numpy_sort_tables(bits, token_ids, positions, counted, neurons, orders, pack_bits) -> dict:
    """The tables the way a competent numpy user would build them: every event as one fused
    ``key * F + neuron`` uint64 and one ``np.unique`` per order (needs k*pack_bits + log2 F <= 64)."""
    from fastneurons.ngrams.keys import ngram_rows_and_keys

    active = unpack_bits(bits, neurons)
    out = {}
    for k in orders:
        if k * pack_bits + int(np.ceil(np.log2(neurons))) > 64:
            raise ValueError("fused keys do not fit in 64 bits")
        rows, keys = ngram_rows_and_keys(token_ids, positions, counted, k, pack_bits)
        event_rows, event_neurons = np.nonzero(active[rows])
        fused = keys[event_rows] * np.uint64(neurons) + event_neurons.astype(np.uint64)
        out[k] = np.unique(fused, return_counts=True)
    return out


def _accumulate(chunk, neurons, orders, pack_bits, tokens, add_tokens):
    accumulator = NgramAccumulator(neurons, orders, pack_bits)
    for first in range(0, tokens, add_tokens):
        accumulator.add(*(column[first:first + add_tokens] for column in chunk))
    return accumulator, accumulator.tables()


def _timed_rate(fn, chunk, events_rows, neurons, orders, pack_bits):
    part = _prefix(chunk, events_rows)
    start = time.perf_counter()
    fn(*part, neurons, orders, pack_bits)
    seconds = time.perf_counter() - start
    events = count_events(part[0], part[3])
    return events, seconds


def _naive_tables(bits, token_ids, positions, counted, neurons, orders, pack_bits):
    return {k: naive_table(bits, token_ids, positions, counted, neurons, k, pack_bits) for k in orders}


def _prefix(chunk, rows: int):
    return tuple(column[:rows] for column in chunk)


def bench_ngrams(tokens: int = 65536, neurons: int = 3072, density: float = 0.05, vocab: int = 50272,
                 seq_len: int = 2048, orders=(1, 2, 3), add_tokens: int = 16384,
                 numpy_tokens: int = 16384, naive_tokens: int = 4096, dict_tokens: int = 512,
                 repeats: int = 2, seed: int = 0) -> dict:
    """Events/s of ``NgramAccumulator`` (adds of ``add_tokens`` rows, then ``tables()``; best of
    ``repeats``, compiled beforehand), of a fused-key numpy sort on the first ``numpy_tokens``, of
    the naive np.unique reference on the first ``naive_tokens`` and of a Python dict on the first
    ``dict_tokens``; peak numpy memory (tracemalloc) of the accumulator."""
    if tokens % seq_len or add_tokens % seq_len:
        raise ValueError(f"tokens ({tokens}) and add_tokens ({add_tokens}) must be multiples of "
                         f"seq_len ({seq_len}) so that chunks hold whole sequences")
    rng = np.random.default_rng(seed)
    pack_bits = pack_bits_for_vocab(vocab)
    chunk = synthetic_chunk(rng, tokens, neurons, density, vocab, seq_len)
    events = count_events(chunk[0], chunk[3])

    warm = NgramAccumulator(neurons, orders, pack_bits)  # compile (or load the cache) first
    warm.add(*_prefix(chunk, seq_len))
    warm.add(*_prefix(chunk, seq_len))
    warm.tables()

    times = []
    for _ in range(repeats):  # the first pass also pays for fresh pages from the OS
        start = time.perf_counter()
        accumulator, tables = _accumulate(chunk, neurons, orders, pack_bits, tokens, add_tokens)
        times.append(time.perf_counter() - start)
        if len(times) < repeats:
            del accumulator, tables
    fast_s = min(times)
    table_rows = {str(k): table.rows for k, table in tables.items()}
    table_mb = accumulator.nbytes / 2**20
    del accumulator, tables

    tracemalloc.start()  # untimed pass: peak of numpy allocations (the tables and temporaries)
    _accumulate(chunk, neurons, orders, pack_bits, tokens, add_tokens)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    numpy_rows = min(tokens, numpy_tokens)
    numpy_events, numpy_s = _timed_rate(numpy_sort_tables, chunk, numpy_rows, neurons, orders, pack_bits)
    naive_rows = min(tokens, naive_tokens)
    naive_events, naive_s = _timed_rate(_naive_tables, chunk, naive_rows, neurons, orders, pack_bits)
    dict_rows = min(tokens, dict_tokens)
    dict_events, dict_s = _timed_rate(python_dict_tables, chunk, dict_rows, neurons, orders, pack_bits)

    fast_rate = events / fast_s
    naive_rate = naive_events / naive_s
    return {
        "tokens": tokens, "neurons": neurons, "density": density, "vocab": vocab, "seq_len": seq_len,
        "orders": list(orders), "add_tokens": add_tokens, "threads": numba.get_num_threads(),
        "threading_layer": numba.threading_layer(),
        "events": events,
        "accumulator_s": fast_s, "accumulator_first_s": times[0],
        "accumulator_events_per_s": fast_rate,
        "table_rows": table_rows, "table_mb": table_mb, "peak_numpy_mb": peak_mb,
        "numpy_sort_tokens": numpy_rows, "numpy_sort_events": numpy_events, "numpy_sort_s": numpy_s,
        "numpy_sort_events_per_s": numpy_events / numpy_s,
        "naive_tokens": naive_rows, "naive_events": naive_events, "naive_s": naive_s,
        "naive_events_per_s": naive_rate,
        "dict_tokens": dict_rows, "dict_events": dict_events, "dict_s": dict_s,
        "dict_events_per_s": dict_events / dict_s,
        "speedup_vs_naive": fast_rate / naive_rate,
        "speedup_vs_dict": fast_rate / (dict_events / dict_s),
        "speedup_vs_numpy_sort": fast_rate / (numpy_events / numpy_s),
    }
