"""Fused counting kernel vs eager torch vs a plain read, for OPT-125m and OPT-1.3b layer shapes.

Usage: python benchmarks/bench_kernel.py [--device cpu|cuda] [--repeats 5] [--out bench_kernel.json]
"""

import argparse
import json

from fastneurons.bench.kernel import bench_kernel, format_table

SHAPES = [  # (label, tokens, neurons, dtype)
    ("OPT-125m", 16384, 3072, "float32"),
    ("OPT-125m", 16384, 3072, "bfloat16"),
    ("OPT-1.3b", 8192, 8192, "float32"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_kernel.json")
    args = parser.parse_args()
    results = []
    for label, tokens, neurons, dtype in SHAPES:
        result = bench_kernel(tokens=tokens, neurons=neurons, dtype=dtype, device=args.device, repeats=args.repeats)
        result["model"] = label
        results.append(result)
        print(f"{label}: {result['fused_s'] * 1e3:.1f} ms, {result['speedup_vs_torch']:.1f}x torch, "
              f"{result['fraction_of_read_bandwidth']:.2f} of read bandwidth", flush=True)
    print()
    print(format_table(results))
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
