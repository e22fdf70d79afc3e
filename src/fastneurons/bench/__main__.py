"""`python -m fastneurons.bench`: fastneurons vs eager torch, np.unique, the plain way and the bare forward.

One run measures, on the same inputs: the fused dense-counter kernel, the n-gram tables, end-to-end
recording of an OPT-shaped model (random weights, two activation densities) and of the real SmolLM2,
how time and memory grow with tokens and width, and (with a GPU) offloaded recording. It checks that
fastneurons and the plain way count identically, prints ratio tables and writes JSON. No download.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fastneurons.config import BENCH_SECTIONS as SECTIONS, BenchConfig


def check_device(device: str) -> None:
    """Refuse a CUDA run on a machine without a visible GPU, saying so in one line."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                         "run on a machine with a GPU, or use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device {device!r}: choose cpu or cuda[:N]")


def check_choices(config: BenchConfig) -> BenchConfig:
    """Refuse OPT sizes and densities the workloads do not know; no --densities means both."""
    from fastneurons.bench.workloads import DENSITIES, OPT_SIZES

    for flag, value in (("--model-config", config.model_config), ("--offload-config", config.offload_config)):
        if value not in OPT_SIZES:
            raise ValueError(f"{flag} {value}: choose from {', '.join(OPT_SIZES)}")
    densities = config.densities or list(DENSITIES)
    unknown = sorted(set(densities) - set(DENSITIES))
    if unknown:
        raise ValueError(f"--densities {unknown}: choose from {', '.join(DENSITIES)}")
    return dataclasses.replace(config, densities=densities)


