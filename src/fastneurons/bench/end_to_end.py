"""End to end: fastneurons' ``record`` vs the plain way vs the bare forward, on the same micro-batches; the
methods take turns round by round in their own workers (the machine may be shared), medians are reported."""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from fastneurons.bench.workers import MethodWorker
from fastneurons.bench.workloads import Job


def _median(values):
    return statistics.median(values) if values else None


def summarize(runs: dict) -> dict:
    """Medians over repeats of each method's wall and CPU time, phases and peak memory."""
    out = {}
    for name, results in runs.items():
        summary = {"seconds": [r["seconds"] for r in results], "median_s": _median([r["seconds"] for r in results]),
                   "cpu_s": [r["cpu_s"] for r in results], "median_cpu_s": _median([r["cpu_s"] for r in results]),
                   "peak_rss_mb": _median([r["peak_rss_mb"] for r in results]),
                   "peak_rss_max_mb": max(r["peak_rss_mb"] for r in results),
                   "peak_rss_of_run": all(r["peak_rss_of_run"] for r in results)}
        if all("bare_here_s" in r for r in results):
            summary["bare_here_s"] = [r["bare_here_s"] for r in results]
        if "gpu_peak_mb" in results[0]:
            summary["gpu_peak_mb"] = max(r["gpu_peak_mb"] for r in results)
        if "phases" in results[0]:
            for key in ("phases", "phases_cpu"):
                names = sorted({p for r in results for p in r[key]})
                summary[key] = {p: _median([r[key].get(p, 0.0) for r in results]) for p in names}
                summary[key + "_runs"] = [r[key] for r in results]
            summary["store_mb"] = results[-1]["store_mb"]
            summary["load_model_first_s"] = results[0]["phases"].get("load_model", 0.0)
        out[name] = summary
    return out


def bench_end_to_end(job: Job, methods=("bare", "plain", "fastneurons", "fastneurons_dense"), repeats: int = 3,
                     check: bool = True, log=print) -> dict:
    """Run each method ``repeats`` times, taking turns, each in its own worker; check identical counts."""
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    workers, runs, setups = {}, {name: [] for name in methods}, {}
    try:
        for name in methods:
            workers[name] = MethodWorker(name, job)
            setups[name] = workers[name].setup
        for round_index in range(repeats):
            for name in methods:
                result = workers[name].ask("run")
                runs[name].append(result)
                log(f"    round {round_index + 1}/{repeats} {name:18s} {result['seconds']:7.2f} s  "
                    f"peak RSS {result['peak_rss_mb']:7.0f} MiB")
        identical = None
        if check and "plain" in workers and "fastneurons" in workers:
            identical = workers["plain"].ask("check", runs["fastneurons"][-1]["store"])
            log(f"    identical counts (fastneurons vs plain way): {identical['identical']}"
                + ("" if identical["identical"] else f" (first difference: {identical['first_difference']})"))
    finally:
        for worker in workers.values():
            worker.close()
    return {"job": dataclasses.asdict(job), "repeats": repeats, "setup": setups,
            "methods": summarize(runs), "identical": identical}
