"""Bounded pass 1, host (numba) against device (torch ops where the bits are), on the same synthetic
chunks: events/s of each, and whether their summaries are identical. The bits are made on the device,
as the counters leave them; only the per-token keys cross to it."""

from __future__ import annotations

import time

import numpy as np
import torch

from fastneurons.bench.ngrams import synthetic_chunk
from fastneurons.ngrams.bounded import SummaryAccumulator
from fastneurons.recording.device_summaries import DeviceSummaryAccumulator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def same_summaries(a: dict, b: dict) -> bool:
    """Whether two {k: Summary} hold the same rows, deltas and masses."""
    return all(np.array_equal(a[k].rows.offsets, b[k].rows.offsets) and np.array_equal(a[k].rows.key, b[k].rows.key)
               and np.array_equal(a[k].rows.count, b[k].rows.count) and np.array_equal(a[k].delta, b[k].delta)
               and np.array_equal(a[k].mass, b[k].mass) for k in a)


def bench_summaries(device, *, neurons: int, tokens: int, chunks: int, density: float, capacity: int = 2048,
                    vocab: int = 50272, seq_len: int = 2048, host: bool = True, seed: int = 0) -> dict:
    """Time ``chunks`` chunks of ``tokens`` tokens through the device accumulator (and the host one when
    ``host``), the final fold included; events/s and, when both ran, whether they agree."""
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(chunks):
        bits, ids, positions, counted = synthetic_chunk(rng, tokens, neurons, density, vocab, seq_len)
        data.append((bits, torch.from_numpy(bits.view(np.int64)).to(device), ids, positions, counted))
    _sync(device)
    on_device = DeviceSummaryAccumulator(neurons, capacity=capacity, device=device)
    start = time.perf_counter()
    for _, bits, ids, positions, counted in data:
        on_device.add(bits, ids, positions, counted)
    on_device.finish()
    _sync(device)
    seconds = time.perf_counter() - start
    summaries = on_device.summaries
    events = int(sum(int(s.mass.sum()) for s in summaries.values()))
    out = {"device": str(device), "neurons": neurons, "tokens": tokens * chunks, "events": events,
           "device_seconds": seconds, "device_events_per_s": events / seconds,
           "summary_rows": int(sum(s.rows.rows for s in summaries.values()))}
    if host:
        on_host = SummaryAccumulator(neurons, capacity=capacity)
        start = time.perf_counter()
        for bits, _, ids, positions, counted in data:
            on_host.add(bits, ids, positions, counted)
        on_host.finish()
        out["host_seconds"] = time.perf_counter() - start
        out["host_events_per_s"] = events / out["host_seconds"]
        out["identical"] = same_summaries(on_host.summaries, summaries)
    return out
