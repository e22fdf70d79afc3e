"""Bounded vs exact n-gram state against tokens: peak disk, peak memory, store size and time of a real
`record` (4-layer OPT, random weights, n-gram tables on two layers), and the in-memory state of the
accumulators on synthetic bits at OPT-125m width.

Usage: PYTHONPATH=src python benchmarks/bench_bounded.py [--tokens 16k 64k] [--threads 1]
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


def synthetic_state(tokens: int, neurons: int = 3072, density: float = 0.05, capacity: int = 2048) -> dict:
    """Bytes of exact tables vs summaries after ``tokens`` synthetic tokens of one layer."""
    from fastneurons.ngrams.accumulator import NgramAccumulator
    from fastneurons.ngrams.bounded import SummaryAccumulator

    rng = np.random.default_rng(1)
    exact, bounded = NgramAccumulator(neurons), SummaryAccumulator(neurons, capacity=capacity)
    times = {"exact": 0.0, "bounded": 0.0}
    chunk = 8192
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        ids = (rng.zipf(1.2, n) % 50000) + 3
        positions = (np.arange(n) % SEQ).astype(np.int32)
        active = rng.random((n, neurons), dtype=np.float32) < density
        bits = np.packbits(active, axis=1, bitorder="little").view(np.uint64)
        for name, acc in (("exact", exact), ("bounded", bounded)):
            t0 = time.perf_counter()
            acc.add(bits, ids, positions, positions >= 1)  # bounded folds by size, as in record
            times[name] += time.perf_counter() - t0
    t0 = time.perf_counter()
    exact_bytes = sum(t.nbytes for t in exact.tables().values())
    times["exact"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    bounded.finish()
    times["bounded"] += time.perf_counter() - t0
    summary_bytes = sum(s.table.nbytes + s.delta.nbytes + s.mass.nbytes for s in bounded.summaries.values())
    events = int(bounded.summaries[1].mass.sum() + bounded.summaries[2].mass.sum() + bounded.summaries[3].mass.sum())
    return {"tokens": tokens, "events": events, "exact_bytes": exact_bytes, "summary_bytes": summary_bytes,
            **{f"{k}_s": v for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", nargs="+", default=["16k", "64k"])
    parser.add_argument("--synthetic-tokens", nargs="+", default=["10k", "40k"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=2048)
    parser.add_argument("--skip-record", action="store_true", help="only the synthetic-bits table")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "CORPUS", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one, args.threads, args.capacity)))
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
    """In-memory state and events/s of one layer's accumulators on synthetic bits."""
    import numba

    from fastneurons.config import parse_count

    numba.set_num_threads(args.threads)
    print(f"\nsynthetic bits, one layer of F = 3072, 5% active, Zipf ids, summary capacity {args.capacity}, "
          f"{args.threads} thread(s), folded by size as record does\n")
    print("| tokens | events | exact tables MiB | summaries MiB | exact M events/s | bounded pass 1 M events/s |")
    print("|---|---|---|---|---|---|")
    synthetic_state(8192, capacity=args.capacity)  # compile / load the kernels first
    for text in args.synthetic_tokens:
        state = synthetic_state(parse_count(text), capacity=args.capacity)
        print(f"| {state['tokens']} | {state['events']} | {state['exact_bytes'] / 2**20:.1f} | "
              f"{state['summary_bytes'] / 2**20:.1f} | {state['events'] / state['exact_s'] / 1e6:.1f} | "
              f"{state['events'] / state['bounded_s'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