class Bench:
    """Runs the sections in order, printing each table as it is done and collecting the results."""

    def __init__(self, args: BenchConfig):
        from fastneurons.bench.report import machine_info

        self.args = args
        self.results = {"command": "python -m fastneurons.bench " + " ".join(sys.argv[1:]),
                        "machine": machine_info(args.device), "settings": dataclasses.asdict(args), "tables": {}}
        self.work = Path(args.work_dir or tempfile.mkdtemp(prefix="fastneurons-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self._corpus = None

    def table(self, name: str, title: str, text: str) -> None:
        self.results["tables"][name] = {"title": title, "markdown": text}
        print(f"\n### {title}\n\n{text}\n", flush=True)

    def corpus(self):
        from fastneurons.bench.workloads import corpus_files

        if self._corpus is None:
            most = max(self.args.tokens * max(self.args.scaling_factors) // 4, self.args.tokens,
                       self.args.smollm2_tokens)
            self._corpus = corpus_files(self.work / "corpus", 2 * most)
        return self._corpus

    def kernel(self) -> None:
        from fastneurons.bench.report import kernel_table
        from fastneurons.bench.scaling import kernel_scaling, kernel_scaling_table

        print("\n== fused dense-counter kernel vs eager torch vs a plain read", flush=True)
        base = 512 if self.args.quick else 2048
        results = kernel_scaling(base, self.args.scaling_factors, widths=(256, 512) if self.args.quick else (3072, 8192),
                                 device=self.args.device, repeats=self.args.repeats)
        self.results["kernel"] = results
        self.table("kernel", "Dense-counter kernel (same input, same counts)", kernel_table(results))
        self.table("kernel_scaling", "Kernel scaling with tokens and width", kernel_scaling_table(results))

    def ngrams(self) -> None:
        from fastneurons.bench.ngrams import bench_ngrams
        from fastneurons.bench.report import ngram_table
        from fastneurons.bench.scaling import ngram_scaling, ngram_scaling_table

        print("\n== n-gram tables vs the np.unique reference", flush=True)
        quick = self.args.quick
        seq_len = 128 if quick else 512
        sizes = dict(tokens=1024, neurons=256, add_tokens=512, numpy_tokens=512, naive_tokens=256, dict_tokens=64) \
            if quick else dict(tokens=16384, neurons=3072, add_tokens=8192, numpy_tokens=4096, naive_tokens=2048,
                                dict_tokens=256)
        results = []
        for density in (0.05, 0.5):
            result = bench_ngrams(density=density, seq_len=seq_len, repeats=1 if quick else 2, **sizes)
            results.append(result)
            print(f"  density {density:.0%}: {result['accumulator_events_per_s'] / 1e6:.1f} Mevents/s, "
                  f"{result['speedup_vs_naive']:.0f}x the np.unique reference", flush=True)
        self.results["ngrams"] = results
        self.table("ngrams", "N-gram tables (orders 1-3, events/s on the same events)", ngram_table(results))
        scaling = ngram_scaling(256 if quick else 4096, self.args.scaling_factors, neurons=sizes["neurons"],
                                seq_len=seq_len)
        self.results["ngram_scaling"] = scaling
        self.table("ngram_scaling", "N-gram tables scaling with tokens (5% density)", ngram_scaling_table(scaling))

    def _job(self, model_path: str, tokens: int, **extra):
        from fastneurons.bench.workloads import Job

        return Job(model=model_path, corpus=self.corpus(), tokens=tokens, work_dir=str(self.work / "stores"),
                   seq_len=self.args.seq_len, batch_size=self.args.batch_size, device=self.args.device,
                   threads=self.args.threads, bare_in_worker=self.args.bare_in_workers,
                   bare_beside=self.args.bare_beside, **extra)

    def _end_to_end(self, label: str, job, methods, model_info=None) -> dict:
        from fastneurons.bench.end_to_end import bench_end_to_end
        from fastneurons.bench.report import derive_end_to_end, end_to_end_targets

        print(f"\n== end to end: {label}, {job.tokens} tokens", flush=True)
        result = bench_end_to_end(job, methods=methods, repeats=self.args.repeats)
        result["label"], result["model"] = label, model_info
        result["derived"] = derive_end_to_end(result)
        result["targets"] = end_to_end_targets(result["derived"]) if self.args.device == "cpu" else []
        for check in result["targets"]:
            print(f"    {check['name']}: {check['verdict']}", flush=True)
        return result

    def end_to_end(self) -> None:
        from fastneurons.bench.workloads import prepare_opt

        size, results, models = self.args.model_config, [], {}
        for density in self.args.densities:
            start = time.perf_counter()
            info = prepare_opt(size, density, self.work / f"opt-{size}-{density}", self.corpus(),
                               self.args.seq_len, calibration_tokens=2 * self.args.seq_len)
            print(f"\n  built {info['name']} in {time.perf_counter() - start:.0f} s: first half "
                  f"{info['first_half_density']:.1%} active, second half {info['second_half_density']:.1%}", flush=True)
            models[density] = info
            methods = ("bare", "plain", "fastneurons") + (("fastneurons_dense", "fastneurons_bounded")
                                                           if density == "sparse" or len(self.args.densities) == 1
                                                           else ())
            results.append(self._end_to_end(f"opt-{size} {density}", self._job(info["path"], self.args.tokens),
                                            methods, info))
        self.results["end_to_end"], self._models = results, models
        self._print_end_to_end()

    def _print_end_to_end(self) -> None:
        from fastneurons.bench.report import breakdown_table, end_to_end_table, memory_table, targets_table

        results = self.results.get("end_to_end", []) + self.results.get("smollm2", [])
        if not results:
            return
        self.table("end_to_end", "End to end: time as a multiple of the bare forward (medians)", end_to_end_table(results))
        self.table("breakdown", "Where fastneurons' record time goes (share of the bare forward)", breakdown_table(results))
        self.table("memory", "Peak resident memory of each method's process (MiB)", memory_table(results))
        if any(r.get("targets") for r in results):
            self.table("targets", "Targets", targets_table(results))

    def scaling(self) -> None:
        from fastneurons.bench.scaling import end_to_end_scaling, end_to_end_scaling_table
        from fastneurons.bench.workloads import prepare_opt

        base = self.args.tokens // 4
        seq_len = min(self.args.seq_len, base // 2)  # two domains of full-length sequences at the x1 size
        if seq_len < 2 or base % (2 * seq_len):
            print(f"\n(end-to-end scaling: skipped, --tokens / 4 = {base} cannot hold two sequences)")
            return
        models = getattr(self, "_models", {})
        density = "sparse" if "sparse" in models or not models else next(iter(models))
        if density not in models:
            models[density] = prepare_opt(self.args.model_config, density, self.work / f"opt-scaling-{density}",
                                          self.corpus(), seq_len, calibration_tokens=2 * self.args.seq_len)
        info = models[density]
        print(f"\n== end-to-end scaling ({info['name']}, sequences of {seq_len})", flush=True)
        known = {r["job"]["tokens"]: r for r in self.results.get("end_to_end", [])
                 if r["model"] is info and r["job"]["seq_len"] == seq_len}
        job = dataclasses.replace(self._job(info["path"], base), seq_len=seq_len)
        results = end_to_end_scaling(job, self.args.scaling_factors, known=known)
        self.results["end_to_end_scaling"] = results
        self.table("end_to_end_scaling", f"End-to-end scaling with tokens ({info['name']}, sequences of {seq_len})",
                   end_to_end_scaling_table(results))

    def smollm2(self) -> None:
        from fastneurons.models.loading import ModelNotFound, smollm2_gguf

        try:
            smollm2_gguf()
        except ModelNotFound as error:
            print(f"\n(smollm2: skipped, {error})")
            self.results["smollm2_skipped"] = str(error)
            return
        job = self._job("smollm2", self.args.smollm2_tokens, reuse_model=True)
        result = self._end_to_end("SmolLM2-135M (real weights)", job, ("bare", "plain", "fastneurons"),
                                  {"name": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to float32"})
        self.results["smollm2"] = [result]
        self._print_end_to_end()

    def offload(self) -> None:
        from fastneurons.bench.workloads import prepare_opt

        if not self.args.device.startswith("cuda"):
            print("\n(offload: needs --device cuda)")
            return
        import torch

        size = self.args.offload_config
        info = prepare_opt(size, "random", self.work / f"opt-{size}-offload", self.corpus(), self.args.seq_len,
                           calibration_tokens=0, dtype=torch.float16)
        results = []
        for label, budget in ((f"opt-{size} in GPU memory", None), (f"opt-{size} streamed, --gpu-memory {self.args.gpu_memory}",
                                                                     self.args.gpu_memory)):
            job = self._job(info["path"], self.args.tokens, gpu_memory=budget)
            results.append(self._end_to_end(label, job, ("bare", "fastneurons"), info))
        self.results["offload"] = results
        from fastneurons.bench.report import end_to_end_table, memory_table

        self.table("offload", "Offloaded vs in-memory recording (UNVERIFIED on this project's CI: needs a GPU)",
                   end_to_end_table(results) + "\n\n" + memory_table(results))

    def run(self) -> dict:
        start = time.perf_counter()
        try:
            for section in SECTIONS:
                if section not in self.args.skip:
                    getattr(self, section)()
        finally:
            if self.args.work_dir is None:
                shutil.rmtree(self.work, ignore_errors=True)
        self.results["wall_s"] = time.perf_counter() - start
        return self.results


def run_bench(config: BenchConfig) -> dict:
    """Run the bench the validated ``config`` describes: print its tables, write its JSON."""
    check_device(config.device)
    config = check_choices(config)
    import torch

    from fastneurons.bench.report import write_json

    if config.threads:
        torch.set_num_threads(config.threads)
    results = Bench(config).run()
    print("\n" + "\n\n".join(f"### {t['title']}\n\n{t['markdown']}" for t in results["tables"].values()))
    write_json(config.json, results)
    print(f"\nwall time {results['wall_s']:.0f} s; results written to {config.json}")
    return results


def main(argv=None) -> int:
    """`python -m fastneurons.bench ...` is `fastneurons bench ...` (cli.py parses the flags)."""
    from fastneurons.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
