"""Figures, targets and tables of ``python -m fastneurons.bench``: derived ratios, markdown, JSON.

Everything here reads the result dicts of the benchmarks; nothing is measured.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

from fastneurons.bench.beside import BESIDE_PHASE

TARGETS = {  # name -> (limit, "max" | "min"): the goals on the CPU
    "counting_cost_ratio": (10.0, "min"),
    "overhead_all_counters": (0.25, "max"),
    "overhead_dense_only": (0.05, "max"),
    "overhead_bounded": (0.10, "max"),  # issue 11: record with bounded n-gram tables on the first half
    "counting_cost_ratio_bounded": (5.0, "min"),
}
SETUP_PHASES = ("load_model", "plan_corpus", "header")
STORE_PHASES = ("store.create", "store.write_run", "store.commit", "store.finalize", "totals")
COUNTING_PHASES = ("forward.hooks", "set_batch", "ngram_tables")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """Where and with what the benchmark ran: CPU, threads, GPU, library versions, date, load."""
    import numba
    import numpy
    import torch
    import transformers

    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "device": device}
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def check_target(name: str, value, limit: float, kind: str) -> dict:
    """Whether ``value`` meets the limit ("max": value <= limit, "min": value >= limit), and by how much not."""
    if value is None:
        return {"name": name, "value": None, "target": limit, "kind": kind, "met": None, "verdict": "not measured"}
    met = value <= limit if kind == "max" else value >= limit
    if name.startswith("overhead"):
        shown, goal = f"{100 * value:.1f}%", f"<= {100 * limit:.0f}%"
        miss = f"missed by {100 * (value - limit):.1f} percentage points ({value / limit:.1f}x the allowed overhead)"
    else:
        shown, goal = f"{value:.1f}x", f">= {limit:.0f}x"
        miss = f"missed by a factor {limit / value:.1f} (reached {value:.1f}x)" if value > 0 else "missed (no gain)"
    return {"name": name, "value": value, "target": limit, "kind": kind, "met": bool(met),
            "verdict": f"{shown} (target {goal}): " + ("met" if met else miss)}


def _part(phases: dict, names) -> float:
    return sum(phases.get(name, 0.0) for name in names)


def _split(total: float, phases: dict) -> dict:
    """One run's time in parts, all without the bare forwards run beside its batches (``--bare-beside``,
    measured apart in ``bare_beside_s``); record's own (``recording_s``) also leaves out setup."""
    setup, store, counting = _part(phases, SETUP_PHASES), _part(phases, STORE_PHASES), _part(phases, COUNTING_PHASES)
    forward = phases.get("forward", 0.0) - phases.get("forward.hooks", 0.0)
    beside = phases.get(BESIDE_PHASE, 0.0)
    total -= beside
    return {"total_s": total, "setup_s": setup, "recording_s": total - setup, "store_s": store,
            "counting_inside_s": counting, "model_forward_s": forward, "bare_beside_s": beside,
            "other_s": total - setup - store - counting - forward}


def derive_fastneurons(summary: dict, clock: str = "wall") -> dict:
    """Split record's time (``clock`` "wall" or "cpu") into setup, store, counting measured inside and the
    model's own forward: each part's median over the runs (from the per-run phases when present)."""
    key = "phases" if clock == "wall" else "phases_cpu"
    runs = summary.get(key + "_runs")
    if not runs:
        return _split(summary["median_s" if clock == "wall" else "median_cpu_s"], summary.get(key, {}))
    totals = summary["seconds" if clock == "wall" else "cpu_s"]
    splits = [_split(total, phases) for total, phases in zip(totals, runs)]
    return {name: statistics.median(split[name] for split in splits) for name in splits[0]}


def _same_process_overhead(seconds: list, bare_here: list) -> float:
    """Median over rounds of a method's seconds / the bare forward its own worker ran right after, - 1:
    what counting costs with the process's own speed (memory placement, host load) cancelled."""
    return statistics.median(s / bare for s, bare in zip(seconds, bare_here)) - 1


