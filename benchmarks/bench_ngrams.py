"""Run the n-gram accumulator benchmark at 5% and 50% density; print a markdown table and JSON.

Usage: PYTHONPATH=. python benchmarks/bench_ngrams.py [--tokens 65536] [--neurons 3072] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

from fastneurons.bench.ngrams import bench_ngrams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.5])
    parser.add_argument("--add-tokens", type=int, default=16384, help="rows per add() call")
    parser.add_argument("--numpy-tokens", type=int, default=16384)
    parser.add_argument("--naive-tokens", type=int, default=4096)
    parser.add_argument("--dict-tokens", type=int, default=512)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = [bench_ngrams(tokens=args.tokens, neurons=args.neurons, density=density, vocab=args.vocab,
                            seq_len=args.seq_len, add_tokens=args.add_tokens,
                            numpy_tokens=args.numpy_tokens, naive_tokens=args.naive_tokens,
                            dict_tokens=args.dict_tokens)
               for density in args.densities]
    print("| density | events | accumulator Mev/s | numpy sort Mev/s (tokens) | naive Mev/s (tokens) "
          "| dict Mev/s (tokens) | vs numpy sort | vs naive | vs dict | tables MB | peak numpy MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['density']:.0%} | {r['events']:,} | {r['accumulator_events_per_s'] / 1e6:.1f} "
              f"| {r['numpy_sort_events_per_s'] / 1e6:.2f} ({r['numpy_sort_tokens']}) "
              f"| {r['naive_events_per_s'] / 1e6:.2f} ({r['naive_tokens']}) "
              f"| {r['dict_events_per_s'] / 1e6:.2f} ({r['dict_tokens']}) "
              f"| {r['speedup_vs_numpy_sort']:.1f}x | {r['speedup_vs_naive']:.0f}x "
              f"| {r['speedup_vs_dict']:.0f}x | {r['table_mb']:.0f} | {r['peak_numpy_mb']:.0f} |")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
