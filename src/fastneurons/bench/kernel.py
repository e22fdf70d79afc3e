"""Benchmark of the fused counting pass against eager torch and against plainly reading the same bytes."""

from __future__ import annotations

import time

import torch

from fastneurons.kernels import count_activations, load_extension, read_device_bytes, words_for

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def count_eager(pre, positions, counted, threshold, active, pos_active, bits, nan_count):
    """The same counts as ``count_activations`` in eager torch, written as a competent user would."""
    on = pre > threshold
    nonpad = positions >= 0
    active += (on & counted[..., None]).sum(dim=(0, 1))
    pos_active.index_add_(0, positions[nonpad].long(), on[nonpad].long())
    nan_count += torch.isnan(pre[nonpad]).sum()
    on = on & nonpad[..., None]
    num_neurons = on.shape[-1]
    padding = words_for(num_neurons) * 64 - num_neurons
    if padding:
        on = torch.nn.functional.pad(on, (0, padding))
    weights = (1 << torch.arange(8, device=on.device, dtype=torch.uint8))
    eight = (on.unflatten(-1, (-1, 8)).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)
    bits.copy_(eight.view(torch.int64))
    return bits


def _best_times(functions, repeats, device):
    """Best wall time of each function over ``repeats`` rounds (after a warm-up round), in seconds.

    The functions take turns within each round, so that load from other processes hits all alike.
    """
    best = [float("inf")] * len(functions)
    for round_index in range(repeats + 1):
        for i, fn in enumerate(functions):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index:
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def bench_kernel(tokens=16384, neurons=3072, max_positions=2048, dtype="float32", device="cpu",
                 repeats=5, batch_size=8, threads=None, seed=0) -> dict:
    """Time the fused kernel, eager torch and a plain read of the same input; return times and ratios.

    The input is ``batch_size`` full-length sequences of ``tokens // batch_size`` positions (BOS at
    position 0 not counted) with ``neurons`` standard-normal pre-activations, threshold 0.
    """
    device = torch.device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    seq_len = tokens // batch_size
    if not 1 <= seq_len <= max_positions:
        raise ValueError(f"tokens // batch_size = {seq_len} must be in [1, max_positions={max_positions}]")
    if threads is not None:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    pre = torch.randn(batch_size, seq_len, neurons, generator=generator).to(DTYPES[dtype]).to(device)
    positions = torch.arange(seq_len, dtype=torch.int32).expand(batch_size, seq_len).contiguous().to(device)
    counted = positions >= 1

    # The table NeuronCounter hands the kernel: uint16 recent counts on the CPU, int64 on CUDA.
    counter_pos_dtype = torch.uint16 if device.type == "cpu" else torch.int64

    def fresh(pos_dtype=torch.int64):
        return dict(active=torch.zeros(neurons, dtype=torch.int64, device=device),
                    pos_active=torch.zeros(max_positions, neurons, dtype=pos_dtype, device=device),
                    bits=torch.zeros(batch_size, seq_len, words_for(neurons), dtype=torch.int64, device=device),
                    nan_count=torch.zeros(1, dtype=torch.int64, device=device))

    fused_out, eager_out = fresh(counter_pos_dtype), fresh()
    count_activations(pre, positions, counted, 0.0, **fused_out)
    count_eager(pre, positions, counted, 0.0, **eager_out)
    agree = all(torch.equal(fused_out[name].long(), eager_out[name]) for name in fused_out)

    nbytes = pre.numel() * pre.element_size()
    threads_now = torch.get_num_threads()

    def fused_pass():
        count_activations(pre, positions, counted, 0.0, **fused_out)

    def eager_pass():
        count_eager(pre, positions, counted, 0.0, **eager_out)

    checksum = torch.zeros(1, dtype=torch.int64, device=device)

    def read_pass():
        if device.type == "cpu":
            load_extension().read_bytes(pre.data_ptr(), nbytes, threads_now)
        else:
            read_device_bytes(pre, checksum)

    read_baseline = "_C.read_bytes" if device.type == "cpu" else "_C.read_bytes_cuda"
    fused, eager, read = _best_times([fused_pass, eager_pass, read_pass], repeats, device)
    gigabytes = nbytes / 1e9
    # Bytes any implementation must move: the input, the bits it writes, and a read and a write of
    # every pos_active row it touches (one per distinct position, of the table's element size).
    moved = nbytes + fused_out["bits"].numel() * 8 + 2 * seq_len * neurons * fused_out["pos_active"].element_size()
    return {
        "tokens": batch_size * seq_len, "neurons": neurons, "dtype": dtype, "device": str(device),
        "batch_size": batch_size, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "input_gb": gigabytes, "fused_s": fused, "eager_s": eager, "read_s": read,
        "fused_gbps": gigabytes / fused, "eager_gbps": gigabytes / eager, "read_gbps": gigabytes / read,
        "speedup_vs_torch": eager / fused, "fraction_of_read_bandwidth": read / fused,
        "moved_gb": moved / 1e9, "fraction_of_read_bandwidth_all_bytes": read * (moved / nbytes) / fused,
        "read_baseline": read_baseline, "results_agree": agree,
    }


def format_table(results: list[dict]) -> str:
    """A markdown table of ``bench_kernel`` results, one row per shape."""
    header = ("| device | tokens | F | dtype | fused ms | eager ms | read ms | fused GB/s | "
              "speedup vs torch | fraction of read bw | same, all bytes moved |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        lines.append(f"| {r['device']} | {r['tokens']} | {r['neurons']} | {r['dtype']} | {1e3 * r['fused_s']:.1f} | "
                     f"{1e3 * r['eager_s']:.1f} | {1e3 * r['read_s']:.1f} | {r['fused_gbps']:.2f} | "
                     f"{r['speedup_vs_torch']:.1f}x | {r['fraction_of_read_bandwidth']:.2f} | "
                     f"{r['fraction_of_read_bandwidth_all_bytes']:.2f} |")
    return "\n".join(lines)