def derive_end_to_end(result: dict, clock: str = "wall") -> dict:
    """Ratios of one end-to-end result: counting cost vs the plain way, overheads over the bare forward, memory.

    ``clock`` "wall" uses wall time (the default), "cpu" the CPU time of the worker processes (less
    sensitive to other jobs on a shared machine); with "wall" the CPU-time figures come along under "cpu".
    """
    methods = result["methods"]
    time_key = "median_s" if clock == "wall" else "median_cpu_s"
    bare = methods.get("bare", {}).get(time_key)
    out = {"bare_s": bare}
    peak_bare = methods.get("bare", {}).get("peak_rss_mb")
    for name, summary in methods.items():
        out[f"{name}_peak_rss_mb"] = summary["peak_rss_mb"]
        if peak_bare:
            out[f"{name}_extra_rss_mb"] = summary["peak_rss_mb"] - peak_bare
        if "gpu_peak_mb" in summary:
            out[f"{name}_gpu_peak_mb"] = summary["gpu_peak_mb"]
    if "plain" in methods and bare:
        out["plain_s"] = methods["plain"][time_key]
        out["plain_counting_s"] = out["plain_s"] - bare
        out["plain_overhead"] = out["plain_s"] / bare - 1
        if clock == "wall" and "bare_here_s" in methods["plain"]:
            out["plain_overhead_same_process"] = _same_process_overhead(methods["plain"]["seconds"],
                                                                        methods["plain"]["bare_here_s"])
    for name in ("fastneurons", "fastneurons_dense", "fastneurons_bounded"):
        if name not in methods or not bare:
            continue
        parts = derive_fastneurons(methods[name], clock)
        out[name] = parts
        out[f"{name}_counting_s"] = parts["recording_s"] - bare
        out[f"{name}_overhead"] = parts["recording_s"] / bare - 1
        out[f"{name}_overhead_inside"] = parts["counting_inside_s"] / bare
        out[f"{name}_overhead_inside_with_store"] = (parts["counting_inside_s"] + parts["store_s"]) / bare
        summary = methods[name]
        if clock != "wall" or not summary.get("phases_runs"):
            continue
        # per run: record's seconds without its setup (load, plan, header) nor the bare forwards beside it
        splits = [_split(total, phases) for total, phases in zip(summary["seconds"], summary["phases_runs"])]
        if "bare_here_s" in summary:
            out[f"{name}_overhead_same_process"] = _same_process_overhead([s["recording_s"] for s in splits],
                                                                          summary["bare_here_s"])
        if all(s["bare_beside_s"] > 0 for s in splits):
            out[f"{name}_overhead_beside"] = _same_process_overhead([s["recording_s"] for s in splits],
                                                                    [s["bare_beside_s"] for s in splits])
    for suffix, name in (("", "fastneurons"), ("_bounded", "fastneurons_bounded")):
        if "plain_counting_s" in out and f"{name}_counting_s" in out:
            out[f"counting_cost_ratio{suffix}"] = _ratio(out["plain_counting_s"], out[f"{name}_counting_s"])
        if "plain_overhead_same_process" in out and f"{name}_overhead_same_process" in out:
            out[f"counting_cost_ratio{suffix}_same_process"] = _ratio(out["plain_overhead_same_process"],
                                                                      out[f"{name}_overhead_same_process"])
        if "plain_overhead" in out and f"{name}_overhead_beside" in out:  # the plain way has no beside forward
            plain = out.get("plain_overhead_same_process", out["plain_overhead"])
            out[f"counting_cost_ratio{suffix}_beside"] = _ratio(plain, out[f"{name}_overhead_beside"])
    if "counting_cost_ratio" in out:
        inside = out["fastneurons"]["counting_inside_s"] + out["fastneurons"]["store_s"]
        out["counting_cost_ratio_inside"] = _ratio(out["plain_counting_s"], inside)
    if clock == "wall" and all("median_cpu_s" in m for m in methods.values()):
        out["cpu"] = derive_end_to_end(result, "cpu")
    return out


def _ratio(plain: float, ours: float) -> float:
    """How many times the plain way's cost ours is (inf when ours is not positive)."""
    return plain / ours if ours > 0 else float("inf")


