"""How time and memory grow with tokens (1x, 4x, 16x) and with layer width, per component and end to end."""
from __future__ import annotations

import dataclasses
import math

from fastneurons.bench.end_to_end import bench_end_to_end
from fastneurons.bench.kernel import bench_kernel
from fastneurons.bench.ngrams import bench_ngrams
from fastneurons.bench.report import derive_end_to_end, markdown_table
from fastneurons.bench.workloads import Job

FACTORS = (1, 4, 16)


def kernel_scaling(base_tokens: int, factors=FACTORS, widths=(3072, 8192), device: str = "cpu",
                   repeats: int = 3, log=print) -> list:
    """``bench_kernel`` at ``base_tokens * f`` tokens for F = widths[0], then each other width at the
    middle token count, plus bfloat16 there: the kernel comparison and its scaling in one grid."""
    middle = base_tokens * factors[len(factors) // 2]
    shapes = [(base_tokens * f, widths[0], "float32", f"F={widths[0]}, tokens x{f}") for f in factors]
    shapes += [(middle, w, "float32", f"F={w}") for w in widths[1:]]
    shapes.append((middle, widths[0], "bfloat16", f"F={widths[0]}, bfloat16"))
    results = []
    for tokens, neurons, dtype, label in shapes:
        batch_size = max(8, math.ceil(tokens / 2048))  # sequences of at most 2048 positions
        result = bench_kernel(tokens=tokens, neurons=neurons, dtype=dtype, device=device, repeats=repeats,
                              batch_size=batch_size)
        result["label"] = label
        results.append(result)
        log(f"  kernel {label:28s} fused {1e3 * result['fused_s']:8.1f} ms, {result['speedup_vs_torch']:5.1f}x eager "
            f"torch, {result['fraction_of_read_bandwidth']:.2f} of read speed")
    return results


def ngram_scaling(base_tokens: int, factors=FACTORS, density: float = 0.05, neurons: int = 3072,
                  seq_len: int = 512, log=print) -> list:
    """``bench_ngrams`` at ``base_tokens * f`` tokens (references on one sequence only: this is about growth)."""
    results = []
    for f in factors:
        tokens = base_tokens * f
        result = bench_ngrams(tokens=tokens, neurons=neurons, density=density, seq_len=seq_len,
                              add_tokens=min(tokens, 4 * seq_len), numpy_tokens=seq_len, naive_tokens=seq_len // 2,
                              dict_tokens=min(64, seq_len), repeats=2)
        result["factor"] = f
        results.append(result)
        log(f"  n-grams {tokens:7d} tokens: {result['accumulator_events_per_s'] / 1e6:6.1f} Mevents/s, "
            f"tables {result['table_mb']:.0f} MiB, peak numpy {result['peak_numpy_mb']:.0f} MiB")
    return results


def end_to_end_scaling(job: Job, factors=FACTORS, known: dict | None = None, repeats: int = 1, log=print) -> list:
    """Bare forward and fastneurons ``record`` at ``job.tokens * f`` tokens; ``known`` maps a token count
    to an end-to-end result already measured (reused instead of measured again)."""
    known = known or {}
    results = []
    for f in factors:
        tokens = job.tokens * f
        if tokens in known:
            result = known[tokens]
        else:
            log(f"  end to end at {tokens} tokens")
            result = bench_end_to_end(dataclasses.replace(job, tokens=tokens), methods=("bare", "fastneurons"),
                                      repeats=repeats, check=False, log=log)
            result["derived"] = derive_end_to_end(result)
        result["factor"] = f
        results.append(result)
    return results


def _ratio(value, first):
    return "-" if value is None or not first else f"{value / first:.2f}x"


def kernel_scaling_table(results: list) -> str:
    """Fused kernel time relative to the smallest shape."""
    first = results[0]
    rows = [[r["label"], r["tokens"], r["neurons"], r["dtype"], _ratio(r["fused_s"], first["fused_s"]),
             _ratio(r["tokens"] * r["neurons"], first["tokens"] * first["neurons"]),
             f"{r['fused_gbps']:.2f}"] for r in results]
    return markdown_table(["shape", "tokens", "F", "dtype", "fused time vs first row", "elements vs first row",
                           "fused GB/s"], rows)


def ngram_scaling_table(results: list) -> str:
    """Accumulator time and memory relative to the 1x token count."""
    first = results[0]
    rows = [[f"x{r['factor']}", r["tokens"], f"{r['events']:,}", _ratio(r["accumulator_s"], first["accumulator_s"]),
             f"{r['accumulator_events_per_s'] / 1e6:.1f}", f"{r['table_mb']:.0f}",
             f"{r['peak_numpy_mb']:.0f}"] for r in results]
    return markdown_table(["tokens", "count", "events", "time vs x1", "Mevents/s", "tables MiB", "peak numpy MiB"], rows)


def end_to_end_scaling_table(results: list) -> str:
    """Bare forward, record and memory at each token count, relative to x1 and to the bare forward."""
    first = results[0]["derived"]
    rows = []
    for r in results:
        d = r["derived"]
        fn = d["fastneurons"]
        rows.append([f"x{r['factor']}", r["job"]["tokens"], _ratio(d["bare_s"], first["bare_s"]),
                     _ratio(fn["total_s"], first["fastneurons"]["total_s"]),
                     f"{fn['recording_s'] / d['bare_s']:.2f}x", f"{100 * fn['counting_inside_s'] / d['bare_s']:.1f}%",
                     f"{100 * fn['store_s'] / d['bare_s']:.1f}%", f"{d['bare_peak_rss_mb']:.0f}",
                     f"{d['fastneurons_peak_rss_mb']:.0f}", f"{r['methods']['fastneurons']['store_mb']:.0f}"])
    return markdown_table(["tokens", "count", "bare time vs x1", "record time vs x1",
                           "record excl. load/plan / bare", "counting inside / bare", "store / bare",
                           "bare peak MiB", "record peak MiB", "store file MiB"], rows)
