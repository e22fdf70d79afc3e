"""Bounded vs exact n-gram state against tokens: peak disk, peak memory, store size and time of a real
`record` (4-layer OPT, random weights, n-gram tables on two layers), and the in-memory state of the
accumulators on synthetic bits at OPT-125m and OPT-66b width.

Usage: PYTHONPATH=src python benchmarks/bench_bounded.py [--tokens 16k 64k] [--threads 1]
       [--skip-record --synthetic-tokens 10k 100k 1M --widths opt125m opt66b]
Each recording runs in its own process (its own peak RSS); peak disk is polled every 20 ms over the
store, its runs folder and temporaries. Prints markdown tables (ratios) for benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HIDDEN, FFN, LAYERS, SEQ = 256, 1024, 4, 256


def build_model(path: Path) -> None:
    """A 4-layer OPT (vocab 50272) with fc1 biases set so that about 5% of neurons fire."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50272, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=FFN,
                       num_attention_heads=4, max_position_embeddings=SEQ, word_embed_proj_dim=HIDDEN)
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.bias.fill_(-0.5)
    model.save_pretrained(path)


def write_corpus(path: Path, tokens: int) -> None:
    """Zipf-distributed ids (s = 1.2 over 50k ids, like text), BOS-prefixed sequences of SEQ tokens."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(tokens // SEQ):
            ids = (rng.zipf(1.2, SEQ - 1) % 50000) + 3
            f.write(json.dumps([2] + ids.tolist()) + "\n")


def _disk(paths) -> int:
    total = 0
    for root in paths:
        for dirpath, _, names in os.walk(root):
            for name in names:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
    return total


def one_run(model: str, corpus: str, out_dir: str, mode: str, threads: int, capacity: int) -> dict:
    """Record in this process; peak disk of out_dir, peak RSS, seconds, final store bytes."""
    from fastneurons.config import RecordConfig
    from fastneurons.recording.runner import record

    peak = {"disk": 0}
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak["disk"] = max(peak["disk"], _disk([out_dir]))
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out = Path(out_dir) / "s.h5"
    start = time.perf_counter()
    record(RecordConfig(model=model, corpus=[corpus], out=str(out), seq_len=SEQ, batch_size=8, unit_batches=4,
                        ngram_layers=["0", "1"], threads=threads, progress=False, ngrams=mode,
                        summary_capacity=capacity, positions=False), log=lambda *a: None)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    peak["disk"] = max(peak["disk"], _disk([out_dir]))
    return {"mode": mode, "seconds": seconds, "peak_disk": peak["disk"], "store": out.stat().st_size,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


WIDTHS = {"opt125m": (3072, 0.05), "opt66b": (36864, 0.02)}  # name -> (F, share of neurons active)
CHUNK = 1024  # synthetic tokens per chunk
RUN_TOKENS = 16 * CHUNK  # exact-runs: tokens per run (a commit a minute at ~270 tokens/s)


def synthetic_bits(rng, tokens: int, neurons: int, density: float) -> np.ndarray:
    """uint64 [tokens, ceil(F/64)]: each token fires ~density x F neurons drawn uniformly (with
    replacement, so slightly fewer distinct) -- as fast to make at OPT-66b width as at OPT-125m's."""
    per_token = rng.binomial(neurons, density, tokens)
    rows = np.repeat(np.arange(tokens), per_token)
    active = np.zeros((tokens, -(-neurons // 64) * 64), dtype=bool)
    active[rows, rng.integers(0, neurons, rows.size)] = True
    return np.packbits(active, axis=1, bitorder="little").view(np.uint64)


def synthetic_state(tokens: int, mode: str, width: str = "opt125m", capacity: int = 2048) -> dict:
    """Bytes, seconds and events of one layer's ``mode`` state after ``tokens`` synthetic tokens (Zipf
    ids over 50k, sequences of SEQ): ``exact`` (every event kept, one sort at the end: the least work
    exact tables take, and what no long recording can hold), ``exact-runs`` (a table every RUN_TOKENS,
    merged at the end: record's exact path without its disk and gzip) or ``bounded`` (pass 1's
    summaries, folded by size as record does)."""
    from fastneurons.ngrams.accumulator import NgramAccumulator, merge_many
    from fastneurons.ngrams.bounded import SummaryAccumulator

    phases = _time_pass1_phases() if mode == "bounded" else {}
    neurons, density = WIDTHS[width]
    rng = np.random.default_rng(1)
    acc = SummaryAccumulator(neurons, capacity=capacity) if mode == "bounded" else NgramAccumulator(neurons)
    seconds, events, runs = 0.0, 0, {k: [] for k in (1, 2, 3)}
    for start in range(0, tokens, CHUNK):
        n = min(CHUNK, tokens - start)
        ids = (rng.zipf(1.2, n) % 50000) + 3
        positions = ((start + np.arange(n)) % SEQ).astype(np.int32)
        bits = synthetic_bits(rng, n, neurons, density)
        t0 = time.perf_counter()
        acc.add(bits, ids, positions, positions >= 1)  # bounded folds by size, as in record
        if mode == "exact-runs" and (start + n) % RUN_TOKENS == 0:  # a run per commit, as record spills
            for k, table in acc.tables().items():
                runs[k].append(table)
            acc.clear()
        seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    if mode == "exact-runs":  # record's final merge of its runs, in memory (no disk, no gzip)
        for k, table in acc.tables().items():
            runs[k].append(table)
        tables = [merge_many(parts) for parts in runs.values()]
        state_bytes = sum(t.nbytes for t in tables)
        events = int(sum(t.count.sum() for t in tables))
    elif mode == "bounded":
        acc.finish()
    else:
        tables = acc.tables().values()
        state_bytes = sum(t.nbytes for t in tables)
        events = int(sum(t.count.sum() for t in tables))
    seconds += time.perf_counter() - t0
    out = {"tokens": tokens, "width": width, "mode": mode, "events": events, "seconds": seconds}
    if mode == "bounded":
        summaries = acc.summaries  # packed (fresh arrays), not part of pass 1's rate
        out["events"] = int(sum(s.mass.sum() for s in summaries.values()))
        out["rows"] = int(sum(s.rows.rows for s in summaries.values()))
        state_bytes = sum(s.rows.key.nbytes + s.rows.count.nbytes + s.rows.offsets.nbytes + s.delta.nbytes
                          + s.mass.nbytes for s in summaries.values())
        out.update(phases, **_write_seconds(summaries))
    return {**out, "bytes": state_bytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _time_pass1_phases() -> dict:
    """Wrap pass 1's two steps (pending bits to rows by neuron; the in-place fold) to time them:
    returns the dict their seconds accumulate in (``fill_s``, ``fold_s``, ``fold_rows``: held + new
    rows the folds read)."""
    from fastneurons.ngrams import bounded, by_neuron

    phases = {"fill_s": 0.0, "fold_s": 0.0, "fold_rows": 0}
    fill, fold = by_neuron.fill_slots, by_neuron.HeldRows.fold

    def timed_fill(*args):
        steps = fill(*args)
        while True:
            start = time.perf_counter()
            item = next(steps, None)
            phases["fill_s"] += time.perf_counter() - start
            if item is None:
                return
            yield item

    def timed_fold(held, new, delta):
        phases["fold_rows"] += held.rows + new.rows
        start = time.perf_counter()
        fold(held, new, delta)
        phases["fold_s"] += time.perf_counter() - start

    bounded.fill_slots, by_neuron.HeldRows.fold = timed_fill, timed_fold
    return phases


def _write_seconds(summaries: dict) -> dict:
    """Seconds and bytes of writing the summaries as a finished store holds them (shuffle + gzip, deflated by write_column)."""
    import h5py

    from fastneurons.store.summaries import write_summaries

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summaries.h5"
        start = time.perf_counter()
        with h5py.File(path, "w") as f:
            write_summaries(f, {(0, k): summary for k, summary in summaries.items()})
        return {"write_s": time.perf_counter() - start, "write_bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", nargs="+", default=["16k", "64k"])
    parser.add_argument("--synthetic-tokens", nargs="+", default=["10k", "40k"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=2048)
    parser.add_argument("--widths", nargs="+", choices=sorted(WIDTHS), default=["opt125m"])
    parser.add_argument("--exact-limit", default="8G", help="skip exact tables estimated above this (RAM)")
    parser.add_argument("--skip-record", action="store_true", help="only the synthetic-bits table")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "CORPUS", "OUT", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--synthetic-one", nargs=3, metavar=("WIDTH", "TOKENS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one, args.threads, args.capacity)))
        return
    if args.synthetic_one:
        width, tokens, mode = args.synthetic_one
        print(json.dumps(synthetic_one(width, int(tokens), mode, args.threads, args.capacity)))
        return
    if not args.skip_record:
        record_table(args)
    synthetic_table(args)


def record_table(args) -> None:
    """Both modes' `record` at each token count, each in its own process; the table and the 4x ratios."""
    from fastneurons.config import parse_count

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_model(root / "model")
        rows = []
        for text in args.tokens:
            tokens = parse_count(text)
            corpus = root / f"corpus-{tokens}.jsonl"
            write_corpus(corpus, tokens)
            for mode in ("exact", "bounded"):
                out = root / f"{mode}-{tokens}"
                out.mkdir()
                result = subprocess.run([sys.executable, __file__, "--one", str(root / "model"), str(corpus), str(out),
                                         mode, "--threads", str(args.threads), "--capacity", str(args.capacity)],
                                        capture_output=True, text=True, check=True)
                rows.append({"tokens": tokens, **json.loads(result.stdout.strip().splitlines()[-1])})
    print(f"\n4-layer OPT (hidden {HIDDEN}, F {FFN}, ~5% active), n-gram tables on layers 0-1, k = 1, 2, 3, "
          f"--threads {args.threads}, summary capacity {args.capacity}\n")
    print("| mode | tokens | seconds | peak disk MiB | store MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['tokens']} | {row['seconds']:.1f} | {row['peak_disk'] / 2**20:.1f} | "
              f"{row['store'] / 2**20:.1f} | {row['peak_rss'] / 2**20:.0f} |")
    for mode in ("exact", "bounded"):
        runs = [row for row in rows if row["mode"] == mode]
        first, last = runs[0], runs[-1]
        print(f"\n{mode}: {last['tokens'] / first['tokens']:.0f}x tokens -> peak disk x"
              f"{last['peak_disk'] / first['peak_disk']:.2f}, peak RSS x{last['peak_rss'] / first['peak_rss']:.2f}, "
              f"time x{last['seconds'] / first['seconds']:.2f}")


def synthetic_table(args) -> None:
    """In-memory state and events/s of one layer's accumulators on synthetic bits, each mode and size
    in its own process (its own peak RSS); exact tables estimated above --exact-limit are skipped."""
    from fastneurons.config import parse_bytes, parse_count

    print(f"\nsynthetic bits, one layer, Zipf ids, summary capacity {args.capacity}, {args.threads} thread(s), "
          f"bounded folded by size as record does, exact runs every {RUN_TOKENS} tokens\n")
    print("| width | tokens | events | exact tables MiB | summaries MiB | exact, one sort: M events/s | "
          "exact, runs + merge: M events/s | bounded pass 1: M events/s | peak RSS MiB exact / bounded |")
    print("|---|---|---|---|---|---|---|---|---|")
    parts = []
    for width in args.widths:
        neurons, density = WIDTHS[width]
        for text in args.synthetic_tokens:
            tokens = parse_count(text)
            cells = {}
            for mode in ("exact", "exact-runs", "bounded"):
                if mode != "bounded" and 3 * tokens * neurons * density * 14 > parse_bytes(args.exact_limit):
                    cells[mode] = None  # ~14 B of table per event (measured at 128k tokens)
                    continue
                result = subprocess.run([sys.executable, __file__, "--synthetic-one", width, str(tokens), mode,
                                         "--threads", str(args.threads), "--capacity", str(args.capacity)],
                                        capture_output=True, text=True, check=True)
                cells[mode] = json.loads(result.stdout.strip().splitlines()[-1])
            exact, bounded = cells["exact"], cells["bounded"]
            mib = lambda c: f"{c['bytes'] / 2**20:.1f}" if c else "not run (RAM)"  # noqa: E731
            rate = lambda c: f"{c['events'] / c['seconds'] / 1e6:.1f}" if c else "-"  # noqa: E731
            rss = lambda c: f"{c['peak_rss'] / 2**20:.0f}" if c else "-"  # noqa: E731
            print(f"| {width} (F = {neurons}, {density:.0%}) | {tokens} | {bounded['events']} | {mib(exact)} | "
                  f"{mib(bounded)} | {rate(exact)} | {rate(cells['exact-runs'])} | {rate(bounded)} | "
                  f"{rss(exact)} / {rss(bounded)} |", flush=True)
            parts.append((width, neurons, density, tokens, bounded))
    print("\nWhere bounded pass 1's time goes (wall, all threads together), and the final write of its summaries "
          "(shuffle + gzip, ISA-L deflate in threads):\n")
    print("| width | tokens | fill: ns per event | fold: ns per row read (held + new) | rest of pass 1 | "
          "final write: ns per row | final write MB/s (compressed) |")
    print("|---|---|---|---|---|---|---|")
    for width, neurons, density, tokens, c in parts:
        rest = c["seconds"] - c["fill_s"] - c["fold_s"]
        print(f"| {width} | {tokens} | {1e9 * c['fill_s'] / c['events']:.1f} | "
              f"{1e9 * c['fold_s'] / max(1, c['fold_rows']):.1f} | {rest / c['seconds']:.0%} | "
              f"{1e9 * c['write_s'] / max(1, c['rows']):.1f} | {c['write_bytes'] / c['write_s'] / 2**20:.0f} |")


def synthetic_one(width: str, tokens: int, mode: str, threads: int, capacity: int) -> dict:
    """One synthetic size and mode in this process, after a warm-up that compiles or loads the kernels."""
    import numba

    numba.set_num_threads(threads)
    synthetic_state(4 * CHUNK, mode, capacity=capacity)
    return synthetic_state(tokens, mode, width=width, capacity=capacity)


if __name__ == "__main__":
    main()