def end_to_end_targets(derived: dict) -> list:
    """The issue's targets on one end-to-end result: fastneurons' cost as record minus the bare forward
    (wall time, and CPU time) and as measured inside record (counting work, store apart)."""
    checks = []
    cpu = derived.get("cpu", {})
    for ratio in ("counting_cost_ratio", "counting_cost_ratio_bounded"):
        if ratio not in derived:
            continue
        checks.append(check_target(f"{ratio} (wall, record - bare)", derived[ratio], *TARGETS[ratio]))
        if f"{ratio}_same_process" in derived:
            checks.append(check_target(f"{ratio} (wall, each method vs a bare forward in its own process)",
                                       derived[f"{ratio}_same_process"], *TARGETS[ratio]))
        if f"{ratio}_beside" in derived:
            checks.append(check_target(f"{ratio} (wall, record vs a bare forward beside each of its batches)",
                                       derived[f"{ratio}_beside"], *TARGETS[ratio]))
        if ratio in cpu:
            checks.append(check_target(f"{ratio} (CPU time, record - bare)", cpu[ratio], *TARGETS[ratio]))
        if ratio == "counting_cost_ratio":
            checks.append(check_target("counting_cost_ratio (fastneurons cost measured inside record)",
                                       derived["counting_cost_ratio_inside"], *TARGETS[ratio]))
    for name, target in (("fastneurons", "overhead_all_counters"), ("fastneurons_dense", "overhead_dense_only"),
                         ("fastneurons_bounded", "overhead_bounded")):
        if f"{name}_overhead" not in derived:
            continue
        checks.append(check_target(f"{target} (wall, record excl. load/plan)", derived[f"{name}_overhead"],
                                   *TARGETS[target]))
        if f"{name}_overhead" in cpu:
            checks.append(check_target(f"{target} (CPU time, record excl. load/plan)", cpu[f"{name}_overhead"],
                                       *TARGETS[target]))
        checks.append(check_target(f"{target} (counting inside record, store apart)", derived[f"{name}_overhead_inside"],
                                   *TARGETS[target]))
        if f"{name}_overhead_same_process" in derived:
            checks.append(check_target(f"{target} (wall, vs a bare forward in the record's own process)",
                                       derived[f"{name}_overhead_same_process"], *TARGETS[target]))
        if f"{name}_overhead_beside" in derived:
            checks.append(check_target(f"{target} (wall, vs a bare forward beside each of its batches)",
                                       derived[f"{name}_overhead_beside"], *TARGETS[target]))
    return checks


def markdown_table(header: list, rows: list) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _x(value) -> str:
    if value is None:
        return "-"
    return "inf" if value == float("inf") else f"{value:.2f}x"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def kernel_table(results: list) -> str:
    """Fused kernel vs eager torch vs a plain read of the same bytes."""
    rows = [[r.get("label", ""), r["device"], r["tokens"], r["neurons"], r["dtype"], _x(r["speedup_vs_torch"]),
             f"{r['fraction_of_read_bandwidth']:.2f}", f"{r['fused_gbps']:.2f}", f"{r['read_gbps']:.2f}",
             "yes" if r["results_agree"] else "NO"] for r in results]
    return markdown_table(["shape", "device", "tokens", "F", "dtype", "fused vs eager torch",
                           "fused speed / read speed", "fused GB/s", "read GB/s", "same counts"], rows)


def ngram_table(results: list) -> str:
    """N-gram accumulator vs the np.unique reference, a fused-key numpy sort and a Python dict (events/s)."""
    rows = [[f"{r['density']:.0%}", r["tokens"], r["neurons"], f"{r['events']:,}",
             f"{r['accumulator_events_per_s'] / 1e6:.1f}", _x(r["speedup_vs_naive"]), _x(r["speedup_vs_numpy_sort"]),
             _x(r["speedup_vs_dict"]), f"{r['table_mb']:.0f}", f"{r['peak_numpy_mb']:.0f}"] for r in results]
    return markdown_table(["density", "tokens", "F", "events", "accumulator Mevents/s", "vs np.unique reference",
                           "vs fused-key numpy sort", "vs Python dict", "tables MiB", "peak numpy MiB"], rows)


def end_to_end_table(results: list) -> str:
    """One row per end-to-end setting: times as ratios to the bare forward, memory as extra over it."""
    rows = []
    for r in results:
        d = r["derived"]
        identical = r.get("identical") or {}
        fn, dense, cpu = d.get("fastneurons", {}), d.get("fastneurons_dense", {}), d.get("cpu", {})
        bounded = d.get("fastneurons_bounded", {})
        rows.append([r["label"], r["job"]["tokens"], "1.00x" if d.get("bare_s") else "-",
                     _x(d.get("plain_s", 0) / d["bare_s"]) if "plain_s" in d else "-",
                     _x(fn["total_s"] / d["bare_s"]) if fn else "-",
                     _x(fn["recording_s"] / d["bare_s"]) if fn else "-",
                     _x(dense["recording_s"] / d["bare_s"]) if dense else "-",
                     _x(bounded["recording_s"] / d["bare_s"]) if bounded else "-",
                     _x(cpu.get("plain_s", 0) / cpu["bare_s"]) if "plain_s" in cpu else "-",
                     _x(cpu["fastneurons"]["recording_s"] / cpu["bare_s"]) if "fastneurons" in cpu else "-",
                     _x(d.get("counting_cost_ratio")), _x(cpu.get("counting_cost_ratio")),
                     _x(d.get("counting_cost_ratio_inside")), _x(d.get("counting_cost_ratio_bounded")),
                     {True: "yes", False: "NO"}.get(identical.get("identical"), "-")])
    return markdown_table(["setting", "tokens", "bare forward", "plain way", "fastneurons record (all)",
                           "record excl. load/plan", "record dense only (excl. load/plan)",
                           "record --ngrams bounded (excl. load/plan)", "plain way (CPU time)",
                           "record excl. load/plan (CPU time)", "counting cost: plain / fastneurons",
                           "same (CPU time)", "same, fastneurons cost measured inside",
                           "counting cost: plain / bounded", "identical counts"], rows)


def breakdown_table(results: list) -> str:
    """Where fastneurons' record time goes, as fractions of the bare forward of the same tokens."""
    rows = []
    for r in results:
        d = r["derived"]
        for name in ("fastneurons", "fastneurons_dense", "fastneurons_bounded"):
            if name not in d:
                continue
            parts, phases, bare = d[name], r["methods"][name]["phases"], d["bare_s"]
            rows.append([r["label"], name, _pct(parts["model_forward_s"] / bare - 1),
                         _pct(phases.get("forward.hooks.kernel", 0) / bare),
                         _pct((phases.get("forward.hooks", 0) - phases.get("forward.hooks.kernel", 0)) / bare),
                         _pct((phases.get("set_batch", 0) + phases.get("ngram_tables", 0)) / bare),
                         _pct(phases.get("forward.hooks.summary_fold", 0) / bare),
                         _pct(phases.get("second_pass", 0) / bare),
                         _pct(parts["store_s"] / bare), _pct(parts["setup_s"] / bare), _pct(parts["other_s"] / bare)])
    return markdown_table(["setting", "run", "model forward inside record vs bare", "dense kernel",
                           "rest of the hooks (bits copy, n-gram add)", "n-gram seen + tables",
                           "of the hooks: summary fold (bounded)", "second pass (bounded; its forward is in column 3)",
                           "store (HDF5)", "load + plan + header", "other"], rows)


def memory_table(results: list) -> str:
    """Peak resident memory of each method's worker process."""
    rows = []
    for r in results:
        d = r["derived"]
        row = [r["label"]]
        for name in ("bare", "plain", "fastneurons", "fastneurons_dense"):
            peak = d.get(f"{name}_peak_rss_mb")
            extra = d.get(f"{name}_extra_rss_mb")
            row.append("-" if peak is None else f"{peak:.0f}" + ("" if name == "bare" or extra is None else f" ({extra:+.0f})"))
        rows.append(row)
    return markdown_table(["setting", "bare MiB", "plain MiB (vs bare)", "fastneurons MiB (vs bare)",
                           "fastneurons dense-only MiB (vs bare)"], rows)


def targets_table(results: list) -> str:
    """Every target check, verdicts spelled out."""
    rows = [[r["label"], check["name"], check["verdict"]] for r in results for check in r.get("targets", [])]
    return markdown_table(["setting", "target", "result"], rows)


def write_json(path, data) -> None:
    """Write ``data`` as indented JSON (infinities as strings)."""
    def clean(value):
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return str(value)
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    with open(path, "w") as handle:
        json.dump(clean(data), handle, indent=2)
